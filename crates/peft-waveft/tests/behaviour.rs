//! WaveFT behaviour beyond the parity matrix: PEFT's numbers on odd layer shapes (the centred crop, which
//! the test models' even shapes never reach), the identity at init, merges, the direct update, the
//! proportional allocation, and what WaveFT cannot take refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::config::{TargetLayer, TargetView};
use peft_core::nn as pnn;
use peft_core::peft_config::TargetModules;
use peft_core::{Adaptable, PeftModel};
use peft_testkit::nets::{seeded, LayerZoo, Quantized};
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, randomize, rng_lock, save_with_config_edit, tuner,
};
use peft_waveft::{
    proportional_allocation, wavelet, MethodConfig, Reconstruction, WaveftConfig, WaveftLayer,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], n: i64, family: &str) -> WaveftConfig {
    WaveftConfig {
        n_frequency: n,
        wavelet_family: family.into(),
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..WaveftConfig::default()
    }
}

#[derive(Debug, Adaptable)]
struct One {
    lin: pnn::Linear,
}

impl ModuleT for One {
    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.lin.forward_t(x, train)
    }
}

fn layer(slots: &peft_core::AdapterSlots) -> &WaveftLayer {
    tuner::<WaveftLayer>(slots, "default")
}

/// PEFT 0.21.2's `get_delta_weight` for `nn.Linear(in, out)` with `random_loc_seed=11` and the spectrum
/// `linspace(-1, 1.5, n)`, printed by Python (cells, then the `(out, in)` update row by row).
#[test]
fn odd_shapes_are_padded_even_and_cropped_around_the_centre_as_peft_does() {
    let _rng = rng_lock();
    #[allow(clippy::type_complexity)]
    let cases: [(&str, (i64, i64), i64, [Vec<i64>; 2], Vec<f64>); 3] = [
        (
            "db1",
            (5, 3),
            6,
            [vec![1, 2, 2, 2, 0, 0], vec![1, 0, 2, 4, 4, 2]],
            vec![
                -6.249999523162842,
                6.249999523162842,
                18.749998092651367,
                6.249999523162842,
                18.749998092651367,
                -6.249999523162842,
                6.249999523162842,
                -18.749998092651367,
                -6.249999523162842,
                18.749998092651367,
                0.0,
                0.0,
                -12.499999046325684,
                -12.499999046325684,
                0.0,
            ],
        ),
        (
            "sym3",
            (7, 5),
            10,
            [vec![1, 2, 3, 4, 0, 4, 3, 4, 2, 1], vec![4, 2, 5, 2, 1, 4, 2, 3, 1, 5]],
            vec![
                0.15130452811717987,
                4.5596795082092285,
                -6.9267377853393555,
                3.7281811237335205,
                0.30730393528938293,
                -0.4101506471633911,
                0.7545004487037659,
                -4.106683254241943,
                -0.21248310804367065,
                3.7281811237335205,
                0.5788763165473938,
                1.0712518692016602,
                -0.20438152551651,
                -0.4590136408805847,
                7.012620449066162,
                -2.819096565246582,
                0.31209924817085266,
                1.0772873163223267,
                0.6000057458877563,
                -0.14205066859722137,
                -0.22827479243278503,
                -0.9537516236305237,
                0.5681289434432983,
                -0.3985196352005005,
                -0.18974241614341736,
                -0.17763859033584595,
                0.038092538714408875,
                0.0811583399772644,
                -2.6167075634002686,
                0.8024474382400513,
                3.7352006435394287,
                7.832145690917969,
                2.5672755241394043,
                -6.186970233917236,
                -3.610504150390625,
            ],
        ),
        (
            "coif2",
            (4, 9),
            12,
            [vec![2, 2, 3, 7, 5, 1, 4, 8, 6, 1, 5, 1], vec![1, 2, 2, 1, 1, 0, 1, 0, 1, 3, 0, 1]],
            vec![
                -0.008609220385551453,
                0.021783942356705666,
                0.06625577062368393,
                -0.2809338867664337,
                -0.004422283265739679,
                0.011189720593392849,
                0.034014955163002014,
                -0.14425992965698242,
                0.001283717225305736,
                -0.004482280928641558,
                0.00016291782958433032,
                0.022448603063821793,
                -0.0005554198869504035,
                0.0045279948972165585,
                -0.02092859148979187,
                0.030544431880116463,
                -0.0005682791816070676,
                0.010974387638270855,
                -0.03095652163028717,
                0.024702927097678185,
                0.006918902508914471,
                -0.057876139879226685,
                0.16716982424259186,
                -0.13663551211357117,
                0.008817929774522781,
                -0.12357968091964722,
                0.3430558145046234,
                -0.26203975081443787,
                0.06985517591238022,
                -0.04806002974510193,
                -0.001404716749675572,
                0.2995438277721405,
                0.2518632113933563,
                0.07119911164045334,
                -0.37982553243637085,
                0.8467119336128235,
            ],
        ),
    ];
    for (family, (i, o), n, cells, want) in cases {
        let (vs, model) =
            seeded(0, |vs| One { lin: pnn::linear(vs.root() / "lin", i, o, Default::default()).unwrap() });
        let cfg = WaveftConfig { random_loc_seed: Some(11), ..config(&["lin"], n, family) };
        let peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
        let l = layer(peft.model().lin.slots());
        let got_cells: Vec<Vec<i64>> = (0..2).map(|r| Vec::try_from(l.indices().get(r)).unwrap()).collect();
        assert_eq!(got_cells, cells, "{family}");
        let mut s = l.spectrum().shallow_clone();
        tch::no_grad(|| s.copy_(&Tensor::linspace(-1.0, 1.5, n, (Kind::Float, Device::Cpu))));
        let delta = tch::no_grad(|| l.delta_weight());
        assert_eq!(delta.size(), [o, i], "{family}");
        let got: Vec<f32> = Vec::try_from(delta.flatten(0, -1)).unwrap();
        let want: Vec<f32> = want.iter().map(|v| *v as f32).collect();
        assert_eq!(got, want, "{family}: bit for bit");
    }
}

