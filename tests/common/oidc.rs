//! Runs the real OpenID provider (`tests/oidc/provider.mjs`) and a real
//! `midosoc serve` that signs analysts in with it and mints upstream tokens
//! from it, plus an upstream API that verifies those tokens against the
//! provider's JWKS.

#![allow(dead_code, reason = "each suite uses a different part of the helper")]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::extract::Request;
use axum::http::header;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::support;

/// How long the provider and the gateway may take to say where they are.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The resource the provider's gateway clients may get tokens for.
pub(crate) const API_AUDIENCE: &str = "https://api.midosoc.test";

/// A resource the gateway clients may not use.
pub(crate) const ADMIN_AUDIENCE: &str = "https://admin.midosoc.test";

/// The claim carrying roles in the provider's ID tokens.
pub(crate) const ROLES_CLAIM: &str = "https://midosoc.dev/roles";

/// Secrets the provider knows its clients by.
pub(crate) const DASHBOARD_SECRET: &str = "dashboard-secret-for-the-test";
pub(crate) const GATEWAY_SECRET: &str = "gateway-secret-for-the-test";

fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc")
}

/// `node`, with `tests/oidc` installed, or `None` after reporting the
/// skip for `suite`.
pub(crate) fn node_with_provider(suite: &str) -> Option<PathBuf> {
    let Some(node) = support::find_program("node", "MIDOSOC_NODE") else {
        support::skip(suite, "node", "not on PATH");
        return None;
    };
    if !oidc_dir().join("node_modules/oidc-provider").is_dir() {
        support::skip(suite, "oidc-provider", "run `npm ci --prefix tests/oidc`");
        return None;
    }
    Some(node)
}

/// The running provider, stopped when dropped.
pub(crate) struct Provider {
    child: Child,
    /// Its issuer URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub(crate) issuer: String,
}

