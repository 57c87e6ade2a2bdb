//! Runs `midosoc serve` processes on a configuration the suite writes, so
//! that a suite can kill one outright (SIGKILL), start it again on the
//! same data, or run several against one database.

#![allow(dead_code, reason = "each suite uses a different part of the helper")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use serde_json::{Value, json};

use crate::support;

/// How long a gateway may take to print where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a condition polled by [`eventually`] may take to hold.
const CONDITION_TIMEOUT: Duration = Duration::from_secs(20);

/// A directory with a configuration file in it.
pub(crate) struct Setup {
    /// The configuration file.
    pub(crate) config: PathBuf,
    dir: tempfile::TempDir,
}

impl Setup {
    /// Writes a configuration with both listeners on free ports, the data
    /// in a fresh directory and `extra` appended.
    pub(crate) fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("midosoc.toml");
        let data = dir.path().join("data");
        let text = format!(
            "data_dir = {data:?}\n[agent]\nlisten = \"127.0.0.1:0\"\n\
             [review]\nlisten = \"127.0.0.1:0\"\n{extra}\n"
        );
        std::fs::write(&config, text).expect("config file");
        Self { config, dir }
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `midosoc` with this configuration.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(support::midosoc_binary())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("midosoc runs")
    }

    /// Creates an agent and returns its key.
    pub(crate) fn add_agent(&self, name: &str) -> String {
        let output = self.cli(&["agent", "add", name]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("mdsa_"))
            .expect("an agent key line")
            .to_owned()
    }
}

/// One running `midosoc serve`, killed when dropped.
pub(crate) struct Instance {
    child: Child,
    /// Base URL of the agent listener.
    pub(crate) agent_url: String,
    /// Base URL of the review listener.
    pub(crate) review_url: String,
    /// The first analyst's token, on the first start of a data directory.
    pub(crate) admin_token: Option<String>,
}

impl Instance {
    /// Starts `midosoc serve --config FILE` and reads its banner.
    pub(crate) fn start(config: &Path) -> Self {
        let mut child = Command::new(support::midosoc_binary())
            .args(["serve", "--config"])
            .arg(config)
            .env("MIDOSOC_LOG__FILTER", "warn,midosoc=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("midosoc serve starts");
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });

        let mut instance =
            Self { child, agent_url: String::new(), review_url: String::new(), admin_token: None };
        loop {
            let line = lines.recv_timeout(START_TIMEOUT).expect("midosoc serve prints its banner");
            let line = line.trim();
            let word = |rest: &str| rest.split_whitespace().next().unwrap_or_default().to_owned();
            if let Some(rest) = line.strip_prefix("agent listener:") {
                instance.agent_url = word(rest);
            } else if let Some(rest) = line.strip_prefix("dashboard:") {
                instance.review_url = word(rest).trim_end_matches('/').to_owned();
            } else if line.starts_with("mdsr_") {
                instance.admin_token = Some(line.to_owned());
            } else if line.starts_with("Ready;") {
                break;
            }
        }
        instance
    }

    /// Kills the process with SIGKILL, as a crash or an OOM killer would:
    /// no draining, no shutdown code runs.
    pub(crate) fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("gateway exits");
    }

    /// The agent listener's URL for `path`.
    pub(crate) fn agent(&self, path: &str) -> String {
        format!("{}{path}", self.agent_url)
    }

    /// The review listener's URL for `path`.
    pub(crate) fn review(&self, path: &str) -> String {
        format!("{}{path}", self.review_url)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream that answers every request with its method and path, and
/// counts how often it saw each `METHOD path`.
#[derive(Clone, Default)]
pub(crate) struct CountingUpstream {
    seen: Arc<Mutex<Vec<String>>>,
}

impl CountingUpstream {
    /// Starts it on a free loopback port.
    pub(crate) async fn start() -> (Self, SocketAddr) {
        let upstream = Self::default();
        let seen = upstream.seen.clone();
        let handler = move |request: Request| {
            let seen = seen.clone();
            async move {
                let line = format!("{} {}", request.method(), request.uri().path());
                seen.lock().expect("lock").push(line.clone());
                axum::Json(json!({ "done": line }))
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new().fallback(handler);
        tokio::spawn(async move { axum::serve(listener, router).await });
        (upstream, addr)
    }

    /// How often `METHOD path` arrived.
    pub(crate) fn count(&self, line: &str) -> usize {
        self.seen.lock().expect("lock").iter().filter(|seen| *seen == line).count()
    }
}

/// The `[[upstream]]` table for an upstream at `addr` under `/api/`.
pub(crate) fn upstream_table(addr: SocketAddr) -> String {
    format!(
        "[[upstream]]\nname = \"api\"\nprefix = \"/api/\"\nurl = \"http://{addr}/\"\n\
         timeout = \"5s\"\n"
    )
}

/// Polls `check` every 20 ms until it returns `Some`, failing after a
/// bound: a condition, not a guess at how long something takes.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < CONDITION_TIMEOUT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pending approvals the review API lists, as JSON.
pub(crate) async fn pending(
    client: &reqwest::Client,
    gateway: &Instance,
    token: &str,
) -> Vec<Value> {
    let reply = client
        .get(gateway.review("/api/approvals?status=pending"))
        .bearer_auth(token)
        .send()
        .await
        .expect("review api answers");
    assert_eq!(reply.status(), 200);
    let body: Value = reply.json().await.expect("json");
    body["approvals"].as_array().cloned().unwrap_or_default()
}

/// Approves or denies (`verb`) an approval through the review API and
/// returns the status code.
pub(crate) async fn decide(
    client: &reqwest::Client,
    gateway: &Instance,
    token: &str,
    id: &str,
    verb: &str,
) -> u16 {
    client
        .post(gateway.review(&format!("/api/approvals/{id}/{verb}")))
        .bearer_auth(token)
        .json(&json!({ "reason": "checked with the owner" }))
        .send()
        .await
        .expect("review api answers")
        .status()
        .as_u16()
}
