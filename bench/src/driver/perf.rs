//! Scenarios 1 and 2: safe-path throughput (closed loop, wrk) and added
//! latency at fixed load (open loop, the bench's `loadgen`), for the
//! upstream reached directly, nginx, the bare hyper proxy the gateway is
//! built on (`bare-proxy`), and Midosoc. The bare proxy separates what the
//! HTTP stack costs from what the gateway's own work costs.
//!
//! Within each repetition the targets are measured one after the other,
//! so every ratio compares measurements taken seconds apart.

use std::net::SocketAddr;
use std::process::Stdio;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::gateway::{self, Settings};
use super::nginx::Nginx;
use super::proc::{self, Core};
use super::{Bench, Sizes};
use crate::stats::Summary;

/// Path requested on the safe path: a plain read.
pub const SAFE_PATH: &str = "/up/items/42";

/// Connections wrk keeps open.
const WRK_CONNECTIONS: usize = 32;

/// Throughput and latency results.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Perf {
    /// Closed-loop throughput per target.
    pub throughput: Vec<Row>,
    /// Midosoc's requests per second over nginx's, per repetition.
    pub midosoc_over_nginx: Option<Summary>,
    /// Midosoc's requests per second over the direct upstream's.
    pub midosoc_over_direct: Option<Summary>,
    /// Midosoc's CPU per request over nginx's.
    pub cpu_midosoc_over_nginx: Option<Summary>,
    /// Midosoc's requests per second over the bare hyper proxy's.
    #[serde(default)]
    pub midosoc_over_bare: Option<Summary>,
    /// Midosoc's CPU per request over the bare hyper proxy's.
    #[serde(default)]
    pub cpu_midosoc_over_bare: Option<Summary>,
    /// The bare hyper proxy's CPU per request over nginx's.
    #[serde(default)]
    pub cpu_bare_over_nginx: Option<Summary>,
    /// Midosoc with the classifier on over off (requests per second).
    pub classifier_on_over_off: Option<Summary>,
    /// Why the classifier-off run is missing, when it is.
    pub classifier_off_note: Option<String>,
    /// Latency at fixed fractions of the reference maximum.
    pub latency: Vec<Level>,
    /// Which maximum the load levels are fractions of.
    pub reference: String,
}

impl Perf {
    /// nginx's median maximum, requests per second.
    pub fn nginx_max(&self) -> Option<f64> {
        self.row("nginx").map(|r| r.rps.median)
    }

    /// The throughput row named `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.throughput.iter().find(|r| r.name == name)
    }
}

/// Throughput of one target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    /// `direct`, `nginx`, `bare-hyper`, `midosoc` or
    /// `midosoc-classifier-off`.
    pub name: String,
    /// Requests per second.
    pub rps: Summary,
    /// CPU microseconds per request of the program under test.
    pub cpu_us_per_request: Summary,
    /// Socket errors and non-2xx answers, all repetitions.
    pub errors: u64,
}

/// Latency at one load level.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Level {
    /// Fraction of the reference maximum.
    pub load: f64,
    /// Requests per second sent.
    pub rate: f64,
    /// Per target: `direct`, `nginx`, `midosoc`.
    pub targets: Vec<Latency>,
    /// nginx's latency minus direct's, per repetition.
    pub nginx_added: Option<Added>,
    /// Midosoc's latency minus direct's, per repetition.
    pub midosoc_added: Option<Added>,
    /// The bare hyper proxy's latency minus direct's, per repetition.
    #[serde(default)]
    pub bare_added: Option<Added>,
    /// Midosoc's added p99 over nginx's added p99.
    pub midosoc_over_nginx_added_p99: Option<Summary>,
}

/// One target's latency.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    /// The target.
    pub name: String,
    /// Median, µs.
    pub p50_us: Summary,
    /// 99th percentile, µs.
    pub p99_us: Summary,
    /// 99.9th percentile, µs.
    pub p999_us: Summary,
    /// Requests per second answered.
    pub achieved_rate: Summary,
    /// Errors and non-2xx answers, all repetitions.
    pub errors: u64,
    /// The distribution of the median repetition (by p99).
    pub curve: Vec<(f64, f64)>,
}

/// Latency added over the direct upstream, µs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Added {
    /// At the median.
    pub p50_us: Summary,
    /// At the 99th percentile.
    pub p99_us: Summary,
    /// At the 99.9th percentile.
    pub p999_us: Summary,
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    pids: Vec<u32>,
}

