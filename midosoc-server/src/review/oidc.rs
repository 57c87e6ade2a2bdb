//! Analyst sign-in with OpenID Connect: the authorization code flow with
//! PKCE against any provider found by issuer discovery (Auth0 included),
//! roles from a configured claim, and sign-out at the provider.
//!
//! The flow, as the browser sees it:
//!
//! 1. `GET /auth/login` remembers a fresh `state`, `nonce` and PKCE
//!    verifier server-side under a random id, sets that id in a short-lived
//!    pre-login cookie, and redirects to the provider's authorization
//!    endpoint with the S256 code challenge.
//! 2. The provider signs the analyst in and sends the browser to
//!    `GET /auth/callback?code=…&state=…&iss=…`.
//! 3. The callback takes the sign-in attempt named by the cookie (once:
//!    the attempt is gone afterwards), checks `state` and `iss`, redeems the
//!    code with the verifier, validates the ID token (signature against the
//!    provider's JWKS, `iss`, `aud`, `exp`, `nonce`), maps a claim to a role,
//!    and starts a fresh session (new id) for the analyst.
//! 4. Signing out ends the session here and sends the browser to the
//!    provider's end-session endpoint with `id_token_hint` and
//!    `post_logout_redirect_uri`.
//!
//! # Security
//!
//! - Being signed in at the provider gives no access by itself: an analyst
//!   whose claims match no configured role is refused with a page saying
//!   so, and no session is created.
//! - `state` binds the callback to the browser that started the sign-in
//!   (its pre-login cookie), so a code from someone else's sign-in cannot
//!   be planted; the `nonce` binds the ID token to that same attempt; PKCE
//!   binds the code. Each attempt works once and for ten minutes.
//! - ID tokens must be signed with an asymmetric algorithm the provider
//!   advertises; `none` and HMAC are refused.
//! - The client secret, codes, tokens, `state` and `nonce` are never
//!   logged. The ID token is kept in the server-side session only to name
//!   the session at sign-out.

// LIMITATION: sign-in attempts live in this gateway's memory, like the
// sessions they lead to: behind a load balancer, `/auth/login` and
// `/auth/callback` must reach the same instance (sticky sessions), or the
// callback finds no attempt and the analyst is asked to start again. A
// restart loses attempts in flight the same way; nothing is let in.
//
// LIMITATION: the role is mapped once, at sign-in, and kept for the
// session (at most its 12 hours): a role removed at the provider takes
// effect at the next sign-in. The userinfo endpoint is not called, so the
// role claim must be in the ID token, at its top level.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::url::{self, Url};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthType, AuthorizationCode, ClientId,
    ClientSecret, CsrfToken, EndSessionUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet,
    HttpRequest, HttpResponse, IdToken, IdTokenClaims, IssuerUrl, LogoutProviderMetadata,
    LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    PostLogoutRedirectUrl, ProviderMetadata, RedirectUrl, RequestTokenError, Scope, TokenResponse,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use tower_sessions::Session;
use tower_sessions::cookie::{Cookie, SameSite};
use utoipa::ToSchema;

use super::Shared;
use crate::config::{Secret, SecretSource};
use crate::identity::{AnalystAccount, Role};

/// Path of the sign-in start.
pub(super) const LOGIN_PATH: &str = "/auth/login";

/// Path of the callback the provider redirects to.
pub(super) const CALLBACK_PATH: &str = "/auth/callback";

/// The pre-login cookie's name when it is `Secure`.
const SECURE_LOGIN_COOKIE: &str = "__Host-midosoc_login";

/// The pre-login cookie's name on a loopback development setup.
const DEV_LOGIN_COOKIE: &str = "midosoc_login";

/// How long a sign-in attempt may take at the provider.
const LOGIN_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Most sign-in attempts kept at once. Starting one needs no credential,
/// so the table is bounded; past this, new attempts are refused until old
/// ones expire.
const MAX_PENDING_LOGINS: usize = 10_000;

/// How long discovered provider metadata (and its JWKS) is used before it
/// is fetched again.
const METADATA_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Time allowed to connect to the provider, and for one whole request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest provider answer read (discovery, JWKS, token response).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Longest provider error text shown on a page.
const ERROR_TEXT_LIMIT: usize = 200;

