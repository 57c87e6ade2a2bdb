//! [`SqliteStore`]: approvals, decisions and the audit trail in one SQLite
//! file, the default that needs nothing installed.
//!
//! The file runs in WAL mode with `synchronous = FULL`: readers never wait
//! for the writer, and a committed decision survives a power cut, not only
//! a crash. Writers of this process queue on an async lock and then take
//! SQLite's write lock with `BEGIN IMMEDIATE`, so the audit chain is
//! appended one link at a time and nobody sleeps in SQLite's busy handler.
//!
//! Waiters and subscribers are woken in-process right after each commit.
// LIMITATION: a second process writing the same file is noticed only by
// the periodic re-check (`StoreOptions::recheck_every`), as SQLite has no
// cross-process notification. Several gateways should share PostgreSQL.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::audit::{AuditEntry, AuditReport, AuditStream, RawEntry};
use super::sql_common::{
    Backend, Core, Head, OpenError, StoreOptions, delegate_to_core, unavailable,
};
use super::{ApprovalFilter, StoreError};
use crate::action::AgentId;
use crate::approval::{Approval, ApprovalId, ApprovalStatus};

/// Keeps approvals in a SQLite file. Cheap to clone; clones share one
/// pool.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use midosoc_core::store::{SqliteStore, StoreOptions};
///
/// let store = SqliteStore::open("sqlite://midosoc.db", StoreOptions::default()).await?;
/// let report = store.verify_audit().await?;
/// println!("{report}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    core: Arc<Core<SqliteBackend>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the file a `sqlite://` URL names and
    /// brings its schema up to date.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, OpenError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(OpenError::InMemory);
        }
        let connect = SqliteConnectOptions::from_str(url).map_err(OpenError::InvalidUrl)?;
        Self::open_with(connect, options).await
    }

    /// Opens the database `connect` describes, which must be a file.
    pub async fn open_with(
        connect: SqliteConnectOptions,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        let connect = connect
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(options.acquire_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(OpenError::Connect)?;

        migrator().run(&pool).await.map_err(OpenError::Migrate)?;

        let backend = SqliteBackend { pool, writer: Arc::new(Mutex::new(())) };
        let core = Core::start(backend, &options).await.map_err(OpenError::Store)?;
        Ok(Self { core: Arc::new(core) })
    }

    /// Checks the whole audit chain; see [`AuditLog`](super::AuditLog).
    pub async fn verify_audit(&self) -> Result<AuditReport, StoreError> {
        self.core.verify_audit().await
    }

    /// The audit entries after `after`; see [`AuditLog`](super::AuditLog).
    pub fn export_audit(&self, after: Option<u64>) -> AuditStream {
        self.core.export_audit(after)
    }

    /// How many `wait` calls are parked on an undecided approval.
    pub fn waiting(&self) -> usize {
        self.core.waiting()
    }

    /// Transactions committed so far, for tests that check that writes
    /// were grouped.
    #[doc(hidden)]
    pub fn commits(&self) -> u64 {
        self.core.commits()
    }

    /// Closes the pool, waiting for connections in use to be returned;
    /// every later call fails with [`StoreError::Unavailable`]. For a
    /// graceful shutdown.
    pub async fn close(&self) {
        self.core.backend().pool.close().await;
    }
}

delegate_to_core!(SqliteStore);

/// The schema, versioned. Its own bookkeeping table keeps it apart from
/// other migrations run against the same file.
fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    // Named from the first release on, so no existing database loses
    // track of what was applied.
    migrator.dangerous_set_table_name("_midosoc_store_migrations");
    migrator.set_ignore_missing(true);
    migrator
}

const HEAD: &str = "SELECT seq, hash FROM approval_events_head WHERE id = 1";
const GET: &str = "SELECT approval FROM approvals WHERE id = ?1";
const PENDING_COUNT: &str =
    "SELECT count(*) FROM approvals WHERE agent = ?1 AND status = 'pending'";
const INSERT: &str = "INSERT INTO approvals (id, agent, status, created_at, expires_at, approval) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const UPDATE: &str = "UPDATE approvals SET status = ?2, token_id = ?3, approval = ?4 \
     WHERE id = ?1 AND status = ?5 AND token_id IS NULL";
