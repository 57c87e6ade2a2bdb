//! The reverse proxy: finds the upstream for a path, checks the request,
//! and forwards it with its headers cleaned, streaming the response back.
//!
//! Every route is a [`HumanApproval`] wrapped around a [`Forwarder`], so a
//! request reaches an upstream only after the classifier or a person let
//! it through.
//!
//! # Security
//!
//! The upstream's address comes from configuration only: never from the
//! request's `Host`, path or body. Paths that could change the authority
//! (`//host`, `@`, backslashes) or leave the upstream's base path (`..`)
//! are refused, redirects are never followed, and the agent's own
//! credential and cookies never travel upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use midosoc_tower::{ApprovedAction, HumanApproval};
use tower::{Service, ServiceExt};

use crate::config::{ConfigError, UpstreamConfig};
use crate::error::AppError;
use crate::framing::Peer;
use crate::metrics::Released;

/// Hop-by-hop headers (RFC 9110 §7.6.1 and common extensions), removed in
/// both directions along with every header `Connection` names.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers that never go upstream: the agent's credentials,
/// forwarding claims we did not make, and the gateway's own headers.
const STRIPPED_REQUEST_HEADERS: &[&str] =
    &["authorization", "cookie", "forwarded", "x-real-ip", "midosoc-approval", "x-midosoc-intent"];

/// One API behind the gateway, as the proxy uses it.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// Its name, for logs, metrics and problems.
    pub(crate) name: String,
    /// The path prefix it serves on the agent listener.
    pub(crate) prefix: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    base_path: String,
    timeout: Duration,
    mint_tokens: bool,
    credential: Option<(HeaderName, HeaderValue)>,
}

impl Upstream {
    /// Builds an upstream from its (already validated) configuration.
    pub(crate) fn from_config(config: &UpstreamConfig, index: usize) -> Result<Self, ConfigError> {
        let invalid = |field: &str, problem: &str| ConfigError::Invalid {
            key: format!("upstream[{index}].{field}"),
            problem: problem.to_owned(),
        };
        let url: Uri = config.url.parse().map_err(|_| invalid("url", "not a URL"))?;
        let (Some(scheme), Some(authority)) = (url.scheme().cloned(), url.authority().cloned())
        else {
            return Err(invalid("url", "must be an http:// URL with a host"));
        };
        let credential = match &config.credential {
            Some(credential) => {
                let key = format!("upstream[{index}].credential.value");
                let secret = credential.value.read(&key)?;
                let name = HeaderName::try_from(credential.header.as_str())
                    .map_err(|_| invalid("credential.header", "not a header name"))?;
                let mut value = HeaderValue::try_from(secret.expose())
                    .map_err(|_| invalid("credential.value", "not a valid header value"))?;
                value.set_sensitive(true);
                Some((name, value))
            }
            None => None,
        };
        Ok(Self {
            name: config.name.clone(),
            prefix: config.prefix.clone(),
            scheme,
            authority,
            base_path: url.path().to_owned(),
            timeout: config.timeout,
            mint_tokens: config.mint_tokens,
            credential,
        })
    }

    /// The upstream URI for an agent's request URI, which must start with
    /// this upstream's prefix.
    fn target(&self, uri: &Uri) -> Result<Uri, AppError> {
        let path = uri.path();
        let rest = path
            .strip_prefix(self.prefix.as_str())
            .ok_or_else(|| AppError::NoRoute(path.to_owned()))?;
        let mut target = format!("{}{rest}", self.base_path);
        if let Some(query) = uri.query() {
            target.push('?');
            target.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
            .map_err(|_| AppError::ForbiddenPath(path.to_owned()))
    }
}

/// Refuses requests the proxy must not forward whatever the classifier
/// says: ambiguous framing and paths that could reach another place.
pub(crate) fn check_request(parts: &http::request::Parts) -> Result<(), AppError> {
    // SECURITY: a request with two framings is read one way here and
    // possibly another way upstream (request smuggling).
    let lengths = parts.headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 || (lengths == 1 && parts.headers.contains_key(header::TRANSFER_ENCODING)) {
        return Err(AppError::AmbiguousLength);
    }
    // SECURITY: an HTTP/1 absolute-form target names an authority of its
    // own. HTTP/2 always carries one (`:authority`, its `Host`); routing
    // never reads it either way.
    if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
        return Err(AppError::ForbiddenPath(parts.uri.to_string()));
    }
    check_path(parts.uri.path())
}

/// Refuses paths with empty, dot or authority-changing segments, judged
/// after percent-decoding: an upstream that decodes `%2f` or `%2e` must not
/// see `//host` or `..` that the raw path hid.
fn check_path(path: &str) -> Result<(), AppError> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let lower = decoded.to_ascii_lowercase();
    let authority_changing =
        lower.contains("//") || lower.contains('\\') || lower.contains('@') || lower.contains('\0');
    // SECURITY: what is still encoded after one decoding was encoded twice;
    // an upstream that decodes again would see what this check did not.
    let double_encoded = ["%2e", "%2f", "%5c", "%40", "%00"].iter().any(|e| lower.contains(e));
    let dot_segment = lower.split('/').any(|segment| segment == "." || segment == "..");
    if authority_changing || double_encoded || dot_segment || !path.starts_with('/') {
        return Err(AppError::ForbiddenPath(path.to_owned()));
    }
    Ok(())
}

