//! [`ResponseFuture`], and the guard that withdraws an approval when the
//! agent stops waiting for it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use midosoc_core::{ApprovalId, ApprovalStore};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Response future of [`HumanApproval`](crate::HumanApproval).
///
/// Dropping it while its request is held withdraws the approval: the agent
/// has hung up, so nobody is left to receive the answer.
pub struct ResponseFuture<ResBody, E> {
    inner: BoxFuture<Result<Response<ResBody>, E>>,
}

impl<ResBody, E> ResponseFuture<ResBody, E> {
    pub(crate) fn new(
        inner: impl Future<Output = Result<Response<ResBody>, E>> + Send + 'static,
    ) -> Self {
        Self { inner: Box::pin(inner) }
    }
}

impl<ResBody, E> Future for ResponseFuture<ResBody, E> {
    type Output = Result<Response<ResBody>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<ResBody, E> fmt::Debug for ResponseFuture<ResBody, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Withdraws a pending approval when dropped, unless disarmed first.
///
/// It lives inside the response future while the request waits, so it is
/// dropped exactly when the agent hangs up (the server drops the future)
/// or when the wait ends with an answer (and it was disarmed).
pub(crate) struct WithdrawGuard {
    armed: Option<(Arc<dyn ApprovalStore>, ApprovalId)>,
}

impl WithdrawGuard {
    pub(crate) fn new(store: Arc<dyn ApprovalStore>, id: ApprovalId) -> Self {
        Self { armed: Some((store, id)) }
    }

    /// The agent got an answer: leave the approval as it is.
    pub(crate) fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for WithdrawGuard {
    fn drop(&mut self) {
        let Some((store, id)) = self.armed.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // LIMITATION: outside a Tokio runtime nothing can run the
            // withdrawal; the approval then expires at its deadline. No
            // token is minted for it either way, since nobody waits.
            tracing::warn!(approval.id = %id, "agent hung up; no runtime to withdraw");
            return;
        };
        runtime.spawn(async move {
            match store.withdraw(id).await {
                Ok(_) => tracing::info!(approval.id = %id, "approval withdrawn; agent hung up"),
                // Decided in the same instant: the decision stands, and
                // nobody is left to execute it.
                Err(error) => {
                    tracing::debug!(approval.id = %id, %error, "withdrawal not recorded")
                }
            }
        });
    }
}
