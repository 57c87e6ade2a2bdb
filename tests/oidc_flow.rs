//! End-to-end: analysts sign in to the real `midosoc serve` through a real
//! OpenID provider (`tests/oidc/provider.mjs`), driven over HTTP as a
//! browser would be: a cookie jar, the provider's development login form,
//! and every redirect read rather than followed blindly.
//!
//! The gateway mints upstream tokens from the same provider (`[issuer]
//! kind = "oauth2"`). The suite checks that an approver signs in with the
//! right role and decides under their provider identity, that the upstream
//! gets a provider token for its audience, that viewers and accounts
//! without a role cannot decide, that replayed or forged callbacks start
//! no session, that issuer failures leave the approval approved and not
//! executed, and that no token or secret reaches the gateway's log.
//!
//! Needs `node` and `npm ci --prefix tests/oidc`; skips without them unless
//! `MIDOSOC_REQUIRE_PEERS=1`.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/oidc.rs"]
mod oidc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use oidc::{IssuerSetup, Log, OidcGateway, Provider};
use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use reqwest::{Client, Response, StatusCode, Url};
use serde_json::{Value, json};

const SUITE: &str = "oidc_flow";

/// The longest any one scenario may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A provider, a gateway using it, and the upstream behind the gateway.
struct Setup {
    provider: Provider,
    gateway: OidcGateway,
    upstream: Log,
}

async fn setup(issuer: IssuerSetup, log_filter: &str) -> Option<Setup> {
    let node = oidc::node_with_provider(SUITE)?;
    let review_port = oidc::free_port();
    let provider = Provider::start(&node, review_port);
    let (upstream_addr, upstream) =
        oidc::verifying_upstream(provider.issuer.clone(), provider.jwks().await).await;
    let gateway = OidcGateway::start(&provider, review_port, upstream_addr, issuer, log_filter);
    Some(Setup { provider, gateway, upstream })
}

/// A browser: cookies kept, redirects never followed on their own.
struct Browser {
    client: Client,
    jar: Arc<Jar>,
}

/// What one sign-in went through.
struct SignIn {
    /// The callback URL the provider sent the browser to.
    callback: Url,
    /// The gateway's answer to it.
    answer: Response,
    /// The pre-login cookie's `Set-Cookie`.
    login_cookie: String,
}

impl Browser {
    fn new() -> Self {
        let jar = Arc::new(Jar::default());
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .cookie_provider(jar.clone())
            .timeout(TEST_TIMEOUT)
            .build()
            .unwrap();
        Self { client, jar }
    }

    /// Signs in at the provider as `account`, up to and including the
    /// gateway's answer to the callback.
    async fn sign_in(&self, gw: &OidcGateway, account: &str) -> SignIn {
        let start = self.client.get(gw.review("/auth/login")).send().await.unwrap();
        assert_eq!(start.status(), StatusCode::SEE_OTHER);
        let login_cookie = set_cookie(start.headers(), "midosoc_login").expect("pre-login cookie");
        let callback = self.authorize(gw, location(&start), account).await;
        let answer = self.client.get(callback.clone()).send().await.unwrap();
        SignIn { callback, answer, login_cookie }
    }

    /// Follows the provider's pages from `url` until it sends the browser
    /// back to the gateway's callback; returns that URL.
    async fn authorize(&self, gw: &OidcGateway, url: Url, account: &str) -> Url {
        let callback = gw.review("/auth/callback");
        let mut next = self.client.get(url).send().await.unwrap();
        for _ in 0..20 {
            if next.status().is_redirection() {
                let target = location(&next);
                if target.as_str().starts_with(&callback) {
                    return target;
                }
                next = self.client.get(target).send().await.unwrap();
                continue;
            }
            assert_eq!(next.status(), StatusCode::OK, "a provider page");
            let page_url = next.url().clone();
            let page = next.text().await.unwrap();
            let action = page_url.join(&form_action(&page)).unwrap();
            let form: Vec<(&str, &str)> = if page.contains("name=\"login\"") {
                vec![("prompt", "login"), ("login", account), ("password", "x")]
            } else {
                vec![("prompt", "consent")]
            };
            next = self.client.post(action).form(&form).send().await.unwrap();
        }
        panic!("the provider never sent the browser back");
    }

    /// The cookie `name` the jar holds for the gateway.
    fn cookie(&self, gw: &OidcGateway, name: &str) -> Option<String> {
        let url = Url::parse(&gw.review("/")).unwrap();
        let header = self.jar.cookies(&url)?;
        header.to_str().unwrap().split("; ").find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
    }

