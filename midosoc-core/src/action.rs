//! What an agent wants to do: one HTTP request or tool call, normalised.
//!
//! An [`Action`] is built from what a gateway sees on the wire. It keeps a
//! bounded, redacted view of the request for people and classifiers, plus
//! digests that bind an approval to exactly these bytes.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, LazyLock};

use regex::Regex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Placeholder written wherever a secret was removed.
pub const REDACTED: &str = "<redacted>";

/// Bytes of body kept in an action's preview by default.
pub const DEFAULT_PREVIEW_LIMIT: usize = 4096;

/// Headers copied into an action (others are dropped). Secret ones among
/// them are redacted.
const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "user-agent",
    "accept",
    "host",
    "mcp-session-id",
    "x-request-id",
    "idempotency-key",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-amz-target",
    "soapaction",
    "x-midosoc-intent",
];

/// Header names whose values are never kept.
const SECRET_HEADERS: &[&str] =
    &["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token"];

/// Lower-case fragments of JSON keys whose values are redacted in previews.
const SECRET_KEY_FRAGMENTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "private_key",
    "credential",
    "card_number",
    "cvc",
    "ssn",
];

/// The identity of an agent, as established by the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(String);

impl AgentId {
    /// Wraps an agent name.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The agent name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 digest, shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Sha256Digest> for String {
    fn from(d: Sha256Digest) -> Self {
        d.to_string()
    }
}

impl TryFrom<String> for Sha256Digest {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(&s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| format!("invalid digest `{s}`"))?;
        Ok(Self(out))
    }
}

/// One header kept for review, its value redacted when secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderView {
    /// Lower-case header name.
    pub name: String,
    /// Value, or [`REDACTED`].
    pub value: String,
}

/// A bounded view of a request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyView {
    /// Size of the whole body in bytes.
    pub size: usize,
    /// Digest of the whole body, as received.
    pub digest: Sha256Digest,
    /// The first bytes of the body as text, secrets redacted when JSON.
    pub preview: String,
    /// Whether `preview` is shorter than the body.
    pub truncated: bool,
}

/// The protocol carried inside a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// A JSON-RPC 2.0 call.
    JsonRpc,
    /// An MCP `tools/call` request (JSON-RPC).
    Mcp,
    /// A GraphQL document.
    GraphQl,
    /// SQL text carried in a JSON field.
    Sql,
}

/// Hints an MCP server advertises for a tool. They come from an untrusted
/// server: they may raise risk, never lower it on their own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolAnnotations {
    /// The tool claims not to modify its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_hint: Option<bool>,
    /// The tool may perform destructive updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive_hint: Option<bool>,
    /// Repeated calls with the same arguments have no further effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_hint: Option<bool>,
    /// The tool reaches outside its own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world_hint: Option<bool>,
}

/// What an MCP server advertised about a tool in `tools/list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// The tool's description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The tool's annotations.
    #[serde(default)]
    pub annotations: ToolAnnotations,
}

/// The operation named inside a request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Which protocol carried it.
    pub protocol: Protocol,
    /// JSON-RPC method, MCP tool name, GraphQL operation (`mutation
    /// deleteRepo`) or the SQL statement's first keyword.
    pub name: String,
    /// Extra text the classifier reads: the GraphQL document, the SQL
    /// statement, or MCP arguments as JSON, bounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For MCP tool calls, what the server advertised about the tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolInfo>,
}

/// One request an agent wants to make, normalised for assessment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Who asks.
    pub agent: AgentId,
    /// Upper-case HTTP method (`POST` for tool calls).
    pub method: String,
    /// The target: an absolute URL, or a path and query.
    pub url: String,
    /// Selected headers, secrets redacted.
    #[serde(default)]
    pub headers: Vec<HeaderView>,
    /// Bounded view of the body.
    pub body: BodyView,
    /// The operation or tool named inside the body, when recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// What the agent says it is trying to do (untrusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    /// Digest binding method, URL and body together.
    pub request_digest: Sha256Digest,
    /// The whole body parsed as JSON, when it is JSON. Kept for
    /// classifiers; never stored or shown.
    #[serde(skip)]
    json: Option<Arc<serde_json::Value>>,
}

impl Action {
    /// Builds an action from what was seen on the wire.
    pub fn builder(
        agent: AgentId,
        method: impl Into<String>,
        url: impl Into<String>,
    ) -> ActionBuilder {
        ActionBuilder {
            agent,
            method: method.into().to_ascii_uppercase(),
            url: url.into(),
            headers: Vec::new(),
            body: bytes::Bytes::new(),
            preview_limit: DEFAULT_PREVIEW_LIMIT,
            tool: None,
            intent: None,
        }
    }