const ANY_DUE: &str =
    "SELECT EXISTS (SELECT 1 FROM approvals WHERE status = 'pending' AND expires_at <= ?1)";
const EXPIRE: &str = "UPDATE approvals \
     SET status = 'expired', approval = json_set(approval, '$.status', 'expired', '$.closed_at', ?2) \
     WHERE status = 'pending' AND expires_at <= ?1 \
     RETURNING approval";
const APPEND: &str = "INSERT INTO approval_events \
     (seq, kind, at, approval_id, agent, analyst, payload, prev_hash, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const MOVE_HEAD: &str = "UPDATE approval_events_head SET seq = ?1, hash = ?2 WHERE id = 1";
const ENTRIES: &str = "SELECT seq, kind, at, approval_id, agent, analyst, payload, prev_hash, hash \
     FROM approval_events WHERE seq > ?1 ORDER BY seq LIMIT ?2";
const LIST_ALL: &str = "SELECT approval FROM approvals ORDER BY created_at DESC, id DESC LIMIT ?1";
const LIST_BY_STATUS: &str = "SELECT approval FROM approvals WHERE status = ?2 \
     ORDER BY created_at DESC, id DESC LIMIT ?1";
const LIST_BY_AGENT: &str = "SELECT approval FROM approvals WHERE agent = ?2 \
     ORDER BY created_at DESC, id DESC LIMIT ?1";
const LIST_BY_BOTH: &str = "SELECT approval FROM approvals WHERE status = ?2 AND agent = ?3 \
     ORDER BY created_at DESC, id DESC LIMIT ?1";

/// SQLite's SQL for [`Core`].
struct SqliteBackend {
    pool: SqlitePool,
    /// Held for the whole of a write transaction.
    writer: Arc<Mutex<()>>,
}

/// A write transaction and this process's writer lock. The transaction is
/// declared first so it ends before the lock is released.
struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    _writer: OwnedMutexGuard<()>,
}

/// Microseconds since the Unix epoch: how the schema keeps time.
fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000)).unwrap_or(i64::MAX)
}

fn from_micros(micros: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).map_err(unavailable)
}

fn approval_from(row: &SqliteRow) -> Result<Approval, StoreError> {
    let json: String = row.try_get(0).map_err(unavailable)?;
    serde_json::from_str(&json).map_err(unavailable)
}

