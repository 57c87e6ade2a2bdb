//! The driver: starts the programs under test, runs the five scenarios,
//! and writes the results.
//!
//! Two cores are assumed: the proxy under test (or, for the direct
//! baseline, the upstream) runs alone on core 0; the load generator, the
//! upstream behind a proxy, the holder and the dashboards share core 1.
//! Each scenario repeats its measurement (three times by default) and
//! every ratio is taken within a repetition, between measurements made
//! minutes apart at most.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

pub mod chart;
pub mod classifier;
pub mod client;
pub mod decision;
pub mod gateway;
pub mod held;
pub mod nginx;
pub mod perf;
pub mod pg;
pub mod proc;
pub mod report;
pub mod smoke;

use self::client::Client;
use self::proc::{Core, Placement, Proc};

/// The programs a run uses.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The gateway.
    pub midosoc: PathBuf,
    /// The bench crate's upstream.
    pub upstream: PathBuf,
    /// The bench crate's bare hyper proxy.
    pub bare_proxy: PathBuf,
    /// The bench crate's holder.
    pub holder: PathBuf,
    /// The bench crate's dashboards.
    pub sse_client: PathBuf,
    /// The bench crate's open-loop load generator.
    pub loadgen: PathBuf,
    /// nginx, when installed.
    pub nginx: Option<PathBuf>,
    /// wrk, when installed.
    pub wrk: Option<PathBuf>,
}

impl Tools {
    /// The bench binaries and `midosoc` from `dir` (a cargo target
    /// folder such as `target/release`); nginx and wrk from `PATH`.
    pub fn beside(dir: &Path) -> Self {
        Self {
            midosoc: dir.join("midosoc"),
            upstream: dir.join("upstream"),
            bare_proxy: dir.join("bare-proxy"),
            holder: dir.join("holder"),
            sse_client: dir.join("sse-client"),
            loadgen: dir.join("loadgen"),
            nginx: on_path("nginx").or_else(|| existing("/usr/sbin/nginx")),
            wrk: on_path("wrk"),
        }
    }

    /// The programs that are missing, by name.
    pub fn missing_own(&self) -> Vec<String> {
        [
            &self.midosoc,
            &self.upstream,
            &self.bare_proxy,
            &self.holder,
            &self.sse_client,
            &self.loadgen,
        ]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect()
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn existing(path: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    path.is_file().then_some(path)
}

/// The sizes of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sizes {
    /// Repetitions of each measurement.
    pub reps: usize,
    /// Seconds of each closed-loop throughput run.
    pub throughput_secs: u64,
    /// Seconds of each fixed-rate latency run (after a warm-up).
    pub latency_secs: f64,
    /// Warm-up before each fixed-rate run, seconds.
    pub warmup_secs: f64,
    /// Fractions of nginx's maximum at which latency is measured.
    pub load_levels: Vec<f64>,
    /// Held-request counts.
    pub held: Vec<usize>,
    /// Requests held in the background of the decision scenario.
    pub decision_background: Vec<usize>,
    /// Dashboards subscribed in the decision scenario.
    pub dashboards: Vec<usize>,
    /// Probes per repetition of the decision scenario.
    pub probes: usize,
    /// Approvals in one burst.
    pub burst: usize,
}

impl Sizes {
    /// The full suite.
    pub fn full() -> Self {
        Self {
            reps: 3,
            throughput_secs: 5,
            latency_secs: 3.0,
            warmup_secs: 0.5,
            load_levels: vec![0.1, 0.5, 0.8],
            held: vec![1_000, 10_000, 50_000],
            decision_background: vec![0, 10_000],
            dashboards: vec![1, 100],
            probes: 100,
            burst: 1_000,
        }
    }
}

/// What one run found, written to `results.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// The machine and tools.
    pub machine: Machine,
    /// The sizes used.
    pub sizes: Option<Sizes>,
    /// Whether processes were pinned to cores.
    pub pinned: bool,
    /// Scenario 1 and 2.
    pub perf: Option<perf::Perf>,
    /// Scenario 3.
    pub classifier: Option<classifier::ClassifierCost>,
    /// Scenario 4.
    pub held: Option<held::Held>,
    /// Scenario 5.
    pub decision: Option<decision::Decision>,
    /// Figures against their targets.
    pub targets: Vec<report::Check>,
    /// What could not be measured, and spreads above 10%.
    pub warnings: Vec<String>,
    /// Wall time of the run, seconds.
    pub wall_seconds: f64,
}

