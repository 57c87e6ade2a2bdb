//! [`HumanApproval`]: the service that assesses each request and holds the
//! risky ones until a person decides.
//!
//! A request goes through these steps:
//!
//! 1. its body is read, up to the configured limit;
//! 2. a request carrying `Midosoc-Approval: <id>` resumes that approval;
//! 3. otherwise it becomes an [`Action`] and the classifier assesses it;
//! 4. `allow` forwards it at once, `deny` answers `403`, `hold` records an
//!    approval and waits for a decision;
//! 5. on approval a token for exactly this request is minted, the approval
//!    is marked executed (only one caller wins), and the request continues
//!    with the token in `Authorization`.
//!
//! Every request the layer lets through carries the classifier's
//! [`Assessment`] as a request extension; an approved one also carries
//! [`ApprovedAction`].

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use midosoc_core::approval::Execution;
use midosoc_core::store::{NewApproval, StoreError};
use midosoc_core::token::BearerToken;
use midosoc_core::{
    Action, AgentId, Analyst, Approval, ApprovalId, ApprovalStatus, Assessment, Grant, IssueError,
    Marker, Risk, Verdict,
};
use time::OffsetDateTime;
use tokio::sync::watch;
use tower::ServiceExt;
use tower_service::Service;
use tracing::Instrument as _;
use tracing::field::{Empty, display};

use crate::body::{BoxError, read_limited};
use crate::error::Rejection;
use crate::future::{ResponseFuture, WithdrawGuard};
use crate::layer::{Config, Shared};

/// Header with which an agent resumes a pending approval after
/// `202 Accepted`: `Midosoc-Approval: <approval id>`.
pub const APPROVAL_HEADER: HeaderName = HeaderName::from_static("midosoc-approval");

/// RFC 7240 `Prefer`, where an agent states how long it will wait.
const PREFER: HeaderName = HeaderName::from_static("prefer");

/// Where an agent may say what it is trying to do (untrusted).
const INTENT_HEADER: &str = "x-midosoc-intent";

/// Name under which an assessment made in place of a failed classifier is
/// recorded.
const FALLBACK_CLASSIFIER: &str = "midosoc-tower";

/// Request extension describing the approval a forwarded request runs
/// under. The inner service finds it with `Extension<ApprovedAction>`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApprovedAction {
    /// The approval that allowed this request.
    pub approval_id: ApprovalId,
    /// Who approved it.
    pub analyst: Analyst,
    /// The `jti` of the token minted for it.
    pub token_id: String,
}

/// Holds risky requests until a human approves them; see
/// [`HumanApprovalLayer`](crate::HumanApprovalLayer).
#[derive(Clone)]
pub struct HumanApproval<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> HumanApproval<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for HumanApproval<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HumanApproval")
            .field("inner", &self.inner)
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, B, ResBody> Service<Request<B>> for HumanApproval<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service polled ready is the one in `self`; leave a clone in
        // its place and take the ready one along.
        let clone = self.inner.clone();
        let ready = mem::replace(&mut self.inner, clone);
        ResponseFuture::new(handle(self.shared.clone(), ready, request))
    }
}

