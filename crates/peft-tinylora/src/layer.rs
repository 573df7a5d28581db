//! `TinyloraLayer`: PEFT 0.21.2's `tinylora.Linear` (also for GPT-2's `Conv1D`) and `tinylora.Embedding`.
//!
//! With the frozen SVD factors `A` `(r, in)` and `B` `(out, r)` of the base weight (see
//! [`crate::factors::svd_factors`]), the frozen projections `P` `(u, r, r)` and the trained vector `v`
//! `(u)` of the layer's group, `R = Σᵢ vᵢ·Pᵢ` `(r, r)` and
//!
//! * linear layers: `y = base(x) + ((drop(x)·Aᵀ)·Rᵀ)·Bᵀ`, each active adapter in turn;
//! * embeddings (`B` `(num_embeddings, r)`, `A` `(r, dim)`): `y = base(ids) + (drop(B[ids])·R)·A`;
//! * `ΔW = B·R·A` `(out, in)` (transposed for `Conv1D`), computed in f32 on the CPU for half dtypes and
//!   added on merge.
//!
//! `v` is shared by the layers of a `weight_tying` group and saved once (see [`crate::groups`]).

use crate::config::{TinyloraConfig, PEFT_TYPE};
use crate::factors::{compose, projection, svd_factors};
use crate::groups::AdapterVectors;
use peft_core::config::LayerInit;
use peft_core::layer::{merge_delta, unmerge_delta, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

const UNSUPPORTED: &str = "Currently, only the following modules are supported: `torch.nn.Linear`, \
                           `torch.nn.Embedding`, `transformers.pytorch_utils.Conv1D`.";

/// The base a TinyLoRA adapter sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TinyloraBase {
    /// `nn.Linear`, or GPT-2's `Conv1D` with `fan_in_fan_out` (its weight is stored `(in, out)`).
    Linear {
        /// The delta is transposed to the stored layout.
        fan_in_fan_out: bool,
    },
    /// `nn.Embedding`.
    Embedding,
}

/// One TinyLoRA adapter on one layer.
#[derive(Debug)]
pub struct TinyloraLayer {
    adapter: String,
    module: String,
    base: TinyloraBase,
    in_features: i64,
    out_features: i64,
    /// The rank actually used (`min(r, out, in)`).
    r: i64,
    u: i64,
    dropout: f64,
    /// The index PEFT seeds this layer's projections with (the layer's index among the targets of the
    /// first TinyLoRA adapter created on it).
    seed_index: i64,
    group: usize,
    a: Tensor,
    b: Tensor,
    p: Tensor,
    v: Tensor,
    save_projection: bool,
    /// This layer registered the adapter's first vector and lists all of them.
    owns_vectors: bool,
    vectors: AdapterVectors,
}

