//! What the SQL stores share: their options, the store logic written once
//! over a [`Backend`] (one per database), the hub that wakes waiters and
//! subscribers in this process, and [`SqlStore`], which picks a store by
//! URL.
//!
//! # How a change travels
//!
//! Every change goes to the store's one writer, which runs the changes
//! queued at that moment in one write transaction. The transaction first
//! takes the audit chain's head (a row lock in PostgreSQL, `BEGIN
//! IMMEDIATE` in SQLite), so changes are serialized; each change runs in a
//! savepoint of its own and appends exactly one linked audit entry, or
//! nothing if it is refused. One commit makes the group durable, then the
//! writer pokes this process's *pump*; other processes hear of it through
//! their database's notification (PostgreSQL
//! `NOTIFY`). The pump reads the log from the last `seq` it delivered, in
//! order, and hands each entry to subscribers and to the waiters of that
//! approval, who re-read the row. Because the pump reads the table rather
//! than trusting the notification, a lost notification delays an event
//! but never loses it: a slow re-check catches up.
//!
//! INVARIANT: the chain head is taken first in every write transaction,
//! so `seq` is assigned in commit order and has no gaps. A reader that has
//! seen `seq = n` has seen every entry before it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, instrument};

use super::audit::{AuditEntry, AuditLog, AuditReport, AuditStream, ChainVerifier, RawEntry};
use super::{
    ApprovalFilter, ApprovalStore, EventKind, EventStream, NewApproval, StoreError, StoreEvent,
};
use crate::action::AgentId;
use crate::approval::{Approval, ApprovalId, ApprovalStatus, Decision, Execution, Outcome};

/// The longest an approval may wait for a decision: one limit for every
/// store.
const MAX_TTL: Duration = super::MemoryStore::MAX_TTL;

/// Approvals a list returns when the filter sets no limit.
const DEFAULT_LIST_LIMIT: usize = 100;

/// Rows read from the log per query.
const PAGE: usize = 256;

/// Events a live subscriber may fall behind before it re-reads the log.
const EVENT_BUFFER: usize = 1_024;

/// Most writes one transaction takes. Past a few dozen, the writes' own
/// statements cost more than the commit they share, so a larger cap buys
/// nothing. It also bounds how many callers a failed commit refuses, and
/// keeps PostgreSQL's subtransactions (one per kept write) within the 64
/// each session caches; beyond that, every other session's snapshot has to
/// consult `pg_subtrans`.
const MAX_BATCH: usize = 64;

/// Writes that may queue for the writer before callers wait to queue.
const QUEUE: usize = 1_024;

/// Each write of a batch runs in its own savepoint; the same SQL on every
/// database.
const SAVEPOINT: &str = "SAVEPOINT w";
const RELEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT w";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT w";

/// How a SQL store connects and what it allows.
///
/// ```
/// use std::time::Duration;
/// use midosoc_core::store::StoreOptions;
///
/// let options = StoreOptions::default()
///     .with_max_pending_per_agent(20)
///     .with_acquire_timeout(Duration::from_secs(2));
/// # drop(options);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long an operation waits for a connection before it reports the
    /// store unavailable.
    pub acquire_timeout: Duration,
    /// Pending approvals one agent may have; more are refused with
    /// [`StoreError::TooManyPending`].
    pub max_pending_per_agent: usize,
    /// How often the log is re-read for changes a notification may have
    /// missed (a lost connection, another process on the same SQLite
    /// file). Notifications, not this, are the normal path.
    pub recheck_every: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            max_pending_per_agent: 100,
            recheck_every: Duration::from_secs(5),
        }
    }
}

impl StoreOptions {
    /// Sets [`max_connections`](Self::max_connections), at least 2.
    pub fn with_max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(2);
        self
    }

    /// Sets [`acquire_timeout`](Self::acquire_timeout).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets [`max_pending_per_agent`](Self::max_pending_per_agent).
    pub fn with_max_pending_per_agent(mut self, max: usize) -> Self {
        self.max_pending_per_agent = max;
        self
    }

    /// Sets [`recheck_every`](Self::recheck_every), at least 10 ms.
    pub fn with_recheck_every(mut self, every: Duration) -> Self {
        self.recheck_every = every.max(Duration::from_millis(10));
        self
    }
}

