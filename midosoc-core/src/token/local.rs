//! The built-in issuer: short-lived access tokens signed with an Ed25519
//! key the gateway holds itself, and the JWKS that verifies them.
//!
//! A token is an RFC 9068 JWT: header `alg: EdDSA`, `typ: at+jwt` and the
//! key's `kid`; claims as in [`Claims`], with the agent as `sub`, the
//! approving analyst as `act` (RFC 8693) and the one allowed action as
//! `authorization_details` (RFC 9396).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::instrument;
use zeroize::Zeroizing;

use super::{Actor, BearerToken, Claims, Grant, IssueError, IssuedToken, TOKEN_TYPE, TokenIssuer};

/// The only signature algorithm accepted, by name.
const EDDSA: &str = "EdDSA";

/// Clock difference tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Why a key could not be loaded or a token not be signed or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalIssuerError {
    /// The PEM text is not a PKCS#8 Ed25519 private key.
    #[error("signing key is not a pkcs#8 ed25519 private key")]
    InvalidKey(#[source] ed25519_dalek::pkcs8::Error),
    /// The key could not be written as PKCS#8.
    #[error("signing key could not be encoded")]
    KeyEncoding(#[source] ed25519_dalek::pkcs8::Error),
    /// Signing a token failed.
    #[error("token could not be signed")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// The token is not a well-formed JWT.
    #[error("token is malformed")]
    Malformed,
    /// The token names an algorithm other than `EdDSA`.
    #[error("token algorithm `{0}` is not allowed")]
    AlgorithmNotAllowed(String),
    /// The token's `typ` is not `at+jwt`.
    #[error("token is not an access token")]
    WrongType,
    /// No usable key in the set has the token's `kid`.
    #[error("no usable key for key id `{0}`")]
    UnknownKey(String),
    /// The signature does not match the token.
    #[error("token signature is invalid")]
    BadSignature,
    /// The token has expired.
    #[error("token has expired")]
    Expired,
    /// The token is not valid yet.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The token is for another audience.
    #[error("token is for another audience")]
    WrongAudience,
    /// The token is from another issuer.
    #[error("token is from another issuer")]
    WrongIssuer,
    /// The token failed another check.
    #[error("token is invalid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

/// One public key, as a JSON Web Key (RFC 8037 `OKP`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type; `OKP` for Ed25519.
    pub kty: String,
    /// Curve; `Ed25519`.
    #[serde(default)]
    pub crv: String,
    /// The public key, base64url without padding.
    #[serde(default)]
    pub x: String,
    /// Key id: the RFC 7638 thumbprint of the key.
    #[serde(default)]
    pub kid: String,
    /// Algorithm; `EdDSA`.
    #[serde(default)]
    pub alg: String,
    /// Intended use; `sig`.
    #[serde(default, rename = "use")]
    pub use_: String,
}

impl Jwk {
    /// The JWK of an Ed25519 public key.
    fn ed25519(public: &[u8; 32]) -> Self {
        let x = URL_SAFE_NO_PAD.encode(public);
        // RFC 7638: the required members, sorted, without whitespace.
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        Self {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x,
            kid,
            alg: EDDSA.to_owned(),
            use_: "sig".to_owned(),
        }
    }

    /// The verification key, if this is an Ed25519 signing key.
    fn decoding_key(&self) -> Option<DecodingKey> {
        let usable = self.kty == "OKP"
            && self.crv == "Ed25519"
            && (self.alg.is_empty() || self.alg == EDDSA)
            && (self.use_.is_empty() || self.use_ == "sig");
        // SECURITY: check the length here; a short `x` must be refused,
        // not handed to a verifier that slices it.
        let x = URL_SAFE_NO_PAD.decode(&self.x).ok().filter(|x| x.len() == 32)?;
        // `jsonwebtoken` takes an Ed25519 public key as its raw 32 bytes.
        usable.then(|| DecodingKey::from_ed_der(&x))
    }
}

/// A set of public keys, as served at `/.well-known/jwks.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// The parts of a JOSE header looked at before any key is chosen.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

impl Jwks {
    /// Verifies `token`: an `EdDSA` signature by a key in this set, type
    /// `at+jwt`, issuer `expected_issuer`, audience `expected_audience`,
    /// and `exp`/`nbf` within 30 seconds of leeway.
    pub fn verify(
        &self,
        token: &str,
        expected_issuer: &str,
        expected_audience: &str,
    ) -> Result<Claims, LocalIssuerError> {
        let header = raw_header(token)?;

        // SECURITY: the allow-list is ours; the header only names its
        // choice. `none`, HMAC with the public key as secret, and every
        // other algorithm are refused before a key is touched.
        if header.alg != EDDSA {
            return Err(LocalIssuerError::AlgorithmNotAllowed(header.alg));
        }
        if !header.typ.as_deref().is_some_and(is_access_token_type) {
            return Err(LocalIssuerError::WrongType);
        }
        if header.crit.is_some() {
            return Err(LocalIssuerError::Malformed);
        }

        let key = self.key_for(header.kid.as_deref())?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[expected_issuer]);
        validation.set_audience(&[expected_audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);

        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(rejection)
    }

    /// The key a token with `kid` must be verified with. A token without a
    /// `kid` is accepted only when the set holds one key.
    fn key_for(&self, kid: Option<&str>) -> Result<DecodingKey, LocalIssuerError> {
        let jwk = match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid == kid),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        };
        let kid = kid.unwrap_or_default();
        jwk.and_then(Jwk::decoding_key).ok_or_else(|| LocalIssuerError::UnknownKey(kid.to_owned()))
    }
}

