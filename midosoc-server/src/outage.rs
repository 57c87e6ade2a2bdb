//! Store outages on the agent listener: a readiness flag kept by a
//! background check, and the `store.on_outage = "refuse_all"` policy that
//! reads it.
//!
//! Risky requests need the store to be held, so the approval layer already
//! answers them `503` when the store fails. Safe requests need no store;
//! whether they pass during an outage is the operator's choice. The flag
//! is refreshed once a second by [`watch`], so the agent path never pays a
//! database round trip for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use midosoc_core::ApprovalStore;

use crate::config::OnOutage;
use crate::error::AppError;

/// How often the store's readiness is checked in the background.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Why a request was refused during an outage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutageError {
    /// The last background check of the store failed.
    #[error("approval store unreachable at its last check")]
    StoreDown,
}

/// Whether the store answered its last check, shared by every handler.
#[derive(Clone, Debug)]
pub(crate) struct StoreHealth {
    policy: OnOutage,
    ready: Arc<AtomicBool>,
}

impl StoreHealth {
    /// A flag that starts ready (the store was just opened), with what to
    /// do with safe requests while it is not.
    pub(crate) fn new(policy: OnOutage) -> Self {
        Self { policy, ready: Arc::new(AtomicBool::new(true)) }
    }

    /// Whether the store answered its last check.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records the outcome of a check; returns whether it changed.
    fn set(&self, ready: bool) -> bool {
        self.ready.swap(ready, Ordering::Relaxed) != ready
    }
}

/// Checks the store every second, forever, and logs when it goes away and
/// when it comes back.
pub(crate) async fn watch(store: Arc<dyn ApprovalStore>, health: StoreHealth) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.ready().await {
            Ok(()) => {
                if health.set(true) {
                    tracing::info!("approval store reachable again");
                }
            }
            Err(error) => {
                if health.set(false) {
                    tracing::error!(
                        error = %crate::error::chain(&error),
                        "approval store unreachable; risky requests are refused"
                    );
                }
            }
        }
    }
}

/// Middleware on the agent listener: with `refuse_all`, answers `503` to
/// every request while the store is down; otherwise lets everything on.
pub(crate) async fn refuse_during_outage(
    State(health): State<StoreHealth>,
    request: Request,
    next: Next,
) -> Response {
    if health.policy == OnOutage::RefuseAll && !health.is_ready() {
        return AppError::Unavailable(Box::new(OutageError::StoreDown)).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::StatusCode;
    use tower::ServiceExt as _;

    use super::*;

    fn router(health: StoreHealth) -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(health, refuse_during_outage))
    }

    async fn status(health: &StoreHealth) -> StatusCode {
        let request = Request::get("/").body(Body::empty()).unwrap();
        router(health.clone()).oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn refuse_all_answers_503_only_while_the_store_is_down() {
        let health = StoreHealth::new(OnOutage::RefuseAll);
        assert_eq!(status(&health).await, StatusCode::OK);
        assert!(health.set(false));
        assert_eq!(status(&health).await, StatusCode::SERVICE_UNAVAILABLE);
        assert!(health.set(true));
        assert_eq!(status(&health).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn allow_safe_lets_requests_through_during_an_outage() {
        let health = StoreHealth::new(OnOutage::AllowSafe);
        health.set(false);
        assert_eq!(status(&health).await, StatusCode::OK);
    }
}
