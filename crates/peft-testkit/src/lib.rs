//! Fixtures shared by the behaviour tests of peft-rs' method crates (a dev-dependency only; not
//! published).
//!
//! Every method crate checks the same things beyond its parity rows: that it starts as the identity where
//! PEFT does, that merged equals unmerged, that layers and options it cannot handle are refused by name,
//! that a safe merge refuses NaN and changes nothing, that a file for other shapes fails naming key and
//! shapes, that mixed batches are refused. The models and the checks live here once:
//!
//! * [`nets`]: the test models ([`nets::LayerZoo`]: every layer kind; [`nets::ConvMix`]: the strided and
//!   padded convolutions of the LyCORIS tests; [`nets::Quantized`]: one 4-bit linear layer).
//! * [`rng_lock`]: tests of one binary run on parallel threads and share libtorch's global generator.
//! * [`randomize`], [`max_diff`], [`tuner`]: moving adapters away from their identity init, comparing
//!   outputs, reaching a method's layer.
//! * [`assert_safe_merge_refuses_nan`], [`assert_shape_mismatch`], [`assert_mixed_batches_refused`],
//!   [`assert_unsupported_layer`], [`save_with_config_edit`]: the checks every method makes.
//!
//! ```
//! use peft_testkit::{max_diff, nets::LayerZoo, rng_lock};
//! use tch::nn::Module;
//!
//! let _rng = rng_lock();
//! let (_vs, zoo) = LayerZoo::seeded(0);
//! let x = tch::Tensor::randn([3, 10], (tch::Kind::Float, tch::Device::Cpu));
//! assert_eq!(max_diff(&zoo.lin0.forward(&x), &zoo.lin0.forward(&x)), 0.0);
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod nets;

use peft_core::{Adaptable, AdapterSlots, LoadOptions, PeftError, PeftModel, SaveOptions};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tch::Tensor;

static RNG: Mutex<()> = Mutex::new(());

/// Holds libtorch's global generator for the calling test (tests of one binary run on parallel threads;
/// a test that seeds and then draws must not interleave with another).
pub fn rng_lock() -> MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds `N(0, scale²)` noise to every adapter tensor, so that adapters which start as the identity act.
/// The tensors are visited in name order (the var store is a hash map), so the same seed gives the same
/// adapter in every model built alike.
pub fn randomize<M: Adaptable>(peft: &PeftModel<M>, scale: f64) {
    let mut vars: Vec<(String, Tensor)> = peft.adapter_var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, mut t) in vars {
        let noise = Tensor::randn_like(&t) * scale;
        let _ = tch::no_grad(|| t.f_add_(&noise)).unwrap();
    }
}

/// Fills every adapter tensor with `value` (NaN for the safe-merge checks).
pub fn fill_adapters<M: Adaptable>(peft: &PeftModel<M>, value: f64) {
    for (_, mut t) in peft.adapter_var_store().variables() {
        let _ = tch::no_grad(|| t.f_fill_(value)).unwrap();
    }
}

/// `max |a - b|`.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The method layer of type `T` holding `adapter` on a layer.
pub fn tuner<'a, T: 'static>(slots: &'a AdapterSlots, adapter: &str) -> &'a T {
    let layer = slots.get(adapter).unwrap_or_else(|| panic!("no adapter {adapter:?} on the layer"));
    layer
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("{adapter:?} is not a {}", std::any::type_name::<T>()))
}

/// Merging with `safe` after every adapter tensor became NaN is refused with
/// [`PeftError::NonFiniteMerge`], and the base weight `weight(model)` is unchanged; the same after every
/// adapter tensor became `+inf` (a safe merge refuses infinite weights as well as NaN ones).
pub fn assert_safe_merge_refuses_nan<M: Adaptable>(peft: &mut PeftModel<M>, weight: impl Fn(&M) -> Tensor) {
    for value in [f64::NAN, f64::INFINITY] {
        fill_adapters(peft, value);
        let before = weight(peft.model()).copy();
        let err = peft.merge_adapter(None, true).unwrap_err();
        assert!(matches!(err, PeftError::NonFiniteMerge { .. }), "{value}: {err:?}");
        assert!(weight(peft.model()).equal(&before), "a refused merge of {value} changed the base weight");
    }
}

/// The error is a [`PeftError::ShapeMismatch`] for `key`, expecting `expected` and finding `found`.
pub fn assert_shape_mismatch(err: &PeftError, key: &str, expected: &[i64], found: &[i64]) {
    match err {
        PeftError::ShapeMismatch { key: k, expected: e, found: f, .. } => {
            assert_eq!(k, key);
            assert_eq!((e.as_slice(), f.as_slice()), (expected, found), "{key}: (expected, found)");
        }
        other => panic!("expected a shape mismatch on {key}, got {other:?}"),
    }
}

/// The error is a [`PeftError::UnsupportedLayer`] for `module` and `peft_type` whose text contains
/// `hint`.
pub fn assert_unsupported_layer(err: &PeftError, module: &str, peft_type: &str, hint: &str) {
    match err {
        PeftError::UnsupportedLayer { module: m, peft_type: p, .. } => {
            assert_eq!((m.as_str(), p.as_str()), (module, peft_type));
        }
        other => panic!("{module}: expected UnsupportedLayer, got {other:?}"),
    }
    assert!(err.to_string().contains(hint), "{module}: {err}");
}

/// Mixed batches (a row per adapter) are refused for methods PEFT silently runs with the active adapter.
pub fn assert_mixed_batches_refused<M: Adaptable>(peft: &PeftModel<M>, peft_type: &str) {
    let err = peft.row_adapters(&["default", "__base__"]).unwrap_err();
    assert!(err.to_string().contains(&format!("not supported for {peft_type}")), "{err}");
}

/// Saves the `default` adapter into a temporary directory, then replaces `from` by `to` in its
/// `adapter_config.json` (an adapter file for another rank, block size, …).
pub fn save_with_config_edit<M: Adaptable>(peft: &PeftModel<M>, from: &str, to: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    edit_config(dir.path(), from, to);
    dir
}

/// Replaces `from` by `to` in `dir/adapter_config.json` (which must contain it).
pub fn edit_config(dir: &Path, from: &str, to: &str) {
    let cfg = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(from), "{from:?} is not in {text}");
    std::fs::write(&cfg, text.replace(from, to)).unwrap();
}

/// Loads the adapter in `dir` onto a fresh model and returns the error.
pub fn load_error<M: Adaptable>(model: M, vs: &tch::nn::VarStore, dir: &Path) -> PeftError {
    match PeftModel::from_pretrained(model, vs, dir, LoadOptions::default()) {
        Ok(_) => panic!("loading {} succeeded", dir.display()),
        Err(e) => e,
    }
}
