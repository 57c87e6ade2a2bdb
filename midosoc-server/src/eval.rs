//! `midosoc eval`: runs the classifier over a labelled corpus and reports,
//! per API and overall, how its verdicts meet the labels.
//!
//! Each line of the corpus is one request or MCP tool call with a label
//! (`read`, `write` or `destructive`). The classifier sees what a gateway
//! would see: method, URL and body, or for a tool call the JSON-RPC body with
//! the tool's advertised description and annotations. The corpus's own
//! `operation`, `summary` and `reason` columns are never read.
//!
//! When the configuration has a `[classifier.llm]` table, every row goes to
//! the rules composed with the model, and one call yields three sets of
//! figures: the rules alone and the model alone (read back from the
//! composed assessment's opinions) and the composition, with the model's
//! failures counted by reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use futures::StreamExt as _;
use midosoc_core::action::{ToolAnnotations, ToolInfo};
use midosoc_core::classify::{
    ComposedClassifier, CompositionMode, HeuristicClassifier, LlmClassifier, LlmConfig, RuleTable,
    Verdict, advisor_opinion, rules_opinion,
};
use midosoc_core::{Action, AgentId, Assessment, Classifier};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Config;

/// Where tool calls are addressed: the classifier judges the call, not the
/// endpoint, so one neutral URL serves every MCP server.
const MCP_ENDPOINT: &str = "https://mcp.example.com/mcp";

/// Arguments of `midosoc eval`.
#[derive(Debug, clap::Args)]
pub(crate) struct EvalArgs {
    /// Labelled corpus, one JSON object per line.
    #[arg(long, value_name = "FILE")]
    corpus: PathBuf,

    /// Also print the figures as one JSON object, on the last line.
    #[arg(long)]
    json: bool,

    /// Rule table (TOML) that extends the built-in one.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,

    /// Print the rationale and markers of every row whose verdict does not
    /// match its label.
    #[arg(long, short)]
    verbose: bool,
}

/// One corpus line. Only the columns a gateway could see, plus the label,
/// are read.
#[derive(Debug, Deserialize)]
struct Row {
    id: String,
    api: String,
    label: Label,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    annotations: Option<ToolAnnotations>,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Label {
    Read,
    Write,
    Destructive,
}

impl Label {
    const ALL: [Label; 3] = [Label::Read, Label::Write, Label::Destructive];

    fn as_str(self) -> &'static str {
        match self {
            Label::Read => "read",
            Label::Write => "write",
            Label::Destructive => "destructive",
        }
    }
}

const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Hold, Verdict::Deny];

/// Counts of label × verdict, and the rows worth a second look.
#[derive(Debug, Default)]
struct Tally {
    counts: BTreeMap<(Label, Verdict), usize>,
    missed: Vec<String>,
    false_holds: BTreeMap<Label, Vec<String>>,
}

impl Tally {
    fn add(&mut self, row: &Row, verdict: Verdict) {
        *self.counts.entry((row.label, verdict)).or_default() += 1;
        let stopped = verdict != Verdict::Allow;
        match row.label {
            Label::Destructive if !stopped => self.missed.push(row.id.clone()),
            Label::Read | Label::Write if stopped => {
                self.false_holds.entry(row.label).or_default().push(row.id.clone());
            }
            _ => {}
        }
    }

    fn count(&self, label: Label, verdict: Verdict) -> usize {
        self.counts.get(&(label, verdict)).copied().unwrap_or(0)
    }

    fn total(&self, label: Label) -> usize {
        VERDICTS.iter().map(|&v| self.count(label, v)).sum()
    }

    fn rows(&self) -> usize {
        Label::ALL.iter().map(|&l| self.total(l)).sum()
    }

    /// Share of `label` rows held or denied; `None` when there are none.
    fn stopped_share(&self, label: Label) -> Option<f64> {
        let total = self.total(label);
        let stopped = self.count(label, Verdict::Hold) + self.count(label, Verdict::Deny);
        (total > 0).then(|| stopped as f64 / total as f64)
    }

