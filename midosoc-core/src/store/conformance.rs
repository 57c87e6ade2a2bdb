//! The behaviour every [`ApprovalStore`] must show, written once and run
//! against each store.
//!
//! Each public `async fn` checks one behaviour on a fresh store. The
//! [`conformance_tests!`](crate::conformance_tests) macro turns them into
//! one `#[tokio::test]` each, so a new store needs one line:
//!
//! ```text
//! mod conformance {
//!     use midosoc_core::store::{conformance::PENDING_CAP, MemoryStore};
//!
//!     midosoc_core::conformance_tests!(
//!         MemoryStore::new().with_max_pending_per_agent(PENDING_CAP)
//!     );
//! }
//! ```
//!
//! The expression is evaluated inside each async test, so it may `.await`
//! (connect to a database, run migrations). It must give a store that
//! allows [`PENDING_CAP`] pending approvals per agent.
//!
//! The checks tolerate a shared backend: each uses its own agents, filters
//! lists and events by them, and never expires approvals but its own, so
//! tests against one PostgreSQL database may run in parallel.
//!
//! Available under `cfg(test)` and with the `conformance` feature.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;

use super::{ApprovalFilter, ApprovalStore, EventKind, EventStream, NewApproval, StoreError};
use crate::action::{Action, AgentId};
use crate::approval::{Analyst, ApprovalId, ApprovalStatus, Decision, Execution, Outcome};
use crate::classify::{Assessment, Risk, Verdict};

/// Pending approvals per agent the store under test must allow.
pub const PENDING_CAP: usize = 3;

/// Long enough that nothing expires during a test.
const HOUR: Duration = Duration::from_secs(3600);

/// How long a check waits for something that should already have
/// happened before it calls the store broken.
const PATIENCE: Duration = Duration::from_secs(5);

/// An agent name no other test uses.
pub fn unique_agent(label: &str) -> AgentId {
    AgentId::new(format!("{label}-{}", uuid::Uuid::now_v7()))
}

/// A held `DELETE` for `agent` that may wait `ttl`.
pub fn new_approval(agent: &AgentId, ttl: Duration) -> NewApproval {
    let action =
        Action::builder(agent.clone(), "DELETE", "https://api.example.com/repos/acme/site")
            .body(r#"{"confirm":true}"#)
            .build();
    let assessment =
        Assessment::new("conformance", Verdict::Hold, Risk::High, 0.9, "deletes a repository");
    NewApproval { action, assessment, ttl }
}

fn decision(outcome: Outcome) -> Decision {
    Decision::new(outcome, Analyst::new("analyst-1", "Ada Lovelace"), None)
}

fn execution(token_id: &str) -> Execution {
    Execution { token_id: token_id.to_owned(), executed_at: OffsetDateTime::now_utc() }
}

fn by_agent(agent: &AgentId) -> ApprovalFilter {
    ApprovalFilter { agent: Some(agent.clone()), ..ApprovalFilter::default() }
}

/// The next event about `id`, skipping other approvals' events.
async fn next_event_for(events: &mut EventStream, id: ApprovalId) -> super::StoreEvent {
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            match events.next().await {
                Some(Ok(event)) if event.approval.id == id => return event,
                Some(Ok(_)) => continue,
                Some(Err(error)) => panic!("event stream failed: {error}"),
                None => panic!("event stream ended early"),
            }
        }
    });
    found.await.expect("no event for the approval arrived")
}

/// A submitted approval is pending and can be read back unchanged.
pub async fn submitted_approval_can_be_read_back<S: ApprovalStore>(store: S) {
    let agent = unique_agent("submit");

    let submitted = store.submit(new_approval(&agent, HOUR)).await.expect("submit");
    let read = store.get(submitted.id).await.expect("get");

    assert_eq!(read, submitted);
    assert_eq!(read.status, ApprovalStatus::Pending);
    assert_eq!(read.agent(), &agent);
    assert!(read.expires_at > read.created_at);
    assert!(read.decision.is_none() && read.execution.is_none() && read.closed_at.is_none());
}

/// A waiter already waiting is woken by the decision and sees it.
pub async fn waiter_is_woken_by_a_decision<S: ApprovalStore>(store: S) {
    let approval = store.submit(new_approval(&unique_agent("wait"), HOUR)).await.expect("submit");

    let mut waiting = Box::pin(store.wait(approval.id));
    assert!(futures::poll!(&mut waiting).is_pending(), "wait returned while pending");
    store.decide(approval.id, decision(Outcome::Deny)).await.expect("decide");
    let woken = tokio::time::timeout(PATIENCE, waiting).await.expect("waiter not woken");

    let woken = woken.expect("wait");
    assert_eq!(woken.status, ApprovalStatus::Denied);
    assert_eq!(woken.decision.map(|d| d.outcome), Some(Outcome::Deny));
}

