//! Credentials minted for approved actions: the [`TokenIssuer`] trait.
//!
//! A [`Grant`] describes exactly one action as an RFC 9396
//! `authorization_details` entry; an issuer turns it into a short-lived
//! token. A token is minted only after the approval is recorded.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::action::{Action, AgentId, Sha256Digest};
use crate::approval::{Analyst, Approval, ApprovalId};

#[cfg(feature = "oauth2")]
mod auth0;
mod local;
#[cfg(feature = "oauth2")]
mod oauth2;

#[cfg(feature = "oauth2")]
pub use auth0::{Auth0Issuer, Auth0IssuerConfig};
pub use local::{Jwk, Jwks, LocalIssuer, LocalIssuerError};
#[cfg(feature = "oauth2")]
pub use oauth2::{ClientAuth, ClientSecret, OAuth2Issuer, OAuth2IssuerConfig, OAuth2IssuerError};

/// `type` of the authorization details Midosoc writes.
pub const AUTHORIZATION_DETAILS_TYPE: &str = "midosoc_action";

/// One RFC 9396 authorization details entry: the action a token allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationDetail {
    /// Always [`AUTHORIZATION_DETAILS_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The URL the action targets.
    pub locations: Vec<String>,
    /// The HTTP method; read-scoped tokens also carry `read`.
    pub actions: Vec<String>,
    /// Digest of the body the action carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_digest: Option<Sha256Digest>,
    /// The approval that allowed it; absent on read-scoped tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<ApprovalId>,
}

/// What a token is asked to allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The agent the token is for (its `sub`).
    pub agent: AgentId,
    /// The analyst who approved, when a human did (its `act`).
    pub analyst: Option<Analyst>,
    /// The action allowed.
    pub detail: AuthorizationDetail,
    /// Audience the token is for; issuers fall back to their default.
    pub audience: Option<String>,
    /// Scopes to request, space separated.
    pub scope: Option<String>,
}

impl Grant {
    /// A grant for exactly the action of an approved approval.
    pub fn for_approval(approval: &Approval) -> Self {
        let action = &approval.action;
        Self {
            agent: action.agent.clone(),
            analyst: approval.decision.as_ref().map(|d| d.analyst.clone()),
            detail: AuthorizationDetail {
                kind: AUTHORIZATION_DETAILS_TYPE.to_owned(),
                locations: vec![action.url.clone()],
                actions: vec![action.method.clone()],
                body_digest: Some(action.body.digest),
                approval_id: Some(approval.id),
            },
            audience: None,
            scope: None,
        }
    }

    /// A read-scoped grant for an action that needed no approval.
    pub fn read_only(action: &Action) -> Self {
        Self {
            agent: action.agent.clone(),
            analyst: None,
            detail: AuthorizationDetail {
                kind: AUTHORIZATION_DETAILS_TYPE.to_owned(),
                locations: vec![action.url.clone()],
                // `read` marks the token as needing no approval; the method
                // and body digest still bind it to this one request, so an
                // allowed POST (a search, say) is covered and nothing else.
                actions: vec!["read".to_owned(), action.method.clone()],
                body_digest: Some(action.body.digest),
                approval_id: None,
            },
            audience: None,
            scope: None,
        }
    }

    /// Sets the audience.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Sets the scopes.
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
}

/// A bearer token. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wraps a token value.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// A minted token and what may be recorded about it.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The token itself; never logged or stored.
    pub token: BearerToken,
    /// Its unique id (`jti`), safe to record.
    pub token_id: String,
    /// When it stops being valid.
    pub expires_at: OffsetDateTime,
}

/// Why a token could not be minted. The approval stays approved and not
/// executed, so the agent can try again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The issuer refused our client credentials.
    #[error("token issuer rejected the client credentials")]
    InvalidClient,
    /// The client may not request tokens for this audience.
    #[error("token issuer refused audience `{0}` for this client")]
    AudienceNotAllowed(String),
    /// The issuer is rate limiting us.
    #[error("token issuer is rate limiting requests")]
    RateLimited {
        /// How long it asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The issuer could not be reached.
    #[error("token issuer unreachable")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The issuer answered with something unexpected.
    #[error("token issuer refused the request: {0}")]
    Rejected(String),
    /// Signing failed locally.
    #[error("token could not be signed")]
    Signing(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Mints credentials for approved actions.
#[async_trait]
pub trait TokenIssuer: Send + Sync + 'static {
    /// Mints a token allowing exactly `grant`.
    async fn issue(&self, grant: &Grant) -> Result<IssuedToken, IssueError>;
}

#[async_trait]
impl<T: TokenIssuer + ?Sized> TokenIssuer for std::sync::Arc<T> {
    async fn issue(&self, grant: &Grant) -> Result<IssuedToken, IssueError> {
        (**self).issue(grant).await
    }
}

/// The claims of a Midosoc access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// The agent.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Unique token id.
    pub jti: String,
    /// The approving analyst (RFC 8693 `act`), when a human approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// The one action allowed.
    pub authorization_details: Vec<AuthorizationDetail>,
}

/// RFC 8693 actor claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The analyst's stable id.
    pub sub: String,
    /// The analyst's readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The `typ` header of Midosoc access tokens (RFC 9068).
pub const TOKEN_TYPE: &str = "at+jwt";
