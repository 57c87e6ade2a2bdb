//! Agents whose requests are held: each sends a risky request (`DELETE`)
//! through the gateway and waits for the answer, timing its first byte.
//!
//! The holder takes commands on standard input, one per line:
//!
//! - `hold COUNT TAG`: sends COUNT requests at once (paths `TAG-0` ...)
//!   and prints `all-sent TAG COUNT T` when the last was written;
//! - `probe TAG`: sends one request on a new connection, prints
//!   `sent TAG T` and later `first-byte TAG T STATUS`;
//! - `wait COUNT MILLIS`: waits until COUNT answers (or failures) in all
//!   have arrived, or MILLIS passed, then reports;
//! - `report`: prints `report {json}` (see [`Report`]).
//!
//! At end of input it reports once more and exits. Times are
//! [`now_ns`](crate::clock::now_ns).
//!
//! Over HTTP/1.1 each held request has a connection of its own, as an
//! agent's would; over HTTP/2 (`--http2`, prior knowledge) many share one,
//! which is how more requests can be held than a process may open files.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::clock::now_ns;
use crate::http1;
use crate::lines::Printer;

/// Connections opened at once while holding in bulk.
const CONNECT_PARALLELISM: usize = 256;

/// How the holder reaches the gateway.
#[derive(Clone, Debug)]
pub struct Target {
    /// The agent listener.
    pub addr: SocketAddr,
    /// Path prefix of held requests, such as `/up/items/`.
    pub prefix: String,
    /// Agent keys, used in turn so no agent passes its pending cap.
    pub keys: Vec<String>,
    /// Multiplex requests over HTTP/2 connections instead of one HTTP/1.1
    /// connection each.
    pub http2: bool,
    /// Requests per HTTP/2 connection.
    pub streams_per_connection: usize,
}

/// Counts so far, printed by `report`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Requests written.
    pub sent: u64,
    /// Answers received, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed before an answer (connect, write, read).
    pub errors: u64,
    /// The latest first-byte time of any answer, 0 before any.
    pub last_first_byte_ns: u64,
}

impl Report {
    /// Answers and failures together.
    pub fn finished(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors
    }
}

/// One request's outcome, for the results file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The path requested.
    pub path: String,
    /// The status, or `None` when the request failed.
    pub status: Option<u16>,
}

/// The holder's shared state.
#[derive(Debug)]
pub struct Holder {
    target: Target,
    printer: Printer,
    sent: AtomicU64,
    errors: AtomicU64,
    last_first_byte: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    outcomes: Mutex<Vec<Outcome>>,
    changed: Notify,
    connects: Semaphore,
    next_key: AtomicU64,
    connections: AtomicU64,
}

impl Holder {
    /// A holder for `target` printing to `printer`.
    pub fn new(target: Target, printer: Printer) -> Arc<Self> {
        Arc::new(Self {
            target,
            printer,
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_first_byte: AtomicU64::new(0),
            statuses: Mutex::new(BTreeMap::new()),
            outcomes: Mutex::new(Vec::new()),
            changed: Notify::new(),
            connects: Semaphore::new(CONNECT_PARALLELISM),
            next_key: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        })
    }

    /// Runs commands until `commands` ends.
    pub async fn run(
        self: &Arc<Self>,
        mut commands: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    ) {
        while let Some(words) = commands.recv().await {
            let word = |i: usize| words.get(i).map(String::as_str).unwrap_or_default();
            match word(0) {
                "hold" => {
                    let count = word(1).parse().unwrap_or(0);
                    let this = self.clone();
                    let tag = word(2).to_owned();
                    tokio::spawn(async move { this.hold(count, &tag).await });
                }
                "probe" => {
                    let this = self.clone();
                    let tag = word(1).to_owned();
                    tokio::spawn(async move { this.probe(&tag).await });
                }
                "wait" => {
                    let count = word(1).parse().unwrap_or(0);
                    let millis = word(2).parse().unwrap_or(1000);
                    self.wait(count, Duration::from_millis(millis)).await;
                    self.print_report();
                }
                "report" => self.print_report(),
                other => self.printer.line(format!("error unknown command `{other}`")),
            }
        }
        self.print_report();
    }

    /// The counts so far.
    pub fn report(&self) -> Report {
        Report {
            sent: self.sent.load(Ordering::SeqCst),
            statuses: self.statuses.lock().map(|s| s.clone()).unwrap_or_default(),
            errors: self.errors.load(Ordering::SeqCst),
            last_first_byte_ns: self.last_first_byte.load(Ordering::SeqCst),
        }
    }

