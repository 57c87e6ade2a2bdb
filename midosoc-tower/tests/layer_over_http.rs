//! The approval layer over real HTTP: an axum app on 127.0.0.1:0 wearing
//! it, a real client playing the agent, and the store playing the analyst.
//! The built-in heuristic classifier decides where the rules matter; a
//! small custom one ("hold every DELETE") keeps the other tests exact.

mod common;

use std::time::Duration;

use common::{
    BrokenClassifier, Harness, HoldDeletes, MARKER_RULE, RATIONALE, approve, deny, next_event,
    status_and_json,
};
use midosoc_core::classify::HeuristicClassifier;
use midosoc_core::store::{EventKind, StoreError};
use midosoc_core::{ApprovalId, ApprovalStatus, ApprovalStore, Verdict};
use midosoc_tower::problem::ProblemKind;
use serde_json::{Value, json};

fn problem_type(body: &Value) -> &str {
    body["type"].as_str().unwrap_or_default()
}

fn approval_id(body: &Value) -> ApprovalId {
    body["approval_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn safe_request_passes_untouched_and_records_no_approval() {
    let h = Harness::start(HeuristicClassifier::default(), |l| l).await;

    let response = h
        .client
        .get(h.url("/accounts/7"))
        .header("x-agent", "reader")
        .header("authorization", "Bearer agent-key")
        .send()
        .await
        .unwrap();

    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/accounts/7");
    assert_eq!(body["approval_id"], Value::Null);
    assert!(h.store.all().await.is_empty());
    assert_eq!(h.issuer.calls(), 0, "the safe path never fetches a token by default");
}

#[tokio::test]
async fn destructive_request_waits_for_approval_then_runs_with_a_verified_token() {
    let h = Harness::start(HeuristicClassifier::default(), |l| l).await;
    let mut events = h.events().await;

    let request = h
        .client
        .delete(h.url("/accounts/7"))
        .header("x-agent", "cleanup-bot")
        .header("authorization", "Bearer agent-key")
        .body(r#"{"confirm":true}"#)
        .send();
    let agent = tokio::spawn(request);

    let held = next_event(&mut events, EventKind::Pending).await;
    assert_eq!(held.action.agent.as_str(), "cleanup-bot");
    assert_eq!(held.action.path(), "/accounts/7");
    assert_eq!(h.inner_calls(), 0, "nothing runs before a person decides");

    h.store.decide(held.id, approve()).await.unwrap();
    let (status, body) = status_and_json(agent.await.unwrap().unwrap()).await;

    // The inner route wears the verifying layer: reaching it at all means
    // the minted token was accepted for exactly this request.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body"], r#"{"confirm":true}"#);
    assert_eq!(body["approval_id"], held.id.to_string());
    assert_eq!(body["analyst"], "analyst-1");
    assert_eq!(body["sub"], "cleanup-bot");
    assert_eq!(body["jti"], body["token_id"]);

    let executed = h.store.get(held.id).await.unwrap();
    let execution = executed.execution.expect("the approval is marked executed");
    assert_eq!(Value::from(execution.token_id), body["jti"]);
    assert_eq!(h.issuer.calls(), 1);
}

#[tokio::test]
async fn denied_request_gets_403_with_the_reason_and_no_token_is_minted() {
    let h = Harness::start(HoldDeletes, |l| l).await;
    let mut events = h.events().await;

    let agent = tokio::spawn(h.client.delete(h.url("/accounts/7")).send());
    let held = next_event(&mut events, EventKind::Pending).await;
    h.store.decide(held.id, deny("account has open disputes")).await.unwrap();

    let response = agent.await.unwrap().unwrap();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 403);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(problem_type(&body), ProblemKind::ApprovalDenied.type_uri());
    assert_eq!(approval_id(&body), held.id);
    assert_eq!(body["reason"], "account has open disputes");

    let text = body.to_string();
    assert!(!text.contains(RATIONALE) && !text.contains(MARKER_RULE), "leaked: {text}");
    assert_eq!(h.issuer.calls(), 0);
    assert_eq!(h.inner_calls(), 0);
}

#[tokio::test]
async fn refused_request_gets_403_without_the_classifiers_reasoning() {
    let h = Harness::start(HoldDeletes, |l| l).await;

    let response = h.client.post(h.url("/forbidden")).body("{}").send().await.unwrap();

    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 403);
    assert_eq!(problem_type(&body), ProblemKind::RequestRefused.type_uri());
    let text = body.to_string();
    assert!(!text.contains(RATIONALE) && !text.contains(MARKER_RULE), "leaked: {text}");
    assert!(h.store.all().await.is_empty());
    assert_eq!(h.inner_calls(), 0);
}

