//! Assembles the gateway from its configuration: the shared [`AppState`]
//! and the routers of the two listeners.
//!
//! The agent listener serves the proxy, the action API and the public
//! endpoints (health, JWKS). The review listener serves the dashboard,
//! the review API and metrics.
//!
//! **Invariant:** no route is on both sides except health and readiness;
//! the agent router knows nothing of analysts and the review router
//! nothing of agent keys.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::middleware;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use midosoc_core::classify::{ComposedClassifier, HeuristicClassifier};
use midosoc_core::store::AuditLog;
use midosoc_core::token::LocalIssuer;
use midosoc_core::{ApprovalStore, Classifier, TokenIssuer};
use midosoc_tower::{HumanApproval, HumanApprovalLayer};
use tokio::sync::watch;
use tower::Layer;

use crate::config::{ClassifierConfig, Config, redact_url};
use crate::identity::Identities;
use crate::proxy::{Forwarder, Proxy, Upstream};
use crate::routes::agent::{self, ActionEcho};
use crate::routes::ops;
use crate::{framing, keys};

/// Largest `/v1/authorize` request body: the described body plus room for
/// the description around it.
const DESCRIPTION_OVERHEAD: usize = 16 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Agents and analysts.
    pub(crate) identities: Identities,
    /// Approvals.
    pub(crate) store: Arc<dyn ApprovalStore>,
    /// The store's hash-chained audit trail, when it keeps one.
    pub(crate) audit: Option<Arc<dyn AuditLog>>,
    /// Whether the store answered its last background check.
    pub(crate) store_health: crate::outage::StoreHealth,
    /// The built-in token issuer, for its JWKS.
    pub(crate) issuer: Arc<LocalIssuer>,
    /// The upstreams, each behind its approval layer.
    pub(crate) proxy: Proxy,
    /// The approval layer around the action API's token echo.
    pub(crate) authorize: HumanApproval<ActionEcho>,
    /// Where metrics are rendered from, when a recorder is installed.
    pub(crate) metrics: Option<PrometheusHandle>,
    /// Largest `/v1/authorize` body.
    pub(crate) json_limit: usize,
    /// `Retry-After` for pending approvals, in seconds.
    pub(crate) retry_after_secs: u64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("proxy", &self.proxy)
            .field("json_limit", &self.json_limit)
            .finish_non_exhaustive()
    }
}

/// The parts the state is built from, opened by [`open`].
pub(crate) struct Parts {
    /// Agents and analysts.
    pub(crate) identities: Identities,
    /// Approvals.
    pub(crate) store: Arc<dyn ApprovalStore>,
    /// The store's audit trail, when it keeps one.
    pub(crate) audit: Option<Arc<dyn AuditLog>>,
    /// The classifier.
    pub(crate) classifier: Arc<dyn Classifier>,
    /// The built-in token issuer: the JWKS and the action API's tokens.
    pub(crate) issuer: Arc<LocalIssuer>,
    /// The issuer the upstreams' layers mint with: the built-in one, or an
    /// OAuth 2.0 server or Auth0 tenant (`[issuer] kind`).
    pub(crate) upstream_issuer: Arc<dyn TokenIssuer>,
}

/// Opens the identity database, the store, the classifier and the issuer
/// named by `config`; `agent_url` is the issuer's default `iss`.
pub(crate) async fn open(config: &Config, agent_url: &str) -> anyhow::Result<Parts> {
    let identities = Identities::open(&config.data_dir).await?;
    let (store, audit) = open_store(&config.store_url()).await?;
    let classifier = classifier(&config.classifier)?;
    let issuer_name = config.issuer.issuer.clone().unwrap_or_else(|| agent_url.to_owned());
    let issuer = keys::load_or_create(&config.data_dir, &issuer_name, &config.issuer.audience)?
        .with_lifetime(config.issuer.token_ttl);
    let issuer = Arc::new(issuer);
    let upstream_issuer = crate::issuer::build(&config.issuer, issuer.clone())?;
    Ok(Parts { identities, store, audit, classifier, issuer, upstream_issuer })
}

/// The classifier `[classifier]` describes: the built-in rules, and with a
/// `[classifier.llm]` table the rules composed with the model, which may
/// raise their verdict (or, in shadow mode, only give its opinion).
fn classifier(config: &ClassifierConfig) -> anyhow::Result<Arc<dyn Classifier>> {
    let rules = HeuristicClassifier::default();
    let (Some(llm_config), Some(llm)) = (&config.llm, config.llm_classifier()?) else {
        return Ok(Arc::new(rules));
    };
    // SECURITY: the description names the model, the URL (password
    // redacted) and the mode; the key is never part of the configuration.
    tracing::info!(classifier = %config, "llm classifier on");
    Ok(Arc::new(ComposedClassifier::new(rules, llm).with_policy(llm_config.policy())))
}