#[test]
fn the_adapted_model_starts_as_the_base_and_a_random_init_does_not() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    for (family, use_idwt) in [("db1", true), ("sym4", true), ("coif3", true), ("db30", false)] {
        for init_weights in [true, false] {
            let (vs, zoo) = LayerZoo::seeded(0);
            let cfg = WaveftConfig { init_weights, use_idwt, ..config(&["lin0", "lin1"], 30, family) };
            let mut peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
            let y = tch::no_grad(|| peft.forward_t(&x, false));
            let base = tch::no_grad(|| peft.disable_adapters().unwrap().forward_t(&x, false));
            assert_eq!(max_diff(&y, &base) == 0.0, init_weights, "{family} init_weights={init_weights}");
        }
    }
}

#[test]
fn merged_outputs_match_unmerged_for_several_adapters_and_gpt2_conv1d() {
    let _rng = rng_lock();
    tch::manual_seed(6);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 25, "db3").boxed(), "a").unwrap();
    let direct =
        WaveftConfig { use_idwt: false, random_loc_seed: Some(-3), ..config(&["lin0", "gpt2"], 12, "db1") };
    peft.add_adapter("b", direct.boxed()).unwrap();
    peft.add_adapter("c", config(&["gpt2"], 9, "coif1").boxed()).unwrap();
    assert!(!peft.warnings().is_empty(), "fan_in_fan_out corrected for Conv1D");
    randomize(&peft, 0.3);
    peft.set_adapters(&["a", "b", "c"]).unwrap();
    let w0 = peft.model().lin0.base().weight.copy();
    let g0 = peft.model().gpt2.base().weight.copy();
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    let gpt2_unmerged = tch::no_grad(|| peft.model().gpt2.forward(&x));
    peft.merge_adapter(None, false).unwrap();
    // Relative: with scaling 25 the outputs are in the hundreds.
    let close = |a: &Tensor, b: &Tensor| max_diff(a, b) <= 1e-5 * b.abs().max().double_value(&[]).max(1.0);
    assert!(close(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged));
    assert!(close(&tch::no_grad(|| peft.model().gpt2.forward(&x)), &gpt2_unmerged));
    // Conv1D stores (in, out): the (out, in) update goes in transposed.
    let (lb, lc) = (layer_of(&peft, "b"), layer_of(&peft, "c"));
    let want = tch::no_grad(|| &g0 + (lb.delta_weight() + lc.delta_weight()).transpose(0, 1));
    assert!(close(&peft.model().gpt2.base().weight, &want));
    peft.unmerge_adapter().unwrap();
    assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-4);
    assert!(max_diff(&peft.model().gpt2.base().weight, &g0) < 1e-4);
}

fn layer_of<'a>(peft: &'a PeftModel<LayerZoo>, adapter: &str) -> &'a WaveftLayer {
    tuner::<WaveftLayer>(peft.model().gpt2.slots(), adapter)
}

#[test]
fn without_the_transform_the_update_is_the_sparse_coefficient_matrix() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let cfg = WaveftConfig {
        use_idwt: false,
        scaling: peft_core::peft_config::Num::from(3i64),
        ..config(&["lin0"], 40, "db38")
    };
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    randomize(&peft, 1.0);
    let l = layer(peft.model().lin0.slots());
    assert_eq!(l.reconstruction(), &Reconstruction::Direct);
    let mut want = Tensor::zeros([20, 10], (Kind::Float, Device::Cpu));
    let idx = l.indices();
    let spectrum = l.spectrum().detach();
    let _ = want.index_put_(&[Some(idx.get(0)), Some(idx.get(1))], &spectrum, false);
    assert!(tch::no_grad(|| l.delta_weight()).equal(&(want * 3.0)));
    // The cells are distinct: n of them hold a coefficient.
    assert_eq!(l.delta_weight().ne(0.0).sum(Kind::Int64).int64_value(&[]), 40);
}

