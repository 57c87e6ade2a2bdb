//! Acceptance: the real `midosoc` binary in front of a real etcd.
//!
//! etcd's JSON gateway is all `POST`, so reads and deletes look alike by
//! method: `POST /kv/v3/kv/range` must pass as a read, and
//! `POST /kv/v3/kv/deleterange` must wait for a person. Denied, etcd never
//! sees the call (its revision does not move); approved, the key is gone.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/gateway.rs"]
mod gateway;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gateway::Gateway;
use serde_json::{Value, json};

const SUITE: &str = "proxy_etcd";

/// A throwaway etcd on free loopback ports, killed when dropped.
struct Etcd {
    child: Child,
    client_url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Option<Self> {
        let Some(binary) = support::find_program("etcd", "MIDOSOC_ETCD") else {
            support::skip(SUITE, "etcd", "no `etcd` on PATH (Debian package `etcd-server`)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let client = format!("http://127.0.0.1:{}", gateway::closed_port());
        let peer = format!("http://127.0.0.1:{}", gateway::closed_port());
        let mut child = Command::new(binary)
            .args(["--name", "midosoc-test", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("midosoc-test={peer}")])
            .args(["--log-level", "info", "--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();

        // etcd says when it serves clients; wait for that line.
        let (sender, receiver) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("serving client traffic")
                    || line.contains("ready to serve client requests")
                {
                    let _ = sender.send(());
                }
            }
        });
        receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("etcd starts serving clients within a minute");
        Some(Self { child, client_url: client, _dir: dir })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(text: &str) -> String {
    STANDARD.encode(text)
}

/// etcd's answer to `range` on `key`, asked directly (not through the
/// gateway): the store's revision and whether the key exists.
async fn direct_range(http: &reqwest::Client, etcd: &Etcd, key: &str) -> (u64, bool) {
    let answer: Value = http
        .post(format!("{}/v3/kv/range", etcd.client_url))
        .json(&json!({ "key": b64(key) }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revision = answer["header"]["revision"].as_str().unwrap().parse().unwrap();
    (revision, answer["count"].as_str().is_some_and(|c| c != "0"))
}

/// Sends `deleterange` for `key` through the gateway in the background.
fn delete_through_gateway(
    http: &reqwest::Client,
    gw: &Gateway,
    agent_key: &str,
    key: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let request = http
        .post(gw.agent("/kv/v3/kv/deleterange"))
        .bearer_auth(agent_key)
        .json(&json!({ "key": b64(key) }));
    tokio::spawn(async move { request.send().await.unwrap() })
}

/// Waits for the one pending approval, announced on the review event
/// stream, and returns it.
async fn next_pending(http: &reqwest::Client, gw: &Gateway) -> Value {
    // The stream stays open: no overall timeout on this client.
    let mut events = reqwest::Client::new()
        .get(gw.review("/api/events"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    loop {
        let list: Value = http
            .get(gw.review("/api/approvals?status=pending"))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = list["approvals"].as_array().cloned().unwrap_or_default();
        if let Some(first) = items.into_iter().next() {
            return first;
        }
        tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("the held request is announced")
            .unwrap()
            .expect("event stream stays open");
    }
}

async fn decide(http: &reqwest::Client, gw: &Gateway, id: &str, verb: &str, reason: &str) {
    let response = http
        .post(gw.review(&format!("/api/approvals/{id}/{verb}")))
        .bearer_auth(&gw.admin_token)
        .json(&json!({ "reason": reason }))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(status.is_success(), "{verb}: {status} {}", response.text().await.unwrap());
}

#[tokio::test]
async fn etcd_reads_pass_and_deletes_wait_for_a_person() {
    let Some(etcd) = Etcd::start() else { return };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    for key in ["payments/config", "payments/ledger"] {
        let put = http
            .post(format!("{}/v3/kv/put", etcd.client_url))
            .json(&json!({ "key": b64(key), "value": b64("v1") }))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
    }

    let upstream = format!(
        "[[upstream]]\nname = \"etcd\"\nprefix = \"/kv/\"\nurl = \"{}/\"\n",
        etcd.client_url
    );
    let gw = Gateway::start(&upstream);
    let agent = gw.add_agent("ops-bot");

    // A read passes at once, with etcd's own answer.
    let read = http
        .post(gw.agent("/kv/v3/kv/range"))
        .bearer_auth(&agent)
        .json(&json!({ "key": b64("payments/config") }))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["kvs"][0]["value"], b64("v1"));

    // A delete is held; denied, etcd never sees it.
    let (revision_before, exists) = direct_range(&http, &etcd, "payments/config").await;
    assert!(exists);
    let held = delete_through_gateway(&http, &gw, &agent, "payments/config");
    let approval = next_pending(&http, &gw).await;
    let id = approval["id"].as_str().unwrap().to_owned();
    assert!(approval.to_string().contains("deleterange"), "{approval}");
    decide(&http, &gw, &id, "deny", "config is still in use").await;

    let denied = held.await.unwrap();
    assert_eq!(denied.status(), 403);
    let problem: Value = denied.json().await.unwrap();
    assert_eq!(problem["type"], "https://midosoc.dev/problems/approval-denied");
    assert_eq!(problem["approval_id"], id);
    let (revision_after, still_there) = direct_range(&http, &etcd, "payments/config").await;
    assert!(still_there);
    assert_eq!(revision_after, revision_before, "etcd saw no write");

    // Held again and approved, the key is gone.
    let held = delete_through_gateway(&http, &gw, &agent, "payments/ledger");
    let approval = next_pending(&http, &gw).await;
    let id = approval["id"].as_str().unwrap().to_owned();
    decide(&http, &gw, &id, "approve", "ledger migrated, safe to drop").await;

    let approved = held.await.unwrap();
    assert_eq!(approved.status(), 200);
    let answer: Value = approved.json().await.unwrap();
    assert_eq!(answer["deleted"], "1");
    let (_, exists) = direct_range(&http, &etcd, "payments/ledger").await;
    assert!(!exists);
}
