//! Loading HF safetensors checkpoints (single file or sharded) into a model's var store, strictly.

use crate::error::{ModelError, Result};
use peft_core::peft_config::files;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;

/// The safetensors files of a checkpoint directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
///
/// # Errors
/// [`ModelError::NoCheckpoint`], or a broken index naming the file.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(ModelError::NoCheckpoint { dir: dir.to_path_buf() });
    }
    let bad = |message: String| ModelError::Config { path: index.clone(), message };
    let text = files::read_text_bounded(&index, files::MAX_JSON_BYTES)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map`".into()))?;
    let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
    files
        .into_iter()
        .map(|f| {
            let p = dir.join(f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(bad(format!("shard {f} is missing")))
            }
        })
        .collect()
}

/// Every tensor key of a checkpoint (headers only).
///
/// # Errors
/// As [`checkpoint_files`], or an unreadable file.
pub fn checkpoint_keys(dir: &Path) -> Result<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    for f in checkpoint_files(dir)? {
        for (k, _, _) in peft_core::io::read_safetensors_header(&f)? {
            keys.insert(k);
        }
    }
    Ok(keys)
}

/// How checkpoint keys map onto a model's variables.
#[derive(Clone, Debug, Default)]
pub struct LoadSpec {
    /// transformers' `base_model_prefix` (`model`, `transformer`, `bert`): checkpoints of the bare
    /// backbone lack it and checkpoints of a task model have it; both load into either.
    pub prefix: Option<String>,
    /// Checkpoint keys ending in one of these are buffers transformers does not load either
    /// (`rotary_emb.inv_freq`, `embeddings.position_ids`, …).
    pub ignore_suffixes: Vec<String>,
    /// Checkpoint keys to skip entirely (e.g. `lm_head.weight` of a model whose head is tied).
    pub ignore_keys: Vec<String>,
    /// Checkpoint keys starting with one of these are skipped (heads of other tasks, e.g. BERT's `cls.`).
    pub ignore_prefixes: Vec<String>,
    /// Variables allowed to be absent from the checkpoint (freshly initialised task heads, as
    /// transformers does with a warning).
    pub optional: Vec<String>,
    /// Variables the checkpoint holds in another form (quantized weights, installed separately).
    pub provided_elsewhere: Vec<String>,
}

/// What [`load_checkpoint`] did.
#[derive(Clone, Debug, Default)]
pub struct LoadInfo {
    /// Variables loaded.
    pub loaded: usize,
    /// Optional variables the checkpoint did not have (they keep their initialisation).
    pub newly_initialized: Vec<String>,
}

/// Copies every checkpoint tensor into the variable of the same name (after prefix mapping), converting
/// dtype and device. Every variable must be filled (unless optional) and every tensor must be used
/// (unless ignored).
///
/// # Errors
/// [`ModelError::ShapeMismatch`], [`ModelError::MissingWeights`], [`ModelError::UnexpectedWeights`], or
/// a corrupt file.
pub fn load_checkpoint(vs: &VarStore, dir: &Path, spec: &LoadSpec) -> Result<LoadInfo> {
    load_checkpoint_with(vs, dir, spec, &mut |_, _| Ok(()))
}

/// [`load_checkpoint`] calling `after(variable_name, variable)` right after each variable is filled
/// (a quantizing loader converts and releases each weight before the next one is read).
///
/// # Errors
/// As [`load_checkpoint`], or the first error of `after`.
pub fn load_checkpoint_with(
    vs: &VarStore,
    dir: &Path,
    spec: &LoadSpec,
    after: &mut dyn FnMut(&str, &tch::Tensor) -> Result<()>,
) -> Result<LoadInfo> {
    let mut filler = Filler::new(vs, spec, after);
    for file in checkpoint_files(dir)? {
        peft_core::io::for_each_tensor::<ModelError>(&file, |key, tensor| filler.offer(&file, key, &tensor))?;
    }
    filler.finish(dir)
}

/// [`load_checkpoint_with`] for tensors that do not come from safetensors files (a GGUF checkpoint,
/// dequantized and renamed by its reader): `tensors` yields `(checkpoint key, tensor)` in file order and
/// `source` names the checkpoint in errors.
///
/// # Errors
/// As [`load_checkpoint`], or the first error of `tensors` or `after`.
pub fn load_tensors_with(
    vs: &VarStore,
    source: &Path,
    spec: &LoadSpec,
    tensors: impl Iterator<Item = Result<(String, tch::Tensor)>>,
    after: &mut dyn FnMut(&str, &tch::Tensor) -> Result<()>,
) -> Result<LoadInfo> {
    let mut filler = Filler::new(vs, spec, after);
    for item in tensors {
        let (key, tensor) = item?;
        filler.offer(source, &key, &tensor)?;
    }
    filler.finish(source)
}

/// The strict copy of checkpoint tensors into a var store, whatever the tensors come from.
struct Filler<'a> {
    vars: std::collections::HashMap<String, tch::Tensor>,
    spec: &'a LoadSpec,
    after: &'a mut dyn FnMut(&str, &tch::Tensor) -> Result<()>,
    filled: BTreeSet<String>,
    unexpected: Vec<String>,
}

impl<'a> Filler<'a> {
    fn new(
        vs: &VarStore,
        spec: &'a LoadSpec,
        after: &'a mut dyn FnMut(&str, &tch::Tensor) -> Result<()>,
    ) -> Self {
        Self { vars: vs.variables(), spec, after, filled: BTreeSet::new(), unexpected: Vec::new() }
    }

    fn offer(&mut self, file: &Path, key: &str, tensor: &tch::Tensor) -> Result<()> {
        let spec = self.spec;
        if spec.ignore_keys.iter().any(|k| k == key)
            || spec.ignore_prefixes.iter().any(|p| key.starts_with(p.as_str()))
        {
            return Ok(());
        }
        let mut candidates = vec![key.to_string()];
        if let Some(p) = &spec.prefix {
            match key.strip_prefix(&format!("{p}.")) {
                Some(stripped) => candidates.push(stripped.to_string()),
                None => candidates.push(format!("{p}.{key}")),
            }
        }
        let Some((name, var)) = candidates.iter().find_map(|c| self.vars.get(c).map(|v| (c.clone(), v)))
        else {
            if !spec.ignore_suffixes.iter().any(|s| key.ends_with(s.as_str())) {
                self.unexpected.push(key.to_string());
            }
            return Ok(());
        };
        if var.size() != tensor.size() {
            return Err(ModelError::ShapeMismatch {
                path: file.to_path_buf(),
                key: key.to_string(),
                expected: var.size(),
                found: tensor.size(),
            });
        }
        let mut dst = var.shallow_clone();
        tch::no_grad(|| dst.f_copy_(tensor))
            .map_err(ModelError::torch(format!("loading `{key}` from {}", file.display())))?;
        (self.after)(&name, var)?;
        self.filled.insert(name);
        Ok(())
    }

    fn finish(self, source: &Path) -> Result<LoadInfo> {
        if !self.unexpected.is_empty() {
            return Err(ModelError::UnexpectedWeights { path: source.to_path_buf(), keys: self.unexpected });
        }
        let mut missing = Vec::new();
        let mut newly_initialized = Vec::new();
        for name in self.vars.keys() {
            if self.filled.contains(name) || self.spec.provided_elsewhere.iter().any(|p| p == name) {
                continue;
            }
            if self.spec.optional.iter().any(|o| o == name) {
                newly_initialized.push(name.clone());
            } else {
                missing.push(name.clone());
            }
        }
        missing.sort();
        if !missing.is_empty() {
            return Err(ModelError::MissingWeights { path: source.to_path_buf(), keys: missing });
        }
        newly_initialized.sort();
        for n in &newly_initialized {
            // Info, not a warning: an adapter loaded next often provides the head (`modules_to_save`);
            // see `HfModel::fresh_weights` for checking what is still random after that.
            log::info!(
                "{}: `{n}` is not in the checkpoint and keeps its fresh initialisation",
                source.display()
            );
        }
        Ok(LoadInfo { loaded: self.filled.len(), newly_initialized })
    }
}

/// Reads a whole safetensors file into a map (small files: inputs, fixtures).
///
/// # Errors
/// An unreadable or corrupt file.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, tch::Tensor>> {
    Ok(peft_core::io::read_safetensors(path)?.into_iter().map(|t| (t.key, t.tensor)).collect())
}
