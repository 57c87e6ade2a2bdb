//! [`OAuth2Issuer`]: access tokens from any OAuth 2.0 authorization server,
//! fetched with the client-credentials grant when an action is approved.
//!
//! The issuer posts a form-encoded request to the configured token endpoint
//! (RFC 6749 §4.4) with the audience of the grant, under a parameter whose
//! name is configurable (`resource` as in RFC 8707, `audience` for Auth0),
//! and the grant's scopes. It authenticates with `client_secret_basic` or
//! `client_secret_post`.
//!
//! See [`OAuth2Issuer`] for reuse, rate limits and the security notes.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url, redirect};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing::{Span, debug, instrument};

use super::{BearerToken, Grant, IssueError, IssuedToken, TokenIssuer};

/// Largest token endpoint answer read; a real one is a few kilobytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How long to stay away after a `429` that names no instant.
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// Longest pause a `429` can impose, so one odd header cannot stop minting
/// for hours.
const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(600);

/// Lifetime assumed for a token whose response gave no `expires_in`. Such a
/// token is never reused.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(60);

/// Most (audience, scope) pairs kept for reuse. Pairs come from
/// configuration, so this is only a backstop.
const MAX_REUSE_ENTRIES: usize = 1024;

/// Parameters the audience parameter may not shadow.
const RESERVED_PARAMETERS: &[&str] =
    &["grant_type", "client_id", "client_secret", "scope", "client_assertion"];

/// Why an issuer could not be configured, or why a token endpoint counted
/// as unreachable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OAuth2IssuerError {
    /// The token URL does not parse.
    #[error("token url `{0}` is not a valid absolute url")]
    InvalidTokenUrl(String),
    /// The token URL is plain http on a non-loopback host, or carries
    /// credentials or a fragment.
    #[error("token url `{0}` must be https without credentials (http only on loopback)")]
    InsecureTokenUrl(String),
    /// An Auth0 domain that is neither a host name nor an origin.
    #[error("auth0 domain `{0}` is not a host name or an https origin")]
    InvalidDomain(String),
    /// The client id is empty.
    #[error("client id is empty")]
    EmptyClientId,
    /// The client secret is empty.
    #[error("client secret is empty")]
    EmptySecret,
    /// The audience parameter name is empty or one the grant already uses.
    #[error("audience parameter `{0}` is empty or clashes with a grant parameter")]
    ReservedParameter(String),
    /// A timeout of zero seconds.
    #[error("connect and request timeouts must be at least one second")]
    ZeroTimeout,
    /// The HTTP client could not be built.
    #[error("http client could not be built")]
    HttpClient(#[source] reqwest::Error),
    /// The environment variable meant to hold the secret is unset.
    #[error("environment variable `{0}` holding the client secret is not set")]
    SecretEnvMissing(String),
    /// The file meant to hold the secret could not be read.
    #[error("client secret file `{path}` could not be read")]
    SecretFile {
        /// The file.
        path: String,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The token endpoint answered with a server error.
    #[error("token endpoint answered with status {0}")]
    ServerStatus(u16),
    /// The token endpoint's answer exceeded the size limit.
    #[error("token endpoint answer exceeds {MAX_RESPONSE_BYTES} bytes")]
    ResponseTooLarge,
}

/// An OAuth 2.0 client secret. Its `Debug` never shows the value, it is
/// wiped from memory on drop, and it has no `PartialEq`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ClientSecret(SecretString);

impl ClientSecret {
    /// Wraps a secret value.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(SecretString::from(secret.into()))
    }

    /// Reads the secret from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, OAuth2IssuerError> {
        let value =
            std::env::var(var).map_err(|_| OAuth2IssuerError::SecretEnvMissing(var.to_owned()))?;
        Self::non_empty(value)
    }

    /// Reads the secret from a file, ignoring a trailing line break (as
    /// container secrets and `echo` leave one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, OAuth2IssuerError> {
        let path = path.as_ref();
        let value = std::fs::read_to_string(path).map_err(|source| {
            OAuth2IssuerError::SecretFile { path: path.display().to_string(), source }
        })?;
        Self::non_empty(value.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn non_empty(value: String) -> Result<Self, OAuth2IssuerError> {
        if value.is_empty() {
            return Err(OAuth2IssuerError::EmptySecret);
        }
        Ok(Self::new(value))
    }

    fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// Configuration of an [`OAuth2Issuer`], as it appears in a TOML file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OAuth2IssuerConfig {
    /// The token endpoint: `https`, or `http` on a loopback address.
    pub token_url: String,
    /// The client id registered at the provider.
    pub client_id: String,
    /// The client secret.
    pub client_secret: ClientSecret,
    /// How the client authenticates.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Name of the form parameter carrying the audience: `resource`
    /// (RFC 8707, the default) or `audience` (Auth0 and others).
    #[serde(default = "default_audience_param")]
    pub audience_param: String,
    /// Audience used when a grant names none.
    #[serde(default)]
    pub audience: Option<String>,
    /// Scopes (space separated) used when a grant names none.
    #[serde(default)]
    pub scope: Option<String>,
    /// Whether a token may be handed out again for the same audience and
    /// scope until shortly before it expires.
    #[serde(default = "default_reuse_tokens")]
    pub reuse_tokens: bool,
    /// How long before expiry a token stops being reused.
    #[serde(default = "default_reuse_margin_seconds")]
    pub reuse_margin_seconds: u64,
    /// Time allowed to connect to the token endpoint.
    #[serde(default = "default_connect_timeout_seconds")]
    pub connect_timeout_seconds: u64,
    /// Time allowed for the whole token request.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
}