impl Provider {
    /// Starts the provider with the dashboard client's redirect URI
    /// pointing at a review listener on `review_port`.
    pub(crate) fn start(node: &Path, review_port: u16) -> Self {
        let mut child = Command::new(node)
            .arg("provider.mjs")
            .current_dir(oidc_dir())
            .env(
                "OIDC_DASHBOARD_REDIRECT_URI",
                format!("http://127.0.0.1:{review_port}/auth/callback"),
            )
            .env("OIDC_DASHBOARD_SECRET", DASHBOARD_SECRET)
            .env("OIDC_GATEWAY_SECRET", GATEWAY_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts the provider");
        let lines = spawn_line_reader(child.stdout.take().expect("piped stdout"));
        let line = lines.recv_timeout(START_TIMEOUT).expect("the provider says where it is");
        let ready: Value = serde_json::from_str(&line).expect("a JSON line");
        let issuer = ready["issuer"].as_str().expect("issuer").to_owned();
        Self { child, issuer }
    }

    /// The provider's JWKS.
    pub(crate) async fn jwks(&self) -> JwkSet {
        let url = format!("{}/jwks", self.issuer);
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the gateway's upstream issuer is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IssuerSetup {
    /// The right client and secret; tokens for the API audience.
    Working,
    /// A wrong client secret.
    WrongSecret,
    /// The right client, but the upstream's audience is one it may not use.
    AudienceNotAllowed,
}

/// A running gateway configured for single sign-on and the oauth2 issuer.
pub(crate) struct OidcGateway {
    child: Option<Child>,
    /// Base URL of the agent listener.
    pub(crate) agent_url: String,
    /// Base URL of the review listener.
    pub(crate) review_url: String,
    /// Where the gateway's standard error goes.
    pub(crate) log_file: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl OidcGateway {
    /// Starts `midosoc serve` on `review_port` with sign-in at `provider`,
    /// the oauth2 issuer as `setup` says, one upstream at `upstream` under
    /// `/things/`, and logging at `log_filter` into a file.
    pub(crate) fn start(
        provider: &Provider,
        review_port: u16,
        upstream: SocketAddr,
        setup: IssuerSetup,
        log_filter: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let dashboard_secret = dir.path().join("dashboard-secret");
        std::fs::write(&dashboard_secret, format!("{DASHBOARD_SECRET}\n")).unwrap();
        let gateway_secret = match setup {
            IssuerSetup::WrongSecret => "not-the-gateway-secret",
            _ => GATEWAY_SECRET,
        };
        let audience = match setup {
            IssuerSetup::AudienceNotAllowed => ADMIN_AUDIENCE,
            _ => API_AUDIENCE,
        };
        let issuer = &provider.issuer;
        let data = dir.path().join("data");
        let text = format!(
            r#"data_dir = {data:?}
[agent]
listen = "127.0.0.1:0"
[review]
listen = "127.0.0.1:{review_port}"
[review.oidc]
issuer = "{issuer}"
client_id = "midosoc-dashboard"
client_secret = {{ file = {dashboard_secret:?} }}
display_name = "the test provider"
[review.oidc.roles]
claim = "{ROLES_CLAIM}"
viewer = ["viewer"]
approver = ["approver"]
admin = ["admin"]
[approval]
wait_timeout = "2m"
[shutdown]
grace = "1s"
[issuer]
kind = "oauth2"
[issuer.oauth2]
token_url = "{issuer}/token"
client_id = "midosoc-gateway"
client_secret = {{ env = "MIDOSOC_TEST_GATEWAY_SECRET" }}
[[upstream]]
name = "things"
prefix = "/things/"
url = "http://{upstream}/"
mint_tokens = true
audience = "{audience}"
"#
        );
        let config = dir.path().join("midosoc.toml");
        std::fs::write(&config, text).unwrap();
        let log_file = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_file).unwrap();

        let mut child = Command::new(support::midosoc_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("MIDOSOC_LOG__FILTER", log_filter)
            .env("MIDOSOC_TEST_GATEWAY_SECRET", gateway_secret)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("midosoc serve starts");
        let lines = spawn_line_reader(child.stdout.take().expect("piped stdout"));

        let mut gateway = Self {
            child: Some(child),
            agent_url: String::new(),
            review_url: String::new(),
            log_file,
            config,
            dir,
        };
        loop {
            let Ok(line) = lines.recv_timeout(START_TIMEOUT) else {
                let log = std::fs::read_to_string(&gateway.log_file).unwrap_or_default();
                panic!("midosoc serve did not print its banner; its log:\n{log}");
            };
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("agent listener:") {
                gateway.agent_url = first_word(rest);
            } else if let Some(rest) = line.strip_prefix("dashboard:") {
                gateway.review_url = first_word(rest).trim_end_matches('/').to_owned();
            } else if line.starts_with("data:") {
                break;
            }
        }
        gateway
    }

    /// Creates an agent and returns its key.
    pub(crate) fn add_agent(&self, name: &str) -> String {
        let output = self.cli(&["agent", "add", name]);
        secret_line(&output, "mdsa_")
    }

    /// Creates a local analyst and returns their bearer token.
    pub(crate) fn add_analyst(&self, name: &str, role: &str) -> String {
        let output = self.cli(&["analyst", "add", name, "--role", role]);
        secret_line(&output, "mdsr_")
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let output = Command::new(support::midosoc_binary())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("MIDOSOC_TEST_GATEWAY_SECRET", GATEWAY_SECRET)
            .output()
            .expect("midosoc runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        output
    }

    /// The review listener's URL for `path`.
    pub(crate) fn review(&self, path: &str) -> String {
        format!("{}{path}", self.review_url)
    }

    /// The agent listener's URL for `path`.
    pub(crate) fn agent(&self, path: &str) -> String {
        format!("{}{path}", self.agent_url)
    }

    /// Stops the gateway and returns everything it logged.
    pub(crate) fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for OidcGateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_line_reader(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn first_word(text: &str) -> String {
    text.split_whitespace().next().unwrap_or_default().to_owned()
}

fn secret_line(output: &std::process::Output, prefix: &str) -> String {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in output"))
        .to_owned()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One request the upstream received.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    /// Method and path.
    pub(crate) line: String,
    /// The bearer token it carried, as sent.
    pub(crate) token: Option<String>,
    /// Its claims, when it verified against the provider's JWKS for the
    /// API audience; the verification error otherwise.
    pub(crate) claims: Result<Value, String>,
}

/// Everything the upstream received.
pub(crate) type Log = Arc<Mutex<Vec<Received>>>;

/// An upstream API that verifies every bearer token against the
/// provider's JWKS (RS256, `iss` the provider, `aud` the API) and records
/// what it got. It answers `200` either way: the test judges.
pub(crate) async fn verifying_upstream(issuer: String, jwks: JwkSet) -> (SocketAddr, Log) {
    let log = Log::default();
    let seen = log.clone();
    let jwks = Arc::new(jwks);
    let handler = move |request: Request| {
        let (seen, jwks, issuer) = (seen.clone(), jwks.clone(), issuer.clone());
        async move {
            let line = format!("{} {}", request.method(), request.uri().path());
            let token = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            let claims = match &token {
                Some(token) => verify(token, &jwks, &issuer),
                None => Err("no bearer token".to_owned()),
            };
            seen.lock().unwrap().push(Received { line: line.clone(), token, claims });
            axum::Json(json!({ "done": line }))
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(handler)).await });
    (addr, log)
}

/// Verifies an access token the way a protected API would.
fn verify(token: &str, jwks: &JwkSet, issuer: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("token has no kid")?;
    let jwk = jwks.find(&kid).ok_or("kid not in the provider's JWKS")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[API_AUDIENCE]);
    validation.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}
