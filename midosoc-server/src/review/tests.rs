//! The review router driven with `oneshot`: a real in-memory store, a real
//! identity database in a temporary directory, no socket.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use futures::StreamExt;
use midosoc_core::store::{MemoryStore, NewApproval};
use midosoc_core::{
    Action, AgentId, Approval, ApprovalId, ApprovalStatus, ApprovalStore, Assessment, Marker,
    Outcome, Risk, Verdict,
};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ReviewState, router};
use crate::identity::{Identities, Role};

const HOST: &str = "127.0.0.1:8081";
const ORIGIN: &str = "http://127.0.0.1:8081";
const PROBLEM: &str = "application/problem+json";

/// A review router over a fresh store and identity database.
struct Harness {
    router: Router,
    store: Arc<MemoryStore>,
    identities: Identities,
    approver: String,
    viewer: String,
    agent_key: String,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    harness_with(MemoryStore::new(), false).await
}

async fn harness_with(store: MemoryStore, secure_cookies: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let identities = Identities::open(dir.path()).await.unwrap();
    let approver = identities.add_analyst("alice", Role::Approver).await.unwrap();
    let viewer = identities.add_analyst("victor", Role::Viewer).await.unwrap();
    let agent_key = identities.add_agent("billing-bot").await.unwrap();

    let store = Arc::new(store);
    let state = ReviewState {
        store: store.clone(),
        audit: None,
        identities: identities.clone(),
        secure_cookies,
        oidc: None,
    };
    let router = router(state);
    Harness { router, store, identities, approver, viewer, agent_key, _dir: dir }
}

/// Holds a `DELETE` from `billing-bot`, as the gateway would.
async fn hold(store: &MemoryStore, url: &str) -> Approval {
    let action = Action::builder(AgentId::new("billing-bot"), "DELETE", url)
        .body(r#"{"confirm":true,"api_key":"sk_live_123"}"#)
        .build();
    let assessment =
        Assessment::new("heuristic", Verdict::Hold, Risk::High, 0.9, "deletes a customer")
            .with_marker(Marker::new("method.delete", "method", "DELETE"));
    let new = NewApproval { action, assessment, ttl: Duration::from_secs(3600) };
    store.submit(new).await.unwrap()
}

/// A reply, its body parsed as JSON when it is JSON.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Reply {
    fn problem_type(&self) -> &str {
        assert_eq!(self.headers[header::CONTENT_TYPE], PROBLEM, "{}", self.json);
        self.json["type"].as_str().unwrap()
    }

    /// The `name=value` of the session cookie this reply sets.
    fn cookie(&self) -> String {
        let set = self.headers[header::SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    }
}

async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply { status, headers, json }
}

fn bearer(method: &str, uri: &str, token: &str, body: Option<Value>) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HOST)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

/// Signs `token` in the way the dashboard does; returns the session
/// cookie and CSRF token.
async fn sign_in(h: &Harness, token: &str) -> (String, String) {
    let reply = send(&h.router, sign_in_request(token, None)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    (reply.cookie(), reply.json["csrf_token"].as_str().unwrap().to_owned())
}

fn sign_in_request(token: &str, cookie: Option<&str>) -> Request<Body> {
    let mut builder = Request::post("/api/session")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, ORIGIN)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Body::from(json!({ "token": token }).to_string())).unwrap()
}

