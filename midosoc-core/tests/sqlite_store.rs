//! `SqliteStore` against the conformance suite, plus what only a durable
//! store promises: restart, an audit trail that shows tampering, refusals
//! at open, and writes committed in groups that behave as if alone.

mod store_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use midosoc_core::approval::{ApprovalStatus, Outcome};
use midosoc_core::store::{
    ApprovalStore, AuditEntry, ChainVerifier, EventKind, LinkProblem, OpenError, SqlStore,
    SqliteStore, StoreOptions,
};
use sqlx::{Connection, SqliteConnection};
use store_support::{
    HOUR, PATIENCE, TempSqlite, batching, by_ada, executed, held, percentiles, test_options,
    until_parked,
};

mod conformance {
    midosoc_core::conformance_tests!(super::store_support::TempSqlite::new().await);
}

/// Runs `sql` on the store's file directly, as someone with the file
/// would.
async fn tamper(db: &TempSqlite, sql: &str) {
    let mut conn = SqliteConnection::connect(&db.url).await.expect("open file");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect(sql);
    conn.close().await.expect("close");
}

/// Holds, approves and executes one approval; returns its id.
async fn one_full_life(store: &impl ApprovalStore, agent: &str) -> midosoc_core::ApprovalId {
    let approval = store.submit(held(agent, HOUR)).await.expect("submit");
    store.decide(approval.id, by_ada(Outcome::Approve)).await.expect("decide");
    let jti = format!("jti-{}", approval.id);
    store.mark_executed(approval.id, executed(&jti)).await.expect("execute");
    approval.id
}

#[tokio::test]
async fn pending_approvals_survive_reopening_the_file() {
    let db = TempSqlite::new().await;
    let kept = db.store.submit(held("restart", HOUR)).await.expect("submit");
    let decided = db.store.submit(held("restart", HOUR)).await.expect("submit");
    db.store.decide(decided.id, by_ada(Outcome::Deny)).await.expect("decide");
    let before = db.store.verify_audit().await.expect("verify");
    db.store.close().await;
    assert!(db.store.get(kept.id).await.is_err(), "a closed store still answers");

    let reopened = SqliteStore::open(&db.url, test_options()).await.expect("reopen");

    assert_eq!(reopened.get(kept.id).await.expect("get"), kept);
    assert_eq!(reopened.get(decided.id).await.expect("get").status, ApprovalStatus::Denied);
    let waiter = {
        let store = reopened.clone();
        tokio::spawn(async move { store.wait(kept.id).await })
    };
    until_parked(|| reopened.waiting(), 1).await;
    reopened.decide(kept.id, by_ada(Outcome::Approve)).await.expect("decide after restart");
    let woken = tokio::time::timeout(PATIENCE, waiter).await.expect("waiter woken").expect("task");
    assert_eq!(woken.expect("wait").status, ApprovalStatus::Approved);

    let after = reopened.verify_audit().await.expect("verify");
    assert!(after.is_whole(), "{after}");
    assert_eq!(after.entries, before.entries + 1);
    let replayed: Vec<_> =
        reopened.subscribe(None).await.expect("subscribe").take(4).collect().await;
    let seqs: Vec<u64> = replayed.into_iter().map(|e| e.expect("event").seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_second_store_on_the_same_file_is_caught_up_by_the_recheck() {
    let db = TempSqlite::new().await;
    let quick = test_options().with_recheck_every(Duration::from_millis(50));
    let other = SqliteStore::open(&db.url, quick).await.expect("second store on the file");
    let approval = db.store.submit(held("two-writers", HOUR)).await.expect("submit");

    let waiter = {
        let other = other.clone();
        tokio::spawn(async move { other.wait(approval.id).await })
    };
    until_parked(|| other.waiting(), 1).await;
    db.store.decide(approval.id, by_ada(Outcome::Approve)).await.expect("decide");

    let woken = tokio::time::timeout(PATIENCE, waiter).await.expect("woken by the recheck");
    assert_eq!(woken.expect("task").expect("wait").status, ApprovalStatus::Approved);
    assert!(other.verify_audit().await.expect("verify").is_whole());
}

#[tokio::test]
async fn a_wait_given_up_is_no_longer_counted() {
    let db = TempSqlite::new().await;
    let approval = db.store.submit(held("impatient", HOUR)).await.expect("submit");
    let waiter = {
        let store = db.store.clone();
        tokio::spawn(async move { store.wait(approval.id).await })
    };
    until_parked(|| db.store.waiting(), 1).await;

    waiter.abort();
    let _ = waiter.await;

    assert_eq!(db.store.waiting(), 0);
    assert_eq!(db.store.get(approval.id).await.expect("get").status, ApprovalStatus::Pending);
}

#[tokio::test]
async fn the_audit_trail_names_agent_analyst_and_token_id() {
    let db = TempSqlite::new().await;
    let id = one_full_life(&db.store, "auditor-agent").await;

    let entries: Vec<AuditEntry> =
        db.store.export_audit(None).map(|e| e.expect("entry")).collect().await;

    let kinds: Vec<EventKind> = entries.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Pending, EventKind::Decided, EventKind::Executed]);
    assert!(entries.iter().all(|e| e.approval_id == id && e.agent.as_str() == "auditor-agent"));
    assert_eq!(entries[0].analyst, None);
    assert_eq!(entries[1].analyst.as_deref(), Some("ada"));
    assert_eq!(entries[0].payload["assessment"]["rationale"], "deletes a repository");
    assert_eq!(entries[2].payload["execution"]["token_id"], format!("jti-{id}"));

    // An auditor with only the JSON Lines export can check the chain.
    let lines: Vec<String> = entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    let mut verifier = ChainVerifier::new();
    for line in &lines {
        verifier.push(&serde_json::from_str(line).expect("line"));
    }
    assert!(verifier.finish(None).is_whole());
    let tail: Vec<_> = db.store.export_audit(Some(2)).collect().await;
    assert_eq!(tail.len(), 1);
}

