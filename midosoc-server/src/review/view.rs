//! The JSON shapes the review API reads and sends, described for OpenAPI.
//!
//! They are built from the core types rather than being them, so the API
//! stays stable while the domain grows. Times are RFC 3339 strings in UTC.
//! Everything an agent controls (URL, headers, body preview, intent) is
//! passed through as data; the body preview was redacted when the action
//! was built.

use midosoc_core::action::{BodyView as CoreBody, HeaderView as CoreHeader};
use midosoc_core::store::{EventKind, StoreEvent};
use midosoc_core::{Analyst, Approval, ApprovalStatus, Outcome, Risk};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use super::error::ReviewError;
use crate::identity::AnalystAccount;

/// Parses a JSON request body, refusing malformed ones with `400`.
pub(super) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ReviewError> {
    serde_json::from_slice(body).map_err(|error| {
        ReviewError::BadRequest(format!("request body is not the expected JSON: {error}"))
    })
}

/// A time as RFC 3339.
fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// Where an approval is in its life.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum StatusView {
    /// Waiting for an analyst.
    Pending,
    /// An analyst approved it.
    Approved,
    /// An analyst denied it.
    Denied,
    /// The agent gave up before a decision.
    Withdrawn,
    /// Nobody decided in time.
    Expired,
}

impl From<ApprovalStatus> for StatusView {
    fn from(status: ApprovalStatus) -> Self {
        match status {
            ApprovalStatus::Pending => Self::Pending,
            ApprovalStatus::Approved => Self::Approved,
            ApprovalStatus::Denied => Self::Denied,
            ApprovalStatus::Withdrawn => Self::Withdrawn,
            ApprovalStatus::Expired => Self::Expired,
        }
    }
}

/// How much harm the action could do.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum RiskView {
    /// No side effects.
    Low,
    /// Reversible changes.
    Medium,
    /// Destructive or hard to undo.
    High,
    /// Irreversible and broad: money, access, production.
    Critical,
}

impl From<Risk> for RiskView {
    fn from(risk: Risk) -> Self {
        match risk {
            Risk::Low => Self::Low,
            Risk::Medium => Self::Medium,
            Risk::High => Self::High,
            Risk::Critical => Self::Critical,
        }
    }
}

/// An analyst's answer.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum OutcomeView {
    /// Let it run.
    Approve,
    /// Refuse it.
    Deny,
}

impl From<Outcome> for OutcomeView {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Approve => Self::Approve,
            Outcome::Deny => Self::Deny,
        }
    }
}

/// A person, as named in decisions.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AnalystView {
    /// Stable id.
    id: String,
    /// Readable name.
    name: String,
}

impl From<&Analyst> for AnalystView {
    fn from(analyst: &Analyst) -> Self {
        Self { id: analyst.id.clone(), name: analyst.name.clone() }
    }
}

/// One request header kept for review; secret values read `<redacted>`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct HeaderView {
    /// Lower-case name.
    name: String,
    /// Value, or `<redacted>`.
    value: String,
}

impl From<&CoreHeader> for HeaderView {
    fn from(header: &CoreHeader) -> Self {
        Self { name: header.name.clone(), value: header.value.clone() }
    }
}

/// A bounded, redacted view of the request body.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BodyView {
    /// Size of the whole body in bytes.
    size: usize,
    /// `sha256:<hex>` of the whole body.
    digest: String,
    /// The first bytes as text, secrets redacted.
    preview: String,
    /// Whether the preview is shorter than the body.
    truncated: bool,
}

impl From<&CoreBody> for BodyView {
    fn from(body: &CoreBody) -> Self {
        Self {
            size: body.size,
            digest: body.digest.to_string(),
            preview: body.preview.clone(),
            truncated: body.truncated,
        }
    }
}

/// The operation or tool named inside the body.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OperationView {
    /// `json_rpc`, `mcp`, `graph_ql` or `sql`.
    protocol: String,
    /// Method, tool, GraphQL operation or SQL keyword.
    name: String,
    /// The document, statement or arguments, bounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// One rule or signal that fired.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MarkerView {
    /// Stable rule name, such as `path.destructive_verb`.
    rule: String,
    /// Where it matched: `method`, `path`, `body`, ...
    location: String,
    /// What it matched.
    matched: String,
}

