//! Adaptable parameters: a bare `nn.Parameter` that adapters target by name (PEFT's
//! `target_parameters`), beside the adaptable modules.
//!
//! Some modules keep their weights as plain parameters and index into them (transformers' mixture of
//! experts store every expert in one 3-d tensor, `mlp.experts.gate_up_proj` `(E, 2I, H)`), so there is no
//! linear layer to wrap. PEFT's `ParamWrapper` then adapts the parameter itself: while the module runs,
//! the parameter reads as `W + ΔW` (a `torch.nn.utils.parametrize` parametrization).
//!
//! Here such a parameter is an adaptable layer of its own, [`Param`] (an [`AdaptedLayer`] over a
//! [`ParamBase`]), named by the parameter's full name (`model.layers.0.mlp.experts.gate_up_proj`). Its
//! "forward pass" is reading the value: [`AdaptedLayer::value`] returns the parameter as the active
//! adapters see it, so disabling, merging and the adapter registry work exactly as for modules. The
//! owning module computes with that value.
//!
//! Parameters of ordinary layers (a `Linear`'s `weight`) are targeted too: the method then gets a
//! [`ParamTarget`] in [`crate::config::LayerInit::parameter`] and computes the layer with the adapted
//! weight. Parameter layers take no part in `target_modules` matching (PEFT's modules are the owners).

use crate::error::{PeftError, Result};
use crate::layer::{AdaptableLayer, AdaptedLayer, BaseLayer, ForwardCtx, WeightLike};
use crate::Adaptable;
use std::any::Any;
use tch::nn::Path;
use tch::{Kind, Tensor};

/// A bare parameter as an adaptable base. Its value is [`ParamBase::weight`]; the base's "output" is
/// that value, whatever the input.
#[derive(Debug)]
pub struct ParamBase {
    /// The parameter, registered in the model's var store under its full name.
    pub weight: Tensor,
    /// The owning module's name (`model.layers.0.mlp.experts`): PEFT's module, where its wrappers sit.
    pub owner: String,
    /// The parameter's name on its owner (`gate_up_proj`).
    pub param_name: String,
    /// transformers' `is_transposed` on the owning module: a 3-d parameter is stored `(E, in, out)`
    /// instead of the usual `(E, out, in)`.
    pub transposed: bool,
}

/// An adaptable parameter, as a model stores it (see the module documentation).
pub type Param = AdaptedLayer<ParamBase>;