/// A browser request: session cookie, and optionally Origin and CSRF token.
fn browser(
    method: &str,
    uri: &str,
    cookie: &str,
    origin: Option<&str>,
    csrf: Option<&str>,
    body: Value,
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, HOST)
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(origin) = origin {
        builder = builder.header(header::ORIGIN, origin);
    }
    if let Some(csrf) = csrf {
        builder = builder.header("x-csrf-token", csrf);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

fn decide_uri(id: ApprovalId, verb: &str) -> String {
    format!("/api/approvals/{id}/{verb}")
}

#[tokio::test]
async fn approvals_are_listed_and_filtered_by_status() {
    let h = harness().await;
    let first = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    let second = hold(&h.store, "https://api.example/v1/customers/cus_2").await;
    let approve = bearer("POST", &decide_uri(first.id, "approve"), &h.approver, None);
    assert_eq!(send(&h.router, approve).await.status, StatusCode::OK);

    let all = send(&h.router, bearer("GET", "/api/approvals", &h.approver, None)).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.json["approvals"].as_array().unwrap().len(), 2);

    let uri = "/api/approvals?status=pending";
    let pending = send(&h.router, bearer("GET", uri, &h.viewer, None)).await;
    let ids: Vec<&str> = pending.json["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [second.id.to_string()]);

    let uri = "/api/approvals?status=approved";
    let approved = send(&h.router, bearer("GET", uri, &h.viewer, None)).await;
    assert_eq!(approved.json["approvals"][0]["id"], first.id.to_string());
    assert_eq!(approved.json["approvals"][0]["decision"]["analyst"]["name"], "alice");

    let uri = "/api/approvals?status=maybe";
    let bad = send(&h.router, bearer("GET", uri, &h.viewer, None)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.problem_type(), "https://midosoc.dev/problems/bad-request");
}

#[tokio::test]
async fn one_approval_shows_its_request_and_assessment_with_secrets_redacted() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;

    let uri = format!("/api/approvals/{}", held.id);
    let reply = send(&h.router, bearer("GET", &uri, &h.viewer, None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let a = &reply.json;
    assert_eq!(a["status"], "pending");
    assert_eq!(a["agent"], "billing-bot");
    assert_eq!(a["method"], "DELETE");
    assert_eq!(a["assessment"]["risk"], "high");
    assert_eq!(a["assessment"]["markers"][0]["rule"], "method.delete");
    let preview = a["body"]["preview"].as_str().unwrap();
    assert!(!preview.contains("sk_live_123"), "{preview}");
    assert!(preview.contains("<redacted>"), "{preview}");
}

#[tokio::test]
async fn approving_records_the_analyst_and_reason() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;

    let body = json!({ "reason": "ticket OPS-12" });
    let reply =
        send(&h.router, bearer("POST", &decide_uri(held.id, "approve"), &h.approver, Some(body)))
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["status"], "approved");

    let stored = h.store.get(held.id).await.unwrap();
    let decision = stored.decision.unwrap();
    assert_eq!(stored.status, ApprovalStatus::Approved);
    assert_eq!(decision.outcome, Outcome::Approve);
    assert_eq!(decision.analyst.name, "alice");
    assert!(!decision.analyst.id.is_empty());
    assert_eq!(decision.reason.as_deref(), Some("ticket OPS-12"));
}

#[tokio::test]
async fn a_denial_needs_a_reason() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    let uri = decide_uri(held.id, "deny");

    for body in [None, Some(json!({})), Some(json!({ "reason": "   " }))] {
        let reply = send(&h.router, bearer("POST", &uri, &h.approver, body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/reason-required");
    }
    assert_eq!(h.store.get(held.id).await.unwrap().status, ApprovalStatus::Pending);

    let body = json!({ "reason": "customer is still active" });
    let reply = send(&h.router, bearer("POST", &uri, &h.approver, Some(body))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json["decision"]["reason"], "customer is still active");
    assert_eq!(h.store.get(held.id).await.unwrap().status, ApprovalStatus::Denied);
}

#[tokio::test]
async fn a_viewer_cannot_decide() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;

    let reply =
        send(&h.router, bearer("POST", &decide_uri(held.id, "approve"), &h.viewer, None)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/role-cannot-decide");
    assert_eq!(h.store.get(held.id).await.unwrap().status, ApprovalStatus::Pending);
}

#[tokio::test]
async fn a_second_decision_is_a_conflict_and_changes_nothing() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    let approve = bearer("POST", &decide_uri(held.id, "approve"), &h.approver, None);
    assert_eq!(send(&h.router, approve).await.status, StatusCode::OK);

    let body = json!({ "reason": "changed my mind" });
    let deny = bearer("POST", &decide_uri(held.id, "deny"), &h.approver, Some(body));
    let reply = send(&h.router, deny).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/approval-not-pending");
    assert_eq!(reply.json["approval_status"], "approved");
    assert_eq!(reply.json["approval_id"], held.id.to_string());

    let stored = h.store.get(held.id).await.unwrap();
    assert_eq!(stored.status, ApprovalStatus::Approved);
    assert_eq!(stored.decision.unwrap().reason, None);
}

