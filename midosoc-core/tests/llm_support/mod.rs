//! Shared pieces of the LLM tests: a real HTTP server that speaks the
//! chat-completions protocol and answers as scripted, a server that accepts
//! connections and drops them, fixed rules, and the corpus as actions.

#![allow(dead_code, reason = "each test crate uses a different part of this module")]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use midosoc_core::action::{ToolAnnotations, ToolInfo};
use midosoc_core::{Action, AgentId, Assessment, Classifier, ClassifyError, Risk, Verdict};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// What the scripted model does with every request.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// A chat completion whose message content is this text.
    Content(String),
    /// This status with this JSON body.
    Status(u16, Value),
    /// Never answers.
    Hang,
}

impl Reply {
    /// A well-formed assessment as the message content.
    pub(crate) fn verdict(verdict: &str, risk: &str, confidence: f64, rationale: &str) -> Self {
        let content = json!({
            "verdict": verdict,
            "risk": risk,
            "confidence": confidence,
            "rationale": rationale,
            "markers": [],
        });
        Self::Content(content.to_string())
    }

    /// An OpenAI-style error body with `status`.
    pub(crate) fn error(status: u16, kind: &str) -> Self {
        let body = json!({
            "error": { "message": format!("scripted {kind}"), "type": kind, "param": null, "code": null }
        });
        Self::Status(status, body)
    }
}

/// One request the scripted model received.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    /// Path and query, such as `/v1/chat/completions`.
    pub(crate) uri: String,
    /// The request headers.
    pub(crate) headers: HeaderMap,
    /// The JSON body.
    pub(crate) body: Value,
}

impl Received {
    /// The text of the message with `role`.
    pub(crate) fn message(&self, role: &str) -> String {
        self.body["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == role))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

/// A running scripted model.
#[derive(Clone, Debug)]
pub(crate) struct ScriptedModel {
    /// `http://127.0.0.1:PORT`, without a path.
    pub(crate) origin: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl ScriptedModel {
    /// Starts a server on 127.0.0.1:0 that answers every chat-completions
    /// request (OpenAI and Azure paths) with `reply`.
    pub(crate) async fn start(reply: Reply) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let state = (reply, Arc::clone(&received));
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .route("/openai/deployments/{deployment}/chat/completions", post(answer))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { origin, received }
    }

    /// The base URL to configure: the origin with `/v1`.
    pub(crate) fn base_url(&self) -> String {
        format!("{}/v1", self.origin)
    }

    /// Everything received so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

type ModelState = (Reply, Arc<Mutex<Vec<Received>>>);

async fn answer(
    State((reply, received)): State<ModelState>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("scripted").to_owned();
    received.lock().unwrap().push(Received { uri: uri.to_string(), headers, body });

    match reply {
        Reply::Content(content) => axum::Json(completion(&model, &content)).into_response(),
        Reply::Status(status, body) => {
            (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
        }
        Reply::Hang => std::future::pending().await,
    }
}

/// A chat.completion object as OpenAI returns it.
fn completion(model: &str, content: &str) -> Value {
    json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_700_000_000u32,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content, "refusal": null },
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120 }
    })
}

/// Starts a raw TCP server on 127.0.0.1:0 that accepts each connection,
/// reads a little of the request, and closes the socket without a word.
/// Returns the base URL to configure.
pub(crate) async fn hang_up_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            drop(socket);
        }
    });
    format!("http://{addr}/v1")
}

/// Rules with a fixed answer, standing in for any rules classifier.
#[derive(Debug)]
pub(crate) struct FixedRules(pub(crate) Verdict, pub(crate) Risk);

#[async_trait]
impl Classifier for FixedRules {
    async fn classify(&self, _: &Action) -> Result<Assessment, ClassifyError> {
        Ok(Assessment::new("heuristic", self.0, self.1, 0.7, "Fixed rules."))
    }
}

/// One labelled corpus row, as the action a gateway would see.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) api: String,
    pub(crate) label: String,
    pub(crate) action: Action,
}

/// The development corpus, or `None` (with a message) when it is not
/// beside the repository. Under `MIDOSOC_REQUIRE_PEERS=1`, as in CI, a
/// missing corpus fails the test instead.
pub(crate) fn corpus() -> Option<Vec<Row>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/dev.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        let missing = "corpus not found at ../shared/corpus/dev.jsonl beside the repository";
        if std::env::var("MIDOSOC_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
            panic!("{missing} and MIDOSOC_REQUIRE_PEERS=1");
        }
        println!("skipped: {missing}");
        return None;
    };
    let rows = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| row(&serde_json::from_str(line).unwrap()))
        .collect();
    Some(rows)
}

fn row(record: &Value) -> Row {
    let text = |key: &str| record[key].as_str().unwrap_or_default().to_owned();
    let agent = AgentId::new("corpus-agent");

    let action = if let Some(tool) = record["tool"].as_str() {
        // An MCP tool call, with what its server advertised.
        let body = json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": { "name": tool, "arguments": record["arguments"] }
        });
        let annotations: ToolAnnotations =
            serde_json::from_value(record["annotations"].clone()).unwrap_or_default();
        Action::builder(agent, "POST", "https://mcp.example.com/mcp")
            .header("content-type", "application/json")
            .body(body.to_string())
            .tool_info(ToolInfo {
                description: record["description"].as_str().map(Into::into),
                annotations,
            })
            .build()
    } else {
        let builder = Action::builder(agent, text("method"), text("url"));
        match &record["body"] {
            Value::Null => builder.build(),
            body => {
                builder.header("content-type", "application/json").body(body.to_string()).build()
            }
        }
    };
    Row { id: text("id"), api: text("api"), label: text("label"), action }
}