/// Everything that happens to one request.
async fn handle<S, B, ResBody>(
    shared: Arc<Shared>,
    mut ready: S,
    request: Request<B>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes>,
{
    let (parts, body) = request.into_parts();
    let body = match read_limited(&parts.headers, body, shared.config.body_limit).await {
        Ok(body) => body,
        Err(error) => return Ok(respond(&shared, error.into())),
    };
    let agent = match parts.extensions.get::<AgentId>() {
        Some(agent) => agent.clone(),
        None => shared.config.default_agent.clone(),
    };

    if let Some(raw) = parts.headers.get(&APPROVAL_HEADER).cloned() {
        // Boxed, like the hold path below: their state is large and only
        // risky requests need it, so the safe path's future stays small.
        let span = held_span(&agent, &parts.method, None);
        let resumed = resumed(&shared, unready(ready), agent, raw, parts, body);
        return Box::pin(resumed.instrument(span)).await;
    }

    let action = action_for(agent, &parts, &body);
    let assessment = assess(&shared, &action).await;
    match assessment.verdict {
        Verdict::Allow => match pass(&shared, &action, assessment, parts, body).await {
            Ok(request) => ready.call(request).await,
            Err(rejection) => Ok(respond(&shared, rejection)),
        },
        Verdict::Deny => {
            tracing::info!(
                agent.id = %action.agent,
                http.method = %action.method,
                risk.level = %assessment.risk,
                "request refused"
            );
            Ok(respond(&shared, Rejection::Refused))
        }
        Verdict::Hold => {
            let span = held_span(&action.agent, &parts.method, Some(assessment.risk));
            let held = held(&shared, unready(ready), action, assessment, parts, body);
            Box::pin(held.instrument(span)).await
        }
    }
}

/// The allow path: forward at once, with a read-scoped token when asked
/// and the [`Assessment`] as a request extension.
async fn pass<B: From<Bytes>>(
    shared: &Shared,
    action: &Action,
    assessment: Assessment,
    mut parts: Parts,
    body: Bytes,
) -> Result<Request<B>, Rejection> {
    tracing::debug!(agent.id = %action.agent, http.method = %action.method, "request passed");

    if shared.config.mint_read_tokens {
        let grant = shared.scoped(Grant::read_only(action));
        let issued = shared
            .issuer
            .issue(&grant)
            .await
            .map_err(|source| Rejection::Issuer { id: None, source })?;
        parts.headers.insert(AUTHORIZATION, bearer(&issued.token, None)?);
    }
    parts.extensions.insert(assessment);
    Ok(Request::from_parts(parts, B::from(body)))
}

/// The hold path: record an approval, wait for a decision, settle it.
async fn held<S, B, ResBody>(
    shared: &Shared,
    inner: S,
    action: Action,
    assessment: Assessment,
    parts: Parts,
    body: Bytes,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: From<Bytes>,
    ResBody: From<Bytes>,
{
    let wait = wait_limit(&shared.config, &parts.headers);
    let new = NewApproval { action, assessment, ttl: shared.config.approval_ttl };

    // LIMITATION: if the agent hangs up while `submit` itself is running,
    // no guard exists yet; the approval then stays pending until it
    // expires. No token is minted for it, since nobody waits to run it.
    // Only the id and the expiry are kept while waiting: this future lives
    // as long as the person takes, once per held request.
    let (id, expires_at) = match shared.store.submit(new).await {
        Ok(approval) => (approval.id, approval.expires_at),
        Err(source) => return Ok(respond(shared, Rejection::store(None, source))),
    };
    tracing::Span::current().record("approval.id", display(id));
    tracing::info!(%expires_at, "request held");

    let outcome = wait_and_settle(shared, id, expires_at, wait, parts, body).await;
    forward_or_reject(shared, inner, outcome).await
}

/// The resume path: a request re-sent with `Midosoc-Approval: <id>`.
async fn resumed<S, B, ResBody>(
    shared: &Shared,
    inner: S,
    agent: AgentId,
    raw_id: HeaderValue,
    parts: Parts,
    body: Bytes,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    B: From<Bytes>,
    ResBody: From<Bytes>,
{
    let outcome = async {
        let id = parse_approval_id(&raw_id)?;
        tracing::Span::current().record("approval.id", display(id));
        let approval = shared.store.get(id).await.map_err(|e| Rejection::store(Some(id), e))?;
        tracing::Span::current().record("risk.level", display(approval.assessment.risk));

        // SECURITY: another agent's approval looks exactly like a missing
        // one, so ids cannot be probed across agents.
        if approval.agent() != &agent {
            return Err(Rejection::UnknownApproval(id));
        }
        // SECURITY: the approval covers these exact bytes and no others.
        if !approval.action.matches(parts.method.as_str(), &parts.uri.to_string(), &body) {
            return Err(Rejection::Mismatch { id });
        }
        tracing::info!(approval.status = %approval.status, "request resumed");

        if approval.status.is_pending() {
            if approval.is_due(OffsetDateTime::now_utc()) {
                return Err(Rejection::Expired { id });
            }
            let wait = wait_limit(&shared.config, &parts.headers);
            wait_and_settle(shared, id, approval.expires_at, wait, parts, body).await
        } else {
            settle(shared, approval, parts, body).await
        }
    }
    .await;
    forward_or_reject(shared, inner, outcome).await
}

/// The span of a held or resumed request, for as long as it waits.
/// Made by the caller rather than by `#[instrument]` on the async fn,
/// which would keep a second copy of every argument in a future that
/// lives as long as a person takes to decide.
fn held_span(agent: &AgentId, method: &http::Method, risk: Option<Risk>) -> tracing::Span {
    tracing::info_span!(
        "held_request",
        approval.id = Empty,
        agent.id = %agent,
        http.method = %method,
        risk.level = risk.map(tracing::field::display),
    )
}

/// Waits up to `wait` for a decision on pending approval `id`, then
/// settles it. Withdraws the approval if the agent hangs up meanwhile.
async fn wait_and_settle<B: From<Bytes>>(
    shared: &Shared,
    id: ApprovalId,
    expires_at: OffsetDateTime,
    wait: Duration,
    parts: Parts,
    body: Bytes,
) -> Result<Request<B>, Rejection> {
    let guard = WithdrawGuard::new(shared.store.clone(), id);
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(wait, shared.store.wait(id)) => Some(outcome),
        () = stopping(shared.config.shutdown.clone()) => None,
    };
    // The agent is still here and gets an answer, whatever it is.
    guard.disarm();

    let decided = match outcome {
        Some(Ok(Ok(decided))) => decided,
        Some(Ok(Err(source))) => return Err(Rejection::store(Some(id), source)),
        Some(Err(_elapsed)) => {
            return Err(Rejection::StillPending { id, expires_at });
        }
        None => {
            tracing::info!("held request released; server stopping");
            return Err(Rejection::ShuttingDown { id });
        }
    };
    let analyst = decided.decision.as_ref().map(|d| d.analyst.id.as_str());
    tracing::info!(approval.status = %decided.status, analyst.id = analyst, "approval decided");

    // Boxed: settling (the approval, the grant, the token) needs far more
    // room than waiting does, and only once the decision is in.
    Box::pin(settle(shared, decided, parts, body)).await
}

/// Resolves once the shutdown signal holds `true`; never without one.
async fn stopping(signal: Option<watch::Receiver<bool>>) {
    match signal {
        Some(mut signal) => {
            // A dropped sender can no longer announce a shutdown.
            if signal.wait_for(|stopping| *stopping).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Turns a decided approval into the request to forward, or the answer.
async fn settle<B: From<Bytes>>(
    shared: &Shared,
    approval: Approval,
    parts: Parts,
    body: Bytes,
) -> Result<Request<B>, Rejection> {
    let id = approval.id;
    match approval.status {
        ApprovalStatus::Approved if approval.execution.is_some() => {
            Err(Rejection::AlreadyExecuted { id })
        }
        ApprovalStatus::Approved => execute(shared, &approval, parts, body).await,
        ApprovalStatus::Denied => {
            let reason = approval.decision.and_then(|d| d.reason);
            Err(Rejection::Denied { id, reason })
        }
        ApprovalStatus::Expired => Err(Rejection::Expired { id }),
        ApprovalStatus::Withdrawn => Err(Rejection::Withdrawn { id }),
        ApprovalStatus::Pending => {
            Err(Rejection::StillPending { id, expires_at: approval.expires_at })
        }
    }
}

/// Mints the token, wins the right to execute, and dresses the request.
async fn execute<B: From<Bytes>>(
    shared: &Shared,
    approval: &Approval,
    mut parts: Parts,
    body: Bytes,
) -> Result<Request<B>, Rejection> {
    let id = approval.id;
    let Some(decision) = &approval.decision else {
        // INVARIANT: an approved approval carries its decision; a store
        // that lost it is not trusted to run anything.
        let source = StoreError::Unavailable("approved approval has no decision".into());
        return Err(Rejection::Store { id: Some(id), source });
    };

    let grant = shared.scoped(Grant::for_approval(approval));
    let issued = shared
        .issuer
        .issue(&grant)
        .await
        .map_err(|source| Rejection::Issuer { id: Some(id), source })?;
    let authorization = bearer(&issued.token, Some(id))?;
    tracing::info!(
        token.id = %issued.token_id,
        token.expires_at = %issued.expires_at,
        "token minted"
    );

    // INVARIANT: only the caller that marks the approval executed
    // forwards; a loser's token is dropped here, never sent.
    let execution =
        Execution { token_id: issued.token_id.clone(), executed_at: OffsetDateTime::now_utc() };
    match shared.store.mark_executed(id, execution).await {
        Ok(_) => {}
        Err(StoreError::NotExecutable { .. }) => return Err(Rejection::AlreadyExecuted { id }),
        Err(source) => return Err(Rejection::store(Some(id), source)),
    }

    // SECURITY: the agent's own credential never travels with an approved
    // request; the minted token replaces it.
    parts.headers.insert(AUTHORIZATION, authorization);
    parts.headers.remove(&APPROVAL_HEADER);
    parts.extensions.insert(approval.assessment.clone());
    parts.extensions.insert(ApprovedAction {
        approval_id: id,
        analyst: decision.analyst.clone(),
        token_id: issued.token_id,
    });
    Ok(Request::from_parts(parts, B::from(body)))
}

/// Sends a released request to the inner service, or answers instead.
async fn forward_or_reject<S, B, ResBody>(
    shared: &Shared,
    inner: S,
    outcome: Result<Request<B>, Rejection>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    match outcome {
        // The inner service may have changed while a person decided, so it
        // is polled ready again now.
        Ok(request) => inner.oneshot(request).await,
        Err(rejection) => Ok(respond(shared, rejection)),
    }
}

/// Logs a rejection once and turns it into a response.
fn respond<ResBody: From<Bytes>>(shared: &Shared, rejection: Rejection) -> Response<ResBody> {
    rejection.log();
    rejection.into_response(&shared.config.pending)
}

/// A fresh handle to the inner service. Dropping the ready one releases
/// whatever it reserved (a buffer slot, a concurrency permit) for the
/// minutes a person may take to decide.
fn unready<S: Clone>(ready: S) -> S {
    let fresh = ready.clone();
    drop(ready);
    fresh
}

/// The action a request describes.
fn action_for(agent: AgentId, parts: &Parts, body: &Bytes) -> Action {
    let mut builder = Action::builder(agent, parts.method.as_str(), parts.uri.to_string())
        .headers(&parts.headers)
        .body(body.clone());
    if let Some(intent) = parts.headers.get(INTENT_HEADER).and_then(|v| v.to_str().ok()) {
        builder = builder.intent(intent);
    }
    builder.build()
}

/// The classifier's assessment; a failed classifier means "hold".
async fn assess(shared: &Shared, action: &Action) -> Assessment {
    match shared.classifier.classify(action).await {
        Ok(assessment) => assessment,
        Err(error) => {
            // SECURITY: nothing fails open; a person decides instead.
            tracing::warn!(%error, agent.id = %action.agent, "classifier failed; holding");
            let rationale = "the classifier failed, so a person must decide";
            Assessment::new(FALLBACK_CLASSIFIER, Verdict::Hold, Risk::High, 0.0, rationale)
                .with_marker(Marker::new("classifier.error", "classifier", error.to_string()))
        }
    }
}

/// How long this request may wait for a decision.
fn wait_limit(config: &Config, headers: &HeaderMap) -> Duration {
    match preferred_wait(headers) {
        Some(wait) => wait.min(config.max_wait),
        None => config.wait_timeout,
    }
}

/// The wait an agent asked for with RFC 7240 `Prefer`: `wait=N` seconds,
/// or no wait at all for a bare `respond-async`.
fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    let mut respond_async = false;
    let preferences = headers
        .get_all(PREFER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for preference in preferences {
        // Parameters after `;` do not matter for either preference.
        let token = preference.split(';').next().unwrap_or_default().trim();
        let (name, value) = match token.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (token, None),
        };
        if name.eq_ignore_ascii_case("wait") {
            if let Some(seconds) = value.and_then(|v| v.parse::<u64>().ok()) {
                return Some(Duration::from_secs(seconds));
            }
        } else if name.eq_ignore_ascii_case("respond-async") {
            respond_async = true;
        }
    }
    respond_async.then_some(Duration::ZERO)
}

/// The id in a `Midosoc-Approval` header.
fn parse_approval_id(raw: &HeaderValue) -> Result<ApprovalId, Rejection> {
    let text = String::from_utf8_lossy(raw.as_bytes());
    text.trim().parse().map_err(|_| Rejection::InvalidApprovalId(text.into_owned()))
}

/// `Bearer <token>` as a header value that never shows in logs.
fn bearer(token: &BearerToken, id: Option<ApprovalId>) -> Result<HeaderValue, Rejection> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
        let source = IssueError::Rejected("minted token is not a valid header value".into());
        Rejection::Issuer { id, source }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefer(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(PREFER, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn prefer_header_gives_the_wait_an_agent_asked_for() {
        let cases: &[(&[&str], Option<u64>)] = &[
            (&[], None),
            (&["wait=10"], Some(10)),
            (&["respond-async, wait=3"], Some(3)),
            (&["respond-async"], Some(0)),
            (&["handling=lenient", "Wait = \"7\""], Some(7)),
            (&["wait=soon"], None),
            (&["return=minimal"], None),
        ];
        for (values, expected) in cases {
            let got = preferred_wait(&prefer(values)).map(|d| d.as_secs());
            assert_eq!(got, *expected, "for {values:?}");
        }
    }

    #[test]
    fn an_agent_cannot_wait_longer_than_configured() {
        let config = Config::default();
        let asked = wait_limit(&config, &prefer(&["wait=100000"]));
        assert_eq!(asked, config.max_wait);
        assert_eq!(wait_limit(&config, &prefer(&["wait=1"])), Duration::from_secs(1));
        assert_eq!(wait_limit(&config, &HeaderMap::new()), config.wait_timeout);
    }
}
