//! [`PeftModel`]: a model with adapters — PEFT's `PeftModel` + `BaseTuner` operations.

mod bias;
mod checkpoint;
mod index;
mod inject;
mod merge;
mod options;
mod report;
mod state;

pub use inject::inspect_targets;
pub use options::{AdapterOptions, LoadOptions, LoadReport, SaveOptions};
pub use state::AdaptersDisabled;

use crate::adaptable::{layer_names, Adaptable};
use crate::config::AdapterConfig;
use crate::error::{PeftError, Result};
use index::Indexed;
use indexmap::IndexMap;
use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use tch::nn::{self, ModuleT};
use tch::Tensor;

/// A model with PEFT adapters.
///
/// It owns the user's model `M` (whose [`AdaptableLayer`](crate::AdaptableLayer)s carry the adapters) and the adapter var store
/// (the trainable tensors, named as PEFT names them in memory: `base_model.model.<module>.lora_A.<adapter>
/// .weight`). Build an optimizer from [`PeftModel::adapter_var_store`].
///
/// The method comes from a method crate; the `peft-lora` crate documentation has a complete, runnable
/// example (build a model, add LoRA, forward, save, reload). In outline:
///
/// ```text
/// let vs = VarStore::new(Device::Cpu);
/// let model = MyModel::new(&vs)?;                       // built from peft_core::nn layers
/// let mut peft = PeftModel::new(model, &vs, LoraConfig { .. }.boxed(), "default")?;
/// let mut opt = nn::AdamW::default().build(peft.adapter_var_store(), 1e-3)?;
/// // ... train with peft.forward_t(&x, true) ...
/// peft.save_pretrained("out/adapter", &SaveOptions::default())?;
/// let (peft, report) = PeftModel::from_pretrained(MyModel::new(&vs2)?, &vs2, "out/adapter", LoadOptions::default())?;
/// ```
pub struct PeftModel<M: Adaptable> {
    model: Indexed<M>,
    configs: IndexMap<String, Box<dyn AdapterConfig>>,
    active: Vec<String>,
    disabled: Option<Vec<(Tensor, bool)>>,
    adapter_vs: nn::VarStore,
    base_params: Vec<(String, Tensor)>,
    warnings: Vec<String>,
    /// The `layer_replication` map applied to the model, if any.
    replicated: Option<Vec<(usize, usize)>>,
}

impl<M: Adaptable + fmt::Debug> fmt::Debug for PeftModel<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeftModel")
            .field("adapters", &self.configs.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .field("disabled", &self.disabled.is_some())
            .field("model", &*self.model)
            .finish_non_exhaustive()
    }
}

fn abbreviate(names: &[String]) -> String {
    const MAX: usize = 12;
    if names.len() <= MAX {
        format!("{names:?}")
    } else {
        format!("{:?} … ({} in all)", &names[..MAX], names.len())
    }
}

fn set_requires_grad(t: &Tensor, on: bool) {
    if t.requires_grad() != on {
        let _ = t.set_requires_grad(on);
    }
}

impl<M: Adaptable> PeftModel<M> {
    /// PEFT's `get_peft_model`: wraps `model` (whose base weights live in `base`) and adds the adapter
    /// `adapter_name` from `config`, active and trainable unless the config says `inference_mode`.
    ///
    /// Every base parameter is frozen (`requires_grad = false`), as PEFT does.
    ///
    /// # Errors
    /// See [`PeftModel::add_adapter_with`].
    pub fn new(
        model: M,
        base: &nn::VarStore,
        config: Box<dyn AdapterConfig>,
        adapter_name: &str,
    ) -> Result<Self> {
        Self::with_options(model, base, config, adapter_name, AdapterOptions::default())
    }

    /// [`PeftModel::new`] with explicit options.
    ///
    /// # Errors
    /// See [`PeftModel::add_adapter_with`].
    pub fn with_options(
        model: M,
        base: &nn::VarStore,
        config: Box<dyn AdapterConfig>,
        adapter_name: &str,
        options: AdapterOptions,
    ) -> Result<Self> {
        let mut peft = Self::wrap(model, base)?;
        let trainable = !config.common().inference_mode;
        peft.add_adapter_with(adapter_name, config, options)?;
        peft.activate(&[adapter_name.to_string()], trainable)?;
        Ok(peft)
    }