/// Approving and denying set the status and keep who decided.
pub async fn decisions_are_recorded_with_their_analyst<S: ApprovalStore>(store: S) {
    let agent = unique_agent("decide");
    let yes = store.submit(new_approval(&agent, HOUR)).await.expect("submit");
    let no = store.submit(new_approval(&agent, HOUR)).await.expect("submit");

    let approved = store.decide(yes.id, decision(Outcome::Approve)).await.expect("approve");
    let denied = store.decide(no.id, decision(Outcome::Deny)).await.expect("deny");

    assert_eq!(approved.status, ApprovalStatus::Approved);
    assert_eq!(denied.status, ApprovalStatus::Denied);
    let recorded = store.get(yes.id).await.expect("get").decision.expect("decision kept");
    assert_eq!(recorded.analyst, Analyst::new("analyst-1", "Ada Lovelace"));
    assert_eq!(store.wait(no.id).await.expect("wait").status, ApprovalStatus::Denied);
}

/// A second decision is refused and does not change the first.
pub async fn deciding_twice_is_refused<S: ApprovalStore>(store: S) {
    let approval = store.submit(new_approval(&unique_agent("twice"), HOUR)).await.expect("submit");
    store.decide(approval.id, decision(Outcome::Deny)).await.expect("first decision");

    let second = store.decide(approval.id, decision(Outcome::Approve)).await;

    assert!(
        matches!(second, Err(StoreError::NotPending { status: ApprovalStatus::Denied, .. })),
        "second decision gave {second:?}"
    );
    assert_eq!(store.get(approval.id).await.expect("get").status, ApprovalStatus::Denied);
}

/// A withdrawn approval wakes its waiter and can no longer be approved.
pub async fn withdrawn_approval_cannot_be_approved<S: ApprovalStore>(store: S) {
    let approval = store.submit(new_approval(&unique_agent("gone"), HOUR)).await.expect("submit");

    let withdrawn = store.withdraw(approval.id).await.expect("withdraw");
    let approve = store.decide(approval.id, decision(Outcome::Approve)).await;
    let again = store.withdraw(approval.id).await;

    assert_eq!(withdrawn.status, ApprovalStatus::Withdrawn);
    assert!(withdrawn.closed_at.is_some());
    assert!(matches!(
        approve,
        Err(StoreError::NotPending { status: ApprovalStatus::Withdrawn, .. })
    ));
    assert!(matches!(again, Err(StoreError::NotPending { .. })));
    assert_eq!(store.wait(approval.id).await.expect("wait").status, ApprovalStatus::Withdrawn);
}

/// Expiry takes only approvals that are due, and wakes their waiters.
pub async fn expiry_wakes_waiters_with_expired<S: ApprovalStore>(store: S) {
    let agent = unique_agent("expire");
    let due = store.submit(new_approval(&agent, Duration::ZERO)).await.expect("submit");
    let later = store.submit(new_approval(&agent, HOUR)).await.expect("submit");

    let mut waiting = Box::pin(store.wait(due.id));
    assert!(futures::poll!(&mut waiting).is_pending(), "wait returned while pending");
    let expired = store.expire_due(OffsetDateTime::now_utc()).await.expect("expire");
    let woken = tokio::time::timeout(PATIENCE, waiting).await.expect("waiter not woken");

    assert!(expired.iter().any(|a| a.id == due.id && a.status == ApprovalStatus::Expired));
    assert!(expired.iter().all(|a| a.id != later.id), "expired an approval not yet due");
    assert_eq!(woken.expect("wait").status, ApprovalStatus::Expired);
    assert_eq!(store.get(later.id).await.expect("get").status, ApprovalStatus::Pending);
    let again = store.expire_due(OffsetDateTime::now_utc()).await.expect("expire");
    assert!(again.iter().all(|a| a.id != due.id), "expired the same approval twice");
}

