//! Tower middleware that holds risky requests until a human approves them.

#![warn(missing_docs)]

mod body;
mod error;
mod future;
mod layer;
pub mod problem;
mod service;
pub mod verify;

pub use future::ResponseFuture;
pub use layer::{
    DEFAULT_AGENT, DEFAULT_APPROVAL_TTL, DEFAULT_BODY_LIMIT, DEFAULT_MAX_WAIT, DEFAULT_RETRY_AFTER,
    DEFAULT_WAIT_TIMEOUT, HumanApprovalLayer,
};
pub use service::{APPROVAL_HEADER, ApprovedAction, HumanApproval};
pub use verify::{VerifyToken, VerifyTokenLayer};
