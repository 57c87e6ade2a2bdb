//! End-to-end: the agent side of the real `midosoc` binary — keys, the
//! proxy's header and framing rules, upstream failures, the action API,
//! bad input, configuration errors and shutdown.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/gateway.rs"]
mod gateway;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use gateway::Gateway;
use serde_json::{Value, json};

/// An upstream that answers every request with what it received, except
/// `/slow`, which never answers.
async fn echo_upstream() -> SocketAddr {
    async fn echo(request: Request) -> axum::response::Response {
        if request.uri().path() == "/slow" {
            std::future::pending::<()>().await;
        }
        let headers: BTreeMap<String, String> = request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
        let mut response = axum::Json(json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }))
        .into_response();
        response.headers_mut().insert("connection", "x-upstream-hop".parse().unwrap());
        response.headers_mut().insert("x-upstream-hop", "1".parse().unwrap());
        response.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
        response
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().fallback(echo)).await });
    addr
}

fn upstream_config(name: &str, prefix: &str, addr: &str, extra: &str) -> String {
    format!(
        "[[upstream]]\nname = \"{name}\"\nprefix = \"{prefix}\"\nurl = \"http://{addr}/\"\n\
         timeout = \"1s\"\n{extra}\n"
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json", "status {status}");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn missing_or_wrong_agent_key_gets_401_problem() {
    let upstream = echo_upstream().await;
    let gw = Gateway::start(&upstream_config("echo", "/echo/", &upstream.to_string(), ""));
    let key = gw.add_agent("bot");
    let http = client();

    let (status, doc) = problem(http.get(gw.agent("/echo/x")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(doc["type"], "https://midosoc.dev/problems/unauthenticated");

    let mut wrong = key.clone();
    wrong.pop();
    for bad in [wrong.as_str(), "mdsa_nope", gw.admin_token.as_str()] {
        let response = http.get(gw.agent("/echo/x")).bearer_auth(bad).send().await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(problem(response).await.0, 401);
    }
    let response = http.post(gw.agent("/v1/authorize")).body("{}").send().await.unwrap();
    assert_eq!(problem(response).await.0, 401);

    let ok = http.get(gw.agent("/echo/x")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn agent_key_and_cookies_never_reach_the_upstream_and_forwarding_headers_are_ours() {
    let upstream = echo_upstream().await;
    let gw = Gateway::start(&upstream_config("echo", "/echo/", &upstream.to_string(), ""));
    let key = gw.add_agent("bot");

    let response = client()
        .get(gw.agent("/echo/items?limit=2"))
        .bearer_auth(&key)
        .header("cookie", "session=agent-cookie")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "x-custom-hop")
        .header("x-custom-hop", "drop me")
        .header("x-kept", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-upstream-hop").is_none());
    assert!(response.headers().get("keep-alive").is_none());

    let seen: Value = response.json().await.unwrap();
    let headers = &seen["headers"];
    assert_eq!(seen["uri"], "/items?limit=2");
    assert!(headers.get("authorization").is_none(), "{headers}");
    assert!(headers.get("cookie").is_none(), "{headers}");
    assert!(headers.get("forwarded").is_none(), "{headers}");
    assert!(headers.get("x-custom-hop").is_none(), "{headers}");
    assert!(!headers.to_string().contains(&key));
    assert_eq!(headers["host"], upstream.to_string());
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], gw.agent_url.trim_start_matches("http://"));
    assert_eq!(headers["x-kept"], "kept");
}

#[tokio::test]
async fn upstream_can_receive_a_minted_token_instead_of_the_agent_key() {
    let upstream = echo_upstream().await;
    let gw = Gateway::start(&upstream_config(
        "echo",
        "/echo/",
        &upstream.to_string(),
        "mint_tokens = true\naudience = \"echo-api\"",
    ));
    let key = gw.add_agent("bot");
    let http = client();

    let seen: Value = http
        .get(gw.agent("/echo/items"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let authorization = seen["headers"]["authorization"].as_str().unwrap();
    let token = authorization.strip_prefix("Bearer ").unwrap();
    assert!(!token.starts_with("mdsa_"));
    let claims = jwt_claims(token);
    assert_eq!(claims["sub"], "bot");
    assert_eq!(claims["aud"], "echo-api");
    assert_eq!(claims["authorization_details"][0]["actions"][0], "read");

    // An approved request carries a token bound to exactly that action.
    let response = http
        .delete(gw.agent("/echo/items/3"))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let (status, doc) = problem(response).await;
    assert_eq!(status, 202);
    let id = doc["approval_id"].as_str().unwrap().to_owned();
    let decided = http
        .post(gw.review(&format!("/api/approvals/{id}/approve")))
        .bearer_auth(&gw.admin_token)
        .json(&json!({"reason": "stale item"}))
        .send()
        .await
        .unwrap();
    assert!(decided.status().is_success());
    let seen: Value = http
        .delete(gw.agent("/echo/items/3"))
        .bearer_auth(&key)
        .header("midosoc-approval", &id)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let authorization = seen["headers"]["authorization"].as_str().unwrap();
    let claims = jwt_claims(authorization.strip_prefix("Bearer ").unwrap());
    let detail = &claims["authorization_details"][0];
    assert_eq!(detail["actions"][0], "DELETE");
    assert_eq!(detail["approval_id"], id);
    // The token names the URL the upstream received, not the gateway path.
    assert_eq!(detail["locations"][0], format!("http://{upstream}/items/3"));
    assert_eq!(claims["aud"], "echo-api");

    let jwks: Value =
        http.get(gw.agent("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
}

/// The claims of a JWT, unverified (the issuer's own tests verify).
fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn agents_may_speak_http2_with_prior_knowledge_and_are_checked_the_same() {
    let upstream = echo_upstream().await;
    let gw = Gateway::start(&upstream_config("echo", "/echo/", &upstream.to_string(), ""));
    let key = gw.add_agent("bot");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let response = h2.get(gw.agent("/echo/items/7")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["uri"], "/items/7");
    assert_eq!(seen["headers"]["host"], upstream.to_string());
    assert_eq!(seen["headers"]["x-forwarded-host"], gw.agent_url.trim_start_matches("http://"));
    assert!(!seen.to_string().contains(&key));

    let (status, _) = problem(h2.get(gw.agent("/echo/items/7")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    let escaping = h2.get(gw.agent("/echo/a%5Cb")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(escaping.status(), 400);
}

#[tokio::test]
async fn unreachable_upstream_gets_502_and_slow_upstream_504_naming_it() {
    let upstream = echo_upstream().await;
    let dead = format!("127.0.0.1:{}", gateway::closed_port());
    let config = format!(
        "{}{}",
        upstream_config("dead-api", "/dead/", &dead, ""),
        upstream_config("echo", "/echo/", &upstream.to_string(), "")
    );
    let gw = Gateway::start(&config);
    let key = gw.add_agent("bot");
    let http = client();

    let response = http.get(gw.agent("/dead/x")).bearer_auth(&key).send().await.unwrap();
    let (status, doc) = problem(response).await;
    assert_eq!(status, 502);
    assert_eq!(doc["type"], "https://midosoc.dev/problems/upstream-unavailable");
    assert_eq!(doc["upstream"], "dead-api");
    assert!(!doc.to_string().contains(&dead), "the address stays internal: {doc}");

    let response = http.get(gw.agent("/echo/slow")).bearer_auth(&key).send().await.unwrap();
    let (status, doc) = problem(response).await;
    assert_eq!(status, 504);
    assert_eq!(doc["type"], "https://midosoc.dev/problems/upstream-timeout");
    assert_eq!(doc["upstream"], "echo");

    let metrics = http.get(gw.review("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("midosoc_upstream_errors_total"), "{metrics}");
    assert!(metrics.contains("kind=\"timeout\""), "{metrics}");
}

#[tokio::test]
async fn unknown_paths_and_authority_changing_paths_are_refused() {
    let upstream = echo_upstream().await;
    let gw = Gateway::start(&upstream_config("echo", "/echo/", &upstream.to_string(), ""));
    let key = gw.add_agent("bot");

    let response = client().get(gw.agent("/nowhere")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(problem(response).await.0, 404);
    // The review API does not exist on the agent side.
    let response = client().get(gw.agent("/api/approvals")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(problem(response).await.0, 404);

    for path in ["/echo//evil.example/x", "/echo/a@evil", "/echo/%2e%2e/x", "/echo/a%5Cb"] {
        let (status, body) = raw_request(
            &gw,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("forbidden-path"), "{path}: {body}");
    }
}

/// Sends raw bytes to the agent listener; returns the status and body.
fn raw_request(gw: &Gateway, bytes: &str) -> (u16, String) {
    let addr = gw.agent_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(bytes.as_bytes()).unwrap();
    let mut answer = Vec::new();
    // The gateway closes the connection after answering (`Connection:
    // close`, or a framing error).
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn request_with_both_content_length_and_transfer_encoding_is_rejected() {
    let upstream = echo_upstream().await;
    let gw = Gateway::start(&upstream_config("echo", "/echo/", &upstream.to_string(), ""));
    let key = gw.add_agent("bot");

    let smuggle = format!(
        "POST /echo/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    let (status, body) = raw_request(&gw, &smuggle);
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("smuggled"), "{body}");
}

#[tokio::test]
async fn oversize_bodies_get_413_on_the_proxy_and_the_action_api() {
    let upstream = echo_upstream().await;
    let config = format!(
        "[approval]\nbody_limit = 1024\n{}",
        upstream_config("echo", "/echo/", &upstream.to_string(), "")
    );
    let gw = Gateway::start(&config);
    let key = gw.add_agent("bot");
    let http = client();

    let big = "x".repeat(4096);
    let response =
        http.post(gw.agent("/echo/x")).bearer_auth(&key).body(big.clone()).send().await.unwrap();
    let (status, doc) = problem(response).await;
    assert_eq!(status, 413);
    assert_eq!(doc["type"], "https://midosoc.dev/problems/body-too-large");

    let huge = json!({"method": "POST", "url": "/x", "body": "y".repeat(64 * 1024)});
    let response =
        http.post(gw.agent("/v1/authorize")).bearer_auth(&key).json(&huge).send().await.unwrap();
    assert_eq!(problem(response).await.0, 413);
}

#[tokio::test]
async fn malformed_json_on_the_action_api_gets_400_problem() {
    let gw = Gateway::start("");
    let key = gw.add_agent("bot");
    let http = client();

    for body in [
        "{not json",
        "[]",
        "{\"method\": \"GET\"}",
        "{\"url\": \"/x\", \"method\": \"G ET\"}",
        "{\"method\":\"GET\",\"url\":\"/x\",\"extra\":1}",
    ] {
        let response =
            http.post(gw.agent("/v1/authorize")).bearer_auth(&key).body(body).send().await.unwrap();
        let (status, doc) = problem(response).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(doc["type"], "https://midosoc.dev/problems/invalid-json", "{body}");
    }
}

#[tokio::test]
async fn action_api_allows_reads_with_a_token_and_holds_deletes_for_a_person() {
    let gw = Gateway::start("[approval]\nwait_timeout = \"1s\"\n");
    let key = gw.add_agent("bot");
    let other = gw.add_agent("other-bot");
    let http = client();

    let read = json!({"method": "GET", "url": "https://api.example.com/v1/users?limit=5"});
    let response =
        http.post(gw.agent("/v1/authorize")).bearer_auth(&key).json(&read).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let allowed: Value = response.json().await.unwrap();
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["token_type"], "Bearer");
    assert_eq!(allowed["assessment"]["verdict"], "allow");
    // SECURITY: the reasoning stays with the analysts.
    assert!(allowed["assessment"].get("rationale").is_none());
    assert!(allowed["assessment"].get("markers").is_none());
    let claims = jwt_claims(allowed["token"].as_str().unwrap());
    assert_eq!(claims["sub"], "bot");

    let delete = json!({
        "method": "DELETE",
        "url": "https://api.github.com/repos/acme/payments",
        "intent": "clean up an old repository",
    });
    let response = http
        .post(gw.agent("/v1/authorize"))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .json(&delete)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let pending: Value = response.json().await.unwrap();
    let id = pending["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(location, gw.agent(&format!("/v1/approvals/{id}")));

    let mine: Value =
        http.get(&location).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(mine["status"], "pending");
    assert_eq!(mine["method"], "DELETE");
    assert!(mine.get("assessment").is_none());

    // SECURITY: another agent cannot see it, nor tell it exists.
    let response = http.get(&location).bearer_auth(&other).send().await.unwrap();
    let (status, doc) = problem(response).await;
    assert_eq!(status, 404);
    assert_eq!(doc["type"], "https://midosoc.dev/problems/unknown-approval");
    for bad in ["not-an-id", "0190b5f0-0000-7000-8000-000000000000"] {
        let response = http
            .get(gw.agent(&format!("/v1/approvals/{bad}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(problem(response).await.0, 404, "{bad}");
    }
}

#[tokio::test]
async fn approved_action_api_request_returns_a_token_bound_to_the_action() {
    let gw = Gateway::start("");
    let key = gw.add_agent("bot");
    let http = client();

    let delete = json!({"method": "DELETE", "url": "https://api.github.com/repos/acme/old"});
    let waiting = {
        let http = http.clone();
        let url = gw.agent("/v1/authorize");
        let key = key.clone();
        let delete = delete.clone();
        tokio::spawn(async move { http.post(url).bearer_auth(key).json(&delete).send().await })
    };

    let id = wait_for_pending(&gw, &http).await;
    let decided = http
        .post(gw.review(&format!("/api/approvals/{id}/approve")))
        .bearer_auth(&gw.admin_token)
        .json(&json!({"reason": "old repository, agreed with the owner"}))
        .send()
        .await
        .unwrap();
    assert!(decided.status().is_success(), "{}", decided.text().await.unwrap());

    let response = waiting.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["decision"], "approved");
    assert_eq!(body["approval_id"], id);
    let claims = jwt_claims(body["token"].as_str().unwrap());
    let detail = &claims["authorization_details"][0];
    assert_eq!(detail["actions"][0], "DELETE");
    assert_eq!(detail["locations"][0], "https://api.github.com/repos/acme/old");
    assert_eq!(detail["approval_id"], id);
    assert!(claims["act"]["sub"].as_str().is_some());
}

/// Waits until the review API lists one pending approval; returns its id.
async fn wait_for_pending(gw: &Gateway, http: &reqwest::Client) -> String {
    // The stream stays open: no overall timeout on this client.
    let mut events = reqwest::Client::new()
        .get(gw.review("/api/events"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    loop {
        let list: Value = http
            .get(gw.review("/api/approvals?status=pending"))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = list["approvals"].as_array().cloned().unwrap_or_default();
        if let Some(first) = items.first() {
            return first["id"].as_str().unwrap().to_owned();
        }
        // Nothing yet: wait for the next event (or keep-alive) and look again.
        tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("a pending approval is announced")
            .unwrap()
            .expect("event stream stays open");
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_are_on_the_right_listeners() {
    let gw = Gateway::start("");
    let http = client();
    for base in [&gw.agent_url, &gw.review_url] {
        let health = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        let ready: Value =
            http.get(format!("{base}/readyz")).send().await.unwrap().json().await.unwrap();
        assert_eq!(ready["status"], "ok");
    }
    let metrics = http.get(gw.review("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("midosoc_pending_approvals"));

    // Metrics are not on the agent side: without a key it is a 401, with
    // one it is no route.
    let response = http.get(gw.agent("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn config_with_a_misspelt_key_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("midosoc.toml");
    std::fs::write(&file, "[agent]\nlisten_address = \"127.0.0.1:9\"\n").unwrap();
    let path = file.to_str().unwrap();

    for args in [vec!["config", "check", "--config", path], vec!["serve", "--config", path]] {
        let output = gateway::midosoc(&args, dir.path());
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].contains("unknown key `agent.listen_address`"), "{stderr}");
        assert!(lines[0].contains("`listen`"), "{stderr}");
    }

    let output = gateway::midosoc(&["config", "example"], dir.path());
    assert!(output.status.success());
    std::fs::write(&file, &output.stdout).unwrap();
    let output = gateway::midosoc(&["config", "check", "--config", path], dir.path());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn environment_variables_override_the_file_and_typos_there_are_errors_too() {
    let dir = tempfile::tempdir().unwrap();
    let run = |var: &str, value: &str| {
        std::process::Command::new(support::midosoc_binary())
            .args(["config", "check"])
            .env(var, value)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let output = run("MIDOSOC_AGENT__LISTEN", "127.0.0.1:9999");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("127.0.0.1:9999"));

    let output = run("MIDOSOC_AGENT__LISTN", "127.0.0.1:9999");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agent.listn") && stderr.contains("MIDOSOC_AGENT__LISTN"), "{stderr}");
}

#[tokio::test]
async fn zero_config_start_prints_the_listeners_and_a_first_analyst_token_once() {
    let mut gw = Gateway::start("");
    assert!(gw.admin_token.starts_with("mdsr_"));
    gw.terminate();

    // A second start finds the analyst and prints no new token.
    let analysts = gw.cli(&["analyst", "list"]);
    let list = String::from_utf8_lossy(&analysts.stdout);
    assert!(list.contains("admin\tadmin"), "{list}");
}

#[tokio::test]
async fn shutdown_answers_held_requests_503_with_their_approval_id() {
    let mut gw = Gateway::start("");
    let key = gw.add_agent("bot");
    let http = client();

    let delete = json!({"method": "DELETE", "url": "https://api.github.com/repos/acme/old"});
    let waiting = {
        let (http, url, key) = (http.clone(), gw.agent("/v1/authorize"), key.clone());
        tokio::spawn(async move { http.post(url).bearer_auth(key).json(&delete).send().await })
    };
    let id = wait_for_pending(&gw, &http).await;

    let status = tokio::task::spawn_blocking(move || gw.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");

    let response = waiting.await.unwrap().unwrap();
    let (status, doc) = problem(response).await;
    assert_eq!(status, 503);
    assert_eq!(doc["approval_id"], id);
}

#[tokio::test]
async fn with_a_sqlite_store_a_held_request_survives_a_restart_and_runs_once() {
    let upstream = echo_upstream().await;
    let db = tempfile::tempdir().unwrap();
    let config = format!(
        "[store]\nurl = \"sqlite://{}/approvals.db\"\n{}",
        db.path().display(),
        upstream_config("echo", "/echo/", &upstream.to_string(), "")
    );
    let mut gw = Gateway::start(&config);
    let key = gw.add_agent("bot");
    let http = client();

    let response = http
        .delete(gw.agent("/echo/items/7"))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let (status, doc) = problem(response).await;
    assert_eq!(status, 202);
    let id = doc["approval_id"].as_str().unwrap().to_owned();

    // The agent sees its approval by the path it used, not the upstream's
    // address.
    let mine: Value = http
        .get(gw.agent(&format!("/v1/approvals/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["url"], "/echo/items/7");

    gw.restart();
    let metrics = http.get(gw.review("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("midosoc_pending_approvals 1\n"), "{metrics}");

    let decided = http
        .post(gw.review(&format!("/api/approvals/{id}/approve")))
        .bearer_auth(&gw.admin_token)
        .json(&json!({"reason": "item 7 is a duplicate"}))
        .send()
        .await
        .unwrap();
    assert!(decided.status().is_success(), "{}", decided.text().await.unwrap());

    let resume =
        || http.delete(gw.agent("/echo/items/7")).bearer_auth(&key).header("midosoc-approval", &id);
    let response = resume().send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["method"], "DELETE");
    assert_eq!(seen["uri"], "/items/7");
    assert!(seen["headers"].get("midosoc-approval").is_none());
    // Without `mint_tokens`, the token minted for the approval stays here.
    assert!(seen["headers"].get("authorization").is_none());

    let (status, doc) = problem(resume().send().await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(doc["type"], "https://midosoc.dev/problems/already-executed");
}

#[tokio::test]
async fn protected_api_accepts_only_what_passed_the_gateway() {
    // The API's address goes into the gateway's configuration, and the
    // gateway's keys into the API: bind first, serve once both are known.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = Gateway::start(&upstream_config(
        "items",
        "/api/",
        &addr.to_string(),
        "mint_tokens = true\naudience = \"items-api\"",
    ));
    let key = gw.add_agent("bot");
    let http = client();

    let jwks: midosoc_core::token::Jwks =
        http.get(gw.agent("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let api = axum::Router::new()
        .route("/items", axum::routing::get(|| async { "[1,2,3]" }))
        .route("/items/{id}", axum::routing::delete(|| async { "deleted" }))
        .layer(midosoc_tower::VerifyTokenLayer::new(jwks, gw.agent_url.clone(), "items-api"));
    tokio::spawn(async move { axum::serve(listener, api).await });

    // Straight to the API, without the gateway: refused.
    let direct = http.get(format!("http://{addr}/items")).send().await.unwrap();
    assert_eq!(direct.status(), 401);

    // Through the gateway: a read passes with its read-scoped token.
    let read = http.get(gw.agent("/api/items")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.text().await.unwrap(), "[1,2,3]");

    // A delete is held, approved, and then accepted by the API.
    let response = http
        .delete(gw.agent("/api/items/2"))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let (status, doc) = problem(response).await;
    assert_eq!(status, 202);
    let id = doc["approval_id"].as_str().unwrap().to_owned();
    let decided = http
        .post(gw.review(&format!("/api/approvals/{id}/approve")))
        .bearer_auth(&gw.admin_token)
        .json(&json!({"reason": "duplicate item"}))
        .send()
        .await
        .unwrap();
    assert!(decided.status().is_success());
    let deleted = http
        .delete(gw.agent("/api/items/2"))
        .bearer_auth(&key)
        .header("midosoc-approval", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(deleted.text().await.unwrap(), "deleted");
}