impl TinyloraLayer {
    /// Creates the adapter as PEFT's `_create_and_replace` + `update_layer`: the group's `v` (made by the
    /// group's first layer: `torch.empty(u)` in the base dtype, zeroed or drawn `U(−bound, bound)` from the
    /// global generator as `init_weights` says), then the SVD factors of the base weight and the layer's
    /// projections, moved to the base layer's device and dtype.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers, `Conv1D` and embeddings (quantized
    /// bases included); an adapter added to a wrapped, non-square linear layer whose `fan_in_fan_out`
    /// contradicts the layer's weight layout (PEFT decomposes the weight the other way round then and fails
    /// in its forward pass).
    pub fn create(config: &mut TinyloraConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let sibling = ctx.siblings.values().find_map(|t| t.as_any().downcast_ref::<TinyloraLayer>());
        let (base, weight, in_features, out_features) = if let Some(lin) = ctx.base.as_linear() {
            if !lin.weight_is_storage() {
                return Err(ctx.unsupported(
                    PEFT_TYPE,
                    "TinyLoRA on 4-/8-bit quantized bases is not implemented in peft-rs (PEFT decomposes the \
                     packed storage); use a dense base",
                ));
            }
            let (i, o, is_conv1d) = (lin.in_features(), lin.out_features(), lin.fan_in_fan_out());
            let w = lin.weight();
            let (svd_transposed, delta_transposed) = match sibling {
                // PEFT's `update_layer` on an already wrapped layer reads the new config's flag unchecked
                // (the layer keeps its own for the delta).
                Some(TinyloraLayer { base: TinyloraBase::Linear { fan_in_fan_out }, .. }) => {
                    (config.fan_in_fan_out, *fan_in_fan_out)
                }
                _ => {
                    ctx.match_fan_in_fan_out(&mut config.fan_in_fan_out, is_conv1d);
                    (config.fan_in_fan_out, config.fan_in_fan_out)
                }
            };
            if svd_transposed != is_conv1d && i != o {
                return Err(PeftError::Invalid(format!(
                    "`{}`: adapter `{}` has fan_in_fan_out={svd_transposed} on a layer that stores its weight \
                     {}; PEFT 0.21.2 decomposes the weight in that orientation for an adapter added to an adapted \
                     layer and fails in the forward pass; set fan_in_fan_out={is_conv1d}",
                    ctx.module_name,
                    ctx.adapter_name,
                    if is_conv1d { "(in, out)" } else { "(out, in)" }
                )));
            }
            let w = if svd_transposed { w.tr() } else { w };
            (TinyloraBase::Linear { fan_in_fan_out: delta_transposed }, w, i, o)
        } else if let Some(emb) = ctx.base.as_embedding() {
            let w = ctx.base.as_weighted().map(|w| w.weight()).ok_or_else(|| {
                PeftError::Invalid(format!("`{}`: the embedding has no weight", ctx.module_name))
            })?;
            (TinyloraBase::Embedding, w, emb.num_embeddings(), emb.embedding_dim())
        } else {
            return Err(ctx.unsupported(PEFT_TYPE, UNSUPPORTED));
        };
        let adapter = ctx.adapter_name.to_string();
        let (slot, v, owns_vectors) = Self::group_vector(config, ctx, weight.kind())?;
        let (a, b, r) = svd_factors(&weight, config.r)?;
        let seed_index = sibling.map_or(slot.index, |s| s.seed_index);
        let p = projection(config.projection_seed.wrapping_add(seed_index), config.u, r)?;
        let (a, b, p) = (ctx.place(a)?, ctx.place(b)?, ctx.place(p)?);
        config.vectors.plan_mut()?.projections.push((ctx.module_name.to_string(), p.copy()));
        let a = (&ctx.path / "tinylora_A").add(&adapter, a, false);
        let b = (&ctx.path / "tinylora_B").add(&adapter, b, false);
        // Without `save_projection` the projections are PEFT's non-persistent buffers: derived from the
        // seed, never part of the adapter's state, so they stay out of the var store too.
        let p = if config.save_projection { (&ctx.path / "tinylora_P").add(&adapter, p, false) } else { p };
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            base,
            in_features,
            out_features,
            r,
            u: config.u,
            dropout: config.tinylora_dropout.value(),
            seed_index,
            group: slot.group,
            a,
            b,
            p,
            v,
            save_projection: config.save_projection,
            owns_vectors,
            vectors: config.vectors.clone(),
        })
    }

    /// The layer's slot in the plan and its group's `v`, made here when this is the group's first layer.
    fn group_vector(
        config: &TinyloraConfig,
        ctx: &mut LayerInit<'_, '_>,
        kind: Kind,
    ) -> Result<(crate::groups::Slot, Tensor, bool)> {
        let mut plan = config.vectors.plan_mut()?;
        let slot = *plan.slots.get(ctx.module_name).ok_or_else(|| {
            PeftError::Invalid(format!("`{}` is not among the planned TinyLoRA targets", ctx.module_name))
        })?;
        let owns = plan.owner.is_none();
        if owns {
            plan.owner = Some(ctx.module_name.to_string());
        }
        if let Some(v) = &plan.vectors[slot.group] {
            return Ok((slot, v.shallow_clone(), owns));
        }
        let kind = match kind {
            k @ (Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double) => k,
            _ => Kind::Float,
        };
        let mut v = Tensor::f_empty([config.u], (kind, Device::Cpu))
            .map_err(PeftError::torch("allocating tinylora_v"))?;
        match config.zero_init() {
            Some(true) => peft_core::init::zeros_(&mut v)?,
            Some(false) => {}
            None => {
                let bound = config.init_v_bound.value();
                peft_core::init::uniform_(&mut v, -bound, bound)?;
            }
        }
        let v = ctx.place(v)?;
        let v = (&ctx.path / "tinylora_v" / ctx.adapter_name).add(&slot.group.to_string(), v, true);
        plan.vectors[slot.group] = Some(v.shallow_clone());
        Ok((slot, v, owns))
    }

    /// The base the adapter sits on.
    pub fn base_kind(&self) -> TinyloraBase {
        self.base
    }

    /// The rank used (`min(r, out, in)`) and the vector length `u`.
    pub fn dims(&self) -> (i64, i64) {
        (self.r, self.u)
    }

    /// The layer's `weight_tying` group and the index its projections are seeded with.
    pub fn group(&self) -> (usize, i64) {
        (self.group, self.seed_index)
    }

    /// `(tinylora_A, tinylora_B, tinylora_P, v)`.
    pub fn tensors(&self) -> (&Tensor, &Tensor, &Tensor, &Tensor) {
        (&self.a, &self.b, &self.p, &self.v)
    }

    /// `R = Σᵢ vᵢ·Pᵢ` `(r, r)`.
    pub fn r_matrix(&self) -> Tensor {
        compose(&self.v, &self.p)
    }

    /// PEFT's `get_delta_weight`: `B·R·A` in the base weight's layout.
    pub fn delta_weight(&self) -> Tensor {
        let kind = self.a.kind();
        let cast = self.a.device() == Device::Cpu && matches!(kind, Kind::Half | Kind::BFloat16);
        let mut a = self.a.shallow_clone();
        let mut b = self.b.to_kind(kind);
        let mut r = self.r_matrix().to_kind(kind);
        if cast {
            a = a.to_kind(Kind::Float);
            b = b.to_kind(Kind::Float);
            r = r.to_kind(Kind::Float);
        }
        let delta = b.matmul(&r).matmul(&a);
        let delta = match self.base {
            TinyloraBase::Linear { fan_in_fan_out: true } => delta.tr(),
            _ => delta,
        };
        if cast {
            delta.to_kind(kind)
        } else {
            delta
        }
    }

    fn dropped(&self, t: Tensor, train: bool) -> Tensor {
        if self.dropout > 0.0 {
            t.dropout(self.dropout, train)
        } else {
            t
        }
    }
}