/// Why the classifier held the request.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AssessmentView {
    /// `allow`, `hold` or `deny`.
    verdict: String,
    /// How much harm it could do.
    risk: RiskView,
    /// How sure the classifier is, from 0 to 1.
    confidence: f32,
    /// A sentence for the reviewer.
    rationale: String,
    /// Every rule or signal that fired.
    markers: Vec<MarkerView>,
    /// Which classifier decided.
    classifier: String,
}

/// A decision on an approval.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct DecisionView {
    /// Approve or deny.
    outcome: OutcomeView,
    /// Who decided.
    analyst: AnalystView,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// When (RFC 3339).
    decided_at: String,
}

/// A held request and what became of it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ApprovalView {
    /// Approval id (UUID v7, time-ordered).
    id: String,
    /// Where it is in its life.
    status: StatusView,
    /// The agent that asked.
    agent: String,
    /// Upper-case HTTP method.
    method: String,
    /// Target URL, or path and query.
    url: String,
    /// Selected request headers, secrets redacted.
    headers: Vec<HeaderView>,
    /// Body preview, secrets redacted.
    body: BodyView,
    /// The operation or tool named inside the body, when recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<OperationView>,
    /// What the agent says it is doing (untrusted).
    #[serde(skip_serializing_if = "Option::is_none")]
    intent: Option<String>,
    /// The classifier's assessment.
    assessment: AssessmentView,
    /// When it was held.
    created_at: String,
    /// When it expires unless decided.
    expires_at: String,
    /// The decision, once made.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<DecisionView>,
    /// When it was withdrawn or expired.
    #[serde(skip_serializing_if = "Option::is_none")]
    closed_at: Option<String>,
    /// When the approved action ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    executed_at: Option<String>,
}

impl From<&Approval> for ApprovalView {
    fn from(approval: &Approval) -> Self {
        let action = &approval.action;
        let assessment = &approval.assessment;
        let operation = action.operation.as_ref().map(|op| OperationView {
            protocol: serde_json::to_value(op.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            name: op.name.clone(),
            detail: op.detail.clone(),
        });
        let markers = assessment
            .markers
            .iter()
            .map(|m| MarkerView {
                rule: m.rule.clone(),
                location: m.location.clone(),
                matched: m.matched.clone(),
            })
            .collect();

        Self {
            id: approval.id.to_string(),
            status: approval.status.into(),
            agent: action.agent.to_string(),
            method: action.method.clone(),
            url: action.url.clone(),
            headers: action.headers.iter().map(HeaderView::from).collect(),
            body: (&action.body).into(),
            operation,
            intent: action.intent.clone(),
            assessment: AssessmentView {
                verdict: assessment.verdict.as_str().to_owned(),
                risk: assessment.risk.into(),
                confidence: assessment.confidence,
                rationale: assessment.rationale.clone(),
                markers,
                classifier: assessment.classifier.clone(),
            },
            created_at: rfc3339(approval.created_at),
            expires_at: rfc3339(approval.expires_at),
            decision: approval.decision.as_ref().map(|d| DecisionView {
                outcome: d.outcome.into(),
                analyst: (&d.analyst).into(),
                reason: d.reason.clone(),
                decided_at: rfc3339(d.decided_at),
            }),
            closed_at: approval.closed_at.map(rfc3339),
            executed_at: approval.execution.as_ref().map(|e| rfc3339(e.executed_at)),
        }
    }
}

/// A page of approvals, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ApprovalList {
    /// The approvals.
    pub(super) approvals: Vec<ApprovalView>,
}

/// What happened to an approval.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum EventKindView {
    /// A request was held.
    Pending,
    /// An analyst approved or denied it.
    Decided,
    /// The agent hung up first.
    Withdrawn,
    /// Nobody decided in time.
    Expired,
    /// The approved action ran.
    Executed,
}

impl From<EventKind> for EventKindView {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Pending => Self::Pending,
            EventKind::Decided => Self::Decided,
            EventKind::Withdrawn => Self::Withdrawn,
            EventKind::Expired => Self::Expired,
            EventKind::Executed => Self::Executed,
        }
    }
}

/// One event of the live stream: the `data` of an SSE message whose `id`
/// is `seq` and whose `event` is `kind`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct EventView {
    /// Position in the store's event log; resume after it with
    /// `Last-Event-ID`.
    seq: u64,
    /// What happened.
    kind: EventKindView,
    /// When (RFC 3339).
    at: String,
    /// The approval after the change.
    approval: ApprovalView,
}

