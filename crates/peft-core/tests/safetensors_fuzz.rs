//! Property test: whatever bytes sit in a `.safetensors` file — a valid file truncated anywhere, its
//! header's bytes or length changed, or noise — reading it (header only or whole) gives tensors or an
//! error naming the file, never a panic or an allocation of the claimed size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use peft_core::io;
use proptest::prelude::*;
use tch::{Kind, Tensor};

fn valid_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let tensors = vec![
        ("a.weight".to_string(), Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).view([3, 4])),
        ("b.bias".to_string(), Tensor::ones([5], (Kind::BFloat16, tch::Device::Cpu))),
        ("c.ids".to_string(), Tensor::arange(6, (Kind::Int64, tch::Device::Cpu))),
    ];
    io::write_safetensors(&path, &tensors).unwrap();
    std::fs::read(&path).unwrap()
}

/// Ways a file goes wrong.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    FlipHeaderBytes(Vec<(prop::sample::Index, u8)>),
    HeaderLength(u64),
    Noise(Vec<u8>),
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
            .prop_map(Damage::FlipHeaderBytes),
        any::<u64>().prop_map(Damage::HeaderLength),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Damage::Noise),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Damage::Append),
    ]
}

fn apply(good: &[u8], d: &Damage) -> Vec<u8> {
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    match d {
        Damage::Truncate(at) => good[..at.index(good.len())].to_vec(),
        Damage::FlipHeaderBytes(flips) => {
            let mut v = good.to_vec();
            for (at, byte) in flips {
                v[8 + at.index(header_len)] = *byte;
            }
            v
        }
        Damage::HeaderLength(n) => [n.to_le_bytes().as_slice(), &good[8..]].concat(),
        Damage::Noise(bytes) => bytes.clone(),
        Damage::Append(bytes) => [good, bytes.as_slice()].concat(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_files_read_or_fail_cleanly(d in damage()) {
        let good = valid_file();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.safetensors");
        let bytes = apply(&good, &d);
        std::fs::write(&path, &bytes).unwrap();
        let name = path.display().to_string();
        match io::read_safetensors_header(&path) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().contains(&name), "{e}"),
        }
        match io::read_safetensors(&path) {
            Ok(tensors) => {
                // Whatever the header claims, no tensor holds more bytes than the file has.
                for t in tensors {
                    let size = t.tensor.numel() * t.tensor.kind().elt_size_in_bytes();
                    prop_assert!(size <= bytes.len(), "{} claims {size} bytes of a {}-byte file", t.key, bytes.len());
                }
            }
            Err(e) => prop_assert!(e.to_string().contains(&name), "{e}"),
        }
    }
}