#[tokio::test]
async fn an_edited_audit_row_is_named_by_its_seq() {
    let db = TempSqlite::new().await;
    one_full_life(&db.store, "tampered").await;
    assert!(db.store.verify_audit().await.expect("verify").is_whole());

    tamper(
        &db,
        "DROP TRIGGER approval_events_no_update;
         UPDATE approval_events SET payload = replace(payload, 'Ada Lovelace', 'Eve') WHERE seq = 2;",
    )
    .await;
    let report = db.store.verify_audit().await.expect("verify");

    let broken = report.broken.clone().expect("tampering found");
    assert_eq!(broken.seq, 2, "{report}");
    assert!(matches!(broken.problem, LinkProblem::Edited { .. }), "{report}");
    assert!(report.to_string().starts_with("audit chain broken at seq 2"), "{report}");
}

#[tokio::test]
async fn removed_audit_rows_break_the_chain_where_they_were() {
    let db = TempSqlite::new().await;
    one_full_life(&db.store, "gaps").await;
    one_full_life(&db.store, "gaps").await;

    tamper(
        &db,
        "DROP TRIGGER approval_events_no_delete; DELETE FROM approval_events WHERE seq = 6;",
    )
    .await;
    let cut = db.store.verify_audit().await.expect("verify").broken.expect("cut found");
    tamper(&db, "DELETE FROM approval_events WHERE seq = 3;").await;
    let gap = db.store.verify_audit().await.expect("verify").broken.expect("gap found");

    assert_eq!(cut.seq, 6);
    assert!(matches!(cut.problem, LinkProblem::Truncated { head_seq: 6, .. }), "{cut:?}");
    assert_eq!(gap.seq, 4);
    assert_eq!(gap.problem, LinkProblem::OutOfSequence { expected: 3 });
}

