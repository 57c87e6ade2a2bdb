//! RFC 9457 problem details: the one shape in which the layers answer a
//! request themselves.
//!
//! Every problem has a stable `type` URI under
//! `https://midosoc.dev/problems/`, so an agent can branch on it without
//! parsing prose. Extensions such as `approval_id` carry the data an agent
//! needs to come back for its answer.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

/// Media type of a problem document.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// The problems the layers answer with. Each has a stable `type` URI, a
/// title and an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The classifier refused the request outright (`403`).
    RequestRefused,
    /// An analyst denied the approval (`403`).
    ApprovalDenied,
    /// The wait ran out; the approval is still pending (`202`).
    ApprovalPending,
    /// Nobody decided in time (`410`).
    ApprovalExpired,
    /// The approval was withdrawn before a decision (`410`).
    ApprovalWithdrawn,
    /// The approved action already ran once (`409`).
    AlreadyExecuted,
    /// A resumed request differs from the one that was approved (`409`).
    RequestMismatch,
    /// No approval with this id exists for this agent (`404`).
    UnknownApproval,
    /// The `Midosoc-Approval` header is not an approval id (`400`).
    InvalidApprovalId,
    /// The request body exceeds the configured limit (`413`).
    BodyTooLarge,
    /// The request body could not be read (`400`).
    InvalidBody,
    /// The agent has too many approvals waiting already (`429`).
    TooManyPending,
    /// The approval store or token issuer failed; nothing ran (`503`).
    ApprovalUnavailable,
    /// The bearer token is missing, malformed, expired or not ours (`401`).
    InvalidToken,
    /// The bearer token was already used once (`401`).
    TokenReplayed,
    /// The bearer token allows a different request than this one (`403`).
    TokenMismatch,
}

impl ProblemKind {
    /// The stable `type` URI.
    pub fn type_uri(self) -> &'static str {
        match self {
            Self::RequestRefused => "https://midosoc.dev/problems/request-refused",
            Self::ApprovalDenied => "https://midosoc.dev/problems/approval-denied",
            Self::ApprovalPending => "https://midosoc.dev/problems/approval-pending",
            Self::ApprovalExpired => "https://midosoc.dev/problems/approval-expired",
            Self::ApprovalWithdrawn => "https://midosoc.dev/problems/approval-withdrawn",
            Self::AlreadyExecuted => "https://midosoc.dev/problems/already-executed",
            Self::RequestMismatch => "https://midosoc.dev/problems/request-mismatch",
            Self::UnknownApproval => "https://midosoc.dev/problems/unknown-approval",
            Self::InvalidApprovalId => "https://midosoc.dev/problems/invalid-approval-id",
            Self::BodyTooLarge => "https://midosoc.dev/problems/body-too-large",
            Self::InvalidBody => "https://midosoc.dev/problems/invalid-body",
            Self::TooManyPending => "https://midosoc.dev/problems/too-many-pending",
            Self::ApprovalUnavailable => "https://midosoc.dev/problems/approval-unavailable",
            Self::InvalidToken => "https://midosoc.dev/problems/invalid-token",
            Self::TokenReplayed => "https://midosoc.dev/problems/token-replayed",
            Self::TokenMismatch => "https://midosoc.dev/problems/token-mismatch",
        }
    }

    /// A short, fixed summary of the problem.
    pub fn title(self) -> &'static str {
        match self {
            Self::RequestRefused => "request refused",
            Self::ApprovalDenied => "approval denied",
            Self::ApprovalPending => "approval pending",
            Self::ApprovalExpired => "approval expired",
            Self::ApprovalWithdrawn => "approval withdrawn",
            Self::AlreadyExecuted => "approved action already executed",
            Self::RequestMismatch => "request does not match the approval",
            Self::UnknownApproval => "unknown approval",
            Self::InvalidApprovalId => "invalid approval id",
            Self::BodyTooLarge => "request body too large",
            Self::InvalidBody => "request body unreadable",
            Self::TooManyPending => "too many pending approvals",
            Self::ApprovalUnavailable => "approval service unavailable",
            Self::InvalidToken => "invalid token",
            Self::TokenReplayed => "token already used",
            Self::TokenMismatch => "token does not allow this request",
        }
    }

    /// The HTTP status the problem is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ApprovalPending => StatusCode::ACCEPTED,
            Self::InvalidApprovalId | Self::InvalidBody => StatusCode::BAD_REQUEST,
            Self::InvalidToken | Self::TokenReplayed => StatusCode::UNAUTHORIZED,
            Self::RequestRefused | Self::ApprovalDenied | Self::TokenMismatch => {
                StatusCode::FORBIDDEN
            }
            Self::UnknownApproval => StatusCode::NOT_FOUND,
            Self::AlreadyExecuted | Self::RequestMismatch => StatusCode::CONFLICT,
            Self::ApprovalExpired | Self::ApprovalWithdrawn => StatusCode::GONE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyPending => StatusCode::TOO_MANY_REQUESTS,
            Self::ApprovalUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// One problem details document, ready to become a response.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    kind: ProblemKind,
    detail: Option<String>,
    extensions: Map<String, Value>,
}

impl Problem {
    /// A problem of `kind` with no detail.
    pub fn new(kind: ProblemKind) -> Self {
        Self { kind, detail: None, extensions: Map::new() }
    }

    /// Adds a human-readable explanation of this occurrence.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an extension member, such as `approval_id`. The standard
    /// members (`type`, `title`, `status`, `detail`, `instance`) cannot be
    /// overridden this way; such a name is ignored.
    pub fn with_extension(mut self, name: &str, value: impl Into<Value>) -> Self {
        if !STANDARD_MEMBERS.contains(&name) {
            self.extensions.insert(name.to_owned(), value.into());
        }
        self
    }

    /// Which problem this is.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The document as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.document()).unwrap_or(Value::Null)
    }

    /// The problem as an `application/problem+json` response.
    pub fn into_response<B: From<Bytes>>(self) -> Response<B> {
        // Serialising strings, numbers and JSON values cannot fail.
        let body = serde_json::to_vec(&self.document()).unwrap_or_default();
        let mut response = Response::new(B::from(Bytes::from(body)));
        *response.status_mut() = self.kind.status();
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        response
    }

    fn document(&self) -> Document<'_> {
        Document {
            kind: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.kind.status().as_u16(),
            detail: self.detail.as_deref(),
            extensions: &self.extensions,
        }
    }
}

/// Members RFC 9457 defines; extensions never take their names.
const STANDARD_MEMBERS: &[&str] = &["type", "title", "status", "detail", "instance"];

/// The wire form: standard members first, in the RFC's order.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(flatten)]
    extensions: &'a Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_document_has_standard_members_and_extensions() {
        let doc = Problem::new(ProblemKind::ApprovalDenied)
            .with_detail("an analyst denied this request")
            .with_extension("approval_id", "0190")
            .with_extension("status", 200)
            .to_json();
        assert_eq!(doc["type"], "https://midosoc.dev/problems/approval-denied");
        assert_eq!(doc["title"], "approval denied");
        assert_eq!(doc["status"], 403);
        assert_eq!(doc["detail"], "an analyst denied this request");
        assert_eq!(doc["approval_id"], "0190");
    }

    #[test]
    fn problem_response_carries_status_and_media_type() {
        let response: Response<Bytes> = Problem::new(ProblemKind::BodyTooLarge).into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        let text = std::str::from_utf8(response.body()).unwrap();
        assert!(text.starts_with(r#"{"type":"https://midosoc.dev/problems/body-too-large","#));
    }
}
