//! `replay`: sends a slice of a labelled corpus through a running gateway,
//! as an agent would, and prints what happened to each request.
//!
//! Each row's absolute URL becomes a path under the gateway prefix of its
//! API (`api.github.com` → `/github/`, `api.stripe.com` → `/stripe/`, any
//! other host → `/other/`); MCP rows become JSON-RPC `tools/call` POSTs to
//! `/mcp/`. Only what a gateway would see is sent: method, path, body and
//! the agent key. A row's label is printed beside the outcome and never
//! sent. Requests carry `Prefer: wait=N`, so held ones come back `202`
//! quickly and stay pending on the dashboard.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use midosoc_bench::http1;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// Replays corpus rows through the gateway's agent listener.
#[derive(Debug, Parser)]
struct Args {
    /// The agent listener, `HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: String,
    /// The agent key, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "MIDOSOC_AGENT_KEY", hide_env_values = true)]
    key: String,
    /// The labelled corpus, JSON Lines.
    #[arg(long, default_value = "../shared/corpus/dev.jsonl")]
    corpus: PathBuf,
    /// How many rows to send, spread evenly over the matching rows.
    #[arg(long, default_value_t = 40)]
    limit: usize,
    /// Only rows of this API (`github`, `stripe`, `mcp`, `mcp:github`,
    /// `adversarial`).
    #[arg(long)]
    api: Option<String>,
    /// Seconds a held request waits before the gateway answers `202`.
    #[arg(long, default_value_t = 1)]
    wait: u64,
}

/// One corpus row; fields a gateway would not see are read only to print.
#[derive(Debug, Deserialize)]
struct Row {
    id: String,
    api: String,
    label: String,
    method: Option<String>,
    url: Option<String>,
    body: Option<Value>,
    tool: Option<String>,
    arguments: Option<Value>,
}

/// The request built from a row.
struct Outgoing {
    method: String,
    path: String,
    body: Option<Vec<u8>>,
    /// What the table shows: the path, and the tool for MCP calls.
    shown: String,
}

/// Path prefixes on the gateway, by upstream host.
const PREFIXES: &[(&str, &str)] = &[("api.github.com", "/github/"), ("api.stripe.com", "/stripe/")];

/// The prefix for hosts not in [`PREFIXES`].
const OTHER_PREFIX: &str = "/other/";

/// The prefix MCP tool calls are posted to.
const MCP_PATH: &str = "/mcp/";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("reading {}", args.corpus.display()))?;
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line)
            .with_context(|| format!("line {} is not a corpus row", number + 1))?;
        if args.api.as_deref().is_none_or(|api| matches_api(&row.api, api)) {
            rows.push(row);
        }
    }
    let chosen = spread(&rows, args.limit);
    if chosen.is_empty() {
        anyhow::bail!("no corpus rows match");
    }

    let prefer = format!("wait={}", args.wait);
    let bearer = format!("Bearer {}", args.key);
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    println!("{:<12} {:<12} {:<7} {:<52} outcome", "row", "label", "method", "path");
    for row in chosen {
        let outgoing = build(row)?;
        let outcome = send(&args.gateway, &outgoing, &bearer, &prefer).await;
        let (kind, text) = match outcome {
            Ok((status, body)) => describe(status, &body),
            Err(error) => ("failed", format!("failed: {error:#}")),
        };
        *tally.entry(kind).or_default() += 1;
        println!(
            "{:<12} {:<12} {:<7} {:<52} {text}",
            row.id,
            row.label,
            outgoing.method,
            shorten(&outgoing.shown, 52)
        );
    }
    let summary: Vec<String> = tally.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    println!("\n{} requests: {}", tally.values().sum::<usize>(), summary.join(", "));
    Ok(())
}

/// Whether a row's `api` matches the filter: exactly, or as the family
/// before `:` (`mcp` matches `mcp:github`).
fn matches_api(api: &str, filter: &str) -> bool {
    api == filter || api.split_once(':').is_some_and(|(family, _)| family == filter)
}

/// Up to `limit` rows, evenly spaced, so a short run shows a mix.
fn spread(rows: &[Row], limit: usize) -> Vec<&Row> {
    if limit == 0 || rows.is_empty() {
        return Vec::new();
    }
    let count = limit.min(rows.len());
    (0..count).filter_map(|i| rows.get(i * rows.len() / count)).collect()
}

/// The request a gateway would receive for this row.
fn build(row: &Row) -> anyhow::Result<Outgoing> {
    if let Some(tool) = &row.tool {
        let arguments = row.arguments.clone().unwrap_or_else(|| json!({}));
        let body = json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        });
        return Ok(Outgoing {
            method: "POST".to_owned(),
            path: MCP_PATH.to_owned(),
            body: Some(serde_json::to_vec(&body)?),
            shown: format!("{MCP_PATH} tools/call {tool}"),
        });
    }
    let method = row.method.clone().with_context(|| format!("row {} has no method", row.id))?;
    let url = row.url.as_deref().with_context(|| format!("row {} has no url", row.id))?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .with_context(|| format!("row {} has no absolute url", row.id))?;
    let (host, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = PREFIXES
        .iter()
        .find(|(known, _)| *known == host)
        .map_or(OTHER_PREFIX, |(_, prefix)| prefix);
    let body = match &row.body {
        None | Some(Value::Null) => None,
        Some(value) => Some(serde_json::to_vec(value)?),
    };
    let path = format!("{prefix}{tail}");
    Ok(Outgoing { method, shown: path.clone(), path, body })
}

/// Sends one request on a fresh connection; the status and body.
async fn send(
    gateway: &str,
    outgoing: &Outgoing,
    bearer: &str,
    prefer: &str,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(gateway).await.context("connecting to the gateway")?;
    let headers = [("authorization", bearer), ("prefer", prefer), ("connection", "close")];
    let request = match &outgoing.body {
        Some(body) => {
            http1::request_with_body(&outgoing.method, &outgoing.path, gateway, &headers, body)
        }
        None => http1::request(&outgoing.method, &outgoing.path, gateway, &headers),
    };
    http1::send(&mut stream, &request).await?;
    let mut buf = Vec::new();
    let (answer, body) = http1::receive_with_body(&mut stream, &mut buf).await?;
    Ok((answer.status, body))
}

/// The outcome's kind for the summary and its line for the table.
fn describe(status: u16, body: &[u8]) -> (&'static str, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str).map(str::to_owned)
    };
    match status {
        202 => {
            let id = field("approval_id").unwrap_or_else(|| "?".to_owned());
            ("held", format!("held 202, approval {id}"))
        }
        200..=299 => ("passed", format!("passed {status}")),
        403 => {
            let why = field("detail").or_else(|| field("title")).unwrap_or_default();
            ("denied", format!("denied 403 {why}"))
        }
        _ => {
            let why = field("title").unwrap_or_default();
            ("other", format!("{status} {why}"))
        }
    }
}

/// `text` cut to `width` characters, with `…` when cut.
fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}