#[test]
fn the_proportional_allocation_rounds_half_to_even_and_gives_every_layer_one() {
    let target = |name: &str, i: i64, o: i64, view| TargetLayer {
        name: name.into(),
        class: "Linear",
        view,
        in_features: i,
        out_features: o,
    };
    // Shares of a budget of 10: 2.5 and 7.5 (Python's round: 2 and 8); the embedding is not counted.
    let targets = [
        target("a", 1, 1, TargetView::Linear),
        target("e", 5, 5, TargetView::Embedding),
        target("b", 3, 1, TargetView::Linear),
    ];
    let got = proportional_allocation(5, &targets).unwrap();
    assert_eq!(got.into_iter().collect::<Vec<_>>(), [("a".to_string(), 2), ("b".to_string(), 8)]);
    let got = proportional_allocation(
        1,
        &[target("s", 1, 1, TargetView::Linear), target("l", 100, 10, TargetView::Linear)],
    )
    .unwrap();
    assert_eq!(got["s"], 1, "a share rounding to 0 gets 1");
    assert_eq!(got["l"], 2);
    let err = proportional_allocation(5, &[target("e", 5, 5, TargetView::Embedding)]).unwrap_err();
    assert!(
        err.to_string().contains("No target modules found for proportional parameter allocation."),
        "{err}"
    );

    // On a model: lin0 (200 cells) and lin1 (40) share 2 · 7 = 14 as 11.67 → 12 and 2.33 → 2, ahead of
    // n_frequency_pattern.
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut cfg = WaveftConfig { proportional_parameters: true, ..config(&["lin0", "lin1"], 7, "db2") };
    cfg.n_frequency_pattern.insert("lin1".into(), 30);
    let peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
    assert_eq!(layer(peft.model().lin0.slots()).spectrum().size(), [12]);
    assert_eq!(layer(peft.model().lin1.slots()).spectrum().size(), [2]);
}

#[test]
fn n_frequency_pattern_entries_match_at_a_dot_boundary_in_order() {
    let mut cfg = config(&["lin0"], 9, "db1");
    cfg.n_frequency_pattern.insert(r"layers\.[02]\.lin0".into(), 11);
    cfg.n_frequency_pattern.insert("lin0".into(), 4);
    assert_eq!(cfg.n_frequency_for("model.layers.2.lin0").unwrap(), 11);
    assert_eq!(cfg.n_frequency_for("model.layers.1.lin0").unwrap(), 4);
    assert_eq!(cfg.n_frequency_for("xlin0").unwrap(), 9);
}

#[test]
fn every_listed_family_has_a_filter_of_the_length_its_padding_assumes() {
    for family in wavelet::families() {
        let (lo, hi) = wavelet::filters(family).unwrap();
        let reduction = wavelet::reduction(family).unwrap();
        assert_eq!(lo.len() as i64, reduction.0 + 2, "{family}");
        assert_eq!(lo.len(), hi.len(), "{family}");
        // A low-pass reconstruction filter sums to √2 and has unit energy — except PEFT's coif4 (entries
        // off by up to 0.012 from PyWavelets': it sums to 1.4485), kept because PEFT's adapters use it.
        if family == "coif4" {
            continue;
        }
        let sum: f64 = lo.iter().sum();
        let energy: f64 = lo.iter().map(|c| c * c).sum();
        assert!((sum - std::f64::consts::SQRT_2).abs() < 1e-9, "{family}: sum {sum}");
        assert!((energy - 1.0).abs() < 1e-9, "{family}: energy {energy}");
    }
    // PEFT's own table where it can run; PyWavelets' where PEFT 0.21.2 cannot (coif5: PEFT's 48 taps).
    for family in ["db1", "db10", "sym10", "coif4"] {
        assert!(!wavelet::beyond_peft(family), "{family}");
    }
    for family in ["db11", "db38", "sym11", "sym20", "coif5", "coif17"] {
        assert!(wavelet::beyond_peft(family), "{family}");
    }
}

