//! `modules_to_save`: layers trained and saved in full, per adapter (PEFT's `ModulesToSaveWrapper`).
//!
//! Every method shares this: an entry of a config's `modules_to_save` gives each matching layer a
//! trainable copy of its parameters for that adapter; while the adapter is active the layer computes with
//! the copy. PEFT matches entries as plain suffixes of module names (`name.endswith(entry)`, no dot
//! boundary); an entry naming a container (e.g. a classification head made of several layers) copies every
//! adaptable layer inside it.
//!
//! Keys: in memory `base_model.model.<module>.modules_to_save.<adapter>.<param>`, on disk
//! `base_model.model.<module>.<param>` — the same as PEFT writes.

use crate::config::AdapterConfig;
use crate::error::{PeftError, Result};
use crate::hotswap::Hotswap;
use crate::layer::{all_finite, BaseLayer, ForwardCtx, MergeCtx, TunerLayer};
use tch::Tensor;

/// The `peft_type` this auxiliary layer reports.
pub const MODULES_TO_SAVE: &str = "MODULES_TO_SAVE";

/// True when `module` is selected by a `modules_to_save` entry: the module or one of the containers
/// it lies in ends with the entry (PEFT's `key.endswith(entry)` over all module names).
pub fn matches(module: &str, entries: &[String]) -> Option<String> {
    let mut prefixes = vec![module];
    let mut rest = module;
    while let Some((head, _)) = rest.rsplit_once('.') {
        prefixes.push(head);
        rest = head;
    }
    // The outermost matching container is the wrapped module, as in PEFT (children of a wrapped module
    // are not wrapped again).
    prefixes.into_iter().rev().find(|p| entries.iter().any(|e| p.ends_with(e.as_str()))).map(str::to_string)
}

/// A trainable copy of one layer for one adapter.
#[derive(Debug)]
pub struct ModulesToSave {
    adapter: String,
    module: String,
    copy: Box<dyn BaseLayer>,
    /// The base's values before [`TunerLayer::merge`] wrote the copy into it.
    original: Option<Vec<Tensor>>,
}

impl ModulesToSave {
    /// Copies `base` into the adapter var store at `path` (`…/<module>/modules_to_save/<adapter>`).
    ///
    /// # Errors
    /// A base that cannot be copied.
    pub fn new(base: &dyn BaseLayer, module: &str, adapter: &str, path: &tch::nn::Path<'_>) -> Result<Self> {
        let copy = base.copy_to(&(path / "modules_to_save" / adapter))?;
        Ok(Self { adapter: adapter.to_string(), module: module.to_string(), copy, original: None })
    }

    /// The trained copy.
    pub fn copy(&self) -> &dyn BaseLayer {
        self.copy.as_ref()
    }
}

impl TunerLayer for ModulesToSave {
    fn peft_type(&self) -> &'static str {
        MODULES_TO_SAVE
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.copy
            .named_parameters()
            .into_iter()
            .map(|(name, t)| (format!("modules_to_save.{}.{name}", self.adapter), t))
            .collect()
    }

    fn checkpoint_key(&self, key: &str, adapter: &str) -> String {
        key.replacen(&format!(".modules_to_save.{adapter}."), ".", 1)
    }

    fn replaces_base(&self) -> bool {
        true
    }

    fn replace_base(&self, _base: &dyn BaseLayer, x: &Tensor, _ctx: &ForwardCtx<'_>) -> Option<Tensor> {
        Some(self.copy.forward(x))
    }

    /// Writes the trained copy into the base (what PEFT's `merge_and_unload` leaves in place of the wrapper).
    /// A safe merge refuses a copy holding NaN or infinite values, as it refuses them from every tuner.
    fn merge(&mut self, base: &mut dyn BaseLayer, ctx: &MergeCtx<'_>) -> Result<()> {
        let params = base.named_parameters();
        let copies = self.copy.named_parameters();
        if params.len() != copies.len() {
            return Err(PeftError::Invalid(format!(
                "modules_to_save copy of `{}` has other parameters",
                self.module
            )));
        }
        if ctx.safe {
            for (_, src) in &copies {
                if !all_finite(src)? {
                    return Err(PeftError::NonFiniteMerge {
                        adapter: self.adapter.clone(),
                        module: self.module.clone(),
                    });
                }
            }
        }
        let mut saved = Vec::with_capacity(params.len());
        for ((_, mut dst), (_, src)) in params.into_iter().zip(copies) {
            saved.push(dst.f_detach_copy().map_err(PeftError::torch("saving weights before a merge"))?);
            tch::no_grad(|| dst.f_copy_(&src)).map_err(PeftError::torch("merging modules_to_save"))?;
        }
        self.original = Some(saved);
        Ok(())
    }

    fn unmerge(&mut self, base: &mut dyn BaseLayer) -> Result<()> {
        if let Some(saved) = self.original.take() {
            for ((_, mut dst), src) in base.named_parameters().into_iter().zip(saved) {
                tch::no_grad(|| dst.f_copy_(&src)).map_err(PeftError::torch("unmerging modules_to_save"))?;
            }
        }
        Ok(())
    }

    fn as_hotswap(&self) -> Option<&dyn Hotswap> {
        Some(self)
    }

    fn as_hotswap_mut(&mut self) -> Option<&mut dyn Hotswap> {
        Some(self)
    }

    fn describe(&self) -> String {
        format!("ModulesToSaveWrapper({})", self.copy.kind())
    }
}

/// A trained module swaps whole: same shapes, copied in place.
impl Hotswap for ModulesToSave {
    fn pad_rank(&mut self, _target_rank: i64) -> Result<bool> {
        Ok(false)
    }

    fn hotswap_check(&self, tensors: &std::collections::BTreeMap<String, Tensor>) -> Result<()> {
        let mine: std::collections::BTreeMap<String, Tensor> = self.named_tensors().into_iter().collect();
        for (k, t) in tensors {
            match mine.get(k) {
                Some(m) if m.size() == t.size() => {}
                Some(m) => {
                    return Err(PeftError::Invalid(format!(
                        "hotswap: `{}.{k}` has shape {:?}, the loaded adapter {:?}",
                        self.module,
                        m.size(),
                        t.size()
                    )))
                }
                None => {
                    return Err(PeftError::Invalid(format!("hotswap: `{}` has no tensor `{k}`", self.module)))
                }
            }
        }
        Ok(())
    }

    /// Copies the new adapter's trained module in place; absent tensors keep their values (a
    /// modules_to_save copy has no neutral value to fall back to).
    fn hotswap(
        &mut self,
        tensors: &std::collections::BTreeMap<String, Tensor>,
        _config: &dyn AdapterConfig,
    ) -> Result<()> {
        self.hotswap_check(tensors)?;
        for (k, mut dst) in self.named_tensors() {
            if let Some(src) = tensors.get(&k) {
                tch::no_grad(|| dst.f_copy_(src)).map_err(PeftError::torch("hotswapping modules_to_save"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn entries_match_modules_and_their_containers_as_plain_suffixes() {
        let e = vec!["classifier".to_string(), "score".to_string()];
        assert_eq!(matches("classifier", &e).as_deref(), Some("classifier"));
        assert_eq!(matches("model.score", &e).as_deref(), Some("model.score"));
        assert_eq!(matches("classifier.dense", &e).as_deref(), Some("classifier"));
        // No dot boundary, as in PEFT.
        assert_eq!(matches("my_classifier", &e).as_deref(), Some("my_classifier"));
        assert_eq!(matches("model.layers.0.q_proj", &e), None);
    }
}
