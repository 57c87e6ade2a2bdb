//! The layer driven with `oneshot` over a `service_fn`, with paused time:
//! wait limits, `Prefer`, readiness, and what the inner service receives.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{AUDIENCE, CountingIssuer, FlakyStore, HoldDeletes, ISSUER, approve, next_event};
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use midosoc_core::store::EventKind;
use midosoc_core::{AgentId, ApprovalId, ApprovalStatus, ApprovalStore};
use midosoc_tower::problem::ProblemKind;
use midosoc_tower::{ApprovedAction, HumanApprovalLayer};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

type Body = Full<Bytes>;

/// Echoes what reached it: the `Authorization` header and the approval.
async fn inner(request: Request<Body>) -> Result<Response<Body>, Infallible> {
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.to_str().unwrap());
    let approved = request.extensions().get::<ApprovedAction>();
    let echoed = json!({
        "authorization": authorization,
        "approval_id": approved.map(|a| a.approval_id.to_string()),
    });
    Ok(Response::new(Full::new(Bytes::from(echoed.to_string()))))
}

fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

fn empty(builder: http::request::Builder) -> Request<Body> {
    builder.body(Full::new(Bytes::new())).unwrap()
}

async fn json_of(response: Response<Body>) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn approval_id(body: &Value) -> ApprovalId {
    body["approval_id"].as_str().unwrap().parse().unwrap()
}

struct Parts {
    store: Arc<FlakyStore>,
    issuer: Arc<CountingIssuer>,
}

impl Parts {
    fn new() -> Self {
        Self { store: Arc::new(FlakyStore::new()), issuer: Arc::new(CountingIssuer::new()) }
    }

    fn layer(&self) -> HumanApprovalLayer {
        HumanApprovalLayer::new(HoldDeletes, self.store.clone(), self.issuer.clone())
            .audience(AUDIENCE)
    }
}

/// How long `future` took in (paused) time, and what it gave.
async fn timed<T>(future: impl Future<Output = T>) -> (Duration, T) {
    let started = Instant::now();
    let output = future.await;
    (started.elapsed(), output)
}

#[tokio::test(start_paused = true)]
async fn held_request_answers_202_when_the_wait_limit_passes_and_stays_pending() {
    let parts = Parts::new();
    let service = parts.layer().wait_timeout(Duration::from_secs(30)).layer(service_fn(inner));

    let (elapsed, response) = timed(service.oneshot(empty(request("DELETE", "/items/1")))).await;

    assert_eq!(elapsed, Duration::from_secs(30));
    let (status, body) = json_of(response.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["type"], ProblemKind::ApprovalPending.type_uri());
    let approval = parts.store.get(approval_id(&body)).await.unwrap();
    assert_eq!(approval.status, ApprovalStatus::Pending);
}

#[tokio::test(start_paused = true)]
async fn prefer_wait_shortens_the_wait_and_is_capped_by_max_wait() {
    let parts = Parts::new();
    let layer =
        parts.layer().wait_timeout(Duration::from_secs(60 * 60)).max_wait(Duration::from_secs(60));

    let cases = [("wait=5", 5), ("respond-async, wait=12", 12), ("wait=100000", 60)];
    for (prefer, expected) in cases {
        let held = request("DELETE", "/items/1").header("prefer", prefer);
        let service = layer.clone().layer(service_fn(inner));
        let (elapsed, response) = timed(service.oneshot(empty(held))).await;
        assert_eq!(response.unwrap().status(), StatusCode::ACCEPTED);
        assert_eq!(elapsed, Duration::from_secs(expected), "for `{prefer}`");
    }
}

#[tokio::test(start_paused = true)]
async fn approved_request_carries_the_minted_token_instead_of_the_agents() {
    let parts = Parts::new();
    let service = parts.layer().layer(service_fn(inner));
    let mut events = parts.store.subscribe(None).await.unwrap();

    let store = parts.store.clone();
    let analyst = tokio::spawn(async move {
        let held = next_event(&mut events, EventKind::Pending).await;
        store.decide(held.id, approve()).await.unwrap();
        held
    });
    let mut held = empty(request("DELETE", "/items/1").header(AUTHORIZATION, "Bearer agent-key"));
    held.extensions_mut().insert(AgentId::new("ops-bot"));

    let (status, body) = json_of(service.oneshot(held).await.unwrap()).await;
    let approval = analyst.await.unwrap();

    assert_eq!(status, StatusCode::OK);
    assert_eq!(approval.action.agent.as_str(), "ops-bot");
    assert_eq!(approval_id(&body), approval.id);
    let token = body["authorization"].as_str().unwrap().strip_prefix("Bearer ").unwrap();
    assert_ne!(token, "agent-key");
    let claims = parts.issuer.inner.jwks().verify(token, ISSUER, AUDIENCE).unwrap();
    assert_eq!(claims.sub, "ops-bot");
    assert_eq!(claims.authorization_details[0].approval_id, Some(approval.id));
    assert_eq!(claims.authorization_details[0].actions, ["DELETE"]);
}

