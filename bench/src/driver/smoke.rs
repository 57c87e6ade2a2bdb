//! The smoke run: the same harness at a size that takes seconds, checking
//! correctness instead of speed. Only the Rust programs are needed
//! (`midosoc` and the bench binaries): no nginx, no wrk.
//!
//! It asserts what must hold at any speed: the safe path answers every
//! request with 2xx, every held request is seen by every dashboard, and
//! every held request is released exactly once (one 2xx answer to the
//! agent, one arrival at the upstream).

use std::path::PathBuf;

use super::decision::{self, Decision};
use super::{Bench, Sizes, Tools};
use crate::upstream::Counts;

/// What the smoke run found.
#[derive(Debug)]
pub struct SmokeReport {
    /// The safe-path run through the gateway.
    pub safe_path: crate::loadgen::Outcome,
    /// The decision scenario at small size.
    pub decision: Decision,
    /// What reached the upstream.
    pub upstream: Counts,
}

/// The sizes of the smoke run.
pub fn sizes() -> Sizes {
    Sizes {
        reps: 1,
        throughput_secs: 1,
        latency_secs: 0.5,
        warmup_secs: 0.1,
        load_levels: vec![0.5],
        held: vec![20],
        decision_background: vec![0, 30],
        dashboards: vec![1, 3],
        probes: 3,
        burst: 30,
    }
}

/// Runs the smoke harness with `tools` in `dir`.
pub fn run(tools: Tools, dir: PathBuf, postgres_url: Option<&str>) -> anyhow::Result<SmokeReport> {
    let mut bench = Bench::new(tools, dir)?;
    let sizes = sizes();

    let ids = super::gateway::identities(&bench.tools, &bench.dir, "smoke-safe", 1)?;
    let gw = bench.gateway(&ids, &super::gateway::Settings::default())?;
    let safe_path = bench.loadgen(gw.agent, &ids.agent_keys[0], 200.0, 0.5, 0.1)?;
    gw.stop();

    let decision = decision::run(&mut bench, &sizes, postgres_url)?;
    let upstream = bench.client.upstream_counts(bench.upstream)?;
    Ok(SmokeReport { safe_path, decision, upstream })
}
