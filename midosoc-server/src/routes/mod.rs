//! HTTP handlers of the two listeners, apart from the review side.
//!
//! - [`agent`]: key authentication, the action API and the proxy
//!   fallback, on the agent listener;
//! - [`ops`]: health, readiness, JWKS and metrics.

pub(crate) mod agent;
pub(crate) mod ops;
