//! Shared helpers for the end-to-end suites: finding peers, skipping
//! honestly when one is absent, and locating the `midosoc` binary.
//!
//! The suites are test targets of `midosoc-server` (see its manifest), so
//! cargo builds the binary before running them.

#![allow(dead_code, reason = "each suite uses a different part of the support code")]

use std::path::PathBuf;

/// Whether CI asked for every peer to be present.
pub fn peers_required() -> bool {
    std::env::var("MIDOSOC_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Reports a suite skipped for want of `peer`. Under
/// `MIDOSOC_REQUIRE_PEERS=1` a missing peer fails the suite instead, so CI
/// never passes by skipping.
pub fn skip(suite: &str, peer: &str, why: &str) {
    assert!(!peers_required(), "{suite}: {peer} is required but {why}");
    eprintln!("SKIPPED {suite}: {peer} not available ({why})");
}

/// Finds an executable on `PATH`, or at an explicit path in `env_var`.
pub fn find_program(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The `midosoc` binary cargo built for this test run.
pub fn midosoc_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_midosoc"))
}
