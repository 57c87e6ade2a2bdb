//! Tests of sign-in with an OpenID provider: the configuration and role
//! mapping on their own, then the whole flow against the real test
//! provider (`tests/oidc/provider.mjs`), with the ID tokens it mints
//! replayed, tampered with and checked against the wrong nonce.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;

// ---- Configuration and roles ----------------------------------------------

fn secret_file() -> (tempfile::TempDir, SecretSource) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "dashboard-secret\n").unwrap();
    (dir, SecretSource { env: None, file: Some(path) })
}

fn config(issuer: &str, client_id: &str, secret: SecretSource) -> OidcConfig {
    OidcConfig {
        issuer: issuer.to_owned(),
        client_id: client_id.to_owned(),
        client_secret: secret,
        client_auth: OidcClientAuth::default(),
        scopes: default_scopes(),
        redirect_url: None,
        post_logout_redirect_url: None,
        display_name: default_display_name(),
        roles: RoleMapping {
            claim: Some(ROLES_CLAIM.to_owned()),
            viewer: vec!["viewer".into()],
            approver: vec!["approver".into()],
            admin: vec!["admin".into()],
            email_domains: EmailDomains::default(),
        },
    }
}

const ROLES_CLAIM: &str = "https://midosoc.dev/roles";

/// Claims as a provider would send them, for the role mapping alone.
fn claims(extra: Value) -> IdTokenClaims<ExtraClaims, CoreGenderClaim> {
    let mut document = json!({
        "iss": "https://login.example/",
        "sub": "auth0|42",
        "aud": "dash",
        "exp": 4_000_000_000u64,
        "iat": 1_700_000_000u64,
    });
    if let (Some(doc), Value::Object(extra)) = (document.as_object_mut(), extra) {
        doc.extend(extra);
    }
    serde_json::from_value(document).unwrap()
}

fn role(mapping: &RoleMapping, extra: Value) -> Option<Role> {
    mapping.role_for(&SignInClaims { claims: &claims(extra) })
}

#[test]
fn the_most_powerful_matching_role_wins_and_no_match_means_no_role() {
    let (_dir, secret) = secret_file();
    let mapping = config("https://login.example/", "dash", secret).roles;
    let cases = [
        (json!({ ROLES_CLAIM: ["viewer"] }), Some(Role::Viewer)),
        (json!({ ROLES_CLAIM: ["viewer", "approver"] }), Some(Role::Approver)),
        (json!({ ROLES_CLAIM: ["approver", "admin"] }), Some(Role::Admin)),
        (json!({ ROLES_CLAIM: "approver" }), Some(Role::Approver)),
        (json!({ ROLES_CLAIM: [] }), None),
        (json!({ ROLES_CLAIM: ["Approver", "root"] }), None),
        (json!({ ROLES_CLAIM: { "approver": true } }), None),
        (json!({ "roles": ["admin"] }), None),
        (json!({}), None),
    ];
    for (extra, expected) in cases {
        assert_eq!(role(&mapping, extra.clone()), expected, "{extra}");
    }
}

#[test]
fn email_domains_count_only_when_the_provider_verified_the_address() {
    let mapping = RoleMapping {
        email_domains: EmailDomains {
            viewer: vec!["example.com".into()],
            approver: vec!["sec.example.com".into()],
            admin: Vec::new(),
        },
        ..RoleMapping::default()
    };
    let cases = [
        (json!({ "email": "ann@example.com", "email_verified": true }), Some(Role::Viewer)),
        (json!({ "email": "bo@SEC.example.com", "email_verified": true }), Some(Role::Approver)),
        (json!({ "email": "ann@example.com", "email_verified": false }), None),
        (json!({ "email": "ann@example.com" }), None),
        (json!({ "email": "ann@example.com.evil", "email_verified": true }), None),
        (json!({ "email": "ann@notexample.com", "email_verified": true }), None),
    ];
    for (extra, expected) in cases {
        assert_eq!(role(&mapping, extra.clone()), expected, "{extra}");
    }
}

#[test]
fn readable_name_prefers_name_then_email_then_username_then_sub() {
    let name = |extra| SignInClaims { claims: &claims(extra) }.readable_name();
    let all = json!({ "name": "Ann Lee", "email": "ann@example.com", "preferred_username": "ann" });
    assert_eq!(name(all), "Ann Lee");
    assert_eq!(
        name(json!({ "email": "ann@example.com", "preferred_username": "ann" })),
        "ann@example.com"
    );
    assert_eq!(name(json!({ "preferred_username": "ann" })), "ann");
    assert_eq!(name(json!({})), "auth0|42");
}

