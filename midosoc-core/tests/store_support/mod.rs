//! Shared pieces of the durable store tests: temporary SQLite files,
//! throw-away PostgreSQL schemas, a TCP proxy that can play a database
//! outage, and the small helpers every test uses.

#![allow(dead_code, reason = "each test crate uses a different part of this module")]

pub(crate) mod batching;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use midosoc_core::action::Action;
use midosoc_core::approval::{Analyst, Approval, ApprovalId, Decision, Execution, Outcome};
use midosoc_core::store::{
    ApprovalFilter, ApprovalStore, AuditLog, AuditReport, AuditStream, EventStream, NewApproval,
    PostgresStore, SqliteStore, StoreError, StoreOptions,
};
use midosoc_core::{AgentId, Assessment, Risk, Verdict};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Long enough that nothing expires during a test.
pub(crate) const HOUR: Duration = Duration::from_secs(3600);

/// How long a test waits for something that should already have happened.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A held `DELETE` by `agent`.
pub(crate) fn held(agent: &str, ttl: Duration) -> NewApproval {
    let action =
        Action::builder(AgentId::new(agent), "DELETE", "https://api.example.com/repos/acme")
            .body(r#"{"confirm":true}"#)
            .build();
    let assessment =
        Assessment::new("test", Verdict::Hold, Risk::High, 0.9, "deletes a repository");
    NewApproval { action, assessment, ttl }
}

/// A decision by Ada.
pub(crate) fn by_ada(outcome: Outcome) -> Decision {
    Decision::new(outcome, Analyst::new("ada", "Ada Lovelace"), Some("checked".to_owned()))
}

/// An execution with token id `jti`.
pub(crate) fn executed(jti: &str) -> Execution {
    Execution { token_id: jti.to_owned(), executed_at: OffsetDateTime::now_utc() }
}

/// Options small enough for tests, with the conformance suite's cap.
pub(crate) fn test_options() -> StoreOptions {
    StoreOptions::default()
        .with_max_connections(4)
        .with_max_pending_per_agent(midosoc_core::store::conformance::PENDING_CAP)
}

/// The 50th and 99th percentiles of `samples`, in microseconds.
pub(crate) fn percentiles(mut samples: Vec<Duration>) -> (u128, u128) {
    samples.sort();
    let at = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)].as_micros();
    (at(50), at(99))
}

/// Waits until `waiting()` reports `n` parked waiters.
pub(crate) async fn until_parked(waiting: impl Fn() -> usize, n: usize) {
    tokio::time::timeout(PATIENCE, async {
        while waiting() < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("waiter never parked");
}

/// A SQLite store in a temporary directory that goes with it.
pub(crate) struct TempSqlite {
    pub(crate) store: SqliteStore,
    pub(crate) url: String,
    pub(crate) path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TempSqlite {
    pub(crate) async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("midosoc.db");
        let url = format!("sqlite://{}", path.display());
        let store = SqliteStore::open(&url, test_options()).await.expect("open sqlite store");
        Self { store, url, path, _dir: dir }
    }
}

/// Where the test PostgreSQL is, or `None` (after saying so) when this run
/// has none. A run that requires its peers fails instead.
pub(crate) fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("MIDOSOC_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("MIDOSOC_REQUIRE_PEERS").as_deref() == Ok("1") => {
            panic!("{test}: MIDOSOC_TEST_POSTGRES_URL not set and MIDOSOC_REQUIRE_PEERS=1")
        }
        _ => {
            eprintln!("SKIPPED {test}: MIDOSOC_TEST_POSTGRES_URL not set");
            None
        }
    }
}

/// A fresh schema of the test database, dropped with everything in it
/// when this value goes.
pub(crate) struct PgSchema {
    url: String,
    pub(crate) name: String,
}

impl PgSchema {
    /// A new schema, or `None` when there is no test database.
    pub(crate) async fn create(test: &str) -> Option<Self> {
        let url = postgres_url(test)?;
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&url).await.expect("connect to test postgres");
        let sql = format!("CREATE SCHEMA {name}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("create schema");
        conn.close().await.expect("close");
        Some(Self { url, name })
    }

