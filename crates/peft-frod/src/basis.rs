//! The tensors FRoD shares between the layers of one module category: the basis `V` decomposed jointly
//! from their weights, and the positions of the sparse `S` (PEFT's `FrodModel._init_frod_projections`).
//!
//! A *category* is the role a module plays in its block, read from the end of its dotted name
//! (`model.layers.3.self_attn.q_proj` → `self_attn_q_proj`, `encoder.layer.0.attention.self.query` →
//! `self_query`, `layers.0.lin0` → `lin0`); PEFT stores the category's tensors once, at the model level
//! (`base_model.frod_V.<category>`, `base_model.frod_s_indices.<category>`,
//! `base_model.frod_s_size.<category>`).

use peft_core::config::TargetWeight;
use peft_core::rng::Generator;
use peft_core::{PeftError, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

/// The model-level key prefixes of the shared tensors.
pub const MODEL_LEVEL: [&str; 3] =
    ["base_model.frod_V.", "base_model.frod_s_indices.", "base_model.frod_s_size."];

/// Whether a checkpoint key is one of the model-level shared tensors.
pub fn is_model_level_key(key: &str) -> bool {
    MODEL_LEVEL.iter().any(|p| key.starts_with(p))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// PEFT's `_category_from_key`: the module's last two name parts joined by `_` (only the last when the
/// one before it is a block index), with BERT's `attention.output.dense` as `attention_output` so it
/// stays apart from the MLP's `output.dense`.
pub fn category_from_key(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    let n = parts.len();
    if n == 1 {
        return parts[0].to_string();
    }
    if is_digits(parts[n - 2]) {
        return parts[n - 1].to_string();
    }
    let category = format!("{}_{}", parts[n - 2], parts[n - 1]);
    if category == "output_dense" && n >= 3 && parts[n - 3] == "attention" {
        return "attention_output".to_string();
    }
    category
}

/// PEFT's `_layer_index_from_key`: the number after the first `layers` part, else the first numeric
/// part, else `fallback` (the module's position among the matched modules).
pub fn layer_index_from_key(key: &str, fallback: i64) -> i64 {
    let parts: Vec<&str> = key.split('.').collect();
    if let Some(i) = parts.iter().position(|p| *p == "layers") {
        if let Some(Ok(idx)) = parts.get(i + 1).map(|p| p.trim().parse::<i64>()) {
            return idx;
        }
    }
    parts.iter().find(|p| is_digits(p)).and_then(|p| p.parse().ok()).unwrap_or(fallback)
}

type Tch<T> = std::result::Result<T, tch::TchError>;

/// PEFT's `_projection_from_weights` on the category's weights `(outᵢ, in)` (f32, CPU, in layer order):
/// with fewer stacked rows than columns, `V` is the transposed right factor of the full SVD of the
/// stack; otherwise, with the reduced `QR` of the stack and `Qᵢ` its rows of layer `i`,
/// `V = Rᵀ · eigenvectors(mean_i (QᵢᵀQᵢ + α·I)⁻¹)`. `(in, in)`.
pub fn projection_from_weights(matrices: &[Tensor], alpha: f64) -> Tch<Tensor> {
    let stacked = Tensor::f_cat(matrices, 0)?;
    let (rows, cols) = (stacked.size()[0], stacked.size()[1]);
    if rows < cols {
        // `torch.svd(some=False)` is `linalg_svd(full_matrices=True)` (no driver) returning `Vhᴴ`: the same
        // transposed view as PEFT's `vh.T`.
        let (_, _, v) = stacked.f_svd(false, true)?;
        return Ok(v);
    }
    let (q, r) = Tensor::f_linalg_qr(&stacked, "reduced")?;
    let dim = r.size()[1];
    let eye = || Tensor::f_eye(dim, (r.kind(), Device::Cpu));
    let mut t_pi = Tensor::f_zeros([dim, dim], (r.kind(), Device::Cpu))?;
    let mut start = 0;
    for m in matrices {
        let n = m.size()[0];
        let q_slice = q.f_narrow(0, start, n)?;
        start += n;
        let q_term = q_slice.f_tr()?.f_mm(&q_slice)?.f_add(&eye()?.f_mul_scalar(alpha)?)?;
        let _ = t_pi.f_add_(&Tensor::f_linalg_inv(&q_term)?)?;
    }
    let _ = t_pi.f_div_scalar_(matrices.len() as i64)?;
    let (_, eigenvectors) = t_pi.f_linalg_eigh("L")?;
    r.f_tr()?.f_mm(&eigenvectors)
}

/// The positions of a category's `S` (`(2, nnz)`, int64): `nnz = ⌊in²·sparse_rate⌋` (at least one when the
/// rate is positive, at most the `in² − in` off-diagonal positions), the first `nnz` of a `randperm` of
/// the off-diagonal positions in row-major order.
pub fn sparse_positions(in_dim: i64, sparse_rate: f64, g: &mut Generator) -> Result<Tensor> {
    let off_diagonal = in_dim * in_dim - in_dim;
    let mut nnz = ((in_dim * in_dim) as f64 * sparse_rate) as i64;
    nnz = nnz.min(off_diagonal);
    if sparse_rate > 0.0 && off_diagonal > 0 {
        nnz = nnz.max(1);
    }
    let torch = PeftError::torch("drawing FRoD's sparse positions");
    if nnz == 0 {
        return Tensor::f_empty([2, 0], (Kind::Int64, Device::Cpu)).map_err(torch);
    }
    let perm = g.randperm(off_diagonal)?;
    let f = || -> Tch<Tensor> {
        let k = perm.f_narrow(0, 0, nnz)?;
        // Off-diagonal position `k` (row-major, diagonal skipped): row `k / (in−1)`, column `j` or `j + 1`
        // for `j = k mod (in−1)` before or from the diagonal — the entries PEFT's boolean-masked meshgrid
        // lists, without building it.
        let row = k.f_floor_divide_scalar(in_dim - 1)?;
        let j = k.f_remainder(in_dim - 1)?;
        let col = j.f_add(&j.f_ge_tensor(&row)?.f_to_kind(Kind::Int64)?)?;
        Tensor::f_stack(&[row, col], 0)?.f_contiguous()
    };
    f().map_err(torch)
}

/// One adapter's shared tensors of one category (PEFT's `frod_V[category][adapter]`, …).
#[derive(Debug)]
pub struct Entry {
    /// The basis `(in, in)`, in the dtype of the category's first weight, on the CPU.
    pub v: Tensor,
    /// The positions of `S` `(2, nnz)`, int64.
    pub indices: Tensor,
    /// The size of `S`, `[in, in]`, int64.
    pub size: Tensor,
}

impl Entry {
    /// The same tensors (PEFT's `.to(device="cpu")` of a CPU tensor is the tensor itself).
    fn share(&self) -> Entry {
        Entry {
            v: self.v.shallow_clone(),
            indices: self.indices.shallow_clone(),
            size: self.size.shallow_clone(),
        }
    }
}

/// What decomposing again needs: the targeted weights of the adapter being created and its options.
#[derive(Debug)]
struct Pending {
    adapter: String,
    weights: Vec<(String, Tensor)>,
    alpha: f64,
    sparse_rate: f64,
    seed: i64,
}

/// The model-level shared tensors of every FRoD adapter: category → adapter → entry, adapters in the
/// order they were added (PEFT's `frod_V`, `frod_s_indices` and `frod_s_size` `ModuleDict`s of
/// `BufferDict`s on the tuner).
#[derive(Debug, Default)]
pub struct Registry {
    categories: BTreeMap<String, Vec<(String, Entry)>>,
    /// `(category, adapter)` pairs whose tensors a layer saves.
    owners: std::collections::BTreeSet<(String, String)>,
    pending: Option<Pending>,
}

impl Registry {
    /// The entry of `adapter` in `category`.
    pub fn entry(&self, category: &str, adapter: &str) -> Option<&Entry> {
        self.categories.get(category)?.iter().find(|(a, _)| a == adapter).map(|(_, e)| e)
    }

    /// The adapters with an entry in `category`, in order.
    pub fn adapters(&self, category: &str) -> Vec<String> {
        self.categories.get(category).map(|l| l.iter().map(|(a, _)| a.clone()).collect()).unwrap_or_default()
    }

    /// PEFT's `delete_adapter` on a layer: the adapter's tensors of `category` leave the category's dicts.
    pub fn remove(&mut self, category: &str, adapter: &str) {
        if let Some(list) = self.categories.get_mut(category) {
            list.retain(|(a, _)| a != adapter);
            if list.is_empty() {
                self.categories.remove(category);
            }
        }
        self.owners.remove(&(category.to_string(), adapter.to_string()));
    }

    /// PEFT's `_init_frod_projections` for the pending adapter: every category of its targets decomposed
    /// and drawn afresh under its name (replacing entries it had).
    fn decompose_pending(&mut self) -> Result<()> {
        let Some(p) = self.pending.as_ref() else {
            return Err(PeftError::Invalid("FRoD's targets were not read before its layers".into()));
        };
        let fresh = decompose(&p.weights, p.alpha, p.sparse_rate, p.seed)?;
        let adapter = p.adapter.clone();
        for (category, entry) in fresh {
            let list = self.categories.entry(category).or_default();
            match list.iter_mut().find(|(a, _)| *a == adapter) {
                Some((_, e)) => *e = entry,
                None => list.push((adapter.clone(), entry)),
            }
        }
        Ok(())
    }

    /// What a layer of `adapter` in `category` uses, as PEFT's `_create_and_replace` and `update_layer`
    /// find it: a category no adapter has yet is decomposed for the pending adapter first; an adapter
    /// without an entry in the category shares the category's first adapter's tensors. Returns the
    /// basis.
    ///
    /// # Errors
    /// No targets pending, a failed decomposition.
    pub fn attach(&mut self, category: &str, adapter: &str) -> Result<Tensor> {
        if !self.categories.contains_key(category) {
            self.decompose_pending()?;
        }
        let list = self.categories.get_mut(category).ok_or_else(|| {
            PeftError::Invalid(format!(
                "FRoD has no basis for category `{category}` (no dense weight of it was read)"
            ))
        })?;
        if !list.iter().any(|(a, _)| a == adapter) {
            let shared = list[0].1.share();
            list.push((adapter.to_string(), shared));
        }
        let v = self
            .entry(category, adapter)
            .map(|e| e.v.shallow_clone())
            .unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, Device::Cpu)));
        Ok(v)
    }

    /// Whether the layer being created is the adapter's first in `category` (it then saves the
    /// category's tensors for the adapter); records it.
    pub fn claim(&mut self, category: &str, adapter: &str) -> bool {
        self.owners.insert((category.to_string(), adapter.to_string()))
    }
}

