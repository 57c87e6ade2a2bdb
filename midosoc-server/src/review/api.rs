//! Approvals listed, shown and decided, and the audit history.
//!
//! A decision goes through the store's compare-and-set `decide`: of two
//! analysts deciding at once, exactly one wins and the other gets `409`.
//! Nothing here ever writes a second decision.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use midosoc_core::store::ApprovalFilter;
use midosoc_core::{ApprovalId, ApprovalStatus, Decision, Outcome};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::Shared;
use super::error::{Problem, ReviewError};
use super::session::Reviewer;
use super::view::{ApprovalList, ApprovalView, AuditEntry, AuditLog, parse_json};

/// Approvals listed when the caller names no limit.
const DEFAULT_LIMIT: usize = 100;

/// Most approvals one list returns.
const MAX_LIMIT: usize = 1000;

/// Longest reason an analyst may give, in characters.
const MAX_REASON: usize = 2000;

/// Which approvals to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only approvals in this status: `pending`, `approved`, `denied`,
    /// `withdrawn` or `expired`.
    status: Option<String>,
    /// At most this many, newest first (default 100, at most 1000).
    limit: Option<usize>,
}

impl ListQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// An analyst's decision. A denial needs a reason; an approval may give
/// one.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DecisionRequest {
    /// Why, in a sentence the agent's owner will read.
    #[serde(default)]
    reason: Option<String>,
}

/// Lists approvals, newest first.
#[utoipa::path(
    get, path = "/api/approvals", operation_id = "listApprovals", tag = "approvals",
    params(ListQuery),
    responses(
        (status = 200, description = "matching approvals, newest first", body = ApprovalList),
        (
            status = 400, body = Problem, content_type = "application/problem+json",
            description = "unknown status or bad limit",
        ),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not signed in",
        ),
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn list(
    _reviewer: Reviewer,
    State(state): State<Shared>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ApprovalList>, ReviewError> {
    let Query(query) = query.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<ApprovalStatus>)
        .transpose()
        .map_err(ReviewError::BadRequest)?;

    let filter = ApprovalFilter { status, agent: None, limit: Some(query.limit()) };
    let approvals = state.store.list(&filter).await?;
    Ok(Json(ApprovalList { approvals: approvals.iter().map(ApprovalView::from).collect() }))
}

/// One approval, with its request, assessment and decision.
#[utoipa::path(
    get, path = "/api/approvals/{id}", operation_id = "getApproval", tag = "approvals",
    params(("id" = String, Path, description = "approval id")),
    responses(
        (status = 200, description = "the approval", body = ApprovalView),
        (
            status = 400, body = Problem, content_type = "application/problem+json",
            description = "malformed id",
        ),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not signed in",
        ),
        (
            status = 404, body = Problem, content_type = "application/problem+json",
            description = "unknown id",
        ),
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn show(
    _reviewer: Reviewer,
    State(state): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ApprovalView>, ReviewError> {
    let id = approval_id(id)?;
    let approval = state.store.get(id).await?;
    Ok(Json(ApprovalView::from(&approval)))
}

/// Approves a pending approval: the held request proceeds.
#[utoipa::path(
    post, path = "/api/approvals/{id}/approve", operation_id = "approveApproval", tag = "approvals",
    params(("id" = String, Path, description = "approval id")),
    request_body(content = Option<DecisionRequest>, description = "an optional reason"),
    responses(
        (status = 200, description = "approved", body = ApprovalView),
        (
            status = 400, body = Problem, content_type = "application/problem+json",
            description = "malformed id or JSON",
        ),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not signed in",
        ),
        (
            status = 403, body = Problem, content_type = "application/problem+json",
            description = "role cannot decide, or CSRF refused",
        ),
        (
            status = 404, body = Problem, content_type = "application/problem+json",
            description = "unknown id",
        ),
        (
            status = 409, body = Problem, content_type = "application/problem+json",
            description = "already decided, withdrawn or expired",
        ),
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn approve(
    reviewer: Reviewer,
    State(state): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApprovalView>, ReviewError> {
    decide(&reviewer, &state, id, Outcome::Approve, &body_bytes(body)?).await
}

/// Denies a pending approval: the agent gets `403` with the reason.
#[utoipa::path(
    post, path = "/api/approvals/{id}/deny", operation_id = "denyApproval", tag = "approvals",
    params(("id" = String, Path, description = "approval id")),
    request_body(content = DecisionRequest, description = "the reason, required"),
    responses(
        (status = 200, description = "denied", body = ApprovalView),
        (
            status = 400, body = Problem, content_type = "application/problem+json",
            description = "no reason, malformed id or JSON",
        ),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not signed in",
        ),
        (
            status = 403, body = Problem, content_type = "application/problem+json",
            description = "role cannot decide, or CSRF refused",
        ),
        (
            status = 404, body = Problem, content_type = "application/problem+json",
            description = "unknown id",
        ),
        (
            status = 409, body = Problem, content_type = "application/problem+json",
            description = "already decided, withdrawn or expired",
        ),
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn deny(
    reviewer: Reviewer,
    State(state): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApprovalView>, ReviewError> {
    decide(&reviewer, &state, id, Outcome::Deny, &body_bytes(body)?).await
}

/// Records `outcome` on the approval named in the path.
async fn decide(
    reviewer: &Reviewer,
    state: &Shared,
    id: Result<Path<String>, PathRejection>,
    outcome: Outcome,
    body: &[u8],
) -> Result<Json<ApprovalView>, ReviewError> {
    reviewer.require_decider()?;
    let id = approval_id(id)?;
    let request: DecisionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        parse_json(body)?
    };

    let reason = request.reason.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON) {
        return Err(ReviewError::BadRequest(format!(
            "reason is longer than {MAX_REASON} characters"
        )));
    }
    if outcome == Outcome::Deny && reason.is_none() {
        return Err(ReviewError::ReasonRequired);
    }

    let decision = Decision::new(outcome, reviewer.analyst(), reason);
    let approval = state.store.decide(id, decision).await?;
    tracing::info!(
        approval.id = %id,
        agent.id = %approval.agent(),
        analyst.id = %reviewer.account.id,
        decision.outcome = if outcome == Outcome::Approve { "approve" } else { "deny" },
        "approval decided"
    );
    Ok(Json(ApprovalView::from(&approval)))
}

/// The approval id in a path, or `400`.
fn approval_id(raw: Result<Path<String>, PathRejection>) -> Result<ApprovalId, ReviewError> {
    let Path(raw) = raw.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
    raw.parse().map_err(|_| ReviewError::InvalidApprovalId(raw.chars().take(64).collect()))
}

/// Which audit entries to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// At most this many of the newest entries (default 100, at most
    /// 1000). Without an audit trail in the store, entries of at most this
    /// many of the newest approvals.
    limit: Option<usize>,
}