    fn figures(&self) -> Value {
        let mut matrix = serde_json::Map::new();
        for label in Label::ALL {
            let row: serde_json::Map<String, Value> = VERDICTS
                .iter()
                .map(|&v| (v.as_str().to_owned(), json!(self.count(label, v))))
                .collect();
            matrix.insert(label.as_str().to_owned(), Value::Object(row));
        }
        json!({
            "rows": self.rows(),
            "recall_destructive": self.stopped_share(Label::Destructive),
            "false_hold_read": self.stopped_share(Label::Read),
            "false_hold_write": self.stopped_share(Label::Write),
            "confusion": matrix,
            "missed_destructive": self.missed,
            "false_holds_read": self.false_holds.get(&Label::Read).cloned().unwrap_or_default(),
            "false_holds_write": self.false_holds.get(&Label::Write).cloned().unwrap_or_default(),
        })
    }
}

/// The outcome of one run over a corpus.
#[derive(Debug, Default)]
struct Evaluation {
    overall: Tally,
    per_api: BTreeMap<String, Tally>,
    skipped: usize,
    /// Classification time of each row, in nanoseconds.
    timings: Vec<u128>,
}

/// The rules alone and the model alone, beside a composed [`Evaluation`].
#[derive(Debug, Default)]
struct Comparison {
    rules: Tally,
    /// Only the rows the model answered.
    llm: Tally,
    /// Rows the model gave no opinion on, by reason (`timeout`, ...).
    failures: BTreeMap<String, usize>,
}

