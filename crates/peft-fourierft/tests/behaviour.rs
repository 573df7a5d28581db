//! FourierFT behaviour beyond the parity matrix: positions from the seed, merging, and the errors for what
//! FourierFT cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn as pnn;
use peft_core::peft_config::TargetModules;
use peft_core::MethodConfig;
use peft_core::{Adaptable, PeftError, PeftModel};
use peft_fourierft::{FourierFtConfig, FourierFtLayer};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Adaptable)]
struct Net {
    lin0: pnn::Linear,
    lin1: pnn::Linear,
    emb: pnn::Embedding,
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin1.forward_t(&self.lin0.forward_t(x, train).relu(), train)
    }
}

fn net() -> (VarStore, Net) {
    let vs = VarStore::new(Device::Cpu);
    let p = vs.root();
    let n = Net {
        lin0: pnn::linear(&p / "lin0", 10, 20, Default::default()).unwrap(),
        lin1: pnn::linear(&p / "lin1", 20, 2, Default::default()).unwrap(),
        emb: pnn::embedding(&p / "emb", 5, 10, Default::default()).unwrap(),
    };
    (vs, n)
}

fn config(targets: &[&str], n: i64) -> FourierFtConfig {
    FourierFtConfig {
        n_frequency: n,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..FourierFtConfig::default()
    }
}

fn layer(peft: &PeftModel<Net>) -> &FourierFtLayer {
    peft.model().lin0.slots().get("default").unwrap().as_any().downcast_ref::<FourierFtLayer>().unwrap()
}

#[test]
fn positions_come_from_the_seed_and_merging_gives_the_same_outputs() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let mut peft = PeftModel::new(n, &vs, config(&["lin0", "lin1"], 30).boxed(), "default").unwrap();
    let (vs2, n2) = net();
    let other = PeftModel::new(n2, &vs2, config(&["lin0"], 30).boxed(), "default").unwrap();
    assert!(layer(&peft).indices().equal(layer(&other).indices()), "same seed, same positions");
    let (vs3, n3) = net();
    let reseeded = FourierFtConfig { random_loc_seed: Some(1), ..config(&["lin0"], 30) };
    let third = PeftModel::new(n3, &vs3, reseeded.boxed(), "default").unwrap();
    assert!(!layer(&peft).indices().equal(layer(&third).indices()));
    // Distinct positions inside the (20, 10) spectrum.
    let idx = layer(&peft).indices();
    let flat = idx.get(0) * 10 + idx.get(1);
    assert_eq!(flat.unique_dim(0, true, false, false).0.size(), [30]);
    assert!(idx.get(0).max().int64_value(&[]) < 20 && idx.get(1).max().int64_value(&[]) < 10);

    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
    assert!((&unmerged - &base).abs().max().double_value(&[]) > 1e-3, "the default init is random: it acts");
    peft.merge_adapter(None, true).unwrap();
    let merged = tch::no_grad(|| peft.forward_t(&x, false));
    // FourierFT's default scaling (150) makes outputs of magnitude ~1e3: compare relative to them.
    let d = (&merged - &unmerged).abs().max().double_value(&[]);
    let scale = unmerged.abs().max().double_value(&[]);
    assert!(d <= 1e-5 * scale.max(1.0), "merged vs unmerged: {d} (outputs up to {scale})");
}

#[test]
fn impossible_sizes_layers_and_seeds_are_errors_naming_them() {
    let _rng = peft_testkit::rng_lock();
    let (vs, n) = net();
    let err = PeftModel::new(n, &vs, config(&["lin1"], 41).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("the product is 40"), "{err}");
    let (vs, n) = net();
    let err = PeftModel::new(n, &vs, config(&["emb"], 4).boxed(), "default").unwrap_err();
    assert!(matches!(err, PeftError::UnsupportedLayer { .. }), "{err:?}");
    let (vs, n) = net();
    let no_seed = FourierFtConfig { random_loc_seed: None, ..config(&["lin0"], 4) };
    let err = PeftModel::new(n, &vs, no_seed.boxed(), "default").unwrap_err();
    assert!(
        matches!(&err, PeftError::UnsupportedOption { option, .. } if option == "random_loc_seed"),
        "{err:?}"
    );
    let mut w = vec![];
    let err = FourierFtConfig::from_json_str(
        r#"{"peft_type": "FOURIERFT", "target_modules": "lin.*", "layers_to_transform": [0]}"#,
        &mut w,
    )
    .unwrap_err();
    assert!(err.to_string().contains("`layers_to_transform` cannot be used"), "{err}");
    let bad_bias =
        FourierFtConfig { bias: peft_core::config::BiasOption("some".into()), ..config(&["lin0"], 4) };
    let (vs, n) = net();
    assert!(PeftModel::new(n, &vs, bad_bias.boxed(), "default")
        .unwrap_err()
        .to_string()
        .contains("Requested bias: some"));
}

#[test]
fn n_frequency_pattern_takes_dotted_suffixes_then_exact_names() {
    let _rng = peft_testkit::rng_lock();
    let mut c = config(&["x"], 100);
    c.n_frequency_pattern.insert("lin0".into(), 7);
    c.n_frequency_pattern.insert("v_proj".into(), 9);
    assert_eq!(c.n_frequency_for("lin0").unwrap(), 7); // exact name
    assert_eq!(c.n_frequency_for("model.layers.0.v_proj").unwrap(), 9); // dotted suffix
    assert_eq!(c.n_frequency_for("xv_proj").unwrap(), 100); // neither
}
