//! Review API errors, each answered as RFC 9457 problem details.
//!
//! Every variant has a stable `type` URI under
//! `https://midosoc.dev/problems/`, so the dashboard and scripts branch on
//! it rather than on prose. Causes from the store or the identity database
//! are logged once here and never shown to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use midosoc_core::{ApprovalId, ApprovalStatus, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::identity::IdentityError;

/// Media type of a problem document.
pub(crate) const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Why a review request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReviewError {
    /// No credential, or one that is not an analyst's.
    #[error("sign in with an analyst token")]
    Unauthenticated,
    /// The analyst's role does not allow deciding approvals.
    #[error("role `{0}` cannot approve or deny")]
    CannotDecide(&'static str),
    /// A browser state change came without a valid CSRF token.
    #[error("missing or wrong CSRF token")]
    CsrfToken,
    /// A browser state change came from another origin.
    #[error("request does not come from this origin")]
    CrossOrigin,
    /// The path does not hold an approval id.
    #[error("`{0}` is not an approval id")]
    InvalidApprovalId(String),
    /// No approval has this id.
    #[error("unknown approval id `{0}`")]
    UnknownApproval(ApprovalId),
    /// The approval was already decided, withdrawn or expired.
    #[error("approval `{id}` is already {status}")]
    NotPending {
        /// The approval.
        id: ApprovalId,
        /// Its current status.
        status: ApprovalStatus,
    },
    /// A denial came without a reason.
    #[error("a denial needs a reason")]
    ReasonRequired,
    /// The body, query or a header could not be understood.
    #[error("{0}")]
    BadRequest(String),
    /// The request body is larger than the review API reads.
    #[error("request body is too large")]
    BodyTooLarge,
    /// The path does not accept this method.
    #[error("method not allowed here")]
    MethodNotAllowed,
    /// The review listener serves nothing at this path.
    #[error("no such resource")]
    NoRoute,
    /// Too many event streams are open.
    #[error("too many event streams are open")]
    TooManyStreams,
    /// The approval store failed.
    #[error("approval store failed")]
    Store(#[source] StoreError),
    /// The identity database failed.
    #[error("identity database failed")]
    Identity(#[source] IdentityError),
    /// The session store failed.
    #[error("session store failed")]
    Session(#[source] tower_sessions::session::Error),
}

impl From<StoreError> for ReviewError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => Self::UnknownApproval(id),
            StoreError::NotPending { id, status } => Self::NotPending { id, status },
            other => Self::Store(other),
        }
    }
}

impl From<IdentityError> for ReviewError {
    fn from(error: IdentityError) -> Self {
        Self::Identity(error)
    }
}

impl From<tower_sessions::session::Error> for ReviewError {
    fn from(error: tower_sessions::session::Error) -> Self {
        Self::Session(error)
    }
}

impl ReviewError {
    /// The problem's `type` slug, title and status.
    fn kind(&self) -> (&'static str, &'static str, StatusCode) {
        match self {
            Self::Unauthenticated => {
                ("unauthenticated", "analyst sign-in required", StatusCode::UNAUTHORIZED)
            }
            Self::CannotDecide(_) => {
                ("role-cannot-decide", "role cannot decide", StatusCode::FORBIDDEN)
            }
            Self::CsrfToken => ("csrf-token-invalid", "csrf token invalid", StatusCode::FORBIDDEN),
            Self::CrossOrigin => {
                ("cross-origin", "cross-origin request refused", StatusCode::FORBIDDEN)
            }
            Self::InvalidApprovalId(_) => {
                ("invalid-approval-id", "invalid approval id", StatusCode::BAD_REQUEST)
            }
            Self::UnknownApproval(_) => {
                ("unknown-approval", "unknown approval", StatusCode::NOT_FOUND)
            }
            Self::NotPending { .. } => {
                ("approval-not-pending", "approval is not pending", StatusCode::CONFLICT)
            }
            Self::ReasonRequired => ("reason-required", "reason required", StatusCode::BAD_REQUEST),
            Self::BadRequest(_) => ("bad-request", "bad request", StatusCode::BAD_REQUEST),
            Self::NoRoute => ("not-found", "not found", StatusCode::NOT_FOUND),
            Self::BodyTooLarge => {
                ("body-too-large", "request body too large", StatusCode::PAYLOAD_TOO_LARGE)
            }
            Self::MethodNotAllowed => {
                ("method-not-allowed", "method not allowed", StatusCode::METHOD_NOT_ALLOWED)
            }
            Self::TooManyStreams => {
                ("too-many-streams", "too many event streams", StatusCode::SERVICE_UNAVAILABLE)
            }
            Self::Store(_) | Self::Identity(_) | Self::Session(_) => (
                "review-unavailable",
                "review service unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        }
    }

    /// The problem document sent to the client.
    fn document(&self) -> Problem {
        let (slug, title, status) = self.kind();

        // SECURITY: causes from the store, identity database and session
        // store stay in the log; the client only learns the service failed.
        let internal = matches!(self, Self::Store(_) | Self::Identity(_) | Self::Session(_));
        let (approval_id, approval_status) = match self {
            Self::UnknownApproval(id) => (Some(id.to_string()), None),
            Self::NotPending { id, status } => (Some(id.to_string()), Some(status.as_str())),
            _ => (None, None),
        };

        Problem {
            kind: format!("https://midosoc.dev/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: (!internal).then(|| self.to_string()),
            approval_id,
            approval_status,
        }
    }
}

/// An RFC 9457 problem details document (`application/problem+json`).
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Problem {
    /// A stable URI naming the kind of problem, such as
    /// `https://midosoc.dev/problems/approval-not-pending`.
    #[serde(rename = "type")]
    kind: String,
    /// A short summary of the kind of problem.
    title: &'static str,
    /// The HTTP status.
    status: u16,
    /// What went wrong this time, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// The approval concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<String>,
    /// Its current status, when it could not be decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_status: Option<&'static str>,
}

impl IntoResponse for ReviewError {
    fn into_response(self) -> Response {
        let (_, _, status) = self.kind();
        match &self {
            Self::Store(_) | Self::Identity(_) | Self::Session(_) => {
                tracing::error!(error = %chain(&self), "review request failed");
            }
            Self::CsrfToken | Self::CrossOrigin => {
                tracing::info!(problem = %self, "browser state change refused");
            }
            _ => tracing::debug!(problem = %self, "review request refused"),
        }

        let body = serde_json::to_string(&self.document()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"midosoc-review\""),
            );
        }
        response
    }
}

/// An error and its causes, joined for one log line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
