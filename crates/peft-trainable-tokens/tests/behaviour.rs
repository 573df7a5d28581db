//! Trainable-tokens behaviour beyond the parity matrix: only the chosen rows change and train, several
//! adapters with overlapping rows are refused together, tied heads share the rows and save nothing, the
//! layers and values PEFT cannot use are errors naming them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_core::nn::{self as pnn, EmbeddingConfig};
use peft_core::peft_config::TargetModules;
use peft_core::trainable_tokens::TrainableTokens;
use peft_core::{Adaptable, LoadOptions, PeftModel, SaveOptions};
use peft_testkit::nets::{LayerZoo, Quantized};
use peft_testkit::{assert_safe_merge_refuses_nan, assert_unsupported_layer, max_diff, rng_lock, tuner};
use peft_trainable_tokens::{MethodConfig, TrainableTokensConfig};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

fn config(targets: &[&str], indices: &[i64]) -> TrainableTokensConfig {
    TrainableTokensConfig {
        token_indices: indices.to_vec(),
        target_modules: Some(TargetModules::list(targets.iter().copied())),
        ..TrainableTokensConfig::default()
    }
}

fn ids() -> Tensor {
    Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5, 6, 2]).view([2, 4])
}

/// Sets the trained rows of `adapter` on `emb` to `value`.
fn fill(peft: &PeftModel<LayerZoo>, adapter: &str, value: f64) {
    let mut delta = tuner::<TrainableTokens>(peft.model().emb.slots(), adapter).delta.shallow_clone();
    let _ = tch::no_grad(|| delta.f_fill_(value)).unwrap();
}

#[test]
fn only_the_chosen_rows_change_train_and_merge() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["emb"], &[2, 5]).boxed(), "default").unwrap();
    let base = peft.disable_adapters().unwrap().emb.forward(&ids());
    assert!(peft.model().emb.forward(&ids()).equal(&base), "the rows start as the embedding's own");
    fill(&peft, "default", 3.0);
    let out = peft.model().emb.forward(&ids());
    let changed = (&out - &base).abs().sum_dim_intlist([-1].as_slice(), false, Kind::Float).ne(0.0);
    let want = ids().eq(2).logical_or(&ids().eq(5));
    assert!(changed.equal(&want), "exactly the tokens 2 and 5 change: {changed}");
    assert!(out.get(0).get(2).eq(3.0).all().int64_value(&[]) == 1);
    // Training reaches the rows only.
    let delta = tuner::<TrainableTokens>(peft.model().emb.slots(), "default").delta.shallow_clone();
    peft.model().emb.forward(&ids()).sum(Kind::Float).backward();
    assert_eq!(delta.grad().size(), [2, 10]);
    assert!(delta.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(!peft.model().emb.base().weight.requires_grad(), "the embedding stays frozen");
    // Merging writes the rows into the weight; unmerging restores the originals.
    let w0 = peft.model().emb.base().weight.copy();
    peft.merge_adapter(None, true).unwrap();
    assert!(peft.model().emb.forward(&ids()).equal(&out));
    assert_eq!(peft.model().emb.base().weight.get(5).double_value(&[0]), 3.0);
    peft.unmerge_adapter().unwrap();
    assert!(peft.model().emb.base().weight.equal(&w0));
    let keys: Vec<String> = peft.adapter_state_dict("default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["base_model.model.emb.trainable_tokens_delta"]);
}

#[test]
fn active_adapters_must_train_disjoint_rows() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let mut peft = PeftModel::new(zoo, &vs, config(&["emb"], &[1, 2]).boxed(), "a").unwrap();
    peft.add_adapter("b", config(&["emb"], &[4]).boxed()).unwrap();
    peft.add_adapter("c", config(&["emb"], &[2, 6]).boxed()).unwrap();
    fill(&peft, "a", 1.0);
    fill(&peft, "b", 2.0);
    peft.set_adapters(&["a", "b"]).unwrap();
    let out = peft.model().emb.forward(&ids());
    assert_eq!(out.get(0).get(1).double_value(&[0]), 1.0);
    assert_eq!(out.get(1).get(0).double_value(&[0]), 2.0, "both adapters' rows apply");
    let err = peft.set_adapters(&["a", "c"]).unwrap_err();
    assert!(err.to_string().contains("Only disjunct token indices are currently supported"), "{err}");
    assert_eq!(peft.active_adapters(), ["a", "b"], "a refused activation changes nothing");
}