#[test]
fn configuration_mistakes_name_the_key() {
    let (_dir, secret) = secret_file();
    let good = config("https://login.example/", "dash", secret);
    assert!(good.check().is_ok());

    let mut cases: Vec<(OidcConfig, &str)> = Vec::new();
    let mut c = good.clone();
    c.issuer = "http://login.example/".into();
    cases.push((c, "review.oidc.issuer"));
    let mut c = good.clone();
    c.issuer = "not a url".into();
    cases.push((c, "review.oidc.issuer"));
    let mut c = good.clone();
    c.client_id = String::new();
    cases.push((c, "review.oidc.client_id"));
    let mut c = good.clone();
    c.client_secret = SecretSource { env: Some("MIDOSOC_TEST_SURELY_UNSET".into()), file: None };
    cases.push((c, "review.oidc.client_secret"));
    let mut c = good.clone();
    c.roles = RoleMapping::default();
    cases.push((c, "review.oidc.roles"));
    let mut c = good.clone();
    c.roles.claim = None;
    cases.push((c, "review.oidc.roles.claim"));
    let mut c = good.clone();
    c.roles.email_domains.viewer = vec!["@example.com".into()];
    cases.push((c, "review.oidc.roles.email_domains"));
    let mut c = good.clone();
    c.redirect_url = Some("javascript:alert(1)".into());
    cases.push((c, "review.oidc.redirect_url"));

    for (config, key) in cases {
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        assert!(!err.contains("dashboard-secret"), "{err}");
    }

    let loopback = config("http://127.0.0.1:9/", "dash", good.client_secret.clone());
    assert!(loopback.check().is_ok(), "plain http is fine on loopback");
}

#[test]
fn pages_escape_what_the_provider_sent() {
    let response = failure_page(&OidcError::Refused("<script>alert(1)</script>".into()));
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 16));
    let body = String::from_utf8(body.unwrap().to_vec()).unwrap();
    assert!(body.contains("&lt;script&gt;"), "{body}");
    assert!(!body.contains("<script>"), "{body}");
}

#[test]
fn the_pre_login_cookie_is_http_only_lax_and_short_lived() {
    let (_dir, secret) = secret_file();
    let config = config("https://login.example/", "dash", secret);
    let secure = OidcSignIn::new(&config, "https://review.example", true).unwrap();
    let cookie = secure.login_cookie("abc");
    for part in ["__Host-midosoc_login=abc", "HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(cookie.contains("Max-Age=600"), "{cookie}");

    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-midosoc_login=abc"));
    assert_eq!(secure.attempt_id(&headers).as_deref(), Some("abc"));
    assert!(secure.expired_login_cookie().contains("Max-Age=0"));
    assert!(!format!("{secure:?}").contains("dashboard-secret"));
}

// ---- Against the real provider -------------------------------------------

/// A redirect URI the provider accepts; nothing listens there, since the
/// tests read the provider's redirect instead of following it.
const REDIRECT: &str = "http://127.0.0.1:9/auth/callback";

/// The test provider, stopped when dropped.
struct TestProvider {
    issuer: String,
    _child: tokio::process::Child,
}

fn provider_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc")
}

/// Starts the provider, or says why it cannot (and fails instead under
/// `MIDOSOC_REQUIRE_PEERS=1`).
async fn start_provider(test: &str) -> Option<TestProvider> {
    let required = std::env::var("MIDOSOC_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let node = std::env::var_os("MIDOSOC_NODE").map(PathBuf::from).or_else(|| {
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths).map(|d| d.join("node")).find(|p| p.is_file())
    });
    let why = match node {
        None => "node is not on PATH",
        Some(_) if !provider_dir().join("node_modules/oidc-provider").is_dir() => {
            "run `npm ci --prefix tests/oidc`"
        }
        Some(node) => {
            let mut child = tokio::process::Command::new(node)
                .arg("provider.mjs")
                .current_dir(provider_dir())
                .env("OIDC_DASHBOARD_REDIRECT_URI", REDIRECT)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let line = lines.next_line().await.unwrap().expect("the provider says where it is");
            let ready: Value = serde_json::from_str(&line).unwrap();
            let issuer = ready["issuer"].as_str().unwrap().to_owned();
            return Some(TestProvider { issuer, _child: child });
        }
    };
    assert!(!required, "{test}: the OpenID provider is required but {why}");
    eprintln!("SKIPPED {test}: OpenID provider not available ({why})");
    None
}

fn sign_in(
    provider: &TestProvider,
    client_id: &str,
    secret: &str,
) -> (tempfile::TempDir, OidcSignIn) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, secret).unwrap();
    let source = SecretSource { env: None, file: Some(path) };
    let mut config = config(&provider.issuer, client_id, source);
    config.redirect_url = Some(REDIRECT.to_owned());
    (dir, OidcSignIn::new(&config, "http://127.0.0.1:9", false).unwrap())
}

