//! Running `midosoc serve` for a scenario: a configuration file in the
//! run's folder, agents and an approving analyst created with the CLI, the
//! listeners' addresses read from the banner.
//!
//! Settings that the gateway may or may not have yet (a pending cap per
//! agent, a switch to turn the classifier off, a durable store) are probed
//! with `midosoc config check` before use, so the suite measures what the
//! build offers and says what it could not.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::Tools;
use super::proc::{Core, Placement, Proc};

/// How long the gateway may take to print its banner.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Pending approvals one agent may have when the gateway offers no
/// setting for it (the in-memory store's default).
pub const DEFAULT_PENDING_CAP: usize = 100;

/// A gateway configuration, as TOML tables of `key = value` lines.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    tables: BTreeMap<String, Vec<String>>,
}

impl Settings {
    /// Adds `key = value` (value already in TOML syntax) to `table`.
    pub fn set(&mut self, table: &str, key: &str, value: &str) -> &mut Self {
        self.tables.entry(table.to_owned()).or_default().push(format!("{key} = {value}"));
        self
    }

    /// Adds every line of `other`.
    pub fn merge(&mut self, other: &Settings) -> &mut Self {
        for (table, lines) in &other.tables {
            self.tables.entry(table.clone()).or_default().extend(lines.iter().cloned());
        }
        self
    }