fn default_audience_param() -> String {
    "resource".to_owned()
}

fn default_reuse_tokens() -> bool {
    true
}

pub(crate) fn default_reuse_margin_seconds() -> u64 {
    30
}

pub(crate) fn default_connect_timeout_seconds() -> u64 {
    5
}

pub(crate) fn default_request_timeout_seconds() -> u64 {
    10
}

impl OAuth2IssuerConfig {
    /// A configuration with the defaults: `client_secret_basic`, audience
    /// sent as `resource`, tokens reused until 30 s before expiry, 5 s to
    /// connect and 10 s per request.
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
    ) -> Self {
        Self {
            token_url: token_url.into(),
            client_id: client_id.into(),
            client_secret,
            client_auth: ClientAuth::default(),
            audience_param: default_audience_param(),
            audience: None,
            scope: None,
            reuse_tokens: default_reuse_tokens(),
            reuse_margin_seconds: default_reuse_margin_seconds(),
            connect_timeout_seconds: default_connect_timeout_seconds(),
            request_timeout_seconds: default_request_timeout_seconds(),
        }
    }
}

/// Whose error conventions the token endpoint follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// RFC 6749 and RFC 8707 error codes.
    Standard,
    /// Auth0's, which also answers `403 access_denied` with a description
    /// that tells a bad secret from an audience the client may not use.
    Auth0,
}

