//! The token issuer the upstreams' approval layers mint with, chosen by
//! `[issuer] kind`: the built-in signed-token issuer (`local`), any OAuth
//! 2.0 server (`oauth2`) or an Auth0 tenant (`auth0`).
//!
//! The provider kinds take their settings from `[issuer.oauth2]` or
//! `[issuer.auth0]`, which are the TOML forms of `OAuth2IssuerConfig` and
//! `Auth0IssuerConfig` from `midosoc-core`, except that `client_secret` is a
//! secret source (`{ env = "VAR" }` or `{ file = "/path" }`) rather than the
//! secret itself.
//!
//! # Security
//!
//! The action API (`/v1/authorize`) keeps minting with the built-in issuer
//! whatever the kind: it hands its token to the agent, and only the
//! built-in issuer binds a token to the single approved action. A provider
//! token (client credentials) allows its whole audience, so it only ever
//! travels from the gateway to an upstream.

use std::sync::Arc;

use midosoc_core::TokenIssuer;
use midosoc_core::token::{
    Auth0Issuer, Auth0IssuerConfig, LocalIssuer, OAuth2Issuer, OAuth2IssuerConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{IssuerConfig, SecretSource};

/// The issuer kinds `[issuer] kind` accepts.
pub(crate) const KINDS: &[&str] = &["local", "oauth2", "auth0"];

/// Why the configured issuer cannot be built. Each message names the key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IssuerError {
    /// `kind` is not one of [`KINDS`].
    #[error("`{0}` is not an issuer kind; use `local`, `oauth2` or `auth0`")]
    UnknownKind(String),
    /// The table for the chosen kind is missing.
    #[error("`issuer.kind = \"{0}\"` needs an `[issuer.{0}]` table")]
    MissingTable(&'static str),
    /// The secret source could not be read.
    #[error("cannot read `issuer.{kind}.client_secret`: {problem}")]
    Secret {
        /// `oauth2` or `auth0`.
        kind: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The table does not describe a valid issuer.
    #[error("invalid `[issuer.{kind}]`: {problem}")]
    Settings {
        /// `oauth2` or `auth0`.
        kind: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// `[issuer.oauth2]` or `[issuer.auth0]`: the settings of a provider
/// issuer, with the client secret read from a secret source.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProviderIssuerConfig {
    /// Where the client secret comes from.
    pub(crate) client_secret: SecretSource,
    /// Every other key, checked by the issuer's own configuration type
    /// (which refuses unknown keys).
    #[serde(flatten)]
    pub(crate) settings: Map<String, Value>,
}

/// Builds the issuer `config` names; `local` is the built-in issuer.
pub(crate) fn build(
    config: &IssuerConfig,
    local: Arc<LocalIssuer>,
) -> Result<Arc<dyn TokenIssuer>, IssuerError> {
    match config.kind.as_str() {
        "local" => Ok(local),
        "oauth2" => {
            let table = config.oauth2.as_ref().ok_or(IssuerError::MissingTable("oauth2"))?;
            let settings: OAuth2IssuerConfig = settings("oauth2", table)?;
            let issuer = OAuth2Issuer::new(settings).map_err(|e| invalid("oauth2", &e))?;
            Ok(Arc::new(issuer))
        }
        "auth0" => {
            let table = config.auth0.as_ref().ok_or(IssuerError::MissingTable("auth0"))?;
            let settings: Auth0IssuerConfig = settings("auth0", table)?;
            let issuer = Auth0Issuer::new(settings).map_err(|e| invalid("auth0", &e))?;
            Ok(Arc::new(issuer))
        }
        other => Err(IssuerError::UnknownKind(other.to_owned())),
    }
}

/// Checks the configuration by building the issuer it names, with a
/// throw-away built-in issuer.
pub(crate) fn check(config: &IssuerConfig) -> Result<(), IssuerError> {
    if config.kind == "local" {
        return Ok(());
    }
    let throwaway = Arc::new(LocalIssuer::generate("check", "check"));
    build(config, throwaway).map(drop)
}

/// The issuer's own configuration, with the secret read from its source.
fn settings<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    table: &ProviderIssuerConfig,
) -> Result<T, IssuerError> {
    let secret = table
        .client_secret
        .read(&format!("issuer.{kind}.client_secret"))
        .map_err(|e| IssuerError::Secret { kind, problem: e.to_string() })?;
    if table.settings.contains_key("client_secret") {
        return Err(IssuerError::Settings {
            kind,
            problem: "`client_secret` appears twice".to_owned(),
        });
    }

    let mut settings = table.settings.clone();
    settings.insert("client_secret".to_owned(), Value::String(secret.expose().to_owned()));
    // SECURITY: a serde error names the offending key and the type it
    // expected; the secret is a string where a string is expected, so no
    // message can quote it.
    serde_json::from_value(Value::Object(settings))
        .map_err(|e| IssuerError::Settings { kind, problem: e.to_string() })
}

fn invalid(kind: &'static str, error: &dyn std::error::Error) -> IssuerError {
    IssuerError::Settings { kind, problem: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: &str, table: Option<ProviderIssuerConfig>) -> IssuerConfig {
        let mut config = IssuerConfig { kind: kind.to_owned(), ..IssuerConfig::default() };
        match kind {
            "auth0" => config.auth0 = table,
            _ => config.oauth2 = table,
        }
        config
    }

    fn table(secret_file: &std::path::Path, pairs: &[(&str, Value)]) -> ProviderIssuerConfig {
        ProviderIssuerConfig {
            client_secret: SecretSource { env: None, file: Some(secret_file.to_owned()) },
            settings: pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        }
    }

    #[test]
    fn provider_issuers_build_from_their_tables_with_the_secret_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let local = Arc::new(LocalIssuer::generate("iss", "aud"));

        let oauth2 = table(
            &secret,
            &[
                ("token_url", "http://127.0.0.1:9/token".into()),
                ("client_id", "gw".into()),
                ("audience", "https://api.example".into()),
            ],
        );
        assert!(build(&config("oauth2", Some(oauth2)), local.clone()).is_ok());

        let auth0 =
            table(&secret, &[("domain", "example.eu.auth0.com".into()), ("client_id", "x".into())]);
        assert!(build(&config("auth0", Some(auth0)), local).is_ok());
    }

    #[test]
    fn provider_issuer_mistakes_name_the_key_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret-value").unwrap();

        let cases = [
            (config("oauth2", None), "[issuer.oauth2]"),
            (config("hsm", None), "`hsm`"),
            (config("oauth2", Some(table(&secret, &[("client_id", "gw".into())]))), "token_url"),
            (
                config(
                    "oauth2",
                    Some(table(
                        &secret,
                        &[
                            ("token_url", "http://127.0.0.1:9/token".into()),
                            ("client_id", "gw".into()),
                            ("audiense", "x".into()),
                        ],
                    )),
                ),
                "audiense",
            ),
            (
                config(
                    "oauth2",
                    Some(table(
                        &secret,
                        &[
                            ("token_url", "http://login.example/token".into()),
                            ("client_id", "gw".into()),
                        ],
                    )),
                ),
                "https",
            ),
            (
                config(
                    "oauth2",
                    Some(table(&dir.path().join("absent"), &[("client_id", "gw".into())])),
                ),
                "issuer.oauth2.client_secret",
            ),
        ];
        for (config, expected) in cases {
            let err = check(&config).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains("s3cret-value"), "{err}");
        }
    }
}
