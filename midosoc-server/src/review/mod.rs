//! The review side of the gateway: the JSON review API, its live event
//! stream and the dashboard analysts use to approve or deny held requests.
//!
//! Layout:
//!
//! - [`session`]: who is asking (bearer analyst token or session cookie),
//!   sign-in and sign-out, and the CSRF and `Origin` checks on browser state
//!   changes;
//! - [`oidc`]: sign-in with an OpenID provider (code flow with PKCE), when
//!   `[review.oidc]` is configured;
//! - [`api`]: approvals listed, shown and decided, and the audit history;
//! - [`events`]: the Server-Sent Events stream of store events;
//! - [`dashboard`]: the HTML, CSS and JavaScript of the dashboard, embedded
//!   in the binary;
//! - [`openapi`]: the OpenAPI document of the review API;
//! - [`view`]: the JSON shapes the API sends;
//! - [`error`]: problem details for every failure.
//!
//! # Security
//!
//! Only analysts reach anything here: agent keys are refused (`401`), and
//! only approvers and admins decide (`403` for viewers). Analysts signed in
//! with an OpenID provider get their role from the configured mapping of
//! their ID token's claims, never from being signed in alone (see
//! [`oidc`]). A browser's state
//! change needs its session's CSRF token in a header and an `Origin` of
//! this host; bearer-token calls are exempt, since browsers never attach
//! them on their own. Every response carries a strict Content-Security-Policy
//! and `X-Content-Type-Options: nosniff`; the dashboard renders agent-supplied
//! text with `textContent` only.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{get, post};
use midosoc_core::ApprovalStore;
use tokio::sync::Semaphore;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::identity::Identities;

pub(crate) use oidc::{OidcConfig, OidcSignIn};

mod api;
mod dashboard;
mod error;
mod events;
mod oidc;
mod openapi;
mod session;
mod view;

#[cfg(test)]
mod tests;

/// Largest request body the review API reads (a decision is a sentence).
const BODY_LIMIT: usize = 16 * 1024;

/// Most event streams open at once, across all analysts.
const MAX_EVENT_STREAMS: usize = 256;

/// The Content-Security-Policy of every review response: scripts, styles
/// and connections from this origin only, no inline code, never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'self'; object-src 'none'; frame-ancestors 'none'";

/// What the review router needs from the rest of the gateway.
#[derive(Clone)]
pub(crate) struct ReviewState {
    /// Where approvals live.
    pub(crate) store: Arc<dyn ApprovalStore>,
    /// The store's hash-chained audit trail, when it keeps one; otherwise
    /// `/api/audit` rebuilds the history from the approvals.
    pub(crate) audit: Option<Arc<dyn midosoc_core::store::AuditLog>>,
    /// The analyst accounts.
    pub(crate) identities: Identities,
    /// Whether the session cookie is `Secure` and `__Host-` prefixed. Only
    /// a loopback development setup turns this off.
    pub(crate) secure_cookies: bool,
    /// Sign-in with an OpenID provider, when configured.
    pub(crate) oidc: Option<Arc<OidcSignIn>>,
}

/// The state every review handler sees.
#[derive(Clone)]
struct Shared {
    store: Arc<dyn ApprovalStore>,
    audit: Option<Arc<dyn midosoc_core::store::AuditLog>>,
    identities: Identities,
    oidc: Option<Arc<OidcSignIn>>,
    /// One permit per open event stream.
    streams: Arc<Semaphore>,
}

/// The review listener's router: API, event stream and dashboard.
pub(crate) fn router(state: ReviewState) -> Router {
    let shared = Shared {
        store: state.store,
        audit: state.audit,
        identities: state.identities,
        oidc: state.oidc,
        streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
    };

    let api = Router::new()
        .route(
            "/api/session",
            get(session::current).post(session::sign_in).delete(session::sign_out),
        )
        .route("/api/approvals", get(api::list))
        .route("/api/approvals/{id}", get(api::show))
        .route("/api/approvals/{id}/approve", post(api::approve))
        .route("/api/approvals/{id}/deny", post(api::deny))
        .route("/api/audit", get(api::audit))
        .route("/api/events", get(events::stream))
        .route("/api/openapi.json", get(openapi::document))
        .route("/auth/methods", get(oidc::methods))
        .route(oidc::LOGIN_PATH, get(oidc::login))
        .route(oidc::CALLBACK_PATH, get(oidc::callback));

    Router::new()
        .merge(api)
        .merge(dashboard::routes())
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(session::layer(state.secure_cookies))
        .layer(header_layer(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(header_layer(HeaderName::from_static("cross-origin-opener-policy"), "same-origin"))
        .layer(header_layer(HeaderName::from_static("cross-origin-resource-policy"), "same-origin"))
        .layer(header_layer(header::CACHE_CONTROL, "no-store"))
        .with_state(shared)
}

/// Sets `name` on every response that does not set it itself.
fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}
