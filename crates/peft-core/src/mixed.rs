//! Mixed-adapter batches: one forward pass where each row of the batch uses its own adapter (or none),
//! PEFT's `adapter_names=[…]` argument.
//!
//! [`RowAdapters`] says which adapter each row uses; pass it in [`crate::ForwardCtx::with_rows`]. Every
//! adaptable layer then computes the base output once and adds each row's adapter contribution. Methods
//! can do that for all rows at once (the [`MixedBatch`] capability, [`crate::TunerLayer::as_mixed_batch`]:
//! LoRA gathers each row's factors and uses batched matrix products); for the others the layer runs each
//! adapter on its rows. Build one with [`crate::PeftModel::row_adapters`], which checks the names and that nothing is
//! merged.

use crate::layer::{BaseLayer, ForwardCtx, TunerLayer};
use std::any::Any;
use std::fmt;
use std::sync::Mutex;
use tch::{Device, Tensor};

/// A layer's ability to compute a mixed batch for all its rows at once (see
/// [`crate::TunerLayer::as_mixed_batch`]).
pub trait MixedBatch {
    /// The output update for a mixed batch: `group` are the adapters of this method on this layer (this
    /// one first), `index[i]` the position in `group` of row `i`'s adapter (-1: none). `y` is the base
    /// output. `cache` may hold what the method prepared for this group. `None`: not for this group (the
    /// layer then runs each adapter on its rows).
    #[allow(clippy::too_many_arguments)]
    fn mixed_batch_output(
        &self,
        base: &dyn BaseLayer,
        x: &Tensor,
        y: &Tensor,
        group: &[&dyn TunerLayer],
        index: &Tensor,
        cache: &MixedCache,
        ctx: &ForwardCtx<'_>,
    ) -> Option<Tensor>;
}

/// The name that selects the base model (no adapter) for a row, as in PEFT.
pub const BASE: &str = "__base__";

/// The adapter of every row of a batch.
#[derive(Debug)]
pub struct RowAdapters {
    names: Vec<String>,
    per_row: Vec<i64>,
    index: Tensor,
    rows: Vec<Tensor>,
}

impl RowAdapters {
    /// `per_row[i]` is the adapter of row `i` ([`BASE`] for none). Tensors are made on `device`, the
    /// device of the inputs.
    pub fn new(per_row: &[&str], device: Device) -> Self {
        let mut names: Vec<String> = Vec::new();
        let mut idx = Vec::with_capacity(per_row.len());
        for name in per_row {
            if *name == BASE {
                idx.push(-1);
                continue;
            }
            let pos = match names.iter().position(|n| n == name) {
                Some(p) => p,
                None => {
                    names.push(name.to_string());
                    names.len() - 1
                }
            };
            idx.push(pos as i64);
        }
        let rows = (0..names.len() as i64)
            .map(|k| {
                let r: Vec<i64> =
                    idx.iter().enumerate().filter(|(_, &v)| v == k).map(|(i, _)| i as i64).collect();
                Tensor::from_slice(&r).to_device(device)
            })
            .collect();
        let index = Tensor::from_slice(&idx).to_device(device);
        Self { names, per_row: idx, index, rows }
    }

    /// The distinct adapters, in order of first appearance.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of rows.
    pub fn batch_size(&self) -> usize {
        self.per_row.len()
    }

    /// Per row, the position of its adapter in [`RowAdapters::names`], or -1 for the base.
    pub fn positions(&self) -> &[i64] {
        &self.per_row
    }

    /// [`RowAdapters::positions`] as an int64 tensor on the input device.
    pub fn index(&self) -> &Tensor {
        &self.index
    }

    /// The rows that use adapter `k` of [`RowAdapters::names`].
    pub fn rows(&self, k: usize) -> Option<&Tensor> {
        self.rows.get(k)
    }

    /// Re-indexes rows for a subset of the adapters: `present[k]` is the position in the subset of
    /// adapter `k` of [`RowAdapters::names`] (`None`: the row uses the base).
    pub fn local_index(&self, present: &[Option<usize>]) -> Tensor {
        let local: Vec<i64> =
            self.per_row
                .iter()
                .map(|&g| {
                    if g < 0 {
                        -1
                    } else {
                        present.get(g as usize).copied().flatten().map_or(-1, |p| p as i64)
                    }
                })
                .collect();
        Tensor::from_slice(&local).to_device(self.index.device())
    }
}

/// A per-layer slot where a method keeps what it prepared for mixed batches (e.g. LoRA's stacked
/// factors), reused while the adapters do not change.
#[derive(Default)]
pub struct MixedCache(pub Mutex<Option<Box<dyn Any + Send>>>);

impl fmt::Debug for MixedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let filled = self.0.lock().map(|g| g.is_some()).unwrap_or(false);
        f.debug_struct("MixedCache").field("filled", &filled).finish()
    }
}

impl MixedCache {
    /// Drops what is cached.
    pub fn clear(&self) {
        if let Ok(mut g) = self.0.lock() {
            *g = None;
        }
    }
}
