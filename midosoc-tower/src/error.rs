//! Why the approval layer answered a request itself instead of forwarding
//! it, and how each reason becomes a problem+json response.
//!
//! None of these is an error of the wrapped service: a denial, an expired
//! approval or a failed store all become responses, and the service's own
//! error type passes through unchanged.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http::header::{HeaderValue, LOCATION, RETRY_AFTER};
use midosoc_core::store::StoreError;
use midosoc_core::{AgentId, ApprovalId, IssueError};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::body::BodyError;
use crate::problem::{Problem, ProblemKind};

/// Longest piece of agent-supplied text echoed back in a problem.
const ECHO_LIMIT: usize = 64;

/// Why the layer answered a request itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejection {
    /// The body is too large or could not be read.
    #[error(transparent)]
    Body(#[from] BodyError),

    /// The classifier said `deny`.
    #[error("request refused by the classifier")]
    Refused,

    /// An analyst said no.
    #[error("approval `{id}` was denied")]
    Denied { id: ApprovalId, reason: Option<String> },

    /// The server is stopping; the approval is still pending.
    #[error("server stopping; approval `{id}` is still pending")]
    ShuttingDown { id: ApprovalId },

    /// The wait ran out; the approval is still pending.
    #[error("approval `{id}` is still pending")]
    StillPending { id: ApprovalId, expires_at: OffsetDateTime },

    /// Nobody decided in time.
    #[error("approval `{id}` expired")]
    Expired { id: ApprovalId },

    /// The approval was withdrawn.
    #[error("approval `{id}` was withdrawn")]
    Withdrawn { id: ApprovalId },

    /// The approved action already ran.
    #[error("approval `{id}` was already executed")]
    AlreadyExecuted { id: ApprovalId },

    /// A resumed request is not the approved one.
    #[error("request does not match approval `{id}`")]
    Mismatch { id: ApprovalId },

    /// No approval with this id belongs to the agent.
    #[error("unknown approval id `{0}`")]
    UnknownApproval(ApprovalId),

    /// The resume header holds no approval id.
    #[error("invalid approval id `{0}`")]
    InvalidApprovalId(String),

    /// The store's cap on pending approvals per agent was reached.
    #[error("agent `{0}` has too many pending approvals")]
    TooManyPending(AgentId),

    /// The store failed; nothing ran.
    #[error("approval store failed")]
    Store {
        id: Option<ApprovalId>,
        #[source]
        source: StoreError,
    },

    /// The issuer failed; nothing ran.
    #[error("token issuer failed")]
    Issuer {
        id: Option<ApprovalId>,
        #[source]
        source: IssueError,
    },
}

/// What the 202 answer needs from the layer's configuration.
#[derive(Clone, Debug)]
pub(crate) struct PendingHints {
    /// Status URL template with `{id}`, sent as `Location`.
    pub(crate) status_url: Option<String>,
    /// Sent as `Retry-After`.
    pub(crate) retry_after: Duration,
}

impl Rejection {
    /// A store failure, sorted into the reasons an agent can act on.
    pub(crate) fn store(id: Option<ApprovalId>, source: StoreError) -> Self {
        match source {
            StoreError::NotFound(id) => Self::UnknownApproval(id),
            StoreError::TooManyPending(agent) => Self::TooManyPending(agent),
            source => Self::Store { id, source },
        }
    }

    /// Logs the rejection once, at the level its audience needs.
    pub(crate) fn log(&self) {
        let error: &dyn std::error::Error = self;
        match self {
            Self::Store { .. } | Self::Issuer { .. } => {
                tracing::error!(error = error_chain(error), "request failed closed");
            }
            Self::TooManyPending(_) => tracing::info!(reason = %self, "request rejected"),
            // Refusals and decisions are logged where they happen, with
            // the fields of the request.
            _ => tracing::debug!(reason = error_chain(error), "request answered by the layer"),
        }
    }

