//! Value assertions that say where and by how much two tensors differ.

use tch::{Kind, Tensor};

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    if a.numel() == 0 {
        return 0.0;
    }
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// Asserts `|actual - expected| <= atol` elementwise, naming `what` and the worst difference.
pub fn assert_close(actual: &Tensor, expected: &Tensor, atol: f64, what: &str) {
    assert_eq!(
        actual.size(),
        expected.size(),
        "{what}: shape {:?} vs expected {:?}",
        actual.size(),
        expected.size()
    );
    let d = max_abs_diff(actual, expected);
    assert!(d <= atol, "{what}: max |difference| {d:e} > {atol:e}\nactual:   {actual}\nexpected: {expected}");
}

/// Asserts bit-identical values (same dtype, same shape, same numbers).
pub fn assert_identical(actual: &Tensor, expected: &Tensor, what: &str) {
    assert_eq!(actual.kind(), expected.kind(), "{what}: dtype");
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    assert!(
        actual.equal(expected),
        "{what}: values differ (max |difference| {:e})",
        max_abs_diff(actual, expected)
    );
}

/// Asserts that two tensors are *not* close: used to show a comparison is meaningful (the adapter
/// changes the output).
pub fn assert_differs(a: &Tensor, b: &Tensor, min_diff: f64, what: &str) {
    let d = max_abs_diff(a, b);
    assert!(d > min_diff, "{what}: expected a difference above {min_diff:e}, got {d:e}");
}

/// Zeroes the positions whose `attention_mask` `(B, T)` is 0 in a `(B, T, …)` output, so outputs at
/// padding (meaningless in any implementation) do not enter comparisons.
pub fn mask_padding(t: &Tensor, attention_mask: &Tensor) -> Tensor {
    let mask = attention_mask.to_kind(Kind::Float);
    let mut shape = mask.size();
    while shape.len() < t.dim() {
        shape.push(1);
    }
    t * mask.view(shape.as_slice())
}