/// Runs the evaluation; `config` is the gateway's configuration file, whose
/// `[classifier.llm]` table (if any) brings the model in.
pub(crate) fn run(args: &EvalArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let llm = Config::load(config)?.classifier.llm;
    let rules = classifier(args.rules.as_ref())?;
    let text = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("cannot read corpus `{}`", args.corpus.display()))?;
    let source = args.corpus.display().to_string();

    let (mut eval, comparison) = match llm {
        None => (evaluate(&rules, &text, &source, args.verbose), None),
        Some(llm) => {
            let classifier = composed(rules, &llm)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let (eval, comparison) =
                runtime.block_on(compare(&classifier, &text, &source, args.verbose));
            (eval, Some(comparison))
        }
    };
    let median_ns = median(&mut eval.timings);
    let overall = if comparison.is_some() { "overall (rules + llm)" } else { "overall" };
    print!("{}", report(overall, &eval, median_ns));
    if let Some(comparison) = &comparison {
        print!("{}", compared(comparison));
    }
    if args.json {
        let summary = summary(&eval, median_ns, comparison.as_ref());
        println!("{}", serde_json::to_string(&summary)?);
    }

    Ok(if eval.overall.rows() == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The rules composed with the model `config` describes, as the gateway
/// composes them, except that every row goes to the model and it may
/// raise verdicts whatever `mode` says: the figures show what enforcing
/// would do, and the model-only figures cover the whole corpus.
fn composed(
    rules: HeuristicClassifier,
    config: &LlmConfig,
) -> anyhow::Result<ComposedClassifier<HeuristicClassifier, LlmClassifier>> {
    let llm = LlmClassifier::from_config(config).context("cannot set up the llm classifier")?;
    let mut policy = config.policy();
    policy.skip_confidence = None;
    policy.mode = CompositionMode::Enforce;
    Ok(ComposedClassifier::new(rules, llm).with_policy(policy))
}

/// Classifies every line of `text`. A line that is not a record is
/// reported on stderr with its number and skipped.
fn evaluate(
    classifier: &HeuristicClassifier,
    text: &str,
    source: &str,
    verbose: bool,
) -> Evaluation {
    let (rows, skipped) = parse_corpus(text, source);
    let mut eval = Evaluation { skipped, ..Evaluation::default() };
    for (row, action) in rows {
        let started = Instant::now();
        let assessment = classifier.assess(&action);
        eval.timings.push(started.elapsed().as_nanos());
        eval.record(&row, &assessment, verbose);
    }
    eval
}

/// Classifies every line of `text` with the composed `classifier`, as many
/// rows at once as it allows model calls, and reads the rules' and the
/// model's own verdicts back from each assessment.
async fn compare<C: Classifier>(
    classifier: &ComposedClassifier<C, LlmClassifier>,
    text: &str,
    source: &str,
    verbose: bool,
) -> (Evaluation, Comparison) {
    let (rows, skipped) = parse_corpus(text, source);
    let mut eval = Evaluation { skipped, ..Evaluation::default() };
    let mut comparison = Comparison::default();

    let in_flight = classifier.policy().max_concurrent.max(1);
    let mut results = futures::stream::iter(rows)
        .map(|(row, action)| async move {
            let started = Instant::now();
            let result = classifier.classify(&action).await;
            (row, result, started.elapsed().as_nanos())
        })
        .buffered(in_flight);

    while let Some((row, result, elapsed)) = results.next().await {
        let assessment = match result {
            Ok(assessment) => assessment,
            Err(error) => {
                eprintln!("{source}: skipped `{}`: the rules failed: {error}", row.id);
                eval.skipped += 1;
                continue;
            }
        };
        eval.timings.push(elapsed);
        eval.record(&row, &assessment, verbose);
        comparison.record(&row, &assessment);
    }
    (eval, comparison)
}

impl Evaluation {
    /// Counts `assessment` for `row`, printing it when `verbose` and its
    /// verdict does not match the label.
    fn record(&mut self, row: &Row, assessment: &Assessment, verbose: bool) {
        let stopped = assessment.verdict != Verdict::Allow;
        if verbose && stopped != (row.label == Label::Destructive) {
            let markers: Vec<String> = assessment
                .markers
                .iter()
                .map(|m| format!("{}[{}]={}", m.rule, m.location, m.matched))
                .collect();
            println!(
                "{} {} -> {}: {}",
                row.id,
                row.label.as_str(),
                assessment.verdict,
                assessment.rationale
            );
            println!("    {}", markers.join("  "));
        }

        self.overall.add(row, assessment.verdict);
        self.per_api.entry(row.api.clone()).or_default().add(row, assessment.verdict);
    }
}

impl Comparison {
    /// Counts the rules' and the model's opinions inside a composed
    /// `assessment`.
    fn record(&mut self, row: &Row, assessment: &Assessment) {
        let rules = rules_opinion(assessment).map_or(assessment.verdict, |a| a.verdict);
        self.rules.add(row, rules);

        match advisor_opinion(assessment).and_then(|o| o.assessment.as_deref()) {
            Some(llm) => self.llm.add(row, llm.verdict),
            None => {
                let reason = assessment
                    .markers
                    .iter()
                    .find(|m| m.rule == "llm.unavailable")
                    .map_or("not_asked", |m| m.matched.as_str());
                *self.failures.entry(reason.to_owned()).or_default() += 1;
            }
        }
    }
}

/// The model's figures: those of [`Tally::figures`] over the rows it
/// answered, with `answered` and `failures` by reason.
fn llm_figures(comparison: &Comparison) -> Value {
    let mut figures = comparison.llm.figures();
    if let Some(map) = figures.as_object_mut() {
        map.insert("answered".into(), json!(comparison.llm.rows()));
        map.insert("failures".into(), json!(comparison.failures));
    }
    figures
}

/// Parses every line of `text` into a row and the action a gateway would
/// see; a line that is not a record is reported on stderr with its number
/// and counted as skipped.
fn parse_corpus(text: &str, source: &str) -> (Vec<(Row, Action)>, usize) {
    let mut rows = Vec::new();
    let mut skipped = 0;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = match parse_row(line) {
            Ok(row) => row,
            Err(error) => {
                eprintln!("{source}:{}: skipped: {error:#}", index + 1);
                skipped += 1;
                continue;
            }
        };
        match action_of(&row) {
            Ok(action) => rows.push((row, action)),
            Err(error) => {
                eprintln!("{source}:{}: skipped `{}`: {error:#}", index + 1, row.id);
                skipped += 1;
            }
        }
    }
    (rows, skipped)
}

