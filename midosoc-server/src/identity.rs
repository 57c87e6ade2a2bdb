//! Who may talk to the gateway: agents and analysts, kept in a SQLite file.
//!
//! An agent holds a key (`mdsa_…`), an analyst a sign-in token (`mdsr_…`).
//! Both are 32 random bytes, shown once when created; only their SHA-256
//! hashes are stored, and a presented secret is found by its hash.
//!
//! # Security
//!
//! Agent keys and analyst tokens live in separate tables and carry
//! different prefixes, so an agent key never authenticates an analyst (and
//! the reverse). A secret is looked up by the hash of a 256-bit random
//! value: timing of the lookup reveals nothing useful about the secret.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use midosoc_core::AgentId;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// File inside the data directory that holds the identities.
pub(crate) const DATABASE_FILE: &str = "identities.db";

/// Prefix of every agent key.
pub(crate) const AGENT_KEY_PREFIX: &str = "mdsa_";

/// Prefix of every analyst sign-in token.
pub(crate) const ANALYST_TOKEN_PREFIX: &str = "mdsr_";

/// Longest accepted agent or analyst name.
const NAME_LIMIT: usize = 64;

/// How long a write waits for another process (such as `midosoc agent add`
/// beside a running server) to release the database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum IdentityError {
    /// The data directory could not be created.
    #[error("cannot create data directory `{path}`")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened or migrated.
    #[error("cannot open identity database `{path}`")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A name is empty, too long or has characters other than letters,
    /// digits, `.`, `_` and `-`.
    #[error("invalid name `{0}`: use 1 to 64 letters, digits, `.`, `_` or `-`")]
    InvalidName(String),
    /// An agent with this name exists already.
    #[error("an agent named `{0}` already exists")]
    AgentExists(String),
    /// An analyst with this name exists already.
    #[error("an analyst named `{0}` already exists")]
    AnalystExists(String),
    /// The database failed.
    #[error("identity database failed")]
    Database(#[source] sqlx::Error),
}

/// What an analyst may do on the review side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Role {
    /// Sees approvals, decides nothing.
    Viewer,
    /// Approves and denies.
    Approver,
    /// Approves, denies and manages the gateway.
    Admin,
}

impl Role {
    /// Every role, least powerful first.
    pub(crate) const ALL: [Self; 3] = [Self::Viewer, Self::Approver, Self::Admin];