    /// Connect options whose `search_path` is this schema.
    pub(crate) fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&self.url)
            .expect("test url")
            .options([("search_path", &self.name)])
    }

    /// A store on this schema.
    pub(crate) async fn open(&self, options: StoreOptions) -> PostgresStore {
        PostgresStore::open_with(self.connect_options(), options)
            .await
            .expect("open postgres store")
    }

    /// Runs `sql` in this schema, as an administrator would.
    pub(crate) async fn execute(&self, sql: &str) {
        let mut conn =
            PgConnection::connect_with(&self.connect_options()).await.expect("connect to schema");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect(sql);
        conn.close().await.expect("close");
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // The test's runtime may be shutting down; a thread of its own
        // drops the schema whatever state the test ended in.
        let (url, name) = (self.url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                // A lock left by a broken test must not hang the run.
                let sql = format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
                conn.close().await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        if let Ok(Err(error)) = dropped.join() {
            eprintln!("could not drop test schema {}: {error}", self.name);
        }
    }
}

/// A PostgreSQL store with the schema it lives in, for the conformance
/// suite, which takes a store by value.
pub(crate) struct TestPostgres {
    pub(crate) store: PostgresStore,
    _schema: PgSchema,
}

impl TestPostgres {
    /// A store on a fresh schema, or `None` when there is no database.
    pub(crate) async fn new(test: &str) -> Option<Self> {
        let schema = PgSchema::create(test).await?;
        let store = schema.open(test_options()).await;
        Some(Self { store, _schema: schema })
    }
}

/// Implements both store traits for a wrapper with a `store` field.
macro_rules! delegate {
    ($wrapper:ty) => {
        #[async_trait]
        impl ApprovalStore for $wrapper {
            async fn submit(&self, new: NewApproval) -> Result<Approval, StoreError> {
                self.store.submit(new).await
            }
            async fn get(&self, id: ApprovalId) -> Result<Approval, StoreError> {
                self.store.get(id).await
            }
            async fn list(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
                self.store.list(filter).await
            }
            async fn decide(&self, id: ApprovalId, d: Decision) -> Result<Approval, StoreError> {
                self.store.decide(id, d).await
            }
            async fn withdraw(&self, id: ApprovalId) -> Result<Approval, StoreError> {
                self.store.withdraw(id).await
            }
            async fn expire_due(&self, now: OffsetDateTime) -> Result<Vec<Approval>, StoreError> {
                self.store.expire_due(now).await
            }
            async fn mark_executed(
                &self,
                id: ApprovalId,
                execution: Execution,
            ) -> Result<Approval, StoreError> {
                self.store.mark_executed(id, execution).await
            }
            async fn wait(&self, id: ApprovalId) -> Result<Approval, StoreError> {
                self.store.wait(id).await
            }
            async fn subscribe(&self, after: Option<u64>) -> Result<EventStream, StoreError> {
                self.store.subscribe(after).await
            }
            async fn ready(&self) -> Result<(), StoreError> {
                self.store.ready().await
            }
        }

        #[async_trait]
        impl AuditLog for $wrapper {
            async fn verify_audit(&self) -> Result<AuditReport, StoreError> {
                self.store.verify_audit().await
            }
            fn export_audit(&self, after: Option<u64>) -> AuditStream {
                self.store.export_audit(after)
            }
        }
    };
}

delegate!(TempSqlite);
delegate!(TestPostgres);

/// A TCP proxy in front of a database that can go down (its port closed,
/// its connections cut) and come back on the same port.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    target: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// A proxy to `target`, up.
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Self {
            addr,
            target,
            accept: Mutex::new(None),
            connections: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (target, connections) = (self.target, Arc::clone(&self.connections));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(relay);
            }
        });
        *self.accept.lock().unwrap() = Some(accept);
    }

    /// Closes the port and cuts every open connection.
    pub(crate) fn down(&self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    /// Opens the port again.
    pub(crate) async fn up(&self) {
        // The aborted accept task drops its listener when it is next
        // polled; retry until the port is free again.
        let listener = tokio::time::timeout(PATIENCE, async {
            loop {
                match TcpListener::bind(self.addr).await {
                    Ok(listener) => return listener,
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        })
        .await
        .expect("proxy port never freed");
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}

/// The address a `postgres://` URL points at.
pub(crate) fn postgres_addr(url: &str) -> SocketAddr {
    let options = PgConnectOptions::from_str(url).expect("test url");
    let host = match options.get_host() {
        "localhost" => "127.0.0.1",
        host => host,
    };
    format!("{host}:{}", options.get_port()).parse().expect("test database is at an ip address")
}