/// Sends requests to one upstream and streams its answers back. Upstream
/// failures become `502` or `504` responses, so it never fails.
#[derive(Clone, Debug)]
pub(crate) struct Forwarder {
    upstream: Arc<Upstream>,
    client: Client<HttpConnector, Body>,
}

impl Forwarder {
    /// A forwarder to `upstream`, connecting within `connect_timeout`.
    ///
    /// LIMITATION: plain `http://` upstreams only (configuration refuses
    /// others); an API reached over TLS needs a TLS-terminating sidecar
    /// until a rustls connector is added here.
    pub(crate) fn new(upstream: Arc<Upstream>, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { upstream, client }
    }

    async fn forward(self, request: Request<Body>) -> Result<Response, AppError> {
        let (mut parts, body) = request.into_parts();
        let upstream = &self.upstream;
        let peer = parts.extensions.get::<ConnectInfo<Peer>>().map(|info| info.0.addr.ip());
        let released = Released { approved: parts.extensions.get::<ApprovedAction>().is_some() };
        let original_host = parts.headers.get(header::HOST).cloned();
        // Whatever is in Authorization now was put there by the approval
        // layer: the auth middleware removed the agent's key.
        let minted = parts.headers.remove(header::AUTHORIZATION);

        clean_request_headers(&mut parts.headers);
        let headers = &mut parts.headers;
        if let Ok(host) = HeaderValue::try_from(upstream.authority.as_str()) {
            headers.insert(header::HOST, host);
        }
        if let Some(ip) = peer.and_then(|ip| HeaderValue::try_from(ip.to_string()).ok()) {
            headers.insert(X_FORWARDED_FOR, ip);
        }
        // The agent listener speaks plain HTTP; TLS, when there is any, ends
        // in front of it, and forwarding headers from such a proxy are not
        // trusted (there is no trusted-proxy list yet).
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        if let (true, Some(token)) = (upstream.mint_tokens, minted) {
            headers.insert(header::AUTHORIZATION, token);
        }
        if let Some((name, value)) = &upstream.credential {
            headers.insert(name.clone(), value.clone());
        }
        parts.version = Version::HTTP_11;

        // LIMITATION: `timeout` covers the response head only; a body that
        // stalls half way is not cut off. The agent sees a stalled stream,
        // never a response it should not have, so this is a liveness gap.
        let sent = self.client.request(Request::from_parts(parts, body));
        let response = match tokio::time::timeout(upstream.timeout, sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                metrics::counter!(UPSTREAM_ERRORS, "upstream" => upstream.name.clone(), "kind" => "unavailable")
                    .increment(1);
                return Err(AppError::UpstreamUnavailable {
                    upstream: upstream.name.clone(),
                    source: Box::new(error),
                });
            }
            Err(_elapsed) => {
                metrics::counter!(UPSTREAM_ERRORS, "upstream" => upstream.name.clone(), "kind" => "timeout")
                    .increment(1);
                return Err(AppError::UpstreamTimeout { upstream: upstream.name.clone() });
            }
        };

        let (mut parts, incoming) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        parts.extensions.insert(released);
        Ok(Response::from_parts(parts, Body::new(incoming)))
    }
}

/// Counter of failed upstream exchanges, by upstream and kind.
pub(crate) const UPSTREAM_ERRORS: &str = "midosoc_upstream_errors_total";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl Service<Request<Body>> for Forwarder {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            Ok(this.forward(request).await.unwrap_or_else(IntoResponse::into_response))
        })
    }
}

/// Removes hop-by-hop headers and every header `Connection` names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Removes everything an agent must not send upstream.
fn clean_request_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    for name in STRIPPED_REQUEST_HEADERS {
        headers.remove(*name);
    }
    // SECURITY: forwarding claims from the agent are ignored; the gateway
    // states its own below.
    let claimed: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with("x-forwarded-")).cloned().collect();
    for name in claimed {
        headers.remove(name);
    }
}

impl Proxy {
    /// The agent-facing form of an upstream URL: the gateway path an agent
    /// sent, so that the upstream's address is not shown to agents.
    pub(crate) fn agent_facing(&self, url: &str) -> String {
        let Ok(uri) = url.parse::<Uri>() else { return url.to_owned() };
        let found = self.routes.iter().find_map(|(up, _)| {
            let same_host =
                uri.scheme() == Some(&up.scheme) && uri.authority() == Some(&up.authority);
            let rest = uri.path().strip_prefix(up.base_path.as_str()).filter(|_| same_host)?;
            let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
            Some(format!("{}{rest}{query}", up.prefix))
        });
        found.unwrap_or_else(|| url.to_owned())
    }
}

