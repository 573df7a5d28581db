//! scikit-learn 1.9's `KMeans(n_clusters=k, init="random", n_init=1, max_iter=10,
//! random_state=123456789).fit_predict(X)` on float32 rows, the call PEFT's `clustering_Z` makes.
//!
//! Replayed step for step in f32 as scikit-learn computes it:
//!
//! * `tol = mean(var(X, axis=0)) · 1e-4` (NumPy's float32 reductions: column sums row after row, the
//!   1-D mean pairwise);
//! * `X -= X.mean(axis=0)`;
//! * initial centres `X[choice(n, k, replace=False, p=1/n)]` from `RandomState(123456789)` (NumPy's
//!   weighted choice without replacement, [`peft_core::numpy_random`]);
//! * Lloyd iterations: labels by the smallest `‖c‖² − 2x·c` (first index on ties), centre sums in sample
//!   order, empty clusters relocated to the farthest samples, centres scaled by `float(1.0 / count)`,
//!   `center_shift` as scikit-learn's unrolled f32 sum; strict convergence when the labels repeat,
//!   otherwise `Σ shift² <= tol`, then one more assignment.
//!
//! Where this cannot be bit-exact: scikit-learn forms `‖c‖² − 2x·c` with BLAS `sgemm` (OpenBLAS' kernel
//! order, FMA) and `einsum`, whose roundings are not reproducible outside that library; here the
//! distances are exact f64 values of the same f32 operands. Labels can differ only where two centres are
//! within float32 rounding of equidistant from a sample. Centres are summed as one thread does; with more
//! than 256 samples and several OpenMP threads scikit-learn adds per-thread partial sums in lock order,
//! which is not deterministic in scikit-learn itself.

use peft_core::numpy_random::RandomState;

/// PEFT's fixed `random_state`.
pub const RANDOM_STATE: u32 = 123_456_789;
/// PEFT's `iternum` (`max_iter`).
pub const MAX_ITER: usize = 10;
/// scikit-learn's default relative tolerance.
const TOL: f32 = 1e-4;

/// NumPy's pairwise float32 sum (`np.add.reduce` over a contiguous run): blocks of 8 accumulators up to
/// 128 elements, halves (rounded to a multiple of 8) above.
fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        let mut r = 0.0f32;
        for &v in a {
            r += v;
        }
        r
    } else if n <= 128 {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `X.sum(axis=0)` of a C-contiguous `(n, d)` float32 array: row after row, except a single column,
/// which NumPy reduces as one contiguous run.
fn column_sums(x: &[f32], n: usize, d: usize) -> Vec<f32> {
    if d == 1 {
        return vec![pairwise_sum(x)];
    }
    let mut s = vec![0f32; d];
    for row in x.chunks_exact(d).take(n) {
        for (acc, v) in s.iter_mut().zip(row) {
            *acc += v;
        }
    }
    s
}

/// `np.mean(X, axis=0)` in float32.
fn column_means(x: &[f32], n: usize, d: usize) -> Vec<f32> {
    column_sums(x, n, d).into_iter().map(|s| s / n as f32).collect()
}

/// scikit-learn's `_tolerance(X, 1e-4)`: `np.mean(np.var(X, axis=0)) * 1e-4`, all float32.
fn tolerance(x: &[f32], n: usize, d: usize) -> f32 {
    let mean = column_means(x, n, d);
    let sq: Vec<f32> =
        x.chunks_exact(d).flat_map(|row| row.iter().zip(&mean).map(|(v, m)| (v - m) * (v - m))).collect();
    let var: Vec<f32> = column_sums(&sq, n, d).into_iter().map(|s| s / n as f32).collect();
    (pairwise_sum(&var) / d as f32) * TOL
}

/// `_euclidean_dense_dense(a, b, squared=False)`: four squared differences per step, added left to right.
fn euclidean(a: &[f32], b: &[f32]) -> f32 {
    let mut result = 0f32;
    let blocks = a.len() / 4;
    for k in 0..blocks {
        let i = 4 * k;
        let d = |j: usize| (a[i + j] - b[i + j]) * (a[i + j] - b[i + j]);
        result += ((d(0) + d(1)) + d(2)) + d(3);
    }
    for i in 4 * blocks..a.len() {
        result += (a[i] - b[i]) * (a[i] - b[i]);
    }
    result.sqrt()
}

/// The label of each sample: the centre with the smallest `‖c‖² − 2x·c` (the first on ties). Returns
/// the smallest relative gap between the best and the second-best centre of any sample.
fn assign(x: &[f32], d: usize, centers: &[f32], labels: &mut [i32]) -> f64 {
    let norms: Vec<f64> =
        centers.chunks_exact(d).map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum()).collect();
    let mut min_gap = f64::INFINITY;
    for (row, label) in x.chunks_exact(d).zip(labels.iter_mut()) {
        let (mut best, mut best_dist, mut second) = (0usize, f64::INFINITY, f64::INFINITY);
        for (j, c) in centers.chunks_exact(d).enumerate() {
            let dot: f64 = row.iter().zip(c).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            let dist = norms[j] - 2.0 * dot;
            if j == 0 || dist < best_dist {
                second = best_dist;
                best = j;
                best_dist = dist;
            } else if dist < second {
                second = dist;
            }
        }
        if second.is_finite() {
            let scale = 1.0 + best_dist.abs().max(second.abs());
            min_gap = min_gap.min((second - best_dist) / scale);
        }
        *label = best as i32;
    }
    min_gap
}

