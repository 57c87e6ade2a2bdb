//! [`VerifyTokenLayer`]: the protected API's side of the bargain. It lets a
//! request through only with a Midosoc token that allows exactly this
//! request, and only once.
//!
//! A token passes when:
//!
//! - its signature checks against the [`Jwks`], its type is `at+jwt`, and
//!   its issuer, audience, `exp` and `nbf` are right;
//! - its one `authorization_details` entry names this request: the method
//!   (or `read` for `GET`, `HEAD` and `OPTIONS`), the path and query, and
//!   the SHA-256 digest of the body;
//! - its `jti` has not been seen before.
//!
//! Everything else is answered with a problem+json `401` or `403`; the
//! inner service never sees it. A request that passes carries the token's
//! [`Claims`] as a request extension.
//!
//! ```
//! use axum::{Router, routing::delete};
//! use midosoc_core::token::LocalIssuer;
//! use midosoc_tower::VerifyTokenLayer;
//!
//! let issuer = LocalIssuer::generate("https://midosoc.example", "ledger");
//! let app: Router = Router::new()
//!     .route("/accounts/{id}", delete(|| async { "closed" }))
//!     .layer(VerifyTokenLayer::new(issuer.jwks().clone(), "https://midosoc.example", "ledger"));
//! ```

use std::collections::HashMap;
use std::fmt;
use std::mem;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{Method, Request, Response, Uri};
use http_body::Body;
use midosoc_core::Sha256Digest;
use midosoc_core::token::{AUTHORIZATION_DETAILS_TYPE, AuthorizationDetail, Claims, Jwks};
use time::OffsetDateTime;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{BodyError, BoxError, read_limited};
use crate::error::{body_problem, error_chain};
use crate::future::ResponseFuture;
use crate::layer::DEFAULT_BODY_LIMIT;
use crate::problem::{Problem, ProblemKind};

/// Default number of unexpired token ids remembered to refuse replays.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// How long past its `exp` a token id is remembered: at least the
/// verifier's clock leeway, so a replay is refused until expiry does it.
const REPLAY_MARGIN_SECS: i64 = 60;

