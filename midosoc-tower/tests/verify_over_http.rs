//! The verifying layer over real HTTP: a protected axum route checks
//! tokens minted by the real local issuer.

mod common;

use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get};
use common::{AUDIENCE, ISSUER, status_and_json};
use midosoc_core::token::{AUTHORIZATION_DETAILS_TYPE, AuthorizationDetail, LocalIssuer};
use midosoc_core::{Action, AgentId, ApprovalId, Grant, Sha256Digest, TokenIssuer};
use midosoc_tower::VerifyTokenLayer;
use midosoc_tower::problem::ProblemKind;

struct Api {
    base: String,
    client: reqwest::Client,
    issuer: LocalIssuer,
}

impl Api {
    /// `DELETE /accounts/{id}` and `GET /accounts/{id}`, both protected.
    async fn start() -> Self {
        let issuer = LocalIssuer::generate(ISSUER, AUDIENCE);
        let verify = VerifyTokenLayer::new(issuer.jwks().clone(), ISSUER, AUDIENCE);
        let app = Router::new()
            .route("/accounts/{id}", delete(|| async { "closed" }).get(|| async { "balance" }))
            .route("/health", get(|| async { "ok" }))
            .route("/search", axum::routing::post(|| async { "results" }))
            .layer(verify);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client =
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
        Self { base, client, issuer }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A token for `method` on `location` with `body`, as an approval
    /// would grant it.
    async fn token(&self, method: &str, location: &str, body: &[u8]) -> String {
        let grant = Grant {
            agent: AgentId::new("cleanup-bot"),
            analyst: None,
            detail: AuthorizationDetail {
                kind: AUTHORIZATION_DETAILS_TYPE.to_owned(),
                locations: vec![location.to_owned()],
                actions: vec![method.to_owned()],
                body_digest: Some(Sha256Digest::of(body)),
                approval_id: Some(ApprovalId::new()),
            },
            audience: None,
            scope: None,
        };
        self.issuer.issue(&grant).await.unwrap().token.expose().to_owned()
    }

    async fn delete(
        &self,
        path: &str,
        token: Option<&str>,
        body: &'static str,
    ) -> reqwest::Response {
        let mut request = self.client.delete(self.url(path)).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }
}

fn problem_type(body: &serde_json::Value) -> &str {
    body["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_token_opens_exactly_one_request_once() {
    let api = Api::start().await;
    let token = api.token("DELETE", "/accounts/7", b"{}").await;

    let first = api.delete("/accounts/7", Some(&token), "{}").await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "closed");

    let replay = api.delete("/accounts/7", Some(&token), "{}").await;
    let (status, body) = status_and_json(replay).await;
    assert_eq!((status, problem_type(&body)), (401, ProblemKind::TokenReplayed.type_uri()));
}

#[tokio::test]
async fn a_token_for_another_request_is_refused_without_being_used_up() {
    let api = Api::start().await;
    let token = api.token("DELETE", "/accounts/7", b"{}").await;

    for (path, body) in [("/accounts/8", "{}"), ("/accounts/7", r#"{"all":true}"#)] {
        let response = api.delete(path, Some(&token), body).await;
        let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
        let (status, problem) = status_and_json(response).await;
        assert_eq!((status, problem_type(&problem)), (403, ProblemKind::TokenMismatch.type_uri()));
        assert!(challenge.contains("insufficient_scope"), "{challenge}");
    }

    let right = api.delete("/accounts/7", Some(&token), "{}").await;
    assert_eq!(right.status(), 200);
}

#[tokio::test]
async fn missing_forged_or_foreign_tokens_are_401() {
    let api = Api::start().await;
    let stranger = LocalIssuer::generate(ISSUER, AUDIENCE);
    let other_audience = LocalIssuer::generate(ISSUER, "https://elsewhere.test");

    let missing = api.delete("/accounts/7", None, "{}").await;
    assert!(missing.headers().contains_key("www-authenticate"));
    let (status, body) = status_and_json(missing).await;
    assert_eq!((status, problem_type(&body)), (401, ProblemKind::InvalidToken.type_uri()));

    let garbage = api.delete("/accounts/7", Some("not.a.jwt"), "{}").await;
    assert_eq!(garbage.status(), 401);

    let read = Grant::read_only(&Action::builder(AgentId::new("a"), "GET", "/accounts/7").build());
    for issuer in [&stranger, &other_audience] {
        let token = issuer.issue(&read).await.unwrap();
        let response = api
            .client
            .get(api.url("/accounts/7"))
            .bearer_auth(token.token.expose())
            .send()
            .await
            .unwrap();
        let (status, body) = status_and_json(response).await;
        assert_eq!((status, problem_type(&body)), (401, ProblemKind::InvalidToken.type_uri()));
    }
}

#[tokio::test]
async fn a_read_token_reads_but_cannot_delete() {
    let api = Api::start().await;
    let action = Action::builder(AgentId::new("a"), "GET", "/accounts/7").build();
    let read = || async {
        api.issuer.issue(&Grant::read_only(&action)).await.unwrap().token.expose().to_owned()
    };

    let token = read().await;
    let response = api.client.get(api.url("/accounts/7")).bearer_auth(&token).send().await;
    assert_eq!(response.unwrap().text().await.unwrap(), "balance");

    let token = read().await;
    let (status, body) = status_and_json(api.delete("/accounts/7", Some(&token), "").await).await;
    assert_eq!((status, problem_type(&body)), (403, ProblemKind::TokenMismatch.type_uri()));
}

#[tokio::test]
async fn a_read_token_for_an_allowed_post_covers_that_body_only() {
    let api = Api::start().await;
    let body = r#"{"q":"balance"}"#;
    let action = Action::builder(AgentId::new("a"), "POST", "/search").body(body).build();
    let read = || async {
        api.issuer.issue(&Grant::read_only(&action)).await.unwrap().token.expose().to_owned()
    };
    let post = |token: String, body: &'static str| {
        api.client.post(api.url("/search")).bearer_auth(token).body(body).send()
    };

    let response = post(read().await, r#"{"q":"balance"}"#).await.unwrap();
    assert_eq!(response.text().await.unwrap(), "results");

    let response = post(read().await, r#"{"q":"other"}"#).await.unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!((status, problem_type(&body)), (403, ProblemKind::TokenMismatch.type_uri()));
}
