//! What group commit promises, written once for every SQL store: writes
//! queued together commit in one transaction, yet each is refused or kept
//! on its own, in order, as if it had run alone.
//!
//! Each check takes the store and a way to read how many transactions it
//! has committed. Except for the burst, the checks run on a current-thread
//! runtime and queue their writes in one poll (`tokio::join!`), so the
//! writer, parked until then, finds them all waiting: one batch.

use std::collections::HashMap;

use futures::StreamExt;
use midosoc_core::AgentId;
use midosoc_core::approval::{ApprovalId, ApprovalStatus, Outcome};
use midosoc_core::store::conformance::PENDING_CAP;
use midosoc_core::store::{ApprovalFilter, ApprovalStore, AuditLog, EventKind, StoreError};

use super::{HOUR, by_ada, executed, held};

/// The kinds of every audit entry, in order; checks the chain first.
async fn audit_kinds(store: &impl AuditLog) -> Vec<EventKind> {
    let report = store.verify_audit().await.expect("verify");
    assert!(report.is_whole(), "{report}");
    store.export_audit(None).map(|e| e.expect("entry").kind).collect().await
}

/// Approvals pending for `agent`.
async fn pending_of(store: &impl ApprovalStore, agent: &str) -> usize {
    let filter = ApprovalFilter {
        agent: Some(AgentId::new(agent)),
        status: Some(ApprovalStatus::Pending),
        ..ApprovalFilter::default()
    };
    store.list(&filter).await.expect("list").len()
}

/// 200 decisions on 200 pending approvals, each from its own task: all
/// win, each approval is decided once in the audit trail, and the burst
/// takes fewer commits than decisions.
pub(crate) async fn a_burst_of_decisions_commits_in_groups<S>(store: S, commits: impl Fn() -> u64)
where
    S: ApprovalStore + AuditLog + Clone + 'static,
{
    let submits = (0..200).map(|i| store.submit(held(&format!("burst-{i}"), HOUR)));
    let ids: Vec<ApprovalId> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(|r| r.expect("submit").id)
        .collect();
    let before = commits();

    let deciders = ids.iter().map(|&id| {
        let store = store.clone();
        tokio::spawn(async move { store.decide(id, by_ada(Outcome::Deny)).await })
    });
    let results = futures::future::join_all(deciders).await;

    let taken = commits() - before;
    println!("200 concurrent decisions took {taken} commits");
    for result in results {
        assert_eq!(result.expect("task").expect("decide").status, ApprovalStatus::Denied);
    }
    assert!((1..200).contains(&taken), "{taken} commits for 200 decisions");
    let entries: Vec<_> = store.export_audit(None).map(|e| e.expect("entry")).collect().await;
    let mut decided = HashMap::<ApprovalId, usize>::new();
    for entry in entries.iter().filter(|e| e.kind == EventKind::Decided) {
        *decided.entry(entry.approval_id).or_default() += 1;
    }
    assert_eq!(decided.len(), ids.len());
    assert!(ids.iter().all(|id| decided.get(id) == Some(&1)), "an approval decided twice");
    assert_eq!(audit_kinds(&store).await.len(), 400);
}

/// A decision on an approval already decided, queued between two good
/// ones: it is refused, and the two around it commit in the same
/// transaction.
pub(crate) async fn a_refused_decision_leaves_the_rest_of_its_batch(
    store: &(impl ApprovalStore + AuditLog),
    commits: impl Fn() -> u64,
) {
    let first = store.submit(held("batch-first", HOUR)).await.expect("submit");
    let decided = store.submit(held("batch-decided", HOUR)).await.expect("submit");
    let last = store.submit(held("batch-last", HOUR)).await.expect("submit");
    store.decide(decided.id, by_ada(Outcome::Deny)).await.expect("earlier decision");
    let before = commits();

    let (first, refused, last) = tokio::join!(
        store.decide(first.id, by_ada(Outcome::Approve)),
        store.decide(decided.id, by_ada(Outcome::Approve)),
        store.decide(last.id, by_ada(Outcome::Deny)),
    );

    assert_eq!(commits() - before, 1, "the three decisions were not one batch");
    assert_eq!(first.expect("first").status, ApprovalStatus::Approved);
    assert!(
        matches!(refused, Err(StoreError::NotPending { status: ApprovalStatus::Denied, .. })),
        "gave {refused:?}"
    );
    assert_eq!(last.expect("last").status, ApprovalStatus::Denied);
    assert_eq!(store.get(decided.id).await.expect("get").status, ApprovalStatus::Denied);
    let kinds = audit_kinds(store).await;
    assert_eq!(kinds[3..], [EventKind::Decided; 3], "{kinds:?}");
}