#[tokio::test]
async fn withdrawn_approvals_cannot_be_decided() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    h.store.withdraw(held.id).await.unwrap();

    let reply =
        send(&h.router, bearer("POST", &decide_uri(held.id, "approve"), &h.approver, None)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.json["approval_status"], "withdrawn");
}

#[tokio::test]
async fn unknown_ids_are_not_found_and_malformed_ones_are_bad_requests() {
    let h = harness().await;
    let unknown = ApprovalId::new();

    let show =
        send(&h.router, bearer("GET", &format!("/api/approvals/{unknown}"), &h.viewer, None));
    let show = show.await;
    assert_eq!(show.status, StatusCode::NOT_FOUND);
    assert_eq!(show.problem_type(), "https://midosoc.dev/problems/unknown-approval");

    let approve = bearer("POST", &decide_uri(unknown, "approve"), &h.approver, None);
    assert_eq!(send(&h.router, approve).await.status, StatusCode::NOT_FOUND);

    for uri in ["/api/approvals/not-an-id", "/api/approvals/not-an-id/approve"] {
        let method = if uri.ends_with("approve") { "POST" } else { "GET" };
        let reply = send(&h.router, bearer(method, uri, &h.approver, None)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/invalid-approval-id");
    }
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;

    for body in ["{\"reason\":", "[1,2]", "{\"reason\":\"ok\",\"approve_all\":true}"] {
        let request = Request::post(decide_uri(held.id, "deny"))
            .header(header::HOST, HOST)
            .header(header::AUTHORIZATION, format!("Bearer {}", h.approver))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let reply = send(&h.router, request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/bad-request");
    }
    assert_eq!(h.store.get(held.id).await.unwrap().status, ApprovalStatus::Pending);
}

#[tokio::test]
async fn an_agent_key_is_not_an_analyst_token() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;

    let reply =
        send(&h.router, bearer("POST", &decide_uri(held.id, "approve"), &h.agent_key, None)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/unauthenticated");
    assert!(reply.headers.contains_key(header::WWW_AUTHENTICATE));

    let list = send(&h.router, bearer("GET", "/api/approvals", &h.agent_key, None)).await;
    assert_eq!(list.status, StatusCode::UNAUTHORIZED);
    let sign_in = send(&h.router, sign_in_request(&h.agent_key, None)).await;
    assert_eq!(sign_in.status, StatusCode::UNAUTHORIZED);
    assert!(!sign_in.headers.contains_key(header::SET_COOKIE));
    assert_eq!(h.store.get(held.id).await.unwrap().status, ApprovalStatus::Pending);
}

#[tokio::test]
async fn requests_without_credentials_are_unauthenticated() {
    let h = harness().await;
    for uri in ["/api/approvals", "/api/audit", "/api/events", "/api/session"] {
        let request = Request::get(uri).header(header::HOST, HOST).body(Body::empty()).unwrap();
        let reply = send(&h.router, request).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

#[tokio::test]
async fn a_browser_decision_needs_the_csrf_token_and_this_origin() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    let (cookie, csrf) = sign_in(&h, &h.approver).await;
    let uri = decide_uri(held.id, "approve");

    let missing = send(&h.router, browser("POST", &uri, &cookie, Some(ORIGIN), None, json!({})));
    let missing = missing.await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    assert_eq!(missing.problem_type(), "https://midosoc.dev/problems/csrf-token-invalid");

    let wrong = browser("POST", &uri, &cookie, Some(ORIGIN), Some("forged"), json!({}));
    assert_eq!(send(&h.router, wrong).await.status, StatusCode::FORBIDDEN);

    for origin in [Some("https://evil.example"), None] {
        let request = browser("POST", &uri, &cookie, origin, Some(&csrf), json!({}));
        let reply = send(&h.router, request).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/cross-origin");
    }
    assert_eq!(h.store.get(held.id).await.unwrap().status, ApprovalStatus::Pending);

    let good = browser("POST", &uri, &cookie, Some(ORIGIN), Some(&csrf), json!({}));
    let reply = send(&h.router, good).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(reply.json["decision"]["analyst"]["name"], "alice");
}

#[tokio::test]
async fn sign_in_from_another_origin_is_refused() {
    let h = harness().await;
    let request = Request::post("/api/session")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "token": h.approver }).to_string()))
        .unwrap();
    let reply = send(&h.router, request).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(!reply.headers.contains_key(header::SET_COOKIE));
}

