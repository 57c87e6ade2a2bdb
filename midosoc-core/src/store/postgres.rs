//! [`PostgresStore`]: approvals, decisions and the audit trail in
//! PostgreSQL, shared by several gateway instances.
//!
//! Every write transaction first locks the audit chain's head row
//! (`SELECT ... FOR UPDATE`), so writes from all instances are serialized
//! and each appends one linked entry. The same transaction sends
//! `pg_notify` with the new `seq`; PostgreSQL delivers it on commit to
//! every instance listening, whose pump then reads the new entries and
//! wakes its waiters and subscribers. Expiry is one atomic
//! `UPDATE ... WHERE status = 'pending' AND expires_at <= now RETURNING`,
//! so each approval expires once however many instances sweep.
//!
//! The notification channel is named after the database and schema, so
//! gateways on different schemas of one database do not wake each other.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::audit::{AuditEntry, AuditReport, AuditStream, RawEntry};
use super::sql_common::{
    Backend, Core, Head, Hub, OpenError, StoreOptions, delegate_to_core, unavailable,
};
use super::{ApprovalFilter, StoreError};
use crate::action::AgentId;
use crate::approval::{Approval, ApprovalId, ApprovalStatus};

/// How long the listener waits before it connects again after failing.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Keeps approvals in PostgreSQL. Cheap to clone; clones share one pool.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use midosoc_core::store::{PostgresStore, StoreOptions};
///
/// let url = "postgres://midosoc@db.internal/midosoc";
/// let store = PostgresStore::open(url, StoreOptions::default()).await?;
/// assert!(store.verify_audit().await?.is_whole());
/// # Ok(())
/// # }
/// ```
///
/// To keep the tables in their own schema, add
/// `?options=-c%20search_path%3Dmidosoc` to the URL, or pass
/// [`PgConnectOptions`] with `options([("search_path", "midosoc")])` to
/// [`open_with`](Self::open_with).
#[derive(Clone, Debug)]
pub struct PostgresStore {
    core: Arc<Core<PgBackend>>,
}

impl PostgresStore {
    /// Connects to the database a `postgres://` URL names and brings its
    /// schema up to date.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, OpenError> {
        let connect = PgConnectOptions::from_str(url).map_err(OpenError::InvalidUrl)?;
        Self::open_with(connect, options).await
    }

    /// Connects with `connect` and brings the schema up to date.
    pub async fn open_with(
        connect: PgConnectOptions,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        let connect = connect.application_name("midosoc");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(OpenError::Connect)?;

        migrator().run(&pool).await.map_err(OpenError::Migrate)?;
        let channel = channel_name(&pool).await.map_err(OpenError::Store)?;

        let backend = PgBackend { pool, channel: channel.clone() };
        let mut core = Core::start(backend, &options).await.map_err(OpenError::Store)?;

        // The listener holds one connection of its own for as long as the
        // store lives, outside the pool that serves requests.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect);
        let hub = Arc::clone(core.hub());
        core.keep(tokio::spawn(listen(listener_pool, channel, hub)));
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

delegate_to_core!(PostgresStore);

/// The schema, versioned. Its own bookkeeping table keeps it apart from
/// other migrations run against the same schema.
fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    // Named from the first release on, so no existing database loses
    // track of what was applied.
    migrator.dangerous_set_table_name("_midosoc_store_migrations");
    migrator.set_ignore_missing(true);
    migrator
}

/// A channel name unique to this database and schema, and short enough
/// for PostgreSQL's 63-byte identifiers.
async fn channel_name(pool: &PgPool) -> Result<String, StoreError> {
    let (database, schema): (String, Option<String>) =
        sqlx::query_as("SELECT current_database()::text, current_schema()::text")
            .fetch_one(pool)
            .await
            .map_err(unavailable)?;
    let scope = format!("{database}\n{}", schema.unwrap_or_default());
    let digest = hex::encode(Sha256::digest(scope.as_bytes()));
    Ok(format!("midosoc_events_{}", &digest[..16]))
}