/// Plays the browser at the provider: follows its redirects, signs in as
/// `account` on the development login page, consents, and returns the
/// query of the redirect back to the dashboard.
async fn authorize_at_provider(auth_url: &Url, account: &str) -> CallbackParams {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .build()
        .unwrap();
    let mut next = browser.get(auth_url.as_str()).send().await.unwrap();
    for _ in 0..20 {
        let status = next.status();
        if status.is_redirection() {
            let location = next.headers()[header::LOCATION].to_str().unwrap().to_owned();
            let target = next.url().join(&location).unwrap();
            if target.as_str().starts_with(REDIRECT) {
                let query = target.query().unwrap_or_default();
                return serde_urlencoded_params(query);
            }
            next = browser.get(target).send().await.unwrap();
            continue;
        }
        assert_eq!(status, 200, "provider page");
        let url = next.url().clone();
        let page = next.text().await.unwrap();
        let action = form_action(&page).expect("a form on the provider's page");
        let target = url.join(&action).unwrap();
        let form: Vec<(&str, &str)> = if page.contains("name=\"login\"") {
            vec![("prompt", "login"), ("login", account), ("password", "any")]
        } else {
            vec![("prompt", "consent")]
        };
        next = browser.post(target).form(&form).send().await.unwrap();
    }
    panic!("the provider never redirected back");
}

fn form_action(page: &str) -> Option<String> {
    let start = page.find("action=\"")? + "action=\"".len();
    let end = page[start..].find('"')? + start;
    Some(page[start..end].replace("&amp;", "&"))
}

fn serde_urlencoded_params(query: &str) -> CallbackParams {
    let pairs: HashMap<String, String> =
        url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    CallbackParams {
        code: pairs.get("code").cloned(),
        state: pairs.get("state").cloned(),
        iss: pairs.get("iss").cloned(),
        error: pairs.get("error").cloned(),
        error_description: pairs.get("error_description").cloned(),
    }
}

/// One sign-in up to the callback: the attempt (as the server kept it)
/// and the provider's answer.
async fn attempt(oidc: &OidcSignIn, account: &str) -> (PendingLogin, CallbackParams) {
    let (url, id) = oidc.begin().await.unwrap();
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["response_type"], "code");
    assert!(query["scope"].split(' ').any(|s| s == "openid"));
    assert!(query.contains_key("nonce") && query.contains_key("state"));

    let params = authorize_at_provider(&url, account).await;
    (oidc.take_attempt(&id).unwrap(), params)
}

#[tokio::test]
async fn an_approver_signs_in_and_the_id_token_names_them() {
    let Some(provider) = start_provider("an_approver_signs_in").await else { return };
    let (_dir, oidc) = sign_in(&provider, "midosoc-dashboard", "dashboard-secret");

    let (attempt, params) = attempt(&oidc, "approver-ann").await;
    assert_eq!(params.iss.as_deref(), Some(provider.issuer.as_str()), "RFC 9207 iss sent");
    let analyst = oidc.finish(attempt, params).await.unwrap();
    assert_eq!(analyst.sub, "approver-ann");
    assert_eq!(analyst.name, "approver-ann");
    assert_eq!(analyst.role, "approver");
    assert_eq!(analyst.account().unwrap().role, Role::Approver);
    assert!(!format!("{analyst:?}").contains(&analyst.id_token));

    let logout = oidc.end_session_url(&analyst.id_token).await.expect("end-session endpoint");
    let query: HashMap<String, String> = logout.query_pairs().into_owned().collect();
    assert!(logout.as_str().starts_with(&provider.issuer));
    assert_eq!(query["id_token_hint"], analyst.id_token);
    assert_eq!(query["post_logout_redirect_uri"], "http://127.0.0.1:9/");
    assert_eq!(query["client_id"], "midosoc-dashboard");
}

