//! PEFT's `AutoPeftModel`: from an adapter directory to the right base model with the adapter attached.

use crate::error::{ModelError, Result};
use crate::{HfModel, LoadOptions, Task};
use peft_core::{LoadReport, PeftModel};
use std::path::Path;
use tch::nn::VarStore;

/// A model with its adapter, and the var store of its base weights.
#[derive(Debug)]
pub struct AutoPeft {
    /// The model with the adapter active.
    pub peft: PeftModel<HfModel>,
    /// The base weights.
    pub vs: VarStore,
    /// What the adapter load did.
    pub report: LoadReport,
}

/// Reads `adapter_dir/adapter_config.json`, loads its base model (`base_model_name_or_path`, or
/// `base_override`) for the task its `task_type` names (else the base config's `architectures`), and
/// attaches the adapter.
///
/// # Errors
/// A config without a base model, an unloadable base, or an adapter that does not fit it.
pub fn from_pretrained(
    adapter_dir: &Path,
    base_override: Option<&str>,
    load: &LoadOptions,
    peft_options: peft_core::LoadOptions,
) -> Result<AutoPeft> {
    let mut warnings = Vec::new();
    let mut dir = adapter_dir.to_path_buf();
    if let Some(sub) = &peft_options.subfolder {
        dir = dir.join(sub);
    }
    let config = peft_core::registry::load_config(&dir, &mut warnings)?;
    let base = match base_override {
        Some(b) => b.to_string(),
        None => config.common().base_model_name_or_path.clone().ok_or_else(|| {
            ModelError::Input(format!(
                "{}: `base_model_name_or_path` is not set; give the base model explicitly",
                dir.join(peft_core::peft_config::keys::CONFIG_NAME).display()
            ))
        })?,
    };
    let mut options = load.clone();
    if options.revision.is_none() {
        options.revision = config.common().revision.clone();
    }
    let task = config.common().task_type.map(Task::from_task_type);
    let loaded = HfModel::load(&base, task, &options)?;
    let (peft, report) = PeftModel::from_pretrained(loaded.model, &loaded.vs, adapter_dir, peft_options)?;
    Ok(AutoPeft { peft, vs: loaded.vs, report })
}