/// Listens for other instances' commits and pokes the pump. After any
/// lost connection it pokes too, since notifications sent meanwhile are
/// gone and only the log has them. Runs until aborted.
async fn listen(pool: PgPool, channel: String, hub: Arc<Hub>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "approval event listener cannot connect");
                tokio::time::sleep(LISTEN_RETRY).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(&channel).await {
            tracing::warn!(%error, "approval event listener cannot listen");
            tokio::time::sleep(LISTEN_RETRY).await;
            continue;
        }
        hub.poke();

        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => hub.poke(),
                Ok(None) => {
                    tracing::info!("approval event listener reconnected");
                    hub.poke();
                }
                Err(error) => {
                    tracing::warn!(%error, "approval event listener lost its connection");
                    break;
                }
            }
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

const HEAD: &str = "SELECT seq, hash FROM approval_events_head WHERE id = 1";
const LOCK_HEAD: &str = "SELECT seq, hash FROM approval_events_head WHERE id = 1 FOR UPDATE";
const GET: &str = "SELECT approval::text FROM approvals WHERE id = $1";
const PENDING_COUNT: &str =
    "SELECT count(*) FROM approvals WHERE agent = $1 AND status = 'pending'";
const INSERT: &str = "INSERT INTO approvals (id, agent, status, created_at, expires_at, approval) \
     VALUES ($1, $2, $3, $4, $5, $6::jsonb)";
const UPDATE: &str = "UPDATE approvals SET status = $2, token_id = $3, approval = $4::jsonb \
     WHERE id = $1 AND status = $5 AND token_id IS NULL";
const ANY_DUE: &str =
    "SELECT EXISTS (SELECT 1 FROM approvals WHERE status = 'pending' AND expires_at <= $1)";
const EXPIRE: &str = "UPDATE approvals \
     SET status = 'expired', \
         approval = jsonb_set(jsonb_set(approval, '{status}', '\"expired\"'), \
                              '{closed_at}', to_jsonb($2::text)) \
     WHERE status = 'pending' AND expires_at <= $1 \
     RETURNING approval::text";
/// Appends an entry, moves the head to it and queues the notification, in
/// one round trip. `pg_notify` is delivered on commit, never for a change
/// rolled back.
const APPEND: &str = "WITH appended AS ( \
         INSERT INTO approval_events \
         (seq, kind, at, approval_id, agent, analyst, payload, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)), \
     moved AS (UPDATE approval_events_head SET seq = $1, hash = $9 WHERE id = 1) \
     SELECT pg_notify($10, $1::text)";
const ENTRIES: &str = "SELECT seq, kind, at, approval_id::text AS approval_id, agent, analyst, \
     payload, prev_hash, hash FROM approval_events WHERE seq > $1 ORDER BY seq LIMIT $2";
const LIST_ALL: &str =
    "SELECT approval::text FROM approvals ORDER BY created_at DESC, id DESC LIMIT $1";
const LIST_BY_STATUS: &str = "SELECT approval::text FROM approvals WHERE status = $2 \
     ORDER BY created_at DESC, id DESC LIMIT $1";
const LIST_BY_AGENT: &str = "SELECT approval::text FROM approvals WHERE agent = $2 \
     ORDER BY created_at DESC, id DESC LIMIT $1";
const LIST_BY_BOTH: &str = "SELECT approval::text FROM approvals WHERE status = $2 AND agent = $3 \
     ORDER BY created_at DESC, id DESC LIMIT $1";

/// PostgreSQL's SQL for [`Core`].
struct PgBackend {
    pool: PgPool,
    channel: String,
}

fn approval_from(row: &PgRow) -> Result<Approval, StoreError> {
    let json: String = row.try_get(0).map_err(unavailable)?;
    serde_json::from_str(&json).map_err(unavailable)
}