    /// The body parsed as JSON, if it was JSON.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json.as_deref()
    }

    /// The path of the URL, without scheme, authority or query.
    pub fn path(&self) -> &str {
        let rest = match self.url.find("://") {
            Some(i) => {
                let after = &self.url[i + 3..];
                after.find('/').map_or("/", |j| &after[j..])
            }
            None => &self.url,
        };
        rest.split(['?', '#']).next().unwrap_or(rest)
    }

    /// The query string of the URL, without `?`.
    pub fn query(&self) -> Option<&str> {
        let q = self.url.split_once('?')?.1;
        Some(q.split('#').next().unwrap_or(q))
    }

    /// Whether another request (method, URL, body) is the one this action
    /// describes.
    pub fn matches(&self, method: &str, url: &str, body: &[u8]) -> bool {
        self.request_digest == request_digest(method, url, &Sha256Digest::of(body))
    }
}

/// Digest binding a method, URL and body digest together.
pub fn request_digest(method: &str, url: &str, body: &Sha256Digest) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update(method.to_ascii_uppercase().as_bytes());
    h.update(b"\n");
    h.update(url.as_bytes());
    h.update(b"\n");
    h.update(body.as_bytes());
    Sha256Digest(h.finalize().into())
}

/// Builder for [`Action`].
#[derive(Debug)]
pub struct ActionBuilder {
    agent: AgentId,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: bytes::Bytes,
    preview_limit: usize,
    tool: Option<ToolInfo>,
    intent: Option<String>,
}

impl ActionBuilder {
    /// Adds headers; only a fixed set of useful ones is kept.
    pub fn headers(mut self, headers: &http::HeaderMap) -> Self {
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            self.headers.push((name.as_str().to_owned(), value));
        }
        self
    }

    /// Adds one header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<bytes::Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Bytes of body kept in the preview.
    pub fn preview_limit(mut self, limit: usize) -> Self {
        self.preview_limit = limit;
        self
    }

    /// What the MCP server advertised about the called tool, when known.
    pub fn tool_info(mut self, tool: ToolInfo) -> Self {
        self.tool = Some(tool);
        self
    }

    /// What the agent says it is doing.
    pub fn intent(mut self, intent: impl Into<String>) -> Self {
        self.intent = Some(intent.into());
        self
    }

    /// Finishes the action.
    pub fn build(self) -> Action {
        let json: Option<serde_json::Value> =
            if self.body.is_empty() { None } else { serde_json::from_slice(&self.body).ok() };

        let body_digest = Sha256Digest::of(&self.body);
        let preview = preview(&self.body, json.as_ref(), self.preview_limit);
        let body = BodyView {
            size: self.body.len(),
            digest: body_digest,
            truncated: preview.1,
            preview: preview.0,
        };

        let mut operation = json.as_ref().and_then(crate::protocol::detect);
        if let Some(op) = operation.as_mut().filter(|op| op.protocol == Protocol::Mcp) {
            op.tool = self.tool;
        }

        Action {
            request_digest: request_digest(&self.method, &self.url, &body_digest),
            headers: keep_headers(self.headers),
            agent: self.agent,
            method: self.method,
            url: self.url,
            body,
            operation,
            intent: self.intent,
            json: json.map(Arc::new),
        }
    }
}

fn keep_headers(headers: Vec<(String, String)>) -> Vec<HeaderView> {
    headers
        .into_iter()
        .filter(|(name, _)| {
            KEPT_HEADERS.contains(&name.as_str()) || SECRET_HEADERS.contains(&name.as_str())
        })
        .map(|(name, value)| {
            // SECURITY: credentials never reach the store, the dashboard or
            // a classifier.
            let value =
                if SECRET_HEADERS.contains(&name.as_str()) { REDACTED.to_owned() } else { value };
            HeaderView { name, value }
        })
        .collect()
}

