//! `PostgresStore` against the conformance suite, plus what several
//! gateway instances on one database count on: decisions and new
//! approvals reach every instance, expiry happens once, the audit chain
//! stays whole, an outage fails closed and heals by itself, and writes
//! committed in groups behave as if alone.
//!
//! Each test works in a schema of its own, dropped at the end. Without
//! `MIDOSOC_TEST_POSTGRES_URL` the tests say they are skipped and pass,
//! unless `MIDOSOC_REQUIRE_PEERS=1`.

mod store_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use midosoc_core::approval::{ApprovalStatus, Outcome};
use midosoc_core::store::{
    ApprovalStore, EventKind, LinkProblem, OpenError, PostgresStore, SqlStore, StoreOptions,
};
use store_support::{
    HOUR, PATIENCE, PgSchema, Proxy, batching, by_ada, executed, held, percentiles, postgres_addr,
    postgres_url, test_options, until_parked,
};
use time::OffsetDateTime;

mod conformance {
    midosoc_core::conformance_tests!({
        let Some(store) = super::store_support::TestPostgres::new("postgres conformance").await
        else {
            return;
        };
        store
    });
}

/// Two stores (two pools, two listeners) on one fresh schema: two gateway
/// instances.
async fn two_instances(test: &str) -> Option<(PgSchema, PostgresStore, PostgresStore)> {
    let schema = PgSchema::create(test).await?;
    let a = schema.open(test_options()).await;
    let b = schema.open(test_options()).await;
    Some((schema, a, b))
}

#[tokio::test]
async fn pending_approvals_survive_reopening_the_database() {
    let Some(schema) = PgSchema::create("reopen").await else { return };
    let first = schema.open(test_options()).await;
    let kept = first.submit(held("restart", HOUR)).await.expect("submit");
    first.close().await;
    drop(first);

    let reopened = schema.open(test_options()).await;

    assert_eq!(reopened.get(kept.id).await.expect("get"), kept);
    let waiter = {
        let store = reopened.clone();
        tokio::spawn(async move { store.wait(kept.id).await })
    };
    until_parked(|| reopened.waiting(), 1).await;
    reopened.decide(kept.id, by_ada(Outcome::Approve)).await.expect("decide after restart");
    let woken = tokio::time::timeout(PATIENCE, waiter).await.expect("woken").expect("task");
    assert_eq!(woken.expect("wait").status, ApprovalStatus::Approved);
    let report = reopened.verify_audit().await.expect("verify");
    assert!(report.is_whole() && report.entries == 2, "{report}");
}

#[tokio::test]
async fn a_decision_on_one_instance_wakes_a_waiter_on_another() {
    let Some((_schema, a, b)) = two_instances("cross-instance wait").await else { return };
    let approval = a.submit(held("cross", HOUR)).await.expect("submit");

    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.wait(approval.id).await })
    };
    until_parked(|| a.waiting(), 1).await;
    b.decide(approval.id, by_ada(Outcome::Approve)).await.expect("decide on b");

    let woken = tokio::time::timeout(PATIENCE, waiter).await.expect("waiter on a woken");
    let woken = woken.expect("task").expect("wait");
    assert_eq!(woken.status, ApprovalStatus::Approved);
    assert_eq!(woken.decision.expect("decision").analyst.id, "ada");
}

