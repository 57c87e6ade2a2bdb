//! Real parts for the layer's tests: a small custom classifier, an issuer
//! and a store that count or fail on demand around the real ones, and an
//! axum ledger-like app served on 127.0.0.1:0.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use midosoc_core::approval::Execution;
use midosoc_core::store::{
    ApprovalFilter, EventKind, EventStream, MemoryStore, NewApproval, StoreError,
};
use midosoc_core::token::{Claims, LocalIssuer};
use midosoc_core::{
    Action, AgentId, Analyst, Approval, ApprovalId, ApprovalStore, Assessment, Classifier,
    ClassifyError, Decision, Grant, IssueError, IssuedToken, Marker, Outcome, Risk, TokenIssuer,
    Verdict,
};
use midosoc_tower::{ApprovedAction, HumanApprovalLayer, VerifyTokenLayer};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Issuer name of the tokens minted in tests.
pub(crate) const ISSUER: &str = "https://midosoc.test";
/// Audience of the tokens minted in tests.
pub(crate) const AUDIENCE: &str = "https://ledger.test";
/// Reviewer-only reasoning that must never reach an agent.
pub(crate) const RATIONALE: &str = "internal rationale: deletes need a person";
/// Rule name of the marker that must never reach an agent.
pub(crate) const MARKER_RULE: &str = "test.delete_method";

/// A custom classifier: holds every `DELETE`, refuses anything under
/// `/forbidden`, allows the rest.
#[derive(Debug)]
pub(crate) struct HoldDeletes;

#[async_trait]
impl Classifier for HoldDeletes {
    async fn classify(&self, action: &Action) -> Result<Assessment, ClassifyError> {
        let (verdict, risk) = if action.path().starts_with("/forbidden") {
            (Verdict::Deny, Risk::Critical)
        } else if action.method == "DELETE" {
            (Verdict::Hold, Risk::High)
        } else {
            (Verdict::Allow, Risk::Low)
        };
        Ok(Assessment::new("hold-deletes", verdict, risk, 1.0, RATIONALE).with_marker(Marker::new(
            MARKER_RULE,
            "method",
            action.method.clone(),
        )))
    }
}

/// A classifier whose backend is down.
#[derive(Debug)]
pub(crate) struct BrokenClassifier;

#[async_trait]
impl Classifier for BrokenClassifier {
    async fn classify(&self, _action: &Action) -> Result<Assessment, ClassifyError> {
        Err(ClassifyError::Unavailable("model endpoint refused the connection".into()))
    }
}

/// The real [`LocalIssuer`], counting calls, and failing while told to.
#[derive(Debug)]
pub(crate) struct CountingIssuer {
    pub(crate) inner: LocalIssuer,
    calls: AtomicUsize,
    failing: AtomicBool,
}

impl CountingIssuer {
    pub(crate) fn new() -> Self {
        Self {
            inner: LocalIssuer::generate(ISSUER, AUDIENCE),
            calls: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        }
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub(crate) fn verifier(&self) -> VerifyTokenLayer {
        VerifyTokenLayer::new(self.inner.jwks().clone(), ISSUER, AUDIENCE)
    }
}

#[async_trait]
impl TokenIssuer for CountingIssuer {
    async fn issue(&self, grant: &Grant) -> Result<IssuedToken, IssueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(IssueError::Unreachable("issuer refused the connection".into()));
        }
        self.inner.issue(grant).await
    }
}

/// The real [`MemoryStore`], with writes that fail while told to, as a
/// database that went away would.
#[derive(Debug)]
pub(crate) struct FlakyStore {
    pub(crate) inner: MemoryStore,
    fail_submit: AtomicBool,
    fail_mark_executed: AtomicBool,
}

impl FlakyStore {
    pub(crate) fn new() -> Self {
        let inner = MemoryStore::new()
            .with_max_pending_per_agent(10_000)
            .with_history(100_000)
            .with_event_buffer(100_000);
        Self {
            inner,
            fail_submit: AtomicBool::new(false),
            fail_mark_executed: AtomicBool::new(false),
        }
    }

    pub(crate) fn set_fail_submit(&self, fail: bool) {
        self.fail_submit.store(fail, Ordering::SeqCst);
    }

    pub(crate) fn set_fail_mark_executed(&self, fail: bool) {
        self.fail_mark_executed.store(fail, Ordering::SeqCst);
    }

    pub(crate) async fn all(&self) -> Vec<Approval> {
        let filter = ApprovalFilter { limit: Some(100_000), ..ApprovalFilter::default() };
        self.inner.list(&filter).await.unwrap()
    }
}

fn offline() -> StoreError {
    StoreError::Unavailable("database connection refused".into())
}

