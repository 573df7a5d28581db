//! safetensors reading and atomic writing.
//!
//! Files are written like PEFT writes them: `{"format": "pt"}` metadata, contiguous little-endian
//! data. Every write goes to a temporary file in the target directory which is then renamed over the
//! target, so a crash never leaves a half-written file behind ([`crate::durable`] also replaces whole
//! directories in one step).

use crate::error::{PeftError, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A tensor read from a safetensors file, on the CPU.
#[derive(Debug)]
pub struct LoadedTensor {
    /// The key in the file.
    pub key: String,
    /// The values.
    pub tensor: Tensor,
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// Memory-maps `path`, parses its safetensors header, and hands the parsed file to `f`.
fn with_safetensors<T>(path: &Path, f: impl FnOnce(&SafeTensors<'_>) -> Result<T>) -> Result<T> {
    // A FIFO or device would block `open` or never end: only regular files are mapped.
    peft_config::files::check_regular(path).map_err(|source| PeftError::Io {
        path: path.into(),
        op: "open",
        source,
    })?;
    let file =
        fs::File::open(path).map_err(|source| PeftError::Io { path: path.into(), op: "open", source })?;
    // SAFETY: the map is read-only and dropped before this function returns; callers copy what they need
    // out of it. A concurrent truncation of the file by another process could fault, as with any mmap
    // reader (safetensors' own loaders share this caveat).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| PeftError::Io {
        path: path.into(),
        op: "map",
        source,
    })?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| PeftError::Safetensors { path: path.into(), reason: e.to_string() })?;
    f(&st)
}

/// The view of tensor `name`, its libtorch dtype and its shape.
fn view_of<'a>(
    st: &SafeTensors<'a>,
    path: &Path,
    name: &str,
) -> Result<(safetensors::tensor::TensorView<'a>, Kind, Vec<i64>)> {
    let view =
        st.tensor(name).map_err(|e| PeftError::Safetensors { path: path.into(), reason: e.to_string() })?;
    let kind = kind_of(view.dtype()).ok_or_else(|| PeftError::UnsupportedDtype {
        path: path.into(),
        key: name.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok((view, kind, shape))
}

/// Calls `f` with each tensor of a safetensors file, in key order, one at a time (each copied out of the
/// memory map into a fresh CPU tensor), so large checkpoints never sit in memory twice.
///
/// # Errors
/// [`PeftError::Io`] when the file cannot be opened, [`PeftError::Safetensors`] when it is truncated or
/// corrupt, [`PeftError::UnsupportedDtype`] for dtypes libtorch cannot hold here, or `f`'s error.
pub fn for_each_tensor<E: From<PeftError>>(
    path: &Path,
    mut f: impl FnMut(&str, Tensor) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut inner: Option<E> = None;
    let outer = with_safetensors(path, |st| {
        let mut names: Vec<&str> = st.names();
        names.sort_unstable();
        for name in names {
            let (view, kind, shape) = view_of(st, path, name)?;
            let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)
                .map_err(PeftError::torch(format!("reading `{name}` from {}", path.display())))?;
            if let Err(e) = f(name, tensor) {
                inner = Some(e);
                return Ok(());
            }
        }
        Ok(())
    });
    match (outer, inner) {
        (Err(e), _) => Err(E::from(e)),
        (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    }
}

/// Reads every tensor of a safetensors file (memory-mapped, then copied into fresh CPU tensors).
///
/// # Errors
/// As [`for_each_tensor`].
pub fn read_safetensors(path: &Path) -> Result<Vec<LoadedTensor>> {
    let mut out = Vec::new();
    for_each_tensor::<PeftError>(path, |key, tensor| {
        out.push(LoadedTensor { key: key.to_string(), tensor });
        Ok(())
    })?;
    Ok(out)
}

/// Reads only the header: each key with its dtype name and shape. Cheap even for large files.
///
/// # Errors
/// As [`read_safetensors`].
pub fn read_safetensors_header(path: &Path) -> Result<Vec<(String, String, Vec<i64>)>> {
    with_safetensors(path, |st| {
        let mut out: Vec<_> = st
            .iter()
            .map(|(k, v)| {
                (k.to_string(), format!("{:?}", v.dtype()), v.shape().iter().map(|&d| d as i64).collect())
            })
            .collect();
        out.sort();
        Ok(out)
    })
}

/// Writes tensors as a safetensors file with PEFT's `{"format": "pt"}` metadata, atomically.
///
/// # Errors
/// [`PeftError::Io`] for file-system failures, [`PeftError::Torch`] when a tensor cannot be copied to
/// the CPU, [`PeftError::Invalid`] for a dtype safetensors cannot store.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let bytes = safetensors_bytes(tensors).map_err(|e| match e {
        PeftError::Invalid(m) => PeftError::Invalid(format!("{}: {m}", path.display())),
        other => other,
    })?;
    atomic_write(path, &bytes)
}

/// The bytes of a safetensors file holding `tensors` with PEFT's `{"format": "pt"}` metadata (for
/// writers that place the file themselves, e.g. through [`crate::durable::StagedDir`]).
///
/// # Errors
/// As [`write_safetensors`], without the file-system failures.
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (key, t) in tensors {
        let dtype = dtype_of(t.kind()).ok_or_else(|| {
            PeftError::Invalid(format!("tensor `{key}` has dtype {:?}, which cannot be saved", t.kind()))
        })?;
        let cpu = t
            .f_to_device(Device::Cpu)
            .and_then(|c| c.f_contiguous())
            .map_err(PeftError::torch(format!("copying `{key}` to the CPU")))?;
        let numel = cpu.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut bytes, numel).map_err(PeftError::torch(format!("reading `{key}`")))?;
        let shape = cpu.size().iter().map(|&d| d as usize).collect();
        buffers.push((key.clone(), dtype, shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(k, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (k.as_str(), v))
                .map_err(|e| PeftError::Invalid(format!("tensor `{k}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).map_err(|e| PeftError::Invalid(format!("serializing: {e}")))
}

pub use crate::durable::atomic_write;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_values_dtypes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let a = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]) * 0.5;
        let b = Tensor::from_slice(&[1i64, -2, 3]);
        let c = Tensor::arange(4, (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        write_safetensors(
            &path,
            &[("a".into(), a.tr()), ("b".into(), b.shallow_clone()), ("c".into(), c.shallow_clone())],
        )
        .unwrap();
        let back = read_safetensors(&path).unwrap();
        assert_eq!(back.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(back[0].tensor.equal(&a.tr()));
        assert!(back[1].tensor.equal(&b));
        assert_eq!(back[2].tensor.kind(), Kind::BFloat16);
        assert!(back[2].tensor.equal(&c));
        let raw = fs::read(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&raw).unwrap();
        assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str), Some("pt"));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn truncated_and_garbage_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        write_safetensors(&path, &[("a".into(), Tensor::ones([64], (Kind::Float, Device::Cpu)))]).unwrap();
        let full = fs::read(&path).unwrap();
        fs::write(&path, &full[..full.len() - 10]).unwrap();
        let err = read_safetensors(&path).unwrap_err();
        assert!(matches!(err, PeftError::Safetensors { .. }), "{err}");
        assert!(err.to_string().contains("w.safetensors"), "{err}");
        fs::write(&path, b"not a safetensors file at all").unwrap();
        assert!(matches!(read_safetensors(&path).unwrap_err(), PeftError::Safetensors { .. }));
        let missing = dir.path().join("missing.safetensors");
        assert!(matches!(read_safetensors(&missing).unwrap_err(), PeftError::Io { .. }));
    }
}
