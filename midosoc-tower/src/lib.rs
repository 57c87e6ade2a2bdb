//! Tower middleware that holds risky requests until a human approves them.
//!
//! An AI agent calling your API cannot be trusted to know which of its
//! calls are dangerous. [`HumanApprovalLayer`] assesses every request with
//! a [`Classifier`]: harmless requests pass untouched, destructive ones are
//! recorded in an [`ApprovalStore`] and simply wait, the agent's HTTP call
//! still open, until a person approves or denies them. On approval a
//! [`TokenIssuer`] mints a short-lived token for exactly that request and
//! the request continues with it; on denial the agent gets `403`. The agent
//! needs no new protocol: its call just takes longer.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use axum::Router;
//! use axum::routing::get;
//! use midosoc_core::classify::HeuristicClassifier;
//! use midosoc_core::store::MemoryStore;
//! use midosoc_core::token::LocalIssuer;
//! use midosoc_tower::HumanApprovalLayer;
//!
//! # async fn run() -> std::io::Result<()> {
//! // Keep a handle on the store: whoever holds it can approve.
//! let store = Arc::new(MemoryStore::new());
//! let issuer = LocalIssuer::generate("https://midosoc.example", "ledger");
//!
//! let app = Router::new()
//!     .route("/accounts/{id}", get(|| async { "42.00" }).delete(|| async { "closed" }))
//!     .layer(HumanApprovalLayer::new(HeuristicClassifier::default(), store.clone(), issuer));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! `GET /accounts/7` passes at once. `DELETE /accounts/7` waits until
//! something holding `store` calls
//! [`decide`](ApprovalStore::decide): a review endpoint, a chat bot, or
//! another gateway instance sharing the same database. The handler then
//! runs with `Authorization: Bearer <minted token>` and an
//! [`ApprovedAction`] extension naming the approval and the analyst.
//!
//! # What the agent sees
//!
//! | situation | answer |
//! |---|---|
//! | allowed | the inner service's response |
//! | held, then approved | the inner service's response, run once |
//! | held, then denied | `403` with `approval_id` and the analyst's reason |
//! | refused by the classifier | `403` |
//! | waited longer than its limit | `202` with `approval_id`, `Retry-After`, `Location` |
//! | resumed with a different request | `409` |
//! | resumed after it already ran | `409` |
//! | expired or withdrawn | `410` |
//! | body over the limit | `413` |
//! | store or issuer failed | `503`; nothing ran |
//!
//! Every answer the layer gives itself is an RFC 9457
//! `application/problem+json` document with a stable `type` URI (see
//! [`problem::ProblemKind`]); none of them is an error of the wrapped
//! service.
//!
//! # Waiting, and coming back
//!
//! A held request waits up to [`wait_timeout`](HumanApprovalLayer::wait_timeout).
//! An agent may ask for a different wait with RFC 7240 `Prefer: wait=N`
//! (capped by [`max_wait`](HumanApprovalLayer::max_wait)), or for none
//! with `Prefer: respond-async`. When the wait runs out the approval stays
//! pending and the agent gets `202 Accepted`. To collect the answer it
//! re-sends the same request with [`Midosoc-Approval: <id>`](APPROVAL_HEADER):
//! the layer checks that method, URL and body are unchanged and that the
//! agent is the same, then waits again, or runs the approved request once.
//!
//! If the agent hangs up while held, the approval is withdrawn: analysts
//! see it as such and it can no longer be approved.
//!
//! # The protected side
//!
//! The inner service, or an API further away, checks the minted token with
//! [`VerifyTokenLayer`]: signature, issuer, audience and lifetime, that it
//! allows exactly this method, path, query and body, and that it is used
//! only once. See the [`verify`] module.
//!
//! # Layout
//!
//! - `layer.rs`: [`HumanApprovalLayer`] and its options;
//! - `service.rs`: [`HumanApproval`], the path of one request;
//! - `future.rs`: [`ResponseFuture`] and the guard that withdraws an
//!   approval when the agent hangs up;
//! - `error.rs`: why the layer answered a request itself;
//! - [`problem`]: the problem+json documents;
//! - [`verify`]: the token-checking layer for the protected API;
//! - `body.rs`: reading a body whole, within a limit.
//!
//! # Feature flags
//!
//! None. The layer works with any [`Classifier`], [`ApprovalStore`] and
//! [`TokenIssuer`]; which ones are compiled in is chosen by
//! `midosoc-core`'s features.
//!
//! # Security
//!
//! - **Fail closed.** A classifier error holds the request; a store or
//!   issuer error answers `503`. Nothing held ever passes without a
//!   recorded approval.
//! - **Exactly once.** A token is minted only after the approval is
//!   recorded, and the request is forwarded only by the caller that wins
//!   [`mark_executed`](ApprovalStore::mark_executed).
//! - **Bound to its bytes.** A resumed request must match the approved
//!   method, URL and body digest; the minted token names the same.
//! - **No credential leaks.** The agent's own `Authorization` is replaced
//!   on approved requests; tokens are never logged; the classifier's
//!   rationale and markers never reach the agent.
//! - **Agents see only their own approvals.** Another agent's approval id
//!   answers `404`, exactly like an unknown one.
//! - **Bounded.** Bodies are read up to a limit (1 MiB by default);
//!   larger ones are refused with `413`, never passed unread.
//!
//! # Limitations
//!
//! - The layer reads the whole body before deciding, so streaming uploads
//!   are buffered (up to the limit).
//! - The verifier's replay cache lives in one process; several replicas of
//!   a protected API each accept a token once.

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

#[cfg(doc)]
use midosoc_core::{ApprovalStore, Classifier, TokenIssuer};
