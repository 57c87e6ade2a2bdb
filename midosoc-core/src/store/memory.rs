//! An [`ApprovalStore`] in process memory: shared between the tasks of one
//! process, fast, and gone when the process exits.
//!
//! Each approval lives in its own `tokio::sync::watch` channel, so a waiter
//! is woken by exactly the approval it waits for and 50,000 waiters cost
//! 50,000 small channels, not a scan per decision. One `std` mutex guards
//! the indexes; it is held only for short, synchronous updates and never
//! across an `.await`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tracing::instrument;

use super::{
    ApprovalFilter, ApprovalStore, EventKind, EventStream, NewApproval, StoreError, StoreEvent,
};
use crate::action::AgentId;
use crate::approval::{Approval, ApprovalId, ApprovalStatus, Decision, Execution, Outcome};

/// Keeps approvals in memory. Cheap to create; share it behind an `Arc`.
///
/// ```
/// use midosoc_core::store::MemoryStore;
///
/// let store = MemoryStore::new().with_max_pending_per_agent(20).with_history(1_000);
/// # drop(store);
/// ```
///
/// A `ttl` longer than [`MemoryStore::MAX_TTL`] is shortened to it.
// LIMITATION: approvals are kept until the process exits, and nothing
// survives a restart. That is what an in-memory store is for (development,
// tests, a single short-lived gateway); durable deployments use a database
// store.
pub struct MemoryStore {
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
    max_pending_per_agent: usize,
    history_limit: usize,
}

/// Everything behind the store's one lock.
#[derive(Default)]
struct State {
    /// Every approval, in submission order. A slot's watch channel holds
    /// the approval's current state, so a change wakes only its waiters.
    slots: Vec<watch::Sender<Approval>>,
    /// Approval id to slot.
    index: HashMap<ApprovalId, usize>,
    /// Slots by current status, for listing without a scan.
    by_status: HashMap<ApprovalStatus, BTreeSet<usize>>,
    /// Slots of each agent, in submission order.
    by_agent: HashMap<AgentId, Vec<usize>>,
    /// Pending slots by expiry, so a sweep visits only what is due.
    due: BTreeSet<(OffsetDateTime, usize)>,
    /// Pending approvals per agent, for the cap.
    pending_per_agent: HashMap<AgentId, usize>,
    /// The most recent events, oldest first.
    history: VecDeque<StoreEvent>,
    /// The `seq` of the last event recorded; 0 before any.
    last_seq: u64,
}

impl MemoryStore {
    /// Pending approvals one agent may have by default.
    pub const DEFAULT_MAX_PENDING_PER_AGENT: usize = 100;
    /// Events kept for replay by default.
    pub const DEFAULT_HISTORY: usize = 10_000;
    /// Events a live subscriber may fall behind by default.
    pub const DEFAULT_EVENT_BUFFER: usize = 1_024;
    /// Approvals a [`list`](ApprovalStore::list) returns without a limit.
    pub const DEFAULT_LIST_LIMIT: usize = 100;
    /// The longest an approval may wait for a decision.
    pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);

    /// An empty store with the default limits.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            events: broadcast::channel(Self::DEFAULT_EVENT_BUFFER).0,
            max_pending_per_agent: Self::DEFAULT_MAX_PENDING_PER_AGENT,
            history_limit: Self::DEFAULT_HISTORY,
        }
    }

    /// Sets how many pending approvals one agent may have; more are refused
    /// with [`StoreError::TooManyPending`].
    pub fn with_max_pending_per_agent(mut self, max: usize) -> Self {
        self.max_pending_per_agent = max;
        self
    }

    /// Sets how many past events are kept for
    /// [`subscribe`](ApprovalStore::subscribe) to replay.
    pub fn with_history(mut self, events: usize) -> Self {
        self.history_limit = events;
        self
    }

    /// Sets how many events a live subscriber may fall behind before it
    /// receives [`StoreError::Lagged`]. At least 1.
    pub fn with_event_buffer(mut self, events: usize) -> Self {
        self.events = broadcast::channel(events.max(1)).0;
        self
    }

    fn sink(&self) -> Sink<'_> {
        Sink { events: &self.events, history_limit: self.history_limit }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        // A poisoned lock means an update panicked half-way; refusing every
        // later call fails closed rather than trusting broken indexes.
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("in-memory store lock poisoned".into()))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_pending_per_agent", &self.max_pending_per_agent)
            .field("history_limit", &self.history_limit)
            .finish_non_exhaustive()
    }
}