/// Mints tokens by asking an OAuth 2.0 server for them with the
/// client-credentials grant.
///
/// ```no_run
/// use midosoc_core::token::{ClientSecret, Grant, OAuth2Issuer, OAuth2IssuerConfig};
/// use midosoc_core::TokenIssuer;
///
/// # async fn run(grant: Grant) -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = OAuth2IssuerConfig::new(
///     "https://login.example.com/token",
///     "midosoc-gateway",
///     ClientSecret::from_env("MIDOSOC_CLIENT_SECRET")?,
/// );
/// config.audience = Some("https://api.example.com".to_owned());
/// let issuer = OAuth2Issuer::new(config)?;
/// let token = issuer.issue(&grant).await?;
/// # Ok(()) }
/// ```
///
/// # Reuse and rate limits
///
/// Providers meter client-credentials tokens (Auth0 by quota), so with
/// `reuse_tokens` a token is kept per (audience, scope) and handed out again
/// until `reuse_margin_seconds` before it expires. Concurrent approvals for
/// the same pair wait for one request rather than racing. Nothing is fetched
/// ahead of time: a request that passes without approval never causes a
/// token request. A `429` answer is remembered until the instant it names
/// (`Retry-After`, or `X-RateLimit-Reset` as Auth0 sends it), and until then
/// every issue fails fast with [`IssueError::RateLimited`] without touching
/// the network.
///
/// # Why reqwest and not the `oauth2` crate
///
/// The errors Midosoc must tell apart depend on the HTTP status and headers
/// of the answer (`401` against `403`, `Retry-After` on `429`), which the
/// `oauth2` crate folds into its own error type, and its bundled client is
/// an older reqwest. The request itself is a single form post, so it is
/// written here with the workspace's reqwest: redirects off, connect and
/// overall timeouts, a bounded response body.
///
/// # Security
///
/// The client secret is a [`ClientSecret`], which redacts itself in `Debug`
/// and has no `PartialEq`. Tokens travel as [`BearerToken`]s and are never
/// logged; what is logged and returned as `token_id` is the token's `jti`
/// or, for an opaque token, a SHA-256 fingerprint of it.
///
/// # Limitations
///
/// A client-credentials token names the gateway's client as its subject
/// and allows the whole audience and scope, not the single approved action:
/// the grant's agent, analyst and `authorization_details` are not sent.
/// RFC 8693 token exchange (agent as `sub`, analyst as `act`) is not
/// implemented because the test provider has no built-in token-exchange
/// grant and Auth0's is an add-on needing a custom Action to validate the
/// subject token. In proxy mode the token goes only to the upstream, never
/// to the agent, so the approval still covers exactly one request; in
/// action-API mode use the built-in signed-token issuer when a token must
/// be bound to one action.
#[derive(Debug)]
pub struct OAuth2Issuer {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: ClientSecret,
    client_auth: ClientAuth,
    audience_param: String,
    default_audience: Option<String>,
    default_scope: Option<String>,
    /// How long before expiry reuse stops; `None` when reuse is off.
    reuse_margin: Option<Duration>,
    dialect: Dialect,
    reusable: Mutex<HashMap<ReuseKey, Arc<tokio::sync::Mutex<Option<Reusable>>>>>,
    /// Until when the provider asked us to stay away.
    paused_until: Mutex<Option<Instant>>,
}

/// What a token is reused for: the audience and the normalised scopes.
type ReuseKey = (Option<String>, Option<String>);

/// A token kept for reuse, with the instant it stops being valid.
#[derive(Debug)]
struct Reusable {
    token: IssuedToken,
    valid_until: Instant,
}

impl OAuth2Issuer {
    /// Builds an issuer, checking the configuration.
    pub fn new(config: OAuth2IssuerConfig) -> Result<Self, OAuth2IssuerError> {
        Self::with_dialect(config, Dialect::Standard)
    }

