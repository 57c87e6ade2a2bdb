//! End-to-end: an analyst decides held requests on the review dashboard in
//! real headless Chromium, while this test plays the agent.
//!
//! The test runs the real `midosoc serve` with a small upstream, creates an
//! analyst and an agent with the CLI, and starts `tests/browser/dashboard.mjs`
//! (playwright-core driving Debian's Chromium). The script signs in and
//! says `READY`; the agent then sends three destructive requests (a refund,
//! a deletion, a key revocation), which the gateway holds. The script sees
//! them appear live, denies the refund with a reason from the keyboard,
//! approves the deletion with the button and the revocation with the
//! keyboard, and says `DECIDED`. The agent's approved requests
//! reach the upstream; the denied one gets `403` carrying the reason and
//! never reaches it. Finally the gateway stops and the dashboard must show
//! that its live connection dropped.
//!
//! A screenshot of the dashboard with a held request open is saved under
//! the target directory; with `MIDOSOC_UPDATE_SCREENSHOT=1` it replaces the
//! one in `docs/dashboard.png` that the README shows.
//!
//! Needs `chromium`, `node` and `npm ci --prefix tests/browser`; skips
//! without them unless `MIDOSOC_REQUIRE_PEERS=1`.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/gateway.rs"]
mod gateway;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use gateway::Gateway;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

const SUITE: &str = "dashboard_browser";

/// The whole conversation between agent, gateway and browser.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// The reason the analyst types when denying.
const DENIAL_REASON: &str = "Refund is larger than the charge; ask billing first.";

/// What the upstream API received: method and path of each request.
type Received = Arc<Mutex<Vec<String>>>;

/// An upstream that records each request and answers `200` JSON.
async fn recording_upstream() -> (SocketAddr, Received) {
    let received = Received::default();
    let log = received.clone();
    let handler = move |request: Request| {
        let log = log.clone();
        async move {
            let line = format!("{} {}", request.method(), request.uri().path());
            log.lock().unwrap().push(line.clone());
            axum::Json(json!({ "done": line }))
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    (addr, received)
}

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// The peers this suite needs, or `None` after reporting the skip.
fn peers() -> Option<(PathBuf, PathBuf)> {
    let Some(chromium) = support::find_program("chromium", "MIDOSOC_CHROMIUM") else {
        support::skip(SUITE, "chromium", "not on PATH (apt-get install chromium)");
        return None;
    };
    let Some(node) = support::find_program("node", "MIDOSOC_NODE") else {
        support::skip(SUITE, "node", "not on PATH");
        return None;
    };
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        support::skip(SUITE, "playwright-core", "run `npm ci --prefix tests/browser`");
        return None;
    }
    Some((chromium, node))
}

/// Reads the script's lines until `expected`, echoing the others.
async fn expect_line(lines: &mut Lines<BufReader<ChildStdout>>, expected: &str) {
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.trim() == expected {
            return;
        }
        eprintln!("dashboard.mjs: {line}");
    }
    panic!("dashboard.mjs ended before saying {expected} (its error is above)");
}

/// The agent's requests: method, path and JSON body. Each body carries a
/// secret the dashboard must redact and markup it must show as text.
fn agent_requests() -> [(&'static str, &'static str, Value); 3] {
    let key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
    let markup = "<img src=x onerror=alert(1)>";
    [
        (
            "POST",
            "/billing/v1/refunds",
            json!({ "charge": "ch_3Nf9", "amount": 250000, "currency": "usd",
                    "note": markup, "api_key": key }),
        ),
        ("DELETE", "/billing/v1/customers/cus_1", json!({ "reason": "duplicate account" })),
        ("POST", "/billing/v1/api_keys/key_4/revoke", json!({ "api_key": key })),
    ]
}

/// Sends one agent request and returns its status and JSON body.
async fn agent_request(method: &str, url: String, key: String, body: Value) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TEST_TIMEOUT)
        .build()
        .unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client
        .request(method, url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("the gateway answers the agent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn analyst_decides_held_requests_live_in_a_real_browser() {
    let Some((chromium, node)) = peers() else {
        return;
    };
    tokio::time::timeout(TEST_TIMEOUT, run(chromium, node))
        .await
        .expect("the browser test finished in time");
}

async fn run(chromium: PathBuf, node: PathBuf) {
    let (upstream, received) = recording_upstream().await;
    let mut gw = Gateway::start(&format!(
        "[approval]\nwait_timeout = \"2m\"\n[shutdown]\ngrace = \"1s\"\n\
         [[upstream]]\nname = \"billing\"\nprefix = \"/billing/\"\nurl = \"http://{upstream}/\"\n"
    ));
    let token = gw.add_analyst("alice", "approver");
    let key = gw.add_agent("billing-bot");
    let screenshot = if std::env::var("MIDOSOC_UPDATE_SCREENSHOT").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
    };

    let mut script = tokio::process::Command::new(node)
        .arg("dashboard.mjs")
        .current_dir(browser_dir())
        .env("MIDOSOC_REVIEW_URL", gw.review("/"))
        .env("MIDOSOC_ANALYST_TOKEN", &token)
        .env("MIDOSOC_CHROMIUM", &chromium)
        .env("MIDOSOC_SCREENSHOT", &screenshot)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();

    // Signed in and live: only now does the agent act, so the requests can
    // only reach the page through the live stream.
    expect_line(&mut lines, "READY").await;
    let agents: Vec<_> = agent_requests()
        .into_iter()
        .map(|(method, path, body)| {
            tokio::spawn(agent_request(method, gw.agent(path), key.clone(), body))
        })
        .collect();

    expect_line(&mut lines, "DECIDED").await;
    let mut answers = Vec::new();
    for agent in agents {
        answers.push(agent.await.unwrap());
    }

    // Denied: the agent gets the reason, and the upstream nothing.
    let (status, body) = &answers[0];
    assert_eq!(*status, 403, "{body}");
    assert_eq!(body["type"], "https://midosoc.dev/problems/approval-denied");
    assert_eq!(body["reason"], DENIAL_REASON);

    // Approved: the requests went through to the upstream.
    let (status, body) = &answers[1];
    assert_eq!(*status, 200, "{body}");
    assert_eq!(body["done"], "DELETE /v1/customers/cus_1");
    assert_eq!(answers[2].0, 200, "{}", answers[2].1);

    let mut seen = received.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["DELETE /v1/customers/cus_1", "POST /v1/api_keys/key_4/revoke"]);

    // The gateway goes away; the page must say so.
    expect_line(&mut lines, "STOP-SERVER").await;
    gw.terminate();
    expect_line(&mut lines, "DONE").await;
    let status = script.wait().await.unwrap();
    assert!(status.success(), "dashboard.mjs failed: {status}");

    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
}