    /// PEFT's `PeftModel.from_pretrained`: wraps `model` and loads the adapter saved in `dir`, active.
    ///
    /// # Errors
    /// Missing or invalid config, unknown or unlinked method, corrupt weights, missing/unexpected keys,
    /// shape mismatches — each naming the file and key.
    pub fn from_pretrained(
        model: M,
        base: &nn::VarStore,
        dir: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        let mut peft = Self::wrap(model, base)?;
        let report = peft.load_adapter(dir, options)?;
        peft.activate(std::slice::from_ref(&report.adapter_name), report.trainable)?;
        Ok((peft, report))
    }

    /// Wraps `model` with no adapter yet (add or load adapters next). Freezes every base parameter.
    ///
    /// # Errors
    /// Two adaptable layers with the same name, or an empty layer name.
    pub fn wrap(model: M, base: &nn::VarStore) -> Result<Self> {
        let names = layer_names(&model);
        let mut seen = BTreeSet::new();
        for name in &names {
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(PeftError::Invalid(format!(
                    "an adaptable layer has the module name {name:?}; build layers under a non-empty nn::Path"
                )));
            }
            if !seen.insert(name.as_str()) {
                return Err(PeftError::DuplicateModuleName { name: name.clone() });
            }
        }
        let mut base_params: Vec<(String, Tensor)> = base.variables().into_iter().collect();
        base_params.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, t) in &base_params {
            set_requires_grad(t, false);
        }
        Ok(Self {
            model: Indexed::new(model),
            configs: IndexMap::new(),
            active: Vec::new(),
            disabled: None,
            adapter_vs: nn::VarStore::new(base.device()),
            base_params,
            warnings: Vec::new(),
            replicated: None,
        })
    }

    /// The wrapped model (run its forward to use the adapters).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The wrapped model, mutably. Replacing its adaptable layers behind the PeftModel's back is not
    /// supported.
    pub fn model_mut(&mut self) -> &mut M {
        self.model.mutate()
    }

    /// The var store holding every adapter tensor; build the optimizer from it. Frozen (inactive or
    /// inference-mode) adapters have `requires_grad = false` and get no updates. An optimizer built
    /// before [`PeftModel::delete_adapter`] keeps the deleted tensors: rebuild it.
    pub fn adapter_var_store(&self) -> &nn::VarStore {
        &self.adapter_vs
    }

    /// Warnings collected while adding or loading adapters (PEFT's `warnings.warn`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The adapters, in the order they were added.
    pub fn adapter_names(&self) -> Vec<String> {
        self.configs.keys().cloned().collect()
    }

    /// The config of one adapter.
    pub fn config(&self, adapter: &str) -> Option<&dyn AdapterConfig> {
        self.configs.get(adapter).map(|c| c.as_ref())
    }

    /// The active adapters.
    pub fn active_adapters(&self) -> &[String] {
        &self.active
    }

    fn unknown(&self, name: &str) -> PeftError {
        PeftError::UnknownAdapter { name: name.to_string(), available: self.adapter_names() }
    }

    /// Records a warning (logged, and kept in [`PeftModel::warnings`]): for operations that method
    /// crates add to the model.
    pub fn warn(&mut self, message: String) {
        log::warn!("{message}");
        self.warnings.push(message);
    }

    /// Mutable access to an adapter's config (data-driven inits record the ranks they chose).
    pub fn config_mut(&mut self, adapter: &str) -> Option<&mut Box<dyn AdapterConfig>> {
        self.configs.get_mut(adapter)
    }
}

impl<M: Adaptable + ModuleT> ModuleT for PeftModel<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.model.forward_t(xs, train)
    }
}

/// The var-store path of `module`'s adapter tensors: `base_model.model.<module>` (PEFT's in-memory names).
fn module_path<'a>(root: &tch::nn::Path<'a>, module: &str) -> tch::nn::Path<'a> {
    module.split('.').fold(root / "base_model" / "model", |path, seg| &path / seg)
}