#[tokio::test]
async fn agent_hanging_up_while_held_withdraws_the_approval() {
    let h = Harness::start(HoldDeletes, |l| l).await;
    let mut events = h.events().await;

    let agent = tokio::spawn(h.client.delete(h.url("/accounts/7")).send());
    let held = next_event(&mut events, EventKind::Pending).await;

    // Dropping the in-flight request closes its connection.
    agent.abort();
    let withdrawn = next_event(&mut events, EventKind::Withdrawn).await;
    assert_eq!(withdrawn.id, held.id);

    let late = h.store.decide(held.id, approve()).await.unwrap_err();
    assert!(matches!(late, StoreError::NotPending { status: ApprovalStatus::Withdrawn, .. }));
    assert_eq!(h.issuer.calls(), 0);
    assert_eq!(h.inner_calls(), 0);
}

#[tokio::test]
async fn timed_out_wait_answers_202_and_resuming_executes_exactly_once() {
    let h = Harness::start(HoldDeletes, |l| {
        l.status_url("https://gateway.test/agent/approvals/{id}")
            .retry_after(Duration::from_secs(7))
    })
    .await;
    let body = r#"{"reason":"duplicate"}"#;
    let send = |extra: Option<(&'static str, String)>, body: &'static str| {
        let mut request = h.client.delete(h.url("/items/42")).header("x-agent", "bot").body(body);
        if let Some((name, value)) = extra {
            request = request.header(name, value);
        }
        request.send()
    };

    // The agent is willing to wait no time at all.
    let first = send(Some(("prefer", "wait=0".to_owned())), body).await.unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["retry-after"], "7");
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let (_, pending) = status_and_json(first).await;
    let id = approval_id(&pending);
    assert_eq!(problem_type(&pending), ProblemKind::ApprovalPending.type_uri());
    assert_eq!(location, format!("https://gateway.test/agent/approvals/{id}"));
    assert_eq!(h.store.get(id).await.unwrap().status, ApprovalStatus::Pending);

    // A different body under the same approval is refused.
    let changed = send(Some(("midosoc-approval", id.to_string())), r#"{"reason":"x"}"#);
    let (status, problem) = status_and_json(changed.await.unwrap()).await;
    assert_eq!((status, problem_type(&problem)), (409, ProblemKind::RequestMismatch.type_uri()));

    // Another agent cannot even see it.
    let stranger = h
        .client
        .delete(h.url("/items/42"))
        .header("x-agent", "someone-else")
        .header("midosoc-approval", id.to_string())
        .body(body)
        .send();
    let (status, problem) = status_and_json(stranger.await.unwrap()).await;
    assert_eq!((status, problem_type(&problem)), (404, ProblemKind::UnknownApproval.type_uri()));

    h.store.decide(id, approve()).await.unwrap();
    let resumed = send(Some(("midosoc-approval", id.to_string())), body);
    let (status, echoed) = status_and_json(resumed.await.unwrap()).await;
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed["approval_id"], id.to_string());
    assert_eq!(echoed["body"], body);

    let again = send(Some(("midosoc-approval", id.to_string())), body);
    let (status, problem) = status_and_json(again.await.unwrap()).await;
    assert_eq!((status, problem_type(&problem)), (409, ProblemKind::AlreadyExecuted.type_uri()));
    assert_eq!(h.inner_calls(), 1);
    assert_eq!(h.issuer.calls(), 1);
}