/// After a wait times out (the agent got `202 Accepted`), the approval is
/// still pending; once approved it executes exactly once.
pub async fn approval_outlives_a_timed_out_wait_and_executes_once<S: ApprovalStore>(store: S) {
    let approval = store.submit(new_approval(&unique_agent("resume"), HOUR)).await.expect("submit");

    let timed_out = tokio::time::timeout(Duration::from_millis(20), store.wait(approval.id)).await;
    assert!(timed_out.is_err(), "wait returned while pending");
    assert_eq!(store.get(approval.id).await.expect("get").status, ApprovalStatus::Pending);

    store.decide(approval.id, decision(Outcome::Approve)).await.expect("decide");
    let resumed = store.get(approval.id).await.expect("get");
    assert_eq!(resumed.status, ApprovalStatus::Approved);

    let executed = store.mark_executed(approval.id, execution("jti-1")).await.expect("execute");
    assert_eq!(executed.execution.map(|e| e.token_id), Some("jti-1".to_owned()));
    let second = store.mark_executed(approval.id, execution("jti-2")).await;
    assert!(matches!(second, Err(StoreError::NotExecutable { .. })), "gave {second:?}");
    let kept = store.get(approval.id).await.expect("get").execution.expect("execution kept");
    assert_eq!(kept.token_id, "jti-1");
}

/// Only an approved approval can be executed.
pub async fn denied_approval_cannot_be_executed<S: ApprovalStore>(store: S) {
    let agent = unique_agent("no-exec");
    let pending = store.submit(new_approval(&agent, HOUR)).await.expect("submit");
    let denied = store.submit(new_approval(&agent, HOUR)).await.expect("submit");
    store.decide(denied.id, decision(Outcome::Deny)).await.expect("deny");

    let early = store.mark_executed(pending.id, execution("jti-early")).await;
    let refused = store.mark_executed(denied.id, execution("jti-denied")).await;

    assert!(matches!(early, Err(StoreError::NotExecutable { .. })), "gave {early:?}");
    assert!(matches!(refused, Err(StoreError::NotExecutable { .. })), "gave {refused:?}");
    assert_eq!(store.get(pending.id).await.expect("get").status, ApprovalStatus::Pending);
}

/// Lists filter by agent and status, newest first, up to the limit.
pub async fn list_filters_by_status_newest_first<S: ApprovalStore>(store: S) {
    let agent = unique_agent("list");
    let mut ids = Vec::new();
    for _ in 0..PENDING_CAP {
        ids.push(store.submit(new_approval(&agent, HOUR)).await.expect("submit").id);
    }
    let (first, second, third) = (ids[0], ids[1], ids[2]);
    store.decide(first, decision(Outcome::Approve)).await.expect("decide");
    store.withdraw(second).await.expect("withdraw");

    let list = |status, limit| {
        let filter = ApprovalFilter { status, limit, ..by_agent(&agent) };
        let store = &store;
        async move {
            let found = store.list(&filter).await.expect("list");
            found.into_iter().map(|a| a.id).collect::<Vec<_>>()
        }
    };

    assert_eq!(list(None, None).await, vec![third, second, first]);
    assert_eq!(list(None, Some(2)).await, vec![third, second]);
    assert_eq!(list(Some(ApprovalStatus::Pending), None).await, vec![third]);
    assert_eq!(list(Some(ApprovalStatus::Approved), None).await, vec![first]);
    assert_eq!(list(Some(ApprovalStatus::Denied), None).await, Vec::<ApprovalId>::new());

    let pending = ApprovalFilter { status: Some(ApprovalStatus::Pending), ..Default::default() };
    let everyone = store.list(&pending).await.expect("list");
    assert!(everyone.iter().all(|a| a.status == ApprovalStatus::Pending));
}

/// Every change is announced in order, with increasing `seq`; a
/// subscription replays from its cursor and then continues live.
pub async fn events_arrive_in_order_and_replay_from_a_cursor<S: ApprovalStore>(store: S) {
    let agent = unique_agent("events");
    let approval = store.submit(new_approval(&agent, HOUR)).await.expect("submit");
    store.decide(approval.id, decision(Outcome::Approve)).await.expect("decide");
    store.mark_executed(approval.id, execution("jti-events")).await.expect("execute");

    let mut all = store.subscribe(None).await.expect("subscribe");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_event_for(&mut all, approval.id).await);
    }
    let kinds: Vec<EventKind> = seen.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Pending, EventKind::Decided, EventKind::Executed]);
    assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq), "seq not increasing");
    assert_eq!(
        seen[2].approval.execution.as_ref().map(|e| e.token_id.as_str()),
        Some("jti-events")
    );

    let mut replay = store.subscribe(Some(seen[0].seq)).await.expect("subscribe");
    let first = replay.next().await.expect("replay ended").expect("replay failed");
    assert!(first.seq > seen[0].seq, "replayed an event at or before the cursor");
    let decided = if first.approval.id == approval.id {
        first
    } else {
        next_event_for(&mut replay, approval.id).await
    };
    assert_eq!((decided.kind, decided.seq), (EventKind::Decided, seen[1].seq));

    let mut live = store.subscribe(Some(seen[2].seq)).await.expect("subscribe");
    let next = store.submit(new_approval(&agent, HOUR)).await.expect("submit");
    let announced = next_event_for(&mut live, next.id).await;
    assert_eq!(announced.kind, EventKind::Pending);
    assert!(announced.seq > seen[2].seq);
}

