//! Scenario 3: the heuristic classifier's cost per action, as measured by
//! the criterion benchmark `benches/classifier.rs` over the corpus rows.
//! The driver only reads criterion's estimates; `bench/run.sh` runs the
//! benchmark first.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Criterion group of the classifier benchmarks.
pub const GROUP: &str = "classifier";

/// Benchmarks in the group: every corpus row, then each label alone.
pub const BENCHES: &[&str] = &["all", "read", "write", "destructive"];

/// The classifier's cost.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClassifierCost {
    /// One row per benchmark.
    pub rows: Vec<CostRow>,
}

/// One benchmark's estimates, nanoseconds per action.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CostRow {
    /// Which rows: `all`, `read`, `write`, `destructive`.
    pub rows: String,
    /// Median, ns per action.
    pub median_ns: f64,
    /// Lower bound of the median's 95% confidence interval.
    pub median_low_ns: f64,
    /// Upper bound.
    pub median_high_ns: f64,
    /// Mean, ns per action.
    pub mean_ns: f64,
}

#[derive(Deserialize)]
struct Estimates {
    mean: Estimate,
    median: Estimate,
}

#[derive(Deserialize)]
struct Estimate {
    point_estimate: f64,
    confidence_interval: Interval,
}

#[derive(Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

/// Reads the latest estimates under `criterion_dir` (`target/criterion`).
pub fn read(criterion_dir: &Path) -> anyhow::Result<ClassifierCost> {
    let mut cost = ClassifierCost::default();
    for bench in BENCHES {
        let path = criterion_dir.join(GROUP).join(bench).join("new/estimates.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no criterion estimates at `target/criterion/{GROUP}/{bench}/new/estimates.json`; \
                 run `cargo bench -p midosoc-bench --bench classifier`"
            )
        })?;
        let estimates: Estimates = serde_json::from_str(&text)?;
        cost.rows.push(CostRow {
            rows: (*bench).to_owned(),
            median_ns: estimates.median.point_estimate,
            median_low_ns: estimates.median.confidence_interval.lower_bound,
            median_high_ns: estimates.median.confidence_interval.upper_bound,
            mean_ns: estimates.mean.point_estimate,
        });
    }
    Ok(cost)
}
