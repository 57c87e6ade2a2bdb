//! Who is asking: an analyst with a bearer token, or a browser with a
//! session cookie; sign-in, sign-out and the checks on browser state
//! changes.
//!
//! Scripts and the CLI send `Authorization: Bearer <analyst token>` on every
//! call. A browser signs in once by posting that token; the server answers
//! with an opaque random session id in an `HttpOnly` cookie and keeps the
//! analyst's id beside it, server-side. Each request re-reads the account,
//! so a removed analyst or a changed role takes effect at once.
//!
//! # Security
//!
//! - The session id is rotated at sign-in, so an id planted before sign-in
//!   is worthless afterwards.
//! - The cookie is `__Host-` prefixed, `Secure`, `HttpOnly` and
//!   `SameSite=Lax`; only a loopback development setup drops `Secure` (and
//!   with it the prefix, which requires it).
//! - Every state change made with a session cookie needs the session's CSRF
//!   token in `X-CSRF-Token` *and* an `Origin` naming this host. Sign-in,
//!   which has no session yet, needs the `Origin`. Bearer calls are exempt:
//!   browsers never attach an `Authorization` header on their own.
//! - An agent key is not an analyst token: the identity store keeps them
//!   apart, so an agent presenting its key here gets `401`.

// LIMITATION: sessions live in the gateway's memory: a restart signs every
// analyst out, and several gateway instances do not share sessions (pin
// browsers to one instance, or use bearer tokens). Only a successful
// sign-in creates a session, so the map grows with sign-ins, not with
// traffic.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use midosoc_core::Analyst;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, MemoryStore, Session, SessionManagerLayer};
use utoipa::ToSchema;

use super::Shared;
use super::error::{Problem, ReviewError};
use super::oidc::SignedIn;
use super::view::{SessionView, parse_json};
use crate::identity::AnalystAccount;

/// The session cookie's name when it is `Secure`.
pub(super) const SECURE_COOKIE: &str = "__Host-midosoc_session";

/// The session cookie's name on a loopback development setup.
pub(super) const DEV_COOKIE: &str = "midosoc_session";

/// The header carrying a session's CSRF token.
pub(super) const CSRF_HEADER: &str = "x-csrf-token";

/// How long a browser session lasts after sign-in: one shift.
const SESSION_LIFETIME: time::Duration = time::Duration::hours(12);

/// Session key of the signed-in analyst's account id.
const ANALYST_KEY: &str = "analyst_id";

/// Session key of the session's CSRF token.
const CSRF_KEY: &str = "csrf_token";

/// Session key of an analyst signed in with the OpenID provider.
const SINGLE_SIGN_ON_KEY: &str = "oidc_analyst";

/// The cookie-session layer of the review router.
pub(super) fn layer(secure: bool) -> SessionManagerLayer<MemoryStore> {
    SessionManagerLayer::new(MemoryStore::default())
        .with_name(if secure { SECURE_COOKIE } else { DEV_COOKIE })
        .with_secure(secure)
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_path("/")
}

/// How an analyst proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Credential {
    /// `Authorization: Bearer <analyst token>`.
    Bearer,
    /// A session cookie from a sign-in.
    Session,
}

/// A signed-in analyst making a review request.
///
/// Extracting it authenticates the request and, for a state change made
/// with a session cookie, checks the CSRF token and `Origin`: a handler
/// that takes a `Reviewer` cannot forget either.
#[derive(Debug)]
pub(super) struct Reviewer {
    /// The analyst's account.
    pub(super) account: AnalystAccount,
    /// How they authenticated.
    pub(super) credential: Credential,
    /// The session's CSRF token, for cookie sessions.
    csrf_token: Option<String>,
}

impl Reviewer {
    /// The analyst as recorded in a decision.
    pub(super) fn analyst(&self) -> Analyst {
        Analyst::new(self.account.id.clone(), self.account.name.clone())
    }

    /// Refuses analysts whose role cannot approve or deny.
    pub(super) fn require_decider(&self) -> Result<(), ReviewError> {
        if self.account.role.can_decide() {
            return Ok(());
        }
        Err(ReviewError::CannotDecide(self.account.role.as_str()))
    }

    fn view(&self) -> SessionView {
        SessionView::new(&self.account, self.csrf_token.clone())
    }
}

impl FromRequestParts<Shared> for Reviewer {
    type Rejection = ReviewError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ReviewError> {
        // A request with an Authorization header is judged by it alone; a
        // bad token never falls back to the cookie.
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let token = bearer_token(value).ok_or(ReviewError::Unauthenticated)?;
            let account = state
                .identities
                .authenticate_analyst(token)
                .await?
                .ok_or(ReviewError::Unauthenticated)?;
            return Ok(Self { account, credential: Credential::Bearer, csrf_token: None });
        }