/// The `actions` entry of a read-scoped token.
const READ_ACTION: &str = "read";

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// No `Authorization: Bearer` header.
    #[error("request carries no bearer token")]
    Missing,

    /// Signature, type, issuer, audience or lifetime is wrong.
    #[error("bearer token is invalid")]
    Invalid(#[source] BoxError),

    /// The token's `jti` was used before.
    #[error("token `{0}` was already used")]
    Replayed(String),

    /// Too many live tokens to remember another; refused to stay safe.
    #[error("replay cache is full")]
    CacheFull,

    /// The token allows another request.
    #[error("token does not allow this request: {0}")]
    Mismatch(&'static str),

    /// The body is too large or could not be read.
    #[error(transparent)]
    Body(#[from] BodyError),
}

impl Refusal {
    fn into_response<B: From<Bytes>>(self) -> Response<B> {
        match &self {
            Self::Missing | Self::Invalid(_) | Self::Replayed(_) | Self::Mismatch(_) => {
                tracing::info!(reason = error_chain(&self), "token refused");
            }
            Self::CacheFull => tracing::error!("replay cache is full; refusing tokens"),
            Self::Body(_) => tracing::debug!(reason = %self, "request body refused"),
        }

        let (problem, challenge) = match &self {
            Self::Missing => (
                Problem::new(ProblemKind::InvalidToken)
                    .with_detail("this request needs a Midosoc bearer token"),
                Some(r#"Bearer realm="midosoc""#),
            ),
            Self::Invalid(_) => (
                Problem::new(ProblemKind::InvalidToken)
                    .with_detail("the bearer token is invalid or has expired"),
                Some(r#"Bearer realm="midosoc", error="invalid_token""#),
            ),
            Self::Replayed(_) => (
                Problem::new(ProblemKind::TokenReplayed)
                    .with_detail("this token was already used once"),
                Some(r#"Bearer realm="midosoc", error="invalid_token""#),
            ),
            Self::CacheFull => (
                Problem::new(ProblemKind::ApprovalUnavailable)
                    .with_detail("too many tokens in flight; try again shortly"),
                None,
            ),
            Self::Mismatch(what) => (
                Problem::new(ProblemKind::TokenMismatch)
                    .with_detail(format!("the token does not allow this request: {what}")),
                Some(r#"Bearer realm="midosoc", error="insufficient_scope""#),
            ),
            Self::Body(error) => (body_problem(error), None),
        };

        let mut response = problem.into_response::<B>();
        if let Some(challenge) = challenge {
            response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// Lets through only requests carrying a Midosoc token for exactly that
/// request, each token once. See the [module docs](self).
#[derive(Clone)]
pub struct VerifyTokenLayer {
    verifier: Arc<Verifier>,
}

/// What every clone of the service shares, the replay cache above all.
struct Verifier {
    jwks: Jwks,
    issuer: String,
    audience: String,
    body_limit: usize,
    replay: ReplayCache,
}

impl VerifyTokenLayer {
    /// Accepts tokens signed by a key in `jwks`, issued by `issuer` for
    /// `audience`.
    pub fn new(jwks: Jwks, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let verifier = Verifier {
            jwks,
            issuer: issuer.into(),
            audience: audience.into(),
            body_limit: DEFAULT_BODY_LIMIT,
            replay: ReplayCache::new(DEFAULT_REPLAY_CAPACITY),
        };
        Self { verifier: Arc::new(verifier) }
    }

    /// Largest body read to check its digest; a larger one gets `413`.
    /// Defaults to 1 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.update(|v| v.body_limit = bytes);
        self
    }

    /// How many unexpired token ids are remembered. When full, new tokens
    /// are refused with `503` until old ones expire. Defaults to
    /// [`DEFAULT_REPLAY_CAPACITY`].
    pub fn replay_capacity(mut self, capacity: usize) -> Self {
        self.update(|v| v.replay = ReplayCache::new(capacity));
        self
    }

    /// Changes the configuration; called only while building, before any
    /// service shares the verifier.
    fn update(&mut self, change: impl FnOnce(&mut Verifier)) {
        if let Some(verifier) = Arc::get_mut(&mut self.verifier) {
            change(verifier);
        } else {
            let old = &self.verifier;
            let mut fresh = Verifier {
                jwks: old.jwks.clone(),
                issuer: old.issuer.clone(),
                audience: old.audience.clone(),
                body_limit: old.body_limit,
                replay: ReplayCache::new(old.replay.capacity),
            };
            change(&mut fresh);
            self.verifier = Arc::new(fresh);
        }
    }
}

impl<S> Layer<S> for VerifyTokenLayer {
    type Service = VerifyToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        // INVARIANT: every service made by one layer shares one replay
        // cache, so a token used on one route cannot be used on another.
        VerifyToken { inner, verifier: self.verifier.clone() }
    }
}

impl fmt::Debug for VerifyTokenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyTokenLayer").field("verifier", &self.verifier).finish()
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("keys", &self.jwks.keys.len())
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

/// The service made by [`VerifyTokenLayer`].
#[derive(Clone)]
pub struct VerifyToken<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

impl<S: fmt::Debug> fmt::Debug for VerifyToken<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyToken")
            .field("inner", &self.inner)
            .field("verifier", &self.verifier)
            .finish()
    }
}

impl<S, B, ResBody> Service<Request<B>> for VerifyToken<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut ready = mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        ResponseFuture::new(async move {
            match verifier.check(request).await {
                Ok(request) => ready.call(request).await,
                Err(refusal) => Ok(refusal.into_response()),
            }
        })
    }
}

impl Verifier {
    /// Checks the token against this request; the request comes back
    /// with its claims attached.
    async fn check<B>(&self, request: Request<B>) -> Result<Request<B>, Refusal>
    where
        B: Body + From<Bytes>,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();

        // Cheap checks first: an unauthenticated request costs no body read.
        let token = bearer_token(&parts).ok_or(Refusal::Missing)?;
        let claims = self
            .jwks
            .verify(token, &self.issuer, &self.audience)
            .map_err(|error| Refusal::Invalid(error.into()))?;
        if claims.jti.is_empty() {
            return Err(Refusal::Invalid("token has no `jti`".into()));
        }

        let body = read_limited(&parts.headers, body, self.body_limit).await?;
        allows(&claims, &parts, &body).map_err(Refusal::Mismatch)?;

        // Last, so a token tried on the wrong request is not used up.
        let now = OffsetDateTime::now_utc().unix_timestamp();
        self.replay.claim(&claims.jti, claims.exp, now)?;
        tracing::debug!(token.id = %claims.jti, agent.id = %claims.sub, "token accepted");

        parts.extensions.insert(claims);
        Ok(Request::from_parts(parts, B::from(body)))
    }
}

/// The token in `Authorization: Bearer <token>`.
fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the token's authorization details allow this request; if not,
/// which part differs.
fn allows(claims: &Claims, parts: &Parts, body: &[u8]) -> Result<(), &'static str> {
    let [detail] = claims.authorization_details.as_slice() else {
        return Err("it must carry exactly one authorization detail");
    };
    if detail.kind != AUTHORIZATION_DETAILS_TYPE {
        return Err("its authorization detail has another type");
    }

    let read_only = detail.actions.iter().any(|a| a == READ_ACTION);
    let method = &parts.method;
    let method_allowed = detail.actions.iter().any(|a| a.eq_ignore_ascii_case(method.as_str()))
        || (read_only && is_safe(method));
    if !method_allowed {
        return Err("it is for another method");
    }

    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    if !detail.locations.iter().any(|location| path_and_query(location).as_deref() == Some(target))
    {
        return Err("it is for another URL");
    }

    body_allowed(detail, method, body)
}

/// A request body must match the digest the token carries; a token
/// without one only covers methods that change nothing.
fn body_allowed(
    detail: &AuthorizationDetail,
    method: &Method,
    body: &[u8],
) -> Result<(), &'static str> {
    match detail.body_digest {
        Some(digest) if digest == Sha256Digest::of(body) => Ok(()),
        Some(_) => Err("it is for another body"),
        None if is_safe(method) => Ok(()),
        None => Err("it carries no body digest"),
    }
}