/// The approval store and its audit trail, as [`open_store`] returns them.
type OpenedStore = (Arc<dyn ApprovalStore>, Option<Arc<dyn AuditLog>>);

/// Opens the approval store `url` names: `memory`, or a SQLite file or
/// PostgreSQL database (migrated to the current schema on the way), which
/// also keeps the audit trail.
pub(crate) async fn open_store(url: &str) -> anyhow::Result<OpenedStore> {
    use midosoc_core::store::{MemoryStore, SqlStore, StoreOptions};

    if url == "memory" {
        return Ok((Arc::new(MemoryStore::new()), None));
    }
    let context = || format!("cannot open the approval store `{}`", redact_url(url));
    let store = Arc::new(SqlStore::open(url, StoreOptions::default()).await.with_context(context)?);
    Ok((store.clone(), Some(store)))
}

/// Builds the shared state: one approval layer per upstream and one for
/// the action API, all over the same store. When `shutdown` turns `true`,
/// every held request is answered `503` with its approval id.
pub(crate) fn state(
    config: &Config,
    agent_url: &str,
    parts: Parts,
    metrics: Option<PrometheusHandle>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<AppState> {
    let Parts { identities, store, audit, classifier, issuer, upstream_issuer } = parts;
    let layer = |minting: Arc<dyn TokenIssuer>,
                 audience: Option<&str>,
                 scope: Option<&str>,
                 mint_read_tokens: bool| {
        let approval = &config.approval;
        let mut layer = HumanApprovalLayer::new(classifier.clone(), store.clone(), minting)
            .body_limit(approval.body_limit)
            .wait_timeout(approval.wait_timeout)
            .max_wait(approval.max_wait)
            .approval_ttl(approval.ttl)
            .retry_after(approval.retry_after)
            .status_url(format!("{agent_url}/v1/approvals/{{id}}"))
            .mint_read_tokens(mint_read_tokens)
            .shutdown_signal(shutdown.clone());
        if let Some(audience) = audience {
            layer = layer.audience(audience);
        }
        if let Some(scope) = scope {
            layer = layer.scope(scope);
        }
        layer
    };

    let mut routes = Vec::new();
    for (index, up) in config.upstream.iter().enumerate() {
        let upstream = Arc::new(Upstream::from_config(up, index)?);
        let forwarder = Forwarder::new(upstream.clone(), up.connect_timeout);
        // An upstream that is sent no tokens gets them from the built-in
        // issuer, which costs nothing, rather than from a provider.
        let minting = if up.mint_tokens { upstream_issuer.clone() } else { issuer.clone() };
        let service = layer(minting, up.audience.as_deref(), up.scope.as_deref(), up.mint_tokens)
            .layer(forwarder);
        routes.push((upstream, service));
    }
    // SECURITY: the action API hands its token to the agent, so it always
    // mints with the built-in issuer, whose tokens allow one action only.
    let authorize = layer(issuer.clone(), None, None, true).layer(ActionEcho::new(store.clone()));

    Ok(AppState {
        identities,
        store,
        audit,
        store_health: crate::outage::StoreHealth::new(config.store.on_outage),
        issuer,
        proxy: Proxy::new(routes),
        authorize,
        metrics,
        json_limit: config.approval.body_limit.saturating_add(DESCRIPTION_OVERHEAD),
        retry_after_secs: config.approval.retry_after.as_secs().max(1),
    })
}

/// The agent listener's router.
pub(crate) fn agent_router(state: AppState) -> Router {
    // Everything here needs an agent key; the public routes below are
    // matched first.
    let protected = Router::new()
        .route("/v1/authorize", post(agent::authorize))
        .route("/v1/approvals/{id}", get(agent::approval_status))
        .fallback(agent::proxy)
        .layer(middleware::from_fn_with_state(state.clone(), agent::authenticate))
        .with_state(state.clone());

    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/.well-known/jwks.json", get(ops::jwks))
        .with_state(state)
        .fallback_service(protected)
        .layer(middleware::from_fn(framing::reject_ambiguous))
}

/// The review listener's router; `oidc` is sign-in with an OpenID
/// provider, when configured.
pub(crate) fn review_router(
    state: AppState,
    secure_cookies: bool,
    oidc: Option<Arc<crate::review::OidcSignIn>>,
) -> Router {
    let ops = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .with_state(state.clone());
    let review = crate::review::router(crate::review::ReviewState {
        store: state.store.clone(),
        audit: state.audit.clone(),
        identities: state.identities.clone(),
        secure_cookies,
        oidc,
    });
    ops.merge(review)
}