/// Reads the header of a compact JWS without trusting any of it.
fn raw_header(token: &str) -> Result<RawHeader, LocalIssuerError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(LocalIssuerError::Malformed);
    };
    let json = URL_SAFE_NO_PAD.decode(header).map_err(|_| LocalIssuerError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| LocalIssuerError::Malformed)
}

/// Whether a `typ` header names an access token (RFC 9068 §4: `at+jwt`,
/// optionally with the `application/` prefix, compared case-insensitively).
fn is_access_token_type(typ: &str) -> bool {
    let short = match (typ.get(..12), typ.get(12..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("application/") => rest,
        _ => typ,
    };
    short.eq_ignore_ascii_case(TOKEN_TYPE)
}

/// The error a failed `jsonwebtoken` check stands for.
fn rejection(error: jsonwebtoken::errors::Error) -> LocalIssuerError {
    match error.kind() {
        ErrorKind::InvalidSignature => LocalIssuerError::BadSignature,
        ErrorKind::ExpiredSignature => LocalIssuerError::Expired,
        ErrorKind::ImmatureSignature => LocalIssuerError::NotYetValid,
        ErrorKind::InvalidAudience => LocalIssuerError::WrongAudience,
        ErrorKind::InvalidIssuer => LocalIssuerError::WrongIssuer,
        ErrorKind::InvalidAlgorithm => LocalIssuerError::AlgorithmNotAllowed(EDDSA.to_owned()),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => LocalIssuerError::Malformed,
        _ => LocalIssuerError::Invalid(error),
    }
}

/// Mints Ed25519-signed access tokens with a key it holds. Its `Debug`
/// never shows the private key.
///
/// ```
/// use midosoc_core::action::{Action, AgentId};
/// use midosoc_core::token::{Grant, LocalIssuer, TokenIssuer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let issuer = LocalIssuer::generate("https://midosoc.example", "https://api.example");
/// let action = Action::builder(AgentId::new("bot"), "GET", "/repos").build();
///
/// let issued = issuer.issue(&Grant::read_only(&action)).await?;
/// let claims = issuer.verify(issued.token.expose())?;
/// assert_eq!(claims.sub, "bot");
///
/// // Keep the key across restarts; serve the public half as JWKS.
/// let pem = issuer.to_pkcs8_pem()?;
/// let again = LocalIssuer::from_pkcs8_pem(&pem, "https://midosoc.example", "https://api.example")?;
/// assert_eq!(again.jwks(), issuer.jwks());
/// # Ok(())
/// # }
/// ```
pub struct LocalIssuer {
    issuer: String,
    audience: String,
    lifetime: Duration,
    signing: SigningKey,
    encoding: EncodingKey,
    jwks: Jwks,
}

impl LocalIssuer {
    /// How long tokens live unless set otherwise.
    pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(5 * 60);
    /// The longest lifetime allowed: tokens are meant to be short-lived.
    pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

    /// An issuer with a fresh random key, naming itself `issuer` and
    /// minting tokens for `audience` unless a grant names another.
    pub fn generate(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Self::with_key(key, issuer.into(), audience.into())
    }

    /// An issuer with the key in `pem`, as written by
    /// [`to_pkcs8_pem`](Self::to_pkcs8_pem).
    pub fn from_pkcs8_pem(
        pem: &str,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, LocalIssuerError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(LocalIssuerError::InvalidKey)?;
        Ok(Self::with_key(key, issuer.into(), audience.into()))
    }

    fn with_key(signing: SigningKey, issuer: String, audience: String) -> Self {
        let der = signing.to_pkcs8_der();
        // INVARIANT: encoding a valid Ed25519 key as PKCS#8 DER cannot fail;
        // were it to, signing fails and no token is minted.
        let encoding = EncodingKey::from_ed_der(der.as_ref().map_or(&[][..], |d| d.as_bytes()));
        let jwks = Jwks { keys: vec![Jwk::ed25519(signing.verifying_key().as_bytes())] };
        Self { issuer, audience, lifetime: Self::DEFAULT_LIFETIME, signing, encoding, jwks }
    }

    /// Sets how long tokens live, between one second and
    /// [`MAX_LIFETIME`](Self::MAX_LIFETIME).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.clamp(Duration::from_secs(1), Self::MAX_LIFETIME);
        self
    }

    /// How long tokens live.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The `iss` of minted tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The default `aud` of minted tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The `kid` of the signing key.
    pub fn key_id(&self) -> &str {
        self.jwks.keys.first().map_or("", |k| k.kid.as_str())
    }

    /// The private key as PKCS#8 PEM, to keep it across restarts. The text
    /// is wiped from memory when dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, LocalIssuerError> {
        let pem =
            self.signing.to_pkcs8_pem(LineEnding::LF).map_err(LocalIssuerError::KeyEncoding)?;
        Ok(Zeroizing::new(pem.to_string()))
    }

    /// The public keys that verify this issuer's tokens.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// The key that verifies this issuer's tokens, for `jsonwebtoken`
    /// (which takes an Ed25519 public key as its raw 32 bytes).
    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ed_der(self.signing.verifying_key().as_bytes())
    }

    /// Verifies a token this issuer minted for its default audience.
    pub fn verify(&self, token: &str) -> Result<Claims, LocalIssuerError> {
        self.jwks.verify(token, &self.issuer, &self.audience)
    }

    /// Signs `claims` under this issuer's header.
    fn sign(&self, claims: &Claims) -> Result<String, LocalIssuerError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(self.key_id().to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(LocalIssuerError::Signing)
    }
}

