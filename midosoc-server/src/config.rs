//! The gateway's configuration: one TOML file, overridable key by key with
//! `MIDOSOC_*` environment variables, checked once at start-up.
//!
//! Every key has a default, so `midosoc serve` runs with no file at all.
//! `midosoc.example.toml` (printed by `midosoc config example`) is the one
//! commented list of keys; a test keeps it parsing and equal to the
//! defaults. Unknown keys are errors: a misspelt key must not silently fall
//! back to a default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use midosoc_core::classify::{CompositionMode, LlmClassifier, LlmConfig, LlmError};
use serde::{Deserialize, Serialize};

use crate::issuer::ProviderIssuerConfig;
use crate::review::OidcConfig;

/// The commented example configuration, with every key at its default.
pub(crate) const EXAMPLE: &str = include_str!("../midosoc.example.toml");

/// Prefix of the environment variables that override keys.
const ENV_PREFIX: &str = "MIDOSOC_";

/// Separator between the parts of a key in an environment variable, as in
/// `MIDOSOC_AGENT__LISTEN` for `agent.listen`.
const ENV_SPLIT: &str = "__";

/// Top-level keys an environment variable may set. Other `MIDOSOC_*`
/// variables (such as those the test suites read) are not configuration.
const TOP_LEVEL_KEYS: &[&str] = &[
    "data_dir",
    "agent",
    "review",
    "approval",
    "store",
    "classifier",
    "issuer",
    "log",
    "shutdown",
    "upstream",
];

/// Why the configuration cannot be used. Each message names the key and
/// says how to fix it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file does not exist.
    #[error("config file `{0}` not found; create it with `midosoc config example > {0}`")]
    Missing(PathBuf),
    /// A key is unknown, has the wrong type, or the file is not TOML.
    #[error("{0}")]
    Syntax(String),
    /// A key has a value the gateway cannot use.
    #[error("invalid value for `{key}`: {problem}")]
    Invalid {
        /// The key, dotted.
        key: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), problem: problem.into() }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Where identities, the signing key and approvals are kept.
    pub(crate) data_dir: PathBuf,
    /// The listener agents talk to.
    pub(crate) agent: AgentConfig,
    /// The listener analysts talk to.
    pub(crate) review: ReviewConfig,
    /// How held requests wait.
    pub(crate) approval: ApprovalConfig,
    /// Where approvals are kept.
    pub(crate) store: StoreConfig,
    /// How requests are assessed.
    pub(crate) classifier: ClassifierConfig,
    /// How tokens for approved actions are minted.
    pub(crate) issuer: IssuerConfig,
    /// How the gateway logs.
    pub(crate) log: LogConfig,
    /// How the gateway stops.
    pub(crate) shutdown: ShutdownConfig,
    /// The APIs behind the gateway, by path prefix.
    pub(crate) upstream: Vec<UpstreamConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./midosoc-data"),
            agent: AgentConfig::default(),
            review: ReviewConfig::default(),
            approval: ApprovalConfig::default(),
            store: StoreConfig::default(),
            classifier: ClassifierConfig::default(),
            issuer: IssuerConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            upstream: Vec::new(),
        }
    }
}

/// `[agent]`: the agent listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AgentConfig {
    /// Address to listen on.
    pub(crate) listen: SocketAddr,
    /// The URL agents use to reach this listener, when it differs from
    /// `http://{listen}` (behind a load balancer, for instance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) public_url: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), public_url: None }
    }
}

/// `[review]`: the review listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ReviewConfig {
    /// Address to listen on.
    pub(crate) listen: SocketAddr,
    /// The URL analysts use to reach the dashboard, when it differs from
    /// `http://{listen}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) public_url: Option<String>,
    /// Whether session cookies carry `Secure`. Unset: on, unless the
    /// listener is on a loopback address and `public_url` is not https.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) secure_cookies: Option<bool>,
    /// `[review.oidc]`: analyst sign-in with OpenID Connect. Unset: local
    /// analyst tokens only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) oidc: Option<OidcConfig>,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            public_url: None,
            secure_cookies: None,
            oidc: None,
        }
    }
}