#[async_trait]
impl ApprovalStore for FlakyStore {
    async fn submit(&self, new: NewApproval) -> Result<Approval, StoreError> {
        if self.fail_submit.load(Ordering::SeqCst) {
            return Err(offline());
        }
        self.inner.submit(new).await
    }
    async fn get(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.inner.list(filter).await
    }
    async fn decide(&self, id: ApprovalId, decision: Decision) -> Result<Approval, StoreError> {
        self.inner.decide(id, decision).await
    }
    async fn withdraw(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        self.inner.withdraw(id).await
    }
    async fn expire_due(&self, now: OffsetDateTime) -> Result<Vec<Approval>, StoreError> {
        self.inner.expire_due(now).await
    }
    async fn mark_executed(
        &self,
        id: ApprovalId,
        execution: Execution,
    ) -> Result<Approval, StoreError> {
        if self.fail_mark_executed.load(Ordering::SeqCst) {
            return Err(offline());
        }
        self.inner.mark_executed(id, execution).await
    }
    async fn wait(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        self.inner.wait(id).await
    }
    async fn subscribe(&self, after: Option<u64>) -> Result<EventStream, StoreError> {
        self.inner.subscribe(after).await
    }
}

/// An analyst's yes.
pub(crate) fn approve() -> Decision {
    Decision::new(Outcome::Approve, Analyst::new("analyst-1", "Ada"), None)
}

/// An analyst's no, with a reason.
pub(crate) fn deny(reason: &str) -> Decision {
    Decision::new(Outcome::Deny, Analyst::new("analyst-1", "Ada"), Some(reason.to_owned()))
}

/// The approval of the next event of `kind`. Gives up after ten seconds
/// so a broken layer fails the test instead of hanging it.
pub(crate) async fn next_event(events: &mut EventStream, kind: EventKind) -> Approval {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events.next().await.expect("event stream ended").unwrap();
            if event.kind == kind {
                return event.approval;
            }
        }
    });
    found.await.unwrap_or_else(|_| panic!("no {} event within ten seconds", kind.as_str()))
}

/// What the inner service saw, echoed back as JSON.
async fn echo(
    State(calls): State<Arc<AtomicUsize>>,
    approved: Option<Extension<ApprovedAction>>,
    claims: Option<Extension<Claims>>,
    request: Request,
) -> Json<Value> {
    calls.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_else(|_| Bytes::new());
    Json(json!({
        "path": parts.uri.path(),
        "body": String::from_utf8_lossy(&body),
        "approval_id": approved.as_ref().map(|a| a.approval_id.to_string()),
        "analyst": approved.as_ref().map(|a| a.analyst.id.clone()),
        "token_id": approved.as_ref().map(|a| a.token_id.clone()),
        "jti": claims.as_ref().map(|c| c.jti.clone()),
        "sub": claims.as_ref().map(|c| c.sub.clone()),
    }))
}

/// Stands in for a server's authentication layer: the agent named in
/// `X-Agent` becomes the request's [`AgentId`].
async fn identify(mut request: Request, next: Next) -> Response {
    let agent = request.headers().get("x-agent").and_then(|v| v.to_str().ok()).map(AgentId::new);
    if let Some(agent) = agent {
        request.extensions_mut().insert(agent);
    }
    next.run(request).await
}

/// A running app wearing the layer, and the parts a test looks into.
pub(crate) struct Harness {
    pub(crate) base: String,
    pub(crate) store: Arc<FlakyStore>,
    pub(crate) issuer: Arc<CountingIssuer>,
    pub(crate) inner_calls: Arc<AtomicUsize>,
    pub(crate) client: reqwest::Client,
}

impl Harness {
    /// Serves a small ledger: `GET /accounts/{id}` is open, `DELETE
    /// /accounts/{id}` and `DELETE /items/{id}` check Midosoc tokens,
    /// `POST /forbidden` is refused by the classifier. `configure` adjusts
    /// the layer.
    pub(crate) async fn start(
        classifier: impl Classifier,
        configure: impl FnOnce(HumanApprovalLayer) -> HumanApprovalLayer,
    ) -> Self {
        let store = Arc::new(FlakyStore::new());
        let issuer = Arc::new(CountingIssuer::new());
        let inner_calls = Arc::new(AtomicUsize::new(0));

        let verify = issuer.verifier();
        let layer = configure(
            HumanApprovalLayer::new(classifier, store.clone(), issuer.clone()).audience(AUDIENCE),
        );
        let app = Router::new()
            .route("/accounts/{id}", get(echo).merge(delete(echo).layer(verify.clone())))
            .route("/items/{id}", delete(echo).layer(verify))
            .route("/forbidden", post(echo))
            .with_state(inner_calls.clone())
            .layer(layer)
            .layer(middleware::from_fn(identify));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Self { base: format!("http://{addr}"), store, issuer, inner_calls, client }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn inner_calls(&self) -> usize {
        self.inner_calls.load(Ordering::SeqCst)
    }

    pub(crate) async fn events(&self) -> EventStream {
        self.store.subscribe(None).await.unwrap()
    }
}

/// A response's status and JSON body.
pub(crate) async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}
