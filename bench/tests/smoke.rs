//! The benchmark harness at smoke size: seconds, not minutes. It needs
//! only Rust programs (the `midosoc` binary and this crate's own) and
//! checks correctness, not speed: every safe request answered 2xx, every
//! held request seen by the dashboards and released exactly once.
//!
//! `midosoc` is found beside this crate's binaries, where
//! `cargo test --workspace` builds it (or at `MIDOSOC_BIN`). When it is
//! absent the suite skips with a message, unless `MIDOSOC_REQUIRE_PEERS=1`.

use std::path::PathBuf;

use midosoc_bench::driver::{Tools, smoke};

fn midosoc_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MIDOSOC_BIN") {
        return Some(PathBuf::from(path));
    }
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_upstream")).parent()?.to_path_buf();
    let path = dir.join("midosoc");
    path.is_file().then_some(path)
}

fn tools() -> Option<Tools> {
    let Some(midosoc) = midosoc_binary() else {
        let required = std::env::var("MIDOSOC_REQUIRE_PEERS").is_ok_and(|v| v == "1");
        assert!(!required, "bench smoke: the midosoc binary is required but was not built");
        eprintln!(
            "SKIPPED bench smoke: midosoc binary not available (build it with \
             `cargo build -p midosoc-server` or run `cargo test --workspace`)"
        );
        return None;
    };
    Some(Tools {
        midosoc,
        upstream: env!("CARGO_BIN_EXE_upstream").into(),
        bare_proxy: env!("CARGO_BIN_EXE_bare-proxy").into(),
        holder: env!("CARGO_BIN_EXE_holder").into(),
        sse_client: env!("CARGO_BIN_EXE_sse-client").into(),
        loadgen: env!("CARGO_BIN_EXE_loadgen").into(),
        nginx: None,
        wrk: None,
    })
}

#[test]
fn every_held_request_is_released_exactly_once_and_the_safe_path_never_fails() {
    let Some(tools) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let report = smoke::run(tools, dir.path().to_path_buf(), None).unwrap();

    let safe = &report.safe_path;
    assert!(safe.requests > 0, "{safe:?}");
    assert_eq!((safe.errors, safe.non_2xx), (0, 0), "{safe:?}");

    let sizes = smoke::sizes();
    let decision = &report.decision;
    assert_eq!(decision.rows.len(), sizes.decision_background.len() * sizes.dashboards.len());
    for row in &decision.rows {
        assert_eq!(row.failures, 0, "{row:?}");
        assert!(row.event_p99_us.median > 0.0 && row.release_p99_us.median > 0.0, "{row:?}");
    }
    assert_eq!(decision.bursts.len(), 1, "{decision:?}");
    assert_eq!(decision.bursts[0].failures, 0, "{decision:?}");
    assert_eq!(decision.bursts[0].approvals, sizes.burst);

    // Every probe and every background request reached the upstream once.
    let probes =
        sizes.decision_background.len() * sizes.dashboards.len() * sizes.probes * sizes.reps;
    let released = probes + sizes.burst;
    let changes = &report.upstream.changes;
    assert_eq!(changes.len(), released, "{changes:?}");
    assert!(changes.values().all(|&n| n == 1), "{changes:?}");
}