/// The upstreams, longest prefix first, each behind its approval layer.
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    routes: Arc<Vec<(Arc<Upstream>, HumanApproval<Forwarder>)>>,
}

impl Proxy {
    /// A proxy over `routes`.
    pub(crate) fn new(mut routes: Vec<(Arc<Upstream>, HumanApproval<Forwarder>)>) -> Self {
        routes.sort_by_key(|(upstream, _)| std::cmp::Reverse(upstream.prefix.len()));
        Self { routes: Arc::new(routes) }
    }

    /// Checks and forwards one authenticated agent request.
    pub(crate) async fn handle(&self, request: Request<Body>) -> Response {
        let (mut parts, body) = request.into_parts();
        if let Err(error) = check_request(&parts) {
            return error.into_response();
        }
        let path = parts.uri.path();
        let Some((upstream, service)) =
            self.routes.iter().find(|(up, _)| path.starts_with(&up.prefix))
        else {
            return AppError::NoRoute(path.to_owned()).into_response();
        };
        // HTTP/2 names the host in `:authority`, which the upstream URL is
        // about to replace; keep it as `Host` for `X-Forwarded-Host`.
        if let Some(authority) = parts.uri.authority()
            && !parts.headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::try_from(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        // INVARIANT: the approval layer sees the upstream's own URL, so the
        // action analysts review, and the location a minted token allows,
        // are exactly what the upstream receives.
        parts.uri = match upstream.target(&parts.uri) {
            Ok(uri) => uri,
            Err(error) => return error.into_response(),
        };
        let request = Request::from_parts(parts, body);
        match service.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str, prefix: &str) -> Upstream {
        let config = UpstreamConfig {
            name: "up".into(),
            prefix: prefix.into(),
            url: url.into(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            mint_tokens: false,
            audience: None,
            scope: None,
            credential: None,
        };
        Upstream::from_config(&config, 0).unwrap()
    }

    #[test]
    fn target_replaces_the_prefix_with_the_base_path_and_keeps_the_query() {
        let up = upstream("http://127.0.0.1:2379/", "/kv/");
        let uri: Uri = "/kv/v3/kv/range?x=1".parse().unwrap();
        assert_eq!(up.target(&uri).unwrap(), "http://127.0.0.1:2379/v3/kv/range?x=1");
        let up = upstream("http://api.internal:80/base/", "/api/");
        assert_eq!(
            up.target(&"/api/users".parse().unwrap()).unwrap(),
            "http://api.internal:80/base/users"
        );
    }

    #[test]
    fn authority_changing_and_escaping_paths_are_refused() {
        for path in [
            "/kv//evil.example/x",
            "/kv/a\\b",
            "/kv/user@evil",
            "/kv/%40evil",
            "/kv/%5Cevil",
            "/kv/../admin",
            "/kv/%2e%2e/admin",
            "/kv/./x",
            "/kv/%2f%2fevil",
            "/kv/x%2F%2Fevil.com",
            "/kv/%2e%2e%2fx",
            "/kv/%2E%2E%2fx",
            "/kv/a%00b",
            "/kv/%252e%252e/x",
        ] {
            assert!(check_path(path).is_err(), "{path}");
        }
        for path in ["/kv/v3/kv/range", "/kv/a.b/c..d", "/kv/", "/gl/projects/group%2Fproject"] {
            assert!(check_path(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "close, x-secret-hop".parse().unwrap());
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        headers.insert("authorization", "Bearer mdsa_x".parse().unwrap());
        headers.insert("cookie", "a=b".parse().unwrap());
        headers.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        headers.insert("x-forwarded-host", "evil".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        clean_request_headers(&mut headers);
        let left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn upstream_urls_are_shown_to_agents_as_gateway_paths() {
        let up = Arc::new(upstream("http://127.0.0.1:2379/", "/kv/"));
        let forwarder = Forwarder::new(up.clone(), Duration::from_secs(1));
        let layer = midosoc_tower::HumanApprovalLayer::new(
            midosoc_core::classify::HeuristicClassifier::default(),
            midosoc_core::store::MemoryStore::new(),
            midosoc_core::token::LocalIssuer::generate("iss", "aud"),
        );
        let proxy = Proxy::new(vec![(up, tower::Layer::layer(&layer, forwarder))]);
        assert_eq!(
            proxy.agent_facing("http://127.0.0.1:2379/v3/kv/range?x=1"),
            "/kv/v3/kv/range?x=1"
        );
        assert_eq!(proxy.agent_facing("https://api.example.com/x"), "https://api.example.com/x");
    }

    #[test]
    fn both_framings_are_refused() {
        let request = Request::post("/kv/x")
            .header("content-length", "5")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        assert!(matches!(check_request(&parts), Err(AppError::AmbiguousLength)));
    }
}