#[tokio::test]
async fn an_account_with_no_mapped_role_is_refused() {
    let Some(provider) = start_provider("an_account_with_no_mapped_role").await else { return };
    let (_dir, oidc) = sign_in(&provider, "midosoc-dashboard", "dashboard-secret");

    let (attempt, params) = attempt(&oidc, "mallory").await;
    let err = oidc.finish(attempt, params).await.unwrap_err();
    assert!(matches!(err, OidcError::NoRole(ref name) if name == "mallory"), "{err}");
    assert_eq!(failure_page(&err).status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_sign_in_attempt_works_once() {
    let Some(provider) = start_provider("a_sign_in_attempt_works_once").await else { return };
    let (_dir, oidc) = sign_in(&provider, "midosoc-dashboard", "dashboard-secret");

    let (_url, id) = oidc.begin().await.unwrap();
    assert!(oidc.take_attempt(&id).is_some());
    assert!(oidc.take_attempt(&id).is_none(), "a replayed state finds nothing");
    assert!(oidc.take_attempt("made-up").is_none());
}

#[tokio::test]
async fn a_wrong_state_or_iss_is_refused_before_the_code_is_redeemed() {
    let Some(provider) = start_provider("a_wrong_state_or_iss").await else { return };
    let (_dir, oidc) = sign_in(&provider, "midosoc-dashboard", "dashboard-secret");

    let (attempt_a, mut params) = attempt(&oidc, "approver-ann").await;
    params.state = Some("forged".into());
    let err = oidc.finish(attempt_a, params).await.unwrap_err();
    assert!(matches!(err, OidcError::StateMismatch), "{err}");

    let (attempt_b, mut params) = attempt(&oidc, "approver-ann").await;
    params.iss = Some("https://evil.example/".into());
    let err = oidc.finish(attempt_b, params).await.unwrap_err();
    assert!(matches!(err, OidcError::IssuerMismatch), "{err}");

    let (attempt_c, mut params) = attempt(&oidc, "approver-ann").await;
    params.iss = None;
    let err = oidc.finish(attempt_c, params).await.unwrap_err();
    assert!(matches!(err, OidcError::IssuerMissing), "the provider advertises iss: {err}");
}

#[tokio::test]
async fn a_code_issued_to_another_client_is_refused() {
    let Some(provider) = start_provider("a_code_issued_to_another_client").await else { return };
    let (_d1, oidc) = sign_in(&provider, "midosoc-dashboard", "dashboard-secret");
    let (_d2, other) = sign_in(&provider, "midosoc-other-app", "other-secret");

    // The other application's code arrives at our callback with our own
    // attempt's state (as an attacker who planted it would arrange).
    let (ours, our_params) = attempt(&oidc, "approver-ann").await;
    let (_theirs, their_params) = attempt(&other, "approver-ann").await;
    let planted = CallbackParams { code: their_params.code, ..our_params };
    let err = oidc.finish(ours, planted).await.unwrap_err();
    assert!(matches!(err, OidcError::CodeRefused(ref e) if e == "invalid_grant"), "{err}");
}

#[tokio::test]
async fn tampered_foreign_or_wrong_nonce_id_tokens_are_refused() {
    let Some(provider) = start_provider("tampered_id_tokens").await else { return };
    let (_d1, oidc) = sign_in(&provider, "midosoc-dashboard", "dashboard-secret");
    let (_d2, other) = sign_in(&provider, "midosoc-other-app", "other-secret");

    let (attempt_a, params) = attempt(&oidc, "viewer-vic").await;
    let nonce = attempt_a.nonce.clone();
    let raw = oidc.finish(attempt_a, params).await.unwrap().id_token;
    assert_eq!(oidc.identify(&raw, &nonce).await.unwrap().role, "viewer");

    // Wrong nonce: a token minted for another sign-in attempt.
    let err = oidc.identify(&raw, &Nonce::new_random()).await.unwrap_err();
    assert!(
        matches!(err, OidcError::IdToken(openidconnect::ClaimsVerificationError::InvalidNonce(_))),
        "{err}"
    );

    // Tampered: the viewer promotes themselves to admin, keeping the
    // provider's signature.
    let parts: Vec<&str> = raw.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload[ROLES_CLAIM] = json!(["admin"]);
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let err = oidc.identify(&tampered, &nonce).await.unwrap_err();
    assert!(
        matches!(
            err,
            OidcError::IdToken(openidconnect::ClaimsVerificationError::SignatureVerification(_))
        ),
        "{err}"
    );

    // Unsigned: `alg: none` with the forged payload.
    let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none}.{forged_payload}.");
    assert!(oidc.identify(&unsigned, &nonce).await.is_err());

    // Foreign: a genuine token the provider minted for another client.
    let (attempt_b, params) = attempt(&other, "admin-ada").await;
    let their_nonce = attempt_b.nonce.clone();
    let foreign = other.finish(attempt_b, params).await.unwrap().id_token;
    let err = oidc.identify(&foreign, &their_nonce).await.unwrap_err();
    assert!(
        matches!(
            err,
            OidcError::IdToken(openidconnect::ClaimsVerificationError::InvalidAudience(_))
        ),
        "{err}"
    );

    assert!(matches!(oidc.identify("not.a-token", &nonce).await, Err(OidcError::MalformedIdToken)));
}