/// `[approval]`: how held requests wait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ApprovalConfig {
    /// Largest request body read for assessment, in bytes.
    pub(crate) body_limit: usize,
    /// How long a held request waits before `202 Accepted`.
    #[serde(with = "humantime_serde")]
    pub(crate) wait_timeout: Duration,
    /// The longest wait an agent may ask for with `Prefer: wait=N`.
    #[serde(with = "humantime_serde")]
    pub(crate) max_wait: Duration,
    /// How long an approval may stay pending before it expires.
    #[serde(with = "humantime_serde")]
    pub(crate) ttl: Duration,
    /// `Retry-After` sent with `202 Accepted` and `503`.
    #[serde(with = "humantime_serde")]
    pub(crate) retry_after: Duration,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            wait_timeout: Duration::from_secs(5 * 60),
            max_wait: Duration::from_secs(15 * 60),
            ttl: Duration::from_secs(60 * 60),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// File name of the default SQLite store, inside `data_dir`.
const DEFAULT_STORE_FILE: &str = "approvals.db";

/// `[store]`: where approvals are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StoreConfig {
    /// `memory`, `sqlite://FILE` or `postgres://...`; unset means a SQLite
    /// file in `data_dir` (see [`Config::store_url`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<String>,
    /// What the agent listener does with safe requests while the store is
    /// unreachable. Risky ones are always refused with `503`.
    pub(crate) on_outage: OnOutage,
}

/// `store.on_outage`: safe requests while the store is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnOutage {
    /// Safe requests pass: they need no approval, so no store.
    #[default]
    AllowSafe,
    /// Every agent request is refused with `503` until the store answers.
    RefuseAll,
}

/// `[classifier]`: how requests are assessed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ClassifierConfig {
    /// `heuristic`: the built-in rule table.
    pub(crate) kind: String,
    /// `[classifier.llm]`: a language model asked for a second opinion,
    /// which may raise the rules' verdict but never lower it. Unset: the
    /// rules alone decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) llm: Option<LlmConfig>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self { kind: "heuristic".to_owned(), llm: None }
    }
}

impl ClassifierConfig {
    /// The LLM classifier `[classifier.llm]` describes, with its API key
    /// read, or `None` when the table is absent. Nothing is sent to the
    /// model here.
    pub(crate) fn llm_classifier(&self) -> Result<Option<LlmClassifier>, ConfigError> {
        let Some(llm) = &self.llm else { return Ok(None) };
        check_url("classifier.llm.base_url", Some(&llm.base_url))?;
        LlmClassifier::from_config(llm).map(Some).map_err(|e| {
            let problem = match e {
                LlmError::InvalidConfig(problem) => problem,
                other => one_line(&other),
            };
            ConfigError::invalid("classifier.llm", problem)
        })
    }
}

impl fmt::Display for ClassifierConfig {
    /// `rules`, or `rules + llm `MODEL` at URL (MODE mode)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rules")?;
        if let Some(llm) = &self.llm {
            let mode = match llm.mode {
                CompositionMode::Shadow => "shadow",
                _ => "enforce",
            };
            let url = redact_url(&llm.base_url);
            write!(f, " + llm `{}` at {url} ({mode} mode)", llm.model)?;
        }
        Ok(())
    }
}

/// An error and its sources on one line, joined by `: `.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// `[issuer]`: how tokens are minted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct IssuerConfig {
    /// `local`: the built-in Ed25519 issuer.
    pub(crate) kind: String,
    /// The `iss` claim; unset means the agent listener's public URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issuer: Option<String>,
    /// The default `aud` claim.
    pub(crate) audience: String,
    /// How long a minted token is valid.
    #[serde(with = "humantime_serde")]
    pub(crate) token_ttl: Duration,
    /// `[issuer.oauth2]`: the OAuth 2.0 server used when `kind = "oauth2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) oauth2: Option<ProviderIssuerConfig>,
    /// `[issuer.auth0]`: the Auth0 tenant used when `kind = "auth0"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) auth0: Option<ProviderIssuerConfig>,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            kind: "local".to_owned(),
            issuer: None,
            audience: "midosoc".to_owned(),
            token_ttl: Duration::from_secs(5 * 60),
            oauth2: None,
            auth0: None,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event.
    Json,
}

