//! The OAuth 2.0 issuer against a real OpenID provider started locally:
//! `oidc-provider` from `tests/oidc/`, run with Node.
//!
//! Each test starts its own provider on a free port and waits for its
//! discovery document. Without Node or `tests/oidc/node_modules` the tests
//! print `SKIPPED` and pass, unless `MIDOSOC_REQUIRE_PEERS=1`, as in CI,
//! makes them fail instead. Run `npm ci --prefix tests/oidc` first.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use midosoc_core::token::{
    AUTHORIZATION_DETAILS_TYPE, AuthorizationDetail, ClientAuth, ClientSecret, Grant, OAuth2Issuer,
    OAuth2IssuerConfig,
};
use midosoc_core::{AgentId, Analyst, IssueError, TokenIssuer};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The resource the provider defaults to for the gateway clients.
const API: &str = "https://api.midosoc.test";

/// A resource that exists but the gateway clients may not use.
const ADMIN_API: &str = "https://admin.midosoc.test";

/// Secret of the provider's gateway clients, with characters that must be
/// form-encoded inside HTTP Basic credentials.
const SECRET: &str = "gateway secret+/:=%";

/// A running `oidc-provider`.
struct Provider {
    child: Child,
    issuer: String,
    discovery: Discovery,
}

/// The parts of the discovery document the tests use.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    token_endpoint: String,
    jwks_uri: String,
}

/// The line the provider prints once it listens.
#[derive(Deserialize)]
struct Ready {
    issuer: String,
}

/// Claims of the provider's JWT access tokens that the tests check.
#[derive(Debug, Deserialize)]
struct AccessClaims {
    iss: String,
    aud: String,
    sub: String,
    exp: i64,
    jti: String,
    client_id: String,
    #[serde(default)]
    scope: Option<String>,
}

fn oidc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc")
}

fn find_node() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MIDOSOC_NODE") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|dir| dir.join("node")).find(|p| p.is_file())
}