/// Why a SQL store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL names no database this crate knows.
    #[error("unsupported store url scheme `{0}`: use sqlite:// or postgres://")]
    UnsupportedScheme(String),
    /// The URL names a database whose feature was not compiled in.
    #[error("{0} stores are not enabled in this build: enable the `{0}` feature")]
    NotEnabled(&'static str),
    /// The URL or its options could not be parsed.
    #[error("invalid store url")]
    InvalidUrl(#[source] sqlx::Error),
    /// The URL names an in-memory SQLite database, which would not be
    /// shared between connections nor survive a restart.
    #[error("an in-memory sqlite database cannot hold approvals: use a file, or the memory store")]
    InMemory,
    /// The database could not be reached.
    #[error("could not connect to the approval database")]
    Connect(#[source] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("could not migrate the approval database")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The database answered, then failed.
    #[error("approval database failed while opening")]
    Store(#[source] StoreError),
}

/// The chain's last link: the `seq` and `hash` of the newest entry.
#[derive(Clone, Debug)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

/// A backend failure, as the trait reports it.
pub(crate) fn unavailable(
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StoreError {
    StoreError::Unavailable(error.into())
}

/// `t` in RFC 3339, as approvals serialize it.
pub(crate) fn rfc3339(t: OffsetDateTime) -> Result<String, StoreError> {
    t.format(&Rfc3339).map_err(unavailable)
}

/// One database's SQL. Write methods take the open transaction that
/// [`begin_append`](Backend::begin_append) started.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// A write transaction holding the chain lock.
    type Tx: Send;

    /// Starts a write transaction, takes the chain lock and reads the head.
    async fn begin_append(&self) -> Result<(Self::Tx, Head), StoreError>;
    /// Commits.
    async fn commit(&self, tx: Self::Tx) -> Result<(), StoreError>;
    /// Rolls back.
    async fn rollback(&self, tx: Self::Tx) -> Result<(), StoreError>;
    /// Runs `sql`, a statement with no parameters and no rows (savepoints),
    /// inside the transaction.
    async fn execute_in(&self, tx: &mut Self::Tx, sql: &'static str) -> Result<(), StoreError>;

    /// One approval, inside the transaction.
    async fn get_in(
        &self,
        tx: &mut Self::Tx,
        id: ApprovalId,
    ) -> Result<Option<Approval>, StoreError>;
    /// How many approvals of `agent` are pending.
    async fn pending_count(&self, tx: &mut Self::Tx, agent: &AgentId) -> Result<u64, StoreError>;
    /// Adds a new approval.
    async fn insert(&self, tx: &mut Self::Tx, approval: &Approval) -> Result<(), StoreError>;
    /// Replaces an approval that still has status `from` and no execution;
    /// false when it did not.
    async fn update(
        &self,
        tx: &mut Self::Tx,
        approval: &Approval,
        from: ApprovalStatus,
    ) -> Result<bool, StoreError>;
    /// Whether any pending approval is due at `now`; read without the
    /// chain lock, so a sweep with nothing to do does not take it.
    async fn any_due(&self, now: OffsetDateTime) -> Result<bool, StoreError>;
    /// Marks every pending approval due at `now` expired, closed at
    /// `closed_at` (RFC 3339), in one statement; returns them as changed.
    async fn expire_due(
        &self,
        tx: &mut Self::Tx,
        now: OffsetDateTime,
        closed_at: &str,
    ) -> Result<Vec<Approval>, StoreError>;
    /// Appends one entry to the log, moves the head to it and, where the
    /// database can, notifies other processes on commit.
    async fn append(&self, tx: &mut Self::Tx, entry: &AuditEntry) -> Result<(), StoreError>;

    /// One approval.
    async fn get(&self, id: ApprovalId) -> Result<Option<Approval>, StoreError>;
    /// Approvals matching `filter`, newest first, at most `limit`.
    async fn list(&self, filter: &ApprovalFilter, limit: i64) -> Result<Vec<Approval>, StoreError>;
    /// Up to `limit` log rows with `seq > after`, in order.
    async fn entries_after(&self, after: i64, limit: i64) -> Result<Vec<RawEntry>, StoreError>;
    /// The chain head.
    async fn head(&self) -> Result<Head, StoreError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes this process's waiters and subscribers, in `seq` order.
pub(crate) struct Hub {
    /// Every delivered event, for subscribers.
    events: broadcast::Sender<StoreEvent>,
    /// One channel per approval someone waits for; its value counts the
    /// events delivered about it.
    waiters: Mutex<HashMap<ApprovalId, watch::Sender<u64>>>,
    /// Waits parked on an undecided approval.
    parked: AtomicUsize,
    /// Set after a commit or a notification: the log has news.
    poke: Notify,
    /// The `seq` of the last entry delivered.
    delivered: AtomicU64,
}

impl Hub {
    fn new(delivered: u64) -> Self {
        Self {
            events: broadcast::channel(EVENT_BUFFER).0,
            waiters: Mutex::new(HashMap::new()),
            parked: AtomicUsize::new(0),
            poke: Notify::new(),
            delivered: AtomicU64::new(delivered),
        }
    }

    /// Tells the pump the log has news.
    pub(crate) fn poke(&self) {
        self.poke.notify_one();
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<ApprovalId, watch::Sender<u64>>> {
        // The map is changed by single inserts and removes, so a panic
        // elsewhere cannot leave it half-updated: recovering is safe.
        self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers interest in `id`; events about it mark the watch changed.
    fn watch(self: &Arc<Self>, id: ApprovalId) -> Watch {
        let rx = self.waiters().entry(id).or_insert_with(|| watch::channel(0).0).subscribe();
        Watch { hub: Arc::clone(self), id, rx: Some(rx) }
    }

    /// Hands one log row to waiters and subscribers.
    fn deliver(&self, row: &RawEntry) {
        // Waiters re-read the row, so they are woken even by an entry that
        // no longer parses.
        if let Ok(id) = row.approval_id.parse::<ApprovalId>()
            && let Some(tx) = self.waiters().get(&id)
        {
            tx.send_modify(|n| *n += 1);
        }
        match row.parse().and_then(|entry| entry.to_event().map_err(|e| e.to_string())) {
            // An error only means nobody subscribes.
            Ok(event) => drop(self.events.send(event)),
            Err(reason) => tracing::warn!(seq = row.seq, %reason, "unreadable audit entry skipped"),
        }
        self.delivered.store(u64::try_from(row.seq).unwrap_or(0), Ordering::Release);
    }
}

/// A waiter's registration; removes the channel when the last one goes.
struct Watch {
    hub: Arc<Hub>,
    id: ApprovalId,
    rx: Option<watch::Receiver<u64>>,
}

impl Watch {
    /// Resolves when an event about the approval was delivered.
    async fn changed(&mut self) -> Result<(), StoreError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(unavailable("approval store closed"));
        };
        let _parked = Parked::new(&self.hub.parked);
        rx.changed().await.map_err(|_| unavailable("approval store closed"))
    }
}

/// Counts one parked waiter for as long as it lives, however the wait
/// ends (woken, failed or dropped).
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut waiters = self.hub.waiters();
        if waiters.get(&self.id).is_some_and(|tx| tx.receiver_count() == 0) {
            waiters.remove(&self.id);
        }
    }
}

/// Delivers new log entries whenever poked, and every `every` in case a
/// poke was lost. Runs until aborted.
async fn pump<B: Backend>(backend: Arc<B>, hub: Arc<Hub>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = hub.poke.notified() => {}
            _ = tick.tick() => {}
        }
        if let Err(error) = catch_up(backend.as_ref(), &hub).await {
            tracing::warn!(%error, "could not read new approval events");
        }
    }
}

/// Delivers every entry after the last one delivered.
async fn catch_up<B: Backend>(backend: &B, hub: &Hub) -> Result<(), StoreError> {
    loop {
        let after = i64::try_from(hub.delivered.load(Ordering::Acquire)).unwrap_or(i64::MAX);
        let rows = backend.entries_after(after, PAGE as i64).await?;
        rows.iter().for_each(|row| hub.deliver(row));
        if rows.len() < PAGE {
            return Ok(());
        }
    }
}

/// What a change does, decided from the approval as it is now.
struct Planned {
    kind: EventKind,
    after: Approval,
    /// Set when the change is recorded but the caller is still refused
    /// (a decision that came too late expires the approval instead).
    refusal: Option<StoreError>,
}

/// A change planned from the approval as its write finds it.
type Plan = Box<dyn FnOnce(&Approval, OffsetDateTime) -> Result<Planned, StoreError> + Send>;

/// One write, as a caller hands it to the [`Writer`].
enum Write {
    /// Records a new approval, within its agent's pending cap.
    Submit(Box<Approval>),
    /// Changes one approval as the plan decides.
    Change(ApprovalId, Plan),
    /// Expires every pending approval due at that instant.
    Expire(OffsetDateTime),
}

/// What a committed write gives back.
enum Written {
    One(Box<Approval>),
    Many(Vec<Approval>),
}

impl Written {
    fn one(self) -> Result<Approval, StoreError> {
        match self {
            Self::One(approval) => Ok(*approval),
            Self::Many(_) => Err(unavailable("the writer answered another kind of write")),
        }
    }

    fn many(self) -> Result<Vec<Approval>, StoreError> {
        match self {
            Self::Many(approvals) => Ok(approvals),
            Self::One(_) => Err(unavailable("the writer answered another kind of write")),
        }
    }
}

/// What a caller hears once its write's batch is over.
type Answer = Result<Written, StoreError>;

/// Where a caller waits for its answer.
type Reply = oneshot::Sender<Answer>;

/// A queued write, the caller's span, and where its answer goes.
struct Job {
    write: Write,
    span: tracing::Span,
    reply: Reply,
}

/// The only writer of a [`Core`]: it commits writes in groups, so a burst
/// pays for one fsync per group rather than one per write.
///
/// Writes queue on a channel. The writer takes every write queued (at most
/// [`MAX_BATCH`]), runs them in arrival order in one transaction, each in a
/// savepoint of its own (unless it is alone), commits once, then answers
/// them all. There is no timer: a lone write commits at once, and writes
/// group only when they queue behind a commit in flight, so batching never
/// adds latency.
///
/// A task rather than leader/follower combining among the callers: a
/// leader would be some caller's future, and a caller cancelled in the
/// middle of a batch would take the others' writes down with it. The task
/// finishes every batch it starts, whoever stops listening.
///
/// A write whose caller has gone before its turn is skipped and never
/// applied; one that already ran commits with its batch even if its caller
/// goes before hearing the answer.
struct Writer<B> {
    backend: Arc<B>,
    hub: Arc<Hub>,
    max_pending_per_agent: usize,
    commits: Arc<AtomicU64>,
}

impl<B: Backend> Writer<B> {
    /// Writes batch after batch until every sender is gone.
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.write_batch(std::mem::take(&mut batch)).await;
        }
    }

    /// Runs `batch` in one transaction and answers every caller in it.
    async fn write_batch(&self, batch: Vec<Job>) {
        let (mut tx, mut head) = match self.backend.begin_append().await {
            Ok(begun) => begun,
            Err(error) => return fail(batch.into_iter().map(|job| job.reply), error),
        };
        let start = head.seq;

        let answered = match self.write_all(&mut tx, &mut head, batch).await {
            Ok(answered) => answered,
            Err((error, replies)) => {
                self.abandon(tx).await;
                return fail(replies, error);
            }
        };

        // Every write kept appended an entry, so a head that has not moved
        // means nothing to make durable: no commit, no fsync.
        if head.seq == start {
            self.abandon(tx).await;
        } else if let Err(error) = self.commit(tx).await {
            return fail(answered.into_iter().map(|(reply, _)| reply), error);
        }
        for (reply, answer) in answered {
            // A caller gone by now misses the answer; its write stands.
            drop(reply.send(answer));
        }
    }

    /// Runs the writes of `batch` in order and returns their answers, to
    /// be sent after the commit. When the transaction itself is lost,
    /// returns why, with every caller still to be told.
    async fn write_all(
        &self,
        tx: &mut B::Tx,
        head: &mut Head,
        batch: Vec<Job>,
    ) -> Result<Vec<(Reply, Answer)>, (StoreError, Vec<Reply>)> {
        // A lone write needs no savepoint: if it is refused, the head has
        // not moved and the whole transaction rolls back.
        let isolate = batch.len() > 1;
        let mut answered = Vec::with_capacity(batch.len());
        let mut jobs = batch.into_iter();
        while let Some(job) = jobs.next() {
            // Its caller has gone, cancelled before the write's turn: the
            // write is skipped, never applied.
            if job.reply.is_closed() {
                continue;
            }
            match self.write_one(tx, head, job.write, isolate).instrument(job.span).await {
                Ok(answer) => answered.push((job.reply, answer)),
                Err(error) => {
                    let done = answered.into_iter().map(|(reply, _)| reply);
                    let rest = jobs.map(|job| job.reply);
                    let replies = done.chain(std::iter::once(job.reply)).chain(rest);
                    return Err((error, replies.collect()));
                }
            }
        }
        Ok(answered)
    }

    /// Runs one write, in a savepoint of its own when it must be
    /// `isolate`d from others, so a write that is refused or fails rolls
    /// back alone and the others still commit. The error means the
    /// transaction itself is lost.
    async fn write_one(
        &self,
        tx: &mut B::Tx,
        head: &mut Head,
        write: Write,
        isolate: bool,
    ) -> Result<Answer, StoreError> {
        if isolate {
            self.backend.execute_in(tx, SAVEPOINT).await?;
        }
        let before = head.clone();

        let answer = match self.apply(tx, head, write).await {
            Ok(answer) => answer,
            Err(refusal) => {
                // INVARIANT: the head goes back with the rows, so the next
                // write takes the same `seq` and the chain has no gap.
                *head = before;
                if isolate {
                    self.backend.execute_in(tx, ROLLBACK_TO_SAVEPOINT).await?;
                }
                Err(refusal)
            }
        };
        if isolate {
            self.backend.execute_in(tx, RELEASE_SAVEPOINT).await?;
        }
        Ok(answer)
    }

    /// Applies one write. An error rolls it back; an answer keeps it, even
    /// one that refuses the caller (a late decision stays recorded as the
    /// expiry it caused).
    async fn apply(
        &self,
        tx: &mut B::Tx,
        head: &mut Head,
        write: Write,
    ) -> Result<Answer, StoreError> {
        match write {
            Write::Submit(approval) => {
                self.submit_in(tx, head, &approval).await?;
                Ok(Ok(Written::One(approval)))
            }
            Write::Change(id, plan) => self.change_in(tx, head, id, plan).await,
            Write::Expire(now) => Ok(Ok(Written::Many(self.expire_in(tx, head, now).await?))),
        }
    }

    async fn submit_in(
        &self,
        tx: &mut B::Tx,
        head: &mut Head,
        approval: &Approval,
    ) -> Result<(), StoreError> {
        // Counted inside the transaction, so submissions earlier in the
        // same batch count too.
        let pending = self.backend.pending_count(tx, approval.agent()).await?;
        if pending >= self.max_pending_per_agent as u64 {
            return Err(StoreError::TooManyPending(approval.agent().clone()));
        }
        self.backend.insert(tx, approval).await?;
        self.append(tx, head, EventKind::Pending, approval).await
    }

    /// Runs `plan` on the approval as this transaction sees it, after
    /// every earlier write of the batch, and records what it decides.
    async fn change_in(
        &self,
        tx: &mut B::Tx,
        head: &mut Head,
        id: ApprovalId,
        plan: Plan,
    ) -> Result<Answer, StoreError> {
        let current = self.backend.get_in(tx, id).await?.ok_or(StoreError::NotFound(id))?;
        let planned = plan(&current, OffsetDateTime::now_utc())?;

        // INVARIANT: the chain lock serializes writers, so the approval is
        // as `get_in` read it; the guarded update only double-checks.
        if !self.backend.update(tx, &planned.after, current.status).await? {
            return Err(unavailable("approval changed while the chain lock was held"));
        }
        self.append(tx, head, planned.kind, &planned.after).await?;
        Ok(planned.refusal.map_or(Ok(Written::One(Box::new(planned.after))), Err))
    }

    async fn expire_in(
        &self,
        tx: &mut B::Tx,
        head: &mut Head,
        now: OffsetDateTime,
    ) -> Result<Vec<Approval>, StoreError> {
        let mut expired = self.backend.expire_due(tx, now, &rfc3339(now)?).await?;
        expired.sort_by_key(|a| (a.created_at, a.id));
        for approval in &expired {
            self.append(tx, head, EventKind::Expired, approval).await?;
        }
        Ok(expired)
    }

    /// Seals an entry for `approval` after `head`, appends it and moves
    /// `head` along.
    async fn append(
        &self,
        tx: &mut B::Tx,
        head: &mut Head,
        kind: EventKind,
        approval: &Approval,
    ) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let entry =
            AuditEntry::seal(head.seq, &head.hash, kind, now, approval).map_err(unavailable)?;
        self.backend.append(tx, &entry).await?;
        *head = Head { seq: entry.seq, hash: entry.hash };
        Ok(())
    }

    /// Commits and wakes this process's pump, once for the whole batch.
    async fn commit(&self, tx: B::Tx) -> Result<(), StoreError> {
        self.backend.commit(tx).await?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.hub.poke();
        Ok(())
    }

    /// Rolls back a transaction with nothing to keep; what the callers
    /// need to hear is already decided, so a failure is only logged.
    async fn abandon(&self, tx: B::Tx) {
        if let Err(error) = self.backend.rollback(tx).await {
            tracing::debug!(%error, "rollback failed; the connection discards the transaction");
        }
    }
}