/// `[log]`: how the gateway logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// `human` or `json`.
    pub(crate) format: LogFormat,
    /// A `tracing` filter, such as `info` or `midosoc=debug,info`.
    pub(crate) filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, filter: "info".to_owned() }
    }
}

/// `[shutdown]`: how the gateway stops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ShutdownConfig {
    /// How long requests in flight may take to finish after a signal.
    #[serde(with = "humantime_serde")]
    pub(crate) grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace: Duration::from_secs(10) }
    }
}

/// `[[upstream]]`: one API behind the gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamConfig {
    /// A short name used in logs, metrics and error messages.
    pub(crate) name: String,
    /// Requests whose path starts with this prefix go to this upstream,
    /// with the prefix replaced by the path of `url`.
    pub(crate) prefix: String,
    /// Where to send them: `http://host:port/base/`.
    pub(crate) url: String,
    /// How long connecting may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub(crate) connect_timeout: Duration,
    /// How long the upstream may take to send its response head.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub(crate) timeout: Duration,
    /// Whether every forwarded request carries a minted Midosoc token in
    /// `Authorization`.
    #[serde(default)]
    pub(crate) mint_tokens: bool,
    /// The audience of tokens minted for this upstream; `issuer.audience`
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) audience: Option<String>,
    /// The scopes (space separated) asked for in tokens minted for this
    /// upstream; the issuer's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
    /// A credential the gateway adds to every forwarded request, so the
    /// agent never holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) credential: Option<CredentialConfig>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[upstream.credential]`: a header the gateway adds upstream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CredentialConfig {
    /// The header, such as `x-api-key`.
    pub(crate) header: String,
    /// Where its value comes from.
    pub(crate) value: SecretSource,
}

/// Where a secret comes from: exactly one of `env` or `file`.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretSource {
    /// An environment variable holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) env: Option<String>,
    /// A file holding the secret (trailing newlines are trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) file: Option<PathBuf>,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource").field("env", &self.env).field("file", &self.file).finish()
    }
}

/// A secret read from its source. Its `Debug` never shows the value.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    /// The value, for the one place that must send it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl SecretSource {
    /// Reads the secret; `key` names it in errors.
    pub(crate) fn read(&self, key: &str) -> Result<Secret, ConfigError> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                ConfigError::invalid(key, format!("environment variable `{var}` is not set"))
            })?,
            (None, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(key, format!("cannot read `{}`: {e}", path.display()))
            })?,
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "give exactly one of `env = \"VAR\"` or `file = \"/path\"`",
                ));
            }
        };
        let value = value.trim_end_matches(['\r', '\n']).to_owned();
        if value.is_empty() {
            return Err(ConfigError::invalid(key, "the secret is empty"));
        }
        Ok(Secret(value))
    }
}