        let session =
            parts.extensions.get::<Session>().cloned().ok_or(ReviewError::Unauthenticated)?;
        let account = match session.get::<String>(ANALYST_KEY).await? {
            Some(analyst_id) => match state.identities.find_analyst(&analyst_id).await? {
                Some(account) => account,
                None => {
                    // The account was removed since sign-in: end the session.
                    session.flush().await?;
                    return Err(ReviewError::Unauthenticated);
                }
            },
            // Signed in with the provider: the role was mapped at sign-in.
            None => session
                .get::<SignedIn>(SINGLE_SIGN_ON_KEY)
                .await?
                .and_then(|analyst| analyst.account())
                .ok_or(ReviewError::Unauthenticated)?,
        };
        let csrf_token = session.get::<String>(CSRF_KEY).await?;

        if !parts.method.is_safe() {
            check_same_origin(&parts.headers, &parts.uri)?;
            check_csrf(&parts.headers, csrf_token.as_deref())?;
        }
        Ok(Self { account, credential: Credential::Session, csrf_token })
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer_token(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Refuses a browser request whose `Origin` is not this host.
///
/// SECURITY: a page on another site can make a browser send a cookie-bearing
/// `POST` here (SameSite=Lax only stops cross-site subresource requests, and
/// a sibling subdomain counts as same-site). Browsers always send `Origin` on
/// such requests and scripts cannot forge it.
// LIMITATION: "this host" is the request's `Host`. A reverse proxy in front
// of the dashboard must pass the browser's `Host` through (nginx:
// `proxy_set_header Host $host;`); the configured public URL is not yet
// consulted, and `X-Forwarded-Host` is deliberately ignored.
fn check_same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), ReviewError> {
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(ReviewError::CrossOrigin);
    }

    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let (Some(origin), Some(host)) = (origin, host) else {
        return Err(ReviewError::CrossOrigin);
    };

    let authority = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    match authority {
        Some(authority) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(ReviewError::CrossOrigin),
    }
}

/// Refuses a state change whose `X-CSRF-Token` is not the session's.
fn check_csrf(headers: &HeaderMap, expected: Option<&str>) -> Result<(), ReviewError> {
    let sent = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes);
    match (sent, expected) {
        (Some(sent), Some(expected)) if bool::from(sent.ct_eq(expected.as_bytes())) => Ok(()),
        _ => Err(ReviewError::CsrfToken),
    }
}

/// 32 random bytes, base64url: a session's CSRF token.
fn new_csrf_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A sign-in: the analyst's token, pasted into the form.
#[derive(Deserialize, ToSchema)]
pub(super) struct SignIn {
    /// The analyst token shown when the account was created (`mdsr_…`).
    token: String,
}

/// Signs a browser in: checks the analyst token, then starts a fresh
/// session and sets its cookie.
#[utoipa::path(
    post, path = "/api/session", operation_id = "signIn", tag = "session",
    request_body = SignIn,
    responses(
        (status = 200, description = "signed in; the session cookie is set", body = SessionView),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not an analyst token",
        ),
        (
            status = 403, body = Problem, content_type = "application/problem+json",
            description = "request from another origin",
        ),
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn sign_in(
    State(state): State<Shared>,
    session: Session,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SessionView>, ReviewError> {
    // SECURITY: no session exists yet, so the origin check alone stops a
    // foreign page from signing the browser into an account of its choice.
    check_same_origin(&headers, &uri)?;
    let SignIn { token } = parse_json(&super::api::body_bytes(body)?)?;
    let account = state
        .identities
        .authenticate_analyst(token.trim())
        .await?
        .ok_or(ReviewError::Unauthenticated)?;

    session.clear().await;
    session.cycle_id().await?;
    let csrf_token = new_csrf_token();
    session.insert(ANALYST_KEY, &account.id).await?;
    session.insert(CSRF_KEY, &csrf_token).await?;
    session.set_expiry(Some(Expiry::AtDateTime(OffsetDateTime::now_utc() + SESSION_LIFETIME)));

    tracing::info!(analyst.id = %account.id, analyst.role = %account.role, "analyst signed in");
    Ok(Json(SessionView::new(&account, Some(csrf_token))))
}

/// Starts a fresh session for an analyst the OpenID provider signed in:
/// a new session id, a new CSRF token, the analyst and their mapped role.
pub(super) async fn start_single_sign_on(
    session: &Session,
    analyst: &SignedIn,
) -> Result<(), ReviewError> {
    session.clear().await;
    session.cycle_id().await?;
    session.insert(SINGLE_SIGN_ON_KEY, analyst).await?;
    session.insert(CSRF_KEY, &new_csrf_token()).await?;
    session.set_expiry(Some(Expiry::AtDateTime(OffsetDateTime::now_utc() + SESSION_LIFETIME)));
    Ok(())
}

/// What a browser does after signing out.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SignedOut {
    /// The provider's end-session URL: the browser goes there to end the
    /// analyst's session at the provider too.
    end_session_url: String,
}