/// A write the database itself refuses (a token id used twice) rolls back
/// alone: the writes before and after it in the batch commit.
pub(crate) async fn a_write_the_database_refuses_leaves_the_rest_of_its_batch(
    store: &(impl ApprovalStore + AuditLog),
    commits: impl Fn() -> u64,
) {
    let one = store.submit(held("jti-one", HOUR)).await.expect("submit");
    let two = store.submit(held("jti-two", HOUR)).await.expect("submit");
    let third = store.submit(held("jti-third", HOUR)).await.expect("submit");
    store.decide(one.id, by_ada(Outcome::Approve)).await.expect("decide");
    store.decide(two.id, by_ada(Outcome::Approve)).await.expect("decide");
    let before = commits();

    let (executed_once, reused, decided) = tokio::join!(
        store.mark_executed(one.id, executed("jti-shared")),
        store.mark_executed(two.id, executed("jti-shared")),
        store.decide(third.id, by_ada(Outcome::Deny)),
    );

    assert_eq!(commits() - before, 1, "the three writes were not one batch");
    assert!(executed_once.expect("first execution").execution.is_some());
    assert!(matches!(reused, Err(StoreError::NotExecutable { .. })), "gave {reused:?}");
    assert_eq!(decided.expect("decision after the refusal").status, ApprovalStatus::Denied);
    assert!(store.get(two.id).await.expect("get").execution.is_none());
    let kinds = audit_kinds(store).await;
    assert_eq!(kinds[5..], [EventKind::Executed, EventKind::Decided], "{kinds:?}");
}

/// Submissions queued together count one another against the agent's
/// pending cap.
pub(crate) async fn submissions_in_one_batch_count_against_the_cap(
    store: &(impl ApprovalStore + AuditLog),
    commits: impl Fn() -> u64,
) {
    let before = commits();

    let submits = (0..PENDING_CAP + 2).map(|_| store.submit(held("greedy-batch", HOUR)));
    let results = futures::future::join_all(submits).await;

    assert_eq!(commits() - before, 1, "the submissions were not one batch");
    let (kept, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(kept.len(), PENDING_CAP);
    assert!(refused.iter().all(|r| matches!(r, Err(StoreError::TooManyPending(_)))));
    assert_eq!(pending_of(store, "greedy-batch").await, PENDING_CAP);
    assert_eq!(audit_kinds(store).await.len(), PENDING_CAP);
}

/// A write whose caller gave up while it was still queued is never
/// applied; the write queued behind it is.
pub(crate) async fn a_write_given_up_before_its_turn_is_not_applied(
    store: &(impl ApprovalStore + AuditLog),
) {
    let abandoned = store.submit(held("given-up", HOUR)).await.expect("submit");
    let other = store.submit(held("given-up", HOUR)).await.expect("submit");

    let mut deciding = Box::pin(store.decide(abandoned.id, by_ada(Outcome::Approve)));
    assert!(futures::poll!(&mut deciding).is_pending(), "decided before the writer ran");
    drop(deciding);
    store.decide(other.id, by_ada(Outcome::Deny)).await.expect("decide");

    assert_eq!(store.get(abandoned.id).await.expect("get").status, ApprovalStatus::Pending);
    let kinds = audit_kinds(store).await;
    assert_eq!(kinds, [EventKind::Pending, EventKind::Pending, EventKind::Decided]);
}

/// With the database set to fail the commit of any transaction that holds
/// a submission by agent `poison`: a submission batched with it fails too,
/// neither is visible, and the store goes on afterwards.
pub(crate) async fn a_failed_commit_refuses_every_write_of_its_batch(
    store: &(impl ApprovalStore + AuditLog),
    commits: impl Fn() -> u64,
) {
    let before = commits();

    let (healthy, poisoned) =
        tokio::join!(store.submit(held("healthy", HOUR)), store.submit(held("poison", HOUR)),);

    assert!(matches!(healthy, Err(StoreError::Unavailable(_))), "gave {healthy:?}");
    assert!(matches!(poisoned, Err(StoreError::Unavailable(_))), "gave {poisoned:?}");
    assert_eq!(commits(), before);
    assert_eq!(pending_of(store, "healthy").await, 0);
    assert!(audit_kinds(store).await.is_empty());
    store.submit(held("healthy", HOUR)).await.expect("submit after the failed commit");
    assert_eq!(audit_kinds(store).await, [EventKind::Pending]);
}
