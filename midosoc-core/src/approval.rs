//! Approvals: a held action, its assessment, and the human decision on it.
//!
//! An approval moves `pending → approved | denied | withdrawn | expired`,
//! once. An approved approval is then executed at most once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::action::{Action, AgentId};
use crate::classify::Assessment;

/// Identifies an approval. Time-ordered (UUID v7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApprovalId(Uuid);

impl ApprovalId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for ApprovalId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for ApprovalId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for ApprovalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ApprovalId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Where an approval is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for a human.
    Pending,
    /// An analyst said yes.
    Approved,
    /// An analyst said no.
    Denied,
    /// The agent gave up before a decision.
    Withdrawn,
    /// Nobody decided in time.
    Expired,
}

impl ApprovalStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 5] =
        [Self::Pending, Self::Approved, Self::Denied, Self::Withdrawn, Self::Expired];

    /// The lower-case word for this status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
            Self::Withdrawn => "withdrawn",
            Self::Expired => "expired",
        }
    }

    /// Whether the approval can still be decided.
    pub fn is_pending(self) -> bool {
        self == Self::Pending
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApprovalStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown approval status `{s}`"))
    }
}

/// A signed-in person who decides approvals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analyst {
    /// Stable subject: a local account id or an identity provider's `sub`.
    pub id: String,
    /// A name people recognise.
    pub name: String,
}

impl Analyst {
    /// An analyst with a stable id and a readable name.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self { id: id.into(), name: name.into() }
    }
}

/// Yes or no.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Let it run.
    Approve,
    /// Refuse it.
    Deny,
}

/// A human decision on an approval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Yes or no.
    pub outcome: Outcome,
    /// Who decided.
    pub analyst: Analyst,
    /// Why; required for a denial by the review API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub decided_at: OffsetDateTime,
}

impl Decision {
    /// A decision made now.
    pub fn new(outcome: Outcome, analyst: Analyst, reason: Option<String>) -> Self {
        Self { outcome, analyst, reason, decided_at: OffsetDateTime::now_utc() }
    }
}

/// Proof that an approved action was executed, once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The `jti` of the token minted for it (never the token).
    pub token_id: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub executed_at: OffsetDateTime,
}

/// A held action awaiting, or having received, a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id.
    pub id: ApprovalId,
    /// What the agent wants to do.
    pub action: Action,
    /// Why it was held.
    pub assessment: Assessment,
    /// Where it is in its life.
    pub status: ApprovalStatus,
    /// When it was held.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it expires unless decided.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The decision, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// When it was withdrawn or expired.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub closed_at: Option<OffsetDateTime>,
    /// Set once an approved action has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
}

impl Approval {
    /// A new pending approval.
    pub fn pending(action: Action, assessment: Assessment, ttl: std::time::Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            id: ApprovalId::new(),
            action,
            assessment,
            status: ApprovalStatus::Pending,
            created_at: now,
            expires_at: now + ttl,
            decision: None,
            closed_at: None,
            execution: None,
        }
    }

    /// The agent that asked.
    pub fn agent(&self) -> &AgentId {
        &self.action.agent
    }

    /// Whether the approval is pending and past its expiry at `now`.
    pub fn is_due(&self, now: OffsetDateTime) -> bool {
        self.status.is_pending() && now >= self.expires_at
    }
}