/// Who is signed in, their role, and the CSRF token their browser must
/// send with state changes.
#[utoipa::path(
    get, path = "/api/session", operation_id = "currentSession", tag = "session",
    responses(
        (status = 200, description = "the signed-in analyst", body = SessionView),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not signed in",
        ),
    ),
    security(("session" = []), ("bearer" = []))
)]
pub(super) async fn current(reviewer: Reviewer) -> Json<SessionView> {
    Json(reviewer.view())
}

/// Ends the browser's session and clears its cookie. An analyst who
/// signed in with the OpenID provider gets the provider's end-session URL
/// to visit next.
#[utoipa::path(
    delete, path = "/api/session", operation_id = "signOut", tag = "session",
    responses(
        (status = 200, description = "signed out here; end the session at the provider", body = SignedOut),
        (status = 204, description = "signed out"),
        (
            status = 401, body = Problem, content_type = "application/problem+json",
            description = "not signed in",
        ),
        (
            status = 403, body = Problem, content_type = "application/problem+json",
            description = "CSRF token or origin refused",
        ),
    ),
    security(("session" = []))
)]
#[tracing::instrument(skip_all, fields(analyst.id = %reviewer.account.id))]
pub(super) async fn sign_out(
    State(state): State<Shared>,
    reviewer: Reviewer,
    session: Session,
) -> Result<Response, ReviewError> {
    if reviewer.credential != Credential::Session {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let single_sign_on = session.get::<SignedIn>(SINGLE_SIGN_ON_KEY).await?;
    session.flush().await?;
    tracing::info!("analyst signed out");

    let end_session = match (single_sign_on, state.oidc.as_deref()) {
        (Some(analyst), Some(oidc)) => oidc.end_session_url(&analyst.id_token).await,
        _ => None,
    };
    Ok(match end_session {
        Some(url) => Json(SignedOut { end_session_url: url.into() }).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn same_origin_requests_pass_and_others_are_refused() {
        let uri = Uri::from_static("/api/session");
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("host", "127.0.0.1:8081"), ("origin", "http://127.0.0.1:8081")], true),
            (&[("host", "review.example"), ("origin", "https://REVIEW.example")], true),
            (&[("host", "127.0.0.1:8081"), ("origin", "http://evil.example")], false),
            (&[("host", "127.0.0.1:8081"), ("origin", "http://127.0.0.1:8082")], false),
            (&[("host", "127.0.0.1:8081"), ("origin", "null")], false),
            (&[("host", "127.0.0.1:8081")], false),
            (
                &[
                    ("host", "127.0.0.1:8081"),
                    ("origin", "http://127.0.0.1:8081"),
                    ("sec-fetch-site", "same-site"),
                ],
                false,
            ),
        ];
        for (pairs, allowed) in cases {
            let result = check_same_origin(&headers(pairs), &uri);
            assert_eq!(result.is_ok(), *allowed, "{pairs:?}");
        }
    }

    #[test]
    fn csrf_token_must_match_the_session() {
        let token = new_csrf_token();
        let mut sent = HeaderMap::new();
        sent.insert(CSRF_HEADER, HeaderValue::from_str(&token).unwrap());
        assert!(check_csrf(&sent, Some(&token)).is_ok());
        assert!(check_csrf(&sent, Some(&new_csrf_token())).is_err());
        assert!(check_csrf(&sent, None).is_err());
        assert!(check_csrf(&HeaderMap::new(), Some(&token)).is_err());
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_nothing_else_is() {
        let read = |v: &'static str| bearer_token(&HeaderValue::from_static(v)).map(str::to_owned);
        assert_eq!(read("Bearer mdsr_abc").as_deref(), Some("mdsr_abc"));
        assert_eq!(read("bearer  mdsr_abc ").as_deref(), Some("mdsr_abc"));
        assert_eq!(read("Basic bWU6eW91"), None);
        assert_eq!(read("Bearer "), None);
        assert_eq!(read("mdsr_abc"), None);
    }
}
