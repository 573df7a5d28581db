//! Trainable tokens for peft-rs — HuggingFace PEFT 0.21.2's `TRAINABLE_TOKENS` on tch, with the same
//! numbers and the same files.
//!
//! Trainable tokens train a few rows of an embedding matrix in full — the embeddings of tokens added to
//! a tokenizer, or of existing tokens to re-learn — and leave the rest frozen: far less memory and a far
//! smaller file than training the whole embedding. The adapter holds the trained rows
//! (`trainable_tokens_delta`, `(len(token_indices), dim)`); the forward pass uses the embedding with those
//! rows replaced, and merging writes them into it. Heads tied to the input embedding (`lm_head` under
//! `tie_word_embeddings`) read the same rows and save nothing, as in PEFT.
//!
//! * [`TrainableTokensConfig`]: every key of PEFT's `TrainableTokensConfig` (`token_indices`,
//!   `target_modules`, `init_weights`); without targets, the model's input embedding.
//! * The layer is [`peft_core::trainable_tokens::TrainableTokens`], which LoRA's `trainable_token_indices`
//!   uses inside its adapters too. Several active adapters must train disjoint rows (refused otherwise, as
//!   PEFT refuses them).
//!
//! Linking this crate registers `peft_type: "TRAINABLE_TOKENS"`, so adapter directories saved by PEFT load
//! by file alone with `PeftModel::from_pretrained`.
//!
//! ```
//! use peft_core::{nn, Adaptable, LoadOptions, PeftModel, SaveOptions};
//! use peft_core::peft_config::TargetModules;
//! use peft_trainable_tokens::{MethodConfig, TrainableTokensConfig};
//! use tch::nn::{ModuleT, VarStore};
//! use tch::{Device, Tensor};
//!
//! #[derive(Debug, Adaptable)]
//! struct Net { emb: nn::Embedding, lin: nn::Linear }
//!
//! impl Net {
//!     fn new(vs: &VarStore) -> peft_core::Result<Self> {
//!         Ok(Net {
//!             emb: nn::embedding(vs.root() / "emb", 10, 4, Default::default())?,
//!             lin: nn::linear(vs.root() / "lin", 4, 3, Default::default())?,
//!         })
//!     }
//! }
//!
//! impl ModuleT for Net {
//!     fn forward_t(&self, ids: &Tensor, train: bool) -> Tensor {
//!         self.lin.forward_t(&self.emb.forward_t(ids, train), train)
//!     }
//! }
//!
//! # fn main() -> peft_core::Result<()> {
//! tch::manual_seed(0);
//! let vs = VarStore::new(Device::Cpu);
//! let config = TrainableTokensConfig {
//!     token_indices: vec![1, 3],
//!     target_modules: Some(TargetModules::list(["emb"])),
//!     ..TrainableTokensConfig::default()
//! };
//! let mut peft = PeftModel::new(Net::new(&vs)?, &vs, config.boxed(), "default")?;
//! // Two rows of four values train.
//! assert_eq!(peft.trainable_parameters_line(),
//!            "trainable params: 8 || all params: 63 || trainable%: 12.6984");
//! let ids = Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]);
//! // The rows start as the embedding's own: the adapted model computes what the base does.
//! let y = peft.forward_t(&ids, false);
//! assert!(y.equal(&peft.disable_adapters()?.forward_t(&ids, false)));
//!
//! let dir = tempfile::tempdir().unwrap();
//! peft.save_pretrained(dir.path(), &SaveOptions::default())?;
//! let mut vs2 = VarStore::new(Device::Cpu);
//! let base2 = Net::new(&vs2)?;
//! vs2.copy(&vs).map_err(peft_core::PeftError::torch("copying base weights"))?;
//! let (reloaded, _) = PeftModel::from_pretrained(base2, &vs2, dir.path(), LoadOptions::default())?;
//! assert!(reloaded.forward_t(&ids, false).equal(&y));
//! # Ok(()) }
//! ```

pub mod config;

pub use config::{TrainableTokensConfig, PEFT_TYPE};
pub use peft_core::MethodConfig;

peft_core::register_method!(config::TrainableTokensConfig, "peft-trainable-tokens");