/// The model's FRoD registry (absent until the first adapter's `before_layers_with_weights`).
#[derive(Clone, Debug, Default)]
pub struct SharedBases(pub Option<Arc<Mutex<Registry>>>);

impl PartialEq for SharedBases {
    /// Configs compare by what is saved; the bases are not part of the config.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// The dense `(out, in)` weights of the targets (quantized bases refused by name).
fn dense_weights(targets: &[TargetWeight]) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::new();
    for t in targets {
        let Some(w) = &t.weight else { continue };
        if t.quantized {
            return Err(PeftError::Invalid(format!(
                "`{}`: FRoD decomposes the dense base weights; a quantized {} base is not supported",
                t.layer.name, t.layer.class
            )));
        }
        out.push((t.layer.name.clone(), w.shallow_clone()));
    }
    Ok(out)
}

/// The entries of every category of `weights` (PEFT's `_init_frod_projections`): the weights grouped by
/// category and ordered by block index, each category decomposed in f32 and its `S` positions drawn,
/// categories in sorted order from one generator seeded with `seed`.
///
/// # Errors
/// No weight at all, weights of one category with different input sizes, a libtorch failure.
pub fn decompose(
    weights: &[(String, Tensor)],
    alpha: f64,
    sparse_rate: f64,
    seed: i64,
) -> Result<BTreeMap<String, Entry>> {
    // Block index → category → weight, blocks in first-seen order (PEFT's dict of dicts; a later module
    // of the same block and category replaces the earlier one).
    let mut blocks: Vec<(i64, BTreeMap<String, Tensor>)> = Vec::new();
    for (fallback, (name, w)) in weights.iter().enumerate() {
        let category = category_from_key(name);
        let idx = layer_index_from_key(name, fallback as i64);
        match blocks.iter_mut().find(|(i, _)| *i == idx) {
            Some((_, m)) => {
                m.insert(category, w.shallow_clone());
            }
            None => blocks.push((idx, BTreeMap::from([(category, w.shallow_clone())]))),
        }
    }
    if blocks.is_empty() {
        return Err(PeftError::Invalid(
            "No layer types compatible with FRoD were found. Please check `peft_config.target_modules`."
                .into(),
        ));
    }
    let names: std::collections::BTreeSet<String> =
        blocks.iter().flat_map(|(_, m)| m.keys().cloned()).collect();
    let mut sorted: Vec<&(i64, BTreeMap<String, Tensor>)> = blocks.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut g = Generator::new(seed as u64)?;
    let mut out = BTreeMap::new();
    for name in names {
        let ws: Vec<&Tensor> = sorted.iter().filter_map(|(_, m)| m.get(&name)).collect();
        let ins: Vec<i64> = ws.iter().map(|w| w.size()[1]).collect();
        if ins.iter().any(|i| *i != ins[0]) {
            return Err(PeftError::Invalid(format!(
                "FRoD category `{name}`: its layers have different input sizes ({ins:?}); the joint \
                 decomposition of a category needs one"
            )));
        }
        let kind = blocks.iter().find_map(|(_, m)| m.get(&name)).map_or(Kind::Float, |w| w.kind());
        log::debug!("FRoD joint decomposition: category {name}, {} layers, dim {}", ws.len(), ins[0]);
        let run = || -> Tch<Tensor> {
            let matrices = ws
                .iter()
                .map(|w| w.f_detach()?.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu))
                .collect::<Tch<Vec<Tensor>>>()?;
            projection_from_weights(&matrices, alpha)?.f_to_kind(kind)
        };
        let v = tch::no_grad(run).map_err(PeftError::torch(format!("decomposing FRoD category `{name}`")))?;
        let in_dim = v.size()[0];
        let indices = sparse_positions(in_dim, sparse_rate, &mut g)?;
        let size = Tensor::from_slice(&[in_dim, in_dim]);
        out.insert(name, Entry { v, indices, size });
    }
    Ok(out)
}