impl Config {
    /// Loads the configuration: defaults, then `file` when given, then
    /// `MIDOSOC_*` environment variables; then checks it.
    pub(crate) fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(environment());
        Self::extract(figment)
    }

    /// Parses a TOML document over the defaults, without the environment.
    #[cfg(test)]
    pub(crate) fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn extract(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(|e| ConfigError::Syntax(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.agent.listen == self.review.listen && self.agent.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "review.listen",
                "agents and analysts need separate listeners; pick another port",
            ));
        }
        check_url("agent.public_url", self.agent.public_url.as_deref())?;
        check_url("review.public_url", self.review.public_url.as_deref())?;
        if self.approval.body_limit == 0 {
            return Err(ConfigError::invalid("approval.body_limit", "must be at least 1 byte"));
        }
        if self.approval.wait_timeout > self.approval.max_wait {
            return Err(ConfigError::invalid(
                "approval.wait_timeout",
                "must not exceed `approval.max_wait`",
            ));
        }
        if self.approval.ttl < self.approval.max_wait {
            return Err(ConfigError::invalid(
                "approval.ttl",
                "must be at least `approval.max_wait`, or approvals expire while agents wait",
            ));
        }
        let url = self.store_url();
        let url = url.as_str();
        let known = url == "memory"
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://");
        if !known {
            return Err(ConfigError::invalid(
                "store.url",
                format!(
                    "`{}` is not supported; use `memory`, `sqlite://FILE` or `postgres://...`",
                    redact_url(url)
                ),
            ));
        }
        if self.classifier.kind != "heuristic" {
            return Err(ConfigError::invalid(
                "classifier.kind",
                format!("`{}` is not supported; use `heuristic`", self.classifier.kind),
            ));
        }
        // Builds the client and reads the key, so that a missing key or a
        // bad URL stops `config check` and start-up, not the first request.
        self.classifier.llm_classifier()?;
        if !crate::issuer::KINDS.contains(&self.issuer.kind.as_str()) {
            return Err(ConfigError::invalid(
                "issuer.kind",
                format!(
                    "`{}` is not supported; use `local`, `oauth2` or `auth0`",
                    self.issuer.kind
                ),
            ));
        }
        crate::issuer::check(&self.issuer).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        if let Some(oidc) = &self.review.oidc {
            oidc.check().map_err(|e| ConfigError::Syntax(e.to_string()))?;
        }
        if let Err(e) = self.log.filter.parse::<tracing_subscriber::EnvFilter>() {
            return Err(ConfigError::invalid("log.filter", format!("not a tracing filter: {e}")));
        }
        self.validate_upstreams()
    }

    fn validate_upstreams(&self) -> Result<(), ConfigError> {
        for (i, up) in self.upstream.iter().enumerate() {
            let key = |field: &str| format!("upstream[{i}].{field}");
            if up.name.is_empty()
                || !up.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError::invalid(
                    key("name"),
                    "use letters, digits, `-` or `_`, such as `etcd`",
                ));
            }
            if !up.prefix.starts_with('/') || !up.prefix.ends_with('/') || up.prefix.len() < 3 {
                return Err(ConfigError::invalid(
                    key("prefix"),
                    format!("`{}` must start and end with `/`, such as `/kv/`", up.prefix),
                ));
            }
            if RESERVED_PREFIXES
                .iter()
                .any(|r| up.prefix.starts_with(r) || r.starts_with(&*up.prefix))
            {
                return Err(ConfigError::invalid(
                    key("prefix"),
                    format!(
                        "`{}` overlaps the gateway's own routes (`/v1/`, `/.well-known/`, `/healthz`, `/readyz`)",
                        up.prefix
                    ),
                ));
            }
            let url: http::Uri = up.url.parse().map_err(|_| {
                ConfigError::invalid(key("url"), format!("`{}` is not a URL", up.url))
            })?;
            if url.scheme_str() != Some("http") || url.authority().is_none() {
                return Err(ConfigError::invalid(
                    key("url"),
                    format!("`{}` must be an http:// URL with a host", up.url),
                ));
            }
            if url.query().is_some() || !url.path().ends_with('/') {
                return Err(ConfigError::invalid(
                    key("url"),
                    format!("`{}` must end with `/` and have no query", up.url),
                ));
            }
            if up.timeout.is_zero() || up.connect_timeout.is_zero() {
                return Err(ConfigError::invalid(key("timeout"), "timeouts must be above zero"));
            }
            if let Some(credential) = &up.credential {
                let name =
                    http::HeaderName::try_from(credential.header.as_str()).map_err(|_| {
                        ConfigError::invalid(key("credential.header"), "not a header name")
                    })?;
                if up.mint_tokens && name == http::header::AUTHORIZATION {
                    return Err(ConfigError::invalid(
                        key("credential.header"),
                        "`authorization` carries the minted token when `mint_tokens` is on; \
                         use another header",
                    ));
                }
                credential.value.read(&key("credential.value"))?;
            }
            let duplicate =
                self.upstream[..i].iter().find(|o| o.prefix == up.prefix || o.name == up.name);
            if let Some(other) = duplicate {
                return Err(ConfigError::invalid(
                    key("prefix"),
                    format!("upstream `{}` already uses this name or prefix", other.name),
                ));
            }
        }
        Ok(())
    }

    /// Whether review cookies carry `Secure`: as configured, else on unless
    /// the dashboard is plain http on a loopback address.
    pub(crate) fn secure_cookies(&self) -> bool {
        self.review.secure_cookies.unwrap_or_else(|| {
            let https =
                self.review.public_url.as_deref().is_some_and(|u| u.starts_with("https://"));
            https || !self.review.listen.ip().is_loopback()
        })
    }

    /// The approval store's URL: `store.url`, else a SQLite file in
    /// `data_dir`, so that held requests survive a restart by default.
    pub(crate) fn store_url(&self) -> String {
        match &self.store.url {
            Some(url) => url.clone(),
            None => {
                let file = self.data_dir.join(DEFAULT_STORE_FILE);
                format!("sqlite://{}", file.display())
            }
        }
    }
}