fn raw_entry(row: &SqliteRow) -> Result<RawEntry, sqlx::Error> {
    Ok(RawEntry {
        seq: row.try_get("seq")?,
        kind: row.try_get("kind")?,
        at: from_micros(row.try_get("at")?).map_err(|e| sqlx::Error::Decode(e.into()))?,
        approval_id: row.try_get("approval_id")?,
        agent: row.try_get("agent")?,
        analyst: row.try_get("analyst")?,
        payload: row.try_get("payload")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

fn head_from(row: &SqliteRow) -> Result<Head, StoreError> {
    let seq: i64 = row.try_get("seq").map_err(unavailable)?;
    let hash: String = row.try_get("hash").map_err(unavailable)?;
    Ok(Head { seq: u64::try_from(seq).map_err(unavailable)?, hash })
}

#[async_trait]
impl Backend for SqliteBackend {
    type Tx = SqliteTx;

    async fn begin_append(&self) -> Result<(SqliteTx, Head), StoreError> {
        let writer = Arc::clone(&self.writer).lock_owned().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(unavailable)?;
        let row = sqlx::query(HEAD).fetch_one(&mut *tx).await.map_err(unavailable)?;
        Ok((SqliteTx { tx, _writer: writer }, head_from(&row)?))
    }

    async fn commit(&self, tx: SqliteTx) -> Result<(), StoreError> {
        tx.tx.commit().await.map_err(unavailable)
    }

    async fn rollback(&self, tx: SqliteTx) -> Result<(), StoreError> {
        tx.tx.rollback().await.map_err(unavailable)
    }

    async fn execute_in(&self, tx: &mut SqliteTx, sql: &'static str) -> Result<(), StoreError> {
        sqlx::raw_sql(sql).execute(&mut *tx.tx).await.map_err(unavailable)?;
        Ok(())
    }

    async fn get_in(
        &self,
        tx: &mut SqliteTx,
        id: ApprovalId,
    ) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query(GET)
            .bind(id.to_string())
            .fetch_optional(&mut *tx.tx)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(approval_from).transpose()
    }

    async fn pending_count(&self, tx: &mut SqliteTx, agent: &AgentId) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(PENDING_COUNT)
            .bind(agent.as_str())
            .fetch_one(&mut *tx.tx)
            .await
            .map_err(unavailable)?;
        u64::try_from(count).map_err(unavailable)
    }

    async fn insert(&self, tx: &mut SqliteTx, approval: &Approval) -> Result<(), StoreError> {
        let json = serde_json::to_string(approval).map_err(unavailable)?;
        sqlx::query(INSERT)
            .bind(approval.id.to_string())
            .bind(approval.agent().as_str())
            .bind(approval.status.as_str())
            .bind(micros(approval.created_at))
            .bind(micros(approval.expires_at))
            .bind(json)
            .execute(&mut *tx.tx)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn update(
        &self,
        tx: &mut SqliteTx,
        approval: &Approval,
        from: ApprovalStatus,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(approval).map_err(unavailable)?;
        let done = sqlx::query(UPDATE)
            .bind(approval.id.to_string())
            .bind(approval.status.as_str())
            .bind(approval.execution.as_ref().map(|e| e.token_id.as_str()))
            .bind(json)
            .bind(from.as_str())
            .execute(&mut *tx.tx)
            .await;
        match done {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                Err(StoreError::NotExecutable {
                    id: approval.id,
                    reason: "its token id was already used",
                })
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn any_due(&self, now: OffsetDateTime) -> Result<bool, StoreError> {
        sqlx::query_scalar(ANY_DUE)
            .bind(micros(now))
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn expire_due(
        &self,
        tx: &mut SqliteTx,
        now: OffsetDateTime,
        closed_at: &str,
    ) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query(EXPIRE)
            .bind(micros(now))
            .bind(closed_at)
            .fetch_all(&mut *tx.tx)
            .await
            .map_err(unavailable)?;
        rows.iter().map(approval_from).collect()
    }

    async fn append(&self, tx: &mut SqliteTx, entry: &AuditEntry) -> Result<(), StoreError> {
        let seq = i64::try_from(entry.seq).map_err(unavailable)?;
        let payload = entry.canonical_payload().map_err(unavailable)?;
        sqlx::query(APPEND)
            .bind(seq)
            .bind(entry.kind.as_str())
            .bind(micros(entry.at))
            .bind(entry.approval_id.to_string())
            .bind(entry.agent.as_str())
            .bind(entry.analyst.as_deref())
            .bind(payload)
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .execute(&mut *tx.tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(MOVE_HEAD)
            .bind(seq)
            .bind(&entry.hash)
            .execute(&mut *tx.tx)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query(GET)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(approval_from).transpose()
    }

    async fn list(&self, filter: &ApprovalFilter, limit: i64) -> Result<Vec<Approval>, StoreError> {
        let sql = match (filter.status, &filter.agent) {
            (None, None) => LIST_ALL,
            (Some(_), None) => LIST_BY_STATUS,
            (None, Some(_)) => LIST_BY_AGENT,
            (Some(_), Some(_)) => LIST_BY_BOTH,
        };
        // Parameters are numbered in the order they are bound here.
        let mut query = sqlx::query(sql).bind(limit);
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(agent) = &filter.agent {
            query = query.bind(agent.as_str().to_owned());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(approval_from).collect()
    }

    async fn entries_after(&self, after: i64, limit: i64) -> Result<Vec<RawEntry>, StoreError> {
        let rows = sqlx::query(ENTRIES)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(raw_entry).collect::<Result<_, _>>().map_err(unavailable)
    }

    async fn head(&self) -> Result<Head, StoreError> {
        let row = sqlx::query(HEAD).fetch_one(&self.pool).await.map_err(unavailable)?;
        head_from(&row)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }
}