/// ID token signing algorithms accepted: asymmetric ones only.
const ALLOWED_ALGORITHMS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Why sign-in with the provider failed, or why its configuration is
/// unusable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OidcError {
    /// A configuration key has a value that cannot work.
    #[error("invalid value for `review.oidc.{key}`: {problem}")]
    Config {
        /// The key under `review.oidc`.
        key: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The provider could not be reached or did not answer in time.
    #[error("identity provider unreachable")]
    Http(#[source] reqwest::Error),
    /// The provider's answer exceeded the size limit.
    #[error("identity provider answer exceeds {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// Discovery failed: no metadata, bad metadata, or an issuer that does
    /// not match the configured one.
    #[error("identity provider discovery failed")]
    Discovery(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Too many sign-in attempts are in progress.
    #[error("too many sign-ins in progress")]
    Busy,
    /// The callback names no sign-in attempt this server knows: none was
    /// started in this browser, it expired, or it was used already.
    #[error("sign-in attempt unknown, expired or already used")]
    UnknownAttempt,
    /// The callback's `state` is not the attempt's.
    #[error("`state` does not match the sign-in attempt")]
    StateMismatch,
    /// The callback's `iss` names another issuer (RFC 9207).
    #[error("`iss` does not name the configured issuer")]
    IssuerMismatch,
    /// The provider advertises `iss` in callbacks but sent none.
    #[error("callback lacks the `iss` parameter the provider promises")]
    IssuerMissing,
    /// The provider answered the authorization request with an error.
    #[error("identity provider refused the sign-in with `{0}`")]
    Refused(String),
    /// The callback carries neither a code nor an error.
    #[error("callback carries no authorization code")]
    MissingCode,
    /// The token endpoint refused the code.
    #[error("token endpoint refused the code with `{0}`")]
    CodeRefused(String),
    /// The token endpoint's answer was not a usable token response.
    #[error("token endpoint answer unusable: {0}")]
    TokenResponse(String),
    /// The token response holds no ID token.
    #[error("token response holds no id token")]
    NoIdToken,
    /// The ID token does not parse.
    #[error("id token is malformed")]
    MalformedIdToken,
    /// The ID token failed validation.
    #[error("id token refused")]
    IdToken(#[source] openidconnect::ClaimsVerificationError),
    /// The analyst's claims match no configured role.
    #[error("no role is configured for `{0}`")]
    NoRole(String),
}

// ---- Configuration ---------------------------------------------------------

/// `[review.oidc]`: analyst sign-in with an OpenID provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OidcConfig {
    /// The issuer URL, exactly as the provider writes it in `iss` (Auth0:
    /// `https://TENANT.eu.auth0.com/`, with the trailing slash).
    pub(crate) issuer: String,
    /// The client id of the dashboard's application.
    pub(crate) client_id: String,
    /// Where its client secret comes from.
    pub(crate) client_secret: SecretSource,
    /// How the client authenticates at the token endpoint.
    #[serde(default)]
    pub(crate) client_auth: OidcClientAuth,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes")]
    pub(crate) scopes: Vec<String>,
    /// The callback URL registered at the provider; unset means the
    /// review listener's public URL followed by `/auth/callback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) redirect_url: Option<String>,
    /// Where the provider sends the browser after sign-out; unset means
    /// the dashboard's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) post_logout_redirect_url: Option<String>,
    /// The provider's name on the sign-in button.
    #[serde(default = "default_display_name")]
    pub(crate) display_name: String,
    /// Who gets which role.
    #[serde(default)]
    pub(crate) roles: RoleMapping,
}

/// How the dashboard client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OidcClientAuth {
    /// HTTP Basic (the OpenID default).
    #[default]
    ClientSecretBasic,
    /// Id and secret in the form body (Auth0's default).
    ClientSecretPost,
}

/// `[review.oidc.roles]`: which claim values and email domains give which
/// role. The most powerful matching role wins; no match, no access.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RoleMapping {
    /// The ID token claim holding the analyst's roles or groups: a string
    /// or a list of strings, such as `https://midosoc.dev/roles`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) claim: Option<String>,
    /// Claim values that make a viewer.
    pub(crate) viewer: Vec<String>,
    /// Claim values that make an approver.
    pub(crate) approver: Vec<String>,
    /// Claim values that make an admin.
    pub(crate) admin: Vec<String>,
    /// Verified email domains, by role.
    pub(crate) email_domains: EmailDomains,
}