impl State {
    /// The slot of `id`.
    fn slot(&self, id: ApprovalId) -> Result<usize, StoreError> {
        self.index.get(&id).copied().ok_or(StoreError::NotFound(id))
    }

    /// The watch channel of `slot`.
    fn sender(&self, slot: usize) -> Option<&watch::Sender<Approval>> {
        self.slots.get(slot)
    }

    /// A copy of the approval in `slot`.
    fn approval(&self, slot: usize) -> Option<Approval> {
        self.sender(slot).map(|tx| tx.borrow().clone())
    }

    /// Changes the approval in `slot`, keeps the indexes in step, wakes its
    /// waiters and announces the change as a `kind` event.
    fn apply(
        &mut self,
        slot: usize,
        kind: EventKind,
        at: OffsetDateTime,
        change: impl FnOnce(&mut Approval),
        sink: &Sink<'_>,
    ) -> Result<Approval, StoreError> {
        let Some(tx) = self.slots.get(slot) else {
            return Err(StoreError::Unavailable("in-memory store index is inconsistent".into()));
        };
        let before = tx.borrow().status;
        tx.send_modify(change);
        let after = tx.borrow().clone();

        if before != after.status {
            self.by_status.entry(before).or_default().remove(&slot);
            self.by_status.entry(after.status).or_default().insert(slot);
        }
        if before.is_pending() && !after.status.is_pending() {
            self.due.remove(&(after.expires_at, slot));
            self.release_pending(after.agent());
        }

        self.record(kind, after.clone(), at, sink);
        Ok(after)
    }

    /// One fewer pending approval for `agent`.
    fn release_pending(&mut self, agent: &AgentId) {
        if let Some(count) = self.pending_per_agent.get_mut(agent) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.pending_per_agent.remove(agent);
            }
        }
    }

    /// Numbers an event, keeps it for replay and sends it to subscribers.
    fn record(&mut self, kind: EventKind, approval: Approval, at: OffsetDateTime, sink: &Sink<'_>) {
        self.last_seq += 1;
        let event = StoreEvent { seq: self.last_seq, kind, approval, at };

        if sink.history_limit > 0 {
            while self.history.len() >= sink.history_limit {
                self.history.pop_front();
            }
            self.history.push_back(event.clone());
        }

        // INVARIANT: sending under the lock makes the broadcast order the
        // `seq` order. An error only means nobody is listening.
        let _ = sink.events.send(event);
    }

    /// Expires the pending approval in `slot` at `now`.
    fn expire(
        &mut self,
        slot: usize,
        now: OffsetDateTime,
        sink: &Sink<'_>,
    ) -> Result<Approval, StoreError> {
        self.apply(
            slot,
            EventKind::Expired,
            now,
            |a| {
                a.status = ApprovalStatus::Expired;
                a.closed_at = Some(now);
            },
            sink,
        )
    }

    /// How many tasks are waiting on any approval.
    #[cfg(test)]
    fn waiters(&self) -> usize {
        self.slots.iter().map(watch::Sender::receiver_count).sum()
    }

    /// Up to `limit` approvals from `slots` (newest last) that pass `keep`,
    /// newest first.
    fn collect(
        &self,
        slots: impl DoubleEndedIterator<Item = usize>,
        keep: impl Fn(&Approval) -> bool,
        limit: usize,
    ) -> Vec<Approval> {
        slots
            .rev()
            .filter_map(|slot| self.sender(slot))
            .filter_map(|tx| {
                let approval = tx.borrow();
                keep(&approval).then(|| approval.clone())
            })
            .take(limit)
            .collect()
    }
}

/// Where [`State::record`] puts events.
struct Sink<'a> {
    events: &'a broadcast::Sender<StoreEvent>,
    history_limit: usize,
}

