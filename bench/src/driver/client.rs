//! The driver's own HTTP calls: approvals on the review listener, the
//! pending gauge from `/metrics`, the upstream's counts. Each call uses a
//! fresh loopback connection; a burst of approvals shares a few
//! keep-alive ones.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpStream;

use crate::clock::now_ns;
use crate::http1;
use crate::upstream::{Counts, STATS_PATH};

/// Name of the gauge of approvals waiting for a person.
const PENDING_GAUGE: &str = "midosoc_pending_approvals";

/// A blocking client over a small runtime of its own.
#[derive(Debug)]
pub struct Client {
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// A client with its runtime.
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Self { runtime })
    }

    /// Runs `future` to completion on the client's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// `GET path`, returning the status and body.
    pub fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let bytes = http1::request("GET", path, &addr.to_string(), headers);
        self.block_on(exchange(addr, bytes))
    }

    /// Approves `id` as the analyst holding `token`; returns the time the
    /// call was about to be written and the status.
    pub fn approve(&self, review: SocketAddr, token: &str, id: &str) -> anyhow::Result<(u64, u16)> {
        self.block_on(async {
            let mut stream = TcpStream::connect(review).await?;
            stream.set_nodelay(true)?;
            let bytes = approve_request(review, token, id);
            let started = now_ns();
            http1::send(&mut stream, &bytes).await?;
            let mut buf = Vec::new();
            let answer = http1::receive(&mut stream, &mut buf).await?;
            Ok((started, answer.status))
        })
    }

    /// Approves every id in `ids` over `connections` keep-alive
    /// connections at once; returns when the first call was written and
    /// every status.
    pub fn approve_many(
        &self,
        review: SocketAddr,
        token: &str,
        ids: &[String],
        connections: usize,
    ) -> anyhow::Result<(u64, Vec<u16>)> {
        self.block_on(async {
            let queue = Arc::new(std::sync::Mutex::new(ids.to_vec()));
            let mut streams = Vec::new();
            for _ in 0..connections.max(1) {
                let stream = TcpStream::connect(review).await?;
                stream.set_nodelay(true)?;
                streams.push(stream);
            }
            let started = now_ns();
            let mut tasks = Vec::new();
            for mut stream in streams {
                let queue = queue.clone();
                let token = token.to_owned();
                tasks.push(tokio::spawn(async move {
                    let mut statuses = Vec::new();
                    let mut buf = Vec::new();
                    loop {
                        let next = queue.lock().ok().and_then(|mut q| q.pop());
                        let Some(id) = next else { break };
                        let bytes = approve_request(review, &token, &id);
                        let status = async {
                            http1::send(&mut stream, &bytes).await?;
                            http1::receive(&mut stream, &mut buf).await
                        }
                        .await
                        .map_or(0, |answer| answer.status);
                        statuses.push(status);
                        if status == 0 {
                            break;
                        }
                    }
                    statuses
                }));
            }
            let mut statuses = Vec::new();
            for task in tasks {
                statuses.extend(task.await.unwrap_or_default());
            }
            Ok((started, statuses))
        })
    }

    /// The gateway's gauge of pending approvals.
    pub fn pending(&self, review: SocketAddr) -> anyhow::Result<f64> {
        let (status, body) = self.get(review, "/metrics", &[])?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        let text = String::from_utf8_lossy(&body);
        let line = text
            .lines()
            .find(|l| l.starts_with(PENDING_GAUGE))
            .with_context(|| format!("no `{PENDING_GAUGE}` in /metrics"))?;
        Ok(line.split_whitespace().last().unwrap_or("0").parse()?)
    }

    /// What reached the upstream.
    pub fn upstream_counts(&self, upstream: SocketAddr) -> anyhow::Result<Counts> {
        let (status, body) = self.get(upstream, STATS_PATH, &[])?;
        anyhow::ensure!(status == 200, "upstream stats answered {status}");
        Ok(serde_json::from_slice(&body)?)
    }
}

fn approve_request(review: SocketAddr, token: &str, id: &str) -> Vec<u8> {
    let auth = format!("Bearer {token}");
    http1::request_with_body(
        "POST",
        &format!("/api/approvals/{id}/approve"),
        &review.to_string(),
        &[("authorization", &auth)],
        br#"{"reason":"benchmark"}"#,
    )
}

async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    http1::send(&mut stream, &bytes).await?;
    let mut buf = Vec::new();
    let (answer, body) = http1::receive_with_body(&mut stream, &mut buf).await?;
    Ok((answer.status, body))
}
