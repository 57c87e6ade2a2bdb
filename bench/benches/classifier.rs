//! The heuristic classifier's cost per action on the corpus rows
//! (`../shared/corpus/dev.jsonl`, beside the repository): every row taken
//! in turn, then each label alone. One action per iteration, so
//! criterion's estimates are nanoseconds per action.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use midosoc_core::action::{ToolAnnotations, ToolInfo};
use midosoc_core::classify::HeuristicClassifier;
use midosoc_core::{Action, AgentId};
use serde::Deserialize;
use serde_json::{Value, json};

/// Where tool calls are addressed, as `midosoc eval` does.
const MCP_ENDPOINT: &str = "https://mcp.example.com/mcp";

/// The columns a gateway would see, plus the label.
#[derive(Deserialize)]
struct Row {
    label: String,
    method: Option<String>,
    url: Option<String>,
    body: Option<Value>,
    tool: Option<String>,
    description: Option<String>,
    annotations: Option<ToolAnnotations>,
    arguments: Option<Value>,
}

fn corpus() -> Vec<(String, Action)> {
    let path = std::env::var_os("MIDOSOC_CORPUS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/dev.jsonl"),
        PathBuf::from,
    );
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read the corpus `{}`: {e}", path.display()));
    text.lines()
        .filter_map(|line| serde_json::from_str::<Row>(line).ok())
        .filter_map(|row| Some((row.label.clone(), action(row)?)))
        .collect()
}

fn action(row: Row) -> Option<Action> {
    let agent = AgentId::new("bench");
    if let Some(tool) = row.tool {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": row.arguments.unwrap_or_else(|| json!({}))},
        });
        let info = ToolInfo {
            description: row.description,
            annotations: row.annotations.unwrap_or_default(),
        };
        return Some(
            Action::builder(agent, "POST", MCP_ENDPOINT)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).ok()?)
                .tool_info(info)
                .build(),
        );
    }
    let mut builder = Action::builder(agent, row.method?, row.url?);
    if let Some(body) = row.body.filter(|b| !b.is_null()) {
        builder = builder
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).ok()?);
    }
    Some(builder.build())
}

fn classify(c: &mut Criterion) {
    let rows = corpus();
    assert!(!rows.is_empty(), "the corpus has no usable rows");
    let classifier = HeuristicClassifier::default();
    let mut group = c.benchmark_group("classifier");
    for label in ["all", "read", "write", "destructive"] {
        let actions: Vec<&Action> =
            rows.iter().filter(|(l, _)| label == "all" || l == label).map(|(_, a)| a).collect();
        if actions.is_empty() {
            continue;
        }
        let mut next = 0usize;
        group.bench_function(label, |b| {
            b.iter(|| {
                let action = actions[next % actions.len()];
                next = next.wrapping_add(1);
                black_box(classifier.assess(black_box(action)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