fn raw_entry(row: &PgRow) -> Result<RawEntry, sqlx::Error> {
    Ok(RawEntry {
        seq: row.try_get("seq")?,
        kind: row.try_get("kind")?,
        at: row.try_get("at")?,
        approval_id: row.try_get("approval_id")?,
        agent: row.try_get("agent")?,
        analyst: row.try_get("analyst")?,
        payload: row.try_get("payload")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

fn head_from(row: &PgRow) -> Result<Head, StoreError> {
    let seq: i64 = row.try_get("seq").map_err(unavailable)?;
    let hash: String = row.try_get("hash").map_err(unavailable)?;
    Ok(Head { seq: u64::try_from(seq).map_err(unavailable)?, hash })
}

#[async_trait]
impl Backend for PgBackend {
    type Tx = Transaction<'static, Postgres>;

    async fn begin_append(&self) -> Result<(Self::Tx, Head), StoreError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let row = sqlx::query(LOCK_HEAD).fetch_one(&mut *tx).await.map_err(unavailable)?;
        Ok((tx, head_from(&row)?))
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), StoreError> {
        tx.commit().await.map_err(unavailable)
    }

    async fn rollback(&self, tx: Self::Tx) -> Result<(), StoreError> {
        tx.rollback().await.map_err(unavailable)
    }

    async fn execute_in(&self, tx: &mut Self::Tx, sql: &'static str) -> Result<(), StoreError> {
        sqlx::raw_sql(sql).execute(&mut **tx).await.map_err(unavailable)?;
        Ok(())
    }

    async fn get_in(
        &self,
        tx: &mut Self::Tx,
        id: ApprovalId,
    ) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query(GET)
            .bind(*id.as_uuid())
            .fetch_optional(&mut **tx)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(approval_from).transpose()
    }

    async fn pending_count(&self, tx: &mut Self::Tx, agent: &AgentId) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(PENDING_COUNT)
            .bind(agent.as_str().to_owned())
            .fetch_one(&mut **tx)
            .await
            .map_err(unavailable)?;
        u64::try_from(count).map_err(unavailable)
    }

    async fn insert(&self, tx: &mut Self::Tx, approval: &Approval) -> Result<(), StoreError> {
        let json = serde_json::to_string(approval).map_err(unavailable)?;
        sqlx::query(INSERT)
            .bind(*approval.id.as_uuid())
            .bind(approval.agent().as_str().to_owned())
            .bind(approval.status.as_str())
            .bind(approval.created_at)
            .bind(approval.expires_at)
            .bind(json)
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn update(
        &self,
        tx: &mut Self::Tx,
        approval: &Approval,
        from: ApprovalStatus,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(approval).map_err(unavailable)?;
        let done = sqlx::query(UPDATE)
            .bind(*approval.id.as_uuid())
            .bind(approval.status.as_str())
            .bind(approval.execution.as_ref().map(|e| e.token_id.clone()))
            .bind(json)
            .bind(from.as_str())
            .execute(&mut **tx)
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
        sqlx::query_scalar(ANY_DUE).bind(now).fetch_one(&self.pool).await.map_err(unavailable)
    }

    async fn expire_due(
        &self,
        tx: &mut Self::Tx,
        now: OffsetDateTime,
        closed_at: &str,
    ) -> Result<Vec<Approval>, StoreError> {
        let rows = sqlx::query(EXPIRE)
            .bind(now)
            .bind(closed_at.to_owned())
            .fetch_all(&mut **tx)
            .await
            .map_err(unavailable)?;
        rows.iter().map(approval_from).collect()
    }

    async fn append(&self, tx: &mut Self::Tx, entry: &AuditEntry) -> Result<(), StoreError> {
        let seq = i64::try_from(entry.seq).map_err(unavailable)?;
        let payload = entry.canonical_payload().map_err(unavailable)?;
        sqlx::query(APPEND)
            .bind(seq)
            .bind(entry.kind.as_str())
            .bind(entry.at)
            .bind(*entry.approval_id.as_uuid())
            .bind(entry.agent.as_str().to_owned())
            .bind(entry.analyst.clone())
            .bind(payload)
            .bind(entry.prev_hash.clone())
            .bind(entry.hash.clone())
            .bind(self.channel.clone())
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError> {
        let row = sqlx::query(GET)
            .bind(*id.as_uuid())
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
