//! `LilyLayer`: PEFT 0.21.2's `lily.Linear` — LiLy on `nn.Linear` (dense or quantized).
//!
//! With `lily_A` `(r, in)` (shared by a run of `stride_A` layers), `lily_B` `(num_B·r, out)` (shared by
//! every layer of the target) and the layer's own `lily_router` `(num_B, r)`:
//!
//! * `h = x · Aᵀ` `(…, r)`; `p = mean over all rows of softmax(h · routerᵀ)` `(num_B,)` — one mixture for
//!   the whole batch, as PEFT computes it;
//! * `B̄ = Σₑ pₑ · B[e]` with `B` viewed `(num_B, r, out)`, so `B̄` is `(r, out)`;
//! * `y = base(x) + scaling · h · B̄`, each active adapter's term cast to the output dtype and added in turn.
//!
//! PEFT cannot merge LiLy (the mixture depends on the batch); merges are refused with its message.

use crate::config::{LilyConfig, PEFT_TYPE};
use peft_core::config::LayerInit;
use peft_core::layer::{BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use peft_core::{PeftError, Result};
use tch::{Device, Kind, Tensor};

/// One LiLy adapter on one linear layer.
#[derive(Debug)]
pub struct LilyLayer {
    adapter: String,
    module: String,
    r: i64,
    num_b: i64,
    scaling: f64,
    in_features: i64,
    out_features: i64,
    lily_a: Tensor,
    lily_b: Tensor,
    router: Tensor,
    /// This layer registered its `lily_A` (it leads its run); otherwise it reads the leader's.
    owns_a: bool,
    /// This layer registered its `lily_B` (the first of its target).
    owns_b: bool,
}

const NOT_MERGEABLE: &str = "This method is not supported for Lily.";

impl LilyLayer {
    /// Creates the adapter as PEFT's `Linear.__init__` + `update_layer` + `_post_injection_hook` do:
    /// three `nn.Linear(bias=False)` constructions (`lily_A`, `lily_B`, `lily_router`, each drawing its
    /// Kaiming-uniform weight), then `reset_lily_parameters` (`lily_A` and the router drawn again, `lily_B`
    /// zeroed or drawn again), and finally the shared `lily_A` / `lily_B` of the layer's run and target
    /// taken in place of its own when it does not lead them.
    ///
    /// # Errors
    /// [`PeftError::UnsupportedLayer`] for anything but linear layers (GPT-2's `Conv1D` included, as in
    /// PEFT).
    pub fn create(config: &mut LilyConfig, ctx: &mut LayerInit<'_, '_>) -> Result<Self> {
        let class = ctx.base.kind();
        let Some(lin) = ctx.base.as_linear().filter(|l| !l.fan_in_fan_out()) else {
            let hint = format!("Lily does not support target modules of type {class} yet.");
            return Err(ctx.unsupported(PEFT_TYPE, &hint));
        };
        let (in_features, out_features) = (lin.in_features(), lin.out_features());
        let (r, num_b) = (config.r, config.num_B);
        let opts = (Kind::Float, Device::Cpu);
        let alloc =
            |shape: [i64; 2]| Tensor::f_empty(shape, opts).map_err(PeftError::torch("allocating LiLy"));
        let a5 = 5f64.sqrt();
        let mut a = alloc([r, in_features])?;
        let mut b = alloc([num_b * r, out_features])?;
        let mut router = alloc([num_b, r])?;
        for t in [&mut a, &mut b, &mut router] {
            peft_core::init::kaiming_uniform_(t, a5)?;
        }
        peft_core::init::kaiming_uniform_(&mut a, a5)?;
        peft_core::init::kaiming_uniform_(&mut router, a5)?;
        if config.init_weights {
            peft_core::init::zeros_(&mut b)?;
        } else {
            peft_core::init::kaiming_uniform_(&mut b, a5)?;
        }
        let adapter = ctx.adapter_name.to_string();
        let plan = config.sharing.clone();
        let mut sharing = plan
            .lock()
            .ok_or_else(|| PeftError::Invalid("LiLy's sharing plan was not made before its layers".into()))?;
        let slot = *sharing.slots.get(ctx.module_name).ok_or_else(|| {
            PeftError::Invalid(format!(
                "`{}` is not among the layers LiLy's sharing plan covers",
                ctx.module_name
            ))
        })?;
        let register = |ctx: &LayerInit<'_, '_>, name: &str, t: Tensor| -> Result<Tensor> {
            Ok((&ctx.path / name / &adapter).add("weight", ctx.place(t)?, true))
        };
        let (lily_a, owns_a) = match sharing.a.get(&(slot.group, slot.a_leader)) {
            Some(shared) if !slot.leads_a() => (shared.shallow_clone(), false),
            _ => {
                let t = register(ctx, "lily_A", a)?;
                sharing.a.insert((slot.group, slot.a_leader), t.shallow_clone());
                (t, true)
            }
        };
        let (lily_b, owns_b) = match sharing.b.get(&slot.group) {
            Some(shared) if !slot.leads_b() => (shared.shallow_clone(), false),
            _ => {
                let t = register(ctx, "lily_B", b)?;
                sharing.b.insert(slot.group, t.shallow_clone());
                (t, true)
            }
        };
        let router = register(ctx, "lily_router", router)?;
        drop(sharing);
        Ok(Self {
            adapter,
            module: ctx.module_name.to_string(),
            r,
            num_b,
            scaling: config.scaling,
            in_features,
            out_features,
            lily_a,
            lily_b,
            router,
            owns_a,
            owns_b,
        })
    }

    /// `(lily_A, lily_B, lily_router)` (the first two possibly shared with other layers).
    pub fn tensors(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.lily_a, &self.lily_b, &self.router)
    }

    /// Whether this layer holds its own `(lily_A, lily_B)` rather than another layer's.
    pub fn owns(&self) -> (bool, bool) {
        (self.owns_a, self.owns_b)
    }

    /// The adapter's term `scaling · h · B̄` for input `x` (in `lily_A`'s dtype).
    fn term(&self, x: &Tensor) -> Tensor {
        let x = x.to_kind(self.lily_a.kind());
        let hidden = x.linear::<Tensor>(&self.lily_a, None);
        let probs = hidden.linear::<Tensor>(&self.router, None).softmax(-1, None::<Kind>);
        let experts = probs.reshape([-1, self.num_b]).mean_dim([0i64].as_slice(), false, None::<Kind>);
        let b = self.lily_b.reshape([self.num_b, -1, self.out_features]);
        let combined = Tensor::einsum("e,eio->io", &[experts, b], None::<&[i64]>);
        hidden.matmul(&combined) * self.scaling
    }
}