/// The JSON summary: overall figures, then `skipped`, `median_ns` and
/// `per_api`; with a model, also `rules` and `llm` (see [`llm_figures`]).
fn summary(eval: &Evaluation, median_ns: u128, comparison: Option<&Comparison>) -> Value {
    let mut figures = eval.overall.figures();
    if let Some(map) = figures.as_object_mut() {
        map.insert("skipped".into(), json!(eval.skipped));
        map.insert("median_ns".into(), json!(median_ns));
        let apis: serde_json::Map<String, Value> =
            eval.per_api.iter().map(|(api, tally)| (api.clone(), tally.figures())).collect();
        map.insert("per_api".into(), Value::Object(apis));
        if let Some(comparison) = comparison {
            map.insert("rules".into(), comparison.rules.figures());
            map.insert("llm".into(), llm_figures(comparison));
        }
    }
    figures
}

fn classifier(rules: Option<&PathBuf>) -> anyhow::Result<HeuristicClassifier> {
    let mut table = RuleTable::default();
    if let Some(path) = rules {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read rule table `{}`", path.display()))?;
        let extra = RuleTable::from_toml_str(&text)
            .with_context(|| format!("rule table `{}`", path.display()))?;
        table.extend(extra);
    }
    HeuristicClassifier::new(table).context("rule table")
}

fn parse_row(line: &str) -> anyhow::Result<Row> {
    let row: Row = serde_json::from_str(line).context("not a corpus record")?;
    Ok(row)
}

/// The action a gateway would have built for this row.
fn action_of(row: &Row) -> anyhow::Result<Action> {
    let agent = AgentId::new("eval");
    if let Some(tool) = &row.tool {
        let arguments = row.arguments.clone().unwrap_or_else(|| json!({}));
        let body = json!({
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        });
        let info = ToolInfo {
            description: row.description.clone(),
            annotations: row.annotations.clone().unwrap_or_default(),
        };
        return Ok(Action::builder(agent, "POST", MCP_ENDPOINT)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body)?)
            .tool_info(info)
            .build());
    }

    let method = row.method.as_deref().context("record has neither `method` nor `tool`")?;
    let url = row.url.as_deref().context("record has a `method` but no `url`")?;
    let mut builder = Action::builder(agent, method, url);
    if let Some(body) = row.body.as_ref().filter(|b| !b.is_null()) {
        builder =
            builder.header("content-type", "application/json").body(serde_json::to_vec(body)?);
    }
    Ok(builder.build())
}

fn median(values: &mut [u128]) -> u128 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    values[values.len() / 2]
}

/// The human-readable report: one block per API, then the whole corpus
/// under `overall`.
fn report(overall: &str, eval: &Evaluation, median_ns: u128) -> String {
    let mut out = String::new();
    for (api, tally) in &eval.per_api {
        block(&mut out, api, tally);
    }
    block(&mut out, overall, &eval.overall);
    let _ = writeln!(out, "rows: {}  skipped: {}", eval.overall.rows(), eval.skipped);
    let _ = writeln!(out, "median classification time: {median_ns} ns");
    out
}

/// The rules alone and the model alone, after the composed report.
fn compared(comparison: &Comparison) -> String {
    let mut out = String::new();
    block(&mut out, "rules alone", &comparison.rules);
    block(&mut out, "llm alone (rows it answered)", &comparison.llm);
    let failures: Vec<String> =
        comparison.failures.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
    let failures = if failures.is_empty() { "none".to_owned() } else { failures.join(", ") };
    let _ = writeln!(out, "llm failures (the rules decided): {failures}");
    out
}

