//! C3A behaviour beyond the parity matrix: identity with zero kernels, the delta weight is the convolution
//! as a matrix, merged == unmerged, gradients follow PEFT's hand-written backward, the layers, sizes and options
//! PEFT refuses, bad files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_c3a::{block_circular_convolution, C3AConfig, C3aInit, C3aLayer, MethodConfig};
use peft_core::peft_config::TargetModules;
use peft_core::PeftModel;
use peft_testkit::nets::LayerZoo;
use peft_testkit::{
    assert_mixed_batches_refused, assert_safe_merge_refuses_nan, assert_shape_mismatch,
    assert_unsupported_layer, load_error, max_diff, rng_lock, save_with_config_edit, tuner,
};
use tch::nn::ModuleT;
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], block_size: i64, init: C3aInit) -> C3AConfig {
    C3AConfig {
        block_size,
        init_weights: init,
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..C3AConfig::default()
    }
}

#[test]
fn the_update_is_the_circulant_matrix_and_merges_to_the_same_outputs() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let x = Tensor::randn([4, 10], (Kind::Float, Device::Cpu));
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft =
        PeftModel::new(zoo, &vs, config(&["lin0"], 5, C3aInit::Bool(true)).boxed(), "default").unwrap();
    let base = tch::no_grad(|| peft.model().lin0.forward_t(&x, false));
    assert!(tch::no_grad(|| peft.forward_t(&x, false))
        .equal(&tch::no_grad(|| { peft.model().lin1.forward_t(&base.relu(), false) })));
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft =
        PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], 2, C3aInit::default()).boxed(), "default")
            .unwrap();
    let layer = tuner::<C3aLayer>(peft.model().lin0.slots(), "default");
    assert_eq!(layer.kernel().size(), [10, 5, 2]);
    // A circulant block: every row is the previous one rotated by one.
    let delta = tch::no_grad(|| layer.delta_weight(Kind::Float));
    let block = delta.narrow(0, 0, 2).narrow(1, 0, 2);
    assert!(max_diff(&block.get(1), &block.get(0).roll([1], [0])) < 1e-6, "{block}");
    let base = peft.model().lin0.base();
    let y = tch::no_grad(|| peft.model().lin0.forward_t(&x, false));
    let want = x.linear(&(&base.weight + &delta), base.bias.as_ref());
    assert!(max_diff(&y, &want) < 1e-5);
    let unmerged = tch::no_grad(|| peft.forward_t(&x, false));
    peft.merge_adapter(None, true).unwrap();
    assert!(max_diff(&tch::no_grad(|| peft.forward_t(&x, false)), &unmerged) < 1e-5);
}

#[test]
fn gradients_follow_peft_s_hand_written_backward() {
    let _rng = rng_lock();
    tch::manual_seed(4);
    let x = Tensor::randn([3, 12], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let w = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let y = block_circular_convolution(&x, &w).unwrap();
    assert_eq!(y.size(), [3, 8]);
    (&y * &y).sum(Kind::Float).backward();
    let (gx, gw) = (x.grad().copy(), w.grad().copy());
    // The same convolution as a dense matrix, differentiated by autograd: y = x · Cᵀ.
    let x2 = x.detach().set_requires_grad(true);
    let w2 = w.detach().set_requires_grad(true);
    let eye = Tensor::eye(12, (Kind::Float, Device::Cpu));
    let dense_t = block_circular_convolution(&eye, &w2).unwrap();
    let y2 = x2.matmul(&dense_t);
    assert!(max_diff(&y, &y2) < 1e-5);
    (&y2 * &y2).sum(Kind::Float).backward();
    assert!(max_diff(&gw, &w2.grad()) < 1e-3, "the kernel gradient is the true one");
    // PEFT's input gradient, `Re(fft(Σ_m fft(g_m) ⊙ ifft(w_mn)))`, is not the true one (2·y·C); peft-rs
    // reproduces it so that training steps equal PEFT's.
    let g = (&y * 2.0).detach().view([3, 2, 4]).fft_fft(None, -1, "backward");
    let peft_gx =
        Tensor::einsum("...mb,mnb->...nb", &[g, w.detach().fft_ifft(None, -1, "backward")], None::<&[i64]>)
            .fft_fft(None, -1, "backward")
            .real()
            .view([3, 12]);
    assert!(max_diff(&gx, &peft_gx) < 1e-4, "PEFT's formula");
    assert!(max_diff(&gx, &x2.grad()) > 1e-2, "differs from autograd's (a property of PEFT 0.21.2's C3A)");
}

#[test]
fn layers_sizes_and_options_c3a_cannot_use_are_refused() {
    let _rng = rng_lock();
    for target in ["emb", "conv1x1", "gpt2"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], 2, C3aInit::Bool(true)).boxed(), "default")
            .unwrap_err();
        assert_unsupported_layer(&err, target, "C3A", "only `torch.nn.Linear`");
    }
    for (b, want) in [
        (3, "The block size should be a factor of the input size. However, the input size is 10 and the block size is 3"),
        (10, "The block size should be a factor of the output size. However, the output size is 2 and the block size is 10"),
    ] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&["lin0", "lin1"], b, C3aInit::Bool(true)).boxed(), "default").unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    let mut w = vec![];
    let cfg =
        C3AConfig::from_json_str(r#"{"peft_type": "C3A", "init_weights": "orthogonal"}"#, &mut w).unwrap();
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, cfg.boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("Unknown init_weights: orthogonal"), "{err}");
    let mut cfg = config(&["lin0", "lin1"], 2, C3aInit::Bool(true));
    cfg.block_size_pattern.insert("lin0".into(), 5);
    assert_eq!(cfg.block_size_for("lin0").unwrap(), 5, "an exact name");
    assert_eq!(cfg.block_size_for("layers.1.lin0").unwrap(), 5, "a dotted suffix");
    assert_eq!(cfg.block_size_for("xlin0").unwrap(), 2);
}

#[test]
fn safe_merges_files_of_another_block_size_and_mixed_batches() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft =
        PeftModel::new(zoo, &vs, config(&["lin0"], 5, C3aInit::default()).boxed(), "default").unwrap();
    assert_mixed_batches_refused(&peft, "C3A");
    let dir = save_with_config_edit(&peft, "\"block_size\": 5", "\"block_size\": 2");
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let err = load_error(zoo2, &vs2, dir.path());
    assert_shape_mismatch(&err, "base_model.model.lin0.c3a_kernel", &[10, 5, 2], &[4, 2, 5]);
    assert_safe_merge_refuses_nan(&mut peft, |m| m.lin0.base().weight.shallow_clone());
}
