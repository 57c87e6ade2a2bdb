//! Assessing actions: the [`Classifier`] trait and the verdict it returns.
//!
//! [`HeuristicClassifier`] is the deterministic default, driven by a rule
//! table.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::action::Action;

mod heuristic;

pub use heuristic::{HeuristicClassifier, RuleTable, RuleTableError};

mod compose;
#[cfg(feature = "llm")]
mod llm;

pub use compose::{
    ADVISOR_SOURCE, ComposedClassifier, CompositionMode, CompositionPolicy, FAILURES_METRIC,
    RULES_SOURCE, advisor_opinion, rules_opinion,
};
#[cfg(feature = "llm")]
pub use llm::{
    ApiKey, LLM_CLASSIFIER, LlmClassifier, LlmConfig, LlmError, Provider, ResponseFormatMode,
};

/// What to do with an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Forward at once.
    Allow,
    /// Wait for a human decision.
    Hold,
    /// Refuse at once.
    Deny,
}

/// How much harm the action could do. Ordered from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// No side effects.
    Low,
    /// Reversible changes.
    Medium,
    /// Destructive or hard to undo.
    High,
    /// Irreversible and broad: money, access, production.
    Critical,
}

macro_rules! word_enum {
    ($ty:ty, $what:literal, $($variant:ident => $word:literal),+) => {
        impl $ty {
            /// The lower-case word for this value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    other => Err(format!(concat!("unknown ", $what, " `{}`"), other)),
                }
            }
        }
    };
}

word_enum!(Verdict, "verdict", Allow => "allow", Hold => "hold", Deny => "deny");
word_enum!(Risk, "risk", Low => "low", Medium => "medium", High => "high", Critical => "critical");

/// One rule or signal that fired, and what it matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Stable name of the rule or signal, such as `path.destructive_verb`.
    pub rule: String,
    /// The text it matched, such as `deleterange`.
    pub matched: String,
    /// Where it matched: `method`, `path`, `query`, `operation`, `tool`,
    /// `body`, `annotation`, `intent` or `llm`.
    pub location: String,
}

impl Marker {
    /// A marker for `rule` that matched `matched` in `location`.
    pub fn new(
        rule: impl Into<String>,
        location: impl Into<String>,
        matched: impl Into<String>,
    ) -> Self {
        Self { rule: rule.into(), location: location.into(), matched: matched.into() }
    }
}

/// A second opinion recorded beside the deciding one, for reviewers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Opinion {
    /// Which classifier gave it, such as `llm`.
    pub source: String,
    /// Its assessment, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assessment: Option<Box<Assessment>>,
    /// Why it gave none (timeout, unparseable answer, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A classifier's judgement of one action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// What to do.
    pub verdict: Verdict,
    /// How much harm it could do.
    pub risk: Risk,
    /// How sure the classifier is, from 0 to 1.
    pub confidence: f32,
    /// A sentence a reviewer can read.
    pub rationale: String,
    /// Every rule or signal that fired.
    #[serde(default)]
    pub markers: Vec<Marker>,
    /// Which classifier decided, such as `heuristic`.
    pub classifier: String,
    /// Other opinions gathered, shown beside this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opinions: Vec<Opinion>,
}

impl Assessment {
    /// A new assessment with no markers.
    pub fn new(
        classifier: impl Into<String>,
        verdict: Verdict,
        risk: Risk,
        confidence: f32,
        rationale: impl Into<String>,
    ) -> Self {
        Self {
            verdict,
            risk,
            confidence: confidence.clamp(0.0, 1.0),
            rationale: rationale.into(),
            markers: Vec::new(),
            classifier: classifier.into(),
            opinions: Vec::new(),
        }
    }

    /// Adds a marker.
    pub fn with_marker(mut self, marker: Marker) -> Self {
        self.markers.push(marker);
        self
    }
}

/// Why a classifier could not assess an action. Callers treat every error
/// as "hold": nothing fails open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// The classifier did not answer in time.
    #[error("classifier timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The classifier's backend could not be reached or failed.
    #[error("classifier backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The classifier answered with something it could not use.
    #[error("classifier answer was invalid: {0}")]
    InvalidAnswer(String),
}

/// Assesses actions. Implementations must be deterministic enough to audit
/// and must never panic on hostile input.
#[async_trait]
pub trait Classifier: Send + Sync + 'static {
    /// Assesses one action.
    async fn classify(&self, action: &Action) -> Result<Assessment, ClassifyError>;
}

#[async_trait]
impl<C: Classifier + ?Sized> Classifier for std::sync::Arc<C> {
    async fn classify(&self, action: &Action) -> Result<Assessment, ClassifyError> {
        (**self).classify(action).await
    }
}
