//! Where approvals live: the [`ApprovalStore`] trait and its event stream.
//!
//! Every store gives the same guarantees, checked by one conformance suite:
//! an approval is decided once, executed at most once, and every change is
//! announced as a numbered [`StoreEvent`] in order.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::action::{Action, AgentId};
use crate::approval::{Approval, ApprovalId, ApprovalStatus, Decision, Execution};
use crate::classify::Assessment;

mod audit;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_common;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use audit::{
    AuditEntry, AuditLog, AuditReport, AuditStream, BrokenLink, ChainVerifier, GENESIS_HASH,
    LinkProblem,
};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql_common::{OpenError, SqlStore, StoreOptions};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// What happened to an approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A new approval is waiting.
    Pending,
    /// An analyst approved or denied it.
    Decided,
    /// The agent hung up before a decision.
    Withdrawn,
    /// Nobody decided in time.
    Expired,
    /// The approved action ran.
    Executed,
}

impl EventKind {
    /// The lower-case word for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Decided => "decided",
            Self::Withdrawn => "withdrawn",
            Self::Expired => "expired",
            Self::Executed => "executed",
        }
    }
}

/// One change to one approval, numbered in store order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreEvent {
    /// Position in the store's event log; strictly increasing.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// The approval after the change.
    pub approval: Approval,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A live stream of events. A subscriber that falls too far behind
/// receives [`StoreError::Lagged`] and should resynchronise.
pub type EventStream = BoxStream<'static, Result<StoreEvent, StoreError>>;

/// Which approvals to list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApprovalFilter {
    /// Only this status.
    pub status: Option<ApprovalStatus>,
    /// Only this agent's.
    pub agent: Option<AgentId>,
    /// At most this many, newest first. `None` means a store default.
    pub limit: Option<usize>,
}

/// A request to hold an action.
#[derive(Clone, Debug)]
pub struct NewApproval {
    /// What the agent wants to do.
    pub action: Action,
    /// Why it is held.
    pub assessment: Assessment,
    /// How long it may wait for a decision.
    pub ttl: Duration,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No approval has this id.
    #[error("unknown approval id `{0}`")]
    NotFound(ApprovalId),
    /// The approval is no longer pending, so it cannot change.
    #[error("approval `{id}` is already {status}")]
    NotPending {
        /// The approval.
        id: ApprovalId,
        /// Its current status.
        status: ApprovalStatus,
    },
    /// The approval was not approved, or was already executed.
    #[error("approval `{id}` cannot be executed: {reason}")]
    NotExecutable {
        /// The approval.
        id: ApprovalId,
        /// Why: not approved, or already executed.
        reason: &'static str,
    },
    /// The agent already has as many pending approvals as allowed.
    #[error("agent `{0}` has too many pending approvals")]
    TooManyPending(AgentId),
    /// A subscriber fell behind and missed events.
    #[error("event subscriber fell behind by {0} events")]
    Lagged(u64),
    /// The backend failed or could not be reached.
    #[error("approval store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Keeps approvals, wakes waiters when they are decided, and announces
/// every change. Implementations must be safe to share between tasks and,
/// where they are durable, between processes.
#[async_trait]
pub trait ApprovalStore: Send + Sync + 'static {
    /// Records a new pending approval and announces it.
    async fn submit(&self, new: NewApproval) -> Result<Approval, StoreError>;

    /// One approval by id.
    async fn get(&self, id: ApprovalId) -> Result<Approval, StoreError>;

    /// Approvals matching `filter`, newest first.
    async fn list(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError>;

    /// Records a decision on a pending approval. Exactly one of several
    /// concurrent decisions wins; the others get [`StoreError::NotPending`].
    async fn decide(&self, id: ApprovalId, decision: Decision) -> Result<Approval, StoreError>;

    /// Marks a pending approval withdrawn: its agent has gone.
    async fn withdraw(&self, id: ApprovalId) -> Result<Approval, StoreError>;

    /// Expires every pending approval whose time is up, returning them.
    async fn expire_due(&self, now: OffsetDateTime) -> Result<Vec<Approval>, StoreError>;

    /// Records that an approved action ran. Exactly one caller wins; the
    /// others get [`StoreError::NotExecutable`].
    async fn mark_executed(
        &self,
        id: ApprovalId,
        execution: Execution,
    ) -> Result<Approval, StoreError>;

    /// Resolves once the approval is no longer pending, with its final
    /// state. Returns at once if it is already decided. Cancel-safe.
    async fn wait(&self, id: ApprovalId) -> Result<Approval, StoreError>;

    /// Events after `after` (all retained ones when `None`), then live
    /// events as they happen, with no gap and no duplicate.
    async fn subscribe(&self, after: Option<u64>) -> Result<EventStream, StoreError>;

    /// Whether the backend is reachable now.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl<S: ApprovalStore + ?Sized> ApprovalStore for std::sync::Arc<S> {
    async fn submit(&self, new: NewApproval) -> Result<Approval, StoreError> {
        (**self).submit(new).await
    }
    async fn get(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        (**self).get(id).await
    }
    async fn list(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        (**self).list(filter).await
    }
    async fn decide(&self, id: ApprovalId, decision: Decision) -> Result<Approval, StoreError> {
        (**self).decide(id, decision).await
    }
    async fn withdraw(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        (**self).withdraw(id).await
    }
    async fn expire_due(&self, now: OffsetDateTime) -> Result<Vec<Approval>, StoreError> {
        (**self).expire_due(now).await
    }
    async fn mark_executed(
        &self,
        id: ApprovalId,
        execution: Execution,
    ) -> Result<Approval, StoreError> {
        (**self).mark_executed(id, execution).await
    }
    async fn wait(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        (**self).wait(id).await
    }
    async fn subscribe(&self, after: Option<u64>) -> Result<EventStream, StoreError> {
        (**self).subscribe(after).await
    }
    async fn ready(&self) -> Result<(), StoreError> {
        (**self).ready().await
    }
}

/// Expires due approvals every `every`, forever. Run one per store (or, for
/// a shared database, let the store make sure only one instance acts).
pub async fn run_expiry<S: ApprovalStore + ?Sized>(store: &S, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.expire_due(OffsetDateTime::now_utc()).await {
            Ok(expired) if !expired.is_empty() => {
                tracing::info!(count = expired.len(), "approvals expired");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "expiry sweep failed"),
        }
    }
}