/// Runs both scenarios.
pub fn run(bench: &mut Bench, sizes: &Sizes) -> anyhow::Result<Perf> {
    let ids = gateway::identities(&bench.tools, &bench.dir, "perf", 1)?;
    let key = ids.agent_keys[0].clone();
    let mut perf = Perf::default();

    let nginx = match &bench.tools.nginx {
        Some(binary) => {
            Some(Nginx::start(binary, &bench.placement, Core::Proxy, &bench.dir, bench.upstream)?)
        }
        None => {
            bench.warnings.push("nginx is not installed: no nginx figures".into());
            None
        }
    };
    let (bare, bare_addr) = super::start_bare_proxy(bench, bench.upstream)?;
    let midosoc = bench.gateway(&ids, &Settings::default())?;
    let off_settings = gateway::classifier_off(&bench.tools, &bench.dir);
    let midosoc_off = match &off_settings {
        Some(settings) => Some(bench.gateway(&ids, settings)?),
        None => {
            perf.classifier_off_note = Some(
                "the gateway has no setting that turns the classifier off; \
                 see the criterion figure for its cost"
                    .into(),
            );
            None
        }
    };

    let mut targets = vec![Target {
        name: "direct",
        addr: bench.direct_upstream,
        pids: upstream_pid(bench).into_iter().collect(),
    }];
    if let Some(nginx) = &nginx {
        targets.push(Target { name: "nginx", addr: nginx.addr, pids: nginx.pids() });
    }
    targets.push(Target { name: "bare-hyper", addr: bare_addr, pids: vec![bare.pid()] });
    targets.push(Target { name: "midosoc", addr: midosoc.agent, pids: vec![midosoc.pid()] });
    if let Some(off) = &midosoc_off {
        targets.push(Target {
            name: "midosoc-classifier-off",
            addr: off.agent,
            pids: vec![off.pid()],
        });
    }

    throughput(bench, sizes, &targets, &key, &mut perf)?;
    perf.reference = if nginx.is_some() { "nginx".into() } else { "midosoc".into() };
    let reference = perf.nginx_max().or_else(|| perf.row("midosoc").map(|r| r.rps.median));
    if let Some(max) = reference {
        let latency_targets: Vec<&Target> =
            targets.iter().filter(|t| t.name != "midosoc-classifier-off").collect();
        for &load in &sizes.load_levels {
            perf.latency.push(level(bench, sizes, &latency_targets, &key, load, max * load)?);
        }
    }

    if let Some(nginx) = nginx {
        nginx.stop();
    }
    midosoc.stop();
    drop(bare);
    if let Some(off) = midosoc_off {
        off.stop();
    }
    Ok(perf)
}

fn upstream_pid(bench: &Bench) -> Option<u32> {
    // The direct upstream is the one listening on `direct_upstream`;
    // find it by its listening socket's owner through /proc would be
    // heavy, so the bench keeps the pid beside the address.
    bench.direct_upstream_pid()
}

fn throughput(
    bench: &mut Bench,
    sizes: &Sizes,
    targets: &[Target],
    key: &str,
    perf: &mut Perf,
) -> anyhow::Result<()> {
    let Some(wrk) = bench.tools.wrk.clone() else {
        bench.warnings.push("wrk is not installed: no throughput figures".into());
        return Ok(());
    };
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut errors = vec![0u64; targets.len()];
    for target in targets {
        wrk_run(bench, &wrk, target.addr, key, 1)?;
    }
    for rep in 0..sizes.reps {
        for (i, target) in targets.iter().enumerate() {
            let before = cpu_of(&target.pids);
            let outcome = wrk_run(bench, &wrk, target.addr, key, sizes.throughput_secs)?;
            let used = cpu_of(&target.pids) - before;
            eprintln!(
                "  rep {} {:<24} {:>9.0} req/s  {:>6.1} µs CPU/req",
                rep + 1,
                target.name,
                outcome.rps,
                used * 1e6 / outcome.requests.max(1) as f64
            );
            rps[i].push(outcome.rps);
            cpu[i].push(used * 1e6 / outcome.requests.max(1) as f64);
            errors[i] += outcome.errors;
        }
    }
    for (i, target) in targets.iter().enumerate() {
        perf.throughput.push(Row {
            name: target.name.into(),
            rps: Summary::of(&rps[i]),
            cpu_us_per_request: Summary::of(&cpu[i]),
            errors: errors[i],
        });
    }
    let index = |name: &str| targets.iter().position(|t| t.name == name);
    let ratio = |a: Option<usize>, b: Option<usize>, values: &[Vec<f64>]| {
        let (a, b) = (a?, b?);
        let per_rep: Vec<f64> = values[a].iter().zip(&values[b]).map(|(x, y)| x / y).collect();
        Some(Summary::of(&per_rep))
    };
    perf.midosoc_over_nginx = ratio(index("midosoc"), index("nginx"), &rps);
    perf.midosoc_over_direct = ratio(index("midosoc"), index("direct"), &rps);
    perf.cpu_midosoc_over_nginx = ratio(index("midosoc"), index("nginx"), &cpu);
    perf.midosoc_over_bare = ratio(index("midosoc"), index("bare-hyper"), &rps);
    perf.cpu_midosoc_over_bare = ratio(index("midosoc"), index("bare-hyper"), &cpu);
    perf.cpu_bare_over_nginx = ratio(index("bare-hyper"), index("nginx"), &cpu);
    perf.classifier_on_over_off = ratio(index("midosoc"), index("midosoc-classifier-off"), &rps);
    Ok(())
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| proc::cpu_seconds(pid).ok()).sum()
}