/// Methods a read-scoped token covers.
fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The path and query of an absolute URL or of an origin-form target.
fn path_and_query(location: &str) -> Option<String> {
    let uri: Uri = location.parse().ok()?;
    Some(uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned())
}

/// Token ids already used, each kept until its token has expired.
struct ReplayCache {
    seen: Mutex<HashMap<String, i64>>,
    capacity: usize,
}

impl ReplayCache {
    fn new(capacity: usize) -> Self {
        Self { seen: Mutex::new(HashMap::new()), capacity }
    }

    /// Records `jti` as used, or refuses it if it was used before.
    fn claim(&self, jti: &str, exp: i64, now: i64) -> Result<(), Refusal> {
        // A panic elsewhere cannot corrupt a map of plain entries.
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains_key(jti) {
            return Err(Refusal::Replayed(jti.to_owned()));
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, expires| *expires + REPLAY_MARGIN_SECS >= now);
            if seen.len() >= self.capacity {
                return Err(Refusal::CacheFull);
            }
        }
        seen.insert(jti.to_owned(), exp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str) -> Parts {
        Request::builder().method(method).uri(uri).body(()).unwrap().into_parts().0
    }

    fn claims(actions: &[&str], location: &str, body: Option<&[u8]>) -> Claims {
        Claims {
            iss: "iss".into(),
            sub: "agent".into(),
            aud: "aud".into(),
            exp: 0,
            iat: 0,
            nbf: 0,
            jti: "t1".into(),
            act: None,
            authorization_details: vec![AuthorizationDetail {
                kind: AUTHORIZATION_DETAILS_TYPE.into(),
                locations: vec![location.into()],
                actions: actions.iter().map(|a| (*a).to_owned()).collect(),
                body_digest: body.map(Sha256Digest::of),
                approval_id: None,
            }],
        }
    }

    #[test]
    fn approval_token_allows_exactly_its_method_url_and_body() {
        let c = claims(&["DELETE"], "/accounts/7?force=1", Some(b"{}"));
        assert_eq!(allows(&c, &parts("DELETE", "/accounts/7?force=1"), b"{}"), Ok(()));
        let cases = [
            ("POST", "/accounts/7?force=1", &b"{}"[..], "it is for another method"),
            ("DELETE", "/accounts/8?force=1", b"{}", "it is for another URL"),
            ("DELETE", "/accounts/7", b"{}", "it is for another URL"),
            ("DELETE", "/accounts/7?force=1", b"{ }", "it is for another body"),
        ];
        for (method, uri, body, why) in cases {
            assert_eq!(allows(&c, &parts(method, uri), body), Err(why), "{method} {uri}");
        }
    }

    #[test]
    fn absolute_locations_are_compared_by_path_and_query() {
        let c = claims(&["DELETE"], "https://api.example/accounts/7", Some(b""));
        assert_eq!(allows(&c, &parts("DELETE", "/accounts/7"), b""), Ok(()));
    }

    #[test]
    fn read_token_covers_only_methods_that_change_nothing() {
        let c = claims(&["read"], "/accounts/7", None);
        assert_eq!(allows(&c, &parts("GET", "/accounts/7"), b""), Ok(()));
        assert_eq!(allows(&c, &parts("HEAD", "/accounts/7"), b""), Ok(()));
        assert!(allows(&c, &parts("POST", "/accounts/7"), b"").is_err());
        assert!(allows(&c, &parts("DELETE", "/accounts/7"), b"").is_err());
    }

    #[test]
    fn token_with_several_or_foreign_details_is_refused() {
        let mut c = claims(&["GET"], "/", Some(b""));
        c.authorization_details.push(c.authorization_details[0].clone());
        assert!(allows(&c, &parts("GET", "/"), b"").is_err());
        let mut c = claims(&["GET"], "/", Some(b""));
        c.authorization_details[0].kind = "payment".into();
        assert!(allows(&c, &parts("GET", "/"), b"").is_err());
    }

    #[test]
    fn replay_cache_refuses_a_second_use_and_forgets_expired_ids() {
        let cache = ReplayCache::new(2);
        cache.claim("a", 100, 0).unwrap();
        assert!(matches!(cache.claim("a", 100, 0), Err(Refusal::Replayed(_))));
        cache.claim("b", 100, 0).unwrap();
        assert!(matches!(cache.claim("c", 100, 0), Err(Refusal::CacheFull)));
        // Past expiry and margin, old ids make room.
        cache.claim("c", 500, 100 + REPLAY_MARGIN_SECS + 1).unwrap();
    }

    #[test]
    fn bearer_token_is_taken_from_authorization_only() {
        let mut p = parts("GET", "/");
        assert_eq!(bearer_token(&p), None);
        p.headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer_token(&p), Some("abc"));
        p.headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&p), None);
    }
}