/// `[review.oidc.roles.email_domains]`: verified email domains by role.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EmailDomains {
    /// Domains whose people are viewers.
    pub(crate) viewer: Vec<String>,
    /// Domains whose people are approvers.
    pub(crate) approver: Vec<String>,
    /// Domains whose people are admins.
    pub(crate) admin: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["profile".to_owned(), "email".to_owned()]
}

fn default_display_name() -> String {
    "single sign-on".to_owned()
}

impl OidcConfig {
    /// Checks what types alone cannot, reading the secret once.
    pub(crate) fn check(&self) -> Result<(), OidcError> {
        issuer_url(&self.issuer)?;
        if self.client_id.is_empty() {
            return Err(config_error("client_id", "must not be empty"));
        }
        self.secret()?;
        for (key, url) in [
            ("redirect_url", &self.redirect_url),
            ("post_logout_redirect_url", &self.post_logout_redirect_url),
        ] {
            if let Some(url) = url {
                web_url(key, url)?;
            }
        }
        self.roles.check()
    }

    fn secret(&self) -> Result<Secret, OidcError> {
        self.client_secret
            .read("review.oidc.client_secret")
            .map_err(|e| config_error("client_secret", e.to_string()))
    }
}

impl RoleMapping {
    fn check(&self) -> Result<(), OidcError> {
        let by_claim = [&self.viewer, &self.approver, &self.admin];
        let claim_values = by_claim.iter().any(|list| !list.is_empty());
        let domains = &self.email_domains;
        let domain_lists = [&domains.viewer, &domains.approver, &domains.admin];
        if !claim_values && domain_lists.iter().all(|list| list.is_empty()) {
            return Err(config_error(
                "roles",
                "map at least one claim value or email domain to `viewer`, `approver` or \
                 `admin`; being signed in at the provider gives no role by itself",
            ));
        }
        if claim_values && self.claim.as_deref().is_none_or(str::is_empty) {
            return Err(config_error(
                "roles.claim",
                "name the claim holding the values, such as `https://midosoc.dev/roles`",
            ));
        }
        let bad_domain = domain_lists
            .iter()
            .flat_map(|list| list.iter())
            .find(|d| d.is_empty() || d.contains('@') || d.contains(char::is_whitespace));
        if let Some(domain) = bad_domain {
            return Err(config_error(
                "roles.email_domains",
                format!("`{domain}` is not a domain; write `example.com`"),
            ));
        }
        Ok(())
    }

    /// The most powerful role `claims` earn, if any.
    fn role_for(&self, claims: &SignInClaims) -> Option<Role> {
        let values = self.claim.as_deref().map(|c| claims.values_of(c)).unwrap_or_default();
        let domain = claims.verified_email_domain();
        let lists = [
            (Role::Admin, &self.admin, &self.email_domains.admin),
            (Role::Approver, &self.approver, &self.email_domains.approver),
            (Role::Viewer, &self.viewer, &self.email_domains.viewer),
        ];
        lists.into_iter().find_map(|(role, by_claim, by_domain)| {
            let claimed = by_claim.iter().any(|v| values.contains(v));
            let in_domain = domain
                .as_deref()
                .is_some_and(|d| by_domain.iter().any(|x| x.eq_ignore_ascii_case(d)));
            (claimed || in_domain).then_some(role)
        })
    }
}

fn config_error(key: &'static str, problem: impl Into<String>) -> OidcError {
    OidcError::Config { key, problem: problem.into() }
}

