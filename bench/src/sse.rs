//! Analyst dashboards: subscribers of the review listener's event stream
//! (`GET /api/events`), each printing every event with the time it
//! arrived.
//!
//! Commands on standard input, one per line:
//!
//! - `add COUNT`: opens COUNT more subscriptions, starting after the last
//!   event any subscriber has seen (so nothing already seen is replayed),
//!   and prints `ready TOTAL` once all of them are open.
//!
//! Each event is printed as `ev SUB SEQ KIND APPROVAL_ID URL T`. A
//! subscriber told to `resync`, or whose stream ends, prints `resync SUB`
//! and subscribes again after the last event it saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::clock::now_ns;
use crate::lines::Printer;

/// Pause before subscribing again after a stream ended.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// The dashboards of one run.
#[derive(Debug)]
pub struct Dashboards {
    review: SocketAddr,
    token: String,
    printer: Printer,
    last_seq: AtomicU64,
    subscribers: AtomicUsize,
}

/// One parsed event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The event's sequence number.
    pub seq: u64,
    /// `pending`, `decided`, `executed`, `withdrawn`, `expired`.
    pub kind: String,
    /// The approval it is about.
    pub approval_id: String,
    /// The held request's URL or path.
    pub url: String,
}

#[derive(Deserialize)]
struct EventData {
    seq: u64,
    kind: String,
    approval: ApprovalData,
}

#[derive(Deserialize)]
struct ApprovalData {
    id: String,
    url: String,
}

impl Dashboards {
    /// Dashboards of the review listener at `review`, signed in with the
    /// analyst `token`.
    pub fn new(review: SocketAddr, token: String, printer: Printer) -> Arc<Self> {
        Arc::new(Self {
            review,
            token,
            printer,
            last_seq: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
        })
    }

    /// Runs commands until `commands` ends.
    pub async fn run(
        self: &Arc<Self>,
        mut commands: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    ) {
        while let Some(words) = commands.recv().await {
            match words.first().map(String::as_str) {
                Some("add") => {
                    let count = words.get(1).and_then(|w| w.parse().ok()).unwrap_or(1);
                    match self.add(count).await {
                        Ok(total) => self.printer.line(format!("ready {total}")),
                        Err(error) => self.printer.line(format!("error {error:#}")),
                    }
                }
                other => self.printer.line(format!("error unknown command `{other:?}`")),
            }
        }
    }

    /// Opens `count` subscriptions; returns how many are open in all.
    pub async fn add(self: &Arc<Self>, count: usize) -> anyhow::Result<usize> {
        let after = self.last_seq.load(Ordering::SeqCst);
        let mut opened = Vec::new();
        for _ in 0..count {
            let index = self.subscribers.fetch_add(1, Ordering::SeqCst);
            let body = self.subscribe(after).await?;
            opened.push((index, body));
        }
        for (index, body) in opened {
            let this = self.clone();
            tokio::spawn(async move { this.follow(index, body, after).await });
        }
        Ok(self.subscribers.load(Ordering::SeqCst))
    }

    async fn subscribe(&self, after: u64) -> anyhow::Result<hyper::body::Incoming> {
        let stream = TcpStream::connect(self.review).await?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = http::Request::get("/api/events")
            .header(http::header::HOST, self.review.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::ACCEPT, "text/event-stream");
        if after > 0 {
            request = request.header("last-event-id", after.to_string());
        }
        let response = sender.send_request(request.body(Empty::<Bytes>::new())?).await?;
        anyhow::ensure!(
            response.status().is_success(),
            "event stream refused with {}",
            response.status()
        );
        Ok(response.into_body())
    }

    /// Reads one subscription's events, subscribing again when it ends.
    async fn follow(self: Arc<Self>, index: usize, mut body: hyper::body::Incoming, after: u64) {
        let mut parser = Parser::default();
        let mut last = after;
        loop {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                let Some(data) = frame.data_ref() else { continue };
                let arrived = now_ns();
                for seen in parser.push(data) {
                    last = last.max(seen.seq);
                    self.last_seq.fetch_max(seen.seq, Ordering::SeqCst);
                    self.printer.line(format!(
                        "ev {index} {} {} {} {} {arrived}",
                        seen.seq, seen.kind, seen.approval_id, seen.url
                    ));
                }
                if parser.resync {
                    break;
                }
            }
            self.printer.line(format!("resync {index}"));
            parser = Parser::default();
            tokio::time::sleep(RECONNECT_PAUSE).await;
            match self.subscribe(last).await {
                Ok(next) => body = next,
                Err(error) => {
                    self.printer.line(format!("error subscriber {index}: {error:#}"));
                    return;
                }
            }
        }
    }
}

/// An incremental `text/event-stream` parser.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
    event: Option<String>,
    data: String,
    /// Whether the server asked the client to resync.
    pub resync: bool,
}

impl Parser {
    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Seen> {
        self.pending.extend_from_slice(bytes);
        let mut seen = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if let Some(event) = self.dispatch() {
                    seen.push(event);
                }
            } else if let Some(value) = line.strip_prefix("event:") {
                self.event = Some(value.trim().to_owned());
            } else if let Some(value) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        seen
    }

    fn dispatch(&mut self) -> Option<Seen> {
        let event = self.event.take();
        let data = std::mem::take(&mut self.data);
        if event.as_deref() == Some("resync") {
            self.resync = true;
            return None;
        }
        let parsed: EventData = serde_json::from_str(&data).ok()?;
        Some(Seen {
            seq: parsed.seq,
            kind: parsed.kind,
            approval_id: parsed.approval.id,
            url: parsed.approval.url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_parsed_once_complete() {
        let mut parser = Parser::default();
        let first = b": keep-alive\n\nid: 7\nevent: pending\ndata: {\"seq\":7,\"kind\":\"pen";
        assert!(parser.push(first).is_empty());
        let rest = b"ding\",\"approval\":{\"id\":\"a1\",\"url\":\"/up/items/x\",\"other\":1}}\n\n";
        let seen = parser.push(rest);
        assert_eq!(
            seen,
            [Seen {
                seq: 7,
                kind: "pending".into(),
                approval_id: "a1".into(),
                url: "/up/items/x".into()
            }]
        );
        assert!(!parser.resync);
    }

    #[test]
    fn a_resync_event_is_noticed() {
        let mut parser = Parser::default();
        assert!(parser.push(b"event: resync\nid: \ndata: {\"missed\":3}\n\n").is_empty());
        assert!(parser.resync);
    }
}
