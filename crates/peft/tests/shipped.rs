//! The registry's list of shipped methods is the set the umbrella crate links with its default features:
//! a method crate left out of `SHIPPED` would make a missing link look like an unimplemented method, one
//! listed but not linked would promise a crate that does not register.
#![allow(clippy::unwrap_used)]

#[test]
fn shipped_methods_are_exactly_the_linked_ones() {
    let linked = peft::linked_methods();
    let mut shipped = peft::core::registry::SHIPPED.to_vec();
    shipped.sort_unstable();
    assert_eq!(linked, shipped);
    // Each shipped method names the crate that registers it.
    for reg in peft::core::registry::registered() {
        assert_eq!(peft::core::registry::crate_for(reg.peft_type), reg.crate_name, "{}", reg.peft_type);
    }
}