impl fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .field("kid", &self.key_id())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TokenIssuer for LocalIssuer {
    // LIMITATION: `Grant::scope` is not written into the token; the
    // `authorization_details` entry already names the one allowed action.
    #[instrument(skip_all, fields(agent.id = %grant.agent))]
    async fn issue(&self, grant: &Grant) -> Result<IssuedToken, IssueError> {
        let now = OffsetDateTime::now_utc();
        let expires_at = now + self.lifetime;
        let jti = uuid::Uuid::now_v7().to_string();

        let claims = Claims {
            iss: self.issuer.clone(),
            sub: grant.agent.to_string(),
            aud: grant.audience.clone().unwrap_or_else(|| self.audience.clone()),
            exp: expires_at.unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            jti: jti.clone(),
            act: grant
                .analyst
                .as_ref()
                .map(|a| Actor { sub: a.id.clone(), name: Some(a.name.clone()) }),
            authorization_details: vec![grant.detail.clone()],
        };
        let token = self.sign(&claims).map_err(|e| IssueError::Signing(Box::new(e)))?;

        tracing::debug!(token.id = %jti, "token signed");
        Ok(IssuedToken { token: BearerToken::new(token), token_id: jti, expires_at })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::action::{Action, AgentId};
    use crate::approval::{Analyst, Approval, Decision, Outcome};
    use crate::classify::{Assessment, Risk, Verdict};

    const ISS: &str = "https://midosoc.test";
    const AUD: &str = "https://api.test";

    fn issuer() -> LocalIssuer {
        LocalIssuer::generate(ISS, AUD)
    }

    fn approved_grant() -> Grant {
        let action =
            Action::builder(AgentId::new("deploy-bot"), "DELETE", "https://api.test/repos/7")
                .body("{}")
                .build();
        let assessment = Assessment::new("test", Verdict::Hold, Risk::High, 1.0, "deletes");
        let mut approval = Approval::pending(action, assessment, Duration::from_secs(60));
        let analyst = Analyst::new("u-42", "Grace Hopper");
        approval.decision = Some(Decision::new(Outcome::Approve, analyst, None));
        Grant::for_approval(&approval)
    }

    /// Claims as the issuer would write them now, for tests to bend.
    fn claims(issuer: &LocalIssuer) -> Claims {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Claims {
            iss: issuer.issuer.clone(),
            sub: "deploy-bot".to_owned(),
            aud: issuer.audience.clone(),
            exp: now + 300,
            iat: now,
            nbf: now,
            jti: "jti-test".to_owned(),
            act: None,
            authorization_details: Vec::new(),
        }
    }

    fn encode_part(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    #[tokio::test]
    async fn issued_token_verifies_and_carries_the_grant() {
        let issuer = issuer();
        let grant = approved_grant();

        let issued = issuer.issue(&grant).await.unwrap();
        let claims = issuer.verify(issued.token.expose()).unwrap();

        assert_eq!(claims.iss, ISS);
        assert_eq!(claims.aud, AUD);
        assert_eq!(claims.sub, "deploy-bot");
        assert_eq!(claims.jti, issued.token_id);
        assert_eq!(claims.exp - claims.iat, 300);
        assert_eq!(claims.exp, issued.expires_at.unix_timestamp());
        assert_eq!(
            claims.act,
            Some(Actor { sub: "u-42".to_owned(), name: Some("Grace Hopper".to_owned()) })
        );
        assert_eq!(claims.authorization_details, vec![grant.detail]);
    }

    #[tokio::test]
    async fn header_names_eddsa_access_token_and_key_id() {
        let issuer = issuer();

        let issued = issuer.issue(&approved_grant()).await.unwrap();
        let header = jsonwebtoken::decode_header(issued.token.expose()).unwrap();

        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(issuer.key_id()));
    }

    #[tokio::test]
    async fn grant_audience_overrides_the_default() {
        let issuer = issuer();
        let grant = approved_grant().with_audience("https://billing.test");

        let issued = issuer.issue(&grant).await.unwrap();
        let token = issued.token.expose();

        assert!(matches!(issuer.verify(token), Err(LocalIssuerError::WrongAudience)));
        let claims = issuer.jwks().verify(token, ISS, "https://billing.test").unwrap();
        assert_eq!(claims.aud, "https://billing.test");
    }

    #[tokio::test]
    async fn tampered_payload_is_rejected() {
        let issuer = issuer();
        let issued = issuer.issue(&approved_grant()).await.unwrap();
        let parts: Vec<&str> = issued.token.expose().split('.').collect();

        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["sub"] = "root".into();
        let forged = format!("{}.{}.{}", parts[0], encode_part(&payload), parts[2]);

        assert!(matches!(issuer.verify(&forged), Err(LocalIssuerError::BadSignature)));
    }

    #[tokio::test]
    async fn tampered_signature_is_rejected() {
        let issuer = issuer();
        let issued = issuer.issue(&approved_grant()).await.unwrap();
        let token = issued.token.expose();

        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
        bytes[0] ^= 1;
        let forged = format!("{message}.{}", URL_SAFE_NO_PAD.encode(bytes));

        assert!(matches!(issuer.verify(&forged), Err(LocalIssuerError::BadSignature)));
    }

    #[tokio::test]
    async fn token_of_another_issuer_key_is_rejected() {
        let ours = issuer();
        let theirs = issuer();

        let issued = theirs.issue(&approved_grant()).await.unwrap();

        let result = ours.verify(issued.token.expose());
        assert!(matches!(result, Err(LocalIssuerError::UnknownKey(kid)) if kid == theirs.key_id()));
    }

    #[test]
    fn wrong_audience_and_issuer_are_rejected() {
        let issuer = issuer();
        let token = issuer.sign(&claims(&issuer)).unwrap();

        let audience = issuer.jwks().verify(&token, ISS, "https://elsewhere.test");
        let from = issuer.jwks().verify(&token, "https://impostor.test", AUD);

        assert!(matches!(audience, Err(LocalIssuerError::WrongAudience)));
        assert!(matches!(from, Err(LocalIssuerError::WrongIssuer)));
    }

    #[test]
    fn expired_token_is_rejected_beyond_the_leeway() {
        let issuer = issuer();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let within = Claims { exp: now - 10, iat: now - 310, nbf: now - 310, ..claims(&issuer) };
        let beyond = Claims { exp: now - 120, iat: now - 420, nbf: now - 420, ..claims(&issuer) };

        assert!(issuer.verify(&issuer.sign(&within).unwrap()).is_ok());
        let result = issuer.verify(&issuer.sign(&beyond).unwrap());
        assert!(matches!(result, Err(LocalIssuerError::Expired)));
    }

    #[test]
    fn token_not_yet_valid_is_rejected() {
        let issuer = issuer();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let early = Claims { nbf: now + 600, exp: now + 900, ..claims(&issuer) };

        let result = issuer.verify(&issuer.sign(&early).unwrap());

        assert!(matches!(result, Err(LocalIssuerError::NotYetValid)));
    }

    #[test]
    fn unsigned_token_with_alg_none_is_rejected() {
        let issuer = issuer();
        let header = serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": issuer.key_id()});
        let payload = serde_json::to_value(claims(&issuer)).unwrap();
        let token = format!("{}.{}.", encode_part(&header), encode_part(&payload));

        let result = issuer.verify(&token);

        assert!(matches!(result, Err(LocalIssuerError::AlgorithmNotAllowed(alg)) if alg == "none"));
    }

    #[test]
    fn hmac_token_keyed_with_the_public_key_is_rejected() {
        let issuer = issuer();
        let public = URL_SAFE_NO_PAD.decode(&issuer.jwks().keys[0].x).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(TOKEN_TYPE.to_owned());
        header.kid = Some(issuer.key_id().to_owned());
        let key = EncodingKey::from_secret(&public).unwrap();
        let token = jsonwebtoken::encode(&header, &claims(&issuer), &key).unwrap();

        let result = issuer.verify(&token);

        assert!(
            matches!(result, Err(LocalIssuerError::AlgorithmNotAllowed(alg)) if alg == "HS256")
        );
    }

    #[test]
    fn token_of_another_type_is_rejected() {
        let issuer = issuer();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(issuer.key_id().to_owned());
        let token = jsonwebtoken::encode(&header, &claims(&issuer), &issuer.encoding).unwrap();

        assert!(matches!(issuer.verify(&token), Err(LocalIssuerError::WrongType)));
    }

    #[test]
    fn access_token_type_is_matched_as_rfc_9068_says() {
        let cases = [
            ("at+jwt", true),
            ("AT+JWT", true),
            ("application/at+jwt", true),
            ("Application/At+Jwt", true),
            ("JWT", false),
            ("application/jwt", false),
            ("at+jwt2", false),
            ("", false),
        ];
        for (typ, expected) in cases {
            assert_eq!(is_access_token_type(typ), expected, "{typ}");
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let issuer = issuer();
        for token in ["", "a", "a.b", "a.b.c.d", "!!.b.c", "e30.e30.e30", "bnVsbA.e30.e30"] {
            let result = issuer.verify(token);
            assert!(matches!(result, Err(LocalIssuerError::Malformed)), "{token}: {result:?}");
        }
    }

    #[tokio::test]
    async fn key_set_with_a_short_key_refuses_instead_of_panicking() {
        let issuer = issuer();
        let issued = issuer.issue(&approved_grant()).await.unwrap();
        let mut jwks = issuer.jwks().clone();
        jwks.keys[0].x = "AAAA".to_owned();

        let result = jwks.verify(issued.token.expose(), ISS, AUD);

        assert!(matches!(result, Err(LocalIssuerError::UnknownKey(_))));
    }

    #[tokio::test]
    async fn token_ids_are_unique() {
        let issuer = issuer();
        let grant = approved_grant();

        let mut seen = HashSet::new();
        for _ in 0..200 {
            let issued = issuer.issue(&grant).await.unwrap();
            assert!(seen.insert(issued.token_id));
        }
    }

    #[tokio::test]
    async fn key_survives_a_pem_round_trip() {
        let first = issuer().with_lifetime(Duration::from_secs(120));
        let pem = first.to_pkcs8_pem().unwrap();

        let second = LocalIssuer::from_pkcs8_pem(&pem, ISS, AUD).unwrap();
        let issued = second.issue(&approved_grant()).await.unwrap();

        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(second.key_id(), first.key_id());
        assert_eq!(first.verify(issued.token.expose()).unwrap().sub, "deploy-bot");
    }

    #[test]
    fn text_that_is_not_a_key_is_refused() {
        let result = LocalIssuer::from_pkcs8_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n", ISS, AUD);

        assert!(matches!(result, Err(LocalIssuerError::InvalidKey(_))));
    }

    #[test]
    fn jwks_has_the_standard_shape() {
        let issuer = issuer();

        let json = serde_json::to_value(issuer.jwks()).unwrap();

        let key = &json["keys"][0];
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["crv"], "Ed25519");
        assert_eq!(key["alg"], "EdDSA");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], issuer.key_id());
        assert_eq!(URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap().len(), 32);
        let parsed: Jwks = serde_json::from_value(json).unwrap();
        assert_eq!(&parsed, issuer.jwks());
    }

    #[test]
    fn key_id_is_the_rfc_7638_thumbprint() {
        // RFC 8037, appendix A.3.
        let jwk = Jwk::ed25519(&[
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ]);

        assert_eq!(jwk.x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(jwk.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn lifetime_is_kept_short_and_positive() {
        assert_eq!(issuer().lifetime(), Duration::from_secs(300));
        assert_eq!(issuer().with_lifetime(Duration::ZERO).lifetime(), Duration::from_secs(1));
        assert_eq!(issuer().with_lifetime(Duration::MAX).lifetime(), LocalIssuer::MAX_LIFETIME);
    }

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let issuer = issuer();
        let pem = issuer.to_pkcs8_pem().unwrap();
        let secret = URL_SAFE_NO_PAD.encode(issuer.signing.to_bytes());
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();

        let shown = format!("{issuer:?}");

        assert!(shown.contains(issuer.key_id()));
        assert!(!shown.contains(&secret) && !shown.contains(&body), "{shown}");
        assert!(!shown.to_lowercase().contains("private"));
    }
}
