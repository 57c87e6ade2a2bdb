//! Operations endpoints: liveness, readiness, the token verification keys
//! and Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use serde_json::json;

use crate::app::AppState;
use crate::error::AppError;

/// `GET /healthz`: the process is up.
pub(crate) async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// `GET /readyz`: the approval store and the identity database answer.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ready().await;
    let identities = state.identities.ready().await;
    let ready = store.is_ok() && identities.is_ok();
    if let Err(error) = &store {
        tracing::warn!(error = %crate::error::chain(error), "approval store not ready");
    }
    if let Err(error) = &identities {
        tracing::warn!(error = %crate::error::chain(error), "identity database not ready");
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = json!({
        "status": word(ready),
        "checks": { "store": word(store.is_ok()), "identities": word(identities.is_ok()) },
    });
    (status, Json(body)).into_response()
}

/// `GET /.well-known/jwks.json`: the public keys that verify minted
/// tokens. Public, so protected APIs can fetch it without a credential.
pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.issuer.jwks().clone()).into_response();
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// `GET /metrics` on the review listener: Prometheus text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, AppError> {
    let Some(handle) = &state.metrics else {
        return Err(AppError::NoRoute("/metrics".to_owned()));
    };
    let mut response = handle.render().into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    Ok(response)
}