    /// The problem+json response for this rejection.
    pub(crate) fn into_response<B: From<Bytes>>(self, hints: &PendingHints) -> Response<B> {
        let problem = self.problem();
        let mut response = problem.into_response::<B>();
        let headers = response.headers_mut();
        match &self {
            Self::StillPending { id, .. } => {
                let location =
                    hints.status_url.as_ref().map(|url| url.replace("{id}", &id.to_string()));
                if let Some(value) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
                    headers.insert(LOCATION, value);
                }
                headers.insert(RETRY_AFTER, seconds(hints.retry_after));
            }
            Self::Store { .. } | Self::Issuer { .. } | Self::ShuttingDown { .. } => {
                headers.insert(RETRY_AFTER, seconds(hints.retry_after));
            }
            _ => {}
        }
        response
    }

    fn problem(&self) -> Problem {
        match self {
            Self::Body(error) => body_problem(error),
            // SECURITY: the classifier's rationale and markers stay with the
            // reviewers; telling the agent would teach it what to rephrase.
            Self::Refused => {
                Problem::new(ProblemKind::RequestRefused).with_detail("this request is not allowed")
            }
            Self::Denied { id, reason } => {
                let problem = Problem::new(ProblemKind::ApprovalDenied)
                    .with_detail("an analyst denied this request")
                    .with_extension("approval_id", id.to_string());
                match reason {
                    Some(reason) => problem.with_extension("reason", reason.clone()),
                    None => problem,
                }
            }
            Self::ShuttingDown { id } => Problem::new(ProblemKind::ApprovalUnavailable)
                .with_detail(
                    "the server is shutting down; the approval is still pending, re-send \
                     the request unchanged with the Midosoc-Approval header once it is back",
                )
                .with_extension("approval_id", id.to_string()),
            Self::StillPending { id, expires_at } => Problem::new(ProblemKind::ApprovalPending)
                .with_detail(
                    "the request is waiting for an analyst; re-send it unchanged with \
                     the Midosoc-Approval header to wait again",
                )
                .with_extension("approval_id", id.to_string())
                .with_extension("expires_at", expires_at.format(&Rfc3339).unwrap_or_default()),
            Self::Expired { id } => Problem::new(ProblemKind::ApprovalExpired)
                .with_detail("nobody decided on this request in time")
                .with_extension("approval_id", id.to_string()),
            Self::Withdrawn { id } => Problem::new(ProblemKind::ApprovalWithdrawn)
                .with_detail("this approval was withdrawn and can no longer run")
                .with_extension("approval_id", id.to_string()),
            Self::AlreadyExecuted { id } => Problem::new(ProblemKind::AlreadyExecuted)
                .with_detail("the approved request has already run once")
                .with_extension("approval_id", id.to_string()),
            Self::Mismatch { id } => Problem::new(ProblemKind::RequestMismatch)
                .with_detail("method, URL or body differ from the approved request")
                .with_extension("approval_id", id.to_string()),
            Self::UnknownApproval(id) => Problem::new(ProblemKind::UnknownApproval)
                .with_detail(format!("no approval `{id}` exists for this agent")),
            Self::InvalidApprovalId(raw) => Problem::new(ProblemKind::InvalidApprovalId)
                .with_detail(format!("`{}` is not an approval id", bounded(raw))),
            Self::TooManyPending(_) => Problem::new(ProblemKind::TooManyPending)
                .with_detail("too many of this agent's requests are already waiting"),
            Self::Store { id, .. } => {
                let problem = Problem::new(ProblemKind::ApprovalUnavailable)
                    .with_detail("the approval service failed; the request did not run");
                match id {
                    Some(id) => problem.with_extension("approval_id", id.to_string()),
                    None => problem,
                }
            }
            Self::Issuer { id, source } => {
                let (cause, detail) = issuer_cause(source);
                let problem = Problem::new(ProblemKind::ApprovalUnavailable)
                    .with_detail(detail)
                    .with_extension("cause", cause);
                match id {
                    Some(id) => problem.with_extension("approval_id", id.to_string()),
                    None => problem,
                }
            }
        }
    }
}

/// What an agent learns of an issuer failure: a stable cause and a fixed
/// sentence. The provider's own answer is not echoed; operators find it in
/// the gateway's log.
///
/// INVARIANT: an issuer failure happens before the approval is marked
/// executed, so an approved request stays approved and can be re-sent.
fn issuer_cause(error: &IssueError) -> (&'static str, &'static str) {
    match error {
        IssueError::InvalidClient => (
            "issuer_rejected_client",
            "the token issuer rejected the gateway's client credentials; the request did not \
             run and stays approved, re-send it once an operator has fixed them",
        ),
        IssueError::AudienceNotAllowed(_) => (
            "issuer_refused_audience",
            "the token issuer refused the audience configured for this API; the request did \
             not run and stays approved, re-send it once an operator has fixed it",
        ),
        IssueError::RateLimited { .. } => (
            "issuer_rate_limited",
            "the token issuer is rate limiting the gateway; the request did not run and \
             stays approved, re-send it later",
        ),
        IssueError::Unreachable(_) => (
            "issuer_unreachable",
            "the token issuer could not be reached; the request did not run and stays \
             approved, re-send it later",
        ),
        IssueError::Rejected(_) => (
            "issuer_refused",
            "the token issuer refused to mint a token; the request did not run and stays \
             approved",
        ),
        _ => ("token_not_minted", "no token could be minted; the request did not run"),
    }
}

/// The problem for a body that could not be read.
pub(crate) fn body_problem(error: &BodyError) -> Problem {
    match error {
        BodyError::TooLarge { limit } => Problem::new(ProblemKind::BodyTooLarge)
            .with_detail(format!("the request body exceeds {limit} bytes"))
            .with_extension("limit", *limit),
        BodyError::Unreadable(_) => {
            Problem::new(ProblemKind::InvalidBody).with_detail("the request body could not be read")
        }
    }
}

/// A whole number of seconds, at least one, as a header value.
fn seconds(duration: Duration) -> HeaderValue {
    HeaderValue::from(duration.as_secs().max(1))
}

/// Agent-supplied text cut to a length safe to echo.
fn bounded(raw: &str) -> &str {
    let mut end = raw.len().min(ECHO_LIMIT);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    &raw[..end]
}

/// An error and its sources, joined for one log line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
