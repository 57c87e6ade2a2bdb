//! End-to-end: an analyst signs in to the review dashboard through a real
//! OpenID provider in real headless Chromium, approves a held request, and
//! the upstream receives a token minted by that provider.
//!
//! The test starts the provider (`node tests/oidc/provider.mjs`), an
//! upstream that verifies bearer tokens against the provider's JWKS, and
//! the real `midosoc serve` configured for single sign-on (`[review.oidc]`)
//! and the OAuth 2.0 issuer (`[issuer] kind = "oauth2"`). It then runs
//! `tests/browser/oidc.mjs` (playwright-core driving Debian's Chromium),
//! which takes the dashboard's sign-in button, signs in as
//! `approver-ann` on the provider's login page and says `READY` once the
//! dashboard shows the approver role. The test, playing the agent, sends a
//! destructive request; the script approves it and says `DECIDED`; the
//! agent's request completes, and the upstream has received a token for
//! its audience, signed by the provider. The script finally signs out
//! through the provider's end-session page and says `DONE`.
//!
//! Needs `chromium`, `node`, `npm ci --prefix tests/browser` and
//! `npm ci --prefix tests/oidc`; skips without them unless
//! `MIDOSOC_REQUIRE_PEERS=1`.

#[path = "support/mod.rs"]
#[allow(unreachable_pub, reason = "shared helpers are `pub` for every suite")]
mod support;

#[path = "common/oidc.rs"]
mod oidc;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use oidc::{IssuerSetup, OidcGateway, Provider};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

const SUITE: &str = "oidc_browser";

/// The whole conversation between agent, gateway, provider and browser.
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// The peers this suite needs, or `None` after reporting the skip.
fn peers() -> Option<(PathBuf, PathBuf)> {
    let node = oidc::node_with_provider(SUITE)?;
    let Some(chromium) = support::find_program("chromium", "MIDOSOC_CHROMIUM") else {
        support::skip(SUITE, "chromium", "not on PATH (apt-get install chromium)");
        return None;
    };
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        support::skip(SUITE, "playwright-core", "run `npm ci --prefix tests/browser`");
        return None;
    }
    Some((chromium, node))
}

/// Reads the script's lines until `expected`, echoing the others.
async fn expect_line(lines: &mut Lines<BufReader<ChildStdout>>, expected: &str) {
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.trim() == expected {
            return;
        }
        eprintln!("oidc.mjs: {line}");
    }
    panic!("oidc.mjs ended before saying {expected} (its error is above)");
}

#[tokio::test(flavor = "multi_thread")]
async fn analyst_signs_in_with_the_provider_and_approves_with_a_provider_minted_token() {
    let Some((chromium, node)) = peers() else {
        return;
    };
    tokio::time::timeout(TEST_TIMEOUT, run(chromium, node))
        .await
        .expect("the browser test finished in time");
}

async fn run(chromium: PathBuf, node: PathBuf) {
    let review_port = oidc::free_port();
    let provider = Provider::start(&node, review_port);
    let (upstream, received) =
        oidc::verifying_upstream(provider.issuer.clone(), provider.jwks().await).await;
    let mut gw = OidcGateway::start(
        &provider,
        review_port,
        upstream,
        IssuerSetup::Working,
        "warn,midosoc=info",
    );
    let key = gw.add_agent("cleanup-bot");

    let mut script = tokio::process::Command::new(node)
        .arg("oidc.mjs")
        .current_dir(browser_dir())
        .env("MIDOSOC_REVIEW_URL", gw.review("/"))
        .env("MIDOSOC_PROVIDER_URL", &provider.issuer)
        .env("MIDOSOC_ACCOUNT", "approver-ann")
        .env("MIDOSOC_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();

    // Signed in and live: only now does the agent act.
    expect_line(&mut lines, "READY").await;
    let url = gw.agent("/things/v1/items/7");
    let agent = tokio::spawn(async move {
        let answer = reqwest::Client::new()
            .delete(url)
            .bearer_auth(key)
            .json(&json!({ "reason": "cleanup" }))
            .send()
            .await
            .expect("the gateway answers the agent");
        let status = answer.status().as_u16();
        (status, answer.json::<Value>().await.unwrap_or(Value::Null))
    });

    expect_line(&mut lines, "DECIDED").await;
    let (status, body) = agent.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done"], "DELETE /v1/items/7");

    // The upstream got a token minted by the provider for its audience,
    // and verified it against the provider's JWKS.
    let seen = received.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let claims = seen[0].claims.as_ref().expect("the provider's token verifies");
    assert_eq!(claims["aud"], oidc::API_AUDIENCE);
    assert_eq!(claims["iss"], provider.issuer.as_str());
    assert_eq!(claims["client_id"], "midosoc-gateway");

    expect_line(&mut lines, "DONE").await;
    let status = script.wait().await.unwrap();
    assert!(status.success(), "oidc.mjs failed: {status}");

    let log = gw.stop();
    assert!(log.contains("analyst signed in with the identity provider"), "{log}");
    assert!(!log.contains(seen[0].token.as_deref().unwrap()), "access token logged");
}
