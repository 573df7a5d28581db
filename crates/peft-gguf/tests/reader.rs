//! Malformed GGUF files are refused with one line naming the file and what is wrong; a well-formed one
//! reads back what was written. The files are written byte by byte here (the oracle's own files are in
//! tests/tests/gguf_parity.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_gguf::{Gguf, GgufError, MetaValue};

/// A GGUF v3 file, written field by field.
#[derive(Clone)]
struct Writer {
    version: u32,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data: Vec<u8>,
    alignment: usize,
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

impl Writer {
    fn new() -> Self {
        Self { version: 3, kv: vec![], tensors: vec![], data: vec![], alignment: 32 }
    }

    fn kv(mut self, key: &str, kind: u32, value: Vec<u8>) -> Self {
        self.kv.push((key.into(), kind, value));
        self
    }

    /// A tensor at the next aligned offset of the data section.
    fn tensor(mut self, name: &str, dims: &[u64], kind: u32, bytes: &[u8]) -> Self {
        let offset = self.data.len().div_ceil(self.alignment) * self.alignment;
        self.data.resize(offset, 0);
        self.data.extend_from_slice(bytes);
        self.tensors.push((name.into(), dims.to_vec(), kind, offset as u64));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, kind, v) in &self.kv {
            out.extend(string(k));
            out.extend(kind.to_le_bytes());
            out.extend(v);
        }
        for (name, dims, kind, offset) in &self.tensors {
            out.extend(string(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(kind.to_le_bytes());
            out.extend(offset.to_le_bytes());
        }
        out.resize(out.len().div_ceil(self.alignment) * self.alignment, 0);
        out.extend(&self.data);
        out
    }
}

fn open(bytes: &[u8]) -> (tempfile::TempDir, Result<Gguf, GgufError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let file = Gguf::open(&path);
    (dir, file)
}

fn error(bytes: &[u8]) -> String {
    let (_dir, file) = open(bytes);
    let msg = file.unwrap_err().to_string();
    assert!(msg.contains("model.gguf"), "names the file: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

/// One Q8_0 block: scale 0.5 (f16 0x3800), then 32 signed bytes.
fn q8_block() -> Vec<u8> {
    let mut b = vec![0x00, 0x38];
    b.extend((0..32).map(|i: i8| (i - 16) as u8));
    b
}

fn good() -> Writer {
    Writer::new()
        .kv("general.architecture", 8, string("llama"))
        .kv("llama.block_count", 4, 2u32.to_le_bytes().to_vec())
        .tensor("a", &[32, 2], 8, &[q8_block(), q8_block()].concat())
        .tensor("b", &[3], 0, &[1f32, -2.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>())
}

#[test]
fn a_well_formed_file_reads_back_what_was_written() {
    let (_dir, file) = open(&good().bytes());
    let file = file.unwrap();
    assert_eq!(file.require_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get("llama.block_count"), Some(&MetaValue::U32(2)));
    assert_eq!(file.require_i64("llama.block_count").unwrap(), 2);
    let a = file.tensor("a").unwrap();
    assert_eq!(a.size(), [2, 32]);
    let want: Vec<f32> = (0..64).map(|i| ((i % 32) as f32 - 16.0) * 0.5).collect();
    assert_eq!(Vec::<f32>::try_from(a.flatten(0, -1)).unwrap(), want);
    assert_eq!(file.dequantize("b").unwrap(), [1.0, -2.0, 0.25]);
}

#[test]
fn missing_tensors_and_metadata_are_named() {
    let (_dir, file) = open(&good().bytes());
    let file = file.unwrap();
    assert!(file.tensor("c").unwrap_err().to_string().ends_with("no tensor `c`"));
    let e = file.require_i64("llama.context_length").unwrap_err().to_string();
    assert!(e.ends_with("metadata `llama.context_length`: missing"), "{e}");
    let e = file.require_i64("general.architecture").unwrap_err().to_string();
    assert!(e.contains("is not an integer"), "{e}");
}

#[test]
fn broken_headers_are_refused_naming_what_is_wrong() {
    let good = good();
    let bytes = good.bytes();
    assert!(error(b"GGU").contains("the magic needs 4 bytes, 3 are left"));
    assert!(error(b"GGML\x03\0\0\0").contains("the magic is not \"GGUF\""));
    let v1 = Writer { version: 1, ..good.clone() };
    assert!(error(&v1.bytes()).contains("version 1 (peft-rs reads versions 2 and 3)"));
    let mut huge = bytes.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(error(&huge).contains("the tensor count is 18446744073709551615, more than the"));
    let mut kv = bytes.clone();
    kv[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(error(&kv).contains("the metadata count is 1099511627776"));
    // Cut inside the tensor directory.
    let cut = error(&bytes[..90]);
    assert!(cut.contains("more than the") || cut.contains("needs"), "{cut}");
    let cut = error(&bytes[..bytes.len() - 1]);
    assert!(cut.contains("tensor `b` (F32 [3]) needs bytes past the end of the"), "{cut}");
    let bad_type = Writer::new().kv("x", 13, vec![0; 8]);
    assert!(error(&bad_type.bytes()).contains("metadata `x` has value type 13, which GGUF does not define"));
    let long = Writer::new().kv("x", 8, (u64::MAX / 2).to_le_bytes().to_vec());
    assert!(error(&long.bytes()).contains("metadata `x` string length is 9223372036854775807"));
    let not_utf8 = Writer::new().kv("x", 8, [2u64.to_le_bytes().to_vec(), vec![0xFF, 0xFE]].concat());
    assert!(error(&not_utf8.bytes()).contains("metadata `x` string length is not UTF-8"));
    let mut array = 8u32.to_le_bytes().to_vec();
    array.extend((1u64 << 50).to_le_bytes());
    assert!(error(&Writer::new().kv("x", 9, array).bytes())
        .contains("metadata `x` array length is 1125899906842624"));
    let twice = Writer::new().kv("x", 0, vec![1]).kv("x", 0, vec![2]);
    assert!(error(&twice.bytes()).contains("metadata key `x` appears twice"));
    let bool2 = Writer::new().kv("x", 7, vec![2]);
    assert!(error(&bool2.bytes()).contains("metadata `x`: bool byte 2"));
    let align = Writer::new().kv("general.alignment", 4, 24u32.to_le_bytes().to_vec());
    assert!(error(&align.bytes()).contains("general.alignment is U32(24), not a power of two"));
    let mut nested = vec![];
    for _ in 0..5 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(0u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    assert!(error(&Writer::new().kv("x", 9, nested).bytes()).contains("arrays nested deeper than 4"));
}

#[test]
fn broken_tensor_directories_are_refused_naming_the_tensor() {
    let q8 = q8_block();
    let w = |dims: &[u64], kind: u32, data: &[u8]| Writer::new().tensor("t", dims, kind, data);
    assert!(error(&w(&[32, 1, 1, 1, 1], 8, &q8).bytes()).contains("tensor `t` has 5 dimensions (1 to 4)"));
    assert!(error(&w(&[], 8, &q8).bytes()).contains("tensor `t` has 0 dimensions"));
    assert!(error(&w(&[16], 8, &q8).bytes())
        .contains("its first dimension 16 is not a multiple of Q8_0's block of 32"));
    assert!(
        error(&w(&[32, 2], 8, &q8).bytes()).contains("tensor `t` (Q8_0 [32, 2]) needs bytes past the end")
    );
    assert!(error(&w(&[u64::MAX, 4], 0, &q8).bytes())
        .contains("tensor `t`: dimensions [18446744073709551615, 4] overflow"));
    assert!(
        error(&w(&[32], 99, &q8).bytes()).contains("tensor `t` has type code 99, which GGUF does not define")
    );
    let mut unaligned = w(&[32], 8, &q8);
    unaligned.tensors[0].3 = 4;
    assert!(error(&unaligned.bytes()).contains("tensor `t`: offset 4 is not a multiple of the alignment 32"));
    let mut overlap = w(&[32], 8, &q8).tensor("u", &[32], 8, &q8);
    overlap.tensors[1].3 = 0;
    assert!(error(&overlap.bytes()).contains("tensors `t` and `u` overlap"));
    let twice = w(&[32], 8, &q8).tensor("t", &[32], 8, &q8);
    assert!(error(&twice.bytes()).contains("tensor `t` appears twice"));
}

#[test]
fn types_peft_rs_does_not_dequantize_are_named_when_read() {
    // IQ4_NL (20): the file opens (its metadata is readable), the tensor is refused by name.
    let (_dir, file) = open(&Writer::new().tensor("iq", &[32], 20, &[0; 18]).bytes());
    let file = file.unwrap();
    let e = file.tensor("iq").unwrap_err().to_string();
    assert!(e.contains("tensor `iq` has type IQ4_NL, which peft-rs does not dequantize"), "{e}");
}