impl BaseLayer for ParamBase {
    fn kind(&self) -> &'static str {
        "Parameter"
    }

    /// The parameter's value; `x` is ignored (a parameter has no input).
    fn forward(&self, _x: &Tensor) -> Tensor {
        self.weight.shallow_clone()
    }

    fn named_parameters(&self) -> Vec<(&'static str, Tensor)> {
        // The layer's name is the parameter's full name already.
        vec![("", self.weight.shallow_clone())]
    }

    fn as_weighted(&self) -> Option<&dyn WeightLike> {
        Some(self)
    }

    fn as_weighted_mut(&mut self) -> Option<&mut dyn WeightLike> {
        Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

impl WeightLike for ParamBase {
    fn weight(&self) -> Tensor {
        self.weight.shallow_clone()
    }

    fn set_weight(&mut self, value: &Tensor) -> Result<()> {
        if value.size() != self.weight.size() {
            return Err(PeftError::Invalid(format!(
                "`{}.{}`: cannot write a value of shape {:?} into a parameter of shape {:?}",
                self.owner,
                self.param_name,
                value.size(),
                self.weight.size()
            )));
        }
        if value.data_ptr() == self.weight.data_ptr() {
            return Ok(());
        }
        tch::no_grad(|| self.weight.f_copy_(value)).map(drop).map_err(PeftError::torch("writing a parameter"))
    }

    fn bias(&self) -> Option<Tensor> {
        None
    }

    fn compute_kind(&self) -> Kind {
        self.weight.kind()
    }
}

impl AdaptedLayer<ParamBase> {
    /// The parameter as the model computes with it: the stored value plus the active, unmerged adapters'
    /// updates (the stored value itself when adapters are disabled or merged).
    pub fn value(&self, ctx: &ForwardCtx<'_>) -> Tensor {
        self.forward_ctx(&self.base().weight, ctx)
    }
}

/// An adaptable parameter `owner/name` of `shape`, allocated in the path's kind and on its device (its
/// values come from a checkpoint or from the caller); `transposed` as [`ParamBase::transposed`].
///
/// # Errors
/// A second parameter under the same name, or a libtorch failure.
pub fn param(owner: &Path<'_>, name: &str, shape: &[i64], transposed: bool) -> Result<Param> {
    let owner_name = crate::nn::path_name(owner);
    if owner.get(name).is_some() {
        return Err(PeftError::DuplicateModuleName { name: format!("{owner_name}.{name}") });
    }
    let t = crate::nn::alloc(owner, name, shape, (owner.kind(), owner.device()), false)?;
    let weight = owner.add(name, t, true);
    let full = if owner_name.is_empty() { name.to_string() } else { format!("{owner_name}.{name}") };
    Ok(AdaptedLayer::new(
        full,
        ParamBase { weight, owner: owner_name, param_name: name.to_string(), transposed },
    ))
}

/// One parameter an adapter targets, as [`crate::config::LayerInit::parameter`] hands it to the method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamTarget {
    /// The parameter's name on its module: the [`ParamBase::param_name`] of a parameter layer, `weight`
    /// for a layer's own weight.
    pub name: String,
    /// The full parameter name PEFT matched (`model.layers.0.mlp.experts.gate_up_proj`).
    pub key: String,
    /// The module path of PEFT's wrapper for this parameter, under which its tensors are saved: the owner,
    /// with one `.base_layer` for every wrapper of a later-registered parameter of the same owner around
    /// it (PEFT nests one `ParamWrapper` per targeted parameter, in registration order).
    pub peft_module: String,
}

/// The parameter a layer offers to `target_parameters`: `(owner module, parameter name)`. Parameter
/// layers offer themselves; other layers offer their weight (and bias), named as in PyTorch.
fn offered(layer: &dyn AdaptableLayer) -> Vec<(String, String)> {
    match layer.base().as_any().downcast_ref::<ParamBase>() {
        Some(p) => vec![(p.owner.clone(), p.param_name.clone())],
        None => layer
            .base()
            .named_parameters()
            .into_iter()
            .map(|(n, _)| (layer.name().to_string(), n.to_string()))
            .collect(),
    }
}

/// Whether a layer is an adaptable parameter (kept out of `target_modules` matching).
pub fn is_param_layer(layer: &dyn AdaptableLayer) -> bool {
    layer.base().as_any().downcast_ref::<ParamBase>().is_some()
}

