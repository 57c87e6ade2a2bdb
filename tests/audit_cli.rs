//! End-to-end: `midosoc audit verify` and `midosoc audit export` on the
//! default SQLite store. An untouched chain is whole; a row edited behind
//! the gateway's back (its append-only trigger dropped first, as an
//! attacker with the file would) is named by its seq.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/instance.rs"]
mod instance;

use instance::{CountingUpstream, Instance, Setup, decide, eventually, pending, upstream_table};
use serde_json::Value;
use sqlx::Connection as _;

/// Holds `DELETE path` without waiting for the decision.
async fn hold(client: &reqwest::Client, gateway: &Instance, key: &str, path: &str) {
    let reply = client
        .delete(gateway.agent(path))
        .bearer_auth(key)
        .header("Prefer", "wait=0")
        .send()
        .await
        .expect("gateway answers");
    assert_eq!(reply.status(), 202);
}

/// Standard output of a CLI run as text, and whether it succeeded.
fn run(setup: &Setup, args: &[&str]) -> (bool, String) {
    let output = setup.cli(args);
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_says_whole_then_names_the_edited_row() {
    let (_upstream, addr) = CountingUpstream::start().await;
    let setup = Setup::new(&upstream_table(addr));
    let key = setup.add_agent("cleanup-bot");
    let client = reqwest::Client::new();

    let gateway = Instance::start(&setup.config);
    let admin = gateway.admin_token.clone().expect("admin token");
    hold(&client, &gateway, &key, "/api/customers/1").await;
    hold(&client, &gateway, &key, "/api/customers/2").await;
    let held = eventually("two pending approvals", || async {
        let list = pending(&client, &gateway, &admin).await;
        (list.len() == 2).then_some(list)
    })
    .await;
    for (approval, verb) in held.iter().zip(["approve", "deny"]) {
        let id = approval["id"].as_str().expect("id");
        assert_eq!(decide(&client, &gateway, &admin, id, verb).await, 200);
    }

    // The review API serves the store's chain: four links, newest first.
    let reply = client.get(gateway.review("/api/audit")).bearer_auth(&admin).send().await.unwrap();
    let audit: Value = reply.json().await.expect("json");
    let seqs: Vec<_> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["seq"].clone()).collect();
    assert_eq!(seqs, [4, 3, 2, 1]);
    gateway.kill();

    // Untouched, the chain is whole, and the export has one line per link.
    let (ok, report) = run(&setup, &["audit", "verify"]);
    assert!(ok, "{report}");
    assert!(report.starts_with("audit chain whole: 4 entries"), "{report}");
    let (ok, export) = run(&setup, &["audit", "export", "--after", "1"]);
    assert!(ok);
    let lines: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["seq"].as_u64()).collect::<Vec<_>>(), [2, 3, 4].map(Some));

    // An attacker drops the append-only trigger and rewrites one row.
    let url = format!("sqlite://{}", setup.data_dir().join("approvals.db").display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.expect("open the store file");
    sqlx::query("DROP TRIGGER approval_events_no_update").execute(&mut db).await.unwrap();
    let edited = sqlx::query(
        "UPDATE approval_events SET payload = replace(payload, 'customers/2', 'customers/9') \
         WHERE seq = 2",
    )
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(edited.rows_affected(), 1);
    db.close().await.unwrap();

    let (ok, report) = run(&setup, &["audit", "verify"]);
    assert!(!ok, "a broken chain exits non-zero: {report}");
    assert!(report.starts_with("audit chain broken at seq 2"), "{report}");
    assert_eq!(report.trim().lines().count(), 1, "{report}");
}
