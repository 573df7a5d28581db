//! The family crate of VeRA, PVeRA and RandLoRA: frozen random projections shared by all the layers of an
//! adapter (VeRA's `vera_A` / `vera_B`, PVeRA's `pvera_A` / `pvera_B`, RandLoRA's bases `randlora_A` /
//! `randlora_B`, 3-d): PEFT draws them once, in its `_pre_injection_hook`, from a CPU generator seeded
//! with `projection_prng_key`, sized by the largest targeted linear layer; every layer uses slices of
//! them, later adapters reuse the first adapter's, and each adapter's file holds them once at the model
//! level (`base_model.vera_A`).
//!
//! [`SharedProjections`] carries them from [`peft_core::AdapterConfig::before_layers`] to the layers;
//! [`SharedProjections::attach`] places them on the first layer's device and dtype and decides which
//! layer registers and saves them for each adapter; [`model_level_key`] is the checkpoint-key mapping;
//! [`kaiming_uniform`] is the seeded draw (any gain, any float kind).
//!
//! ```
//! use peft_projections::SharedProjections;
//!
//! // VeRA's draw for r = 4 over layers of at most 20 outputs and 10 inputs.
//! let p = SharedProjections::draw(0, [4, 10], [20, 4])?;
//! let (a, b) = p.tensors()?;
//! assert_eq!((a.size(), b.size()), (vec![4, 10], vec![20, 4]));
//! // The same key draws the same projections.
//! let (a2, _) = SharedProjections::draw(0, [4, 10], [20, 4])?.tensors()?;
//! assert!(a.equal(&a2));
//! # Ok::<(), peft_core::PeftError>(())
//! ```

use peft_core::config::{LayerInit, TargetLayer, TargetView};
use peft_core::rng::Generator;
use peft_core::{PeftError, Result};
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

/// The projections one adapter's layers share (absent until `before_layers` made or found them).
#[derive(Clone, Debug, Default)]
pub struct SharedProjections(pub Option<Arc<Mutex<Projections>>>);

impl PartialEq for SharedProjections {
    /// Configs compare by what is saved; the projections are not part of the config.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// The shared tensors and their bookkeeping.
#[derive(Debug)]
pub struct Projections {
    /// The input-side projection, `(rows, max in_features)`.
    pub a: Tensor,
    /// The output-side projection, `(max out_features, r)`.
    pub b: Tensor,
    /// Whether the first layer moved them to the base device and dtype.
    pub placed: bool,
    /// The adapters whose first layer has been created (that layer saves the projections for it).
    pub owners: Vec<String>,
    /// Every adapter whose layers use the projections, in creation order (PEFT's shared `BufferDict` has a
    /// key for each, so every layer's status lists them all).
    pub members: Vec<String>,
}

/// What one layer gets from [`SharedProjections::attach`].
#[derive(Debug)]
pub struct Attached {
    /// The input-side projection (the whole tensor, shared).
    pub a: Tensor,
    /// The output-side projection.
    pub b: Tensor,
    /// This layer registers the projections (frozen) and saves them for its adapter.
    pub owns: bool,
}

/// `torch.nn.init.kaiming_uniform_(t, a=a, generator=g)` on a fresh `kind` tensor of `shape` (CPU):
/// `U(-b, b)` with `b = √3 · gain / √fan_in`, `gain = √(2 / (1 + a²))` (VeRA's `_kaiming_init` uses
/// `a = 0`; RandLoRA's uses `a = √5` on bf16 tensors). Drawn in `kind`, since a bf16 draw is not the f32
/// draw rounded.
///
/// # Errors
/// libtorch's error.
pub fn kaiming_uniform(shape: &[i64], a: f64, kind: Kind, g: &mut Generator) -> Result<Tensor> {
    let mut t =
        Tensor::f_empty(shape, (kind, Device::Cpu)).map_err(PeftError::torch("allocating a projection"))?;
    let fan = peft_core::init::fan_in(&t) as f64;
    // The same f64 steps as torch.nn.init (gain, then std, then bound), so the bound rounds alike.
    let gain = (2.0 / (1.0 + a.powi(2))).sqrt();
    let bound = 3f64.sqrt() * (gain / fan.sqrt());
    g.uniform_(&mut t, -bound, bound)?;
    Ok(t)
}

/// The largest `(out_features, in_features)` over the targeted linear layers (PEFT's `_find_dim`).
///
/// # Errors
/// No linear layer among the targets, with PEFT's message naming `method`.
pub fn largest_linear(targets: &[TargetLayer], method: &str) -> Result<(i64, i64)> {
    targets
        .iter()
        .filter(|t| t.view == TargetView::Linear)
        .map(|t| (t.out_features, t.in_features))
        .reduce(|(o, i), (o2, i2)| (o.max(o2), i.max(i2)))
        .ok_or_else(|| {
            PeftError::Invalid(format!(
                "No layers types compatible with {method} were found. Please check `peft_config.target_modules`."
            ))
        })
}

/// The model-level checkpoint key of a shared projection: `…<name>.<adapter>` → `base_model.<name>` for
/// each of `names`; `None` for other keys.
pub fn model_level_key(key: &str, adapter: &str, names: [&str; 2]) -> Option<String> {
    names.iter().find(|n| key.ends_with(&format!(".{n}.{adapter}"))).map(|n| format!("base_model.{n}"))
}

impl SharedProjections {
    /// Draws `a` then `b` from a CPU generator seeded with `seed` (f32, on the CPU).
    ///
    /// # Errors
    /// libtorch's error.
    pub fn draw(seed: u64, a_shape: [i64; 2], b_shape: [i64; 2]) -> Result<Self> {
        let mut g = Generator::new(seed)?;
        let a = kaiming_uniform(&a_shape, 0.0, Kind::Float, &mut g)?;
        let b = kaiming_uniform(&b_shape, 0.0, Kind::Float, &mut g)?;
        Ok(Self::from_tensors(a, b))
    }