    /// `GET /api/session`: status and body.
    async fn session(&self, gw: &OidcGateway) -> (StatusCode, Value) {
        let answer = self.client.get(gw.review("/api/session")).send().await.unwrap();
        let status = answer.status();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// Approves `id` as a browser would: CSRF token and `Origin`.
    async fn approve(&self, gw: &OidcGateway, id: &str, csrf: &str) -> (StatusCode, Value) {
        let answer = self
            .client
            .post(gw.review(&format!("/api/approvals/{id}/approve")))
            .header("x-csrf-token", csrf)
            .header("origin", &gw.review_url)
            .json(&json!({ "reason": "checked with the owner" }))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        (status, answer.json().await.unwrap_or(Value::Null))
    }
}

fn location(response: &Response) -> Url {
    let value = response.headers()[LOCATION].to_str().unwrap();
    response.url().join(value).unwrap()
}

fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn form_action(page: &str) -> String {
    let start = page.find("action=\"").expect("a form") + "action=\"".len();
    let end = page[start..].find('"').unwrap() + start;
    page[start..end].replace("&amp;", "&")
}

fn query(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Sends a destructive agent request in the background; the gateway holds
/// it until an analyst decides.
fn held_request(gw: &OidcGateway, key: &str) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let url = gw.agent("/things/v1/items/7");
    let key = key.to_owned();
    tokio::spawn(async move {
        let client = Client::builder().timeout(TEST_TIMEOUT).build().unwrap();
        let answer = client
            .delete(url)
            .bearer_auth(key)
            .json(&json!({ "reason": "cleanup" }))
            .send()
            .await
            .unwrap();
        let status = answer.status();
        (status, answer.json().await.unwrap_or(Value::Null))
    })
}

/// Waits until the gateway lists a pending approval; returns its id.
async fn pending_approval(gw: &OidcGateway, analyst_token: &str) -> String {
    let client = Client::new();
    loop {
        let list: Value = client
            .get(gw.review("/api/approvals?status=pending"))
            .bearer_auth(analyst_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = list["approvals"][0]["id"].as_str() {
            return id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /api/approvals/{id}` with a bearer analyst token.
async fn approval(gw: &OidcGateway, analyst_token: &str, id: &str) -> Value {
    Client::new()
        .get(gw.review(&format!("/api/approvals/{id}")))
        .bearer_auth(analyst_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn approver_signs_in_decides_as_their_provider_identity_and_nothing_secret_is_logged() {
    let Some(setup) = setup(IssuerSetup::Working, "trace").await else { return };
    tokio::time::timeout(TEST_TIMEOUT, approver_scenario(setup)).await.expect("in time");
}

async fn approver_scenario(mut s: Setup) {
    let gw = &s.gateway;
    let key = gw.add_agent("cleanup-bot");
    let browser = Browser::new();

    // A session id planted before sign-in must not survive it.
    let review = Url::parse(&gw.review("/")).unwrap();
    browser.jar.add_cookie_str("midosoc_session=planted-by-someone; Path=/", &review);
    let methods: Value =
        browser.client.get(gw.review("/auth/methods")).send().await.unwrap().json().await.unwrap();
    assert_eq!(methods["single_sign_on"]["url"], "/auth/login");

    let sign_in = browser.sign_in(gw, "approver-ann").await;
    let cookie = &sign_in.login_cookie;
    for part in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=600"] {
        assert!(cookie.contains(part), "pre-login cookie lacks {part}: {cookie}");
    }
    assert_eq!(sign_in.answer.status(), StatusCode::SEE_OTHER);
    assert_eq!(sign_in.answer.headers()[LOCATION], "/");
    let cleared = set_cookie(sign_in.answer.headers(), "midosoc_login").unwrap();
    assert!(cleared.contains("Max-Age=0"), "pre-login cookie cleared: {cleared}");
    let session_id = browser.cookie(gw, "midosoc_session").expect("a session cookie");
    assert_ne!(session_id, "planted-by-someone", "session id rotated at sign-in");

    let (status, me) = browser.session(gw).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["role"], "approver");
    assert_eq!(me["can_decide"], true);
    assert_eq!(me["analyst"]["id"], "approver-ann", "the provider's sub");
    assert_eq!(me["analyst"]["name"], "approver-ann");
    let csrf = me["csrf_token"].as_str().unwrap().to_owned();

    // The agent's request is held; the analyst approves it in the browser.
    let admin = gw.add_analyst("ops-admin", "admin");
    let agent = held_request(gw, &key);
    let id = pending_approval(gw, &admin).await;
    let (status, decided) = browser.approve(gw, &id, &csrf).await;
    assert_eq!(status, StatusCode::OK, "{decided}");
    let (status, answer) = agent.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");

    // The decision and the audit trail name the provider's subject.
    let shown = approval(gw, &admin, &id).await;
    assert_eq!(shown["decision"]["analyst"]["id"], "approver-ann", "{shown}");
    assert_eq!(shown["decision"]["analyst"]["name"], "approver-ann");
    assert!(shown["executed_at"].is_string(), "{shown}");
    let audit: Value = Client::new()
        .get(gw.review("/api/audit"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let decided = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "decided" && e["approval_id"] == id.as_str())
        .expect("a decided entry");
    assert_eq!(decided["analyst"]["id"], "approver-ann");

    // The upstream got a token minted by the provider for its audience.
    let received = s.upstream.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].line, "DELETE /v1/items/7");
    let claims = received[0].claims.as_ref().expect("the token verifies against the JWKS");
    assert_eq!(claims["aud"], oidc::API_AUDIENCE);
    assert_eq!(claims["iss"], s.provider.issuer.as_str());
    assert_eq!(claims["client_id"], "midosoc-gateway");
    let access_token = received[0].token.clone().unwrap();

    // Sign-out ends the session here and names it at the provider.
    let out = browser
        .client
        .delete(gw.review("/api/session"))
        .header("x-csrf-token", &csrf)
        .header("origin", &gw.review_url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::OK);
    let out: Value = out.json().await.unwrap();
    let end_session = Url::parse(out["end_session_url"].as_str().unwrap()).unwrap();
    assert!(end_session.as_str().starts_with(&s.provider.issuer));
    let params = query(&end_session);
    assert_eq!(params["post_logout_redirect_uri"], gw.review("/"));
    assert_eq!(params["client_id"], "midosoc-dashboard");
    let id_token = params["id_token_hint"].clone();
    assert_eq!(id_token.split('.').count(), 3, "an ID token as the hint");
    assert_eq!(browser.session(gw).await.0, StatusCode::UNAUTHORIZED);

    // Nothing secret reached the log, even at trace level.
    let callback = query(&sign_in.callback);
    let log = s.gateway.stop();
    assert!(log.contains("analyst signed in"), "the log is captured");
    assert!(log.contains("TRACE"), "the log was written at trace level");
    let secrets = [
        ("the ID token", id_token.as_str()),
        ("the upstream access token", access_token.as_str()),
        ("the authorization code", callback["code"].as_str()),
        ("the state", callback["state"].as_str()),
        ("the session id", session_id.as_str()),
        ("the dashboard client secret", oidc::DASHBOARD_SECRET),
        ("the gateway client secret", oidc::GATEWAY_SECRET),
        ("the agent key", key.as_str()),
        ("the analyst token", admin.as_str()),
        ("the CSRF token", csrf.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(!log.contains(secret), "{what} appears in the gateway's log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn viewer_signs_in_but_the_api_refuses_their_decision() {
    let Some(s) = setup(IssuerSetup::Working, "warn,midosoc=info").await else { return };
    let gw = &s.gateway;
    let key = gw.add_agent("cleanup-bot");
    let admin = gw.add_analyst("ops-admin", "admin");

    let browser = Browser::new();
    let sign_in = browser.sign_in(gw, "viewer-vic").await;
    assert_eq!(sign_in.answer.status(), StatusCode::SEE_OTHER);
    let (_, me) = browser.session(gw).await;
    assert_eq!((me["role"].as_str(), me["can_decide"].as_bool()), (Some("viewer"), Some(false)));

    let agent = held_request(gw, &key);
    let id = pending_approval(gw, &admin).await;
    let csrf = me["csrf_token"].as_str().unwrap();
    let (status, problem) = browser.approve(gw, &id, csrf).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["type"], "https://midosoc.dev/problems/role-cannot-decide");
    assert_eq!(approval(gw, &admin, &id).await["status"], "pending");
    agent.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_without_a_mapped_role_gets_a_page_and_no_session() {
    let Some(s) = setup(IssuerSetup::Working, "warn,midosoc=info").await else { return };
    let gw = &s.gateway;

    let browser = Browser::new();
    let sign_in = browser.sign_in(gw, "mallory").await;
    assert_eq!(sign_in.answer.status(), StatusCode::FORBIDDEN);
    let page = sign_in.answer.text().await.unwrap();
    assert!(page.contains("No access"), "{page}");
    assert!(page.contains("no Midosoc role"), "{page}");
    assert_eq!(browser.session(gw).await.0, StatusCode::UNAUTHORIZED);
    assert!(browser.cookie(gw, "midosoc_session").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_foreign_or_forged_callbacks_start_no_session() {
    let Some(s) = setup(IssuerSetup::Working, "warn,midosoc=info").await else { return };
    let gw = &s.gateway;

    // Replayed: the same callback a second time, in the same browser.
    let browser = Browser::new();
    let first = browser.sign_in(gw, "approver-ann").await;
    assert_eq!(first.answer.status(), StatusCode::SEE_OTHER);
    let replay = browser.client.get(first.callback.clone()).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert!(replay.text().await.unwrap().contains("already used"));

    // Foreign: a callback meant for another browser (no pre-login cookie
    // of its own), as an attacker forcing their sign-in on a victim would.
    let attacker = Browser::new();
    let start = attacker.client.get(gw.review("/auth/login")).send().await.unwrap();
    let stolen = attacker.authorize(gw, location(&start), "admin-eve").await;
    let victim = Browser::new();
    let planted = victim.client.get(stolen.clone()).send().await.unwrap();
    assert_eq!(planted.status(), StatusCode::BAD_REQUEST);
    assert_eq!(victim.session(gw).await.0, StatusCode::UNAUTHORIZED);

    // Forged: the right browser, but `iss` names another issuer.
    let browser = Browser::new();
    let start = browser.client.get(gw.review("/auth/login")).send().await.unwrap();
    let mut callback = browser.authorize(gw, location(&start), "approver-ann").await;
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "iss" { "https://evil.example".into() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    callback.query_pairs_mut().clear().extend_pairs(pairs);
    let forged = browser.client.get(callback).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    assert_eq!(browser.session(gw).await.0, StatusCode::UNAUTHORIZED);

    // The attacker's own callback, used by the attacker, still works:
    // nothing above spent it.
    let own = attacker.client.get(stolen).send().await.unwrap();
    assert_eq!(own.status(), StatusCode::SEE_OTHER);
    assert_eq!(attacker.session(gw).await.1["role"], "admin");
}

/// The agent's answer and the approval afterwards, for an issuer that
/// fails as `setup` says.
async fn issuer_failure(setup_kind: IssuerSetup) -> Option<(Value, Value, usize)> {
    let s = setup(setup_kind, "warn,midosoc=info").await?;
    let gw = &s.gateway;
    let key = gw.add_agent("cleanup-bot");
    let admin = gw.add_analyst("ops-admin", "admin");

    let agent = held_request(gw, &key);
    let id = pending_approval(gw, &admin).await;
    let approved = Client::new()
        .post(gw.review(&format!("/api/approvals/{id}/approve")))
        .bearer_auth(&admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), StatusCode::OK);

    let (status, problem) = agent.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["approval_id"], id.as_str());
    let after = approval(gw, &admin, &id).await;
    let reached = s.upstream.lock().unwrap().len();
    Some((problem, after, reached))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_client_secret_tells_the_agent_and_leaves_the_approval_retryable() {
    let run = tokio::time::timeout(TEST_TIMEOUT, issuer_failure(IssuerSetup::WrongSecret));
    let Some((problem, after, reached)) = run.await.expect("in time") else { return };
    assert_eq!(problem["cause"], "issuer_rejected_client", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("client credentials"));
    assert_eq!(after["status"], "approved");
    assert!(after.get("executed_at").is_none(), "not executed: {after}");
    assert_eq!(reached, 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unauthorised_audience_tells_the_agent_and_leaves_the_approval_retryable() {
    let run = tokio::time::timeout(TEST_TIMEOUT, issuer_failure(IssuerSetup::AudienceNotAllowed));
    let Some((problem, after, reached)) = run.await.expect("in time") else { return };
    assert_eq!(problem["cause"], "issuer_refused_audience", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("audience"));
    assert_eq!(after["status"], "approved");
    assert!(after.get("executed_at").is_none(), "not executed: {after}");
    assert_eq!(reached, 0, "nothing reached the upstream");
}
