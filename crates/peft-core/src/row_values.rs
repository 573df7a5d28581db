//! Per-row values of one forward call: data a method needs for each row of the batch beyond the input
//! tensor (Activated LoRA's invocation offsets, task ids of task-routed methods).
//!
//! [`RowValues`] holds named columns, one optional `i64` per row; pass them with
//! [`ForwardCtx::with_row_values`](crate::ForwardCtx::with_row_values). A layer that splits a mixed
//! batch into per-adapter sub-batches hands each sub-batch its rows' values ([`RowValues::select`]).
//!
//! Values a config computes from the input ids come from its [`InputRowValues`] capability
//! ([`AdapterConfig::input_row_values`](crate::AdapterConfig::input_row_values)), collected for a batch
//! by [`PeftModel::row_values`](crate::PeftModel::row_values): trainers, the CLI and generation loops
//! call that once per forward without knowing which method needs what.

/// Named per-row columns of one forward call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowValues {
    columns: Vec<(&'static str, Vec<Option<i64>>)>,
}

impl RowValues {
    /// No columns.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets column `key` (one value per row; `None`: the row has no value), replacing an earlier one.
    pub fn insert(&mut self, key: &'static str, values: Vec<Option<i64>>) {
        match self.columns.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = values,
            None => self.columns.push((key, values)),
        }
    }

    /// Column `key`, if set.
    pub fn get(&self, key: &str) -> Option<&[Option<i64>]> {
        self.columns.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_slice())
    }

    /// Whether no column is set.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// The values of rows `rows` (positions in this batch), in that order: what a sub-batch made of those
    /// rows sees. Positions past a column's end read as `None`.
    pub fn select(&self, rows: &[i64]) -> RowValues {
        let pick = |v: &[Option<i64>]| {
            rows.iter().map(|&i| usize::try_from(i).ok().and_then(|i| v.get(i).copied().flatten())).collect()
        };
        RowValues { columns: self.columns.iter().map(|(k, v)| (*k, pick(v))).collect() }
    }
}

/// A config's per-row value computed from each row's input ids (the capability behind
/// [`AdapterConfig::input_row_values`](crate::AdapterConfig::input_row_values)).
pub trait InputRowValues {
    /// The column the value goes to; the method's layers read the same key.
    fn key(&self) -> &'static str;

    /// The value for a row with input ids `ids`; `None`: none for this row.
    fn row_value(&self, ids: &[i64]) -> Option<i64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_batch_sees_its_own_rows_values() {
        let mut v = RowValues::new();
        v.insert("offsets", vec![Some(3), None, Some(5)]);
        v.insert("task", vec![Some(0), Some(1), Some(2)]);
        let sub = v.select(&[2, 0]);
        assert_eq!(sub.get("offsets"), Some(&[Some(5), Some(3)][..]));
        assert_eq!(sub.get("task"), Some(&[Some(2), Some(0)][..]));
        assert_eq!(v.select(&[7]).get("task"), Some(&[None][..]));
        assert_eq!(sub.get("absent"), None);
    }

    #[test]
    fn inserting_a_column_again_replaces_it() {
        let mut v = RowValues::new();
        v.insert("k", vec![Some(1)]);
        v.insert("k", vec![Some(2)]);
        assert_eq!(v.get("k"), Some(&[Some(2)][..]));
        assert!(!v.is_empty());
    }
}
