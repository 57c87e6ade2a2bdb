//! The agent side: key authentication, the action API and the proxy
//! fallback.
//!
//! `POST /v1/authorize` describes a request instead of sending it. The
//! description becomes a synthetic HTTP request that goes through the same
//! [`HumanApproval`](midosoc_tower::HumanApproval) service as proxied
//! requests; the inner [`ActionEcho`] service answers with the token the
//! layer minted, so holding, waiting, resuming and denying behave exactly
//! as on the proxy.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use midosoc_core::{AgentId, ApprovalId, ApprovalStore, Assessment, StoreError};
use midosoc_tower::ApprovedAction;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower::{Service, ServiceExt};

use crate::app::AppState;
use crate::error::AppError;
use crate::metrics::{self, Released};

/// Headers of the `/v1/authorize` request copied onto the synthetic one:
/// how long to wait (`Prefer`), and which approval to resume
/// (`Midosoc-Approval`).
const PASSED_HEADERS: &[&str] = &["prefer", "midosoc-approval"];

/// Endpoint of an MCP server named by a description without `url`.
const DEFAULT_MCP_URL: &str = "/mcp";

/// Refuses everything during a store outage when configured to, checks
/// the agent key, then lets the request on with the agent's
/// [`AgentId`] as an extension and the key removed.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Err(refusal) = crate::outage::admit(&state.store_health) {
        return refusal.into_response();
    }
    let key = match bearer(request.headers()) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let agent = match state.identities.authenticate_agent(key).await {
        Ok(Some(agent)) => agent,
        Ok(None) => return AppError::InvalidKey.into_response(),
        Err(error) => return AppError::Unavailable(Box::new(error)).into_response(),
    };

    // SECURITY: the key stops here; nothing after this point (classifier,
    // store, upstream, logs) can see it.
    request.headers_mut().remove(AUTHORIZATION);
    request.extensions_mut().insert(agent);
    next.run(request).await
}

/// The key in `Authorization: Bearer <key>`.
fn bearer(headers: &http::HeaderMap) -> Result<&str, AppError> {
    let value = headers.get(AUTHORIZATION).ok_or(AppError::MissingKey)?;
    let text = value.to_str().map_err(|_| AppError::InvalidKey)?;
    let (scheme, key) = text.split_once(' ').ok_or(AppError::InvalidKey)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AppError::InvalidKey);
    }
    Ok(key.trim())
}

/// Fallback of the agent listener: everything else goes to the proxy.
pub(crate) async fn proxy(State(state): State<AppState>, request: Request) -> Response {
    let response = state.proxy.handle(request).await;
    metrics::count_outcome(&response);
    response
}

/// What an agent intends to do, as sent to `POST /v1/authorize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionDescription {
    /// HTTP method of the intended request; `POST` for tool calls.
    #[serde(default)]
    method: Option<String>,
    /// Target URL (absolute, or a path); for tool calls, the MCP endpoint.
    #[serde(default)]
    url: Option<String>,
    /// The body: a string is taken byte for byte, any other JSON value is
    /// sent as compact JSON.
    #[serde(default)]
    body: Option<Value>,
    /// What the agent says it is trying to do (untrusted).
    #[serde(default)]
    intent: Option<String>,
    /// An MCP tool to call, instead of `method` and `body`.
    #[serde(default)]
    tool: Option<String>,
    /// Arguments of the MCP tool call.
    #[serde(default)]
    arguments: Option<Value>,
}

impl ActionDescription {
    /// The synthetic request the description stands for.
    fn into_request(self, outer: &http::HeaderMap, agent: AgentId) -> Result<Request, AppError> {
        let (method, url, body) = match self.tool {
            Some(tool) => {
                if self.method.is_some() || self.body.is_some() {
                    return Err(AppError::InvalidJson(
                        "give either `tool` with `arguments`, or `method` with `body`".into(),
                    ));
                }
                let call = json!({
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": { "name": tool, "arguments": self.arguments.unwrap_or(json!({})) },
                });
                let url = self.url.unwrap_or_else(|| DEFAULT_MCP_URL.to_owned());
                ("POST".to_owned(), url, Some(call.to_string().into_bytes()))
            }
            None => {
                let method = self.method.ok_or_else(|| {
                    AppError::InvalidJson("missing field `method` (or `tool`)".into())
                })?;
                let url =
                    self.url.ok_or_else(|| AppError::InvalidJson("missing field `url`".into()))?;
                let body = self.body.map(|body| match body {
                    Value::String(text) => text.into_bytes(),
                    other => other.to_string().into_bytes(),
                });
                (method, url, body)
            }
        };

        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| AppError::InvalidJson(format!("`{method}` is not an HTTP method")))?;
        let uri: Uri =
            url.parse().map_err(|_| AppError::InvalidJson(format!("`{url}` is not a URL")))?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(headers) = request.headers_mut() {
            for name in PASSED_HEADERS {
                if let Some(value) = outer.get(*name) {
                    headers.insert(*name, value.clone());
                }
            }
            if let Some(intent) = self.intent.as_deref().and_then(|i| HeaderValue::try_from(i).ok())
            {
                headers.insert("x-midosoc-intent", intent);
            }
            if body.as_deref().is_some_and(|b| serde_json::from_slice::<Value>(b).is_ok()) {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
        }
        let mut request = request
            .body(Body::from(body.unwrap_or_default()))
            .map_err(|_| AppError::InvalidJson("the described request is not valid".into()))?;
        request.extensions_mut().insert(agent);
        Ok(request)
    }
}