    pub(crate) fn with_dialect(
        config: OAuth2IssuerConfig,
        dialect: Dialect,
    ) -> Result<Self, OAuth2IssuerError> {
        let token_url = checked_token_url(&config.token_url)?;
        if config.client_id.is_empty() {
            return Err(OAuth2IssuerError::EmptyClientId);
        }
        if config.client_secret.expose().is_empty() {
            return Err(OAuth2IssuerError::EmptySecret);
        }
        let param = config.audience_param.as_str();
        if param.is_empty() || RESERVED_PARAMETERS.contains(&param) {
            return Err(OAuth2IssuerError::ReservedParameter(config.audience_param));
        }
        if config.connect_timeout_seconds == 0 || config.request_timeout_seconds == 0 {
            return Err(OAuth2IssuerError::ZeroTimeout);
        }

        // SECURITY: no redirects, so a compromised or misconfigured endpoint
        // cannot bounce the client secret to another host.
        let http = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .connect_timeout(Duration::from_secs(config.connect_timeout_seconds))
            .timeout(Duration::from_secs(config.request_timeout_seconds))
            .user_agent(concat!("midosoc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(OAuth2IssuerError::HttpClient)?;

        Ok(Self {
            http,
            token_url,
            client_id: config.client_id,
            client_secret: config.client_secret,
            client_auth: config.client_auth,
            audience_param: config.audience_param,
            default_audience: config.audience,
            default_scope: config.scope,
            reuse_margin: config
                .reuse_tokens
                .then(|| Duration::from_secs(config.reuse_margin_seconds)),
            dialect,
            reusable: Mutex::new(HashMap::new()),
            paused_until: Mutex::new(None),
        })
    }

    /// The token endpoint this issuer posts to.
    pub fn token_url(&self) -> &str {
        self.token_url.as_str()
    }

    /// The slot holding the reusable token for `key`, or `None` when the
    /// table is full.
    fn slot(&self, key: &ReuseKey) -> Option<Arc<tokio::sync::Mutex<Option<Reusable>>>> {
        let mut table = self.reusable.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = table.get(key) {
            return Some(Arc::clone(slot));
        }
        if table.len() >= MAX_REUSE_ENTRIES {
            return None;
        }
        let slot = Arc::new(tokio::sync::Mutex::new(None));
        table.insert(key.clone(), Arc::clone(&slot));
        Some(slot)
    }

    /// Fails fast while a `429` pause is running.
    fn check_pause(&self) -> Result<(), IssueError> {
        let mut paused = self.paused_until.lock().unwrap_or_else(PoisonError::into_inner);
        match *paused {
            Some(until) if until > Instant::now() => {
                Err(IssueError::RateLimited { retry_after: Some(until - Instant::now()) })
            }
            Some(_) => {
                *paused = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait.min(MAX_RATE_LIMIT_PAUSE);
        let mut paused = self.paused_until.lock().unwrap_or_else(PoisonError::into_inner);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// Issues through the reuse table: one request per (audience, scope)
    /// while its token is fresh. A fresh token is handed out even while a
    /// `429` pause runs; only new requests are held back.
    async fn issue_reusing(
        &self,
        audience: Option<&str>,
        scope: Option<&str>,
        margin: Duration,
    ) -> Result<IssuedToken, IssueError> {
        let key = (audience.map(str::to_owned), scope.map(str::to_owned));
        let Some(slot) = self.slot(&key) else {
            self.check_pause()?;
            return self.fetch(audience, scope).await.map(|(token, _)| token);
        };

        // Concurrent approvals for the same pair queue here, so only the
        // first of them asks the provider.
        let mut kept = slot.lock().await;
        if let Some(reusable) = kept.as_ref()
            && Instant::now() + margin < reusable.valid_until
        {
            Span::current().record("token.reused", true);
            debug!(token.id = %reusable.token.token_id, "access token reused");
            return Ok(reusable.token.clone());
        }

        self.check_pause()?;
        let (token, lifetime) = self.fetch(audience, scope).await?;
        *kept = lifetime.map(|lifetime| Reusable {
            token: token.clone(),
            valid_until: Instant::now() + lifetime,
        });
        Ok(token)
    }

    /// Asks the token endpoint for a token. Returns it with its lifetime,
    /// when the endpoint said.
    async fn fetch(
        &self,
        audience: Option<&str>,
        scope: Option<&str>,
    ) -> Result<(IssuedToken, Option<Duration>), IssueError> {
        // LIMITATION: the grant's agent, analyst and authorization details
        // are not sent, so the token allows the audience and scope, not the
        // one action; see the Limitations section of `OAuth2Issuer`.
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(audience) = audience {
            form.push((self.audience_param.as_str(), audience));
        }
        if let Some(scope) = scope {
            form.push(("scope", scope));
        }

        let mut request = self.http.post(self.token_url.clone()).header(ACCEPT, "application/json");
        match self.client_auth {
            ClientAuth::ClientSecretBasic => {
                let id = form_encode(&self.client_id);
                let secret = form_encode(self.client_secret.expose());
                request = request.basic_auth(id, Some(secret));
            }
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", self.client_id.as_str()));
                form.push(("client_secret", self.client_secret.expose()));
            }
        }

        let response = request.form(&form).send().await.map_err(|error| {
            debug!(error = %error, "token endpoint unreachable");
            IssueError::Unreachable(Box::new(error))
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_bounded(response).await?;

        if status.is_success() {
            return parse_token(&body);
        }
        let failure = ErrorBody::parse(&body);
        debug!(
            http.status = status.as_u16(),
            oauth2.error = %failure.error,
            "token endpoint refused the request",
        );
        let error = map_failure(self.dialect, status, &failure, audience, &headers);
        if let IssueError::RateLimited { retry_after } = &error {
            self.pause(retry_after.unwrap_or(DEFAULT_RATE_LIMIT_PAUSE));
        }
        Err(error)
    }
}

#[async_trait]
impl TokenIssuer for OAuth2Issuer {
    #[instrument(skip_all, fields(
        oauth2.client_id = %self.client_id,
        oauth2.audience = tracing::field::Empty,
        approval.id = tracing::field::Empty,
        token.reused = false,
    ))]
    async fn issue(&self, grant: &Grant) -> Result<IssuedToken, IssueError> {
        let span = Span::current();
        if let Some(id) = &grant.detail.approval_id {
            span.record("approval.id", tracing::field::display(id));
        }
        let audience = grant.audience.as_deref().or(self.default_audience.as_deref());
        if let Some(audience) = audience {
            span.record("oauth2.audience", audience);
        }
        let scope = normalise_scope(grant.scope.as_deref().or(self.default_scope.as_deref()));

        let token = match self.reuse_margin {
            Some(margin) => self.issue_reusing(audience, scope.as_deref(), margin).await?,
            None => {
                self.check_pause()?;
                self.fetch(audience, scope.as_deref()).await?.0
            }
        };
        debug!(token.id = %token.token_id, "access token issued");
        Ok(token)
    }
}

/// Checks a token URL: absolute, https (or http on loopback), no
/// credentials, no fragment.
fn checked_token_url(raw: &str) -> Result<Url, OAuth2IssuerError> {
    let url = Url::parse(raw).map_err(|_| OAuth2IssuerError::InvalidTokenUrl(raw.to_owned()))?;
    let Some(host) = url.host_str() else {
        return Err(OAuth2IssuerError::InvalidTokenUrl(raw.to_owned()));
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let secure = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    let clean = url.username().is_empty() && url.password().is_none() && url.fragment().is_none();
    if !secure || !clean {
        return Err(OAuth2IssuerError::InsecureTokenUrl(raw.to_owned()));
    }
    Ok(url)
}

/// Sorts and de-duplicates scopes so that `b a` and `a b` share a token.
fn normalise_scope(scope: Option<&str>) -> Option<String> {
    let mut scopes: Vec<&str> = scope?.split_ascii_whitespace().collect();
    scopes.sort_unstable();
    scopes.dedup();
    (!scopes.is_empty()).then(|| scopes.join(" "))
}

/// The `application/x-www-form-urlencoded` form of a client id or secret,
/// as RFC 6749 §2.3.1 requires inside HTTP Basic credentials.
fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Reads at most [`MAX_RESPONSE_BYTES`] of a response body.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, IssueError> {
    let mut body = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|error| IssueError::Unreachable(Box::new(error)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(IssueError::Unreachable(Box::new(OAuth2IssuerError::ResponseTooLarge)));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

fn parse_token(body: &[u8]) -> Result<(IssuedToken, Option<Duration>), IssueError> {
    let response: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| IssueError::Rejected("malformed token response".to_owned()))?;
    if !response.token_type.eq_ignore_ascii_case("bearer") {
        return Err(IssueError::Rejected(format!(
            "unsupported token type `{}`",
            printable(&response.token_type)
        )));
    }
    if response.access_token.is_empty() {
        return Err(IssueError::Rejected("empty access token".to_owned()));
    }

    let lifetime = response.expires_in.map(Duration::from_secs);
    let token = IssuedToken {
        token_id: token_id(&response.access_token),
        expires_at: OffsetDateTime::now_utc() + lifetime.unwrap_or(ASSUMED_LIFETIME),
        token: BearerToken::new(response.access_token),
    };
    Ok((token, lifetime))
}

/// A recordable id for a token: its `jti` when it is a JWT that has one,
/// otherwise a fingerprint that cannot be turned back into the token.
fn token_id(token: &str) -> String {
    #[derive(Deserialize)]
    struct WithJti {
        jti: String,
    }

    let jti = token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<WithJti>(&json).ok())
        .map(|claims| claims.jti)
        .filter(|jti| !jti.is_empty() && jti.len() <= 128);
    jti.unwrap_or_else(|| {
        let digest = Sha256::digest(token.as_bytes());
        format!("sha256:{}", hex::encode(&digest[..12]))
    })
}

/// An error response (RFC 6749 §5.2); fields default to empty when the
/// body is not one.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl ErrorBody {
    fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// Turns a refusal into the outcome callers act on.
fn map_failure(
    dialect: Dialect,
    status: StatusCode,
    body: &ErrorBody,
    audience: Option<&str>,
    headers: &HeaderMap,
) -> IssueError {
    let audience = || audience.unwrap_or("<provider default>").to_owned();
    let description = body.error_description.as_str();

    if status == StatusCode::TOO_MANY_REQUESTS || body.error == "too_many_requests" {
        let wait = retry_after(headers, SystemTime::now()).map(|d| d.min(MAX_RATE_LIMIT_PAUSE));
        return IssueError::RateLimited { retry_after: wait };
    }
    if status.is_server_error() {
        let error = OAuth2IssuerError::ServerStatus(status.as_u16());
        return IssueError::Unreachable(Box::new(error));
    }
    if body.error == "invalid_client" || status == StatusCode::UNAUTHORIZED {
        return IssueError::InvalidClient;
    }
    if body.error == "invalid_target" {
        return IssueError::AudienceNotAllowed(audience());
    }
    if dialect == Dialect::Auth0 && body.error == "access_denied" {
        if description == "Unauthorized" {
            return IssueError::InvalidClient;
        }
        if description.starts_with("Client is not authorized to access")
            || description.starts_with("Service not enabled within domain")
        {
            return IssueError::AudienceNotAllowed(audience());
        }
    }

    let code = if body.error.is_empty() { "no error code" } else { body.error.as_str() };
    let mut reason = format!("status {}, `{}`", status.as_u16(), printable(code));
    if !description.is_empty() {
        reason.push_str(": ");
        reason.push_str(&printable(description));
    }
    IssueError::Rejected(reason)
}

/// How long a `429` asks us to wait: `Retry-After` in seconds or as an
/// HTTP date, else `X-RateLimit-Reset` in seconds since the epoch.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok()).map(str::trim);

    if let Some(value) = header(RETRY_AFTER.as_str()) {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(when) = httpdate::parse_http_date(value) {
            return Some(when.duration_since(now).unwrap_or_default());
        }
    }
    let reset = header("x-ratelimit-reset")?.parse::<u64>().ok()?;
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(reset);
    Some(when.duration_since(now).unwrap_or_default())
}

/// Text from the provider made safe for an error message: one line, no
/// control characters, at most 200 characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_rate_limit_reset() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let check = |pairs: &[(&'static str, &str)], expected: Option<u64>| {
            let got = retry_after(&headers(pairs), now).map(|d| d.as_secs());
            assert_eq!(got, expected, "{pairs:?}");
        };

        check(&[("retry-after", "7")], Some(7));
        check(&[("retry-after", " 12 ")], Some(12));
        check(&[("retry-after", "Tue, 14 Nov 2023 22:13:27 GMT")], Some(7));
        check(&[("retry-after", "Mon, 13 Nov 2023 00:00:00 GMT")], Some(0));
        check(&[("x-ratelimit-reset", "1700000030")], Some(30));
        check(&[("x-ratelimit-reset", "1600000000")], Some(0));
        check(&[("retry-after", "3"), ("x-ratelimit-reset", "1700000030")], Some(3));
        check(&[("retry-after", "soon"), ("x-ratelimit-reset", "1700000005")], Some(5));
        check(&[], None);
    }

