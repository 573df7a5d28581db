//! `peft convert`: rewriting an adapter directory.
//!
//! * A legacy `adapter_model.bin` (a `torch.save` pickle, zip format) becomes `adapter_model.safetensors`
//!   with the same keys and tensors, read through libtorch's own unpickler (`csrc/pickle_load.cpp`).
//! * With `--initial DIR`, an adapter whose initialisation rewrote the base weights (PiSSA, OLoRA, CorDA,
//!   LoRA-GA) becomes a plain LoRA adapter for the original base: what PEFT's `save_pretrained(…,
//!   path_initial_model_for_weight_conversion=DIR)` writes, `DIR` being where the adapter was saved
//!   right after its initialisation (the method's math: `peft_lora::convert`).
//!
//! The output directory is written in one step (`peft_core::durable::StagedDir`); the inputs are never
//! modified.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use peft_core::durable::StagedDir;
use peft_core::peft_config::keys::{CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use tch::Tensor;
use torch_sys::C_tensor;

#[derive(Args, Debug)]
pub(crate) struct ConvertArgs {
    /// The adapter directory (or hub id) to convert, or an `adapter_model.bin` file.
    adapter: String,
    /// The adapter as saved right after its PiSSA / OLoRA / CorDA / LoRA-GA initialisation: convert to a
    /// plain LoRA adapter for the original base model (rank doubled).
    #[arg(long)]
    initial: Option<String>,
    /// The directory to write (replaced in one step).
    #[arg(long)]
    output: PathBuf,
}

extern "C" {
    fn peft_cli_pickle_load(
        path: *const c_char,
        data: *mut c_void,
        f: extern "C" fn(*mut c_void, *const c_char, *mut C_tensor),
    ) -> *mut c_char;
}

/// Receives one tensor from the shim: `tensor` is a fresh heap `at::Tensor*` (tch's `C_tensor`).
extern "C" fn collect(data: *mut c_void, key: *const c_char, tensor: *mut C_tensor) {
    // SAFETY: `data` is the `Vec` passed to `peft_cli_pickle_load` below, `key` a NUL-terminated string
    // alive for this call, and `tensor` an owned `at::Tensor*`, which `Tensor::from_ptr` takes over.
    unsafe {
        let out = &mut *(data as *mut Vec<(String, Tensor)>);
        let key = CStr::from_ptr(key).to_string_lossy().into_owned();
        out.push((key, Tensor::from_ptr(tensor)));
    }
}

/// The tensors of a `torch.save`'d state dict, in the file's order.
///
/// # Errors
/// An unreadable file, or one that does not hold a dict of tensors (naming the file).
pub(crate) fn read_torch_save(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let c_path = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| anyhow!("{}: a path with a NUL byte", path.display()))?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    // SAFETY: the path is a valid C string; `collect` matches the callback type and `out` outlives the
    // call; the returned error is a malloc'ed message that take_error frees.
    unsafe {
        let err = peft_cli_pickle_load(c_path.as_ptr(), &mut out as *mut _ as *mut c_void, collect);
        peft_core::rng::take_error(err, &path.display().to_string())?;
    }
    Ok(out)
}

/// The adapter weights of `dir`: `adapter_model.safetensors`, else a legacy `adapter_model.bin`.
fn read_adapter_weights(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let safetensors = dir.join(SAFETENSORS_WEIGHTS_NAME);
    if safetensors.is_file() {
        return Ok(peft_core::io::read_safetensors(&safetensors)?
            .into_iter()
            .map(|t| (t.key, t.tensor))
            .collect());
    }
    let bin = dir.join(WEIGHTS_NAME);
    if bin.is_file() {
        return read_torch_save(&bin);
    }
    bail!("{}: neither {SAFETENSORS_WEIGHTS_NAME} nor {WEIGHTS_NAME}", dir.display())
}

/// An adapter argument as a directory (a hub id through the HF cache), or the directory of a `.bin`.
fn adapter_dir(spec: &str) -> Result<(PathBuf, Option<PathBuf>)> {
    let path = Path::new(spec);
    if path.is_file() {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Ok((dir.to_path_buf(), Some(path.to_path_buf())));
    }
    let dir = crate::resolve_adapter(path)?;
    if !dir.is_dir() {
        bail!("{spec}: no such adapter directory or file");
    }
    Ok((dir, None))
}

pub(crate) fn convert(args: ConvertArgs) -> Result<()> {
    let (dir, file) = adapter_dir(&args.adapter)?;
    let mut stage = StagedDir::new(&args.output, false)?;
    match &args.initial {
        None => {
            let bin = file.unwrap_or_else(|| dir.join(WEIGHTS_NAME));
            if !bin.is_file() {
                bail!(
                    "{}: no {WEIGHTS_NAME} to convert (pass --initial DIR to convert a PiSSA/OLoRA adapter)",
                    dir.display()
                );
            }
            let tensors = read_torch_save(&bin)?;
            let bytes =
                peft_core::io::safetensors_bytes(&tensors).with_context(|| bin.display().to_string())?;
            stage.write(SAFETENSORS_WEIGHTS_NAME, &bytes)?;
            for name in [CONFIG_NAME, "README.md"] {
                let src = dir.join(name);
                if src.is_file() {
                    stage.write(name, &std::fs::read(&src).with_context(|| src.display().to_string())?)?;
                }
            }
            println!(
                "{} tensors written to {}",
                tensors.len(),
                args.output.join(SAFETENSORS_WEIGHTS_NAME).display()
            );
        }
        Some(initial) => {
            let (initial_dir, _) = adapter_dir(initial)?;
            let mut warnings = Vec::new();
            let config = peft_core::registry::load_config(&dir, &mut warnings)?;
            for w in &warnings {
                log::warn!("{}: {w}", dir.join(CONFIG_NAME).display());
            }
            let conversion = config.initial_weight_conversion().ok_or_else(|| {
                anyhow!(
                    "{}: {} adapters have no conversion of mutated base weights (only LoRA initialised with \
                     PiSSA, OLoRA, CorDA or LoRA-GA)",
                    dir.display(),
                    config.common().peft_type
                )
            })?;
            let trained = read_adapter_weights(&dir)?;
            let initial: BTreeMap<String, Tensor> = read_adapter_weights(&initial_dir)?.into_iter().collect();
            let (tensors, mut converted) =
                conversion.convert_for_original_base(trained, &initial).with_context(|| {
                    format!("converting {} with the initial adapter {}", dir.display(), initial_dir.display())
                })?;
            converted.common_mut().inference_mode = true;
            let bytes = peft_core::io::safetensors_bytes(&tensors)?;
            stage.write(SAFETENSORS_WEIGHTS_NAME, &bytes)?;
            let text = peft_core::config::to_config_file_text(converted.as_ref());
            stage.write(CONFIG_NAME, text.as_bytes())?;
            println!("plain LoRA adapter for the original base written to {}", args.output.display());
        }
    }
    stage.commit()?;
    Ok(())
}
