//! AdaMSS's initialisation from the base weight (PEFT's `update_layer` with `slice_pca`, `clustering_Z`,
//! `seg_locations`): the SVD, the clusters, and each subspace's starting `(Aᵢ, Bᵢ)`.

use crate::config::AdamssConfig;
use crate::kmeans;
use peft_core::{PeftError, Result};
use tch::{Kind, Tensor};

/// What the initialisation produces for one layer (f32 on the weight's device, before placement).
#[derive(Debug)]
pub struct Decomposition {
    /// `Vᵀ` of the rank-`r'` SVD of `[W | b]`: `(r', in (+1))` — PEFT's `adamss_newB`.
    pub new_b: Tensor,
    /// Each subspace's `Aᵢ` `(rankᵢ, r')`.
    pub a: Vec<Tensor>,
    /// Each subspace's `Bᵢ` `(|Sᵢ|, rankᵢ)`.
    pub b: Vec<Tensor>,
    /// The output rows of each subspace, ascending (`seg_result`).
    pub segments: Vec<Vec<i64>>,
    /// Whether KMeans met a near-tie scikit-learn's BLAS rounding may have decided otherwise.
    pub ambiguous: bool,
}

fn torch(what: &'static str) -> impl FnOnce(tch::TchError) -> PeftError {
    PeftError::torch(what)
}

/// `slice_pca` then the per-subspace initialisation, in PEFT's order of ATen calls and random draws:
/// the weight's `svd_lowrank` inside a fork of the default generator seeded with `random_seed`; then for
/// each subspace (with `use_dynamic_rank`, first a `svd_lowrank` of its Gram matrix for the rank) the Gram
/// matrix's `svd_lowrank` and a QR for `Aᵢ`, and `Bᵢ` zero (or `0.01·randn`), all from the default
/// generator as PEFT's.
///
/// # Errors
/// A failing decomposition; a clustering with an empty subspace (PEFT fails there).
pub fn decompose(
    weight: &Tensor,
    bias: Option<&Tensor>,
    config: &AdamssConfig,
    kind: Kind,
    module: &str,
) -> Result<Decomposition> {
    tch::no_grad(|| decompose_inner(weight, bias, config, kind, module))
}

fn decompose_inner(
    weight: &Tensor,
    bias: Option<&Tensor>,
    config: &AdamssConfig,
    kind: Kind,
    module: &str,
) -> Result<Decomposition> {
    let wb = match bias {
        Some(b) => {
            Tensor::f_cat(&[weight.shallow_clone(), b.unsqueeze(1)], 1).map_err(torch("AdaMSS: [W | b]"))?
        }
        None => weight.shallow_clone(),
    };
    let w = wb.to_kind(Kind::Float);
    let (h, wd) = (w.size()[0], w.size()[1]);
    let er = config.r.min(h).min(wd);
    let seed = config.random_seed;
    let (u, v) = peft_core::rng::fork_default_cpu(|| {
        tch::manual_seed(seed);
        peft_core::linalg::svd_lowrank(&w, er, 2)
    })?
    .map(|(u, _, v)| (u.narrow(1, 0, er).contiguous(), v.narrow(1, 0, er).tr().contiguous()))
    .map_err(|e| {
        PeftError::Invalid(format!(
            "`{module}`: slice_pca failed (shape=(1, 1, {h}, {wd}), dtype=float32): {e}"
        ))
    })?;
    let k = config.num_subspaces.min(h).max(1) as usize;
    let rows: Vec<f32> = Vec::<f32>::try_from(u.flatten(0, -1).to_device(tch::Device::Cpu))
        .map_err(torch("AdaMSS: reading U"))?;
    let clustering = kmeans::fit_predict(&rows, h as usize, er as usize, k);
    let ambiguous = clustering.ambiguous();
    let labels = clustering.labels;
    let mut segments: Vec<Vec<i64>> = vec![Vec::new(); k];
    for (row, &l) in labels.iter().enumerate() {
        segments[l as usize].push(row as i64);
    }
    if let Some(empty) = segments.iter().position(Vec::is_empty) {
        return Err(PeftError::Invalid(format!(
            "`{module}`: KMeans left subspace {empty} of {k} empty (duplicate rows in the weight's singular \
             vectors); PEFT cannot build such a layer either"
        )));
    }
    let (mut a, mut b) = (Vec::with_capacity(k), Vec::with_capacity(k));
    let device = weight.device();
    for seg in &segments {
        let idx = Tensor::from_slice(seg).to_device(device);
        // UU[0, 0, seg, :r]: every column of the clamped factor.
        let data = u.index_select(0, &idx);
        let len = seg.len() as i64;
        let rank = if config.use_dynamic_rank {
            let z = data.matmul(&data.tr());
            let q = z.size()[0].min(z.size()[1]);
            let (_, s, _) = peft_core::linalg::svd_lowrank(&z, q, 2)?;
            let thr = config.svd_threshold.value();
            let above = s.gt_tensor(&(s.get(0) * thr)).sum(Kind::Int64).int64_value(&[]);
            above.min(config.subspace_rank).min(s.size()[0]).max(1)
        } else {
            len.min(config.subspace_rank).max(1)
        };
        let z = data.matmul(&data.tr());
        let (ug, _, _) = peft_core::linalg::svd_lowrank(&z, z.size()[0].min(rank), 2)?;
        let inter = ug.narrow(1, 0, rank.min(ug.size()[1]));
        let (q, _) = peft_core::linalg::qr(&data.tr().matmul(&inter))?;
        let a_init = q.tr().contiguous();
        if a_init.size()[0] != rank {
            return Err(PeftError::Invalid(format!(
                "`{module}`: a subspace of rank {rank} on a rank-{er} SVD (subspace_rank {} above r or the \
                 layer's size); PEFT's forward fails on such a layer",
                config.subspace_rank
            )));
        }
        let b_init = if config.zero_init() {
            Tensor::f_zeros([len, rank], (kind, device)).map_err(torch("AdaMSS: B"))?
        } else {
            (Tensor::f_randn([len, rank], (kind, device)).map_err(torch("AdaMSS: B"))? * 0.01).to_kind(kind)
        };
        a.push(a_init.to_kind(kind));
        b.push(b_init);
    }
    Ok(Decomposition { new_b: v.to_kind(kind), a, b, segments, ambiguous })
}
