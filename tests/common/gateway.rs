//! Runs the real `midosoc` binary for end-to-end suites: a temporary data
//! directory, both listeners on free loopback ports, and the agent and
//! analyst credentials the CLI prints.

#![allow(dead_code, reason = "each suite uses a different part of the helper")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support;

/// How long the gateway may take to print where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running gateway, stopped when dropped.
pub(crate) struct Gateway {
    child: Option<Child>,
    /// Base URL of the agent listener, without a trailing `/`.
    pub(crate) agent_url: String,
    /// Base URL of the review listener, without a trailing `/`.
    pub(crate) review_url: String,
    /// The token of the `admin` analyst created on first start.
    pub(crate) admin_token: String,
    /// The configuration file the gateway runs with.
    pub(crate) config: PathBuf,
    /// Lines the gateway printed on standard output after its banner.
    stdout: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `midosoc serve` with `extra` appended to a configuration
    /// that puts both listeners on free ports and the data in a fresh
    /// directory.
    pub(crate) fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("midosoc.toml");
        let data = dir.path().join("data");
        let text = format!(
            "data_dir = {data:?}\n[agent]\nlisten = \"127.0.0.1:0\"\n\
             [review]\nlisten = \"127.0.0.1:0\"\n{extra}\n"
        );
        std::fs::write(&config, text).expect("config file");

        let (child, receiver) = spawn(&config);
        let mut gateway = Self {
            child: Some(child),
            agent_url: String::new(),
            review_url: String::new(),
            admin_token: String::new(),
            config,
            stdout: receiver,
            _dir: dir,
        };
        gateway.read_banner();
        gateway
    }

    /// Reads the banner up to its last line.
    fn read_banner(&mut self) {
        loop {
            let line = self
                .stdout
                .recv_timeout(START_TIMEOUT)
                .expect("midosoc serve prints its banner before exiting or timing out");
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("agent listener:") {
                self.agent_url = first_word(rest);
            } else if let Some(rest) = line.strip_prefix("dashboard:") {
                self.review_url = first_word(rest).trim_end_matches('/').to_owned();
            } else if line.starts_with("mdsr_") {
                self.admin_token = line.to_owned();
            } else if line.starts_with("Ready;") {
                break;
            }
        }
        assert!(self.agent_url.starts_with("http://127.0.0.1:"), "{}", self.agent_url);
        assert!(self.review_url.starts_with("http://127.0.0.1:"), "{}", self.review_url);
    }

    /// Stops the gateway with SIGTERM and starts it again on the same
    /// configuration and data (and so the same ports, unless they were 0:
    /// the new ones are read from the banner).
    pub(crate) fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "{status:?}");
        let (child, receiver) = spawn(&self.config);
        self.child = Some(child);
        self.stdout = receiver;
        self.read_banner();
    }

    /// Runs `midosoc` with this gateway's configuration.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new(support::midosoc_binary())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("midosoc runs")
    }

    /// Creates an agent with `midosoc agent add` and returns its key.
    pub(crate) fn add_agent(&self, name: &str) -> String {
        let output = self.cli(&["agent", "add", name]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        secret_line(&output.stdout, "mdsa_")
    }

    /// Creates an analyst with `midosoc analyst add` and returns their token.
    pub(crate) fn add_analyst(&self, name: &str, role: &str) -> String {
        let output = self.cli(&["analyst", "add", name, "--role", role]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        secret_line(&output.stdout, "mdsr_")
    }

    /// The agent listener's URL for `path`.
    pub(crate) fn agent(&self, path: &str) -> String {
        format!("{}{path}", self.agent_url)
    }

    /// The review listener's URL for `path`.
    pub(crate) fn review(&self, path: &str) -> String {
        format!("{}{path}", self.review_url)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("gateway still running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        child.wait().expect("gateway exits")
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `midosoc serve` with `config`; its standard output arrives line
/// by line on the receiver.
fn spawn(config: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(support::midosoc_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("MIDOSOC_LOG__FILTER", "warn,midosoc=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("midosoc serve starts");

    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (child, receiver)
}

fn first_word(text: &str) -> String {
    text.split_whitespace().next().unwrap_or_default().to_owned()
}

fn secret_line(stdout: &[u8], prefix: &str) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in output"))
        .to_owned()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub(crate) fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Runs the binary with `args` and no gateway around it.
pub(crate) fn midosoc(args: &[&str], dir: &Path) -> Output {
    Command::new(support::midosoc_binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("midosoc runs")
}