    #[test]
    fn token_urls_must_be_https_except_on_loopback() {
        let ok = |url: &str| assert!(checked_token_url(url).is_ok(), "{url}");
        let bad = |url: &str| assert!(checked_token_url(url).is_err(), "{url}");

        ok("https://login.example.com/oauth/token");
        ok("http://127.0.0.1:8080/token");
        ok("http://[::1]:8080/token");
        ok("http://localhost/token");
        bad("http://login.example.com/token");
        bad("https://user:pass@login.example.com/token");
        bad("https://login.example.com/token#frag");
        bad("ftp://login.example.com/token");
        bad("/token");
    }

    #[test]
    fn scopes_are_sorted_and_deduplicated() {
        assert_eq!(normalise_scope(Some("b a  b")), Some("a b".to_owned()));
        assert_eq!(normalise_scope(Some("  ")), None);
        assert_eq!(normalise_scope(None), None);
    }

    #[test]
    fn token_id_is_the_jti_or_a_fingerprint() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"jti":"abc123","sub":"x"}"#);
        assert_eq!(token_id(&format!("e30.{payload}.sig")), "abc123");

        let opaque = token_id("opaque-token-value");
        assert!(opaque.starts_with("sha256:"));
        assert!(!opaque.contains("opaque-token-value"));
    }

    #[test]
    fn client_secret_debug_is_redacted() {
        let secret = ClientSecret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "ClientSecret(<redacted>)");
    }

    #[test]
    fn secret_file_loses_its_trailing_line_break() {
        let path = std::env::temp_dir().join(format!("midosoc-secret-{}", uuid::Uuid::now_v7()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = ClientSecret::from_file(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(secret.expose(), "s3cret");
    }

    #[test]
    fn config_reads_from_toml_with_defaults() {
        let config: OAuth2IssuerConfig = toml::from_str(
            r#"
            token_url = "https://login.example.com/token"
            client_id = "gateway"
            client_secret = "xyz"
            client_auth = "client_secret_post"
            audience_param = "audience"
            "#,
        )
        .unwrap();
        assert_eq!(config.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(config.audience_param, "audience");
        assert!(config.reuse_tokens);
        assert_eq!(config.request_timeout_seconds, 10);
        assert!(!format!("{config:?}").contains("xyz"));

        let unknown = toml::from_str::<OAuth2IssuerConfig>(
            "token_url = \"https://a/t\"\nclient_id = \"c\"\nclient_secret = \"s\"\nsecret = \"s\"",
        );
        assert!(unknown.is_err(), "unknown keys are refused");
    }

    #[test]
    fn audience_parameter_cannot_shadow_the_grant() {
        for name in ["", "client_secret", "grant_type", "scope"] {
            let mut config =
                OAuth2IssuerConfig::new("https://a/t", "client", ClientSecret::new("s"));
            config.audience_param = name.to_owned();
            let error = OAuth2Issuer::new(config).unwrap_err();
            assert!(matches!(error, OAuth2IssuerError::ReservedParameter(_)), "{name}");
        }
    }

    #[test]
    fn refusals_map_to_outcomes() {
        let none = HeaderMap::new();
        let check = |dialect, status: u16, error: &str, description: &str, expected: &str| {
            let body =
                ErrorBody { error: error.to_owned(), error_description: description.to_owned() };
            let status = StatusCode::from_u16(status).unwrap();
            let got = map_failure(dialect, status, &body, Some("https://api"), &none);
            assert_eq!(format!("{got:?}"), expected, "{status} {error} {description}");
        };
        use Dialect::{Auth0, Standard};

        check(Standard, 401, "invalid_client", "", "InvalidClient");
        check(Standard, 400, "invalid_client", "", "InvalidClient");
        check(Standard, 400, "invalid_target", "", r#"AudienceNotAllowed("https://api")"#);
        check(Standard, 429, "", "", "RateLimited { retry_after: None }");
        check(Standard, 503, "", "", "Unreachable(ServerStatus(503))");
        check(
            Standard,
            400,
            "invalid_scope",
            "bad\nscope",
            r#"Rejected("status 400, `invalid_scope`: badscope")"#,
        );
        check(Auth0, 403, "access_denied", "Unauthorized", "InvalidClient");
        check(
            Auth0,
            403,
            "access_denied",
            "Client is not authorized to access \"https://api\".",
            r#"AudienceNotAllowed("https://api")"#,
        );
        check(
            Auth0,
            403,
            "access_denied",
            "Service not enabled within domain: https://api",
            r#"AudienceNotAllowed("https://api")"#,
        );
        check(
            Auth0,
            403,
            "unauthorized_client",
            "Grant type 'client_credentials' not allowed for the client.",
            concat!(
                r#"Rejected("status 403, `unauthorized_client`: "#,
                r#"Grant type 'client_credentials' not allowed for the client.")"#,
            ),
        );
        check(
            Standard,
            403,
            "access_denied",
            "Unauthorized",
            r#"Rejected("status 403, `access_denied`: Unauthorized")"#,
        );
    }
}
