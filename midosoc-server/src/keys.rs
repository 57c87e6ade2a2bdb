//! The built-in issuer's signing key, kept as a PKCS#8 PEM file in the data
//! directory so that tokens and the JWKS survive restarts.
//!
//! # Security
//!
//! The file is created with mode 0600 and refused at start-up when anyone
//! but its owner can read it.

use std::io::Write;
use std::path::{Path, PathBuf};

use midosoc_core::token::{LocalIssuer, LocalIssuerError};

/// File inside the data directory that holds the signing key.
pub(crate) const SIGNING_KEY_FILE: &str = "signing-key.pem";

/// Why the signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// The file could not be read or written.
    #[error("cannot access signing key `{path}`")]
    Io {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Others than the owner may read the file.
    #[error("signing key `{0}` is readable by other users; run `chmod 600` on it")]
    TooOpen(PathBuf),
    /// The file holds no usable key.
    #[error("signing key `{path}` is not usable; remove it to generate a new one")]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: LocalIssuerError,
    },
}

/// The issuer with the key in `data_dir`, generating and saving one when
/// there is none yet.
pub(crate) fn load_or_create(
    data_dir: &Path,
    issuer: &str,
    audience: &str,
) -> Result<LocalIssuer, KeyError> {
    let path = data_dir.join(SIGNING_KEY_FILE);
    let io = |source| KeyError::Io { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(pem) => {
            check_permissions(&path)?;
            LocalIssuer::from_pkcs8_pem(&pem, issuer, audience)
                .map_err(|source| KeyError::Invalid { path: path.clone(), source })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let fresh = LocalIssuer::generate(issuer, audience);
            let pem = fresh
                .to_pkcs8_pem()
                .map_err(|source| KeyError::Invalid { path: path.clone(), source })?;
            let mut file = private_file(&path).map_err(io)?;
            file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
            tracing::info!(path = %path.display(), key.id = fresh.key_id(), "signing key created");
            Ok(fresh)
        }
        Err(error) => Err(io(error)),
    }
}

/// Creates `path` for writing, readable by its owner only, failing if it
/// exists (another process won the race: its key is the one to use).
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;

    let metadata =
        std::fs::metadata(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(KeyError::TooOpen(path.to_owned()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path) -> Result<(), KeyError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reused_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "iss", "aud").unwrap();
        let second = load_or_create(dir.path(), "iss", "aud").unwrap();
        assert_eq!(first.key_id(), second.key_id());
        assert_eq!(first.jwks(), second.jwks());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SIGNING_KEY_FILE)).unwrap().permissions();
            assert_eq!(mode.mode() & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), "iss", "aud").unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path(), "iss", "aud").unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