    /// Every request's outcome so far.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().map(|o| o.clone()).unwrap_or_default()
    }

    fn print_report(&self) {
        let json = serde_json::to_string(&self.report()).unwrap_or_default();
        self.printer.line(format!("report {json}"));
    }

    /// Waits until `count` requests have finished, or `limit` passed.
    pub async fn wait(&self, count: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if self.report().finished() >= count {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Sends `count` requests at once and waits for their answers.
    pub async fn hold(self: &Arc<Self>, count: usize, tag: &str) {
        let paths: Vec<String> =
            (0..count).map(|i| format!("{}{tag}-{i}", self.target.prefix)).collect();
        let written = if self.target.http2 {
            self.hold_http2(paths).await
        } else {
            self.hold_http1(paths).await
        };
        self.printer.line(format!("all-sent {tag} {written} {}", now_ns()));
    }

    async fn hold_http1(self: &Arc<Self>, paths: Vec<String>) -> usize {
        let (done, mut written) = tokio::sync::mpsc::unbounded_channel::<()>();
        let total = paths.len();
        for path in paths {
            let this = self.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let permit = this.connects.acquire().await;
                let connection = this.connection_id();
                let exchange = async {
                    let mut stream = this.connect(connection).await?;
                    let bytes = this.request_bytes(&path);
                    http1::send(&mut stream, &bytes).await?;
                    this.sent.fetch_add(1, Ordering::SeqCst);
                    let _ = done.send(());
                    drop(permit);
                    let mut buf = Vec::new();
                    http1::receive_head(&mut stream, &mut buf).await
                };
                let result = exchange.await;
                this.finish(path, result.map(|a| (a.status, a.first_byte_ns)).ok());
            });
        }
        drop(done);
        let mut count = 0;
        while count < total && written.recv().await.is_some() {
            count += 1;
        }
        count
    }

    async fn hold_http2(self: &Arc<Self>, paths: Vec<String>) -> usize {
        let per = self.target.streams_per_connection.max(1);
        let (done, mut written) = tokio::sync::mpsc::unbounded_channel::<()>();
        let total = paths.len();
        for chunk in paths.chunks(per) {
            let this = self.clone();
            let chunk = chunk.to_vec();
            let done = done.clone();
            tokio::spawn(async move {
                let connection = this.connection_id();
                let sender = match this.connect_http2(connection).await {
                    Ok(sender) => sender,
                    Err(_) => {
                        for path in chunk {
                            this.finish(path, None);
                        }
                        return;
                    }
                };
                for path in chunk {
                    let this = this.clone();
                    let mut sender = sender.clone();
                    let done = done.clone();
                    tokio::spawn(async move {
                        let request = this.http2_request(&path);
                        if sender.ready().await.is_err() {
                            this.finish(path, None);
                            return;
                        }
                        let response = sender.send_request(request);
                        this.sent.fetch_add(1, Ordering::SeqCst);
                        let _ = done.send(());
                        let outcome = response.await.ok().map(|r| (r.status().as_u16(), now_ns()));
                        this.finish(path, outcome);
                    });
                }
            });
        }
        drop(done);
        let mut count = 0;
        while count < total && written.recv().await.is_some() {
            count += 1;
        }
        count
    }

    /// Sends one request on a new connection, printing when it was
    /// written and when its answer began.
    pub async fn probe(self: &Arc<Self>, tag: &str) {
        let path = format!("{}{tag}", self.target.prefix);
        let exchange = async {
            let mut stream = TcpStream::connect(self.target.addr).await?;
            stream.set_nodelay(true)?;
            let bytes = self.request_bytes(&path);
            let sent = http1::send(&mut stream, &bytes).await?;
            self.sent.fetch_add(1, Ordering::SeqCst);
            self.printer.line(format!("sent {tag} {sent}"));
            let mut buf = Vec::new();
            http1::receive_head(&mut stream, &mut buf).await
        };
        match exchange.await {
            Ok(answer) => {
                self.printer
                    .line(format!("first-byte {tag} {} {}", answer.first_byte_ns, answer.status));
                self.finish(path, Some((answer.status, answer.first_byte_ns)));
            }
            Err(error) => {
                self.printer.line(format!("failed {tag} {error}"));
                self.finish(path, None);
            }
        }
    }

    fn finish(&self, path: String, outcome: Option<(u16, u64)>) {
        match outcome {
            Some((status, first_byte)) => {
                if let Ok(mut statuses) = self.statuses.lock() {
                    *statuses.entry(status).or_default() += 1;
                }
                self.last_first_byte.fetch_max(first_byte, Ordering::SeqCst);
            }
            None => {
                self.errors.fetch_add(1, Ordering::SeqCst);
            }
        }
        if let Ok(mut outcomes) = self.outcomes.lock() {
            outcomes.push(Outcome { path, status: outcome.map(|(status, _)| status) });
        }
        self.changed.notify_waiters();
    }

    fn connection_id(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::SeqCst)
    }

    fn key(&self) -> &str {
        let keys = &self.target.keys;
        let i = self.next_key.fetch_add(1, Ordering::SeqCst) as usize;
        keys.get(i % keys.len().max(1)).map(String::as_str).unwrap_or_default()
    }

    fn request_bytes(&self, path: &str) -> Vec<u8> {
        let auth = format!("Bearer {}", self.key());
        http1::request("DELETE", path, "gateway", &[("authorization", &auth)])
    }

    fn http2_request(&self, path: &str) -> http::Request<Empty<Bytes>> {
        let uri = format!("http://{}{path}", self.target.addr);
        let auth = format!("Bearer {}", self.key());
        http::Request::delete(uri)
            .header(http::header::AUTHORIZATION, auth)
            .body(Empty::new())
            .unwrap_or_default()
    }

    /// A connection from a loopback source address that changes every few
    /// thousand connections, so that neither ephemeral ports nor the
    /// TIME_WAIT sockets of earlier runs run out.
    async fn connect(&self, connection: u64) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        let block = (connection / 4096) as u8;
        let salt = (std::process::id() % 250) as u8 + 1;
        let source = Ipv4Addr::new(127, salt, block, 1);
        if self.target.addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        }
        socket.set_nodelay(true)?;
        socket.connect(self.target.addr).await
    }

    async fn connect_http2(
        &self,
        connection: u64,
    ) -> anyhow::Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
        let stream = self.connect(connection).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}
