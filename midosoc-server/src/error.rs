//! [`AppError`]: every way a gateway handler can fail, answered as an RFC
//! 9457 problem document with a stable `type` URI.
//!
//! The client learns what it can fix; internal causes are logged once,
//! here, and never sent.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use midosoc_tower::problem::PROBLEM_CONTENT_TYPE;
use serde_json::{Map, Value, json};

/// Base of every problem `type` URI.
const PROBLEM_BASE: &str = "https://midosoc.dev/problems/";

/// Longest piece of client-supplied text echoed back in a problem.
const ECHO_LIMIT: usize = 80;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// No agent key was presented.
    #[error("missing agent key")]
    MissingKey,
    /// The presented key belongs to no agent.
    #[error("invalid agent key")]
    InvalidKey,
    /// The body is not the JSON the endpoint expects.
    #[error("malformed JSON body: {0}")]
    InvalidJson(String),
    /// The body is larger than the endpoint accepts.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body stream failed.
    #[error("request body could not be read")]
    BodyUnreadable,
    /// No approval with this id belongs to the caller.
    #[error("unknown approval id `{0}`")]
    UnknownApproval(String),
    /// No route or upstream serves this path.
    #[error("no route for `{0}`")]
    NoRoute(String),
    /// The path would change the upstream's authority or escape its base.
    #[error("path `{0}` is not allowed")]
    ForbiddenPath(String),
    /// The request framing is ambiguous (both `Content-Length` and
    /// `Transfer-Encoding`, or several lengths).
    #[error("ambiguous request framing")]
    AmbiguousLength,
    /// The upstream could not be reached or broke the connection.
    #[error("upstream `{upstream}` unavailable")]
    UpstreamUnavailable {
        /// The upstream's name.
        upstream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The upstream took too long to answer.
    #[error("upstream `{upstream}` timed out")]
    UpstreamTimeout {
        /// The upstream's name.
        upstream: String,
    },
    /// A dependency (store, identity database) failed; nothing ran.
    #[error("service unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    /// The problem's slug, status and title.
    fn kind(&self) -> (&'static str, StatusCode, &'static str) {
        match self {
            Self::MissingKey | Self::InvalidKey => {
                ("unauthenticated", StatusCode::UNAUTHORIZED, "agent not authenticated")
            }
            Self::InvalidJson(_) => {
                ("invalid-json", StatusCode::BAD_REQUEST, "malformed JSON body")
            }
            Self::BodyTooLarge { .. } => {
                ("body-too-large", StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            }
            Self::BodyUnreadable => {
                ("invalid-body", StatusCode::BAD_REQUEST, "request body unreadable")
            }
            Self::UnknownApproval(_) => {
                ("unknown-approval", StatusCode::NOT_FOUND, "unknown approval")
            }
            Self::NoRoute(_) => ("no-route", StatusCode::NOT_FOUND, "no route for this path"),
            Self::ForbiddenPath(_) => {
                ("forbidden-path", StatusCode::BAD_REQUEST, "path not allowed")
            }
            Self::AmbiguousLength => {
                ("ambiguous-framing", StatusCode::BAD_REQUEST, "ambiguous request framing")
            }
            Self::UpstreamUnavailable { .. } => {
                ("upstream-unavailable", StatusCode::BAD_GATEWAY, "upstream unavailable")
            }
            Self::UpstreamTimeout { .. } => {
                ("upstream-timeout", StatusCode::GATEWAY_TIMEOUT, "upstream timed out")
            }
            Self::Unavailable(_) => {
                ("service-unavailable", StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
            }
        }
    }

    /// What the client is told about this occurrence.
    fn detail(&self) -> String {
        match self {
            Self::MissingKey => "send the agent key as `Authorization: Bearer mdsa_...`".to_owned(),
            Self::InvalidKey => "the agent key is not valid".to_owned(),
            Self::InvalidJson(why) => format!("the body is not valid JSON here: {}", bounded(why)),
            Self::BodyTooLarge { limit } => format!("the request body exceeds {limit} bytes"),
            Self::BodyUnreadable => "the request body could not be read".to_owned(),
            Self::UnknownApproval(id) => {
                format!("no approval `{}` exists for this agent", bounded(id))
            }
            Self::NoRoute(path) => {
                format!("no upstream or endpoint serves `{}`", bounded(path))
            }
            Self::ForbiddenPath(path) => format!(
                "`{}` could change the upstream's address or leave its base path",
                bounded(path)
            ),
            Self::AmbiguousLength => {
                "send either Content-Length or Transfer-Encoding, not both".to_owned()
            }
            Self::UpstreamUnavailable { upstream, .. } => {
                format!("upstream `{upstream}` could not be reached or failed")
            }
            Self::UpstreamTimeout { upstream } => {
                format!("upstream `{upstream}` did not answer in time")
            }
            Self::Unavailable(_) => "a dependency of the gateway failed; nothing ran".to_owned(),
        }
    }

    /// Extension members of the problem document.
    fn extensions(&self) -> Map<String, Value> {
        let mut map = Map::new();
        match self {
            Self::BodyTooLarge { limit } => {
                map.insert("limit".to_owned(), json!(limit));
            }
            Self::UpstreamUnavailable { upstream, .. } | Self::UpstreamTimeout { upstream } => {
                map.insert("upstream".to_owned(), json!(upstream));
            }
            _ => {}
        }
        map
    }

    /// Logs the error once, at the level its audience needs.
    fn log(&self) {
        match self {
            Self::Unavailable(_) => {
                tracing::error!(error = %chain(self), "request failed");
            }
            Self::UpstreamUnavailable { upstream, .. } => {
                tracing::warn!(upstream.name = %upstream, error = %chain(self), "upstream failed");
            }
            Self::UpstreamTimeout { upstream } => {
                tracing::warn!(upstream.name = %upstream, "upstream timed out");
            }
            Self::InvalidKey => tracing::info!("agent key rejected"),
            _ => tracing::debug!(reason = %self, "request rejected"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let (slug, status, title) = self.kind();
        let mut doc = Map::new();
        doc.insert("type".to_owned(), json!(format!("{PROBLEM_BASE}{slug}")));
        doc.insert("title".to_owned(), json!(title));
        doc.insert("status".to_owned(), json!(status.as_u16()));
        doc.insert("detail".to_owned(), json!(self.detail()));
        doc.extend(self.extensions());

        let mut response = (status, Value::Object(doc).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        match self {
            Self::MissingKey | Self::InvalidKey => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

/// Client-supplied text cut to a length safe to echo.
fn bounded(text: &str) -> &str {
    let mut end = text.len().min(ECHO_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An error and its sources, joined for one log line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
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
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn document(error: AppError) -> (StatusCode, http::HeaderMap, Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn upstream_failure_names_the_upstream_and_hides_the_cause() {
        let source = std::io::Error::other("connection refused to 10.1.2.3");
        let error =
            AppError::UpstreamUnavailable { upstream: "etcd".into(), source: source.into() };
        let (status, headers, doc) = document(error).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(headers[http::header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        assert_eq!(doc["type"], "https://midosoc.dev/problems/upstream-unavailable");
        assert_eq!(doc["upstream"], "etcd");
        assert!(!doc.to_string().contains("10.1.2.3"));
    }

    #[tokio::test]
    async fn missing_key_asks_for_a_bearer_token() {
        let (status, headers, doc) = document(AppError::MissingKey).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(doc["status"], 401);
    }

    #[tokio::test]
    async fn echoed_client_text_is_bounded() {
        let (_, _, doc) = document(AppError::NoRoute("/x".repeat(500))).await;
        assert!(doc["detail"].as_str().unwrap().len() < 200);
    }
}