/// The history of approvals: each was held, then decided, withdrawn or
/// expired, and perhaps executed; with agent, analyst and time.
#[utoipa::path(
    get, path = "/api/audit", operation_id = "listAudit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "entries, newest first", body = AuditLog),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not signed in",
        ),
    ),
    security(("bearer" = []), ("session" = []))
)]
pub(super) async fn audit(
    _reviewer: Reviewer,
    State(state): State<Shared>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditLog>, ReviewError> {
    let Query(query) = query.map_err(|e| ReviewError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    if let Some(trail) = &state.audit {
        return Ok(Json(AuditLog { entries: newest_links(trail.as_ref(), limit).await? }));
    }

    // Without a durable store there is no audit trail: the history is
    // rebuilt from the approvals (creation, decision, closing and
    // execution times).
    let filter = ApprovalFilter { limit: Some(limit), ..ApprovalFilter::default() };
    let approvals = state.store.list(&filter).await?;

    let mut entries: Vec<AuditEntry> = approvals.iter().flat_map(AuditEntry::steps).collect();
    entries.sort_by_key(|entry| std::cmp::Reverse(entry.instant));
    Ok(Json(AuditLog { entries }))
}

/// The newest `limit` links of the store's audit trail, newest first.
async fn newest_links(
    trail: &dyn midosoc_core::store::AuditLog,
    limit: usize,
) -> Result<Vec<AuditEntry>, ReviewError> {
    use futures::TryStreamExt as _;

    // LIMITATION: the trail is read from its start to find its newest
    // links, which grows with the log; a "last N" query on the store
    // would avoid it.
    let mut newest = std::collections::VecDeque::with_capacity(limit);
    let mut links = trail.export_audit(None);
    while let Some(link) = links.try_next().await? {
        if newest.len() == limit {
            newest.pop_front();
        }
        newest.extend(AuditEntry::from_chain(&link));
    }
    Ok(newest.into_iter().rev().collect())
}

/// A request body, or the problem with it: too large (`413`) or unreadable.
pub(super) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ReviewError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ReviewError::BodyTooLarge,
        _ => ReviewError::BadRequest(rejection.body_text()),
    })
}

/// Answers a path the review listener does not serve.
pub(super) async fn no_route() -> ReviewError {
    ReviewError::NoRoute
}

/// Answers a method a review path does not accept.
pub(super) async fn wrong_method() -> ReviewError {
    ReviewError::MethodNotAllowed
}