impl SharedBases {
    /// PEFT's FRoD tuner for a new adapter: the first adapter (no `earlier` registry) decomposes its
    /// targets now (`_pre_injection_hook`); later adapters keep their targets' weights pending and
    /// decompose only when a layer meets a category no adapter has (`_create_and_replace`).
    ///
    /// # Errors
    /// A quantized target; for the first adapter, as [`decompose`].
    pub fn for_adapter(
        earlier: Option<SharedBases>,
        adapter: &str,
        targets: &[TargetWeight],
        (alpha, sparse_rate, seed): (f64, f64, i64),
    ) -> Result<Self> {
        let weights = dense_weights(targets)?;
        let first = earlier.is_none();
        let shared = earlier.unwrap_or_else(|| SharedBases(Some(Arc::new(Mutex::new(Registry::default())))));
        {
            let mut reg = shared.lock()?;
            reg.pending = Some(Pending { adapter: adapter.to_string(), weights, alpha, sparse_rate, seed });
            if first {
                reg.decompose_pending()?;
            }
        }
        Ok(shared)
    }

    /// The registry, locked.
    ///
    /// # Errors
    /// No registry yet.
    pub fn lock(&self) -> Result<MutexGuard<'_, Registry>> {
        self.0
            .as_ref()
            .ok_or_else(|| PeftError::Invalid("FRoD's bases were not decomposed before its layers".into()))?
            .lock()
            .map_err(|_| PeftError::Invalid("FRoD's bases are poisoned".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_follow_peft() {
        assert_eq!(category_from_key("lin0"), "lin0");
        assert_eq!(category_from_key("layers.0.lin0"), "lin0");
        assert_eq!(category_from_key("model.layers.3.self_attn.q_proj"), "self_attn_q_proj");
        assert_eq!(category_from_key("encoder.layer.0.attention.self.query"), "self_query");
        assert_eq!(category_from_key("encoder.layer.0.attention.output.dense"), "attention_output");
        assert_eq!(category_from_key("encoder.layer.0.output.dense"), "output_dense");
    }

    #[test]
    fn layer_indices_follow_peft() {
        assert_eq!(layer_index_from_key("model.layers.3.self_attn.q_proj", 9), 3);
        assert_eq!(layer_index_from_key("encoder.layer.11.attention.self.query", 9), 11);
        assert_eq!(layer_index_from_key("classifier.dense", 9), 9);
        assert_eq!(layer_index_from_key("layers.x.h.2.q", 9), 2);
    }

    #[test]
    fn sparse_positions_skip_the_diagonal() -> Result<()> {
        let mut g = Generator::new(0)?;
        let p = sparse_positions(5, 1.0, &mut g)?;
        assert_eq!(p.size(), [2, 20]);
        assert_eq!(p.get(0).ne_tensor(&p.get(1)).all().int64_value(&[]), 1);
        let mut g = Generator::new(0)?;
        assert_eq!(sparse_positions(5, 0.0, &mut g)?.size(), [2, 0]);
        assert_eq!(sparse_positions(5, 1e-6, &mut g)?.size(), [2, 1]);
        assert_eq!(sparse_positions(1, 0.5, &mut g)?.size(), [2, 0]);
        Ok(())
    }
}
