//! The registry's table marks as shipped exactly the methods the umbrella crate links with its default
//! features, each under the crate that registers it: a method crate missing from the table would make a
//! missing link look like an unimplemented method, one marked but not linked would promise a crate that
//! does not register. (`cargo xtask lint` checks the table against the crates' manifests; this checks it
//! against what the crates actually register.)
#![allow(clippy::unwrap_used)]

use peft::core::registry;

#[test]
fn shipped_methods_are_exactly_the_linked_ones() {
    let linked = peft::linked_methods();
    let mut shipped = registry::shipped();
    shipped.sort_unstable();
    assert_eq!(linked, shipped);
    for reg in registry::registered() {
        assert_eq!(registry::crate_for(reg.peft_type), reg.crate_name, "{}", reg.peft_type);
    }
}
