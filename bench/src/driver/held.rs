//! Scenario 4: many requests held at once. For each count N, a fresh
//! gateway is started; the safe path's p99 is measured with none held;
//! then N risky requests are held and the run reports how long reaching N
//! took, the gateway's resident memory and the kernel's TCP socket memory
//! per held request, errors, and the safe path's p99 again.
//!
//! Over HTTP/1.1 each held request has its own connection, which needs a
//! file descriptor at each end; past the open-file limit the holder
//! multiplexes its requests over HTTP/2 instead, and the table says so.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::gateway::{self, DEFAULT_PENDING_CAP, Settings};
use super::proc::{self, Core, Proc};
use super::{Bench, Sizes};
use crate::holder::Report;
use crate::stats::Summary;

/// Longest wait for N requests to be held.
const REACH_LIMIT: Duration = Duration::from_secs(120);

/// Longest wait without progress before giving up on reaching N.
const STALL_LIMIT: Duration = Duration::from_secs(8);

/// File descriptors kept free for everything else.
const FD_MARGIN: u64 = 2_000;

/// HTTP/2 streams per connection when multiplexing.
pub const STREAMS_PER_CONNECTION: usize = 100;

/// Results for every N.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Held {
    /// One row per N.
    pub rows: Vec<HeldRow>,
    /// The safe-path rate used beside held requests.
    pub side_rate: f64,
    /// How the per-agent pending cap was raised.
    pub cap_note: String,
}

/// Results for one N.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeldRow {
    /// Requests held.
    pub n: usize,
    /// `http1` or `http2`.
    pub transport: String,
    /// Seconds from the first request to N pending.
    pub reach_seconds: Summary,
    /// Growth of the gateway's resident memory per held request, bytes.
    pub rss_per_request: Summary,
    /// Growth of kernel TCP socket memory per held request, bytes (both
    /// ends of the loopback connection).
    pub socket_per_request: Summary,
    /// Requests answered or failed before release (should be none).
    pub errors: Summary,
    /// Safe-path p99 with none held, µs.
    pub safe_p99_none_us: Summary,
    /// Safe-path p99 with N held, µs.
    pub safe_p99_held_us: Summary,
    /// The second over the first, per repetition.
    pub safe_p99_ratio: Summary,
    /// Repetitions where the gauge never reached N.
    pub not_reached: usize,
}

/// Runs the scenario for every count in `sizes.held`.
pub fn run(bench: &mut Bench, sizes: &Sizes, side_rate: f64) -> anyhow::Result<Held> {
    let largest = sizes.held.iter().copied().max().unwrap_or(0);
    let (cap_settings, agents, cap_note) = raise_cap(bench, largest)?;
    let ids = gateway::identities(&bench.tools, &bench.dir, "held", agents)?;
    let fd_limit = proc::open_file_limit();

    let mut held = Held { side_rate, cap_note, ..Held::default() };
    for &n in &sizes.held {
        let http2 = (n as u64) + FD_MARGIN > fd_limit;
        let mut runs: Vec<Run> = Vec::new();
        for rep in 0..sizes.reps {
            let run = one(bench, sizes, &ids, &cap_settings, n, http2, side_rate)
                .with_context(|| format!("holding {n}, repetition {}", rep + 1))?;
            eprintln!(
                "  N={n:<6} rep {} reach {:.2}s  rss/req {:.0} B  sock/req {:.0} B  errors {}  \
                 p99 none {:.0} µs held {:.0} µs",
                rep + 1,
                run.reach_seconds,
                run.rss_per_request,
                run.socket_per_request,
                run.errors,
                run.p99_none,
                run.p99_held
            );
            runs.push(run);
        }
        let pick = |f: fn(&Run) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>());
        held.rows.push(HeldRow {
            n,
            transport: if http2 { "http2".into() } else { "http1".into() },
            reach_seconds: pick(|r| r.reach_seconds),
            rss_per_request: pick(|r| r.rss_per_request),
            socket_per_request: pick(|r| r.socket_per_request),
            errors: pick(|r| r.errors as f64),
            safe_p99_none_us: pick(|r| r.p99_none),
            safe_p99_held_us: pick(|r| r.p99_held),
            safe_p99_ratio: pick(|r| r.p99_held / r.p99_none.max(1.0)),
            not_reached: runs.iter().filter(|r| !r.reached).count(),
        });
    }
    Ok(held)
}

