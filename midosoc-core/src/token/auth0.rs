//! [`Auth0Issuer`]: access tokens from an Auth0 tenant's `/oauth/token`.
//!
//! See [`Auth0Issuer`] for how Auth0's answers are read.

use async_trait::async_trait;
use reqwest::Url;
use serde::Deserialize;

use super::oauth2::{
    ClientAuth, ClientSecret, Dialect, OAuth2Issuer, OAuth2IssuerConfig, OAuth2IssuerError,
    default_connect_timeout_seconds, default_request_timeout_seconds, default_reuse_margin_seconds,
};
use super::{Grant, IssueError, IssuedToken, TokenIssuer};

/// Configuration of an [`Auth0Issuer`], as it appears in a TOML file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Auth0IssuerConfig {
    /// The tenant's domain (`example.eu.auth0.com`, or a custom domain), or
    /// an origin such as `https://login.example.com`.
    pub domain: String,
    /// The client id of the machine-to-machine application.
    pub client_id: String,
    /// Its client secret.
    pub client_secret: ClientSecret,
    /// The API identifier used when a grant names no audience.
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
    /// Time allowed to connect to the tenant.
    #[serde(default = "default_connect_timeout_seconds")]
    pub connect_timeout_seconds: u64,
    /// Time allowed for the whole token request.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
}

fn default_reuse_tokens() -> bool {
    true
}

impl Auth0IssuerConfig {
    /// A configuration with the defaults: tokens reused until 30 s before
    /// expiry, 5 s to connect and 10 s per request.
    pub fn new(
        domain: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
    ) -> Self {
        Self {
            domain: domain.into(),
            client_id: client_id.into(),
            client_secret,
            audience: None,
            scope: None,
            reuse_tokens: default_reuse_tokens(),
            reuse_margin_seconds: default_reuse_margin_seconds(),
            connect_timeout_seconds: default_connect_timeout_seconds(),
            request_timeout_seconds: default_request_timeout_seconds(),
        }
    }

    /// The same settings for the generic issuer.
    fn into_oauth2(self) -> Result<OAuth2IssuerConfig, OAuth2IssuerError> {
        let token_url = token_url(&self.domain)?;
        let mut config = OAuth2IssuerConfig::new(token_url, self.client_id, self.client_secret);
        config.client_auth = ClientAuth::ClientSecretPost;
        config.audience_param = "audience".to_owned();
        config.audience = self.audience;
        config.scope = self.scope;
        config.reuse_tokens = self.reuse_tokens;
        config.reuse_margin_seconds = self.reuse_margin_seconds;
        config.connect_timeout_seconds = self.connect_timeout_seconds;
        config.request_timeout_seconds = self.request_timeout_seconds;
        Ok(config)
    }
}

/// `https://DOMAIN/oauth/token` for a bare domain; for an origin, its
/// `/oauth/token`. Anything with a path, query or credentials is refused,
/// so a typo cannot point the secret at another URL.
fn token_url(domain: &str) -> Result<String, OAuth2IssuerError> {
    let invalid = || OAuth2IssuerError::InvalidDomain(domain.to_owned());
    let origin =
        if domain.contains("://") { domain.to_owned() } else { format!("https://{domain}") };
    let url = Url::parse(&origin).map_err(|_| invalid())?;

    let bare = url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
        && url.host_str().is_some();
    if !bare {
        return Err(invalid());
    }
    url.join("/oauth/token").map(String::from).map_err(|_| invalid())
}

/// Mints tokens by asking an Auth0 tenant for them with the
/// client-credentials grant.
///
/// Auth0 is a preset of [`OAuth2Issuer`]: the token URL is
/// `https://DOMAIN/oauth/token`, the client authenticates with
/// `client_secret_post`, the audience goes in Auth0's own `audience`
/// parameter (the API identifier), and Auth0's error answers are read the
/// Auth0 way:
///
/// | Auth0 answers | outcome |
/// |---|---|
/// | `401 invalid_client`, `403 access_denied` "Unauthorized" | [`IssueError::InvalidClient`] |
/// | `403 access_denied` "Client is not authorized to access ..." | [`IssueError::AudienceNotAllowed`] |
/// | `403 access_denied` "Service not enabled within domain: ..." | [`IssueError::AudienceNotAllowed`] |
/// | `429 too_many_requests` with `Retry-After` or `X-RateLimit-Reset` | [`IssueError::RateLimited`] |
/// | no answer, a timeout, a `5xx` | [`IssueError::Unreachable`] |
///
/// Auth0 limits how many machine-to-machine tokens a tenant may mint, so
/// tokens are reused per (audience, scope) for their lifetime less a margin
/// unless `reuse_tokens` is off.
///
/// ```no_run
/// use midosoc_core::token::{Auth0Issuer, Auth0IssuerConfig, ClientSecret};
///
/// # fn build() -> Result<Auth0Issuer, Box<dyn std::error::Error>> {
/// let mut config = Auth0IssuerConfig::new(
///     "example.eu.auth0.com",
///     "k3Rb0wQ5sN1xY8pZ",
///     ClientSecret::from_file("/run/secrets/auth0_client_secret")?,
/// );
/// config.audience = Some("https://api.example.com".to_owned());
/// Ok(Auth0Issuer::new(config)?)
/// # }
/// ```
///
/// [`IssueError::InvalidClient`]: super::IssueError::InvalidClient
/// [`IssueError::AudienceNotAllowed`]: super::IssueError::AudienceNotAllowed
/// [`IssueError::RateLimited`]: super::IssueError::RateLimited
/// [`IssueError::Unreachable`]: super::IssueError::Unreachable
#[derive(Debug)]
pub struct Auth0Issuer(OAuth2Issuer);

