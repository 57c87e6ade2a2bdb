//! [`HumanApprovalLayer`]: the configuration of the approval middleware and
//! the [`Layer`] that wraps a service with it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use midosoc_core::{AgentId, ApprovalStore, Classifier, Grant, TokenIssuer};
use tokio::sync::watch;
use tower_layer::Layer;

use crate::error::PendingHints;
use crate::service::HumanApproval;

/// Default cap on the request body the layer reads: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Default time a held request waits for a decision before `202 Accepted`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Default longest wait an agent may ask for with `Prefer: wait=N`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// Default time an approval may stay pending before it expires.
pub const DEFAULT_APPROVAL_TTL: Duration = Duration::from_secs(60 * 60);

/// Default `Retry-After` sent with `202 Accepted` and `503`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Agent named on requests that carry no [`AgentId`] extension.
pub const DEFAULT_AGENT: &str = "anonymous";

/// Holds destructive requests until a human approves them.
///
/// Requests the classifier allows pass to the inner service untouched.
/// Denied ones get `403`. Held ones are recorded in the store and wait; on
/// approval a token for exactly that request is minted and the request
/// continues with it. See the [crate documentation](crate) for the whole
/// story.
#[derive(Clone)]
pub struct HumanApprovalLayer {
    shared: Shared,
}

/// What every clone of the service shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) classifier: Arc<dyn Classifier>,
    pub(crate) store: Arc<dyn ApprovalStore>,
    pub(crate) issuer: Arc<dyn TokenIssuer>,
    pub(crate) config: Config,
}

/// Tunable behaviour of the layer.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) body_limit: usize,
    pub(crate) wait_timeout: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) approval_ttl: Duration,
    pub(crate) default_agent: AgentId,
    pub(crate) mint_read_tokens: bool,
    pub(crate) audience: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) pending: PendingHints,
    pub(crate) shutdown: Option<watch::Receiver<bool>>,
}

impl HumanApprovalLayer {
    /// A layer assessing requests with `classifier`, holding them in
    /// `store` and minting tokens with `issuer`.
    ///
    /// To approve from elsewhere (a review endpoint, another process on a
    /// shared database), give the layer a handle to the same store, such
    /// as an `Arc` of it.
    pub fn new(
        classifier: impl Classifier,
        store: impl ApprovalStore,
        issuer: impl TokenIssuer,
    ) -> Self {
        Self {
            shared: Shared {
                classifier: Arc::new(classifier),
                store: Arc::new(store),
                issuer: Arc::new(issuer),
                config: Config::default(),
            },
        }
    }

    /// Largest request body read for assessment; a larger one gets `413`.
    /// Defaults to [`DEFAULT_BODY_LIMIT`].
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.shared.config.body_limit = bytes;
        self
    }

    /// How long a held request waits for a decision when the agent states
    /// no preference. Past it the agent gets `202 Accepted` and may come
    /// back. Defaults to [`DEFAULT_WAIT_TIMEOUT`].
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.shared.config.wait_timeout = wait;
        self
    }

    /// The longest wait an agent may ask for with `Prefer: wait=N`.
    /// Defaults to [`DEFAULT_MAX_WAIT`].
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.shared.config.max_wait = wait;
        self
    }

    /// How long an approval may stay pending before it expires. Defaults
    /// to [`DEFAULT_APPROVAL_TTL`].
    pub fn approval_ttl(mut self, ttl: Duration) -> Self {
        self.shared.config.approval_ttl = ttl;
        self
    }

    /// The agent named on requests without an [`AgentId`] extension.
    /// Defaults to [`DEFAULT_AGENT`].
    pub fn default_agent(mut self, agent: AgentId) -> Self {
        self.shared.config.default_agent = agent;
        self
    }

    /// Where an agent can look up a pending approval, sent as `Location`
    /// with `202 Accepted`; `{id}` is replaced by the approval id, as in
    /// `https://gateway.example/agent/approvals/{id}`. Unset by default.
    pub fn status_url(mut self, template: impl Into<String>) -> Self {
        self.shared.config.pending.status_url = Some(template.into());
        self
    }

    /// The `Retry-After` sent with `202 Accepted` and `503`. Defaults to
    /// [`DEFAULT_RETRY_AFTER`].
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.shared.config.pending.retry_after = after;
        self
    }

    /// Whether allowed requests carry a read-scoped token in
    /// `Authorization`, minted per request with [`Grant::read_only`]. Off
    /// by default: the safe path then never calls the issuer.
    ///
    /// A read token names `read` plus the request's own method and binds
    /// its body digest, so an allowed `POST` (a search, a range read) is
    /// covered by [`VerifyTokenLayer`](crate::VerifyTokenLayer) and the same
    /// token cannot carry another body or method.
    pub fn mint_read_tokens(mut self, enabled: bool) -> Self {
        self.shared.config.mint_read_tokens = enabled;
        self
    }

    /// The audience asked for in every grant; the issuer's default when
    /// unset.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.shared.config.audience = Some(audience.into());
        self
    }

    /// The scopes asked for in every grant, space separated.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.shared.config.scope = Some(scope.into());
        self
    }

    /// Lets held requests go when the server stops. Once `signal` holds
    /// `true`, every request waiting for a decision is answered at once
    /// with `503` and its approval id; the approval stays pending, so the
    /// agent can resume it with the `Midosoc-Approval` header later (given
    /// a durable store). Unset by default: a held request then waits until
    /// its wait runs out or the server drops it.
    pub fn shutdown_signal(mut self, signal: watch::Receiver<bool>) -> Self {
        self.shared.config.shutdown = Some(signal);
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            body_limit: DEFAULT_BODY_LIMIT,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            max_wait: DEFAULT_MAX_WAIT,
            approval_ttl: DEFAULT_APPROVAL_TTL,
            default_agent: AgentId::new(DEFAULT_AGENT),
            mint_read_tokens: false,
            audience: None,
            scope: None,
            pending: PendingHints { status_url: None, retry_after: DEFAULT_RETRY_AFTER },
            shutdown: None,
        }
    }
}

impl Shared {
    /// Applies the configured audience and scope to a grant.
    pub(crate) fn scoped(&self, mut grant: Grant) -> Grant {
        if let Some(audience) = &self.config.audience {
            grant = grant.with_audience(audience.clone());
        }
        if let Some(scope) = &self.config.scope {
            grant = grant.with_scope(scope.clone());
        }
        grant
    }
}

impl<S> Layer<S> for HumanApprovalLayer {
    type Service = HumanApproval<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HumanApproval::new(inner, Arc::new(self.shared.clone()))
    }
}

impl fmt::Debug for HumanApprovalLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HumanApprovalLayer").field("config", &self.shared.config).finish()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("config", &self.config).finish_non_exhaustive()
    }
}