/// Of many concurrent decisions on one approval exactly one wins, and of
/// many concurrent executions exactly one wins.
pub async fn concurrent_decisions_have_exactly_one_winner<S: ApprovalStore>(store: S) {
    let store = Arc::new(store);
    let approval = store.submit(new_approval(&unique_agent("race"), HOUR)).await.expect("submit");

    let deciders = (0..16).map(|i| {
        let store = Arc::clone(&store);
        let outcome = if i % 2 == 0 { Outcome::Approve } else { Outcome::Deny };
        tokio::spawn(async move { store.decide(approval.id, decision(outcome)).await })
    });
    let results = futures::future::join_all(deciders).await;
    let (won, lost): (Vec<_>, Vec<_>) =
        results.into_iter().map(|r| r.expect("task")).partition(Result::is_ok);

    assert_eq!(won.len(), 1, "{} decisions won", won.len());
    let winner = won.into_iter().next().and_then(Result::ok).expect("winner");
    for loser in lost {
        assert!(
            matches!(loser, Err(StoreError::NotPending { status, .. }) if status == winner.status),
            "loser got {loser:?}"
        );
    }
    assert_eq!(store.get(approval.id).await.expect("get").decision, winner.decision);

    if winner.status == ApprovalStatus::Approved {
        let executors = (0..16).map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store.mark_executed(approval.id, execution(&format!("jti-{i}"))).await
            })
        });
        let results = futures::future::join_all(executors).await;
        let wins = results.into_iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(wins, 1, "{wins} executions won");
    }
}

/// An agent with [`PENDING_CAP`] pending approvals is refused another until
/// one is decided; other agents are not affected.
pub async fn pending_approvals_are_capped_per_agent<S: ApprovalStore>(store: S) {
    let greedy = unique_agent("greedy");
    let mut held = Vec::new();
    for _ in 0..PENDING_CAP {
        held.push(store.submit(new_approval(&greedy, HOUR)).await.expect("submit").id);
    }

    let refused = store.submit(new_approval(&greedy, HOUR)).await;
    assert!(
        matches!(&refused, Err(StoreError::TooManyPending(agent)) if agent == &greedy),
        "gave {refused:?}"
    );
    let pending = ApprovalFilter { status: Some(ApprovalStatus::Pending), ..by_agent(&greedy) };
    assert_eq!(store.list(&pending).await.expect("list").len(), PENDING_CAP);

    store.submit(new_approval(&unique_agent("modest"), HOUR)).await.expect("other agent");
    store.decide(held[0], decision(Outcome::Deny)).await.expect("decide");
    store.submit(new_approval(&greedy, HOUR)).await.expect("room after a decision");
}

/// Every operation on an unknown id says so.
pub async fn unknown_ids_are_not_found<S: ApprovalStore>(store: S) {
    let id = ApprovalId::new();
    let not_found = |r: Result<_, StoreError>| matches!(r, Err(StoreError::NotFound(x)) if x == id);

    assert!(not_found(store.get(id).await));
    assert!(not_found(store.decide(id, decision(Outcome::Approve)).await));
    assert!(not_found(store.withdraw(id).await));
    assert!(not_found(store.mark_executed(id, execution("jti-x")).await));
    assert!(not_found(store.wait(id).await));
}

/// Expands to one `#[tokio::test]` per behaviour of
/// [`store::conformance`](crate::store::conformance), each on a store made
/// by the given expression (which may `.await`). Invoke it once per
/// module. The calling crate needs `tokio` with the `macros` and
/// `rt-multi-thread` features among its dev-dependencies.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            submitted_approval_can_be_read_back,
            waiter_is_woken_by_a_decision,
            decisions_are_recorded_with_their_analyst,
            deciding_twice_is_refused,
            withdrawn_approval_cannot_be_approved,
            expiry_wakes_waiters_with_expired,
            approval_outlives_a_timed_out_wait_and_executes_once,
            denied_approval_cannot_be_executed,
            list_filters_by_status_newest_first,
            events_arrive_in_order_and_replay_from_a_cursor,
            pending_approvals_are_capped_per_agent,
            unknown_ids_are_not_found,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_decisions_have_exactly_one_winner() {
            $crate::store::conformance::concurrent_decisions_have_exactly_one_winner($make).await;
        }
    };
    (@each $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                $crate::store::conformance::$name($make).await;
            }
        )+
    };
}