#[tokio::test(start_paused = true)]
async fn requests_without_an_agent_extension_are_named_by_the_default_agent() {
    let parts = Parts::new();
    let service =
        parts.layer().default_agent(AgentId::new("unnamed-agent")).layer(service_fn(inner));

    let held = request("DELETE", "/items/1").header("prefer", "wait=0");
    let (_, body) = json_of(service.oneshot(empty(held)).await.unwrap()).await;

    let approval = parts.store.get(approval_id(&body)).await.unwrap();
    assert_eq!(approval.action.agent.as_str(), "unnamed-agent");
}

#[tokio::test(start_paused = true)]
async fn a_held_request_does_not_keep_the_inner_service_reserved() {
    let parts = Parts::new();
    let service = ServiceBuilder::new().layer(parts.layer()).concurrency_limit(1).service_fn(inner);
    let mut events = parts.store.subscribe(None).await.unwrap();

    let held = tokio::spawn(service.clone().oneshot(empty(request("DELETE", "/items/1"))));
    next_event(&mut events, EventKind::Pending).await;

    // With one permit, this read could not run if the held request kept it.
    let read = service.oneshot(empty(request("GET", "/accounts/1")));
    let response = tokio::time::timeout(Duration::from_secs(1), read).await;
    assert_eq!(response.expect("the read was not blocked").unwrap().status(), StatusCode::OK);
    assert!(!held.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_withdraws_the_approval() {
    let parts = Parts::new();
    let service = parts.layer().layer(service_fn(inner));
    let mut events = parts.store.subscribe(None).await.unwrap();

    let agent = tokio::spawn(service.oneshot(empty(request("DELETE", "/items/1"))));
    let held = next_event(&mut events, EventKind::Pending).await;
    agent.abort();

    let withdrawn = next_event(&mut events, EventKind::Withdrawn).await;
    assert_eq!(withdrawn.id, held.id);
    assert_eq!(parts.issuer.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn resuming_an_expired_or_withdrawn_approval_is_gone() {
    let parts = Parts::new();
    let layer = parts.layer();
    let hold = || {
        let held = empty(request("DELETE", "/items/1").header("prefer", "wait=0"));
        layer.clone().layer(service_fn(inner)).oneshot(held)
    };
    let resume = |id: ApprovalId| {
        let again = request("DELETE", "/items/1").header("midosoc-approval", id.to_string());
        layer.clone().layer(service_fn(inner)).oneshot(empty(again))
    };

    let (_, body) = json_of(hold().await.unwrap()).await;
    let expiring = approval_id(&body);
    let later = OffsetDateTime::now_utc() + Duration::from_secs(2 * 60 * 60);
    parts.store.expire_due(later).await.unwrap();
    let (status, body) = json_of(resume(expiring).await.unwrap()).await;
    assert_eq!(
        (status, &body["type"]),
        (StatusCode::GONE, &ProblemKind::ApprovalExpired.type_uri().into())
    );

    let (_, body) = json_of(hold().await.unwrap()).await;
    let withdrawn = approval_id(&body);
    parts.store.withdraw(withdrawn).await.unwrap();
    let (status, body) = json_of(resume(withdrawn).await.unwrap()).await;
    assert_eq!(
        (status, &body["type"]),
        (StatusCode::GONE, &ProblemKind::ApprovalWithdrawn.type_uri().into())
    );
    assert_eq!(parts.issuer.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn two_resumes_of_one_approval_run_it_once() {
    let parts = Parts::new();
    let layer = parts.layer();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = {
        let calls = calls.clone();
        service_fn(move |request: Request<Body>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            inner(request)
        })
    };
    let send = |headers: &[(&str, String)]| {
        let mut builder = request("DELETE", "/items/1");
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        layer.clone().layer(counted.clone()).oneshot(empty(builder))
    };

    let (_, body) = json_of(send(&[("prefer", "wait=0".into())]).await.unwrap()).await;
    let id = approval_id(&body);
    parts.store.decide(id, approve()).await.unwrap();

    let resume = [("midosoc-approval", id.to_string())];
    let (a, b) = tokio::join!(send(&resume), send(&resume));
    let mut statuses = [a.unwrap().status(), b.unwrap().status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn read_tokens_are_minted_for_allowed_requests_only_when_asked() {
    let parts = Parts::new();
    let plain = parts.layer().layer(service_fn(inner));
    let (_, body) =
        json_of(plain.oneshot(empty(request("GET", "/accounts/1"))).await.unwrap()).await;
    assert_eq!(body["authorization"], Value::Null);
    assert_eq!(parts.issuer.calls(), 0);

    let minting = parts.layer().mint_read_tokens(true).layer(service_fn(inner));
    let read = request("GET", "/accounts/1").header(AUTHORIZATION, "Bearer agent-key");
    let (status, body) = json_of(minting.oneshot(empty(read)).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let token = body["authorization"].as_str().unwrap().strip_prefix("Bearer ").unwrap();
    let claims = parts.issuer.inner.jwks().verify(token, ISSUER, AUDIENCE).unwrap();
    assert_eq!(claims.authorization_details[0].actions, ["read", "GET"]);
    assert_eq!(claims.authorization_details[0].locations, ["/accounts/1"]);
    assert_eq!(parts.issuer.calls(), 1);
}
