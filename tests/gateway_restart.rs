//! End-to-end: held requests survive a crash of the gateway. Two requests
//! are held on the default SQLite store, the gateway is killed with
//! SIGKILL and started again on the same data directory; the approvals are
//! still pending, can be decided, and their agent learns the outcome and
//! resumes the approved one, which runs exactly once.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/instance.rs"]
mod instance;

use instance::{CountingUpstream, Instance, Setup, decide, eventually, pending, upstream_table};
use serde_json::Value;

/// Sends `DELETE path` as the agent, with `approval` to resume one.
async fn delete(
    client: &reqwest::Client,
    gateway: &Instance,
    key: &str,
    path: &str,
    approval: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client.delete(gateway.agent(path)).bearer_auth(key);
    if let Some(id) = approval {
        request = request.header("Midosoc-Approval", id);
    }
    request.send().await
}

/// The id of the pending approval whose URL ends with `path`. Reviewers
/// see the upstream URL the request is forwarded to.
fn id_for(approvals: &[Value], path: &str) -> String {
    approvals
        .iter()
        .find(|a| a["url"].as_str().is_some_and(|url| url.ends_with(path)))
        .and_then(|a| a["id"].as_str())
        .unwrap_or_else(|| panic!("an approval for `{path}` in {approvals:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_survive_a_killed_gateway_and_resume_exactly_once() {
    let (upstream, addr) = CountingUpstream::start().await;
    let setup = Setup::new(&upstream_table(addr));
    let key = setup.add_agent("cleanup-bot");
    let client = reqwest::Client::new();

    // Two risky requests wait for a decision on the first gateway.
    let first = Instance::start(&setup.config);
    let admin = first.admin_token.clone().expect("first start prints the admin token");
    let mut held = Vec::new();
    for path in ["/api/customers/1", "/api/customers/2"] {
        let (client, key, url) = (client.clone(), key.clone(), first.agent(path));
        held.push(tokio::spawn(async move { client.delete(url).bearer_auth(key).send().await }));
    }
    let before = eventually("two pending approvals", || async {
        let list = pending(&client, &first, &admin).await;
        (list.len() == 2).then_some(list)
    })
    .await;
    let approved = id_for(&before, "/customers/1");
    let denied = id_for(&before, "/customers/2");

    // A crash: the agents' connections break, nothing is drained.
    first.kill();
    for request in held {
        let outcome = request.await.expect("task");
        assert!(outcome.is_err(), "the held request was cut off: {outcome:?}");
    }

    // Started again on the same data, everything is still pending.
    let second = Instance::start(&setup.config);
    assert!(second.admin_token.is_none(), "no new admin on a known data directory");
    let after = pending(&client, &second, &admin).await;
    let mut ids: Vec<_> = after.iter().filter_map(|a| a["id"].as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![approved.as_str(), denied.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    // Decided while the agent is away.
    assert_eq!(decide(&client, &second, &admin, &approved, "approve").await, 200);
    assert_eq!(decide(&client, &second, &admin, &denied, "deny").await, 200);

    // The agent asks for the outcomes with the ids it was given.
    for (id, status) in [(&approved, "approved"), (&denied, "denied")] {
        let reply = client
            .get(second.agent(&format!("/v1/approvals/{id}")))
            .bearer_auth(&key)
            .send()
            .await
            .expect("status answers");
        assert_eq!(reply.status(), 200);
        let body: Value = reply.json().await.expect("json");
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(body["executed"], false, "{body}");
    }

    // Resumed, the approved request runs once; again, it is refused.
    let reply = delete(&client, &second, &key, "/api/customers/1", Some(&approved)).await.unwrap();
    assert_eq!(reply.status(), 200, "{:?}", reply.text().await);
    assert_eq!(upstream.count("DELETE /customers/1"), 1);
    let again = delete(&client, &second, &key, "/api/customers/1", Some(&approved)).await.unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(upstream.count("DELETE /customers/1"), 1);

    // The denied one never reaches the upstream.
    let reply = delete(&client, &second, &key, "/api/customers/2", Some(&denied)).await.unwrap();
    assert_eq!(reply.status(), 403);
    assert_eq!(upstream.count("DELETE /customers/2"), 0);
}
