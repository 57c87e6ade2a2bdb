//! A bare review endpoint for trying the example by hand: list what is
//! waiting, then approve or deny it.
//!
//! LIMITATION: anyone who can reach this port can decide, as the fixed
//! analyst "reviewer". It listens on loopback only; the `midosoc` server's
//! review API adds analyst sign-in, CSRF protection and an audit trail.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use midosoc_core::store::{ApprovalFilter, MemoryStore, StoreError};
use midosoc_core::{Analyst, ApprovalId, ApprovalStatus, ApprovalStore, Decision, Outcome};
use serde::Deserialize;
use serde_json::{Value, json};

type Store = Arc<MemoryStore>;

pub(crate) fn router(store: Store) -> Router {
    Router::new()
        .route("/approvals", get(pending))
        .route("/approvals/{id}", get(one))
        .route("/approvals/{id}/approve", post(approve))
        .route("/approvals/{id}/deny", post(deny))
        .with_state(store)
}

/// What is waiting, newest first, as a reviewer needs to see it.
async fn pending(State(store): State<Store>) -> Result<Json<Vec<Value>>, ReviewError> {
    let filter = ApprovalFilter { status: Some(ApprovalStatus::Pending), ..Default::default() };
    let waiting = store.list(&filter).await?;
    let summaries = waiting
        .iter()
        .map(|a| {
            json!({
                "id": a.id,
                "agent": a.action.agent,
                "request": format!("{} {}", a.action.method, a.action.url),
                "body": a.action.body.preview,
                "risk": a.assessment.risk,
                "why": a.assessment.rationale,
            })
        })
        .collect();
    Ok(Json(summaries))
}

async fn one(
    State(store): State<Store>,
    Path(id): Path<ApprovalId>,
) -> Result<Response, ReviewError> {
    Ok(Json(store.get(id).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct Reason {
    reason: Option<String>,
}

async fn approve(
    State(store): State<Store>,
    Path(id): Path<ApprovalId>,
    Query(q): Query<Reason>,
) -> Result<Json<Value>, ReviewError> {
    decide(&store, id, Outcome::Approve, q.reason).await
}

async fn deny(
    State(store): State<Store>,
    Path(id): Path<ApprovalId>,
    Query(q): Query<Reason>,
) -> Result<Json<Value>, ReviewError> {
    decide(&store, id, Outcome::Deny, q.reason).await
}

async fn decide(
    store: &MemoryStore,
    id: ApprovalId,
    outcome: Outcome,
    reason: Option<String>,
) -> Result<Json<Value>, ReviewError> {
    let analyst = Analyst::new("reviewer", "Local reviewer");
    let decided = store.decide(id, Decision::new(outcome, analyst, reason)).await?;
    Ok(Json(json!({ "id": decided.id, "status": decided.status })))
}

/// A store error as the reviewer should see it.
#[derive(Debug)]
struct ReviewError(StoreError);

impl From<StoreError> for ReviewError {
    fn from(error: StoreError) -> Self {
        Self(error)
    }
}

impl IntoResponse for ReviewError {
    fn into_response(self) -> Response {
        let status = match self.0 {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::NotPending { .. } => StatusCode::CONFLICT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}
