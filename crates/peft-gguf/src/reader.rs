//! The GGUF container (versions 2 and 3, little-endian): header, typed metadata, tensor directory and the
//! aligned data section, read from a memory map and checked before anything trusts it — every length
//! against the bytes left, every tensor's type, shape, alignment and byte range, overlaps and duplicates.

use crate::error::{GgufError, Result};
use crate::quant::{self, GgmlType};
use indexmap::IndexMap;
use std::path::{Path, PathBuf};

/// GGML's most dimensions a tensor may have.
const MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are refused (GGUF writers emit flat arrays).
const MAX_DEPTH: usize = 4;

/// One metadata value, typed as GGUF types it.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// An integer of any width and sign, when it fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => i64::try_from(v).ok()?,
            Self::I64(v) => v,
            _ => return None,
        })
    }

    /// A float, or an integer as a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The tensor's GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// GGML's dimensions, fastest-varying first (`ne[0]`, `ne[1]`, …).
    pub dims: Vec<u64>,
    /// The type, or the raw code of a type peft-rs does not dequantize.
    pub kind: std::result::Result<GgmlType, u32>,
    /// The data's byte range in the file (for a type peft-rs reads).
    pub range: Option<std::ops::Range<usize>>,
}

impl TensorInfo {
    /// The shape as PyTorch sees it (`dims` reversed: `[ne[1], ne[0]]` for a matrix).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }

    /// The element count.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file, mapped and checked.
#[derive(Debug)]
pub struct Gguf {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: IndexMap<String, MetaValue>,
    tensors: IndexMap<String, TensorInfo>,
}

/// A cursor over the mapped bytes that refuses to read past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn bad(&self, what: impl Into<String>) -> GgufError {
        GgufError::Format { path: self.path.to_path_buf(), what: what.into(), offset: self.at as u64 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            self.bad(format!("{what} needs {n} bytes, {} are left", self.bytes.len() - self.at))
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in the bytes left when every item takes at least `min_item` bytes.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let start = self.at;
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_item as u64) > left {
            self.at = start;
            return Err(self.bad(format!("{what} is {n}, more than the {left} bytes left can hold")));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let start = self.at;
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| {
            self.at = start;
            self.bad(format!("{what} is not UTF-8"))
        })
    }

    fn value(&mut self, kind: u32, key: &str, depth: usize) -> Result<MetaValue> {
        Ok(match kind {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.bad(format!("metadata `{key}`: bool byte {b}"))),
            },
            8 => MetaValue::String(self.string(&format!("metadata `{key}` string length"))?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(self.bad(format!("metadata `{key}`: arrays nested deeper than {MAX_DEPTH}")));
                }
                let inner = self.u32(key)?;
                let n = self.count(&format!("metadata `{key}` array length"), min_size(inner))?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(inner, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            k => {
                return Err(
                    self.bad(format!("metadata `{key}` has value type {k}, which GGUF does not define"))
                )
            }
        })
    }
}

/// The fewest bytes a value of GGUF type `kind` takes (strings and arrays: their length field).
fn min_size(kind: u32) -> usize {
    match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

impl Gguf {
    /// Maps and checks `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io { path: path.clone(), source };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap reader (safetensors, llama.cpp), it assumes no
        // other process truncates or rewrites the checkpoint while it is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let (version, metadata, tensors) = parse(&map, &path)?;
        Ok(Self { path, map, version, metadata, tensors })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key in file order.
    pub fn metadata(&self) -> &IndexMap<String, MetaValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A metadata value that must be present and be an integer.
    pub fn require_i64(&self, key: &str) -> Result<i64> {
        let v = self.get(key).ok_or_else(|| self.meta_error(key, "missing"))?;
        v.as_i64().ok_or_else(|| self.meta_error(key, &format!("{v:?} is not an integer")))
    }

    /// A metadata value that must be present and be a number.
    pub fn require_f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key).ok_or_else(|| self.meta_error(key, "missing"))?;
        v.as_f64().ok_or_else(|| self.meta_error(key, &format!("{v:?} is not a number")))
    }

    /// A metadata value that must be present and be a string.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.get(key).ok_or_else(|| self.meta_error(key, "missing"))?;
        v.as_str().ok_or_else(|| self.meta_error(key, &format!("{v:?} is not a string")))
    }

    fn meta_error(&self, key: &str, what: &str) -> GgufError {
        GgufError::Metadata { path: self.path.clone(), key: key.into(), what: what.into() }
    }

    /// The tensor directory in file order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    /// One directory entry.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    fn checked(&self, name: &str) -> Result<(&TensorInfo, GgmlType, &[u8])> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        match (info.kind, &info.range) {
            (Ok(kind), Some(range)) => Ok((info, kind, &self.map[range.clone()])),
            _ => Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.into(),
                kind: code_name(info.kind.err().unwrap_or(u32::MAX)),
            }),
        }
    }

    /// The tensor's raw bytes (whole blocks of its type).
    pub fn raw(&self, name: &str) -> Result<&[u8]> {
        Ok(self.checked(name)?.2)
    }

    /// The tensor dequantized to `f32`, flat in PyTorch's (row-major, `shape()`) order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let (info, kind, data) = self.checked(name)?;
        let mut out = vec![0f32; info.numel() as usize];
        quant::dequantize(kind, data, &mut out);
        Ok(out)
    }

    /// The tensor dequantized to an `f32` [`tch::Tensor`] of [`TensorInfo::shape`].
    pub fn tensor(&self, name: &str) -> Result<tch::Tensor> {
        let (info, kind, data) = self.checked(name)?;
        let mut values = vec![0f32; info.numel() as usize];
        quant::dequantize(kind, data, &mut values);
        let torch = |e: tch::TchError| GgufError::Torch {
            path: self.path.clone(),
            tensor: name.into(),
            message: e.to_string(),
        };
        tch::Tensor::f_from_slice(&values).and_then(|t| t.f_reshape(info.shape())).map_err(torch)
    }
}