impl TunerLayer for TinyloraLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    /// The frozen factors and projections, then (on the layer that owns them) every vector of the adapter.
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        let mut out = vec![
            (format!("tinylora_A.{a}"), self.a.shallow_clone()),
            (format!("tinylora_B.{a}"), self.b.shallow_clone()),
            (format!("tinylora_P.{a}"), self.p.shallow_clone()),
        ];
        if self.owns_vectors {
            out.extend(self.vectors.vectors().into_iter().map(|(g, v)| (format!("tinylora_v.{a}.{g}"), v)));
        }
        out
    }

    fn is_buffer(&self, name: &str) -> bool {
        !name.starts_with("tinylora_v.")
    }

    fn is_trainable_tensor(&self, name: &str) -> bool {
        !self.is_buffer(name)
    }

    /// `tinylora_P` is saved only with `save_projection` (PEFT's `persistent=False` buffers otherwise).
    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = self.named_tensors();
        if !self.save_projection {
            out.retain(|(k, _)| !k.starts_with("tinylora_P."));
        }
        out
    }

    /// The vectors are saved once, at the model level: `base_model.tinylora_v.<group>`.
    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        let marker = format!(".tinylora_v.{adapter}.");
        match key.rfind(&marker) {
            Some(at) => format!("base_model.tinylora_v.{}", &key[at + marker.len()..]),
            None => peft_core::peft_config::keys::remove_adapter_name(key, adapter),
        }
    }

    /// Every TinyLoRA layer references the model's whole `tinylora_v`, so its status lists every adapter.
    fn status_shared_parameters(&self) -> Vec<(String, Tensor)> {
        self.vectors.model_parameters()
    }

    fn transform_output(&self, _base: &dyn BaseLayer, x: &Tensor, y: Tensor, ctx: &ForwardCtx<'_>) -> Tensor {
        let r = self.r_matrix();
        match self.base {
            TinyloraBase::Linear { .. } => {
                let kind = x.kind();
                let h = self.dropped(x.shallow_clone(), ctx.train).to_kind(self.a.kind());
                let h = h.linear::<Tensor>(&self.a, None).linear::<Tensor>(&r, None);
                (y + h.linear::<Tensor>(&self.b, None)).to_kind(kind)
            }
            TinyloraBase::Embedding => {
                let kind = y.kind();
                let (a, b, r) = (self.a.to_kind(kind), self.b.to_kind(kind), r.to_kind(kind));
                let rows = self.dropped(Tensor::embedding(&b, x, -1, false, false), ctx.train);
                y + rows.matmul(&r).matmul(&a)
            }
        }
    }

    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        merge_delta(base, &delta, ctx.safe, &self.adapter, &self.module)
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        let delta = tch::no_grad(|| self.delta_weight());
        unmerge_delta(base, &delta, &self.module)
    }

    fn describe(&self) -> String {
        match self.base {
            TinyloraBase::Linear { .. } => format!(
                "tinylora.Linear(in_features={}, out_features={}, r={}, u={})",
                self.in_features, self.out_features, self.r, self.u
            ),
            TinyloraBase::Embedding => {
                format!(
                    "tinylora.Embedding({}, {}, r={}, u={})",
                    self.in_features, self.out_features, self.r, self.u
                )
            }
        }
    }
}