/// The machine the run was on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Logical cores.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// Open-file limit of the run.
    pub open_file_limit: u64,
    /// `nginx -v`.
    pub nginx: String,
    /// `wrk -v`.
    pub wrk: String,
    /// Latency of a 4 KiB write and `fsync` in the run's folder, where
    /// the SQLite store lives: median and 99th percentile, µs.
    #[serde(default)]
    pub fsync_us: Option<(f64, f64)>,
}

impl Machine {
    fn read(tools: &Tools, dir: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let version = |program: &Option<PathBuf>, arg: &str| {
            program
                .as_ref()
                .and_then(|p| std::process::Command::new(p).arg(arg).output().ok())
                .map(|o| {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    text.lines().next().unwrap_or_default().trim().to_owned()
                })
                .unwrap_or_else(|| "absent".to_owned())
        };
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            memory_gib: kib / 1024.0 / 1024.0,
            open_file_limit: proc::open_file_limit(),
            nginx: version(&tools.nginx, "-v"),
            wrk: version(&tools.wrk, "-v"),
            fsync_us: fsync_latency(dir).ok(),
        }
    }
}

/// Times 200 appends of 4 KiB, each made durable with `fsync`: the floor
/// under every SQLite commit (`synchronous = FULL`) in this folder.
fn fsync_latency(dir: &Path) -> anyhow::Result<(f64, f64)> {
    use std::io::Write as _;

    std::fs::create_dir_all(dir)?;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut times = Vec::with_capacity(200);
    for _ in 0..200 {
        file.write_all(&[0u8; 4096])?;
        let started = Instant::now();
        file.sync_all()?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() * 99 / 100]))
}

/// What a run shares: its folder, placement, client and upstreams.
#[derive(Debug)]
pub struct Bench {
    /// The programs.
    pub tools: Tools,
    /// The run's scratch folder.
    pub dir: PathBuf,
    /// Core placement.
    pub placement: Placement,
    /// HTTP calls of the driver.
    pub client: Client,
    /// The upstream behind the proxies (load core).
    pub upstream: SocketAddr,
    /// The upstream measured directly (proxy core).
    pub direct_upstream: SocketAddr,
    /// The gateway's log file.
    pub gateway_log: PathBuf,
    direct_pid: u32,
    _upstreams: Vec<Proc>,
    /// Warnings gathered along the way.
    pub warnings: Vec<String>,
}

impl Bench {
    /// Starts the two upstreams in `dir`.
    pub fn new(tools: Tools, dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let placement = Placement::detect();
        let (up_load, upstream) = start_upstream(&tools, &placement, Core::Load)?;
        let (up_proxy, direct_upstream) = start_upstream(&tools, &placement, Core::Proxy)?;
        Ok(Self {
            gateway_log: dir.join("midosoc.log"),
            direct_pid: up_proxy.pid(),
            tools,
            dir,
            placement,
            client: Client::new()?,
            upstream,
            direct_upstream,
            _upstreams: vec![up_load, up_proxy],
            warnings: Vec::new(),
        })
    }

    /// The process id of the upstream measured directly.
    pub fn direct_upstream_pid(&self) -> Option<u32> {
        Some(self.direct_pid)
    }

    /// Starts a gateway in front of the load-core upstream.
    pub fn gateway(
        &self,
        identities: &gateway::Identities,
        settings: &gateway::Settings,
    ) -> anyhow::Result<gateway::Gateway> {
        gateway::Gateway::start(
            &self.tools,
            &self.placement,
            Core::Proxy,
            identities,
            settings,
            self.upstream,
            &self.gateway_log,
        )
    }

    /// Runs the load generator on the load core and returns its outcome.
    pub fn loadgen(
        &self,
        addr: SocketAddr,
        key: &str,
        rate: f64,
        seconds: f64,
        warmup: f64,
    ) -> anyhow::Result<crate::loadgen::Outcome> {
        let mut command = self.placement.command(&self.tools.loadgen, Core::Load);
        command
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--key")
            .arg(key)
            .arg("--rate")
            .arg(format!("{rate:.0}"))
            .arg("--seconds")
            .arg(format!("{seconds}"))
            .arg("--warmup")
            .arg(format!("{warmup}"));
        let output = command.stderr(Stdio::inherit()).output().context("cannot run loadgen")?;
        anyhow::ensure!(output.status.success(), "loadgen failed");
        Ok(serde_json::from_slice(&output.stdout)?)
    }
}

