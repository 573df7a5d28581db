//! peft-rs in one dependency: [`peft_core`] (re-exported as [`core`]) and every method crate, each behind a
//! cargo feature named after it (all on by default), re-exported under the method's short name.
//!
//! Depending on this crate links every enabled method, so `PeftModel::from_pretrained` loads adapters of
//! any of them by file alone (a method crate registers its `peft_type` only when it is linked).
//!
//! ```
//! // Every enabled method is registered.
//! let linked = peft::linked_methods();
//! assert!(linked.contains(&"LORA") && linked.contains(&"IA3"));
//! ```

#[cfg(feature = "adalora")]
pub use peft_adalora as adalora;
#[cfg(feature = "beft")]
pub use peft_beft as beft;
#[cfg(feature = "c3a")]
pub use peft_c3a as c3a;
pub use peft_core as core;
#[cfg(feature = "delora")]
pub use peft_delora as delora;
#[cfg(feature = "fourierft")]
pub use peft_fourierft as fourierft;
#[cfg(feature = "gralora")]
pub use peft_gralora as gralora;
#[cfg(feature = "hira")]
pub use peft_hira as hira;
#[cfg(feature = "hra")]
pub use peft_hra as hra;
#[cfg(feature = "ia3")]
pub use peft_ia3 as ia3;
#[cfg(feature = "loha")]
pub use peft_loha as loha;
#[cfg(feature = "lokr")]
pub use peft_lokr as lokr;
#[cfg(feature = "lora")]
pub use peft_lora as lora;
#[cfg(feature = "miss")]
pub use peft_miss as miss;
#[cfg(feature = "oft")]
pub use peft_oft as oft;
#[cfg(feature = "peanut")]
pub use peft_peanut as peanut;
#[cfg(feature = "prompt")]
pub use peft_prompt as prompt;
#[cfg(feature = "psoft")]
pub use peft_psoft as psoft;
#[cfg(feature = "pvera")]
pub use peft_pvera as pvera;
#[cfg(feature = "road")]
pub use peft_road as road;
#[cfg(feature = "shira")]
pub use peft_shira as shira;
#[cfg(feature = "trainable-tokens")]
pub use peft_trainable_tokens as trainable_tokens;
#[cfg(feature = "vblora")]
pub use peft_vblora as vblora;
#[cfg(feature = "vera")]
pub use peft_vera as vera;

/// The `peft_type`s of the methods linked into this program, sorted.
pub fn linked_methods() -> Vec<&'static str> {
    // Referencing each crate keeps it (and its registration) linked.
    #[cfg(feature = "lora")]
    let _ = peft_lora::config::PEFT_TYPE;
    #[cfg(feature = "ia3")]
    let _ = peft_ia3::PEFT_TYPE;
    #[cfg(feature = "loha")]
    let _ = peft_loha::PEFT_TYPE;
    #[cfg(feature = "lokr")]
    let _ = peft_lokr::PEFT_TYPE;
    #[cfg(feature = "beft")]
    let _ = peft_beft::PEFT_TYPE;
    #[cfg(feature = "road")]
    let _ = peft_road::PEFT_TYPE;
    #[cfg(feature = "hra")]
    let _ = peft_hra::PEFT_TYPE;
    #[cfg(feature = "adalora")]
    let _ = peft_adalora::PEFT_TYPE;
    #[cfg(feature = "oft")]
    let _ = peft_oft::PEFT_TYPE;
    #[cfg(feature = "vera")]
    let _ = peft_vera::PEFT_TYPE;
    #[cfg(feature = "fourierft")]
    let _ = peft_fourierft::PEFT_TYPE;
    #[cfg(feature = "shira")]
    let _ = peft_shira::PEFT_TYPE;
    #[cfg(feature = "trainable-tokens")]
    let _ = peft_trainable_tokens::PEFT_TYPE;
    #[cfg(feature = "miss")]
    let _ = peft_miss::PEFT_TYPE;
    #[cfg(feature = "delora")]
    let _ = peft_delora::PEFT_TYPE;
    #[cfg(feature = "gralora")]
    let _ = peft_gralora::PEFT_TYPE;
    #[cfg(feature = "vblora")]
    let _ = peft_vblora::PEFT_TYPE;
    #[cfg(feature = "c3a")]
    let _ = peft_c3a::PEFT_TYPE;
    #[cfg(feature = "prompt")]
    let _ = peft_prompt::PEFT_TYPES;
    #[cfg(feature = "peanut")]
    let _ = peft_peanut::PEFT_TYPE;
    #[cfg(feature = "hira")]
    let _ = peft_hira::PEFT_TYPE;
    #[cfg(feature = "psoft")]
    let _ = peft_psoft::PEFT_TYPE;
    #[cfg(feature = "pvera")]
    let _ = peft_pvera::PEFT_TYPE;
    peft_core::registry::registered().iter().map(|r| r.peft_type).collect()
}