/// The issuer URL: `https`, or `http` on a loopback address.
fn issuer_url(issuer: &str) -> Result<IssuerUrl, OidcError> {
    let url = IssuerUrl::new(issuer.to_owned())
        .map_err(|_| config_error("issuer", format!("`{issuer}` is not a URL")))?;
    let parsed = url.url();
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    let secure = parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback);
    if !secure || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(config_error(
            "issuer",
            format!("`{issuer}` must be https without query or fragment (http only on loopback)"),
        ));
    }
    Ok(url)
}

/// An absolute http(s) URL the browser is sent to.
fn web_url(key: &'static str, url: &str) -> Result<Url, OidcError> {
    let parsed = Url::parse(url)
        .map_err(|_| config_error(key, format!("`{url}` is not an absolute URL")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.fragment().is_some() {
        return Err(config_error(key, format!("`{url}` must be http(s) without a fragment")));
    }
    Ok(parsed)
}

// ---- The provider ----------------------------------------------------------

/// Provider metadata Midosoc reads beyond the core set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct CallbackMetadata {
    /// RFC 9207: the provider puts `iss` into every authorization response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authorization_response_iss_parameter_supported: Option<bool>,
}

impl AdditionalProviderMetadata for CallbackMetadata {}

type Metadata = ProviderMetadata<
    LogoutProviderMetadata<CallbackMetadata>,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// A client for a discovered provider: authorization endpoint known,
/// token and userinfo endpoints as the metadata says.
type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Every claim of an ID token beyond the standard ones, kept to read the
/// configured role claim.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct ExtraClaims {
    #[serde(flatten)]
    claims: Map<String, Value>,
}

impl AdditionalClaims for ExtraClaims {}

/// An ID token with its extra claims.
type RawIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// What discovery found, and when.
#[derive(Debug)]
struct Provider {
    client: Client,
    end_session: Option<EndSessionUrl>,
    /// Whether callbacks must carry `iss`.
    iss_in_callback: bool,
    fetched: Instant,
}

/// One sign-in attempt between `/auth/login` and `/auth/callback`.
pub(super) struct PendingLogin {
    state: CsrfToken,
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    started: Instant,
}

impl fmt::Debug for PendingLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogin").field("started", &self.started).finish_non_exhaustive()
    }
}

/// The callback's query parameters.
#[derive(Debug, Default, Deserialize)]
pub(super) struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The analyst an ID token names.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct SignedIn {
    /// The provider's `sub`.
    pub(super) sub: String,
    /// A readable name: `name`, else `email`, else `preferred_username`.
    pub(super) name: String,
    /// The role the configured mapping gave.
    pub(super) role: String,
    /// The ID token, for `id_token_hint` at sign-out.
    pub(super) id_token: String,
}

impl SignedIn {
    /// The analyst as an account, if the stored role still parses.
    pub(super) fn account(&self) -> Option<AnalystAccount> {
        let role = self.role.parse().ok()?;
        Some(AnalystAccount { id: self.sub.clone(), name: self.name.clone(), role })
    }
}

impl fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedIn")
            .field("sub", &self.sub)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The claims a role is decided from.
struct SignInClaims<'a> {
    claims: &'a IdTokenClaims<ExtraClaims, CoreGenderClaim>,
}

impl SignInClaims<'_> {
    /// The values of claim `name`: a string, or the strings of a list.
    fn values_of(&self, name: &str) -> Vec<String> {
        match self.claims.additional_claims().claims.get(name) {
            Some(Value::String(value)) => vec![value.clone()],
            Some(Value::Array(values)) => {
                values.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The domain of the email address, when the provider verified it.
    fn verified_email_domain(&self) -> Option<String> {
        if self.claims.email_verified() != Some(true) {
            return None;
        }
        let email = self.claims.email()?.as_str();
        let (_, domain) = email.rsplit_once('@')?;
        Some(domain.to_ascii_lowercase())
    }

    /// `name`, else `email`, else `preferred_username`, else `sub`.
    fn readable_name(&self) -> String {
        let claims = self.claims;
        claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned())
            .or_else(|| claims.email().map(|e| e.as_str().to_owned()))
            .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()))
            .unwrap_or_else(|| claims.subject().as_str().to_owned())
    }
}