/// Tells every caller in `replies` that its write was not committed, with
/// the one cause they share.
fn fail(replies: impl IntoIterator<Item = Reply>, error: StoreError) {
    let cause: Arc<dyn std::error::Error + Send + Sync> = match error {
        StoreError::Unavailable(source) => Arc::from(source),
        other => Arc::new(other),
    };
    for reply in replies {
        // A caller that has gone needs no answer.
        drop(reply.send(Err(StoreError::Unavailable(Box::new(Arc::clone(&cause))))));
    }
}

/// The store logic, written once for every SQL database.
pub(crate) struct Core<B: Backend> {
    backend: Arc<B>,
    hub: Arc<Hub>,
    /// Where writes queue for the [`Writer`].
    writes: mpsc::Sender<Job>,
    /// Transactions the writer has committed.
    commits: Arc<AtomicU64>,
    /// Background tasks, stopped when the store goes.
    _tasks: Vec<TaskGuard>,
}

impl<B: Backend> Core<B> {
    /// Starts the writer, and delivers events from where the log is now.
    pub(crate) async fn start(backend: B, options: &StoreOptions) -> Result<Self, StoreError> {
        let backend = Arc::new(backend);
        let head = backend.head().await?;
        let hub = Arc::new(Hub::new(head.seq));

        let every = options.recheck_every.max(Duration::from_millis(10));
        let pump = tokio::spawn(pump(Arc::clone(&backend), Arc::clone(&hub), every));

        let (writes, jobs) = mpsc::channel(QUEUE);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            backend: Arc::clone(&backend),
            hub: Arc::clone(&hub),
            max_pending_per_agent: options.max_pending_per_agent,
            commits: Arc::clone(&commits),
        };
        let writer = tokio::spawn(writer.run(jobs));
        Ok(Self { backend, hub, writes, commits, _tasks: vec![TaskGuard(pump), TaskGuard(writer)] })
    }

    /// The database's SQL.
    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// The hub, for a task that hears of other processes' changes.
    #[cfg(feature = "postgres")]
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Keeps `task` running as long as the store lives.
    #[cfg(feature = "postgres")]
    pub(crate) fn keep(&mut self, task: JoinHandle<()>) {
        self._tasks.push(TaskGuard(task));
    }

    /// How many `wait` calls are parked on an undecided approval.
    pub(crate) fn waiting(&self) -> usize {
        self.hub.parked.load(Ordering::Relaxed)
    }

    /// Transactions committed so far; fewer than writes when writes were
    /// grouped.
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Queues `write` and waits until its batch is over. Dropping the
    /// future before the write's turn withdraws it.
    async fn write(&self, write: Write) -> Answer {
        let (reply, answer) = oneshot::channel();
        let job = Job { write, span: tracing::Span::current(), reply };
        self.writes.send(job).await.map_err(|_| unavailable("approval store closed"))?;
        answer.await.map_err(|_| unavailable("approval store closed"))?
    }

    /// Has the writer run `plan` on the approval and record what it
    /// decides, with its audit entry.
    async fn change<F>(&self, id: ApprovalId, plan: F) -> Result<Approval, StoreError>
    where
        F: FnOnce(&Approval, OffsetDateTime) -> Result<Planned, StoreError> + Send + 'static,
    {
        self.write(Write::Change(id, Box::new(plan))).await?.one()
    }

    /// Checks the chain up to the head as it is when the check starts.
    pub(crate) async fn verify_audit(&self) -> Result<AuditReport, StoreError> {
        let head = self.backend.head().await?;
        let mut verifier = ChainVerifier::new();
        let mut after = i64::MIN;

        'pages: loop {
            let rows = self.backend.entries_after(after, PAGE as i64).await?;
            for row in &rows {
                // Entries past the head were appended during the check.
                if row.seq > i64::try_from(head.seq).unwrap_or(i64::MAX) {
                    break 'pages;
                }
                verifier.push_raw(row);
                after = row.seq;
            }
            if verifier.is_broken() || rows.len() < PAGE {
                break;
            }
        }
        Ok(verifier.finish(Some((head.seq, &head.hash))))
    }

    /// Entries after `after`, read a page at a time.
    pub(crate) fn export_audit(&self, after: Option<u64>) -> AuditStream {
        let backend = Arc::clone(&self.backend);
        let start = after.map_or(i64::MIN, |a| i64::try_from(a).unwrap_or(i64::MAX));
        let pages = futures::stream::unfold(Some(start), move |cursor| {
            let backend = Arc::clone(&backend);
            async move {
                let after = cursor?;
                match backend.entries_after(after, PAGE as i64).await {
                    Ok(rows) if rows.is_empty() => None,
                    Ok(rows) => {
                        let next = rows.last().map(|r| r.seq);
                        let entries = rows.into_iter().map(|row| {
                            row.parse().map_err(|reason| {
                                unavailable(format!(
                                    "audit entry {} is unreadable: {reason}",
                                    row.seq
                                ))
                            })
                        });
                        Some((futures::stream::iter(entries.collect::<Vec<_>>()), next))
                    }
                    Err(error) => Some((futures::stream::iter(vec![Err(error)]), None)),
                }
            }
        });
        pages.flatten().boxed()
    }
}