impl Auth0Issuer {
    /// Builds an issuer, checking the configuration.
    pub fn new(config: Auth0IssuerConfig) -> Result<Self, OAuth2IssuerError> {
        OAuth2Issuer::with_dialect(config.into_oauth2()?, Dialect::Auth0).map(Self)
    }

    /// The token endpoint this issuer posts to.
    pub fn token_url(&self) -> &str {
        self.0.token_url()
    }
}

#[async_trait]
impl TokenIssuer for Auth0Issuer {
    async fn issue(&self, grant: &Grant) -> Result<IssuedToken, IssueError> {
        self.0.issue(grant).await
    }
}

// Auth0 cannot be reached from the test machines, so these tests replay
// answers in the shapes Auth0 gives (bodies and headers as its
// documentation and users' reports show them) from a real HTTP server on
// 127.0.0.1, and check the form Auth0 would receive.
#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Form, Router};

    use super::*;
    use crate::action::{AgentId, Sha256Digest};
    use crate::token::{AUTHORIZATION_DETAILS_TYPE, AuthorizationDetail};

    const API: &str = "https://api.example.com";

    const TOKEN: &str = concat!(
        r#"{"access_token":"eyJhbGciOiJSUzI1NiJ9.eyJndHkiOiJjbGllbnQtY3JlZGVudGlhbHMifQ.c2ln","#,
        r#""scope":"delete:repos","expires_in":86400,"token_type":"Bearer"}"#,
    );
    const UNAUTHORIZED: &str = r#"{"error":"access_denied","error_description":"Unauthorized"}"#;
    const INVALID_CLIENT: &str =
        r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#;
    const NO_CLIENT_GRANT: &str = concat!(
        r#"{"error":"access_denied","error_description":"Client is not authorized to access "#,
        r#"\"https://api.example.com\". You need to create a \"client-grant\" associated to "#,
        r#"this API. See: https://auth0.com/docs/api/v2#!/Client_Grants/post_client_grants"}"#,
    );
    const NO_SUCH_API: &str = concat!(
        r#"{"error":"access_denied","error_description":"#,
        r#""Service not enabled within domain: https://api.example.com"}"#,
    );
    const TOO_MANY: &str =
        r#"{"error":"too_many_requests","error_description":"Global limit has been reached"}"#;

    /// One answer the fake tenant gives, in order.
    struct Answer {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
    }

    fn answer(status: u16, body: &'static str) -> Answer {
        Answer { status, headers: Vec::new(), body }
    }

    /// What the tenant received: the form fields and the request headers.
    type Received = Arc<Mutex<Vec<(HashMap<String, String>, HeaderMap)>>>;

    #[derive(Clone)]
    struct Tenant {
        answers: Arc<Mutex<VecDeque<Answer>>>,
        received: Received,
    }

    async fn token_endpoint(
        State(tenant): State<Tenant>,
        headers: HeaderMap,
        Form(form): Form<HashMap<String, String>>,
    ) -> Response {
        tenant.received.lock().unwrap().push((form, headers));
        let Some(next) = tenant.answers.lock().unwrap().pop_front() else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "no answer left").into_response();
        };
        let mut response = (
            StatusCode::from_u16(next.status).unwrap(),
            [(header::CONTENT_TYPE, "application/json")],
            next.body,
        )
            .into_response();
        for (name, value) in next.headers {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    }

    /// Starts a tenant answering `/oauth/token` with `answers`; returns its
    /// origin and what it receives.
    async fn tenant(answers: Vec<Answer>) -> (String, Received) {
        let state =
            Tenant { answers: Arc::new(Mutex::new(answers.into())), received: Arc::default() };
        let received = Arc::clone(&state.received);
        let app = Router::new().route("/oauth/token", post(token_endpoint)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (origin, received)
    }

    fn issuer(origin: &str, configure: impl FnOnce(&mut Auth0IssuerConfig)) -> Auth0Issuer {
        let secret = ClientSecret::new("auth0-secret+/=");
        let mut config = Auth0IssuerConfig::new(origin, "m2m-client", secret);
        config.audience = Some(API.to_owned());
        configure(&mut config);
        Auth0Issuer::new(config).unwrap()
    }

    fn grant() -> Grant {
        Grant {
            agent: AgentId::new("deploy-bot"),
            analyst: None,
            detail: AuthorizationDetail {
                kind: AUTHORIZATION_DETAILS_TYPE.to_owned(),
                locations: vec!["https://api.example.com/repos/1".to_owned()],
                actions: vec!["DELETE".to_owned()],
                body_digest: Some(Sha256Digest::of(b"")),
                approval_id: None,
            },
            audience: None,
            scope: None,
        }
    }

    #[tokio::test]
    async fn token_request_is_the_form_auth0_expects() {
        let (origin, received) = tenant(vec![answer(200, TOKEN)]).await;
        let issuer = issuer(&origin, |_| {});

        let issued = issuer.issue(&grant().with_scope("delete:repos")).await.unwrap();

        assert!(issued.token.expose().starts_with("eyJhbGciOiJSUzI1NiJ9."));
        let lifetime = issued.expires_at - time::OffsetDateTime::now_utc();
        assert!(lifetime > time::Duration::hours(23), "{lifetime}");
        assert!(!format!("{issued:?}").contains("eyJ"));

        let received = received.lock().unwrap();
        let (form, headers) = &received[0];
        let field = |name: &str| form.get(name).map(String::as_str);
        assert_eq!(field("grant_type"), Some("client_credentials"));
        assert_eq!(field("client_id"), Some("m2m-client"));
        assert_eq!(field("client_secret"), Some("auth0-secret+/="));
        assert_eq!(field("audience"), Some(API));
        assert_eq!(field("scope"), Some("delete:repos"));
        assert_eq!(form.len(), 5, "{:?}", form.keys());
        assert!(headers.get(header::AUTHORIZATION).is_none());
        assert_eq!(headers[header::CONTENT_TYPE], "application/x-www-form-urlencoded");
    }

    #[tokio::test]
    async fn wrong_client_secret_is_invalid_client() {
        let answers = vec![answer(401, UNAUTHORIZED), answer(403, UNAUTHORIZED)];
        let (origin, _) = tenant(answers).await;
        let auth0 = issuer(&origin, |_| {});

        for _ in 0..2 {
            let error = auth0.issue(&grant()).await.unwrap_err();
            assert!(matches!(error, IssueError::InvalidClient), "{error:?}");
        }
        let (origin, _) = tenant(vec![answer(401, INVALID_CLIENT)]).await;
        let error = issuer(&origin, |_| {}).issue(&grant()).await.unwrap_err();
        assert!(matches!(error, IssueError::InvalidClient), "{error:?}");
    }

    #[tokio::test]
    async fn audience_without_client_grant_is_not_allowed() {
        let (origin, _) =
            tenant(vec![answer(403, NO_CLIENT_GRANT), answer(403, NO_SUCH_API)]).await;
        let issuer = issuer(&origin, |_| {});

        for _ in 0..2 {
            let error = issuer.issue(&grant()).await.unwrap_err();
            assert!(
                matches!(&error, IssueError::AudienceNotAllowed(audience) if audience == API),
                "{error:?}",
            );
        }
    }

    #[tokio::test]
    async fn rate_limit_is_honoured_without_asking_again() {
        let limited = Answer {
            status: 429,
            headers: vec![("retry-after", "30".to_owned()), ("x-ratelimit-limit", "10".to_owned())],
            body: TOO_MANY,
        };
        let (origin, received) = tenant(vec![limited, answer(200, TOKEN)]).await;
        let issuer = issuer(&origin, |_| {});

        let first = issuer.issue(&grant()).await.unwrap_err();
        assert!(
            matches!(first, IssueError::RateLimited { retry_after: Some(d) } if d.as_secs() == 30),
            "{first:?}",
        );
        let second = issuer.issue(&grant()).await.unwrap_err();
        assert!(
            matches!(second, IssueError::RateLimited { retry_after: Some(d) } if d.as_secs() <= 30),
            "{second:?}",
        );
        assert_eq!(received.lock().unwrap().len(), 1, "the pause must not reach the tenant");

        // Once the pause is over, the issuer asks again.
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(31)).await;
        tokio::time::resume();
        issuer.issue(&grant()).await.unwrap();
        assert_eq!(received.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn rate_limit_reset_header_sets_the_pause() {
        let reset = time::OffsetDateTime::now_utc().unix_timestamp() + 20;
        let limited = Answer {
            status: 429,
            headers: vec![("x-ratelimit-reset", reset.to_string())],
            body: TOO_MANY,
        };
        let (origin, _) = tenant(vec![limited]).await;
        let issuer = issuer(&origin, |_| {});

        let error = issuer.issue(&grant()).await.unwrap_err();
        let IssueError::RateLimited { retry_after: Some(wait) } = error else {
            panic!("expected a rate limit, got {error:?}");
        };
        assert!((18..=20).contains(&wait.as_secs()), "{wait:?}");
    }

    #[tokio::test]
    async fn tokens_are_reused_per_audience_and_scope() {
        let answers = (0..3).map(|_| answer(200, TOKEN)).collect();
        let (origin, received) = tenant(answers).await;
        let issuer = issuer(&origin, |_| {});

        let first = issuer.issue(&grant().with_scope("b a")).await.unwrap();
        let again = issuer.issue(&grant().with_scope("a b")).await.unwrap();
        assert_eq!(first.token.expose(), again.token.expose());
        assert_eq!(received.lock().unwrap().len(), 1);

        issuer.issue(&grant().with_audience("https://other.example.com")).await.unwrap();
        issuer.issue(&grant()).await.unwrap();
        assert_eq!(received.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn reuse_can_be_switched_off() {
        let answers = (0..2).map(|_| answer(200, TOKEN)).collect();
        let (origin, received) = tenant(answers).await;
        let issuer = issuer(&origin, |config| config.reuse_tokens = false);

        issuer.issue(&grant()).await.unwrap();
        issuer.issue(&grant()).await.unwrap();
        assert_eq!(received.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn concurrent_approvals_share_one_request() {
        let (origin, received) = tenant(vec![answer(200, TOKEN)]).await;
        let issuer = issuer(&origin, |_| {});

        let grant = grant();
        let (a, b) = tokio::join!(issuer.issue(&grant), issuer.issue(&grant));
        assert_eq!(a.unwrap().token.expose(), b.unwrap().token.expose());
        assert_eq!(received.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn tenant_errors_and_silence_are_unreachable() {
        let (origin, _) = tenant(vec![answer(503, "{}")]).await;
        let error = issuer(&origin, |_| {}).issue(&grant()).await.unwrap_err();
        assert!(matches!(error, IssueError::Unreachable(_)), "{error:?}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let error = issuer(&origin, |_| {}).issue(&grant()).await.unwrap_err();
        assert!(matches!(error, IssueError::Unreachable(_)), "{error:?}");
    }

    #[test]
    fn domains_become_token_urls() {
        let check = |domain: &str, expected: Option<&str>| {
            assert_eq!(token_url(domain).ok().as_deref(), expected, "{domain}");
        };

        check("example.eu.auth0.com", Some("https://example.eu.auth0.com/oauth/token"));
        check("https://login.example.com", Some("https://login.example.com/oauth/token"));
        check("https://login.example.com/", Some("https://login.example.com/oauth/token"));
        check("http://127.0.0.1:3000", Some("http://127.0.0.1:3000/oauth/token"));
        check("example.auth0.com/oauth/token", None);
        check("evil.example@example.auth0.com", None);
        check("https://example.auth0.com?x=1", None);
        check("", None);
    }

    #[test]
    fn plain_http_tenant_is_refused() {
        let config =
            Auth0IssuerConfig::new("http://example.auth0.com", "id", ClientSecret::new("s"));
        let error = Auth0Issuer::new(config).unwrap_err();
        assert!(matches!(error, OAuth2IssuerError::InsecureTokenUrl(_)), "{error:?}");
    }

    #[test]
    fn config_reads_from_toml() {
        let config: Auth0IssuerConfig = toml::from_str(
            r#"
            domain = "example.eu.auth0.com"
            client_id = "abc"
            client_secret = "xyz"
            audience = "https://api.example.com"
            reuse_tokens = false
            "#,
        )
        .unwrap();
        assert!(!config.reuse_tokens);
        assert_eq!(config.reuse_margin_seconds, 30);
        assert!(!format!("{config:?}").contains("xyz"));
    }
}