/// `POST /v1/authorize`: assesses a described request, waits for a person
/// when it must, and answers with a token for it.
pub(crate) async fn authorize(State(state): State<AppState>, request: Request) -> Response {
    let response = match authorize_inner(state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    metrics::count_outcome(&response);
    response
}

async fn authorize_inner(state: AppState, request: Request) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let agent = parts.extensions.get::<AgentId>().cloned().ok_or(AppError::MissingKey)?;
    let bytes = read_json_body(body, state.json_limit).await?;
    let description: ActionDescription =
        serde_json::from_slice(&bytes).map_err(|e| AppError::InvalidJson(e.to_string()))?;
    let synthetic = description.into_request(&parts.headers, agent)?;

    match state.authorize.clone().oneshot(synthetic).await {
        Ok(response) => Ok(response),
        Err(never) => match never {},
    }
}

/// Reads a JSON request body, refusing more than `limit` bytes.
async fn read_json_body(body: Body, limit: usize) -> Result<bytes::Bytes, AppError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(AppError::BodyTooLarge { limit }),
        Err(_) => Err(AppError::BodyUnreadable),
    }
}

/// What an agent learns when its described request may proceed.
#[derive(Debug, Serialize)]
struct Authorized {
    /// `allow`: no approval was needed; `approved`: a person approved it.
    decision: &'static str,
    /// The approval, when one was needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<ApprovalId>,
    /// What the gateway thought of the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    assessment: Option<AssessmentSummary>,
    /// The token to send with the request, as `Authorization: Bearer`.
    token: String,
    /// Always `Bearer`.
    token_type: &'static str,
}

/// The part of an assessment an agent may see.
///
/// SECURITY: the rationale and markers stay with the reviewers; telling the
/// agent would teach it what to rephrase.
#[derive(Debug, Serialize)]
struct AssessmentSummary {
    verdict: String,
    risk: String,
    confidence: f32,
}

impl From<&Assessment> for AssessmentSummary {
    fn from(a: &Assessment) -> Self {
        Self { verdict: a.verdict.to_string(), risk: a.risk.to_string(), confidence: a.confidence }
    }
}

/// The inner service of the action API: it runs only for requests the
/// approval layer released, and returns the token the layer put in
/// `Authorization`.
#[derive(Clone)]
pub(crate) struct ActionEcho {
    store: std::sync::Arc<dyn ApprovalStore>,
}

impl std::fmt::Debug for ActionEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionEcho").finish_non_exhaustive()
    }
}

impl ActionEcho {
    /// An echo that looks up approvals in `store`.
    pub(crate) fn new(store: std::sync::Arc<dyn ApprovalStore>) -> Self {
        Self { store }
    }

    async fn answer(self, request: Request) -> Result<Response, AppError> {
        let token = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            // INVARIANT: the layer for the action API mints a token for
            // every request it releases; without one there is nothing to
            // hand out.
            .ok_or_else(|| AppError::Unavailable("released request carries no token".into()))?;

        let approved = request.extensions().get::<ApprovedAction>().cloned();
        let (decision, approval_id, assessment) = match &approved {
            Some(action) => {
                let approval = self
                    .store
                    .get(action.approval_id)
                    .await
                    .map_err(|e| AppError::Unavailable(Box::new(e)))?;
                ("approved", Some(action.approval_id), Some((&approval.assessment).into()))
            }
            None => ("allow", None, request.extensions().get::<Assessment>().map(Into::into)),
        };
        let body = Authorized { decision, approval_id, assessment, token, token_type: "Bearer" };
        let mut response = Json(body).into_response();
        response.extensions_mut().insert(Released { approved: approved.is_some() });
        Ok(response)
    }
}

impl Service<Request> for ActionEcho {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            Ok(this.answer(request).await.unwrap_or_else(IntoResponse::into_response))
        })
    }
}

/// An approval as its agent sees it: where it stands, not why.
#[derive(Debug, Serialize)]
struct ApprovalView {
    id: ApprovalId,
    status: String,
    method: String,
    url: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    decided_at: Option<OffsetDateTime>,
    /// Why it was denied, when an analyst said so.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Whether the approved request has run.
    executed: bool,
}

/// `GET /v1/approvals/{id}`: the calling agent's own approval.
pub(crate) async fn approval_status(
    State(state): State<AppState>,
    axum::Extension(agent): axum::Extension<AgentId>,
    Path(raw): Path<String>,
) -> Result<Response, AppError> {
    let unknown = || AppError::UnknownApproval(raw.clone());
    let id: ApprovalId = raw.parse().map_err(|_| unknown())?;
    let approval = match state.store.get(id).await {
        Ok(approval) => approval,
        Err(StoreError::NotFound(_)) => return Err(unknown()),
        Err(error) => return Err(AppError::Unavailable(Box::new(error))),
    };
    // SECURITY: another agent's approval looks exactly like a missing one.
    if approval.agent() != &agent {
        return Err(unknown());
    }

    let decision = approval.decision.as_ref();
    let view = ApprovalView {
        id: approval.id,
        status: approval.status.to_string(),
        method: approval.action.method.clone(),
        url: state.proxy.agent_facing(&approval.action.url),
        created_at: approval.created_at,
        expires_at: approval.expires_at,
        decided_at: decision.map(|d| d.decided_at).or(approval.closed_at),
        reason: decision.and_then(|d| d.reason.clone()),
        executed: approval.execution.is_some(),
    };
    let mut response = Json(view).into_response();
    if approval.status.is_pending() {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(state.retry_after_secs));
    }
    *response.status_mut() = StatusCode::OK;
    Ok(response)
}