impl From<&StoreEvent> for EventView {
    fn from(event: &StoreEvent) -> Self {
        Self {
            seq: event.seq,
            kind: event.kind.into(),
            at: rfc3339(event.at),
            approval: (&event.approval).into(),
        }
    }
}

/// One step in an approval's life, for the audit history.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditEntry {
    /// What happened.
    kind: EventKindView,
    /// Which approval.
    approval_id: String,
    /// The agent that asked.
    agent: String,
    /// Upper-case HTTP method.
    method: String,
    /// Target URL.
    url: String,
    /// The analyst who decided, for `decided` entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    analyst: Option<AnalystView>,
    /// Approve or deny, for `decided` entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<OutcomeView>,
    /// The analyst's reason, for `decided` entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// When (RFC 3339).
    at: String,
    /// Position in the store's hash-chained audit trail, when it keeps one.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// This entry's link hash in that trail.
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<String>,
    /// When, for sorting.
    #[serde(skip)]
    pub(super) instant: OffsetDateTime,
}

impl AuditEntry {
    /// The view of one link of the store's audit trail, or `None` when its
    /// payload is not an approval.
    pub(super) fn from_chain(link: &midosoc_core::store::AuditEntry) -> Option<Self> {
        let approval: Approval = serde_json::from_value(link.payload.clone()).ok()?;
        let decision = approval.decision.as_ref().filter(|_| link.kind == EventKind::Decided);
        Some(Self {
            kind: link.kind.into(),
            approval_id: approval.id.to_string(),
            agent: approval.agent().to_string(),
            method: approval.action.method.clone(),
            url: approval.action.url.clone(),
            analyst: decision.map(|d| (&d.analyst).into()),
            outcome: decision.map(|d| d.outcome.into()),
            reason: decision.and_then(|d| d.reason.clone()),
            at: rfc3339(link.at),
            seq: Some(link.seq),
            hash: Some(link.hash.clone()),
            instant: link.at,
        })
    }

    /// The steps an approval has been through so far, oldest first.
    pub(super) fn steps(approval: &Approval) -> Vec<Self> {
        let entry = |kind: EventKind, at: OffsetDateTime| Self {
            kind: kind.into(),
            approval_id: approval.id.to_string(),
            agent: approval.agent().to_string(),
            method: approval.action.method.clone(),
            url: approval.action.url.clone(),
            analyst: None,
            outcome: None,
            reason: None,
            at: rfc3339(at),
            seq: None,
            hash: None,
            instant: at,
        };

        let mut steps = vec![entry(EventKind::Pending, approval.created_at)];
        if let Some(decision) = &approval.decision {
            steps.push(Self {
                analyst: Some((&decision.analyst).into()),
                outcome: Some(decision.outcome.into()),
                reason: decision.reason.clone(),
                ..entry(EventKind::Decided, decision.decided_at)
            });
        }
        if let Some(closed_at) = approval.closed_at {
            match approval.status {
                ApprovalStatus::Withdrawn => steps.push(entry(EventKind::Withdrawn, closed_at)),
                ApprovalStatus::Expired => steps.push(entry(EventKind::Expired, closed_at)),
                _ => {}
            }
        }
        if let Some(execution) = &approval.execution {
            steps.push(entry(EventKind::Executed, execution.executed_at));
        }
        steps
    }
}

/// The audit history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AuditLog {
    /// The entries.
    pub(super) entries: Vec<AuditEntry>,
}

/// The signed-in analyst, as the dashboard needs them.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SessionView {
    /// Who.
    analyst: AnalystView,
    /// `viewer`, `approver` or `admin`.
    role: String,
    /// Whether they may approve and deny.
    can_decide: bool,
    /// The token to send as `X-CSRF-Token` with every state change made
    /// with the session cookie; absent for bearer-token callers.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
}

impl SessionView {
    /// The view of `account`'s session.
    pub(super) fn new(account: &AnalystAccount, csrf_token: Option<String>) -> Self {
        Self {
            analyst: AnalystView { id: account.id.clone(), name: account.name.clone() },
            role: account.role.as_str().to_owned(),
            can_decide: account.role.can_decide(),
            csrf_token,
        }
    }
}