    /// The lower-case word for this role.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Approver => "approver",
            Self::Admin => "admin",
        }
    }

    /// Whether this role may approve or deny.
    pub(crate) fn can_decide(self) -> bool {
        matches!(self, Self::Approver | Self::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`: use `viewer`, `approver` or `admin`"))
    }
}

/// A local analyst account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AnalystAccount {
    /// Stable id, used as the analyst's subject in decisions and tokens.
    pub(crate) id: String,
    /// The name people recognise.
    pub(crate) name: String,
    /// What the analyst may do.
    pub(crate) role: Role,
}

/// An agent as listed by `midosoc agent list` (never its key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AgentRecord {
    /// The agent's name, also its [`AgentId`].
    pub(crate) name: String,
    /// When it was added.
    pub(crate) created_at: OffsetDateTime,
}

/// How long a successful agent-key lookup is remembered. Agent keys are
/// checked on every proxied request, and a database round trip costs more
/// than the rest of the allow path; a removed agent's key keeps working for
/// at most this long.
const AGENT_CACHE_TTL: Duration = Duration::from_secs(1);

/// Most agent keys remembered at once; the cache is emptied when full.
const AGENT_CACHE_LIMIT: usize = 10_000;

/// Recently authenticated agent keys, by hash.
type AgentCache = HashMap<[u8; 32], (AgentId, Instant)>;

/// The agents and analysts of one gateway.
#[derive(Clone, Debug)]
pub(crate) struct Identities {
    pool: SqlitePool,
    agents: Arc<Mutex<AgentCache>>,
}

impl Identities {
    /// Opens (creating when absent) the identity database in `data_dir`.
    pub(crate) async fn open(data_dir: &Path) -> Result<Self, IdentityError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| IdentityError::Open {
            path: path.clone(),
            source,
        };

        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| open_error(Box::new(e)))?;

        sqlx::migrate!("./migrations").run(&pool).await.map_err(|e| open_error(Box::new(e)))?;
        Ok(Self { pool, agents: Arc::default() })
    }

    /// Adds an agent and returns its key. The key is not kept: show it
    /// once.
    pub(crate) async fn add_agent(&self, name: &str) -> Result<String, IdentityError> {
        check_name(name)?;
        let key = new_secret(AGENT_KEY_PREFIX);
        let inserted = sqlx::query(
            "INSERT INTO agents (id, name, key_hash, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(name)
        .bind(hash(&key).as_slice())
        .bind(now_text())
        .execute(&self.pool)
        .await
        .map_err(IdentityError::Database)?;

        if inserted.rows_affected() == 0 {
            return Err(IdentityError::AgentExists(name.to_owned()));
        }
        Ok(key)
    }

    /// The agent holding `key`, if any.
    pub(crate) async fn authenticate_agent(
        &self,
        key: &str,
    ) -> Result<Option<AgentId>, IdentityError> {
        // SECURITY: an analyst token is never looked up as an agent key.
        if !key.starts_with(AGENT_KEY_PREFIX) {
            return Ok(None);
        }
        let digest = hash(key);
        if let Some(agent) = self.cached_agent(&digest) {
            return Ok(Some(agent));
        }
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM agents WHERE key_hash = ?")
            .bind(digest.as_slice())
            .fetch_optional(&self.pool)
            .await
            .map_err(IdentityError::Database)?;
        let agent = name.map(AgentId::new);
        if let Some(agent) = &agent {
            self.remember_agent(digest, agent.clone());
        }
        Ok(agent)
    }

    /// The agent for a key hash looked up less than [`AGENT_CACHE_TTL`] ago.
    fn cached_agent(&self, digest: &[u8; 32]) -> Option<AgentId> {
        let cache = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let (agent, at) = cache.get(digest)?;
        (at.elapsed() < AGENT_CACHE_TTL).then(|| agent.clone())
    }

    fn remember_agent(&self, digest: [u8; 32], agent: AgentId) {
        let mut cache = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= AGENT_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(digest, (agent, Instant::now()));
    }

    /// Every agent, by name.
    pub(crate) async fn list_agents(&self) -> Result<Vec<AgentRecord>, IdentityError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, created_at FROM agents ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(IdentityError::Database)?;
        Ok(rows
            .into_iter()
            .map(|(name, created_at)| AgentRecord { name, created_at: parse_time(&created_at) })
            .collect())
    }

    /// Removes an agent; its key stops working at once in this process and
    /// within a second in a running gateway. Returns whether there was
    /// such an agent.
    pub(crate) async fn remove_agent(&self, name: &str) -> Result<bool, IdentityError> {
        let done = sqlx::query("DELETE FROM agents WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(IdentityError::Database)?;
        let mut cache = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|_, (agent, _)| agent.as_str() != name);
        Ok(done.rows_affected() > 0)
    }

    /// Adds an analyst and returns their sign-in token. The token is not
    /// kept: show it once.
    pub(crate) async fn add_analyst(
        &self,
        name: &str,
        role: Role,
    ) -> Result<String, IdentityError> {
        check_name(name)?;
        let token = new_secret(ANALYST_TOKEN_PREFIX);
        let inserted = sqlx::query(
            "INSERT INTO analysts (id, name, role, token_hash, created_at)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(name)
        .bind(role.as_str())
        .bind(hash(&token).as_slice())
        .bind(now_text())
        .execute(&self.pool)
        .await
        .map_err(IdentityError::Database)?;

        if inserted.rows_affected() == 0 {
            return Err(IdentityError::AnalystExists(name.to_owned()));
        }
        Ok(token)
    }

    /// The analyst holding `token`, if any.
    pub(crate) async fn authenticate_analyst(
        &self,
        token: &str,
    ) -> Result<Option<AnalystAccount>, IdentityError> {
        // SECURITY: an agent key is never looked up as an analyst token.
        if !token.starts_with(ANALYST_TOKEN_PREFIX) {
            return Ok(None);
        }
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT id, name, role FROM analysts WHERE token_hash = ?")
                .bind(hash(token).as_slice())
                .fetch_optional(&self.pool)
                .await
                .map_err(IdentityError::Database)?;
        Ok(row.and_then(account))
    }

    /// The analyst with this id, if the account still exists. Sessions
    /// use it to notice removed accounts and changed roles.
    pub(crate) async fn find_analyst(
        &self,
        id: &str,
    ) -> Result<Option<AnalystAccount>, IdentityError> {
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT id, name, role FROM analysts WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(IdentityError::Database)?;
        Ok(row.and_then(account))
    }

    /// How many analyst accounts exist.
    pub(crate) async fn count_analysts(&self) -> Result<u64, IdentityError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM analysts")
            .fetch_one(&self.pool)
            .await
            .map_err(IdentityError::Database)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Every analyst, by name.
    pub(crate) async fn list_analysts(&self) -> Result<Vec<AnalystAccount>, IdentityError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT id, name, role FROM analysts ORDER BY name")
                .fetch_all(&self.pool)
                .await
                .map_err(IdentityError::Database)?;
        Ok(rows.into_iter().filter_map(account).collect())
    }

    /// Removes an analyst; their token stops working at once. Returns
    /// whether there was such an analyst.
    pub(crate) async fn remove_analyst(&self, name: &str) -> Result<bool, IdentityError> {
        let done = sqlx::query("DELETE FROM analysts WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(IdentityError::Database)?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether the database answers.
    pub(crate) async fn ready(&self) -> Result<(), IdentityError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(IdentityError::Database)?;
        Ok(())
    }
}

/// Builds an account from a row; a row with an unknown role is skipped
/// (the table's CHECK constraint keeps that from happening).
fn account((id, name, role): (String, String, String)) -> Option<AnalystAccount> {
    Some(AnalystAccount { id, name, role: role.parse().ok()? })
}

/// A fresh secret: `prefix` and 32 random bytes, base64url.
fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > NAME_LIMIT || !name.chars().all(allowed) {
        return Err(IdentityError::InvalidName(name.to_owned()));
    }
    Ok(())
}

fn now_text() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

fn parse_time(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Creates `dir` (and parents) readable by this user only.
fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    let error = |source| IdentityError::DataDir { path: dir.to_owned(), source };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open() -> (tempfile::TempDir, Identities) {
        let dir = tempfile::tempdir().unwrap();
        let ids = Identities::open(dir.path()).await.unwrap();
        (dir, ids)
    }

    #[tokio::test]
    async fn agent_key_authenticates_its_agent_and_only_its_hash_is_stored() {
        let (dir, ids) = open().await;
        let key = ids.add_agent("billing-bot").await.unwrap();
        assert!(key.starts_with(AGENT_KEY_PREFIX));
        assert_eq!(key.len(), AGENT_KEY_PREFIX.len() + 43);

        let agent = ids.authenticate_agent(&key).await.unwrap();
        assert_eq!(agent, Some(AgentId::new("billing-bot")));

        drop(ids);
        let file = std::fs::read(dir.path().join(DATABASE_FILE)).unwrap();
        let needle = key.as_bytes();
        assert!(!file.windows(needle.len()).any(|w| w == needle));
    }

    #[tokio::test]
    async fn wrong_or_malformed_keys_authenticate_nobody() {
        let (_dir, ids) = open().await;
        let key = ids.add_agent("a").await.unwrap();
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('A') { 'B' } else { 'A' });

        for candidate in [wrong.as_str(), "", "mdsa_", "Bearer x", &key[1..]] {
            assert_eq!(ids.authenticate_agent(candidate).await.unwrap(), None, "{candidate}");
        }
    }

    #[tokio::test]
    async fn agent_keys_and_analyst_tokens_are_separate_namespaces() {
        let (_dir, ids) = open().await;
        let key = ids.add_agent("bot").await.unwrap();
        let token = ids.add_analyst("alice", Role::Approver).await.unwrap();
        assert!(token.starts_with(ANALYST_TOKEN_PREFIX));

        assert_eq!(ids.authenticate_analyst(&key).await.unwrap(), None);
        assert_eq!(ids.authenticate_agent(&token).await.unwrap(), None);

        let alice = ids.authenticate_analyst(&token).await.unwrap().unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.role, Role::Approver);
        assert_eq!(ids.find_analyst(&alice.id).await.unwrap(), Some(alice));
    }

    #[tokio::test]
    async fn duplicate_and_invalid_names_are_refused() {
        let (_dir, ids) = open().await;
        ids.add_agent("bot").await.unwrap();
        assert!(matches!(ids.add_agent("bot").await, Err(IdentityError::AgentExists(_))));
        ids.add_analyst("bot", Role::Viewer).await.unwrap();
        assert!(matches!(
            ids.add_analyst("bot", Role::Admin).await,
            Err(IdentityError::AnalystExists(_))
        ));
        for bad in ["", "has space", "semi;colon", &"x".repeat(65)] {
            assert!(matches!(ids.add_agent(bad).await, Err(IdentityError::InvalidName(_))));
        }
    }

    #[tokio::test]
    async fn removed_identities_stop_authenticating() {
        let (_dir, ids) = open().await;
        let key = ids.add_agent("bot").await.unwrap();
        let token = ids.add_analyst("alice", Role::Admin).await.unwrap();
        assert_eq!(ids.count_analysts().await.unwrap(), 1);
        // Remembered by the lookup cache, and still forgotten on removal.
        assert!(ids.authenticate_agent(&key).await.unwrap().is_some());

        assert!(ids.remove_agent("bot").await.unwrap());
        assert!(!ids.remove_agent("bot").await.unwrap());
        assert!(ids.remove_analyst("alice").await.unwrap());

        assert_eq!(ids.authenticate_agent(&key).await.unwrap(), None);
        assert_eq!(ids.authenticate_analyst(&token).await.unwrap(), None);
        assert_eq!(ids.count_analysts().await.unwrap(), 0);
        assert!(ids.list_agents().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn identities_survive_reopening_the_data_directory() {
        let (dir, ids) = open().await;
        let key = ids.add_agent("bot").await.unwrap();
        ids.add_analyst("alice", Role::Viewer).await.unwrap();
        drop(ids);

        let ids = Identities::open(dir.path()).await.unwrap();
        assert_eq!(ids.authenticate_agent(&key).await.unwrap(), Some(AgentId::new("bot")));
        let names: Vec<_> =
            ids.list_analysts().await.unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["alice"]);
    }

    #[test]
    fn roles_parse_display_and_know_who_decides() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert!(!Role::Viewer.can_decide());
        assert!(Role::Approver.can_decide());
        assert!(Role::Admin.can_decide());
        assert!("root".parse::<Role>().unwrap_err().contains("`root`"));
    }
}