/// PEFT's `_inject_parameters` matching: every parameter whose full name equals an entry of `targets` or
/// ends with `.<entry>`, by layer name, with its [`ParamTarget`]. PEFT applies no `exclude_modules` or
/// `layers_to_transform` here, and neither does this.
///
/// # Errors
/// A parameter on the top-level module (PEFT cannot wrap it), or two targeted parameters on one layer.
pub fn match_parameters<M: Adaptable + ?Sized>(
    model: &M,
    targets: &[String],
) -> Result<Vec<(String, ParamTarget)>> {
    if targets.is_empty() {
        // Nothing to match: no walk of the model (loading walks it a bounded number of times).
        return Ok(Vec::new());
    }
    let mut found: Vec<(String, String, String)> = Vec::new(); // (layer, owner, name)
    model.visit_layers(&mut |layer| {
        for (owner, name) in offered(layer) {
            let key = if owner.is_empty() { name.clone() } else { format!("{owner}.{name}") };
            if targets.iter().any(|t| key == *t || key.ends_with(&format!(".{t}"))) {
                found.push((layer.name().to_string(), owner, name));
            }
        }
    });
    let mut out: Vec<(String, ParamTarget)> = Vec::new();
    for (i, (layer, owner, name)) in found.iter().enumerate() {
        if owner.is_empty() {
            return Err(PeftError::Invalid(format!(
                "Targeting an nn.Parameter on the top-level module is not supported (parameter '{name}')."
            )));
        }
        if out.iter().any(|(l, _)| l == layer) {
            return Err(PeftError::Invalid(format!(
                "target_parameters {targets:?} select more than one parameter of `{layer}`; only its weight can \
                 be adapted"
            )));
        }
        // The later-registered targeted parameters of the same owner wrap this one's wrapper.
        let outside = found[i + 1..].iter().filter(|(_, o, _)| o == owner).count();
        let peft_module = format!("{owner}{}", ".base_layer".repeat(outside));
        out.push((
            layer.clone(),
            ParamTarget { name: name.clone(), key: format!("{owner}.{name}"), peft_module },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tch::nn::VarStore;

    #[derive(Debug, crate::Adaptable)]
    struct Experts {
        gate_up_proj: Param,
        down_proj: Param,
        q_proj: crate::nn::Linear,
    }

    fn model(vs: &VarStore) -> Experts {
        let e = vs.root() / "layers" / 0 / "experts";
        Experts {
            gate_up_proj: param(&e, "gate_up_proj", &[3, 8, 4], false).unwrap(),
            down_proj: param(&e, "down_proj", &[3, 4, 4], false).unwrap(),
            q_proj: crate::nn::linear(vs.root() / "layers" / 0 / "q_proj", 4, 4, Default::default()).unwrap(),
        }
    }

    #[test]
    fn later_registered_parameters_wrap_earlier_ones() {
        let vs = VarStore::new(tch::Device::Cpu);
        let m = model(&vs);
        let targets = ["experts.down_proj".to_string(), "experts.gate_up_proj".to_string()];
        let found = match_parameters(&m, &targets).unwrap();
        let modules: Vec<(&str, &str)> =
            found.iter().map(|(l, p)| (l.as_str(), p.peft_module.as_str())).collect();
        assert_eq!(
            modules,
            [
                ("layers.0.experts.gate_up_proj", "layers.0.experts.base_layer"),
                ("layers.0.experts.down_proj", "layers.0.experts"),
            ]
        );
        // One parameter alone is not nested.
        let found = match_parameters(&m, &targets[1..]).unwrap();
        assert_eq!(found[0].1.peft_module, "layers.0.experts");
    }

    #[test]
    fn a_layer_weight_is_offered_under_its_pytorch_name() {
        let vs = VarStore::new(tch::Device::Cpu);
        let m = model(&vs);
        let found = match_parameters(&m, &["q_proj.weight".to_string()]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "layers.0.q_proj");
        assert_eq!(found[0].1.name, "weight");
        assert_eq!(found[0].1.peft_module, "layers.0.q_proj");
    }

    #[test]
    fn value_without_adapters_is_the_stored_parameter() {
        let vs = VarStore::new(tch::Device::Cpu);
        let m = model(&vs);
        let v = m.gate_up_proj.value(&ForwardCtx::eval());
        assert_eq!(v.data_ptr(), m.gate_up_proj.base().weight.data_ptr());
        assert!(vs.variables().contains_key("layers.0.experts.gate_up_proj"));
        assert!(!crate::adaptable::layer_names(&m).is_empty());
    }

    #[test]
    fn a_second_parameter_under_one_name_is_refused() {
        let vs = VarStore::new(tch::Device::Cpu);
        let e = vs.root() / "experts";
        param(&e, "w", &[2, 2], false).unwrap();
        let err = param(&e, "w", &[2, 2], false).unwrap_err();
        assert!(err.to_string().contains("experts.w"), "{err}");
    }
}