/// A text preview of the body, and whether it was cut short.
fn preview(body: &[u8], json: Option<&serde_json::Value>, limit: usize) -> (String, bool) {
    let text = match json {
        Some(value) => {
            let mut value = value.clone();
            redact_json(&mut value);
            serde_json::to_string(&value).unwrap_or_default()
        }
        None => String::from_utf8_lossy(body).into_owned(),
    };
    let text = redact_text(&text).into_owned();
    if text.len() <= limit {
        return (text, false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

/// Whether a JSON key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_FRAGMENTS.iter().any(|frag| key.contains(frag))
}

/// Credential shapes found in free text: bearer values, JWTs, passwords in
/// URLs, `key=value` pairs with secret-named keys, well-known key prefixes.
static SECRET_PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    let key = "[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api_key|apikey|credential|private_key)[A-Za-z0-9_.-]*";
    [
        (r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}".to_owned(), "$1 <redacted>"),
        (r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*".to_owned(), "<redacted>"),
        (r"(://[^/\s:@]+:)[^@\s/]+@".to_owned(), "$1<redacted>@"),
        (format!(r"(?i)(^|[?&\s])({key})=[^&\s]*"), "$1$2=<redacted>"),
        (
            r"\b(?:[sr]k_(?:live|test)_|gh[pousr]_|xox[abprs]-|AKIA)[A-Za-z0-9_-]{8,}".to_owned(),
            "<redacted>",
        ),
    ]
    .into_iter()
    .filter_map(|(pattern, replacement)| Some((Regex::new(&pattern).ok()?, replacement)))
    .collect()
});

/// Redacts credential-shaped text, wherever it appears: bodies that are
/// not JSON, free-text fields, and operation details.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (pattern, replacement) in SECRET_PATTERNS.iter() {
        if let Cow::Owned(replaced) = pattern.replace_all(&out, *replacement) {
            out = Cow::Owned(replaced);
        }
    }
    out
}

/// Replaces the values of secret-looking keys with [`REDACTED`].
pub fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_secret_key(key) && !v.is_object() && !v.is_array() {
                    *v = serde_json::Value::String(REDACTED.to_owned());
                } else {
                    redact_json(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(method: &str, url: &str, body: &str) -> Action {
        Action::builder(AgentId::new("a"), method, url).body(body.to_owned()).build()
    }

    #[test]
    fn path_and_query_are_split_from_absolute_and_relative_urls() {
        let a = action("GET", "https://api.example.com/v1/users?limit=2", "");
        assert_eq!(a.path(), "/v1/users");
        assert_eq!(a.query(), Some("limit=2"));
        let b = action("GET", "/kv/range", "");
        assert_eq!(b.path(), "/kv/range");
        assert_eq!(b.query(), None);
    }

    #[test]
    fn secret_headers_and_body_fields_are_redacted() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer sk_live_123".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        let a = Action::builder(AgentId::new("a"), "post", "/charges")
            .headers(&headers)
            .body(r#"{"amount":5,"api_key":"sk_live_123","nested":{"password":"x"}}"#)
            .build();
        let auth = a.headers.iter().find(|h| h.name == "authorization").unwrap();
        assert_eq!(auth.value, REDACTED);
        assert!(!a.body.preview.contains("sk_live_123"));
        assert!(!a.body.preview.contains("\"x\""));
        assert_eq!(a.method, "POST");
    }

    #[test]
    fn credential_shapes_in_free_text_are_redacted() {
        let form = action("POST", "/login", "user=a&password=FORMSECRET&x=1");
        assert_eq!(form.body.preview, "user=a&password=<redacted>&x=1");

        let body = r#"{"note":"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcSECRET","dsn":"postgres://u:pwSECRET@h/db","k":"sk_live_abcdefgh1234"}"#;
        let a = action("POST", "/x", body);
        for secret in ["abcSECRET", "pwSECRET", "sk_live_abcdefgh1234"] {
            assert!(!a.body.preview.contains(secret), "{secret} leaked: {}", a.body.preview);
        }
        assert!(a.body.preview.contains("postgres://u:<redacted>@h/db"));
    }

    #[test]
    fn request_digest_changes_with_method_url_or_body() {
        let a = action("POST", "/x", "{}");
        assert!(a.matches("POST", "/x", b"{}"));
        assert!(!a.matches("PUT", "/x", b"{}"));
        assert!(!a.matches("POST", "/y", b"{}"));
        assert!(!a.matches("POST", "/x", b"{ }"));
    }

    #[test]
    fn preview_is_bounded_and_marked_truncated() {
        let body = "x".repeat(10_000);
        let a =
            Action::builder(AgentId::new("a"), "POST", "/").body(body).preview_limit(100).build();
        assert_eq!(a.body.preview.len(), 100);
        assert!(a.body.truncated);
        assert_eq!(a.body.size, 10_000);
    }
}
