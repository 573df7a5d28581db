//! Learning-rate schedules, as transformers' `get_scheduler` defines them (a factor on the base lr).
//!
//! Like PyTorch's `LambdaLR`, the `k`-th optimizer step (from 0) uses `factor(k)`: with warmup, the first
//! update has learning rate 0.

use serde::{Deserialize, Serialize};

/// transformers' `SchedulerType` values supported here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant after warmup.
    #[serde(alias = "constant_with_warmup")]
    Constant,
    /// Linear decay to 0 after warmup (transformers' default).
    #[default]
    Linear,
    /// Half a cosine to 0 after warmup.
    Cosine,
}

impl Schedule {
    /// The factor for optimizer step `step` of `total`, with `warmup` warmup steps.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => {
                let rest = total.saturating_sub(step) as f64 / total.saturating_sub(warmup).max(1) as f64;
                rest.max(0.0)
            }
            Schedule::Cosine => {
                let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }

    /// Parses `constant`, `constant_with_warmup`, `linear` or `cosine`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "constant" | "constant_with_warmup" => Schedule::Constant,
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=10)
        let lin: Vec<f64> = (0..11).map(|s| Schedule::Linear.factor(s, 2, 10)).collect();
        assert_eq!(lin[..3], [0.0, 0.5, 1.0]);
        assert!((lin[6] - 0.5).abs() < 1e-12);
        assert_eq!(lin[10], 0.0);
        // get_cosine_schedule_with_warmup(warmup=0, total=4): 1, 0.854, 0.5, 0.146, 0
        let cos: Vec<f64> = (0..5).map(|s| Schedule::Cosine.factor(s, 0, 4)).collect();
        assert!((cos[1] - 0.853_553_390_593_273_8).abs() < 1e-12 && (cos[2] - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(0, 3, 10), 0.0);
        assert_eq!(Schedule::Constant.factor(5, 3, 10), 1.0);
    }
}