fn code_name(code: u32) -> String {
    match GgmlType::from_code(code) {
        Err(Some(name)) => name.into(),
        _ => format!("code {code}"),
    }
}

type Parsed = (u32, IndexMap<String, MetaValue>, IndexMap<String, TensorInfo>);

fn parse(bytes: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor { bytes, at: 0, path };
    if c.take(4, "the magic")? != b"GGUF" {
        c.at = 0;
        return Err(c.bad("the magic is not \"GGUF\""));
    }
    let version = c.u32("the version")?;
    if !(2..=3).contains(&version) {
        c.at -= 4;
        return Err(c.bad(format!("version {version} (peft-rs reads versions 2 and 3)")));
    }
    // A directory entry takes at least 8 + 4 + 4 + 8 bytes; a key-value pair 8 + 4 + 1.
    let n_tensors = c.count("the tensor count", 24)?;
    let n_kv = c.count("the metadata count", 13)?;
    let mut metadata = IndexMap::with_capacity(n_kv);
    for _ in 0..n_kv {
        let start = c.at;
        let key = c.string("a metadata key length")?;
        let kind = c.u32(&key)?;
        let value = c.value(kind, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            c.at = start;
            return Err(c.bad(format!("metadata key `{key}` appears twice")));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => *a as usize,
        Some(v) => return Err(c.bad(format!("general.alignment is {v:?}, not a power of two (u32)"))),
    };
    let mut entries = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let start = c.at;
        let name = c.string("a tensor name length")?;
        let n_dims = c.u32(&name)? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            c.at = start;
            return Err(c.bad(format!("tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64(&name)?);
        }
        let code = c.u32(&name)?;
        let offset = c.u64(&name)?;
        entries.push((start, name, dims, code, offset));
    }
    let data_start = c.at.div_ceil(alignment) * alignment;
    let mut tensors: IndexMap<String, TensorInfo> = IndexMap::with_capacity(n_tensors);
    let mut spans = Vec::with_capacity(n_tensors);
    for (start, name, dims, code, offset) in entries {
        c.at = start;
        let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
        let Some(numel) = numel else {
            return Err(c.bad(format!("tensor `{name}`: dimensions {dims:?} overflow")));
        };
        if offset % alignment as u64 != 0 {
            return Err(c.bad(format!(
                "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        let kind = GgmlType::from_code(code).map_err(|_| code);
        let range = match kind {
            Ok(k) => {
                let (per_block, _) = k.block();
                if dims[0] % per_block as u64 != 0 {
                    return Err(c.bad(format!(
                        "tensor `{name}`: its first dimension {} is not a multiple of {}'s block of {per_block}",
                        dims[0],
                        k.name()
                    )));
                }
                let size = k.bytes_for(numel as usize);
                let begin = (data_start as u64).checked_add(offset);
                let end = begin.zip(size).and_then(|(b, s)| b.checked_add(s as u64));
                match (begin, end) {
                    (Some(b), Some(e)) if e <= bytes.len() as u64 => {
                        spans.push((b, e, name.clone()));
                        Some(b as usize..e as usize)
                    }
                    _ => {
                        return Err(c.bad(format!(
                            "tensor `{name}` ({} {:?}) needs bytes past the end of the {}-byte file",
                            k.name(),
                            dims,
                            bytes.len()
                        )))
                    }
                }
            }
            Err(_) if GgmlType::from_code(code).err().flatten().is_some() => None,
            Err(_) => {
                return Err(c.bad(format!("tensor `{name}` has type code {code}, which GGUF does not define")))
            }
        };
        let info = TensorInfo { name: name.clone(), dims, kind, range };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(c.bad(format!("tensor `{name}` appears twice")));
        }
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            c.at = data_start;
            return Err(c.bad(format!("tensors `{}` and `{}` overlap", w[0].2, w[1].2)));
        }
    }
    Ok((version, metadata, tensors))
}