fn block(out: &mut String, name: &str, tally: &Tally) {
    let percent = |share: Option<f64>| {
        share.map_or_else(|| "n/a".to_owned(), |s| format!("{:.1}%", s * 100.0))
    };
    let _ = writeln!(out, "== {name} ({} rows)", tally.rows());
    let _ = writeln!(out, "  {:<12} {:>6} {:>6} {:>6}", "label", "allow", "hold", "deny");
    for label in Label::ALL {
        let _ = writeln!(
            out,
            "  {:<12} {:>6} {:>6} {:>6}",
            label.as_str(),
            tally.count(label, Verdict::Allow),
            tally.count(label, Verdict::Hold),
            tally.count(label, Verdict::Deny),
        );
    }
    let _ = writeln!(
        out,
        "  recall_destructive {}  false_hold_read {}  false_hold_write {}",
        percent(tally.stopped_share(Label::Destructive)),
        percent(tally.stopped_share(Label::Read)),
        percent(tally.stopped_share(Label::Write)),
    );
    if !tally.missed.is_empty() {
        let _ = writeln!(out, "  missed destructive: {}", tally.missed.join(" "));
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &str = r#"{"id":"a-1","api":"x","method":"DELETE","url":"https://api.example.com/v1/repos/r","body":null,"label":"destructive"}
not json at all
{"id":"a-2","api":"x","method":"GET","label":"read"}

{"id":"a-3","api":"mcp:fs","tool":"read_file","description":"Read a file.","annotations":{"readOnlyHint":true},"arguments":{"path":"a"},"label":"read"}
{"id":"a-4","api":"x","method":"GET","url":"https://api.example.com/v1/repos","summary":"delete everything","operation":"deleteAll","label":"read","reason":"drop"}
{"id":"a-5","api":"x","method":"POST","url":"https://api.example.com/v1/refunds","body":{"amount":1},"label":"write"}
"#;

    #[test]
    fn malformed_lines_are_skipped_and_the_rest_are_counted() {
        let eval = evaluate(&HeuristicClassifier::default(), CORPUS, "corpus", false);
        assert_eq!(eval.skipped, 2);
        assert_eq!(eval.overall.rows(), 4);
        assert_eq!(eval.timings.len(), 4);
        assert_eq!(eval.per_api.get("mcp:fs").map(Tally::rows), Some(1));
        assert_eq!(eval.overall.count(Label::Destructive, Verdict::Hold), 1);
        assert_eq!(eval.overall.count(Label::Read, Verdict::Allow), 2);
    }

    #[test]
    fn summary_reports_the_figures_and_the_rows_to_look_at() {
        let mut eval = evaluate(&HeuristicClassifier::default(), CORPUS, "corpus", false);
        let median_ns = median(&mut eval.timings);
        let s = summary(&eval, median_ns, None);
        assert!(s.get("rules").is_none() && s.get("llm").is_none());
        assert_eq!(s["rows"], 4);
        assert_eq!(s["skipped"], 2);
        assert_eq!(s["recall_destructive"], 1.0);
        assert_eq!(s["false_hold_read"], 0.0);
        assert_eq!(s["false_hold_write"], 1.0);
        assert_eq!(s["false_holds_write"], json!(["a-5"]));
        assert_eq!(s["per_api"]["x"]["rows"], 3);
        assert_eq!(s["confusion"]["destructive"]["hold"], 1);
        assert!(s["median_ns"].as_u64().is_some_and(|ns| ns > 0));
    }

    #[test]
    fn tool_rows_become_tool_calls_and_human_columns_are_not_read() {
        let line = r#"{"id":"t","api":"mcp:fs","tool":"write_file","description":"Overwrite a file.","annotations":{"destructiveHint":true},"arguments":{"path":"a"},"label":"destructive","summary":"harmless","reason":"x"}"#;
        let action = action_of(&parse_row(line).unwrap()).unwrap();
        let op = action.operation.as_ref().unwrap();
        assert_eq!(op.name, "write_file");
        let tool = op.tool.as_ref().unwrap();
        assert_eq!(tool.annotations.destructive_hint, Some(true));
        assert!(!action.body.preview.contains("harmless"));
    }

    /// A chat-completions server on 127.0.0.1:0 whose model answers
    /// every request with `answer`; returns its base URL.
    async fn scripted_model(answer: Value) -> String {
        let content = answer.to_string();
        let reply = move || {
            let content = content.clone();
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/v1")
    }

    /// Two destructive rows, one the rules hold and one they let through
    /// (a GET with side effects), and a read.
    const LLM_CORPUS: &str = r#"{"id":"d-1","api":"x","method":"DELETE","url":"https://api.example.com/v1/repos/r","label":"destructive"}
{"id":"d-2","api":"x","method":"GET","url":"https://api.example.com/v1/exports/latest","label":"destructive"}
{"id":"r-1","api":"x","method":"GET","url":"https://api.example.com/v1/repos","label":"read"}
"#;

    async fn compare_with(base_url: &str) -> Value {
        let mut config = LlmConfig::new(base_url, "scripted");
        config.timeout = std::time::Duration::from_secs(5);
        let classifier = composed(HeuristicClassifier::default(), &config).unwrap();
        let (mut eval, comparison) = compare(&classifier, LLM_CORPUS, "corpus", false).await;
        let median_ns = median(&mut eval.timings);
        assert!(compared(&comparison).contains("rules alone"));
        summary(&eval, median_ns, Some(&comparison))
    }

    #[tokio::test]
    async fn with_a_model_rules_llm_and_composed_figures_are_all_reported() {
        let hold = json!({"verdict": "hold", "risk": "high", "confidence": 0.8,
                          "rationale": "Exports may trigger side effects.", "markers": []});
        let s = compare_with(&scripted_model(hold).await).await;

        for figures in [&s, &s["rules"], &s["llm"]] {
            for key in ["recall_destructive", "false_hold_read", "false_hold_write", "confusion"] {
                assert!(figures.get(key).is_some(), "{key} missing in {figures}");
            }
        }
        assert_eq!(s["rules"]["recall_destructive"], 0.5, "{s}");
        assert_eq!(s["rules"]["missed_destructive"], json!(["d-2"]));
        assert_eq!(s["llm"]["recall_destructive"], 1.0);
        assert_eq!(s["llm"]["false_hold_read"], 1.0);
        assert_eq!(s["llm"]["answered"], 3);
        assert_eq!(s["llm"]["failures"], json!({}));
        assert_eq!(s["recall_destructive"], 1.0);
        assert_eq!(s["confusion"]["read"]["hold"], 1);
        let composed = s["recall_destructive"].as_f64().unwrap();
        assert!(composed >= s["rules"]["recall_destructive"].as_f64().unwrap());
        assert_eq!(s["per_api"]["x"]["rows"], 3);
    }

    #[tokio::test]
    async fn an_unreachable_model_is_counted_as_failures_and_the_rules_decide() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let s = compare_with(&format!("http://127.0.0.1:{port}/v1")).await;

        assert_eq!(s["llm"]["answered"], 0);
        assert_eq!(s["llm"]["failures"], json!({"transport": 3}), "{s}");
        assert_eq!(s["confusion"], s["rules"]["confusion"]);
        assert_eq!(s["recall_destructive"], 0.5);
    }

    #[test]
    fn figures_are_absent_rather_than_invented_when_a_label_has_no_rows() {
        let tally = Tally::default();
        assert_eq!(tally.stopped_share(Label::Read), None);
        assert_eq!(tally.figures()["recall_destructive"], Value::Null);
        assert_eq!(median(&mut []), 0);
    }
}