#[async_trait]
impl ApprovalStore for MemoryStore {
    #[instrument(level = "debug", skip_all, fields(agent.id = %new.action.agent))]
    async fn submit(&self, new: NewApproval) -> Result<Approval, StoreError> {
        // SECURITY: an absurd `ttl` would overflow the expiry time.
        let ttl = new.ttl.min(Self::MAX_TTL);
        let approval = Approval::pending(new.action, new.assessment, ttl);
        let agent = approval.agent().clone();

        let mut state = self.lock()?;
        let pending = state.pending_per_agent.get(&agent).copied().unwrap_or(0);
        if pending >= self.max_pending_per_agent {
            return Err(StoreError::TooManyPending(agent));
        }

        let slot = state.slots.len();
        state.slots.push(watch::Sender::new(approval.clone()));
        state.index.insert(approval.id, slot);
        state.by_status.entry(ApprovalStatus::Pending).or_default().insert(slot);
        state.by_agent.entry(agent.clone()).or_default().push(slot);
        state.due.insert((approval.expires_at, slot));
        *state.pending_per_agent.entry(agent).or_default() += 1;

        state.record(EventKind::Pending, approval.clone(), approval.created_at, &self.sink());
        Ok(approval)
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn get(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        let state = self.lock()?;
        let slot = state.slot(id)?;
        state.approval(slot).ok_or(StoreError::NotFound(id))
    }

    #[instrument(level = "debug", skip_all)]
    async fn list(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
        let limit = filter.limit.unwrap_or(Self::DEFAULT_LIST_LIMIT);
        let status_ok = |a: &Approval| filter.status.is_none_or(|s| a.status == s);
        let state = self.lock()?;

        // Walk the smallest index that answers the filter.
        let found = match (&filter.agent, filter.status) {
            (Some(agent), _) => {
                let slots = state.by_agent.get(agent).map(Vec::as_slice).unwrap_or_default();
                state.collect(slots.iter().copied(), status_ok, limit)
            }
            (None, Some(status)) => match state.by_status.get(&status) {
                Some(slots) => state.collect(slots.iter().copied(), |_| true, limit),
                None => Vec::new(),
            },
            (None, None) => state.collect(0..state.slots.len(), |_| true, limit),
        };
        Ok(found)
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn decide(&self, id: ApprovalId, decision: Decision) -> Result<Approval, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut state = self.lock()?;
        let slot = state.slot(id)?;
        let current = state.approval(slot).ok_or(StoreError::NotFound(id))?;

        if !current.status.is_pending() {
            return Err(StoreError::NotPending { id, status: current.status });
        }
        // SECURITY: a decision that arrives after the deadline but before
        // the next sweep is too late; expire the approval instead.
        if current.is_due(now) {
            state.expire(slot, now, &self.sink())?;
            return Err(StoreError::NotPending { id, status: ApprovalStatus::Expired });
        }

        let status = match decision.outcome {
            Outcome::Approve => ApprovalStatus::Approved,
            Outcome::Deny => ApprovalStatus::Denied,
        };
        let change = |a: &mut Approval| {
            a.status = status;
            a.decision = Some(decision);
        };
        state.apply(slot, EventKind::Decided, now, change, &self.sink())
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn withdraw(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut state = self.lock()?;
        let slot = state.slot(id)?;
        let current = state.approval(slot).ok_or(StoreError::NotFound(id))?;

        if !current.status.is_pending() {
            return Err(StoreError::NotPending { id, status: current.status });
        }

        let change = |a: &mut Approval| {
            a.status = ApprovalStatus::Withdrawn;
            a.closed_at = Some(now);
        };
        state.apply(slot, EventKind::Withdrawn, now, change, &self.sink())
    }

    #[instrument(level = "debug", skip_all)]
    async fn expire_due(&self, now: OffsetDateTime) -> Result<Vec<Approval>, StoreError> {
        let mut state = self.lock()?;
        let due: Vec<usize> =
            state.due.range(..=(now, usize::MAX)).map(|&(_, slot)| slot).collect();

        let sink = self.sink();
        due.into_iter().map(|slot| state.expire(slot, now, &sink)).collect()
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn mark_executed(
        &self,
        id: ApprovalId,
        execution: Execution,
    ) -> Result<Approval, StoreError> {
        let mut state = self.lock()?;
        let slot = state.slot(id)?;
        let current = state.approval(slot).ok_or(StoreError::NotFound(id))?;

        if current.status != ApprovalStatus::Approved {
            return Err(StoreError::NotExecutable { id, reason: "it is not approved" });
        }
        if current.execution.is_some() {
            return Err(StoreError::NotExecutable { id, reason: "it was already executed" });
        }

        let at = execution.executed_at;
        let change = |a: &mut Approval| a.execution = Some(execution);
        state.apply(slot, EventKind::Executed, at, change, &self.sink())
    }

    #[instrument(level = "debug", skip_all, fields(approval.id = %id))]
    async fn wait(&self, id: ApprovalId) -> Result<Approval, StoreError> {
        let mut rx = {
            let state = self.lock()?;
            let slot = state.slot(id)?;
            let Some(tx) = state.sender(slot) else {
                return Err(StoreError::NotFound(id));
            };
            let current = tx.borrow();
            if !current.status.is_pending() {
                return Ok(current.clone());
            }
            drop(current);
            tx.subscribe()
        };

        // Cancel-safe: dropping this future drops only the receiver.
        let decided = rx.wait_for(|a| !a.status.is_pending()).await.map(|a| a.clone());
        decided.map_err(|_| StoreError::NotFound(id))
    }

    #[instrument(level = "debug", skip_all, fields(after = ?after))]
    async fn subscribe(&self, after: Option<u64>) -> Result<EventStream, StoreError> {
        // Subscribing and copying the history under one lock means the
        // copy ends exactly where the live events begin.
        let (replay, live, head, missed) = {
            let state = self.lock()?;
            let live = self.events.subscribe();
            let head = state.last_seq;

            // A cursor past the head comes from an earlier run of this
            // store: everything retained is new to that subscriber.
            let after = after.filter(|&a| a <= head);
            let oldest = state.history.front().map_or(head + 1, |e| e.seq);
            let missed = after.map_or(0, |a| oldest.saturating_sub(a + 1));

            let start = after.map_or(0, |a| state.history.partition_point(|e| e.seq <= a));
            let replay: Vec<StoreEvent> = state.history.range(start..).cloned().collect();
            (replay, live, head, missed)
        };

        if missed > 0 {
            return Ok(futures::stream::iter([Err(StoreError::Lagged(missed))]).boxed());
        }

        let live = futures::stream::unfold(Some((live, head)), |cursor| async move {
            let (mut rx, mut last) = cursor?;
            loop {
                match rx.recv().await {
                    Ok(event) if event.seq <= last => continue,
                    Ok(event) => {
                        last = event.seq;
                        return Some((Ok(event), Some((rx, last))));
                    }
                    // The missed events are gone: report once, then end.
                    Err(RecvError::Lagged(n)) => return Some((Err(StoreError::Lagged(n)), None)),
                    Err(RecvError::Closed) => return None,
                }
            }
        });
        Ok(futures::stream::iter(replay.into_iter().map(Ok)).chain(live).boxed())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        self.lock().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;

    use super::*;
    use crate::approval::Analyst;
    use crate::store::conformance::{self, new_approval};

    crate::conformance_tests!(
        MemoryStore::new().with_max_pending_per_agent(conformance::PENDING_CAP)
    );

    const HOUR: Duration = Duration::from_secs(3600);

    fn approve() -> Decision {
        Decision::new(Outcome::Approve, Analyst::new("a-1", "Ada"), None)
    }

    #[tokio::test]
    async fn a_late_decision_expires_the_approval_instead() {
        let store = MemoryStore::new();
        let approval =
            store.submit(new_approval(&AgentId::new("late"), Duration::ZERO)).await.unwrap();

        let err = store.decide(approval.id, approve()).await.unwrap_err();

        assert!(matches!(err, StoreError::NotPending { status: ApprovalStatus::Expired, .. }));
        assert_eq!(store.get(approval.id).await.unwrap().status, ApprovalStatus::Expired);
        assert!(store.expire_due(OffsetDateTime::now_utc()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn fifty_thousand_waiters_are_each_woken_by_their_own_decision() {
        let store = Arc::new(MemoryStore::new().with_history(16));
        let mut ids = Vec::new();
        for i in 0..50_000 {
            let agent = AgentId::new(format!("agent-{}", i % 1_000));
            ids.push(store.submit(new_approval(&agent, HOUR)).await.unwrap().id);
        }
        let waiters: Vec<_> = ids
            .iter()
            .map(|&id| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.wait(id).await })
            })
            .collect();
        while store.lock().unwrap().waiters() < ids.len() {
            tokio::task::yield_now().await;
        }

        let started = std::time::Instant::now();
        for &id in &ids {
            store.decide(id, approve()).await.unwrap();
        }
        let deciding = started.elapsed();

        for waiter in waiters {
            assert_eq!(waiter.await.unwrap().unwrap().status, ApprovalStatus::Approved);
        }
        // A scan per decision would take minutes; a lookup takes well
        // under a second even in a debug build.
        assert!(deciding < Duration::from_secs(10), "50,000 decisions took {deciding:?}");
    }

    #[tokio::test]
    async fn live_and_replayed_events_meet_without_gap_or_duplicate() {
        let store = Arc::new(MemoryStore::new());
        let agents: Vec<AgentId> = (0..4).map(|i| AgentId::new(format!("burst-{i}"))).collect();

        let writer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for round in 0..50 {
                    for agent in &agents {
                        let approval = store.submit(new_approval(agent, HOUR)).await.unwrap();
                        if round % 2 == 0 {
                            store.withdraw(approval.id).await.unwrap();
                        }
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        tokio::task::yield_now().await;
        let events = store.subscribe(None).await.unwrap();
        writer.await.unwrap();

        let total = store.lock().unwrap().last_seq;
        let seqs: Vec<u64> = events.take(total as usize).map(|e| e.unwrap().seq).collect().await;
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged_and_the_stream_ends() {
        let store = MemoryStore::new().with_event_buffer(4);
        let mut events = store.subscribe(None).await.unwrap();

        for i in 0..10 {
            store.submit(new_approval(&AgentId::new(format!("noisy-{i}")), HOUR)).await.unwrap();
        }

        assert!(matches!(events.next().await, Some(Err(StoreError::Lagged(6)))));
        assert!(events.next().await.is_none());
    }

    #[tokio::test]
    async fn a_cursor_older_than_the_history_is_reported_as_lagged() {
        let store = MemoryStore::new().with_history(3);
        for i in 0..5 {
            store.submit(new_approval(&AgentId::new(format!("old-{i}")), HOUR)).await.unwrap();
        }

        let mut events = store.subscribe(Some(1)).await.unwrap();
        assert!(matches!(events.next().await, Some(Err(StoreError::Lagged(1)))));
        assert!(events.next().await.is_none());

        let replayed: Vec<u64> =
            store.subscribe(Some(2)).await.unwrap().take(3).map(|e| e.unwrap().seq).collect().await;
        assert_eq!(replayed, vec![3, 4, 5]);
    }

    #[tokio::test]
    async fn a_cursor_from_an_earlier_run_replays_everything_retained() {
        let store = MemoryStore::new();
        store.submit(new_approval(&AgentId::new("fresh"), HOUR)).await.unwrap();

        let mut events = store.subscribe(Some(9_999)).await.unwrap();

        assert_eq!(events.next().await.unwrap().unwrap().seq, 1);
    }

    #[tokio::test]
    async fn an_absurd_ttl_is_capped_instead_of_overflowing() {
        let store = MemoryStore::new();

        let approval =
            store.submit(new_approval(&AgentId::new("patient"), Duration::MAX)).await.unwrap();

        assert_eq!(approval.expires_at - approval.created_at, MemoryStore::MAX_TTL);
    }

    #[tokio::test]
    async fn debug_output_does_not_dump_approvals() {
        let store = MemoryStore::new();
        store.submit(new_approval(&AgentId::new("quiet"), HOUR)).await.unwrap();

        let shown = format!("{store:?}");

        assert!(!shown.contains("quiet"), "{shown}");
    }
}