#[tokio::test]
async fn the_audit_table_refuses_updates_and_deletes() {
    let db = TempSqlite::new().await;
    one_full_life(&db.store, "append-only").await;
    let mut conn = SqliteConnection::connect(&db.url).await.expect("open file");

    let update = sqlx::query("UPDATE approval_events SET agent = 'x' WHERE seq = 1")
        .execute(&mut conn)
        .await;
    let delete = sqlx::query("DELETE FROM approval_events").execute(&mut conn).await;

    assert!(update.unwrap_err().to_string().contains("append-only"));
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_the_chain_whole() {
    let db = Arc::new(TempSqlite::new().await);

    let writers = (0..8).map(|w| {
        let db = Arc::clone(&db);
        tokio::spawn(async move {
            for _ in 0..10 {
                let a = db.store.submit(held(&format!("writer-{w}"), HOUR)).await.expect("submit");
                db.store.decide(a.id, by_ada(Outcome::Deny)).await.expect("decide");
            }
        })
    });
    futures::future::join_all(writers).await.into_iter().for_each(|r| r.expect("writer"));

    let report = db.store.verify_audit().await.expect("verify");
    assert!(report.is_whole(), "{report}");
    assert_eq!(report.entries, 160);
}

#[tokio::test]
async fn expiry_is_recorded_once_in_the_audit_trail() {
    let db = TempSqlite::new().await;
    let due = db.store.submit(held("late", Duration::ZERO)).await.expect("submit");

    let first = db.store.expire_due(time::OffsetDateTime::now_utc()).await.expect("expire");
    let second = db.store.expire_due(time::OffsetDateTime::now_utc()).await.expect("expire");

    assert_eq!(first.iter().map(|a| a.id).collect::<Vec<_>>(), vec![due.id]);
    assert!(first[0].closed_at.is_some());
    assert!(second.is_empty());
    let kinds: Vec<EventKind> =
        db.store.export_audit(None).map(|e| e.expect("entry").kind).collect().await;
    assert_eq!(kinds, [EventKind::Pending, EventKind::Expired]);
    assert_eq!(db.store.get(due.id).await.expect("get"), first[0]);
}

#[tokio::test]
async fn a_token_id_cannot_be_recorded_for_two_approvals() {
    let db = TempSqlite::new().await;
    let one = db.store.submit(held("jti", HOUR)).await.expect("submit");
    let two = db.store.submit(held("jti", HOUR)).await.expect("submit");
    db.store.decide(one.id, by_ada(Outcome::Approve)).await.expect("decide");
    db.store.decide(two.id, by_ada(Outcome::Approve)).await.expect("decide");

    db.store.mark_executed(one.id, executed("same-jti")).await.expect("first");
    let reused = db.store.mark_executed(two.id, executed("same-jti")).await;

    assert!(
        matches!(reused, Err(midosoc_core::StoreError::NotExecutable { .. })),
        "gave {reused:?}"
    );
    assert!(db.store.get(two.id).await.expect("get").execution.is_none());
    assert!(db.store.verify_audit().await.expect("verify").is_whole());
}

#[tokio::test]
async fn urls_pick_the_store_and_bad_ones_are_refused() {
    let db = TempSqlite::new().await;
    let by_url = SqlStore::open(&db.url, StoreOptions::default()).await.expect("open by url");

    let memory = SqlStore::open("sqlite::memory:", StoreOptions::default()).await;
    let unknown = SqlStore::open("mysql://root@localhost/x", StoreOptions::default()).await;
    let missing_dir = SqliteStore::open(
        &format!("sqlite://{}/no/such/dir/x.db", db.path.display()),
        StoreOptions::default(),
    )
    .await;

    assert!(matches!(by_url, SqlStore::Sqlite(_)));
    by_url.ready().await.expect("ready");
    assert!(matches!(memory, Err(OpenError::InMemory)));
    assert!(matches!(&unknown, Err(OpenError::UnsupportedScheme(s)) if s == "mysql"));
    assert!(matches!(missing_dir, Err(OpenError::Connect(_))), "{missing_dir:?}");
}

#[tokio::test]
async fn wake_latency_after_a_decision_is_printed() {
    let db = TempSqlite::new().await;
    let mut woken = Vec::new();
    let mut deciding = Vec::new();
    let mut after_return = Vec::new();

    for _ in 0..200 {
        let approval = db.store.submit(held("latency", HOUR)).await.expect("submit");
        let waiter = {
            let store = db.store.clone();
            tokio::spawn(async move {
                store.wait(approval.id).await.expect("wait");
                Instant::now()
            })
        };
        until_parked(|| db.store.waiting(), 1).await;

        let started = Instant::now();
        db.store.decide(approval.id, by_ada(Outcome::Deny)).await.expect("decide");
        let returned = Instant::now();
        deciding.push(returned - started);
        let woke = waiter.await.expect("waiter");
        woken.push(woke - started);
        after_return.push(woke.saturating_duration_since(returned));
    }

    let (decide_p50, decide_p99) = percentiles(deciding);
    let (wake_p50, wake_p99) = percentiles(woken);
    let (late_p50, late_p99) = percentiles(after_return);
    println!(
        "sqlite, same instance, 200 decisions: decide() p50 {decide_p50} us p99 {decide_p99} us; \
         decide() start to waiter woken p50 {wake_p50} us p99 {wake_p99} us; \
         decide() return to waiter woken p50 {late_p50} us p99 {late_p99} us"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_decisions_commits_in_groups() {
    let db = TempSqlite::new().await;
    let store = db.store.clone();
    batching::a_burst_of_decisions_commits_in_groups(db.store.clone(), || store.commits()).await;
}

#[tokio::test]
async fn a_refused_decision_leaves_the_rest_of_its_batch() {
    let db = TempSqlite::new().await;
    batching::a_refused_decision_leaves_the_rest_of_its_batch(&db, || db.store.commits()).await;
}

#[tokio::test]
async fn a_write_the_database_refuses_leaves_the_rest_of_its_batch() {
    let db = TempSqlite::new().await;
    let commits = || db.store.commits();
    batching::a_write_the_database_refuses_leaves_the_rest_of_its_batch(&db, commits).await;
}

#[tokio::test]
async fn submissions_in_one_batch_count_against_the_cap() {
    let db = TempSqlite::new().await;
    batching::submissions_in_one_batch_count_against_the_cap(&db, || db.store.commits()).await;
}

#[tokio::test]
async fn a_write_given_up_before_its_turn_is_not_applied() {
    let db = TempSqlite::new().await;
    batching::a_write_given_up_before_its_turn_is_not_applied(&db).await;
}

#[tokio::test]
async fn a_failed_commit_refuses_every_write_of_its_batch() {
    let db = TempSqlite::new().await;
    // A deferred foreign key is checked at COMMIT, so the commit fails.
    tamper(
        &db,
        "CREATE TABLE poison_parent (id TEXT PRIMARY KEY);
         CREATE TABLE poison (id TEXT REFERENCES poison_parent (id) DEFERRABLE INITIALLY DEFERRED);
         CREATE TRIGGER poisoned AFTER INSERT ON approvals WHEN NEW.agent = 'poison'
         BEGIN INSERT INTO poison VALUES (NEW.id); END;",
    )
    .await;

    batching::a_failed_commit_refuses_every_write_of_its_batch(&db, || db.store.commits()).await;
}
