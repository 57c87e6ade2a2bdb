//! `midosoc eval`: runs the heuristic classifier over a labelled corpus and
//! reports, per API and overall, how its verdicts meet the labels.
//!
//! Each line of the corpus is one request or MCP tool call with a label
//! (`read`, `write` or `destructive`). The classifier sees what a gateway
//! would see: method, URL and body, or for a tool call the JSON-RPC body with
//! the tool's advertised description and annotations. The corpus's own
//! `operation`, `summary` and `reason` columns are never read.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use midosoc_core::action::{ToolAnnotations, ToolInfo};
use midosoc_core::classify::{HeuristicClassifier, RuleTable, Verdict};
use midosoc_core::{Action, AgentId};
use serde::Deserialize;
use serde_json::{Value, json};

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

/// Runs the evaluation.
pub(crate) fn run(args: &EvalArgs) -> anyhow::Result<ExitCode> {
    let classifier = classifier(args.rules.as_ref())?;
    let text = std::fs::read_to_string(&args.corpus)
        .with_context(|| format!("cannot read corpus `{}`", args.corpus.display()))?;
    let source = args.corpus.display().to_string();

    let mut eval = evaluate(&classifier, &text, &source, args.verbose);
    let median_ns = median(&mut eval.timings);
    print!("{}", report(&eval.overall, &eval.per_api, eval.skipped, median_ns));
    if args.json {
        println!("{}", serde_json::to_string(&summary(&eval, median_ns))?);
    }

    Ok(if eval.overall.rows() == 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Classifies every line of `text`. A line that is not a record is
/// reported on stderr with its number and skipped.
fn evaluate(
    classifier: &HeuristicClassifier,
    text: &str,
    source: &str,
    verbose: bool,
) -> Evaluation {
    let mut eval = Evaluation::default();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = match parse_row(line) {
            Ok(row) => row,
            Err(error) => {
                eprintln!("{source}:{}: skipped: {error:#}", index + 1);
                eval.skipped += 1;
                continue;
            }
        };
        let action = match action_of(&row) {
            Ok(action) => action,
            Err(error) => {
                eprintln!("{source}:{}: skipped `{}`: {error:#}", index + 1, row.id);
                eval.skipped += 1;
                continue;
            }
        };

        let started = Instant::now();
        let assessment = classifier.assess(&action);
        eval.timings.push(started.elapsed().as_nanos());

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

        eval.overall.add(&row, assessment.verdict);
        eval.per_api.entry(row.api.clone()).or_default().add(&row, assessment.verdict);
    }
    eval
}

/// The JSON summary: overall figures, then `skipped`, `median_ns` and
/// `per_api`.
fn summary(eval: &Evaluation, median_ns: u128) -> Value {
    let mut figures = eval.overall.figures();
    if let Some(map) = figures.as_object_mut() {
        map.insert("skipped".into(), json!(eval.skipped));
        map.insert("median_ns".into(), json!(median_ns));
        let apis: serde_json::Map<String, Value> =
            eval.per_api.iter().map(|(api, tally)| (api.clone(), tally.figures())).collect();
        map.insert("per_api".into(), Value::Object(apis));
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

/// The human-readable report: one block per API, then the whole corpus.
fn report(
    overall: &Tally,
    per_api: &BTreeMap<String, Tally>,
    skipped: usize,
    median_ns: u128,
) -> String {
    let mut out = String::new();
    for (api, tally) in per_api {
        block(&mut out, api, tally);
    }
    block(&mut out, "overall", overall);
    let _ = writeln!(out, "rows: {}  skipped: {skipped}", overall.rows());
    let _ = writeln!(out, "median classification time: {median_ns} ns");
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
        let s = summary(&eval, median_ns);
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

    #[test]
    fn figures_are_absent_rather_than_invented_when_a_label_has_no_rows() {
        let tally = Tally::default();
        assert_eq!(tally.stopped_share(Label::Read), None);
        assert_eq!(tally.figures()["recall_destructive"], Value::Null);
        assert_eq!(median(&mut []), 0);
    }
}