/// Sign-in with one OpenID provider.
pub(crate) struct OidcSignIn {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: ClientSecret,
    auth_type: AuthType,
    redirect_url: RedirectUrl,
    post_logout_url: PostLogoutRedirectUrl,
    scopes: Vec<Scope>,
    roles: RoleMapping,
    display_name: String,
    login_cookie: &'static str,
    secure: bool,
    http: reqwest::Client,
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
    pending: Mutex<HashMap<String, PendingLogin>>,
}

impl fmt::Debug for OidcSignIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcSignIn")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id.as_str())
            .field("redirect_url", &self.redirect_url.as_str())
            .finish_non_exhaustive()
    }
}

impl OidcSignIn {
    /// Sign-in as `config` describes it, for a dashboard at `review_url`
    /// (no trailing slash). `secure` marks the pre-login cookie `Secure`.
    pub(crate) fn new(
        config: &OidcConfig,
        review_url: &str,
        secure: bool,
    ) -> Result<Self, OidcError> {
        config.check()?;
        let redirect = match &config.redirect_url {
            Some(url) => url.clone(),
            None => format!("{review_url}{CALLBACK_PATH}"),
        };
        let redirect_url =
            RedirectUrl::new(redirect).map_err(|e| config_error("redirect_url", e.to_string()))?;
        let post_logout = match &config.post_logout_redirect_url {
            Some(url) => url.clone(),
            None => format!("{review_url}/"),
        };
        let post_logout_url = PostLogoutRedirectUrl::new(post_logout)
            .map_err(|e| config_error("post_logout_redirect_url", e.to_string()))?;

        // SECURITY: no redirects, so discovery and the token request never
        // follow a provider's answer (and the client secret) elsewhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("midosoc/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(OidcError::Http)?;

        let scopes = config
            .scopes
            .iter()
            .filter(|s| s.as_str() != "openid")
            .map(|s| Scope::new(s.clone()))
            .collect();
        Ok(Self {
            issuer: issuer_url(&config.issuer)?,
            client_id: ClientId::new(config.client_id.clone()),
            client_secret: ClientSecret::new(config.secret()?.expose().to_owned()),
            auth_type: match config.client_auth {
                OidcClientAuth::ClientSecretBasic => AuthType::BasicAuth,
                OidcClientAuth::ClientSecretPost => AuthType::RequestBody,
            },
            redirect_url,
            post_logout_url,
            scopes,
            roles: config.roles.clone(),
            display_name: config.display_name.clone(),
            login_cookie: if secure { SECURE_LOGIN_COOKIE } else { DEV_LOGIN_COOKIE },
            secure,
            http,
            provider: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// The provider's metadata and keys, discovered at first use and again
    /// once they are older than [`METADATA_LIFETIME`] or `refresh` is set.
    async fn provider(&self, refresh: bool) -> Result<Arc<Provider>, OidcError> {
        let mut cached = self.provider.lock().await;
        if let Some(provider) = cached.as_ref()
            && !refresh
            && provider.fetched.elapsed() < METADATA_LIFETIME
        {
            return Ok(provider.clone());
        }

        let http = |request| send(self.http.clone(), request);
        let metadata = Metadata::discover_async(self.issuer.clone(), &http)
            .await
            .map_err(|e| OidcError::Discovery(Box::new(e)))?;
        let logout = metadata.additional_metadata();
        let end_session = logout.end_session_endpoint.clone();
        let iss_in_callback =
            logout.additional_metadata.authorization_response_iss_parameter_supported == Some(true);
        let client = CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            Some(self.client_secret.clone()),
        )
        .set_redirect_uri(self.redirect_url.clone())
        .set_auth_type(self.auth_type.clone());

        let provider =
            Arc::new(Provider { client, end_session, iss_in_callback, fetched: Instant::now() });
        *cached = Some(provider.clone());
        tracing::debug!(oidc.issuer = %self.issuer.as_str(), "provider metadata discovered");
        Ok(provider)
    }

    /// Starts a sign-in: the authorization URL to send the browser to, and
    /// the id of the attempt for the pre-login cookie.
    pub(super) async fn begin(&self) -> Result<(Url, String), OidcError> {
        let provider = self.provider(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = provider
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(challenge)
            .url();

        let id = random_id();
        let attempt = PendingLogin { state, nonce, verifier, started: Instant::now() };
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|_, p| p.started.elapsed() < LOGIN_LIFETIME);
        if pending.len() >= MAX_PENDING_LOGINS {
            return Err(OidcError::Busy);
        }
        pending.insert(id.clone(), attempt);
        Ok((url, id))
    }

    /// Takes the sign-in attempt `id` names; it cannot be taken twice.
    pub(super) fn take_attempt(&self, id: &str) -> Option<PendingLogin> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let attempt = pending.remove(id)?;
        (attempt.started.elapsed() < LOGIN_LIFETIME).then_some(attempt)
    }

    /// Finishes a sign-in: checks the callback against its attempt, redeems
    /// the code and validates the ID token. The analyst's role comes from
    /// the configured mapping.
    pub(super) async fn finish(
        &self,
        attempt: PendingLogin,
        params: CallbackParams,
    ) -> Result<SignedIn, OidcError> {
        let state = params.state.as_deref().unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(attempt.state.secret().as_bytes())) {
            return Err(OidcError::StateMismatch);
        }
        let provider = self.provider(false).await?;
        self.check_iss(&provider, params.iss.as_deref())?;
        if let Some(error) = params.error {
            let description = params.error_description.unwrap_or_default();
            let text =
                if description.is_empty() { error } else { format!("{error}: {description}") };
            return Err(OidcError::Refused(bounded(&text)));
        }
        let code = params.code.filter(|c| !c.is_empty()).ok_or(OidcError::MissingCode)?;

        let id_token = self.redeem(&provider, code, attempt.verifier).await?;
        self.identify(&id_token, &attempt.nonce).await
    }