impl<B: Backend> fmt::Debug for Core<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("waiting", &self.waiting())
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: Backend> ApprovalStore for Core<B> {
    #[instrument(level = "debug", skip_all, fields(agent.id = %new.action.agent))]
    async fn submit(&self, new: NewApproval) -> Result<Approval, StoreError> {
        // SECURITY: an absurd `ttl` would overflow the expiry time.
        let approval = Approval::pending(new.action, new.assessment, new.ttl.min(MAX_TTL));
        // What the caller gets back is what any later read returns: the
        // approval as stored, without the parsed body an action carries
        // for classifiers only.
        let approval = as_stored(&approval)?;
        self.write(Write::Submit(Box::new(approval))).await?.one()
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn get(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        self.backend.get(id).await?.ok_or(StoreError::NotFound(id))
    }

    #[instrument(level = "debug", skip_all)]
    async fn list(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        let limit = filter.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        self.backend.list(filter, i64::try_from(limit).unwrap_or(i64::MAX)).await
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn decide(&self, id: ApprovalId, decision: Decision) -> Result<Approval, StoreError> {
        self.change(id, move |current, now| {
            if !current.status.is_pending() {
                return Err(StoreError::NotPending { id, status: current.status });
            }
            // SECURITY: a decision that arrives after the deadline but
            // before the next sweep is too late; expire the approval
            // instead.
            if current.is_due(now) {
                let after = closed(current, ApprovalStatus::Expired, now);
                let refusal = StoreError::NotPending { id, status: ApprovalStatus::Expired };
                return Ok(Planned { kind: EventKind::Expired, after, refusal: Some(refusal) });
            }
            let mut after = current.clone();
            after.status = match decision.outcome {
                Outcome::Approve => ApprovalStatus::Approved,
                Outcome::Deny => ApprovalStatus::Denied,
            };
            after.decision = Some(decision);
            Ok(Planned { kind: EventKind::Decided, after, refusal: None })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn withdraw(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        self.change(id, move |current, now| {
            if !current.status.is_pending() {
                return Err(StoreError::NotPending { id, status: current.status });
            }
            let after = closed(current, ApprovalStatus::Withdrawn, now);
            Ok(Planned { kind: EventKind::Withdrawn, after, refusal: None })
        })
        .await
    }

    #[instrument(level = "debug", skip_all)]
    async fn expire_due(&self, now: OffsetDateTime) -> Result<Vec<Approval>, StoreError> {
        if !self.backend.any_due(now).await? {
            return Ok(Vec::new());
        }
        self.write(Write::Expire(now)).await?.many()
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn mark_executed(
        &self,
        id: ApprovalId,
        execution: Execution,
    ) -> Result<Approval, StoreError> {
        self.change(id, move |current, _| {
            if current.status != ApprovalStatus::Approved {
                return Err(StoreError::NotExecutable { id, reason: "it is not approved" });
            }
            if current.execution.is_some() {
                return Err(StoreError::NotExecutable { id, reason: "it was already executed" });
            }
            let mut after = current.clone();
            after.execution = Some(execution);
            Ok(Planned { kind: EventKind::Executed, after, refusal: None })
        })
        .await
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn wait(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        // Registered before the first read, so a change committed after
        // that read is never missed. Cancel-safe: dropping the future
        // drops the registration.
        let mut watch = self.hub.watch(id);
        loop {
            let current = self.backend.get(id).await?.ok_or(StoreError::NotFound(id))?;
            if !current.status.is_pending() {
                return Ok(current);
            }
            watch.changed().await?;
        }
    }

    #[instrument(level = "debug", skip_all, fields(after = ?after))]
    async fn subscribe(&self, after: Option<u64>) -> Result<EventStream, StoreError> {
        // Live first, then history: an event committed in between is in
        // both, and the cursor drops the second copy.
        let live = self.hub.events.subscribe();
        let head = self.backend.head().await?;

        // A cursor past the head comes from another database: everything
        // retained is new to that subscriber.
        let cursor = after.filter(|&a| a <= head.seq).unwrap_or(0);
        let feed = Feed {
            backend: Arc::clone(&self.backend),
            live,
            cursor,
            page: VecDeque::new(),
            catching_up: true,
        };
        Ok(futures::stream::unfold(Some(feed), Feed::next).boxed())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.backend.ping().await
    }
}

/// `approval` as it reads back from the database.
fn as_stored(approval: &Approval) -> Result<Approval, StoreError> {
    serde_json::to_value(approval).and_then(serde_json::from_value).map_err(unavailable)
}

/// `current` closed with `status` at `now`.
fn closed(current: &Approval, status: ApprovalStatus, now: OffsetDateTime) -> Approval {
    let mut after = current.clone();
    after.status = status;
    after.closed_at = Some(now);
    after
}

/// One subscriber's position: it reads the log until it is level with the
/// live events, then follows them, and goes back to the log whenever it
/// falls behind or sees a gap.
struct Feed<B> {
    backend: Arc<B>,
    live: broadcast::Receiver<StoreEvent>,
    cursor: u64,
    page: VecDeque<StoreEvent>,
    catching_up: bool,
}

impl<B: Backend> Feed<B> {
    async fn next(this: Option<Self>) -> Option<(Result<StoreEvent, StoreError>, Option<Self>)> {
        let mut feed = this?;
        loop {
            if let Some(event) = feed.page.pop_front() {
                feed.cursor = event.seq;
                return Some((Ok(event), Some(feed)));
            }
            if feed.catching_up {
                if let Err(error) = feed.read_page().await {
                    return Some((Err(error), None));
                }
                continue;
            }
            match feed.live.recv().await {
                Ok(event) if event.seq <= feed.cursor => {}
                Ok(event) if event.seq == feed.cursor + 1 => {
                    feed.cursor = event.seq;
                    return Some((Ok(event), Some(feed)));
                }
                // A gap or an overflow: the log has what was missed.
                Ok(_) | Err(RecvError::Lagged(_)) => feed.catching_up = true,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// Reads the next page of the log; an empty one means the feed is
    /// level and may follow live events.
    async fn read_page(&mut self) -> Result<(), StoreError> {
        let after = i64::try_from(self.cursor).unwrap_or(i64::MAX);
        let rows = self.backend.entries_after(after, PAGE as i64).await?;
        if rows.is_empty() {
            self.catching_up = false;
        }
        for row in rows {
            match row.parse().and_then(|entry| entry.to_event().map_err(|e| e.to_string())) {
                Ok(event) => self.page.push_back(event),
                Err(reason) => {
                    tracing::warn!(seq = row.seq, %reason, "unreadable audit entry skipped");
                    self.cursor = u64::try_from(row.seq).unwrap_or(self.cursor);
                }
            }
        }
        Ok(())
    }
}

/// Implements [`ApprovalStore`] and [`AuditLog`] for a store that wraps a
/// `core: Arc<Core<_>>`.
macro_rules! delegate_to_core {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::ApprovalStore for $store {
            async fn submit(
                &self,
                new: $crate::store::NewApproval,
            ) -> Result<$crate::approval::Approval, $crate::store::StoreError> {
                self.core.submit(new).await
            }
            async fn get(
                &self,
                id: $crate::approval::ApprovalId,
            ) -> Result<$crate::approval::Approval, $crate::store::StoreError> {
                self.core.get(id).await
            }
            async fn list(
                &self,
                filter: &$crate::store::ApprovalFilter,
            ) -> Result<Vec<$crate::approval::Approval>, $crate::store::StoreError> {
                self.core.list(filter).await
            }
            async fn decide(
                &self,
                id: $crate::approval::ApprovalId,
                decision: $crate::approval::Decision,
            ) -> Result<$crate::approval::Approval, $crate::store::StoreError> {
                self.core.decide(id, decision).await
            }
            async fn withdraw(
                &self,
                id: $crate::approval::ApprovalId,
            ) -> Result<$crate::approval::Approval, $crate::store::StoreError> {
                self.core.withdraw(id).await
            }
            async fn expire_due(
                &self,
                now: time::OffsetDateTime,
            ) -> Result<Vec<$crate::approval::Approval>, $crate::store::StoreError> {
                self.core.expire_due(now).await
            }
            async fn mark_executed(
                &self,
                id: $crate::approval::ApprovalId,
                execution: $crate::approval::Execution,
            ) -> Result<$crate::approval::Approval, $crate::store::StoreError> {
                self.core.mark_executed(id, execution).await
            }
            async fn wait(
                &self,
                id: $crate::approval::ApprovalId,
            ) -> Result<$crate::approval::Approval, $crate::store::StoreError> {
                self.core.wait(id).await
            }
            async fn subscribe(
                &self,
                after: Option<u64>,
            ) -> Result<$crate::store::EventStream, $crate::store::StoreError> {
                self.core.subscribe(after).await
            }
            async fn ready(&self) -> Result<(), $crate::store::StoreError> {
                self.core.ready().await
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::AuditLog for $store {
            async fn verify_audit(
                &self,
            ) -> Result<$crate::store::AuditReport, $crate::store::StoreError> {
                self.core.verify_audit().await
            }
            fn export_audit(&self, after: Option<u64>) -> $crate::store::AuditStream {
                self.core.export_audit(after)
            }
        }
    };
}

pub(crate) use delegate_to_core;

#[cfg(feature = "postgres")]
use super::PostgresStore;
#[cfg(feature = "sqlite")]
use super::SqliteStore;

/// A durable store chosen by URL: `sqlite://path/to/file.db` or
/// `postgres://user@host/db`.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use midosoc_core::store::{ApprovalStore, AuditLog, SqlStore, StoreOptions};
///
/// let store = SqlStore::open("sqlite://midosoc.db", StoreOptions::default()).await?;
/// store.ready().await?;
/// assert!(store.verify_audit().await?.is_whole());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SqlStore {
    /// A SQLite file.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    /// A PostgreSQL database shared by several instances.
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
}

impl SqlStore {
    /// Opens the store `url` names, creating and migrating its schema.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self, OpenError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => SqliteStore::open(url, options).await.map(Self::Sqlite),
            #[cfg(not(feature = "sqlite"))]
            "sqlite" => Err(OpenError::NotEnabled("sqlite")),
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                PostgresStore::open(url, options).await.map(Self::Postgres)
            }
            #[cfg(not(feature = "postgres"))]
            "postgres" | "postgresql" => Err(OpenError::NotEnabled("postgres")),
            other => Err(OpenError::UnsupportedScheme(other.to_owned())),
        }
    }

    /// How many `wait` calls are parked on an undecided approval.
    pub fn waiting(&self) -> usize {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => store.waiting(),
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => store.waiting(),
        }
    }

    fn inner(&self) -> &dyn DurableStore {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(store) => store,
            #[cfg(feature = "postgres")]
            Self::Postgres(store) => store,
        }
    }
}

/// Both traits at once, so [`SqlStore`] can hand calls on.
trait DurableStore: ApprovalStore + AuditLog {}

impl<T: ApprovalStore + AuditLog> DurableStore for T {}

#[async_trait]
impl ApprovalStore for SqlStore {
    async fn submit(&self, new: NewApproval) -> Result<Approval, StoreError> {
        self.inner().submit(new).await
    }
    async fn get(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        self.inner().get(id).await
    }
    async fn list(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        self.inner().list(filter).await
    }
    async fn decide(&self, id: ApprovalId, decision: Decision) -> Result<Approval, StoreError> {
        self.inner().decide(id, decision).await
    }
    async fn withdraw(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        self.inner().withdraw(id).await
    }
    async fn expire_due(&self, now: OffsetDateTime) -> Result<Vec<Approval>, StoreError> {
        self.inner().expire_due(now).await
    }
    async fn mark_executed(
        &self,
        id: ApprovalId,
        execution: Execution,
    ) -> Result<Approval, StoreError> {
        self.inner().mark_executed(id, execution).await
    }
    async fn wait(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        self.inner().wait(id).await
    }
    async fn subscribe(&self, after: Option<u64>) -> Result<EventStream, StoreError> {
        self.inner().subscribe(after).await
    }
    async fn ready(&self) -> Result<(), StoreError> {
        self.inner().ready().await
    }
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn verify_audit(&self) -> Result<AuditReport, StoreError> {
        self.inner().verify_audit().await
    }
    fn export_audit(&self, after: Option<u64>) -> AuditStream {
        self.inner().export_audit(after)
    }
}