fn start_upstream(
    tools: &Tools,
    placement: &Placement,
    core: Core,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut command = placement.command(&tools.upstream, core);
    command.arg("--listen").arg("127.0.0.1:0");
    listening(Proc::spawn("upstream", command, None, Stdio::inherit())?)
}

/// Starts the bare hyper proxy in front of `upstream`, on the proxy core.
pub fn start_bare_proxy(bench: &Bench, upstream: SocketAddr) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut command = bench.placement.command(&bench.tools.bare_proxy, Core::Proxy);
    command.arg("--listen").arg("127.0.0.1:0").arg("--upstream").arg(upstream.to_string());
    listening(Proc::spawn("bare-proxy", command, None, Stdio::inherit())?)
}

/// Waits for a bench program's `listening ADDR` line.
fn listening(proc: Proc) -> anyhow::Result<(Proc, SocketAddr)> {
    let line = proc.expect("listening ", Duration::from_secs(10))?;
    let addr = line.trim_start_matches("listening ").trim().parse()?;
    Ok((proc, addr))
}

/// Which scenarios to run.
#[derive(Clone, Debug)]
pub struct Selection {
    /// Throughput and latency (1 and 2).
    pub perf: bool,
    /// Classifier cost from criterion (3).
    pub classifier: bool,
    /// Held requests (4).
    pub held: bool,
    /// Decision to release (5).
    pub decision: bool,
}

/// Runs the selected scenarios and gathers the results.
pub fn run(
    tools: Tools,
    dir: PathBuf,
    sizes: &Sizes,
    selection: &Selection,
    criterion_dir: &Path,
    postgres_url: Option<&str>,
) -> anyhow::Result<Results> {
    let started = Instant::now();
    let machine = Machine::read(&tools, &dir);
    let mut bench = Bench::new(tools, dir)?;
    let mut results = Results {
        machine,
        sizes: Some(sizes.clone()),
        pinned: bench.placement.pinned,
        ..Results::default()
    };
    if !bench.placement.pinned {
        bench.warnings.push("processes were not pinned: taskset missing or one core".into());
    }

    let mut side_max = None;
    if selection.perf {
        eprintln!("== throughput and latency");
        match perf::run(&mut bench, sizes) {
            Ok(perf) => {
                // Beside held requests the safe path must stay within the
                // gateway's own capacity, or queueing swamps the figure.
                let midosoc = perf.row("midosoc").map(|r| r.rps.median);
                side_max = match (perf.nginx_max(), midosoc) {
                    (Some(n), Some(m)) => Some(n.min(m)),
                    (n, m) => n.or(m),
                };
                results.perf = Some(perf);
            }
            Err(error) => bench.warnings.push(format!("throughput and latency: {error:#}")),
        }
    }
    if selection.classifier {
        eprintln!("== classifier cost");
        match classifier::read(criterion_dir) {
            Ok(cost) => results.classifier = Some(cost),
            Err(error) => bench.warnings.push(format!("classifier: {error:#}")),
        }
    }
    // The safe-path load used beside held requests: half of the smaller
    // of nginx's and Midosoc's maximum when known, else a modest rate.
    let side_rate = side_max.map_or(2_000.0, |max| max * 0.5);
    if selection.held {
        eprintln!("== held requests");
        match held::run(&mut bench, sizes, side_rate) {
            Ok(held) => results.held = Some(held),
            Err(error) => bench.warnings.push(format!("held requests: {error:#}")),
        }
    }
    if selection.decision {
        eprintln!("== decision to release");
        match decision::run(&mut bench, sizes, postgres_url) {
            Ok(decision) => {
                // A PostgreSQL run that was asked for and did not happen is
                // a warning, not only a line in the report.
                let skipped = decision.notes.iter().filter(|n| n.starts_with("PostgreSQL:"));
                bench.warnings.extend(skipped.cloned());
                results.decision = Some(decision);
            }
            Err(error) => bench.warnings.push(format!("decision to release: {error:#}")),
        }
    }

    results.warnings = std::mem::take(&mut bench.warnings);
    results.targets = report::checks(&results);
    results.warnings.extend(report::spread_warnings(&results));
    results.wall_seconds = started.elapsed().as_secs_f64();
    Ok(results)
}