/// Starts the provider, or returns `None` after printing why the test is
/// skipped. Under `MIDOSOC_REQUIRE_PEERS=1` a missing peer fails the test.
async fn start_provider(test: &str) -> Option<Provider> {
    let required = std::env::var("MIDOSOC_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let missing = if find_node().is_none() {
        Some("node is not on PATH")
    } else if !oidc_dir().join("node_modules/oidc-provider").is_dir() {
        Some("tests/oidc/node_modules is absent (run `npm ci --prefix tests/oidc`)")
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(!required, "{test}: the OpenID provider is required but {why}");
        eprintln!("SKIPPED {test}: OpenID provider not available ({why})");
        return None;
    }

    let node = find_node()?;
    let mut child = Command::new(node)
        .arg(oidc_dir().join("provider.mjs"))
        .arg("0")
        .env("OIDC_GATEWAY_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Node's warning about its version and the provider's development
        // notices would only clutter the test output.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");

    // The provider prints one line once it listens; wait for it, bounded.
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("provider starts within 30 s")
        .expect("provider stdout is readable")
        .expect("provider prints its address");
    let ready: Ready = serde_json::from_str(&line).expect("provider prints its issuer as JSON");

    let url = format!("{}/.well-known/openid-configuration", ready.issuer);
    let discovery: Discovery = http().get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(discovery.issuer, ready.issuer);
    Some(Provider { child, issuer: ready.issuer, discovery })
}

impl Provider {
    fn config(&self, client_id: &str) -> OAuth2IssuerConfig {
        let secret = ClientSecret::new(SECRET);
        OAuth2IssuerConfig::new(&self.discovery.token_endpoint, client_id, secret)
    }

    fn issuer(&self, configure: impl FnOnce(&mut OAuth2IssuerConfig)) -> OAuth2Issuer {
        let mut config = self.config("midosoc-gateway");
        configure(&mut config);
        OAuth2Issuer::new(config).unwrap()
    }

    /// How many requests reached the provider's token endpoint.
    async fn token_requests(&self) -> u64 {
        #[derive(Deserialize)]
        struct Stats {
            token_requests: u64,
        }
        let url = format!("{}/test/stats", self.issuer);
        let stats: Stats = http().get(url).send().await.unwrap().json().await.unwrap();
        stats.token_requests
    }

    /// Verifies `token` against the provider's JWKS, as a protected API
    /// would, for `audience`.
    async fn verify(&self, token: &str, audience: &str) -> AccessClaims {
        let jwks: JwkSet =
            http().get(&self.discovery.jwks_uri).send().await.unwrap().json().await.unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let kid = header.kid.expect("the token names its key");
        let key = DecodingKey::from_jwk(jwks.find(&kid).expect("key is in the JWKS")).unwrap();

        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[&self.discovery.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<AccessClaims>(token, &key, &validation).unwrap().claims
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A grant for one approved deletion.
fn grant() -> Grant {
    Grant {
        agent: AgentId::new("cleanup-agent"),
        analyst: Some(Analyst::new("approver-alice", "Alice")),
        detail: AuthorizationDetail {
            kind: AUTHORIZATION_DETAILS_TYPE.to_owned(),
            locations: vec![format!("{API}/things/42")],
            actions: vec!["DELETE".to_owned()],
            body_digest: None,
            approval_id: None,
        },
        audience: None,
        scope: None,
    }
}

#[tokio::test]
async fn client_credentials_yield_a_jwt_for_the_configured_audience() {
    let Some(provider) = start_provider("client_credentials_yield_a_jwt").await else { return };
    let issuer = provider.issuer(|config| config.audience = Some(API.to_owned()));

    let issued = issuer.issue(&grant().with_scope("delete:things")).await.unwrap();

    let claims = provider.verify(issued.token.expose(), API).await;
    assert_eq!(claims.iss, provider.issuer);
    assert_eq!(claims.aud, API);
    assert_eq!(claims.client_id, "midosoc-gateway");
    assert_eq!(claims.sub, "midosoc-gateway");
    assert_eq!(claims.scope.as_deref(), Some("delete:things"));
    assert_eq!(issued.token_id, claims.jti);
    let skew = (issued.expires_at.unix_timestamp() - claims.exp).abs();
    assert!(skew <= 2, "expires_at is {skew} s away from exp");
}

#[tokio::test]
async fn auth0_style_audience_with_client_secret_post_gets_the_default_resource() {
    let Some(provider) = start_provider("auth0_style_audience").await else { return };
    let mut config = provider.config("midosoc-gateway-post");
    config.client_auth = ClientAuth::ClientSecretPost;
    config.audience_param = "audience".to_owned();
    config.audience = Some(API.to_owned());
    let issuer = OAuth2Issuer::new(config).unwrap();

    let issued = issuer.issue(&grant()).await.unwrap();

    // oidc-provider ignores `audience`; its default resource gives the
    // same `aud`, which is what a protected API checks.
    let claims = provider.verify(issued.token.expose(), API).await;
    assert_eq!(claims.client_id, "midosoc-gateway-post");
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client() {
    let Some(provider) = start_provider("wrong_client_secret").await else { return };
    let mut config = provider.config("midosoc-gateway");
    config.client_secret = ClientSecret::new("not the secret");
    let issuer = OAuth2Issuer::new(config).unwrap();

    let error = issuer.issue(&grant()).await.unwrap_err();

    assert!(matches!(error, IssueError::InvalidClient), "{error:?}");
}

#[tokio::test]
async fn resource_the_client_may_not_use_is_not_allowed() {
    let Some(provider) = start_provider("resource_not_allowed").await else { return };
    let issuer = provider.issuer(|_| {});

    for resource in [ADMIN_API, "https://unknown.midosoc.test"] {
        let error = issuer.issue(&grant().with_audience(resource)).await.unwrap_err();
        assert!(
            matches!(&error, IssueError::AudienceNotAllowed(audience) if audience == resource),
            "{resource}: {error:?}",
        );
    }
}

#[tokio::test]
async fn provider_down_is_unreachable() {
    let Some(mut provider) = start_provider("provider_down").await else { return };
    let issuer = provider.issuer(|config| config.reuse_tokens = false);
    issuer.issue(&grant()).await.unwrap();

    provider.child.kill().await.unwrap();
    let error = issuer.issue(&grant()).await.unwrap_err();

    assert!(matches!(error, IssueError::Unreachable(_)), "{error:?}");
}

#[tokio::test]
async fn same_audience_and_scope_share_one_token_request() {
    let Some(provider) = start_provider("token_reuse").await else { return };
    let issuer = provider.issuer(|config| config.audience = Some(API.to_owned()));
    let before = provider.token_requests().await;

    let first = issuer.issue(&grant().with_scope("read:things delete:things")).await.unwrap();
    let second = issuer.issue(&grant().with_scope("delete:things read:things")).await.unwrap();
    assert_eq!(first.token.expose(), second.token.expose());
    assert_eq!(provider.token_requests().await - before, 1);

    let other = issuer.issue(&grant().with_scope("read:things")).await.unwrap();
    assert_ne!(other.token.expose(), first.token.expose());
    assert_eq!(provider.token_requests().await - before, 2);
}

#[tokio::test]
async fn token_close_to_expiry_is_not_reused() {
    let Some(provider) = start_provider("token_close_to_expiry").await else { return };
    // The provider's tokens live 300 s; a 400 s margin makes each too old
    // to hand out again.
    let issuer = provider.issuer(|config| config.reuse_margin_seconds = 400);
    let before = provider.token_requests().await;

    let first = issuer.issue(&grant()).await.unwrap();
    let second = issuer.issue(&grant()).await.unwrap();

    assert_ne!(first.token.expose(), second.token.expose());
    assert_eq!(provider.token_requests().await - before, 2);
}

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_and_secrets_never_appear_in_logs() {
    let Some(provider) = start_provider("tokens_not_logged").await else { return };
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let issuer = provider.issuer(|_| {});
    let issued = issuer.issue(&grant()).await.unwrap();
    let reused = issuer.issue(&grant()).await.unwrap();
    let mut wrong = provider.config("midosoc-gateway");
    wrong.client_secret = ClientSecret::new("wrong secret");
    OAuth2Issuer::new(wrong).unwrap().issue(&grant()).await.unwrap_err();
    tracing::info!(issuer = ?issuer, token = ?issued, "debug forms of the issuer and the token");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let token = issued.token.expose();
    assert_eq!(token, reused.token.expose());
    assert!(logs.contains(&issued.token_id), "the token id is logged:\n{logs}");
    assert!(logs.contains("access token reused"), "reuse is logged:\n{logs}");
    assert!(!logs.contains(token), "a token leaked into the logs");
    // Also no part of it: the signature alone would do harm in a log search.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "a token signature leaked into the logs");
    for secret in [SECRET, "wrong secret"] {
        assert!(!logs.contains(secret), "a client secret leaked into the logs");
    }
}
