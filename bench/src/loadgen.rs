//! Open-loop load at a fixed rate, with latency measured from the moment
//! each request was due.
//!
//! A closed-loop tool (wrk, ab) sends the next request only after the
//! previous answer, so when the server stalls it stops asking and the
//! stall shows up as one slow request instead of many: queueing is
//! hidden ("coordinated omission"). Here a pacer thread releases requests
//! on a fixed schedule whatever the server does; a request released while
//! every connection is busy waits, and that wait counts in its latency,
//! as it would for a real client. Like wrk2 and `oha --latency-correction`.
//!
//! The pacer sleeps between releases; when it oversleeps it releases the
//! overdue requests at once and times each from its actual release, so
//! the generator's own lateness is not charged to the server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::clock::now_ns;
use crate::http1;

/// What load to send.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Where to send it.
    pub addr: SocketAddr,
    /// The request, byte for byte (keep-alive HTTP/1.1, no body).
    pub request: Vec<u8>,
    /// Requests per second.
    pub rate: f64,
    /// Connections kept open; enough that they are rarely all busy.
    pub connections: usize,
    /// How long to measure.
    pub duration: Duration,
    /// How long to send before measuring.
    pub warmup: Duration,
}

/// What came of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Requests per second asked for.
    pub target_rate: f64,
    /// Requests per second answered during the measured part.
    pub achieved_rate: f64,
    /// Requests measured.
    pub requests: u64,
    /// Requests that failed (connection errors).
    pub errors: u64,
    /// Answers other than 2xx.
    pub non_2xx: u64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 90th percentile, microseconds.
    pub p90_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
    /// Slowest, microseconds.
    pub max_us: f64,
    /// The latency distribution as (percentile, microseconds) points.
    pub curve: Vec<(f64, f64)>,
}

/// One request released by the pacer.
struct Ticket {
    released_ns: u64,
    measured: bool,
}

/// Sends the load described by `spec` and reports on it.
pub async fn run(spec: Spec) -> anyhow::Result<Outcome> {
    anyhow::ensure!(spec.rate > 0.0, "the rate must be above zero");
    let (tickets, receiver) = mpsc::unbounded_channel::<Ticket>();
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let histogram =
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3)?));
    let tally = Arc::new(Mutex::new((0u64, 0u64)));

    let request: Arc<[u8]> = spec.request.clone().into();
    let mut workers = Vec::new();
    for _ in 0..spec.connections.max(1) {
        let receiver = receiver.clone();
        let histogram = histogram.clone();
        let tally = tally.clone();
        let request = request.clone();
        let addr = spec.addr;
        workers.push(tokio::spawn(async move {
            worker(addr, &request, receiver, histogram, tally).await;
        }));
    }

    let pacer_spec = spec.clone();
    let pacer = std::thread::spawn(move || pace(&pacer_spec, &tickets));
    let measured_from = now_ns() + spec.warmup.as_nanos() as u64;
    for worker in workers {
        let _ = worker.await;
    }
    let measured_to = now_ns();
    let _ = pacer.join();

    let histogram = histogram.lock().map(|h| h.clone()).map_err(|_| anyhow::anyhow!("poisoned"))?;
    let (errors, non_2xx) = tally.lock().map(|t| *t).unwrap_or_default();
    let seconds = (measured_to.saturating_sub(measured_from) as f64 / 1e9).max(1e-9);
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1e3;
    Ok(Outcome {
        target_rate: spec.rate,
        achieved_rate: histogram.len() as f64 / seconds,
        requests: histogram.len(),
        errors,
        non_2xx,
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        p999_us: us(0.999),
        max_us: histogram.max() as f64 / 1e3,
        curve: curve(&histogram),
    })
}

/// Releases tickets on schedule for the warm-up and the measured part.
fn pace(spec: &Spec, tickets: &mpsc::UnboundedSender<Ticket>) {
    let interval = 1e9 / spec.rate;
    let start = now_ns();
    let warmup_end = start + spec.warmup.as_nanos() as u64;
    let end = warmup_end + spec.duration.as_nanos() as u64;
    let mut k: u64 = 0;
    loop {
        let due = start + (k as f64 * interval) as u64;
        if due >= end {
            return;
        }
        let now = now_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        let released_ns = now_ns();
        let ticket = Ticket { released_ns, measured: due >= warmup_end };
        if tickets.send(ticket).is_err() {
            return;
        }
        k += 1;
    }
}

async fn worker(
    addr: SocketAddr,
    request: &[u8],
    receiver: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Ticket>>>,
    histogram: Arc<Mutex<Histogram<u64>>>,
    tally: Arc<Mutex<(u64, u64)>>,
) {
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::new();
    loop {
        let ticket = { receiver.lock().await.recv().await };
        let Some(ticket) = ticket else { return };

        let result = async {
            if stream.is_none() {
                let fresh = TcpStream::connect(addr).await?;
                fresh.set_nodelay(true)?;
                stream = Some(fresh);
                buf.clear();
            }
            let Some(open) = stream.as_mut() else {
                return Err(crate::http1::ExchangeError::Closed);
            };
            http1::send(open, request).await?;
            http1::receive(open, &mut buf).await
        }
        .await;

        match result {
            Ok(answer) => {
                if answer.close {
                    stream = None;
                }
                if ticket.measured {
                    let latency = answer.done_ns.saturating_sub(ticket.released_ns).max(1_000);
                    if let Ok(mut h) = histogram.lock() {
                        let _ = h.record(latency);
                    }
                    if !(200..300).contains(&answer.status)
                        && let Ok(mut t) = tally.lock()
                    {
                        t.1 += 1;
                    }
                }
            }
            Err(_) => {
                stream = None;
                if let Ok(mut t) = tally.lock() {
                    t.0 += 1;
                }
            }
        }
    }
}

/// The distribution as (percentile, µs) points, spaced evenly in "nines"
/// from the median to 99.99%.
fn curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    (0..=40)
        .map(|step| {
            let low = std::f64::consts::LOG10_2;
            let nines = low + f64::from(step) * (4.0 - low) / 40.0;
            let q = 1.0 - 10f64.powf(-nines);
            (q * 100.0, histogram.value_at_quantile(q) as f64 / 1e3)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream;

    #[tokio::test]
    async fn load_at_a_fixed_rate_is_answered_and_timed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(upstream::serve(listener, Arc::default()));

        let spec = Spec {
            addr,
            request: http1::request("GET", "/items/1", "up", &[]),
            rate: 500.0,
            connections: 4,
            duration: Duration::from_millis(400),
            warmup: Duration::from_millis(100),
        };
        let outcome = run(spec).await.unwrap();
        assert_eq!(outcome.errors, 0);
        assert_eq!(outcome.non_2xx, 0);
        assert!((150..=250).contains(&outcome.requests), "{}", outcome.requests);
        assert!(outcome.p50_us > 0.0 && outcome.p50_us <= outcome.p99_us);
        assert_eq!(outcome.curve.len(), 41);
    }
}
