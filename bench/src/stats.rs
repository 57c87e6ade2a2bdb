//! Summaries of repeated measurements: minimum, median and maximum of the
//! repetitions, with a warning when they disagree by more than 10%, and
//! percentiles of samples.

use serde::{Deserialize, Serialize};

/// Relative spread (max − min over median) above which a figure is
/// flagged as noisy.
pub const SPREAD_LIMIT: f64 = 0.10;

/// One figure over its repetitions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The smallest repetition.
    pub min: f64,
    /// The median repetition; the figure quoted.
    pub median: f64,
    /// The largest repetition.
    pub max: f64,
    /// Every repetition, in the order measured.
    pub runs: Vec<f64>,
    /// Whether (max − min) / median exceeds [`SPREAD_LIMIT`].
    pub noisy: bool,
}

impl Summary {
    /// Summarises `runs`; an empty list gives zeros.
    pub fn of(runs: &[f64]) -> Self {
        let mut sorted: Vec<f64> = runs.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return Self { runs: runs.to_vec(), ..Self::default() };
        }
        sorted.sort_by(f64::total_cmp);
        let min = sorted[0];
        let max = sorted[sorted.len() - 1];
        let median = median_of_sorted(&sorted);
        let noisy = median.abs() > f64::EPSILON && (max - min) / median.abs() > SPREAD_LIMIT;
        Self { min, median, max, runs: runs.to_vec(), noisy }
    }

    /// The spread as a fraction of the median.
    pub fn spread(&self) -> f64 {
        if self.median.abs() > f64::EPSILON {
            (self.max - self.min) / self.median.abs()
        } else {
            0.0
        }
    }
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 }
}

/// The `q` quantile (0 to 1) of `samples` by nearest rank; 0 when empty.
pub fn quantile(samples: &mut [u64], q: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    samples.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_gives_min_median_max_and_flags_spread() {
        let quiet = Summary::of(&[100.0, 104.0, 102.0]);
        assert_eq!((quiet.min, quiet.median, quiet.max), (100.0, 102.0, 104.0));
        assert!(!quiet.noisy);

        let noisy = Summary::of(&[100.0, 130.0, 101.0]);
        assert_eq!(noisy.median, 101.0);
        assert!(noisy.noisy);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&mut samples, 0.5), 50);
        assert_eq!(quantile(&mut samples, 0.99), 99);
        assert_eq!(quantile(&mut samples, 1.0), 100);
        assert_eq!(quantile(&mut [], 0.5), 0);
    }
}
