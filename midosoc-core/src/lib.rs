//! The domain of Midosoc, a human-in-the-loop authorization gateway for AI
//! agents.
//!
//! An agent's request becomes an [`Action`]. A [`Classifier`] assesses it;
//! harmless actions pass, destructive ones are held as an [`Approval`] in an
//! [`ApprovalStore`] until a person decides. On approval a [`TokenIssuer`]
//! mints a credential for exactly that action.
//!
//! Layout:
//!
//! - [`action`]: the normalised request, with redaction and digests;
//! - [`approval`]: approvals, decisions and their life cycle;
//! - [`classify`]: the classifier trait, verdicts and the heuristic rules;
//! - [`store`]: the store trait, its events and the in-memory store;
//! - [`token`]: the issuer trait, grants and the built-in Ed25519 issuer.
//!
//! # Security
//!
//! Nothing here fails open. A classifier error means "hold"; a store or
//! issuer error means the held request does not run. Secrets in headers and
//! JSON bodies are redacted before an action is stored or shown, and tokens
//! redact themselves in `Debug`.

#![warn(missing_docs)]

pub mod action;
pub mod approval;
pub mod classify;
mod protocol;
pub mod store;
pub mod token;

pub use action::{Action, AgentId, Sha256Digest};
pub use approval::{Analyst, Approval, ApprovalId, ApprovalStatus, Decision, Outcome};
pub use classify::{Assessment, Classifier, ClassifyError, Marker, Risk, Verdict};
pub use store::{ApprovalStore, StoreError, StoreEvent};
pub use token::{Grant, IssueError, IssuedToken, TokenIssuer};