    /// Projections a method drew itself (RandLoRA's bases, of any rank of tensor, CPU); the layers place
    /// them as [`SharedProjections::attach`] says.
    pub fn from_tensors(a: Tensor, b: Tensor) -> Self {
        Self(Some(Arc::new(Mutex::new(Projections {
            a,
            b,
            placed: false,
            owners: Vec::new(),
            members: Vec::new(),
        }))))
    }

    /// Shallow clones of `(a, b)` as they are now.
    ///
    /// # Errors
    /// Projections not made yet.
    pub fn tensors(&self) -> Result<(Tensor, Tensor)> {
        let p = self.lock()?;
        Ok((p.a.shallow_clone(), p.b.shallow_clone()))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Projections>> {
        self.0
            .as_ref()
            .ok_or_else(|| {
                PeftError::Invalid("the shared projections were not created before the layers".into())
            })?
            .lock()
            .map_err(|_| PeftError::Invalid("the shared projections are poisoned".into()))
    }

    /// Hands one layer the projections: checks they cover the layer (`needs`: the rows of `a` (its first
    /// dimension), the least size of its last dimension, the least rows of `b`, the size of its last
    /// dimension; PEFT's messages otherwise; 2-d for VeRA, 3-d for RandLoRA), places them
    /// on the layer's device and dtype when the first layer comes, and makes the first layer of each
    /// adapter (with `save`) the one that registers them, frozen, under `names` and saves them.
    ///
    /// # Errors
    /// Projections too small for the layer, or of another rank than the adapter asks for.
    pub fn attach(
        &self,
        ctx: &mut LayerInit<'_, '_>,
        method: &str,
        names: [&str; 2],
        needs: [i64; 4],
        save: bool,
    ) -> Result<Attached> {
        let mut p = self.lock()?;
        let (a_size, b_size) = (p.a.size(), p.b.size());
        let (a_last, b_last) = (a_size[a_size.len() - 1], b_size[b_size.len() - 1]);
        let [a_rows, in_features, out_features, b_cols] = needs;
        let too_small = |name: &str, has: i64, needs: i64| {
            PeftError::Invalid(format!(
                "`{}`: {name} has a size of {has} but {needs} or greater is required; this probably happened because \
                 an additional {method} adapter with incompatible shapes was added after the first one",
                ctx.module_name
            ))
        };
        if a_last < in_features {
            return Err(too_small(names[0], a_last, in_features));
        }
        if b_size[0] < out_features {
            return Err(too_small(names[1], b_size[0], out_features));
        }
        if a_size[0] != a_rows || b_last != b_cols {
            // PEFT refuses a higher rank and fails in the forward pass for a lower one.
            return Err(PeftError::Invalid(format!(
                "`{}`: the {method} adapters of a model share the projections of the first one, of rank {}; adapter \
                 `{}` asks for r={b_cols}",
                ctx.module_name, b_last, ctx.adapter_name
            )));
        }
        if !p.placed {
            p.a = ctx.place(p.a.shallow_clone())?;
            p.b = ctx.place(p.b.shallow_clone())?;
            p.placed = true;
        }
        if !p.members.iter().any(|m| m == ctx.adapter_name) {
            p.members.push(ctx.adapter_name.to_string());
        }
        let owns = save && !p.owners.iter().any(|o| o == ctx.adapter_name);
        if owns {
            p.owners.push(ctx.adapter_name.to_string());
            let adapter = ctx.adapter_name.to_string();
            // Registered (frozen) once, under the owning layer, so the var store holds them once.
            let a = (&ctx.path / names[0]).add(&adapter, p.a.shallow_clone(), false);
            let b = (&ctx.path / names[1]).add(&adapter, p.b.shallow_clone(), false);
            return Ok(Attached { a, b, owns });
        }
        Ok(Attached { a: p.a.shallow_clone(), b: p.b.shallow_clone(), owns })
    }
}

impl SharedProjections {
    /// `(adapter, device)` for every adapter using the projections: PEFT's layer status reports a device
    /// for each key of the shared `BufferDict` on every layer (see [`peft_core::TunerLayer::status_shared_devices`]).
    pub fn member_devices(&self) -> Vec<(String, Device)> {
        match self.lock() {
            Ok(p) => p.members.iter().map(|m| (m.clone(), p.a.device())).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// For `check_new_adapter`: PEFT's rule that every adapter of a method shares one set of projections —
/// the same `projection_prng_key` and the same `save_projection` as each earlier adapter of type `C`
/// (`get` reads both from a config; `new` is the adding adapter's pair).
///
/// # Errors
/// [`PeftError::Invalid`] naming the earlier adapter and both values.
pub fn check_same_projections<C: 'static>(
    existing: &[(&str, &dyn peft_core::AdapterConfig)],
    method: &str,
    get: impl Fn(&C) -> (i64, bool),
    new: (i64, bool),
) -> Result<()> {
    for (name, other) in existing {
        let Some(other) = other.as_any().downcast_ref::<C>() else { continue };
        let (key, save) = get(other);
        if key != new.0 {
            return Err(PeftError::Invalid(format!(
                "{method} PRNG initialisation key must be the same for all adapters. Got projection_prng_key={} \
                 but adapter '{name}' had {key}.",
                new.0
            )));
        }
        if save != new.1 {
            return Err(PeftError::Invalid(format!(
                "{method} projection weights must be saved for all adapters or none, but adapter '{name}' has \
                 save_projection={save} and the new one {}",
                new.1
            )));
        }
    }
    Ok(())
}

/// For `before_layers`: the projections of an earlier adapter of the same method, if any (PEFT draws them
/// only for the first adapter).
pub fn earlier<C: 'static>(
    existing: &[(&str, &dyn peft_core::AdapterConfig)],
    get: impl Fn(&C) -> &SharedProjections,
) -> Option<SharedProjections> {
    existing
        .iter()
        .filter_map(|(_, c)| c.as_any().downcast_ref::<C>())
        .find_map(|c| get(c).0.clone().map(|p| SharedProjections(Some(p))))
}
