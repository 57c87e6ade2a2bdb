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

/// The agent listener's first check: with `refuse_all`, every request is
/// refused with `503` while the store is down; otherwise everything goes
/// on, and the approval layer still refuses what it cannot hold.
pub(crate) fn admit(health: &StoreHealth) -> Result<(), AppError> {
    if health.policy == OnOutage::RefuseAll && !health.is_ready() {
        return Err(AppError::Unavailable(Box::new(OutageError::StoreDown)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuse_all_refuses_only_while_the_store_is_down() {
        let health = StoreHealth::new(OnOutage::RefuseAll);
        assert!(admit(&health).is_ok());
        assert!(health.set(false));
        assert!(matches!(admit(&health), Err(AppError::Unavailable(_))));
        assert!(health.set(true));
        assert!(admit(&health).is_ok());
    }

    #[test]
    fn allow_safe_lets_requests_through_during_an_outage() {
        let health = StoreHealth::new(OnOutage::AllowSafe);
        health.set(false);
        assert!(admit(&health).is_ok());
    }
}