impl TunerLayer for LilyLayer {
    fn peft_type(&self) -> &'static str {
        PEFT_TYPE
    }

    /// Every layer lists `lily_A` and `lily_B` — PEFT's state dict holds them under each layer, shared or
    /// not; the model's parameter list names a shared one once, under its first layer.
    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let a = &self.adapter;
        vec![
            (format!("lily_A.{a}.weight"), self.lily_a.shallow_clone()),
            (format!("lily_B.{a}.weight"), self.lily_b.shallow_clone()),
            (format!("lily_router.{a}.weight"), self.router.shallow_clone()),
        ]
    }

    fn transform_output(
        &self,
        _base: &dyn BaseLayer,
        x: &Tensor,
        y: Tensor,
        _ctx: &ForwardCtx<'_>,
    ) -> Tensor {
        let kind = y.kind();
        y + self.term(x).to_kind(kind)
    }

    fn merge(&mut self, _base: &mut dyn BaseLayer, _ctx: &MergeCtx<'_>) -> Result<()> {
        Err(PeftError::Invalid(format!("`{}`: merging LiLy: {NOT_MERGEABLE}", self.module)))
    }

    fn unmerge(&mut self, _base: &mut dyn BaseLayer) -> Result<()> {
        Err(PeftError::Invalid(format!("`{}`: unmerging LiLy: {NOT_MERGEABLE}", self.module)))
    }

    /// PEFT's `__repr__` prefixes `lily.` to `Linear(...)`.
    fn describe(&self) -> String {
        format!(
            "lily.Linear(in_features={}, out_features={}, r={})",
            self.in_features, self.out_features, self.r
        )
    }
}
