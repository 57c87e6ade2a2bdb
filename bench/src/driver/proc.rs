//! Child programs: started pinned to a core, their output read line by
//! line on a thread, their CPU time and memory read from `/proc`, and
//! stopped when dropped.

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A line printed by a child, with the child's name.
pub type Line = (String, String);

/// A running child program, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<mpsc::Receiver<Line>>,
}

/// Where a child runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Core {
    /// The core of the proxy under test.
    Proxy,
    /// The core of the load generator and the other helpers.
    Load,
    /// Wherever the scheduler likes.
    Any,
}

/// How the run places programs on cores.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Whether `taskset` is usable and there are at least two cores.
    pub pinned: bool,
}

impl Placement {
    /// Pins when `taskset` exists and the machine has two or more cores.
    pub fn detect() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        Self { pinned: cores >= 2 && taskset }
    }

    /// A command running `program` on `core`.
    pub fn command(&self, program: &Path, core: Core) -> Command {
        let cpu = match core {
            Core::Proxy => Some("0"),
            Core::Load => Some("1"),
            Core::Any => None,
        };
        match (self.pinned, cpu) {
            (true, Some(cpu)) => {
                let mut command = Command::new("taskset");
                command.arg("-c").arg(cpu).arg(program);
                command
            }
            _ => Command::new(program),
        }
    }
}

impl Proc {
    /// Starts `command` with piped standard input and output. Its lines go
    /// to `sink` when given (shared with other children), else to its own
    /// queue read with [`Proc::line`].
    pub fn spawn(
        name: &str,
        mut command: Command,
        sink: Option<mpsc::Sender<Line>>,
        stderr: Stdio,
    ) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().context("no standard output")?;
        let (sender, own) = match sink {
            Some(sink) => (sink, None),
            None => {
                let (sender, receiver) = mpsc::channel();
                (sender, Some(receiver))
            }
        };
        let label = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send((label.clone(), line)).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(Self { name: name.to_owned(), child, stdin, lines: own })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("standard input closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{} stopped listening", self.name))
    }

    /// Closes standard input, which tells the holder and the dashboards
    /// to finish.
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// The next line of this child's own queue, waiting up to `limit`.
    pub fn line(&self, limit: Duration) -> anyhow::Result<String> {
        let lines = self.lines.as_ref().context("lines go to a shared sink")?;
        match lines.recv_timeout(limit) {
            Ok((_, line)) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{} printed nothing for {limit:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("{} exited", self.name),
        }
    }

    /// Skips lines until one starts with `prefix`; returns it.
    pub fn expect(&self, prefix: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left).with_context(|| format!("waiting for `{prefix}`"))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }

    /// Waits for the child to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("{} still running after {limit:?}", self.name)
    }

    /// Asks the child to stop (SIGTERM), then kills it after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .stderr(Stdio::null())
            .status();
        if self.wait(grace).is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) a process has used, in seconds, threads
/// included.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may itself contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of the whole line.
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    let kib: u64 = line.split_whitespace().nth(1).context("no VmRSS value")?.parse()?;
    Ok(kib * 1024)
}

/// Kernel memory held by TCP sockets, machine-wide, in bytes
/// (`/proc/net/sockstat`, `TCP: ... mem PAGES`).
pub fn tcp_socket_bytes() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat")?;
    let line = text.lines().find(|l| l.starts_with("TCP:")).context("no TCP line")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let pages: u64 = words
        .iter()
        .position(|w| *w == "mem")
        .and_then(|i| words.get(i + 1))
        .context("no mem field")?
        .parse()?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// The open-file limit of this process (children inherit it).
pub fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Waits until something listens on `addr`.
pub fn wait_listening(addr: std::net::SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {addr} after {limit:?}")
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
