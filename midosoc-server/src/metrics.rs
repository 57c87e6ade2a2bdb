//! Prometheus metrics: requests by outcome, pending approvals, time to
//! decision and upstream errors.
//!
//! Request outcomes are counted by the proxy and action API handlers;
//! approval figures come from the store's event stream, so they count
//! decisions made on the review side too.

use std::sync::Arc;

use axum::response::Response;
use futures::StreamExt;
use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use midosoc_core::store::{ApprovalFilter, EventKind};
use midosoc_core::{ApprovalStatus, ApprovalStore};
use time::OffsetDateTime;

/// Counter of agent requests, by outcome.
const REQUESTS: &str = "midosoc_requests_total";
/// Gauge of approvals waiting for a person.
const PENDING: &str = "midosoc_pending_approvals";
/// Histogram of seconds from hold to decision.
const TIME_TO_DECISION: &str = "midosoc_time_to_decision_seconds";
/// Counter of approvals closed without a decision, by kind.
const CLOSED: &str = "midosoc_approvals_closed_total";

/// Most pending approvals counted at start-up.
const PENDING_SCAN_LIMIT: usize = 1_000_000;

/// Response extension set by the services behind the approval layer: the
/// request was released to run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Released {
    /// Whether a person approved it (otherwise the classifier allowed it).
    pub(crate) approved: bool,
}

/// Installs the global Prometheus recorder.
pub(crate) fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(TIME_TO_DECISION.to_owned()),
            &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0],
        )?
        .install_recorder()?;
    metrics::describe_counter!(REQUESTS, "Agent requests, by outcome");
    metrics::describe_gauge!(PENDING, "Approvals waiting for a person");
    metrics::describe_histogram!(TIME_TO_DECISION, "Seconds from hold to decision");
    metrics::describe_counter!(CLOSED, "Approvals closed without a decision, by kind");
    metrics::describe_counter!(crate::proxy::UPSTREAM_ERRORS, "Failed upstream exchanges");
    metrics::gauge!(PENDING).set(0.0);
    Ok(handle)
}

/// Counts an answer to an agent request by outcome: `allow`, `approved`,
/// `denied` (refused or denied), `pending` (wait ran out) or `rejected`
/// (any other answer of the gateway itself).
pub(crate) fn count_outcome(response: &Response) {
    let outcome = match response.extensions().get::<Released>() {
        Some(Released { approved: true }) => "approved",
        Some(Released { approved: false }) => "allow",
        None if response.status() == StatusCode::FORBIDDEN => "denied",
        None if response.status() == StatusCode::ACCEPTED => "pending",
        None => "rejected",
    };
    metrics::counter!(REQUESTS, "outcome" => outcome).increment(1);
}

/// Sets the pending gauge from the approvals pending now, and returns the
/// moment counted from, for [`follow_store`].
pub(crate) async fn count_pending(store: &dyn ApprovalStore) -> OffsetDateTime {
    let started = OffsetDateTime::now_utc();
    let filter = ApprovalFilter {
        status: Some(ApprovalStatus::Pending),
        agent: None,
        limit: Some(PENDING_SCAN_LIMIT),
    };
    match store.list(&filter).await {
        Ok(pending) => metrics::gauge!(PENDING).set(pending.len() as f64),
        Err(error) => tracing::warn!(%error, "pending approvals not counted"),
    }
    started
}

/// Follows the store's events to keep the approval figures, until the
/// stream ends. A durable store replays its history to a new subscriber;
/// events from before `started` were counted by [`count_pending`] and are
/// skipped.
pub(crate) async fn follow_store(store: Arc<dyn ApprovalStore>, started: OffsetDateTime) {
    let mut events = match store.subscribe(None).await {
        Ok(events) => events,
        Err(error) => {
            tracing::warn!(%error, "approval metrics unavailable");
            return;
        }
    };
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                // A lagging subscriber misses counts, not correctness.
                tracing::debug!(%error, "approval metrics skipped events");
                continue;
            }
        };
        if event.at < started {
            continue;
        }
        let approval = &event.approval;
        match event.kind {
            EventKind::Pending => metrics::gauge!(PENDING).increment(1.0),
            EventKind::Decided => {
                metrics::gauge!(PENDING).decrement(1.0);
                let waited = event.at - approval.created_at;
                metrics::histogram!(TIME_TO_DECISION, "status" => approval.status.as_str())
                    .record(waited.as_seconds_f64().max(0.0));
            }
            EventKind::Withdrawn | EventKind::Expired => {
                metrics::gauge!(PENDING).decrement(1.0);
                metrics::counter!(CLOSED, "kind" => event.kind.as_str()).increment(1);
            }
            EventKind::Executed => {}
        }
    }
}