    /// RFC 9207: an `iss` in the callback must be the issuer, and a
    /// provider that promises one must send it.
    fn check_iss(&self, provider: &Provider, iss: Option<&str>) -> Result<(), OidcError> {
        match iss {
            Some(iss) if iss == self.issuer.as_str() => Ok(()),
            Some(_) => Err(OidcError::IssuerMismatch),
            None if provider.iss_in_callback => Err(OidcError::IssuerMissing),
            None => Ok(()),
        }
    }

    /// Redeems the code at the token endpoint; returns the raw ID token.
    async fn redeem(
        &self,
        provider: &Provider,
        code: String,
        verifier: PkceCodeVerifier,
    ) -> Result<String, OidcError> {
        let http = |request| send(self.http.clone(), request);
        let request = provider
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|_| OidcError::TokenResponse("the provider has no token endpoint".into()))?
            .set_pkce_verifier(verifier);
        let response = request.request_async(&http).await.map_err(|e| match e {
            RequestTokenError::ServerResponse(answer) => {
                OidcError::CodeRefused(bounded(answer.error().as_ref()))
            }
            RequestTokenError::Request(error) => error,
            // SECURITY: the parse error carries the raw answer, which may
            // hold tokens; only a fixed text leaves here.
            RequestTokenError::Parse(..) => OidcError::TokenResponse("not a token response".into()),
            RequestTokenError::Other(_) => OidcError::TokenResponse("unexpected answer".into()),
        })?;
        // The access token is not used: analysts act through the session.
        let _ = response.access_token();
        let id_token = response.id_token().ok_or(OidcError::NoIdToken)?;
        Ok(id_token.to_string())
    }

    /// Validates a raw ID token against the provider's keys and `nonce`,
    /// and names the analyst and their role. A signature that fails with
    /// cached keys is tried once more with freshly fetched ones, since the
    /// provider may have rotated its keys.
    pub(super) async fn identify(&self, raw: &str, nonce: &Nonce) -> Result<SignedIn, OidcError> {
        let token: RawIdToken = raw.parse().map_err(|_| OidcError::MalformedIdToken)?;
        let provider = self.provider(false).await?;
        let claims = match self.verified(&provider, &token, nonce) {
            Err(OidcError::IdToken(
                openidconnect::ClaimsVerificationError::SignatureVerification(_),
            )) => self.verified(&*self.provider(true).await?, &token, nonce)?,
            other => other?,
        };

        let claims = SignInClaims { claims: &claims };
        let name = claims.readable_name();
        let sub = claims.claims.subject().as_str().to_owned();
        let role = self.roles.role_for(&claims).ok_or_else(|| OidcError::NoRole(name.clone()))?;
        Ok(SignedIn { sub, name, role: role.as_str().to_owned(), id_token: raw.to_owned() })
    }

    fn verified(
        &self,
        provider: &Provider,
        token: &RawIdToken,
        nonce: &Nonce,
    ) -> Result<IdTokenClaims<ExtraClaims, CoreGenderClaim>, OidcError> {
        let verifier = provider.client.id_token_verifier().set_allowed_algs(ALLOWED_ALGORITHMS);
        token.claims(&verifier, nonce).cloned().map_err(OidcError::IdToken)
    }

    /// Where to send the browser to end the analyst's session at the
    /// provider, when it offers RP-initiated logout.
    pub(super) async fn end_session_url(&self, id_token: &str) -> Option<Url> {
        let provider = match self.provider(false).await {
            Ok(provider) => provider,
            Err(error) => {
                tracing::warn!(error = %error, "cannot reach the provider to sign out there");
                return None;
            }
        };
        let endpoint = provider.end_session.clone()?;
        let token: RawIdToken = id_token.parse().ok()?;
        let request = LogoutRequest::from(endpoint)
            .set_id_token_hint(&token)
            .set_client_id(self.client_id.clone())
            .set_post_logout_redirect_uri(self.post_logout_url.clone());
        Some(request.http_get_url())
    }

    /// The `Set-Cookie` value carrying the attempt id.
    fn login_cookie(&self, id: &str) -> String {
        Cookie::build((self.login_cookie, id.to_owned()))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(time::Duration::seconds(LOGIN_LIFETIME.as_secs() as i64))
            .build()
            .to_string()
    }

    /// The `Set-Cookie` value removing the pre-login cookie.
    fn expired_login_cookie(&self) -> String {
        Cookie::build((self.login_cookie, ""))
            .path("/")
            .http_only(true)
            .secure(self.secure)
            .same_site(SameSite::Lax)
            .max_age(time::Duration::ZERO)
            .build()
            .to_string()
    }

    /// The attempt id in the request's pre-login cookie.
    fn attempt_id(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == self.login_cookie)
            .map(|c| c.value().to_owned())
    }
}