#[tokio::test]
async fn new_approvals_reach_subscribers_of_every_instance() {
    let Some((_schema, a, b)) = two_instances("cross-instance events").await else { return };
    let mut events = a.subscribe(None).await.expect("subscribe on a");

    let held_on_b = b.submit(held("events", HOUR)).await.expect("submit on b");
    b.withdraw(held_on_b.id).await.expect("withdraw on b");

    let seen = tokio::time::timeout(PATIENCE, events.by_ref().take(2).collect::<Vec<_>>())
        .await
        .expect("events reached a");
    let seen: Vec<_> = seen.into_iter().map(|e| e.expect("event")).collect();
    assert_eq!(
        seen.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Pending, EventKind::Withdrawn]
    );
    assert_eq!(seen.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(seen.iter().all(|e| e.approval.id == held_on_b.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_swept_by_two_instances_at_once_happens_once() {
    let Some((_schema, a, b)) = two_instances("expire once").await else { return };
    let mut due = HashSet::new();
    for i in 0..3 {
        for agent in ["x", "y", "z"] {
            let store = if i % 2 == 0 { &a } else { &b };
            due.insert(store.submit(held(agent, Duration::ZERO)).await.expect("submit").id);
        }
    }

    let now = OffsetDateTime::now_utc();
    let (from_a, from_b) = tokio::join!(a.expire_due(now), b.expire_due(now));

    let mut expired: Vec<_> = from_a.expect("a").into_iter().chain(from_b.expect("b")).collect();
    expired.sort_by_key(|x| x.id);
    assert_eq!(expired.len(), due.len(), "each approval expires exactly once");
    assert_eq!(expired.iter().map(|x| x.id).collect::<HashSet<_>>(), due);
    let kinds: Vec<EventKind> =
        a.export_audit(None).map(|e| e.expect("entry").kind).collect().await;
    let expiries = kinds.iter().filter(|k| **k == EventKind::Expired).count();
    assert_eq!(expiries, due.len(), "one expiry entry per approval");
    assert!(a.verify_audit().await.expect("verify").is_whole());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_on_two_instances_keep_one_whole_chain() {
    let Some((_schema, a, b)) = two_instances("shared chain").await else { return };
    let (a, b) = (Arc::new(a), Arc::new(b));

    let writers = (0..6).map(|w| {
        let (mine, theirs) = if w % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (mine, theirs) = (Arc::clone(mine), Arc::clone(theirs));
        tokio::spawn(async move {
            for _ in 0..8 {
                let x = mine.submit(held(&format!("writer-{w}"), HOUR)).await.expect("submit");
                theirs.decide(x.id, by_ada(Outcome::Deny)).await.expect("decide");
            }
        })
    });
    futures::future::join_all(writers).await.into_iter().for_each(|r| r.expect("writer"));

    let report = b.verify_audit().await.expect("verify");
    assert!(report.is_whole(), "{report}");
    assert_eq!(report.entries, 96);
}

#[tokio::test]
async fn an_edited_audit_row_is_named_by_its_seq() {
    let Some(schema) = PgSchema::create("tamper").await else { return };
    let store = schema.open(test_options()).await;
    let approval = store.submit(held("tampered", HOUR)).await.expect("submit");
    store.decide(approval.id, by_ada(Outcome::Approve)).await.expect("decide");
    store.mark_executed(approval.id, executed("jti-tamper")).await.expect("execute");
    assert!(store.verify_audit().await.expect("verify").is_whole());

    let refused = sqlx_update_fails(&schema).await;
    schema
        .execute(
            "ALTER TABLE approval_events DISABLE TRIGGER approval_events_no_change;
             UPDATE approval_events SET analyst = 'eve' WHERE seq = 2;",
        )
        .await;
    let report = store.verify_audit().await.expect("verify");

    assert!(refused, "the audit table accepted an update");
    let broken = report.broken.clone().expect("tampering found");
    assert_eq!(broken.seq, 2, "{report}");
    assert!(matches!(broken.problem, LinkProblem::Edited { .. }), "{report}");
}

/// Whether a plain update of the audit table is refused by its trigger.
async fn sqlx_update_fails(schema: &PgSchema) -> bool {
    use sqlx::Connection;
    let mut conn =
        sqlx::PgConnection::connect_with(&schema.connect_options()).await.expect("connect");
    let update = sqlx::query("UPDATE approval_events SET agent = 'x'").execute(&mut conn).await;
    update.is_err_and(|e| e.to_string().contains("append-only"))
}

#[tokio::test]
async fn an_unreachable_database_fails_to_open() {
    let closed =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let options = sqlx::postgres::PgConnectOptions::new()
        .host("127.0.0.1")
        .port(closed.port())
        .username("postgres");

    let started = Instant::now();
    let opened = PostgresStore::open_with(
        options,
        StoreOptions::default().with_acquire_timeout(Duration::from_millis(500)),
    )
    .await;

    assert!(matches!(opened, Err(OpenError::Connect(_))), "{opened:?}");
    assert!(started.elapsed() < PATIENCE);
}

#[tokio::test]
async fn an_outage_fails_closed_and_the_store_heals_when_the_database_returns() {
    let Some(schema) = PgSchema::create("outage").await else { return };
    let url = postgres_url("outage").expect("url");
    let proxy = Proxy::start(postgres_addr(&url)).await;
    let proxied = schema.connect_options().host("127.0.0.1").port(proxy.addr.port());
    let options = test_options()
        .with_acquire_timeout(Duration::from_millis(500))
        .with_recheck_every(Duration::from_secs(1));
    let a = PostgresStore::open_with(proxied, options).await.expect("open through proxy");
    let b = schema.open(test_options()).await;
    let approval = a.submit(held("outage", HOUR)).await.expect("submit");
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.wait(approval.id).await })
    };
    until_parked(|| a.waiting(), 1).await;

    proxy.down();
    let ready = a.ready().await;
    let get = a.get(approval.id).await;
    let submit = a.submit(held("outage", HOUR)).await;
    b.decide(approval.id, by_ada(Outcome::Approve)).await.expect("decide while a is cut off");
    proxy.up().await;

    assert!(matches!(ready, Err(midosoc_core::StoreError::Unavailable(_))), "{ready:?}");
    assert!(matches!(get, Err(midosoc_core::StoreError::Unavailable(_))), "{get:?}");
    assert!(matches!(submit, Err(midosoc_core::StoreError::Unavailable(_))), "{submit:?}");
    let woken = tokio::time::timeout(PATIENCE, waiter).await.expect("waiter woken after outage");
    // Nothing reached the waiter while the database was away; it re-read
    // the row once the store heard of the decision.
    assert_eq!(woken.expect("task").expect("wait").status, ApprovalStatus::Approved);
    a.ready().await.expect("ready again");
    assert_eq!(a.get(approval.id).await.expect("get again").status, ApprovalStatus::Approved);
    assert_eq!(a.wait(approval.id).await.expect("wait again").status, ApprovalStatus::Approved);
}

#[tokio::test]
async fn sql_store_opens_postgres_by_url() {
    let Some(url) = postgres_url("postgres by url") else { return };

    let store = SqlStore::open(&url, StoreOptions::default()).await.expect("open by url");

    assert!(matches!(store, SqlStore::Postgres(_)));
    store.ready().await.expect("ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_latency_same_and_cross_instance_is_printed() {
    let Some((_schema, a, b)) = two_instances("latency").await else { return };

    for (label, decider) in [("same instance", &a), ("cross instance", &b)] {
        let mut woken = Vec::new();
        let mut deciding = Vec::new();
        let mut after_return = Vec::new();
        for _ in 0..200 {
            let approval = a.submit(held("latency", HOUR)).await.expect("submit");
            let waiter = {
                let a = a.clone();
                tokio::spawn(async move {
                    a.wait(approval.id).await.expect("wait");
                    Instant::now()
                })
            };
            until_parked(|| a.waiting(), 1).await;

            let started = Instant::now();
            decider.decide(approval.id, by_ada(Outcome::Deny)).await.expect("decide");
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
            "postgres, {label}, 200 decisions: decide() p50 {decide_p50} us p99 {decide_p99} us; \
             decide() start to waiter woken p50 {wake_p50} us p99 {wake_p99} us; \
             decide() return to waiter woken p50 {late_p50} us p99 {late_p99} us"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_decisions_commits_in_groups() {
    let Some(schema) = PgSchema::create("burst").await else { return };
    let store = schema.open(test_options()).await;
    let counted = store.clone();
    batching::a_burst_of_decisions_commits_in_groups(store, || counted.commits()).await;
}

#[tokio::test]
async fn a_refused_decision_leaves_the_rest_of_its_batch() {
    let Some(schema) = PgSchema::create("refused in batch").await else { return };
    let store = schema.open(test_options()).await;
    batching::a_refused_decision_leaves_the_rest_of_its_batch(&store, || store.commits()).await;
}

#[tokio::test]
async fn a_write_the_database_refuses_leaves_the_rest_of_its_batch() {
    let Some(schema) = PgSchema::create("database refusal in batch").await else { return };
    let store = schema.open(test_options()).await;
    let commits = || store.commits();
    // PostgreSQL aborts the transaction on the failed statement; only the
    // savepoint brings it back.
    batching::a_write_the_database_refuses_leaves_the_rest_of_its_batch(&store, commits).await;
}

#[tokio::test]
async fn a_failed_commit_refuses_every_write_of_its_batch() {
    let Some(schema) = PgSchema::create("failed commit").await else { return };
    let store = schema.open(test_options()).await;
    // A deferred constraint trigger runs at COMMIT, so the commit fails.
    schema
        .execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'poisoned commit'; END $$;
             CREATE CONSTRAINT TRIGGER poisoned AFTER INSERT ON approvals
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.agent = 'poison')
             EXECUTE FUNCTION poison();",
        )
        .await;

    batching::a_failed_commit_refuses_every_write_of_its_batch(&store, || store.commits()).await;
}