struct WrkOutcome {
    rps: f64,
    requests: u64,
    errors: u64,
}

fn wrk_run(
    bench: &Bench,
    wrk: &std::path::Path,
    addr: SocketAddr,
    key: &str,
    seconds: u64,
) -> anyhow::Result<WrkOutcome> {
    let mut command = bench.placement.command(wrk, Core::Load);
    command
        .args(["-t1", &format!("-c{WRK_CONNECTIONS}"), &format!("-d{seconds}s"), "--timeout", "2s"])
        .arg("-H")
        .arg(format!("authorization: Bearer {key}"))
        .arg(format!("http://{addr}{SAFE_PATH}"));
    let output = command.stderr(Stdio::inherit()).output().context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_wrk(&text).with_context(|| format!("unexpected wrk output: {text}"))
}

fn parse_wrk(text: &str) -> anyhow::Result<WrkOutcome> {
    let mut rps = None;
    let mut requests = None;
    let mut errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse().ok();
        } else if line.contains("requests in") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    match (rps, requests) {
        (Some(rps), Some(requests)) => Ok(WrkOutcome { rps, requests, errors }),
        _ => bail!("no `Requests/sec` in wrk's output"),
    }
}

fn level(
    bench: &Bench,
    sizes: &Sizes,
    targets: &[&Target],
    key: &str,
    load: f64,
    rate: f64,
) -> anyhow::Result<Level> {
    let mut outcomes: Vec<Vec<crate::loadgen::Outcome>> = vec![Vec::new(); targets.len()];
    for rep in 0..sizes.reps {
        for (i, target) in targets.iter().enumerate() {
            let outcome =
                bench.loadgen(target.addr, key, rate, sizes.latency_secs, sizes.warmup_secs)?;
            eprintln!(
                "  {:>3.0}% rep {} {:<8} p50 {:>7.0} µs  p99 {:>8.0} µs  \
                 p99.9 {:>8.0} µs  ({:.0} req/s)",
                load * 100.0,
                rep + 1,
                target.name,
                outcome.p50_us,
                outcome.p99_us,
                outcome.p999_us,
                outcome.achieved_rate
            );
            outcomes[i].push(outcome);
        }
    }

    let latency = |i: usize| {
        let runs = &outcomes[i];
        let pick = |f: fn(&crate::loadgen::Outcome) -> f64| {
            Summary::of(&runs.iter().map(f).collect::<Vec<_>>())
        };
        let p99 = pick(|o| o.p99_us);
        let curve = runs
            .iter()
            .min_by(|a, b| (a.p99_us - p99.median).abs().total_cmp(&(b.p99_us - p99.median).abs()))
            .map(|o| o.curve.clone())
            .unwrap_or_default();
        Latency {
            name: targets[i].name.into(),
            p50_us: pick(|o| o.p50_us),
            p99_us: p99,
            p999_us: pick(|o| o.p999_us),
            achieved_rate: pick(|o| o.achieved_rate),
            errors: runs.iter().map(|o| o.errors + o.non_2xx).sum(),
            curve,
        }
    };
    let index = |name: &str| targets.iter().position(|t| t.name == name);
    let added = |i: Option<usize>| {
        let (i, d) = (i?, index("direct")?);
        let diff = |f: fn(&crate::loadgen::Outcome) -> f64| {
            let per_rep: Vec<f64> =
                outcomes[i].iter().zip(&outcomes[d]).map(|(a, b)| f(a) - f(b)).collect();
            Summary::of(&per_rep)
        };
        Some(Added {
            p50_us: diff(|o| o.p50_us),
            p99_us: diff(|o| o.p99_us),
            p999_us: diff(|o| o.p999_us),
        })
    };
    let nginx_added = added(index("nginx"));
    let midosoc_added = added(index("midosoc"));
    let over = match (&nginx_added, &midosoc_added) {
        (Some(n), Some(m)) => {
            let per_rep: Vec<f64> = m
                .p99_us
                .runs
                .iter()
                .zip(&n.p99_us.runs)
                .map(|(m, n)| if *n > 0.0 { m / n } else { f64::NAN })
                .collect();
            Some(Summary::of(&per_rep))
        }
        _ => None,
    };
    Ok(Level {
        load,
        rate,
        targets: (0..targets.len()).map(latency).collect(),
        nginx_added,
        midosoc_added,
        bare_added: added(index("bare-hyper")),
        midosoc_over_nginx_added_p99: over,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read_for_rate_requests_and_errors() {
        let text = "Running 5s test @ http://127.0.0.1:1/up/items/42\n\
            \x20 1 threads and 32 connections\n\
            \x20 123456 requests in 5.00s, 20.00MB read\n\
            \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
            \x20 Non-2xx or 3xx responses: 4\n\
            Requests/sec:  24691.20\nTransfer/sec:      4.00MB\n";
        let outcome = parse_wrk(text).unwrap();
        assert_eq!(outcome.requests, 123_456);
        assert_eq!(outcome.errors, 7);
        assert!((outcome.rps - 24_691.2).abs() < 1e-6);
    }
}