#[test]
fn families_beyond_peft_reconstruct_merge_and_unmerge() {
    let _rng = rng_lock();
    tch::manual_seed(8);
    let x = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
    // The longest filters (76 and 102 taps) are far longer than these 10 × 20 layers.
    for family in ["db38", "sym20", "coif5", "coif17"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let cfg = WaveftConfig { init_weights: false, ..config(&["lin0", "lin1"], 30, family) };
        let mut peft = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap();
        let w0 = peft.model().lin0.base().weight.copy();
        let delta = tuner::<WaveftLayer>(peft.model().lin0.slots(), "default").delta_weight();
        assert_eq!(delta.size(), w0.size(), "{family}");
        assert!(delta.abs().max().double_value(&[]) > 0.0, "{family}");
        let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
        peft.merge_adapter(None, false).unwrap();
        assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-5, "{family}");
        peft.unmerge_adapter().unwrap();
        assert!(max_diff(&peft.model().lin0.base().weight, &w0) < 1e-6, "{family}");
    }
}

#[test]
fn layers_and_options_waveft_cannot_take_are_refused_by_name() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1", "conv1d"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 4, "db1").boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "WAVEFT", "only `torch.nn.Linear` and");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], 4, "db1").boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "WAVEFT", "quantized weights are not supported");

    let mut w = vec![];
    let err = WaveftConfig::from_json_str(r#"{"peft_type": "WAVEFT", "wavelet_family": "haar"}"#, &mut w)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Wavelet family haar not supported. Supported wavelet families are: ['db1', 'db2',"),
        "{err}"
    );

    let (vs, zoo) = LayerZoo::seeded(0);
    let no_seed = WaveftConfig { random_loc_seed: None, ..config(&["lin0"], 4, "db1") };
    let err = PeftModel::new(zoo, &vs, no_seed.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("random_loc_seed"), "{err}");
    for (n, message) in [
        (0, "`n_frequency` should be a positive integer value but the value passed is 0"),
        (41, "the value passed is 41 and the product is 40 (`lin1`)"),
    ] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&["lin1"], n, "db1").boxed(), "default").unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    let (vs, zoo) = LayerZoo::seeded(0);
    let bad =
        WaveftConfig { bias: peft_core::config::BiasOption("some".into()), ..config(&["lin0"], 4, "db1") };
    assert!(PeftModel::new(zoo, &vs, bad.boxed(), "default")
        .unwrap_err()
        .to_string()
        .contains("Requested bias: some"));
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["lin0"], 4, "db1").boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "WAVEFT");
}

#[test]
fn the_config_round_trips_through_peft_json_keeping_an_integer_scaling() {
    let mut warnings = Vec::new();
    let text = r#"{"peft_type": "WAVEFT", "target_modules": ["lin0", "lin0"], "scaling": 30, "wavelet_family": "sym5",
        "n_frequency_pattern": {"lin0": 3}, "proportional_parameters": true, "random_loc_seed": -2}"#;
    let config = WaveftConfig::from_json_str(text, &mut warnings).unwrap();
    assert_eq!(config.target_modules, Some(TargetModules::list(["lin0"])), "the list becomes a set");
    let written = peft_core::config::to_config_file_text(&config);
    assert!(written.contains("\"scaling\": 30,"), "{written}");
    let again = WaveftConfig::from_json_str(&written, &mut warnings).unwrap();
    assert_eq!(config, again);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn files_of_another_size_fail_naming_key_and_shapes_and_nan_merges_are_refused() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["lin0"], 30, "db2").boxed(), "default").unwrap();
    let dir = save_with_config_edit(&peft, "\"n_frequency\": 30", "\"n_frequency\": 20");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.waveft_spectrum", &[20], &[30]);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}

#[test]
fn a_half_precision_base_sums_its_adapters_in_f32_and_rounds_once() {
    let _rng = rng_lock();
    let (mut vs, model) =
        seeded(0, |vs| One { lin: pnn::linear(vs.root() / "lin", 10, 20, Default::default()).unwrap() });
    vs.bfloat16();
    let mut peft = PeftModel::new(model, &vs, config(&["lin"], 30, "db2").boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["lin"], 20, "sym3").boxed()).unwrap();
    peft.set_adapters(&["a", "b"]).unwrap();
    randomize(&peft, 0.3);
    let (la, lb) = (
        tuner::<WaveftLayer>(peft.model().lin.slots(), "a"),
        tuner::<WaveftLayer>(peft.model().lin.slots(), "b"),
    );
    assert_eq!(la.spectrum().kind(), Kind::Float, "autocast_adapter_dtype");
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
    let got = tch::no_grad(|| peft.forward_t(&x, false));
    assert_eq!(got.kind(), Kind::BFloat16);
    let base = peft.model().lin.base();
    let want = tch::no_grad(|| {
        let y = x.linear(&base.weight, base.bias.as_ref());
        let xf = x.to_kind(Kind::Float);
        (y + xf.linear::<Tensor>(&la.delta_weight(), None) + xf.linear::<Tensor>(&lb.delta_weight(), None))
            .to_kind(Kind::BFloat16)
    });
    assert!(got.equal(&want), "one rounding to bf16, after both adapters");
}