/// One `lloyd_iter_chunked_dense` with `update_centers=True`: labels, then `centers_new` and the shifts.
fn lloyd_step(
    x: &[f32],
    d: usize,
    centers: &[f32],
    centers_new: &mut [f32],
    labels: &mut [i32],
    shift: &mut [f32],
) -> f64 {
    let k = centers.len() / d;
    let gap = assign(x, d, centers, labels);
    let mut weight = vec![0f32; k];
    centers_new.iter_mut().for_each(|v| *v = 0.0);
    for (row, &l) in x.chunks_exact(d).zip(labels.iter()) {
        let l = l as usize;
        weight[l] += 1.0;
        for (acc, v) in centers_new[l * d..(l + 1) * d].iter_mut().zip(row) {
            *acc += v;
        }
    }
    relocate_empty(x, d, centers, centers_new, &mut weight, labels);
    // `_average_centers`: `alpha = 1.0 / w` in double, stored as float; empty clusters copy the heaviest.
    let heaviest = weight.iter().enumerate().fold(0, |best, (j, &w)| if w > weight[best] { j } else { best });
    for j in 0..k {
        if weight[j] > 0.0 {
            let alpha = (1.0 / f64::from(weight[j])) as f32;
            centers_new[j * d..(j + 1) * d].iter_mut().for_each(|v| *v *= alpha);
        } else {
            for t in 0..d {
                centers_new[j * d + t] = centers_new[heaviest * d + t];
            }
        }
    }
    for j in 0..k {
        shift[j] = euclidean(&centers_new[j * d..(j + 1) * d], &centers[j * d..(j + 1) * d]);
    }
    gap
}

/// `_relocate_empty_clusters_dense`: each empty cluster takes one of the samples farthest from their
/// centres (largest first), moved out of its old cluster's sum.
fn relocate_empty(
    x: &[f32],
    d: usize,
    centers_old: &[f32],
    centers_new: &mut [f32],
    weight: &mut [f32],
    labels: &[i32],
) {
    let empty: Vec<usize> = (0..weight.len()).filter(|&j| weight[j] == 0.0).collect();
    if empty.is_empty() {
        return;
    }
    let distances: Vec<f32> = x
        .chunks_exact(d)
        .zip(labels)
        .map(|(row, &l)| {
            let c = &centers_old[l as usize * d..(l as usize + 1) * d];
            let sq: Vec<f32> = row.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).collect();
            pairwise_sum(&sq)
        })
        .collect();
    if distances.iter().all(|&v| v <= 0.0) {
        return;
    }
    // NumPy's argpartition leaves the order among the farthest samples unspecified; descending distance,
    // then the lower index, is the order it gives for one empty cluster (the maximum).
    let mut order: Vec<usize> = (0..distances.len()).collect();
    order.sort_by(|&a, &b| distances[b].total_cmp(&distances[a]).then(a.cmp(&b)));
    for (&new_id, &far) in empty.iter().zip(&order) {
        let old_id = labels[far] as usize;
        for t in 0..d {
            let v = x[far * d + t];
            centers_new[old_id * d + t] -= v;
            centers_new[new_id * d + t] = v;
        }
        weight[new_id] = 1.0;
        weight[old_id] -= 1.0;
    }
}