#[tokio::test]
async fn resuming_a_pending_approval_waits_again_for_the_decision() {
    let h = Harness::start(HoldDeletes, |l| l).await;
    let resume = |id: ApprovalId, prefer: &'static str| {
        h.client
            .delete(h.url("/items/1"))
            .header("midosoc-approval", id.to_string())
            .header("prefer", prefer)
            .send()
    };

    let first = h.client.delete(h.url("/items/1")).header("prefer", "respond-async").send();
    let (status, pending) = status_and_json(first.await.unwrap()).await;
    assert_eq!(status, 202);
    let id = approval_id(&pending);

    // Still undecided: the resumed request waits its (zero) time again.
    let (status, again) = status_and_json(resume(id, "wait=0").await.unwrap()).await;
    assert_eq!((status, approval_id(&again)), (202, id));

    let waiting = tokio::spawn(resume(id, "wait=60"));
    h.store.decide(id, deny("not today")).await.unwrap();
    let (status, problem) = status_and_json(waiting.await.unwrap().unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(problem["reason"], "not today");
    assert_eq!(h.store.all().await.len(), 1, "resuming holds nothing new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_held_requests_are_each_released_by_their_own_decision() {
    const N: usize = 1_000;
    let h = Harness::start(HoldDeletes, |l| l).await;
    let mut events = h.events().await;

    // The analyst approves even items and denies odd ones, naming each.
    let store = h.store.clone();
    let analyst = tokio::spawn(async move {
        for _ in 0..N {
            let held = next_event(&mut events, EventKind::Pending).await;
            let n: usize = held.action.path().trim_start_matches("/items/").parse().unwrap();
            let decision = if n.is_multiple_of(2) { approve() } else { deny(&format!("no {n}")) };
            store.decide(held.id, decision).await.unwrap();
        }
    });

    let agents = (0..N).map(|n| {
        let request = h
            .client
            .delete(h.url(&format!("/items/{n}")))
            .header("x-agent", format!("agent-{}", n % 10))
            .body(json!({ "n": n }).to_string())
            .send();
        async move { (n, status_and_json(request.await.unwrap()).await) }
    });
    let answers = futures::future::join_all(agents).await;
    analyst.await.unwrap();

    for (n, (status, body)) in answers {
        if n.is_multiple_of(2) {
            assert_eq!(status, 200, "item {n}: {body}");
            assert_eq!(body["path"], format!("/items/{n}"));
            assert_eq!(body["body"], json!({ "n": n }).to_string());
            let approval = h.store.get(body["approval_id"].as_str().unwrap().parse().unwrap());
            assert_eq!(approval.await.unwrap().action.path(), format!("/items/{n}"));
        } else {
            assert_eq!(status, 403, "item {n}: {body}");
            assert_eq!(body["reason"], format!("no {n}"));
            let approval = h.store.get(approval_id(&body)).await.unwrap();
            assert_eq!(approval.action.path(), format!("/items/{n}"));
        }
    }
    assert_eq!(h.inner_calls(), N / 2);
    assert_eq!(h.issuer.calls(), N / 2);
}

#[tokio::test]
async fn oversize_body_gets_413_and_is_never_assessed() {
    let h = Harness::start(HoldDeletes, |l| l.body_limit(1024)).await;

    let response = h.client.delete(h.url("/accounts/7")).body(vec![b'x'; 4096]).send();

    let (status, body) = status_and_json(response.await.unwrap()).await;
    assert_eq!(status, 413);
    assert_eq!(problem_type(&body), ProblemKind::BodyTooLarge.type_uri());
    assert!(h.store.all().await.is_empty());
    assert_eq!(h.inner_calls(), 0);
}

#[tokio::test]
async fn failing_classifier_means_held_not_allowed() {
    let h = Harness::start(BrokenClassifier, |l| l).await;
    let mut events = h.events().await;

    // Even a harmless read waits for a person when the classifier is down.
    let agent = tokio::spawn(h.client.get(h.url("/accounts/7")).send());
    let held = next_event(&mut events, EventKind::Pending).await;
    assert_eq!(held.assessment.verdict, Verdict::Hold);
    assert_eq!(held.assessment.classifier, "midosoc-tower");
    assert_eq!(h.inner_calls(), 0);

    h.store.decide(held.id, deny("classifier outage")).await.unwrap();
    let (status, _) = status_and_json(agent.await.unwrap().unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(h.inner_calls(), 0);
}

#[tokio::test]
async fn store_failure_answers_503_and_nothing_runs() {
    let h = Harness::start(HoldDeletes, |l| l).await;
    h.store.set_fail_submit(true);

    let response = h.client.delete(h.url("/accounts/7")).send().await.unwrap();
    assert!(response.headers().contains_key("retry-after"));
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, 503);
    assert_eq!(problem_type(&body), ProblemKind::ApprovalUnavailable.type_uri());
    assert!(!body.to_string().contains("database"), "internals stay in the log: {body}");
    assert_eq!(h.inner_calls(), 0);
}

#[tokio::test]
async fn failure_to_record_execution_fails_closed_and_the_agent_can_come_back() {
    let h = Harness::start(HoldDeletes, |l| l).await;
    let mut events = h.events().await;
    h.store.set_fail_mark_executed(true);

    let agent = tokio::spawn(h.client.delete(h.url("/items/9")).send());
    let held = next_event(&mut events, EventKind::Pending).await;
    h.store.decide(held.id, approve()).await.unwrap();

    let (status, body) = status_and_json(agent.await.unwrap().unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(approval_id(&body), held.id);
    assert_eq!(h.inner_calls(), 0, "a minted token is useless until execution is recorded");

    h.store.set_fail_mark_executed(false);
    let again =
        h.client.delete(h.url("/items/9")).header("midosoc-approval", held.id.to_string()).send();
    let (status, _) = status_and_json(again.await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(h.inner_calls(), 1);
}

#[tokio::test]
async fn issuer_failure_fails_closed_and_leaves_the_approval_approved() {
    let h = Harness::start(HoldDeletes, |l| l).await;
    let mut events = h.events().await;
    h.issuer.set_failing(true);

    let agent = tokio::spawn(h.client.delete(h.url("/items/3")).send());
    let held = next_event(&mut events, EventKind::Pending).await;
    h.store.decide(held.id, approve()).await.unwrap();

    let (status, body) = status_and_json(agent.await.unwrap().unwrap()).await;
    assert_eq!((status, problem_type(&body)), (503, ProblemKind::ApprovalUnavailable.type_uri()));
    assert_eq!(body["cause"], "issuer_unreachable", "{body}");
    assert_eq!(body["approval_id"], held.id.to_string());
    let approval = h.store.get(held.id).await.unwrap();
    assert_eq!(approval.status, ApprovalStatus::Approved);
    assert!(approval.execution.is_none());
    assert_eq!(h.inner_calls(), 0);

    h.issuer.set_failing(false);
    let again =
        h.client.delete(h.url("/items/3")).header("midosoc-approval", held.id.to_string()).send();
    assert_eq!(again.await.unwrap().status(), 200);
}

#[tokio::test]
async fn malformed_or_unknown_approval_ids_are_problems() {
    let h = Harness::start(HoldDeletes, |l| l).await;

    let bad = h.client.delete(h.url("/items/1")).header("midosoc-approval", "not-an-id").send();
    let (status, body) = status_and_json(bad.await.unwrap()).await;
    assert_eq!((status, problem_type(&body)), (400, ProblemKind::InvalidApprovalId.type_uri()));

    let unknown = ApprovalId::new().to_string();
    let missing = h.client.delete(h.url("/items/1")).header("midosoc-approval", unknown).send();
    let (status, body) = status_and_json(missing.await.unwrap()).await;
    assert_eq!((status, problem_type(&body)), (404, ProblemKind::UnknownApproval.type_uri()));
}
