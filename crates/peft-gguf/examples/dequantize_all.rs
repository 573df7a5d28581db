//! Dequantizes every tensor of a GGUF file on one thread and on rayon's threads, warm, and prints both
//! times (`cargo run -p peft-gguf --example dequantize_all -- model.gguf`; peft-gguf is built optimised in
//! every profile).

use peft_gguf::{quant, Gguf};
use std::time::{Duration, Instant};

fn main() -> Result<(), peft_gguf::GgufError> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dequantize_all FILE.gguf");
        std::process::exit(2);
    };
    let file = Gguf::open(&path)?;
    let tensors: Vec<_> =
        file.tensors().filter_map(|t| Some((t.kind.ok()?, file.raw(&t.name).ok()?, t.numel()))).collect();
    let mut out: Vec<Vec<f32>> = tensors.iter().map(|(_, _, n)| vec![0f32; *n as usize]).collect();
    let mut run = |parallel: bool| {
        let start = Instant::now();
        for ((kind, raw, _), o) in tensors.iter().zip(out.iter_mut()) {
            if parallel {
                quant::dequantize(*kind, raw, o);
            } else {
                quant::dequantize_serial(*kind, raw, o);
            }
        }
        start.elapsed()
    };
    run(false); // warm the page cache and the output buffers
    let best = |f: &mut dyn FnMut() -> Duration| (0..5).map(|_| f()).min().unwrap_or_default();
    let serial = best(&mut || run(false));
    let parallel = best(&mut || run(true));
    let values: u64 = tensors.iter().map(|(_, _, n)| n).sum();
    eprintln!(
        "{path}: {values} values; one thread {serial:?}, {} rayon threads {parallel:?} ({:.2}x)",
        rayon::current_num_threads(),
        serial.as_secs_f64() / parallel.as_secs_f64()
    );
    Ok(())
}