#[tokio::test]
async fn sign_in_rotates_the_session_id_and_sign_out_ends_it() {
    let h = harness().await;
    let (first, _) = sign_in(&h, &h.viewer).await;

    // Signing in again from the same browser gives a new id; the old one
    // no longer works.
    let reply = send(&h.router, sign_in_request(&h.approver, Some(&first))).await;
    let second = reply.cookie();
    let csrf = reply.json["csrf_token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let old = Request::get("/api/session")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &first)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h.router, old).await.status, StatusCode::UNAUTHORIZED);

    let me = Request::get("/api/session")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &second)
        .body(Body::empty())
        .unwrap();
    let me = send(&h.router, me).await;
    assert_eq!(me.json["analyst"]["name"], "alice");
    assert_eq!(me.json["can_decide"], true);

    let out = browser("DELETE", "/api/session", &second, Some(ORIGIN), Some(&csrf), json!(null));
    assert_eq!(send(&h.router, out).await.status, StatusCode::NO_CONTENT);
    let after = Request::get("/api/approvals")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &second)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&h.router, after).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_removed_analyst_loses_their_session_at_once() {
    let h = harness().await;
    let (cookie, _) = sign_in(&h, &h.approver).await;
    assert!(h.identities.remove_analyst("alice").await.unwrap());

    let request = Request::get("/api/approvals")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let reply = send(&h.router, request).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let removal = reply.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(removal.starts_with("midosoc_session=;"), "{removal}");
}

#[tokio::test]
async fn session_cookie_is_host_prefixed_secure_http_only_and_lax() {
    let h = harness_with(MemoryStore::new(), true).await;
    let reply = send(&h.router, sign_in_request(&h.approver, None)).await;
    let set = reply.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("__Host-midosoc_session="), "{set}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(set.contains(attribute), "{attribute} missing from {set}");
    }
    assert!(!set.contains("Domain"), "{set}");

    let h = harness().await;
    let reply = send(&h.router, sign_in_request(&h.approver, None)).await;
    let set = reply.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("midosoc_session="), "{set}");
    assert!(!set.contains("Secure"), "{set}");
}

#[tokio::test]
async fn bearer_calls_set_no_cookie_and_need_no_csrf_token() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    let reply =
        send(&h.router, bearer("POST", &decide_uri(held.id, "approve"), &h.approver, None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.headers.contains_key(header::SET_COOKIE));
}

/// Reads an event stream until `done` says enough, or it ends.
async fn read_events(response: axum::response::Response, done: impl Fn(&str) -> bool) -> String {
    let mut body = response.into_body().into_data_stream();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            if done(&text) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("events did not arrive");
    text
}