/// Sends one provider request through the workspace's HTTP client, reading
/// at most [`MAX_RESPONSE_BYTES`] of the answer.
async fn send(http: reqwest::Client, request: HttpRequest) -> Result<HttpResponse, OidcError> {
    let request = reqwest::Request::try_from(request).map_err(OidcError::Http)?;
    let mut response = http.execute(request).await.map_err(OidcError::Http)?;

    let mut answer = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        answer = answer.header(name, value);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(OidcError::Http)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(OidcError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    answer.body(body).map_err(|_| OidcError::TooLarge)
}

/// 32 random bytes, base64url: a sign-in attempt's id.
fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Provider-supplied text cut to a length safe to show.
fn bounded(text: &str) -> String {
    text.chars().take(ERROR_TEXT_LIMIT).collect()
}

// ---- Handlers --------------------------------------------------------------

/// How analysts may sign in, for the dashboard's sign-in view.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SignInMethods {
    /// Sign-in with the OpenID provider, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    single_sign_on: Option<SingleSignOn>,
}

/// The OpenID provider's sign-in button.
#[derive(Debug, Serialize, ToSchema)]
struct SingleSignOn {
    /// Where the button goes.
    url: &'static str,
    /// The provider's name.
    label: String,
}

/// `GET /auth/methods`: which sign-in methods the dashboard offers.
pub(super) async fn methods(State(state): State<Shared>) -> Json<SignInMethods> {
    let single_sign_on = state
        .oidc
        .as_ref()
        .map(|oidc| SingleSignOn { url: LOGIN_PATH, label: oidc.display_name.clone() });
    Json(SignInMethods { single_sign_on })
}