    fn render(&self, data_dir: &Path, upstream: SocketAddr) -> String {
        let mut text = format!("data_dir = {:?}\n", data_dir.display().to_string());
        let mut tables = self.tables.clone();
        tables.entry("agent".into()).or_default().push("listen = \"127.0.0.1:0\"".into());
        tables.entry("review".into()).or_default().push("listen = \"127.0.0.1:0\"".into());
        tables.entry("log".into()).or_default().push("filter = \"error\"".into());
        for (table, lines) in &tables {
            text.push_str(&format!("\n[{table}]\n"));
            for line in lines {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str(&format!(
            "\n[[upstream]]\nname = \"bench\"\nprefix = \"/up/\"\nurl = \"http://{upstream}/\"\n"
        ));
        text
    }
}

/// A data folder with its agents and analyst, reused across starts.
#[derive(Clone, Debug)]
pub struct Identities {
    /// The data folder.
    pub data_dir: PathBuf,
    /// Agent keys.
    pub agent_keys: Vec<String>,
    /// An approver's bearer token.
    pub analyst_token: String,
}

impl Identities {
    /// Deletes the default SQLite approval store in the data folder, so the
    /// next gateway starts with nothing pending. Approvals are durable: a
    /// gateway restarted over the old file would find the last run's held
    /// requests still pending.
    pub fn clear_approvals(&self) -> anyhow::Result<()> {
        remove_sqlite(&self.data_dir.join("approvals.db"))
    }
}

/// Deletes the SQLite database at `path` with its journal files; a
/// database that does not exist is no error.
pub fn remove_sqlite(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                let shown = Path::new(&file).display().to_string();
                return Err(error).with_context(|| format!("cannot remove {shown}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    proc: Proc,
    /// The agent listener.
    pub agent: SocketAddr,
    /// The review listener.
    pub review: SocketAddr,
}

impl Gateway {
    /// Starts a gateway over `identities` with `settings`, in front of
    /// `upstream`, on `core`.
    pub fn start(
        tools: &Tools,
        placement: &Placement,
        core: Core,
        identities: &Identities,
        settings: &Settings,
        upstream: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let config = identities.data_dir.with_extension("toml");
        std::fs::write(&config, settings.render(&identities.data_dir, upstream))?;
        let mut command = placement.command(&tools.midosoc, core);
        command.arg("serve").arg("--config").arg(&config);
        let stderr = File::options().create(true).append(true).open(log)?;
        let proc = Proc::spawn("midosoc", command, None, Stdio::from(stderr))?;

        let mut agent = None;
        let mut review = None;
        loop {
            let line = proc.line(START_LIMIT).context("midosoc serve did not print its banner")?;
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("agent listener:") {
                agent = Some(address(rest)?);
            } else if let Some(rest) = line.strip_prefix("dashboard:") {
                review = Some(address(rest)?);
            } else if line.starts_with("data:") {
                break;
            }
        }
        let (Some(agent), Some(review)) = (agent, review) else {
            bail!("the banner named no listeners");
        };
        Ok(Self { proc, agent, review })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops the gateway (SIGTERM, then kill).
    pub fn stop(mut self) {
        self.proc.stop(Duration::from_secs(3));
    }
}

/// `http://127.0.0.1:PORT/...` as an address.
fn address(text: &str) -> anyhow::Result<SocketAddr> {
    let url = text.split_whitespace().next().unwrap_or_default();
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    host.parse().with_context(|| format!("`{url}` is not a loopback address"))
}

/// Creates a data folder with `agents` agents and one approver.
pub fn identities(
    tools: &Tools,
    dir: &Path,
    name: &str,
    agents: usize,
) -> anyhow::Result<Identities> {
    let data_dir = dir.join(name);
    std::fs::create_dir_all(&data_dir)?;
    let config = data_dir.with_extension("toml");
    let settings = Settings::default();
    std::fs::write(&config, settings.render(&data_dir, "127.0.0.1:9".parse()?))?;

    let mut agent_keys = Vec::new();
    for i in 0..agents.max(1) {
        let out = cli(tools, &config, &["agent", "add", &format!("bench-agent-{i}")])?;
        agent_keys.push(secret(&out, "mdsa_")?);
    }
    let out = cli(tools, &config, &["analyst", "add", "bench-analyst", "--role", "approver"])?;
    let analyst_token = secret(&out, "mdsr_")?;
    Ok(Identities { data_dir, agent_keys, analyst_token })
}

fn cli(tools: &Tools, config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(&tools.midosoc).args(args).arg("--config").arg(config).output()?;
    if !output.status.success() {
        bail!("midosoc {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn secret(output: &str, prefix: &str) -> anyhow::Result<String> {
    output
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(prefix))
        .map(str::to_owned)
        .with_context(|| format!("no `{prefix}...` line in the output"))
}

/// Whether the gateway accepts `settings` (`midosoc config check`); the
/// refusal's message otherwise.
pub fn accepts(tools: &Tools, dir: &Path, settings: &Settings) -> Result<(), String> {
    let data_dir = dir.join("probe-data");
    let config = dir.join("probe.toml");
    std::fs::write(&config, settings.render(&data_dir, ([127, 0, 0, 1], 9).into()))
        .map_err(|e| e.to_string())?;
    let output = Command::new(&tools.midosoc)
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// The first of `candidates` the gateway accepts, with its label.
pub fn first_accepted<'a>(
    tools: &Tools,
    dir: &Path,
    candidates: &'a [(&'a str, Settings)],
) -> Option<&'a (&'a str, Settings)> {
    candidates.iter().find(|(_, settings)| accepts(tools, dir, settings).is_ok())
}

/// Settings raising the pending cap per agent to `cap`, if the gateway
/// has such a key.
pub fn pending_cap(tools: &Tools, dir: &Path, cap: usize) -> Option<Settings> {
    let value = cap.to_string();
    let candidates: Vec<(&str, Settings)> = ["approval", "store", "agent"]
        .iter()
        .flat_map(|table| {
            ["max_pending_per_agent", "pending_per_agent", "max_pending"].iter().map(|key| {
                let mut settings = Settings::default();
                settings.set(table, key, &value);
                ("cap", settings)
            })
        })
        .collect();
    first_accepted(tools, dir, &candidates).map(|(_, settings)| settings.clone())
}

/// Settings that turn the classifier off (or make it allow everything),
/// if the gateway has such a switch.
pub fn classifier_off(tools: &Tools, dir: &Path) -> Option<Settings> {
    let allow_all = dir.join("allow-all-rules.toml");
    let _ = std::fs::write(&allow_all, "# no vocabulary: requests are judged by method alone\n");
    let candidates: Vec<(&str, Settings)> = vec![
        ("kind = off", one("classifier", "kind", "\"off\"")),
        ("kind = none", one("classifier", "kind", "\"none\"")),
        ("kind = allow", one("classifier", "kind", "\"allow\"")),
        ("enabled = false", one("classifier", "enabled", "false")),
    ];
    first_accepted(tools, dir, &candidates).map(|(_, settings)| settings.clone())
}

/// Settings for the approvals store at `url`, if the gateway accepts it.
pub fn store(tools: &Tools, dir: &Path, url: &str) -> Result<Settings, String> {
    let settings = one("store", "url", &format!("{url:?}"));
    accepts(tools, dir, &settings).map(|()| settings)
}

fn one(table: &str, key: &str, value: &str) -> Settings {
    let mut settings = Settings::default();
    settings.set(table, key, value);
    settings
}
