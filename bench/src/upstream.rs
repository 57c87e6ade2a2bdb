//! The API behind every proxy under test: answers every request at once
//! with a small JSON body, and counts the destructive requests that reach
//! it, path by path, so a run can check that each held request was
//! released exactly once.
//!
//! `GET /_bench/stats` returns the counts as JSON.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The body of every ordinary answer.
pub const BODY: &[u8] = br#"{"id":"item-42","name":"bench","ok":true}"#;

/// Path of the counts.
pub const STATS_PATH: &str = "/_bench/stats";

/// What reached the upstream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests of every kind, the stats requests excepted.
    pub requests: u64,
    /// Requests with a method other than `GET` or `HEAD`, by path.
    pub changes: HashMap<String, u32>,
}

/// Counts shared by the connections of one upstream.
#[derive(Debug, Default)]
pub struct Recorder {
    counts: Mutex<Counts>,
}

impl Recorder {
    fn record(&self, method: &Method, path: &str) {
        let Ok(mut counts) = self.counts.lock() else { return };
        counts.requests += 1;
        if method != Method::GET && method != Method::HEAD {
            *counts.changes.entry(path.to_owned()).or_default() += 1;
        }
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> Counts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, recorder: Arc<Recorder>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, recorder.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    recorder: Arc<Recorder>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let body = if path == STATS_PATH {
        Bytes::from(serde_json::to_vec(&recorder.snapshot()).unwrap_or_default())
    } else {
        recorder.record(request.method(), path);
        Bytes::from_static(BODY)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1;

    #[tokio::test]
    async fn the_upstream_answers_and_counts_changes_by_path() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder::default());
        tokio::spawn(serve(listener, recorder.clone()));

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        for (method, path) in [("GET", "/items/1"), ("DELETE", "/items/2"), ("DELETE", "/items/2")]
        {
            http1::send(&mut stream, &http1::request(method, path, "up", &[])).await.unwrap();
            let answer = http1::receive(&mut stream, &mut buf).await.unwrap();
            assert_eq!(answer.status, 200);
        }
        let counts = recorder.snapshot();
        assert_eq!(counts.requests, 3);
        assert_eq!(counts.changes.get("/items/2"), Some(&2));
        assert_eq!(counts.changes.len(), 1);
    }
}