/// Finds how to let one agent hold `n` requests: a configuration key
/// when the gateway has one, otherwise enough agents to stay under the
/// default cap.
pub fn raise_cap(bench: &Bench, n: usize) -> anyhow::Result<(Settings, usize, String)> {
    Ok(match gateway::pending_cap(&bench.tools, &bench.dir, n + 1_000) {
        Some(settings) => (settings, 4, "per-agent pending cap raised in the configuration".into()),
        None => {
            let agents = n.div_ceil(DEFAULT_PENDING_CAP - 1).max(1);
            let note = format!(
                "the gateway has no setting for the per-agent pending cap ({DEFAULT_PENDING_CAP} \
                 in memory); requests were spread over {agents} agents instead"
            );
            (Settings::default(), agents, note)
        }
    })
}

struct Run {
    reach_seconds: f64,
    rss_per_request: f64,
    socket_per_request: f64,
    errors: u64,
    p99_none: f64,
    p99_held: f64,
    reached: bool,
}

fn one(
    bench: &Bench,
    sizes: &Sizes,
    ids: &gateway::Identities,
    settings: &Settings,
    n: usize,
    http2: bool,
    side_rate: f64,
) -> anyhow::Result<Run> {
    ids.clear_approvals()?;
    let gw = bench.gateway(ids, settings)?;
    let safe_key = ids.agent_keys[0].clone();
    let none =
        bench.loadgen(gw.agent, &safe_key, side_rate, sizes.latency_secs, sizes.warmup_secs)?;
    let rss_before = proc::rss_bytes(gw.pid())?;
    let sock_before = proc::tcp_socket_bytes()?;

    let mut holder =
        spawn_holder(bench, gw.agent, &ids.agent_keys[1.min(ids.agent_keys.len() - 1)..], http2)?;
    let started = Instant::now();
    holder.send(&format!("hold {n} held"))?;
    let mut reached = false;
    let (mut last, mut changed) = (0.0, Instant::now());
    while started.elapsed() < REACH_LIMIT && changed.elapsed() < STALL_LIMIT {
        let pending = bench.client.pending(gw.review)?;
        if pending >= n as f64 {
            reached = true;
            break;
        }
        if pending > last {
            (last, changed) = (pending, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let reach_seconds = started.elapsed().as_secs_f64();
    // Let allocations settle before reading memory.
    std::thread::sleep(Duration::from_millis(200));
    let rss_after = proc::rss_bytes(gw.pid())?;
    let sock_after = proc::tcp_socket_bytes()?;
    let with =
        bench.loadgen(gw.agent, &safe_key, side_rate, sizes.latency_secs, sizes.warmup_secs)?;

    holder.send("report")?;
    let report = holder_report(&holder)?;
    holder.close_input();
    let _ = holder.wait(Duration::from_secs(10));
    gw.stop();

    Ok(Run {
        reach_seconds,
        rss_per_request: rss_after.saturating_sub(rss_before) as f64 / n as f64,
        socket_per_request: sock_after.saturating_sub(sock_before) as f64 / n as f64,
        errors: report.finished() + none.errors + with.errors + none.non_2xx + with.non_2xx,
        p99_none: none.p99_us,
        p99_held: with.p99_us,
        reached,
    })
}

/// Starts a holder on the load core.
pub fn spawn_holder(
    bench: &Bench,
    agent: std::net::SocketAddr,
    keys: &[String],
    http2: bool,
) -> anyhow::Result<Proc> {
    let keys_file = bench.dir.join(format!("keys-{}.txt", keys.len()));
    std::fs::write(&keys_file, keys.join("\n"))?;
    let mut command = bench.placement.command(&bench.tools.holder, Core::Load);
    command.arg("--addr").arg(agent.to_string()).arg("--keys-file").arg(&keys_file);
    if http2 {
        command.arg("--http2").arg("--streams").arg(STREAMS_PER_CONNECTION.to_string());
    }
    Proc::spawn("holder", command, None, Stdio::inherit())
}

/// Reads the holder's next `report` line.
pub fn holder_report(holder: &Proc) -> anyhow::Result<Report> {
    let line = holder.expect("report ", Duration::from_secs(120))?;
    Ok(serde_json::from_str(line.trim_start_matches("report "))?)
}