/// `GET /auth/login`: starts a sign-in at the provider.
#[tracing::instrument(skip_all)]
pub(super) async fn login(State(state): State<Shared>) -> Response {
    let Some(oidc) = state.oidc.as_deref() else {
        return page(StatusCode::NOT_FOUND, "Not configured", "Single sign-on is not set up.");
    };
    match oidc.begin().await {
        Ok((url, id)) => {
            let mut response = Redirect::to(url.as_str()).into_response();
            set_cookie(&mut response, &oidc.login_cookie(&id));
            response
        }
        Err(error) => failure_page(&error),
    }
}

/// `GET /auth/callback`: finishes a sign-in and starts the session.
#[tracing::instrument(skip_all)]
pub(super) async fn callback(
    State(state): State<Shared>,
    session: Session,
    headers: HeaderMap,
    params: Result<Query<CallbackParams>, QueryRejection>,
) -> Response {
    let Some(oidc) = state.oidc.as_deref() else {
        return page(StatusCode::NOT_FOUND, "Not configured", "Single sign-on is not set up.");
    };
    let params = params.map(|Query(p)| p).unwrap_or_default();
    let attempt = oidc.attempt_id(&headers).and_then(|id| oidc.take_attempt(&id));

    let outcome = match attempt {
        Some(attempt) => oidc.finish(attempt, params).await,
        None => Err(OidcError::UnknownAttempt),
    };
    let mut response = match outcome {
        Ok(analyst) => match super::session::start_single_sign_on(&session, &analyst).await {
            Ok(()) => {
                tracing::info!(
                    analyst.id = %analyst.sub,
                    analyst.role = %analyst.role,
                    "analyst signed in with the identity provider"
                );
                Redirect::to("/").into_response()
            }
            Err(error) => error.into_response(),
        },
        Err(error) => failure_page(&error),
    };
    set_cookie(&mut response, &oidc.expired_login_cookie());
    response
}

fn set_cookie(response: &mut Response, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The page for a failed sign-in, logged once.
fn failure_page(error: &OidcError) -> Response {
    let chain = error_chain(error);
    let (status, title, message) = match error {
        OidcError::NoRole(name) => {
            tracing::info!(analyst.name = %name, "sign-in refused: no role");
            return page(
                StatusCode::FORBIDDEN,
                "No access",
                &format!(
                    "You are signed in at the identity provider as {name}, but no Midosoc role \
                     is given to this account. Ask an administrator to grant you the viewer, \
                     approver or admin role."
                ),
            );
        }
        OidcError::Refused(text) => {
            tracing::info!(reason = %chain, "sign-in refused by the provider");
            return page(
                StatusCode::UNAUTHORIZED,
                "Sign-in refused",
                &format!("The identity provider did not sign you in: {text}"),
            );
        }
        OidcError::Http(_) | OidcError::TooLarge | OidcError::Discovery(_) => (
            StatusCode::BAD_GATEWAY,
            "Provider unavailable",
            "The identity provider could not be reached. Try again in a moment.",
        ),
        OidcError::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Too many sign-ins are in progress. Try again in a few minutes.",
        ),
        OidcError::UnknownAttempt => (
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "This sign-in was already used, has expired, or was started in another browser. \
             Start again.",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The answer from the identity provider could not be trusted, so you were not \
             signed in. Start again.",
        ),
    };
    if status.is_server_error() {
        tracing::warn!(error = %chain, "sign-in failed");
    } else {
        tracing::info!(reason = %chain, "sign-in refused");
    }
    page(status, title, message)
}

/// A small HTML page with a link back to the dashboard. Everything in it
/// is escaped.
fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · Midosoc review</title>\n\
         <link rel=\"stylesheet\" href=\"/assets/app.css\">\n</head>\n<body>\n\
         <main class=\"signin\"><div class=\"signin-card\" id=\"auth-message\">\n\
         <h1>{title}</h1>\n<p>{message}</p>\n\
         <p><a class=\"button primary\" href=\"/\">Back to the dashboard</a></p>\n\
         </div></main>\n</body>\n</html>\n",
        title = escape(title),
        message = escape(message),
    );
    let headers = [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))];
    (status, headers, body).into_response()
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An error and its sources, joined for one log line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