fn events_request(token: &str, last_event_id: Option<&str>) -> Request<Body> {
    let mut builder = Request::get("/api/events")
        .header(header::HOST, HOST)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if let Some(id) = last_event_id {
        builder = builder.header("last-event-id", id);
    }
    builder.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn event_stream_replays_after_last_event_id_then_goes_live() {
    let h = harness().await;
    let first = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    let second = hold(&h.store, "https://api.example/v1/customers/cus_2").await;

    let response = h.router.clone().oneshot(events_request(&h.viewer, Some("1"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert!(!response.headers().contains_key(header::CONTENT_ENCODING));

    // A live decision after the replay.
    let approve = bearer("POST", &decide_uri(second.id, "approve"), &h.approver, None);
    assert_eq!(send(&h.router, approve).await.status, StatusCode::OK);

    let text = read_events(response, |t| t.contains("id: 3")).await;
    assert!(!text.contains("id: 1\n"), "{text}");
    assert!(!text.contains(&first.id.to_string()), "{text}");
    let replayed = text.find("id: 2").expect("event 2 replayed");
    let live = text.find("id: 3").expect("event 3 streamed");
    assert!(replayed < live);
    assert!(text.contains("event: pending"), "{text}");
    assert!(text.contains("event: decided"), "{text}");

    let data = text.lines().filter_map(|l| l.strip_prefix("data: ")).next_back().unwrap();
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["seq"], 3);
    assert_eq!(event["kind"], "decided");
    assert_eq!(event["approval"]["id"], second.id.to_string());
    assert_eq!(event["approval"]["decision"]["analyst"]["name"], "alice");
}

#[tokio::test]
async fn a_client_too_far_behind_is_told_to_resync() {
    let h = harness_with(MemoryStore::new().with_history(2), false).await;
    for n in 0..5 {
        hold(&h.store, &format!("https://api.example/v1/customers/cus_{n}")).await;
    }

    let response = h.router.clone().oneshot(events_request(&h.viewer, Some("1"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = read_events(response, |_| false).await;
    assert!(text.contains("event: resync"), "{text}");
    // An empty id makes a browser reconnect without a cursor.
    assert!(text.contains("id: \n") || text.contains("id:\n"), "{text}");
    assert!(!text.contains("event: pending"), "{text}");
}

#[tokio::test]
async fn a_malformed_last_event_id_is_a_bad_request() {
    let h = harness().await;
    let reply = send(&h.router, events_request(&h.viewer, Some("latest"))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/bad-request");
}

#[tokio::test]
async fn a_browser_session_follows_the_event_stream() {
    let h = harness().await;
    let (cookie, _) = sign_in(&h, &h.viewer).await;
    let request = Request::get("/api/events")
        .header(header::HOST, HOST)
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let response = h.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    let text = read_events(response, |t| t.contains("id: 1")).await;
    assert!(text.contains(&held.id.to_string()), "{text}");
}

#[tokio::test]
async fn event_streams_are_capped_and_a_closed_one_frees_its_place() {
    let h = harness().await;
    let mut open = Vec::new();
    for _ in 0..super::MAX_EVENT_STREAMS {
        let response = h.router.clone().oneshot(events_request(&h.viewer, None)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }

    let refused = send(&h.router, events_request(&h.viewer, None)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.problem_type(), "https://midosoc.dev/problems/too-many-streams");

    drop(open.pop());
    let response = h.router.clone().oneshot(events_request(&h.viewer, None)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn audit_lists_who_did_what_and_when() {
    let h = harness().await;
    let held = hold(&h.store, "https://api.example/v1/customers/cus_1").await;
    let body = json!({ "reason": "still a customer" });
    let deny = bearer("POST", &decide_uri(held.id, "deny"), &h.approver, Some(body));
    assert_eq!(send(&h.router, deny).await.status, StatusCode::OK);

    let reply = send(&h.router, bearer("GET", "/api/audit", &h.viewer, None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let entries = reply.json["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["decided", "pending"]);
    let decided = &entries[0];
    assert_eq!(decided["approval_id"], held.id.to_string());
    assert_eq!(decided["agent"], "billing-bot");
    assert_eq!(decided["analyst"]["name"], "alice");
    assert_eq!(decided["outcome"], "deny");
    assert_eq!(decided["reason"], "still a customer");
    assert!(decided["at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn dashboard_is_served_with_a_strict_content_security_policy() {
    let h = harness().await;
    for (uri, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let request = Request::get(uri).header(header::HOST, HOST).body(Body::empty()).unwrap();
        let response = h.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], content_type);
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in ["default-src 'self'", "frame-ancestors 'none'", "script-src 'self'"] {
            assert!(csp.contains(directive), "{directive} missing from {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
}

#[test]
fn dashboard_script_never_writes_markup() {
    let script = include_str!("assets/app.js");
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
        let code: Vec<&str> =
            script.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
        assert!(!code.iter().any(|l| l.contains(sink)), "app.js uses {sink}");
    }
    let page = include_str!("assets/index.html");
    assert!(!page.contains("<script>"), "inline script in index.html");
    assert!(!page.contains("style="), "inline style in index.html");
}

#[tokio::test]
async fn openapi_document_is_served() {
    let h = harness().await;
    let request =
        Request::get("/api/openapi.json").header(header::HOST, HOST).body(Body::empty()).unwrap();
    let reply = send(&h.router, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json["openapi"].as_str().unwrap().starts_with("3."));
    assert!(reply.json["paths"]["/api/approvals/{id}/deny"]["post"].is_object());
}

#[tokio::test]
async fn unknown_paths_are_problem_documents() {
    let h = harness().await;
    let request =
        Request::get("/api/nothing").header(header::HOST, HOST).body(Body::empty()).unwrap();
    let reply = send(&h.router, request).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.problem_type(), "https://midosoc.dev/problems/not-found");
}