/// Path prefixes the agent listener answers itself.
const RESERVED_PREFIXES: &[&str] = &["/v1/", "/.well-known/", "/healthz", "/readyz", "/metrics"];

/// A URL with any password replaced, safe to print.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let slash = if rest.contains('/') { "/" } else { "" };
            format!("{scheme}://{user}:<redacted>@{host}{slash}{path}")
        }
        None => url.to_owned(),
    }
}

fn check_url(key: &str, url: Option<&str>) -> Result<(), ConfigError> {
    let Some(url) = url else { return Ok(()) };
    let ok = url
        .parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, format!("`{url}` must be an http:// or https:// URL")))
    }
}

/// `MIDOSOC_*` variables whose first part is a configuration key.
fn environment() -> Env {
    Env::prefixed(ENV_PREFIX).split(ENV_SPLIT).filter(|key| {
        // Keys are still upper-case here; figment lowercases them later.
        let top = key.as_str().split('.').next().unwrap_or_default();
        TOP_LEVEL_KEYS.iter().any(|known| known.eq_ignore_ascii_case(top))
    })
}

/// One readable line for a figment error, naming the key and its origin.
fn describe(error: &figment::Error) -> String {
    use figment::error::Kind;

    let key = error.path.join(".");
    let origin = origin(error);
    // The path may or may not already end with the field in question.
    let at = |field: &str| match error.path.last() {
        Some(last) if last == field => key.clone(),
        _ if key.is_empty() => field.to_owned(),
        _ => format!("{key}.{field}"),
    };
    let line = match &error.kind {
        Kind::UnknownField(field, expected) => format!(
            "unknown key `{}`{origin}; valid keys here: {}; fix the spelling or remove it",
            at(field),
            list(expected)
        ),
        Kind::UnknownVariant(value, expected) => format!(
            "`{value}` is not a valid value for `{key}`{origin}; use one of {}",
            list(expected)
        ),
        Kind::MissingField(field) => {
            format!("missing key `{}`{origin}; add it", at(field))
        }
        Kind::InvalidType(actual, expected) => {
            format!("`{key}`{origin} has the wrong type: found {actual}, expected {expected}")
        }
        Kind::InvalidValue(actual, expected) => {
            format!("`{key}`{origin} has an invalid value: found {actual}, expected {expected}")
        }
        Kind::Message(message) if key.is_empty() => format!("{message}{origin}"),
        Kind::Message(message) => format!("invalid value for `{key}`{origin}: {message}"),
        other => format!("invalid configuration at `{key}`{origin}: {other}"),
    };
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// ` in file.toml` or ` from MIDOSOC_X`, for an error's message.
fn origin(error: &figment::Error) -> String {
    let Some(metadata) = &error.metadata else { return String::new() };
    if let Some(figment::Source::File(path)) = &metadata.source {
        return format!(" in `{}`", path.display());
    }
    if metadata.name.contains("environment") {
        let parts: Vec<String> = error.path.iter().map(|p| p.to_ascii_uppercase()).collect();
        return format!(" from `{ENV_PREFIX}{}`", parts.join(ENV_SPLIT));
    }
    String::new()
}

fn list(items: &[&str]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_equals_the_defaults() {
        let example = Config::from_toml(EXAMPLE).unwrap();
        let expected = Config { upstream: example.upstream.clone(), ..Config::default() };
        assert_eq!(example, expected);
        assert_eq!(example.upstream.len(), 1);
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn misspelt_key_is_an_error_naming_the_key_and_the_valid_ones() {
        let err = Config::from_toml("[agent]\nlisten_addr = \"127.0.0.1:9000\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown key `agent.listen_addr`"), "{text}");
        assert!(text.contains("`listen`"), "{text}");
        assert!(!text.contains('\n'), "{text}");

        let err = Config::from_toml("dat_dir = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown key `dat_dir`"), "{err}");
    }

    #[test]
    fn wrong_types_and_values_name_the_key() {
        let err = Config::from_toml("[agent]\nlisten = \"not an address\"\n").unwrap_err();
        assert!(err.to_string().contains("`agent.listen`"), "{err}");
        let err = Config::from_toml("[approval]\nwait_timeout = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("`approval.wait_timeout`"), "{err}");
        let err = Config::from_toml("[store]\nurl = \"mysql://u:pw@db/x\"\n").unwrap_err();
        assert!(err.to_string().contains("`store.url`"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
        for url in ["memory", "sqlite://approvals.db", "postgres://u:pw@127.0.0.1/test"] {
            let toml = format!("[store]\nurl = \"{url}\"\n");
            assert_eq!(Config::from_toml(&toml).unwrap().store_url(), url);
        }
        let config = Config::from_toml("data_dir = \"/srv/m\"\n").unwrap();
        assert_eq!(config.store_url(), "sqlite:///srv/m/approvals.db");
        let toml = "[store]\non_outage = \"refuse_all\"\n";
        assert_eq!(Config::from_toml(toml).unwrap().store.on_outage, OnOutage::RefuseAll);
    }

    #[test]
    fn upstreams_are_checked() {
        let cases = [
            ("prefix = \"kv\"", "upstream[0].prefix"),
            ("prefix = \"/v1/\"", "upstream[0].prefix"),
            ("url = \"https://example.com/\"", "upstream[0].url"),
            ("url = \"http://example.com/x?y=1\"", "upstream[0].url"),
            ("timeout = \"0s\"", "upstream[0].timeout"),
        ];
        for (line, key) in cases {
            let mut fields = vec![
                ("name", "\"etcd\""),
                ("prefix", "\"/kv/\""),
                ("url", "\"http://127.0.0.1:2379/\""),
            ];
            let (k, v) = line.split_once(" = ").unwrap();
            fields.retain(|(f, _)| *f != k);
            let mut toml = String::from("[[upstream]]\n");
            for (f, val) in fields {
                toml.push_str(&format!("{f} = {val}\n"));
            }
            toml.push_str(&format!("{k} = {v}\n"));
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        let source = SecretSource { env: None, file: Some(file) };
        assert_eq!(source.read("k").unwrap().expose(), "s3cret");
        assert!(!format!("{:?}", source.read("k").unwrap()).contains("s3cret"));

        let unset = SecretSource { env: Some("MIDOSOC_TEST_SURELY_UNSET".into()), file: None };
        let err = unset.read("upstream[0].credential.value").unwrap_err().to_string();
        assert!(err.contains("MIDOSOC_TEST_SURELY_UNSET"), "{err}");
        assert!(SecretSource::default().read("k").is_err());
    }

    /// The first `[classifier.llm]` block of `text`: in the example, the
    /// commented lines up to a blank one, with `# ` taken off the keys; in
    /// the guide, the code block, without its comments.
    fn llm_block(text: &str, commented: bool) -> String {
        let (header, end) =
            if commented { ("# [classifier.llm]", "\n\n") } else { ("[classifier.llm]", "```") };
        let start = text.find(&format!("\n{header}\n")).expect("a [classifier.llm] block");
        let block = text[start + 1..].split(end).next().unwrap_or_default();
        block
            .lines()
            .filter_map(|line| if commented { line.strip_prefix("# ") } else { Some(line) })
            .filter(|line| line.starts_with('[') || line.contains(" = "))
            .filter(|line| !line.starts_with('`'))
            .map(|line| format!("{line}\n"))
            .collect()
    }

    fn llm_table(block: &str) -> LlmConfig {
        Figment::from(Toml::string(block)).extract_inner("classifier.llm").unwrap()
    }

    #[test]
    fn llm_blocks_of_the_example_and_the_guide_list_the_defaults() {
        let guide = include_str!("../../docs/llm.md");
        for block in [llm_block(EXAMPLE, true), llm_block(guide, false)] {
            let table = llm_table(&block);
            let mut expected = LlmConfig::new(&table.base_url, &table.model);
            expected.api_version = table.api_version.clone();
            expected.api_key_env = table.api_key_env.clone();
            expected.api_key_file = table.api_key_file.clone();
            assert_eq!(table, expected, "{block}");
            assert!(table.api_key_env.is_some(), "{block}");
        }
    }

    #[test]
    fn without_an_llm_table_the_rules_alone_decide() {
        let config = Config::from_toml("[classifier]\nkind = \"heuristic\"\n").unwrap();
        assert_eq!(config.classifier.llm, None);
        assert!(config.classifier.llm_classifier().unwrap().is_none());
    }

    #[test]
    fn llm_table_is_read_and_its_key_comes_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("llm-key");
        std::fs::write(&key, "sk-test-0123456789abcdef\n").unwrap();
        let toml = format!(
            "[classifier.llm]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\
             api_key_file = {key:?}\nmode = \"shadow\"\nskip_confidence = 0.5\n"
        );
        let config = Config::from_toml(&toml).unwrap();
        let llm = config.classifier.llm.as_ref().unwrap();
        assert_eq!(llm.policy().mode, CompositionMode::Shadow);
        assert_eq!(
            config.classifier.to_string(),
            "rules + llm `m` at http://127.0.0.1:9/v1 (shadow mode)"
        );
        assert_eq!(llm.policy().skip_confidence, Some(0.5));
        let classifier = config.classifier.llm_classifier().unwrap().unwrap();
        assert!(!format!("{classifier:?} {config:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn bad_llm_tables_fail_with_one_line_naming_the_key() {
        let base = "[classifier.llm]\nmodel = \"m\"\n";
        let cases = [
            (
                "base_url = \"http://x/v1\"\napi_key_env = \"MIDOSOC_TEST_SURELY_UNSET\"",
                "`MIDOSOC_TEST_SURELY_UNSET`",
            ),
            ("base_url = \"http://x/v1\"\napi_key_file = \"/nonexistent/key\"", "key file"),
            ("base_url = \"localhost:11434/v1\"", "classifier.llm.base_url"),
            ("base_url = \"http://x/v1\"\nskip_confidence = 2.0", "skip_confidence"),
            ("base_url = \"http://x/v1\"\napi_key = \"inline\"", "classifier.llm.api_key"),
            ("model_name = \"m\"", "classifier.llm"),
        ];
        for (lines, expected) in cases {
            let err = Config::from_toml(&format!("{base}{lines}\n")).unwrap_err().to_string();
            assert!(err.contains(expected), "{lines}: {err}");
            assert!(err.contains("classifier.llm"), "{lines}: {err}");
            assert!(!err.contains('\n'), "{lines}: {err}");
        }
    }

    #[test]
    fn secure_cookies_are_relaxed_only_on_loopback_http() {
        let mut config = Config::default();
        assert!(!config.secure_cookies());
        config.review.public_url = Some("https://review.example".into());
        assert!(config.secure_cookies());
        config.review.public_url = None;
        config.review.listen = "0.0.0.0:8081".parse().unwrap();
        assert!(config.secure_cookies());
    }
}
