//! End-to-end: `midosoc serve` with a `[classifier.llm]` table. A scripted
//! chat-completions server stands in for the model. When it says `hold`
//! about a request the rules allow, the agent's request waits for an
//! analyst; in shadow mode, or when the model cannot be reached, the rules
//! decide and a safe request passes. A bad LLM configuration stops
//! start-up with one line.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/instance.rs"]
mod instance;

use instance::{CountingUpstream, Instance, Setup, decide, eventually, pending, upstream_table};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// Starts a chat-completions server on 127.0.0.1:0 whose model answers
/// every request with `verdict`; returns its base URL and the count of
/// requests it answered.
async fn scripted_model(verdict: &str) -> (String, Arc<AtomicUsize>) {
    let content = json!({
        "verdict": verdict,
        "risk": "high",
        "confidence": 0.8,
        "rationale": "Exports can start a costly job.",
        "markers": ["side_effects"],
    })
    .to_string();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let reply = move || {
        let content = content.clone();
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            axum::Json(json!({
                "id": "chatcmpl-scripted",
                "object": "chat.completion",
                "created": 1_700_000_000u32,
                "model": "scripted",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": null},
                    "logprobs": null,
                    "finish_reason": "stop"
                }],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
            }))
        }
    };
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(reply));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), calls)
}

/// The `[classifier.llm]` table for a model at `base_url`.
fn llm_table(base_url: &str) -> String {
    format!("[classifier.llm]\nbase_url = \"{base_url}\"\nmodel = \"scripted\"\ntimeout = \"5s\"\n")
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_rules_allow_waits_for_an_analyst_when_the_model_says_hold() {
    let (upstream, addr) = CountingUpstream::start().await;
    let (model, calls) = scripted_model("hold").await;
    let setup = Setup::new(&format!("{}{}", upstream_table(addr), llm_table(&model)));
    let key = setup.add_agent("report-bot");
    let gateway = Instance::start(&setup.config);
    let admin = gateway.admin_token.clone().expect("first start prints the admin token");
    let client = reqwest::Client::new();

    // A plain GET: the rules alone would let it through at once.
    let request = client.get(gateway.agent("/api/exports/latest")).bearer_auth(&key).send();
    let waiting = tokio::spawn(request);

    let approvals = eventually("the GET to be pending", || async {
        let list = pending(&client, &gateway, &admin).await;
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    let approval = &approvals[0];
    assert!(approval["url"].as_str().is_some_and(|u| u.ends_with("/exports/latest")));
    assert_eq!(approval["assessment"]["classifier"], "llm", "{approval}");
    assert!(!waiting.is_finished(), "the agent's request waits for the decision");
    assert_eq!(upstream.count("GET /exports/latest"), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let id = approval["id"].as_str().expect("an approval id");
    assert_eq!(decide(&client, &gateway, &admin, id, "approve").await, 200);
    let reply = waiting.await.expect("task").expect("the held request is answered");
    assert_eq!(reply.status(), 200);
    assert_eq!(upstream.count("GET /exports/latest"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_model_unreachable_the_rules_decide_and_a_safe_get_passes() {
    let (upstream, addr) = CountingUpstream::start().await;
    let model = format!("http://127.0.0.1:{}/v1", closed_port());
    let setup = Setup::new(&format!("{}{}", upstream_table(addr), llm_table(&model)));
    let key = setup.add_agent("report-bot");
    let gateway = Instance::start(&setup.config);
    let admin = gateway.admin_token.clone().expect("first start prints the admin token");
    let client = reqwest::Client::new();

    let reply = client
        .get(gateway.agent("/api/exports/latest"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(reply.status(), 200);
    let body: Value = reply.json().await.expect("json");
    assert_eq!(body["done"], "GET /exports/latest");
    assert_eq!(upstream.count("GET /exports/latest"), 1);
    assert!(pending(&client, &gateway, &admin).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_shadow_mode_the_model_is_asked_but_its_hold_does_not_stop_a_safe_get() {
    let (upstream, addr) = CountingUpstream::start().await;
    let (model, calls) = scripted_model("hold").await;
    let table = format!("{}mode = \"shadow\"\n", llm_table(&model));
    let setup = Setup::new(&format!("{}{table}", upstream_table(addr)));
    let key = setup.add_agent("report-bot");
    let gateway = Instance::start(&setup.config);
    let client = reqwest::Client::new();

    let reply = client
        .get(gateway.agent("/api/exports/latest"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(reply.status(), 200);
    assert_eq!(upstream.count("GET /exports/latest"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the model was asked");
}

#[test]
fn a_missing_llm_api_key_stops_start_up_with_one_line() {
    let setup = Setup::new(&format!(
        "{}api_key_env = \"MIDOSOC_TEST_LLM_KEY_SURELY_UNSET\"\n",
        llm_table("http://127.0.0.1:9/v1")
    ));
    for args in [["config", "check"], ["serve", "--log-format=human"]] {
        let output = setup.cli(&args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains("`classifier.llm`"), "{stderr}");
        assert!(lines[0].contains("MIDOSOC_TEST_LLM_KEY_SURELY_UNSET"), "{stderr}");
    }
}
