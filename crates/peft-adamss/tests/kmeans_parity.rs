//! The KMeans replay against scikit-learn (`tests/oracle/kmeans.py`): on float32 matrices with
//! orthonormal columns like AdaMSS's singular vectors.
//!
//! * `r < rows` (60 cases): the same labels and the same centres bit for bit.
//! * `r == rows` (20 square orthogonal cases): every row is equidistant from every other, so each
//!   assignment is a tie that scikit-learn's float32 `sgemm` (OpenBLAS) and `einsum` rounding decide; the
//!   replay computes exact distances and cannot follow. The count of agreeing cases is printed, and every
//!   case must be flagged ambiguous (the layer's warning). Skipped without the Python oracle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peft_adamss::kmeans::fit_predict;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

#[test]
fn labels_and_centres_match_scikit_learn_off_ties_and_ties_are_flagged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let py = root.join("../../.venv/bin/python");
    if !py.exists() {
        eprintln!("skipped: no .venv/bin/python (run `cargo xtask setup`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(py)
        .arg(root.join("tests/oracle/kmeans.py"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "kmeans.py failed");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("kmeans.json")).unwrap()).unwrap();
    let t: BTreeMap<String, Tensor> = peft_core::io::read_safetensors(&dir.path().join("kmeans.safetensors"))
        .unwrap()
        .into_iter()
        .map(|t| (t.key, t.tensor))
        .collect();
    let vec_f32 = |k: &str| Vec::<f32>::try_from(t[k].flatten(0, -1)).unwrap();
    let (mut square_same, mut square) = (0, 0);
    for (i, c) in meta["cases"].as_array().unwrap().iter().enumerate() {
        let (n, d, k) = (
            c["n"].as_u64().unwrap() as usize,
            c["d"].as_u64().unwrap() as usize,
            c["k"].as_u64().unwrap() as usize,
        );
        let ours = fit_predict(&vec_f32(&format!("x{i}")), n, d, k);
        let labels = Vec::<i32>::try_from(&t[&format!("labels{i}")]).unwrap();
        if c["square"].as_bool().unwrap() {
            square += 1;
            square_same += usize::from(ours.labels == labels);
            assert!(ours.ambiguous(), "case {i}: a square orthogonal matrix is all ties");
            continue;
        }
        assert_eq!(ours.labels, labels, "case {i}: labels ({n} x {d}, k = {k})");
        assert_eq!(ours.centers, vec_f32(&format!("centers{i}")), "case {i}: centres");
    }
    eprintln!("square orthogonal (all ties): {square_same} of {square} cases with scikit-learn's labels");
}