#[derive(Debug, Adaptable)]
struct TiedLm {
    embed_tokens: pnn::Embedding,
    lm_head: pnn::Linear,
}

impl TiedLm {
    fn new(vs: &VarStore) -> Self {
        let embed_tokens = pnn::embedding(
            vs.root() / "embed_tokens",
            12,
            6,
            EmbeddingConfig { padding_idx: None, init: true },
        )
        .unwrap();
        let weight = embed_tokens.base().weight.shallow_clone();
        let lm_head = peft_core::AdaptedLayer::new("lm_head", pnn::LinearBase::dense(weight, None, false));
        TiedLm { embed_tokens, lm_head }
    }
}

impl ModuleT for TiedLm {
    fn forward_t(&self, ids: &Tensor, train: bool) -> Tensor {
        self.lm_head.forward_t(&self.embed_tokens.forward_t(ids, train), train)
    }
}

#[test]
fn the_input_embedding_is_the_default_target_and_tied_heads_share_its_rows() {
    let _rng = rng_lock();
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let model = TiedLm::new(&vs);
    // The model declares no input embedding: PEFT's fallback name, kept as the string PEFT writes.
    let cfg = TrainableTokensConfig { token_indices: vec![3, 7], ..TrainableTokensConfig::default() };
    let peft = PeftModel::new(model, &vs, cfg.boxed(), "default").unwrap();
    let saved = peft.config("default").unwrap().to_json();
    assert_eq!(saved["target_modules"], "embed_tokens");
    assert!(peft.model().embed_tokens.slots().get("default").is_some());
    // No tie declared by the model: the head is left alone.
    assert!(peft.model().lm_head.slots().get("default").is_none());
}

#[test]
fn layers_and_values_trainable_tokens_cannot_use_are_refused() {
    let _rng = rng_lock();
    for target in ["conv1x1", "gpt2"] {
        let (vs, zoo) = LayerZoo::seeded(0);
        let err = PeftModel::new(zoo, &vs, config(&[target], &[0]).boxed(), "default").unwrap_err();
        assert_unsupported_layer(&err, target, "TRAINABLE_TOKENS", "nn.Embedding");
    }
    let (vs, q) = Quantized::seeded(1, None);
    let err = PeftModel::new(q, &vs, config(&["proj"], &[0]).boxed(), "default").unwrap_err();
    assert_unsupported_layer(&err, "proj", "TRAINABLE_TOKENS", "quantized");
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["emb"], &[7]).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("index 7 is outside the 7 rows of `emb`"), "{err}");
    let (vs, zoo) = LayerZoo::seeded(0);
    let err = PeftModel::new(zoo, &vs, config(&["emb"], &[-1]).boxed(), "default").unwrap_err();
    assert!(err.to_string().contains("-1 is negative"), "{err}");
    let mut w = vec![];
    let err = TrainableTokensConfig::from_json_str(
        r#"{"peft_type": "TRAINABLE_TOKENS", "token_indices": 3}"#,
        &mut w,
    )
    .unwrap_err();
    assert!(err.to_string().contains("token_indices"), "{err}");
}

#[test]
fn a_non_finite_safe_merge_is_refused_and_a_reload_gives_the_same_rows() {
    let _rng = rng_lock();
    let (vs, zoo) = LayerZoo::seeded(0);
    let peft = PeftModel::new(zoo, &vs, config(&["emb"], &[1, 6]).boxed(), "default").unwrap();
    fill(&peft, "default", 0.25);
    let out = peft.model().emb.forward(&ids());
    let dir = tempfile::tempdir().unwrap();
    peft.save_pretrained(dir.path(), &SaveOptions::default()).unwrap();
    let (vs2, zoo2) = LayerZoo::seeded(0);
    let (reloaded, _) = PeftModel::from_pretrained(zoo2, &vs2, dir.path(), LoadOptions::default()).unwrap();
    assert!(max_diff(&reloaded.model().emb.forward(&ids()), &out) == 0.0);
    let mut peft = peft;
    assert_safe_merge_refuses_nan(&mut peft, |m| m.emb.base().weight.shallow_clone());
}