/// Labels within this relative gap of a tie may differ from scikit-learn's (see the module docs).
pub const AMBIGUOUS_GAP: f64 = 1e-5;

/// The result of [`fit_predict`].
#[derive(Clone, Debug, PartialEq)]
pub struct Clustering {
    /// The label of each row, in `0..k`.
    pub labels: Vec<i32>,
    /// The smallest relative gap `(d₂ − d₁) / (1 + max |dᵢ|)` between a sample's nearest and second-nearest
    /// centre over every assignment made; below [`AMBIGUOUS_GAP`] scikit-learn's float32 BLAS rounding
    /// may have chosen the other centre.
    pub min_gap: f64,
    /// The final centres `(k, d)` row-major, in the data's frame (`cluster_centers_`: the centred
    /// centres plus the column means, in float32).
    pub centers: Vec<f32>,
}

impl Clustering {
    /// Whether some assignment was within float32 rounding of a tie.
    pub fn ambiguous(&self) -> bool {
        self.min_gap < AMBIGUOUS_GAP
    }
}

/// scikit-learn's `KMeans(...).fit_predict(X)` as PEFT calls it: the label of each of the `n` rows of
/// `x` (row-major `(n, d)` float32), in `0..k`.
///
/// # Panics
/// When `k` is 0 or larger than `n` (scikit-learn refuses both; callers clamp `k` first).
pub fn fit_predict(x: &[f32], n: usize, d: usize, k: usize) -> Clustering {
    assert!(k >= 1 && k <= n && x.len() == n * d, "KMeans: {k} clusters of {n} samples");
    let tol = tolerance(x, n, d);
    let mean = column_means(x, n, d);
    let xc: Vec<f32> = x.chunks_exact(d).flat_map(|row| row.iter().zip(&mean).map(|(v, m)| v - m)).collect();
    // `sample_weight / sample_weight.sum()`: float32 `1/n`, which NumPy's choice reads as double.
    let p = vec![f64::from(1.0f32 / n as f32); n];
    let seeds = RandomState::new(RANDOM_STATE).choice_without_replacement(&p, k);
    let mut centers: Vec<f32> = seeds.iter().flat_map(|&s| xc[s * d..(s + 1) * d].to_vec()).collect();
    let mut centers_new = vec![0f32; k * d];
    let mut labels = vec![-1i32; n];
    let mut labels_old = labels.clone();
    let mut shift = vec![0f32; k];
    let mut strict = false;
    let mut min_gap = f64::INFINITY;
    for _ in 0..MAX_ITER {
        min_gap = min_gap.min(lloyd_step(&xc, d, &centers, &mut centers_new, &mut labels, &mut shift));
        std::mem::swap(&mut centers, &mut centers_new);
        if labels == labels_old {
            strict = true;
            break;
        }
        let sq: Vec<f32> = shift.iter().map(|s| s * s).collect();
        if pairwise_sum(&sq) <= tol {
            break;
        }
        labels_old.copy_from_slice(&labels);
    }
    if !strict {
        min_gap = min_gap.min(assign(&xc, d, &centers, &mut labels));
    }
    let centers = centers.chunks_exact(d).flat_map(|c| c.iter().zip(&mean).map(|(v, m)| v + m)).collect();
    Clustering { labels, min_gap, centers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_matches_sequential_for_short_runs() {
        let a = [1.0f32, 2.0, 3.0];
        assert_eq!(pairwise_sum(&a), 6.0);
    }

    #[test]
    fn two_separated_groups() {
        let x = [0.0f32, 0.1, 0.2, 10.0, 10.1, 10.2];
        let labels = fit_predict(&x, 6, 1, 2).labels;
        assert_eq!(labels[0], labels[1]);
        assert_eq!(labels[3], labels[5]);
        assert_ne!(labels[0], labels[3]);
    }
}
