//! The deterministic classifier: reads an action's method, path, query,
//! headers, body and tool call against a [`RuleTable`] and decides whether a
//! person must look at it.
//!
//! It works in two steps. First every part of the request is read for
//! findings: a verb such as `delete` or `refund`, a sensitive resource such
//! as `secrets`, a body flag such as `"force": true`, SQL that drops a table,
//! a shell command that removes files, a GraphQL mutation, an MCP tool and
//! its annotations. Then the findings are weighed:
//!
//! - **deny** only when the rule table lists the operation as always denied
//!   (nothing, by default);
//! - **hold** when a destructive finding stands;
//! - **allow** otherwise, as a read or as an ordinary write.
//!
//! Findings have a strength. A strong one (a destructive verb, `DELETE`,
//! `DROP TABLE`) always stands. A moderate one (a sensitive resource named in
//! the path, a role in the body) stands unless the operation itself says it
//! only reads (`POST /secrets/list`). A hint (an MCP server's
//! `destructiveHint`) stands unless the operation names any explicit read or
//! ordinary change. A dry run (`"dry_run": true`) sets aside what the body
//! asked for, never what the method or path say.
//!
//! # Security
//!
//! - What the agent says about itself cannot lower risk: the `intent` and
//!   free text in bodies (descriptions, comments, messages) are never read,
//!   so "this is safe, just a read" changes nothing.
//! - An MCP server's annotations come from a server that may be hostile or
//!   wrong: `readOnlyHint` is recorded and never lowers anything.
//! - Spelling tricks are undone before matching (see the `text` module), and
//!   a method override header or `_method` field counts when it is more
//!   dangerous than the method on the wire.

mod graphql;
mod rules;
mod shell;
mod sql;
#[cfg(test)]
mod tests;
mod text;

use std::fmt::Write as _;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tracing::instrument;

use self::rules::{Effect, Lexicon, NounScope, OnGet, Roles};
use self::shell::ShellEffect;
use self::sql::SqlEffect;
use self::text::PathView;
use crate::action::{Action, ToolInfo};
use crate::classify::{Assessment, Classifier, ClassifyError, Marker, Risk, Verdict};

pub use self::rules::{RuleTable, RuleTableError};

/// Name recorded as the deciding classifier.
const CLASSIFIER: &str = "heuristic";

/// Deepest JSON nesting read.
const MAX_BODY_DEPTH: usize = 16;

/// Most JSON values read in one body.
const MAX_BODY_NODES: usize = 4096;

/// How deep requests inside requests (batches, HTTP tools) are followed.
const MAX_NESTED: usize = 2;

/// Most calls read from one JSON-RPC or GraphQL batch.
const MAX_BATCH: usize = 64;

/// Longest matched text kept in a marker.
const MAX_MATCHED: usize = 120;

/// Headers that override the method on the wire.
const OVERRIDE_HEADERS: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];

/// Query keys that confirm a side effect: `GET /users/9/reset?confirm=true`.
const CONFIRM_KEYS: &[&str] =
    &["confirm", "confirmed", "force", "yes", "execute", "commit", "really", "sure"];

/// Rules and heuristics that judge an action in microseconds, with no I/O.
///
/// ```
/// use midosoc_core::classify::{HeuristicClassifier, Verdict};
/// use midosoc_core::{Action, AgentId};
///
/// let classifier = HeuristicClassifier::default();
/// let refund = Action::builder(AgentId::new("bot"), "POST", "https://api.stripe.com/v1/refunds")
///     .body(r#"{"charge":"ch_1"}"#)
///     .build();
/// assert_eq!(classifier.assess(&refund).verdict, Verdict::Hold);
///
/// let list = Action::builder(AgentId::new("bot"), "GET", "https://api.stripe.com/v1/refunds").build();
/// assert_eq!(classifier.assess(&list).verdict, Verdict::Allow);
/// ```
#[derive(Debug)]
pub struct HeuristicClassifier {
    table: RuleTable,
    lexicon: Lexicon,
}

impl Default for HeuristicClassifier {
    /// The classifier with the built-in rule table.
    fn default() -> Self {
        // INVARIANT: the built-in table compiles; `RuleTable::default` has
        // already validated it and a unit test loads it.
        Self::new(RuleTable::default()).unwrap_or_else(|e| panic!("built-in rule table: {e}"))
    }
}

impl HeuristicClassifier {
    /// A classifier using `table`.
    pub fn new(table: RuleTable) -> Result<Self, RuleTableError> {
        let lexicon = Lexicon::compile(&table)?;
        Ok(Self { table, lexicon })
    }

    /// The rule table in use.
    pub fn rules(&self) -> &RuleTable {
        &self.table
    }

    /// Assesses one action. Pure and synchronous; never fails.
    pub fn assess(&self, action: &Action) -> Assessment {
        let lex = &self.lexicon;
        let mut scan = Scan::new(lex);

        let query = action.query().map(text::query_pairs).unwrap_or_default();
        let method = scan.effective_method(action, &query);
        let mut path = PathView::parse(action.path(), lex, method.changes());
        // A key without a value names a sub-resource, as a path segment
        // would: S3's `PUT /bucket?policy` or `POST /bucket?delete`.
        for (key, value) in &query {
            if value.is_empty() {
                path.push_subresource(key, lex);
            }
        }
        let form = if action.json().is_none() { form_body(action) } else { None };
        let json = action.json().or(form.as_ref());
        let calls = json.map(calls).unwrap_or_default();
        let endpoint = !calls.is_empty() && calls.iter().all(|c| !matches!(c, Call::Plain(_)));

        scan.request(method, &path, &query, endpoint, Place::Path, 0);
        scan.headers(action);
        if path.mixed_script && method.changes() {
            scan.destructive(rule::MIXED_SCRIPT, Place::Path, action.path(), Strength::Moderate);
        }

        let tool = action.operation.as_ref().and_then(|op| op.tool.as_ref());
        for call in calls.into_iter().take(MAX_BATCH) {
            match call {
                Call::Tool { name, arguments } => scan.tool(name, arguments, tool),
                Call::Rpc { method: name, params } => scan.rpc(name, params),
                Call::GraphQl { document, variables } => scan.graphql(document, variables),
                Call::Plain(body) => {
                    let words =
                        path.final_literal().map(|(_, s)| s.tokens.clone()).unwrap_or_default();
                    let cx = BodyCx::new(lex, method, &words, method == Method::Post, false);
                    scan.body(body, &cx);
                }
            }
        }
        if json.is_none() {
            scan.text_body(action, method);
        }

        decide(scan.findings)
    }
}

#[async_trait]
impl Classifier for HeuristicClassifier {
    #[instrument(skip_all, fields(agent.id = %action.agent, http.method = %action.method))]
    async fn classify(&self, action: &Action) -> Result<Assessment, ClassifyError> {
        let assessment = self.assess(action);
        tracing::debug!(verdict = %assessment.verdict, risk.level = %assessment.risk, "classified");
        Ok(assessment)
    }
}

// ---------------------------------------------------------------------------
// Findings.

/// How much a destructive finding weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Strength {
    /// Set aside by any explicit read or ordinary change.
    Hint,
    /// Set aside when the operation itself only reads.
    Moderate,
    /// Always stands.
    Strong,
}

/// Where a finding was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Method,
    Path,
    Query,
    Header,
    Operation,
    Tool,
    Body,
    Annotation,
    Description,
}

impl Place {
    fn as_str(self) -> &'static str {
        match self {
            Place::Method => "method",
            Place::Path => "path",
            Place::Query => "query",
            Place::Header => "header",
            Place::Operation => "operation",
            Place::Tool => "tool",
            Place::Body => "body",
            Place::Annotation => "annotation",
            Place::Description => "description",
        }
    }

    /// Whether evidence found here describes the operation itself, rather
    /// than data the agent chose to send along.
    fn names_operation(self) -> bool {
        matches!(self, Place::Method | Place::Path | Place::Operation | Place::Tool | Place::Header)
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind<'a> {
    Destructive { label: &'a str, risk: Risk, strength: Strength },
    Read,
    Write,
    DryRun,
    Deny,
    Note,
}

#[derive(Debug)]
struct Finding<'a> {
    rule: &'a str,
    place: Place,
    matched: String,
    kind: Kind<'a>,
}

/// A rule defined by the classifier itself rather than by a word list.
#[derive(Clone, Copy, Debug)]
struct CodeRule {
    name: &'static str,
    label: &'static str,
    risk: Risk,
}

/// Rules whose knowledge is grammar (SQL, HTTP, shell) rather than words.
mod rule {
    use super::{CodeRule, Risk};

    const fn r(name: &'static str, label: &'static str, risk: Risk) -> CodeRule {
        CodeRule { name, label, risk }
    }

    pub(super) const DELETE: CodeRule = r("method.delete", "deletes a resource", Risk::High);
    pub(super) const PURGE: CodeRule = r("method.purge", "purges a resource", Risk::High);
    pub(super) const UNKNOWN_METHOD: CodeRule =
        r("method.unknown", "uses an unrecognised HTTP method", Risk::Medium);
    pub(super) const MIXED_SCRIPT: CodeRule =
        r("text.mixed_script", "spells words with look-alike letters", Risk::Medium);
    pub(super) const BODY_UNREAD: CodeRule =
        r("body.unread", "has more body than the classifier reads", Risk::Medium);
    pub(super) const SQL_ERASE: CodeRule =
        r("sql.erase", "deletes, drops or truncates data", Risk::High);
    pub(super) const SQL_MASS: CodeRule =
        r("sql.mass_update", "changes every row of a table", Risk::High);
    pub(super) const SQL_ACCESS: CodeRule =
        r("sql.access", "changes database privileges or users", Risk::Critical);
    pub(super) const SQL_SCHEMA: CodeRule =
        r("sql.schema", "changes a database schema", Risk::High);
    pub(super) const SQL_EXEC: CodeRule =
        r("sql.exec", "runs a stored procedure or program", Risk::High);
    pub(super) const SQL_STOP: CodeRule =
        r("sql.stop", "stops database sessions or the server", Risk::High);
    pub(super) const SHELL_OPAQUE: CodeRule =
        r("shell.opaque", "runs code the gateway cannot inspect", Risk::High);
    pub(super) const SHELL_DESTRUCTIVE: CodeRule =
        r("shell.destructive", "runs a destructive command", Risk::High);
    pub(super) const SHELL_OVERWRITE: CodeRule =
        r("shell.overwrite", "overwrites a file", Risk::High);
    pub(super) const FLAG: CodeRule = r("body.flag", "sets a destructive option", Risk::High);
    pub(super) const WEAKEN: CodeRule =
        r("body.protection_off", "turns off a protection", Risk::Critical);
    pub(super) const EXPOSE: CodeRule =
        r("body.exposure", "makes something public", Risk::Critical);
    pub(super) const ACCESS_FIELD: CodeRule =
        r("body.access_field", "sets roles, permissions or scopes", Risk::Critical);
    pub(super) const SHARED_BRANCH: CodeRule =
        r("body.shared_branch", "changes a shared branch in place", Risk::High);
    pub(super) const EXFILTRATE: CodeRule =
        r("body.destination", "sends data to an outside destination", Risk::Critical);
    pub(super) const SCALE_ZERO: CodeRule =
        r("body.scale_to_zero", "scales a running system to zero", Risk::High);
    pub(super) const OVERWRITE_OP: CodeRule =
        r("body.overwrite_operator", "overwrites a whole collection", Risk::High);
    pub(super) const BULK: CodeRule = r("bulk", "changes many items at once", Risk::High);
    pub(super) const DESTRUCTIVE_HINT: CodeRule =
        r("mcp.destructive_hint", "is marked destructive by its MCP server", Risk::Medium);
    pub(super) const DESCRIPTION: CodeRule =
        r("mcp.description", "is described by its server as destructive", Risk::Medium);
}

/// What a request is doing, as far as its method says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Read,
    Post,
    Put,
    Patch,
    Delete,
    Purge,
    Other,
}

impl Method {
    fn of(name: &str) -> Self {
        match name.to_ascii_uppercase().as_str() {
            "GET" | "HEAD" | "OPTIONS" => Method::Read,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "PURGE" => Method::Purge,
            _ => Method::Other,
        }
    }

    fn danger(self) -> u8 {
        match self {
            Method::Read => 0,
            Method::Post => 1,
            Method::Other => 2,
            Method::Put | Method::Patch => 3,
            Method::Delete | Method::Purge => 4,
        }
    }

    fn changes(self) -> bool {
        self != Method::Read
    }
}

/// What an operation's words said, for the rules that combine them.
#[derive(Clone, Copy, Debug, Default)]
struct OpSummary {
    read: bool,
    write: bool,
    destructive: bool,
}

/// What the body rules need to know about the operation around the body.
#[derive(Debug)]
struct BodyCx {
    /// The request changes something.
    mutating: bool,
    /// It creates something new (where exposure is a write, not a leak).
    creating: bool,
    /// It changes content in place, so a shared branch name matters.
    branch_write: bool,
    /// It sends data somewhere.
    export: bool,
    /// It changes items in place, so a selector makes it a mass change.
    update: bool,
    /// It only reads.
    read: bool,
    /// It is a search, so `query` holds search text.
    search: bool,
    /// It is a shell tool, so an opaque command holds.
    shell_tool: bool,
    /// The resource is a protection (`/settings/ssl`), so turning its
    /// setting off weakens it.
    protected_target: bool,
    /// Top-level keys already read as part of the operation.
    skip_top: Vec<String>,
    /// Where the values come from: the body, or the query string.
    place: Place,
}

impl BodyCx {
    fn new(lex: &Lexicon, method: Method, words: &[String], creating: bool, rpc: bool) -> Self {
        let b = &lex.body;
        let read = words.iter().enumerate().any(|(i, _)| {
            lex.verbs.at(words, i).is_some_and(|f| lex.verb_groups[*f.value].effect == Effect::Read)
        });
        Self {
            mutating: method.changes() && !(read && rpc),
            creating,
            branch_write: matches!(method, Method::Put | Method::Patch)
                || b.branch_write_verbs.find(words).is_some(),
            export: b.export_verbs.find(words).is_some(),
            update: b.update_verbs.find(words).is_some(),
            read,
            search: b.search_verbs.find(words).is_some(),
            shell_tool: false,
            protected_target: b.roles(words).has(Roles::PROTECTION),
            skip_top: Vec::new(),
            place: Place::Body,
        }
    }
}

/// One call carried by a JSON body.
#[derive(Debug)]
enum Call<'j> {
    /// An MCP `tools/call`.
    Tool { name: &'j str, arguments: Option<&'j Value> },
    /// Any other JSON-RPC call.
    Rpc { method: &'j str, params: Option<&'j Value> },
    /// A GraphQL request.
    GraphQl { document: &'j str, variables: Option<&'j Value> },
    /// A plain JSON body.
    Plain(&'j Value),
}

/// The calls a JSON body carries; a batch gives several.
fn calls(json: &Value) -> Vec<Call<'_>> {
    match json {
        Value::Array(items) if items.iter().any(is_envelope) => {
            items.iter().take(MAX_BATCH).map(call).collect()
        }
        other => vec![call(other)],
    }
}

fn is_envelope(v: &Value) -> bool {
    matches!(call(v), Call::Tool { .. } | Call::Rpc { .. } | Call::GraphQl { .. })
}

fn call(json: &Value) -> Call<'_> {
    let Some(map) = json.as_object() else { return Call::Plain(json) };
    if let Some(method) = map.get("method").and_then(Value::as_str)
        && (map.contains_key("jsonrpc") || map.contains_key("params"))
    {
        let params = map.get("params");
        if method == "tools/call" {
            let name = params.and_then(|p| p.get("name")).and_then(Value::as_str).unwrap_or("");
            return Call::Tool { name, arguments: params.and_then(|p| p.get("arguments")) };
        }
        return Call::Rpc { method, params };
    }
    if let Some(document) = map.get("query").and_then(Value::as_str)
        && graphql::looks_like_graphql(document)
    {
        return Call::GraphQl { document, variables: map.get("variables") };
    }
    Call::Plain(json)
}

/// A form or query value as JSON: `true`, `false` and integers are typed.
fn form_value(value: &str) -> Value {
    match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        v => v.parse::<i64>().map_or_else(|_| Value::String(v.to_owned()), Value::from),
    }
}

/// A form-encoded body as JSON: `metadata[note]=x&force=true` gives
/// `{"metadata": {"note": "x"}, "force": true}`.
fn form_body(action: &Action) -> Option<Value> {
    const MAX_PAIRS: usize = 256;
    let content_type = action
        .headers
        .iter()
        .find(|h| h.name == "content-type")
        .map(|h| h.value.to_ascii_lowercase());
    let text = action.body.preview.as_str();
    let is_form = match content_type {
        Some(ct) => ct.contains("x-www-form-urlencoded"),
        None => !text.is_empty() && text.contains('=') && !text.contains(char::is_whitespace),
    };
    if !is_form {
        return None;
    }
    let mut root = Map::new();
    for (key, value) in text::form_pairs(text).take(MAX_PAIRS) {
        let value = form_value(&value);
        let mut parts = key.split(['[', ']']).filter(|p| !p.is_empty()).peekable();
        let mut node = &mut root;
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                node.insert(part.to_owned(), value);
                break;
            }
            let child = node.entry(part.to_owned()).or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            let Some(map) = child.as_object_mut() else { break };
            node = map;
        }
    }
    Some(Value::Object(root))
}

// ---------------------------------------------------------------------------
// The scan.

/// Findings gathered while reading one action.
struct Scan<'a> {
    lex: &'a Lexicon,
    findings: Vec<Finding<'a>>,
    /// JSON values read so far, against [`MAX_BODY_NODES`].
    nodes: usize,
    /// A selector key was seen in the body being read.
    selector: bool,
}

impl<'a> Scan<'a> {
    fn new(lex: &'a Lexicon) -> Self {
        Self { lex, findings: Vec::new(), nodes: 0, selector: false }
    }

    fn push(&mut self, rule: &'a str, place: Place, matched: &str, kind: Kind<'a>) {
        let matched = clip(matched);
        let duplicate = self
            .findings
            .iter()
            .any(|f| f.rule == rule && f.place == place && f.matched == matched);
        if !duplicate {
            self.findings.push(Finding { rule, place, matched, kind });
        }
    }

    fn destructive(&mut self, rule: CodeRule, place: Place, matched: &str, strength: Strength) {
        let kind = Kind::Destructive { label: rule.label, risk: rule.risk, strength };
        self.push(rule.name, place, matched, kind);
    }

    /// The method, or a more dangerous one the request asks to override it
    /// with (`X-HTTP-Method-Override: DELETE`, `_method=DELETE`).
    fn effective_method(&mut self, action: &Action, query: &[(String, String)]) -> Method {
        let mut method = Method::of(&action.method);
        let headers = action
            .headers
            .iter()
            .filter(|h| OVERRIDE_HEADERS.contains(&h.name.as_str()))
            .map(|h| h.value.as_str());
        let query = query
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("_method"))
            .map(|(_, v)| v.as_str());
        let body = action.json().and_then(|j| j.get("_method")).and_then(Value::as_str);

        for candidate in headers.chain(query).chain(body) {
            let Some(name) = text::http_method(candidate) else { continue };
            let other = Method::of(name);
            if other.danger() > method.danger() {
                method = other;
                let matched = format!("{} overridden to {name}", action.method);
                self.push("method.override", Place::Method, &matched, Kind::Note);
            }
        }
        if method == Method::Read {
            self.push("method.read", Place::Method, &action.method, Kind::Read);
        }
        method
    }

    /// Reads one verb match, with the objects it acts on.
    fn verb(
        &mut self,
        group: usize,
        matched: &str,
        place: Place,
        strength: Strength,
        objects: &[String],
    ) -> Effect {
        let lex = self.lex;
        let g = &lex.verb_groups[group];
        match g.effect {
            Effect::Read => {
                self.push(&g.rule, place, matched, Kind::Read);
                Effect::Read
            }
            Effect::Write => {
                self.push(&g.rule, place, matched, Kind::Write);
                Effect::Write
            }
            Effect::Destructive => {
                let limited = g.only.as_ref().is_some_and(|only| only.find(objects).is_none());
                let excused = g.unless.find(objects).is_some();
                let unlinks = Some(group) == lex.erase_group && lex.soft.find(objects).is_some();
                if limited || excused || unlinks {
                    self.push(&g.rule, place, matched, Kind::Write);
                    return Effect::Write;
                }
                // `execute_sql`, `run_shell`: what the call carries (SQL, a
                // command) decides, unless it runs on a remote target.
                let in_name = matches!(place, Place::Tool | Place::Operation);
                let remote = lex.remote_targets.find(objects).is_some();
                let strength = if Some(group) == lex.exec_group && in_name && !remote {
                    Strength::Hint
                } else {
                    strength
                };
                self.push(
                    &g.rule,
                    place,
                    matched,
                    Kind::Destructive { label: &g.label, risk: g.risk, strength },
                );
                Effect::Destructive
            }
        }
    }

    /// A word that is a destructive option (`force`, `purge`): its verb
    /// group when it has one, the generic rule otherwise.
    fn option(&mut self, word: &str, place: Place, fallback: CodeRule) {
        let lex = self.lex;
        let tokens = text::words(word, lex);
        let group = (0..tokens.len())
            .find_map(|i| lex.verbs.at(&tokens, i))
            .map(|f| *f.value)
            .filter(|&g| lex.verb_groups[g].effect == Effect::Destructive);
        match group {
            Some(g) => {
                let g = &lex.verb_groups[g];
                let kind =
                    Kind::Destructive { label: &g.label, risk: g.risk, strength: Strength::Strong };
                self.push(fallback.name, place, word, kind);
            }
            None => self.destructive(fallback, place, word, Strength::Strong),
        }
    }

    // -- HTTP ---------------------------------------------------------------

    /// Method, path and query of a request (also one nested in a body).
    fn request(
        &mut self,
        method: Method,
        path: &PathView,
        query: &[(String, String)],
        endpoint: bool,
        place: Place,
        nested: usize,
    ) {
        let method_place = if place == Place::Path { Place::Method } else { place };
        match method {
            Method::Delete => match soft_target(path, self.lex) {
                Some(target) => self.push("relation.soft", place, &target, Kind::Write),
                None => self.destructive(rule::DELETE, method_place, "DELETE", Strength::Strong),
            },
            Method::Purge => self.destructive(rule::PURGE, method_place, "PURGE", Strength::Strong),
            Method::Other => {
                self.destructive(rule::UNKNOWN_METHOD, method_place, "method", Strength::Moderate)
            }
            Method::Read if nested > 0 => self.push("method.read", place, "GET", Kind::Read),
            _ => {}
        }
        if !endpoint {
            let confirmed = query.iter().any(|(k, v)| {
                CONFIRM_KEYS.iter().any(|c| k.eq_ignore_ascii_case(c)) && text::truthy(v)
            });
            self.path_verbs(method, path, place, confirmed);
            if method.changes() {
                self.path_nouns(method, path, place);
            }
        }
        let query_place = if place == Place::Path { Place::Query } else { place };
        self.query(method, path, query, query_place);
    }

    fn path_verbs(&mut self, method: Method, path: &PathView, place: Place, confirmed: bool) {
        let lex = self.lex;
        let last = path.final_literal().map(|(i, _)| i);

        if method == Method::Read {
            // REST puts checks (`GET /pulls/1/merge`) in a GET's last
            // segment; only a verb phrase (`delete-user`) or a confirmed
            // bare verb (`reset?confirm=true`) is an action there.
            let Some((i, seg)) = path.final_literal() else { return };
            let Some(found) = lex.verbs.at(&seg.tokens, 0) else { return };
            let g = &lex.verb_groups[*found.value];
            let counts = match g.on_get {
                OnGet::Never => false,
                OnGet::Phrase => seg.tokens.len() > found.len || confirmed,
                OnGet::Always => true,
            };
            if g.effect == Effect::Destructive && counts {
                let objects = objects_of(path, i, &seg.tokens, found.start, found.len, lex);
                let matched = seg.tokens[..found.len].join(" ");
                self.verb(*found.value, &matched, place, Strength::Strong, &objects);
            }
            return;
        }

        for (i, seg) in path.literals() {
            let Some(found) = lex.verbs.at(&seg.tokens, 0) else { continue };
            let g = &lex.verb_groups[*found.value];
            let is_last = Some(i) == last;
            // A verb between two names (`/repos/acme/cleanup-tool/issues`)
            // is part of a name; an action sits last or next to an id.
            let beside_id = i.checked_sub(1).is_some_and(|p| path.is_id(p)) || path.is_id(i + 1);
            let counts = match g.effect {
                Effect::Destructive => is_last || beside_id,
                Effect::Read | Effect::Write => is_last,
            };
            if counts {
                let objects = objects_of(path, i, &seg.tokens, found.start, found.len, lex);
                let matched = seg.tokens[..found.len].join(" ");
                self.verb(*found.value, &matched, place, Strength::Strong, &objects);
            }
        }

        // Reads anywhere in the last segment: `bulk-list`, `_search`.
        if let Some((_, seg)) = path.final_literal() {
            for j in 1..seg.tokens.len() {
                let Some(found) = lex.verbs.at(&seg.tokens, j) else { continue };
                let g = &lex.verb_groups[*found.value];
                if g.effect == Effect::Read {
                    self.push(&g.rule, place, &seg.tokens[j], Kind::Read);
                }
            }
            let has_update = lex.body.update_verbs.find(&seg.tokens).is_some();
            if has_update && let Some(bulk) = lex.body.bulk_words.find(&seg.tokens) {
                let word = seg.tokens[bulk.start].clone();
                self.destructive(rule::BULK, place, &word, Strength::Moderate);
            }
        }
    }

    fn path_nouns(&mut self, method: Method, path: &PathView, place: Place) {
        let lex = self.lex;
        let last = path.final_literal().map(|(i, _)| i);
        let last_reads = path.final_literal().is_some_and(|(_, seg)| {
            lex.verbs
                .at(&seg.tokens, 0)
                .is_some_and(|f| lex.verb_groups[*f.value].effect == Effect::Read)
        });
        // An action on an item: `/charges/{id}/capture`.
        let action_at = last.filter(|&l| l >= 1 && path.is_id(l - 1));
        let mut fired: Vec<usize> = Vec::new();

        for (i, seg) in path.literals() {
            for j in 0..seg.tokens.len() {
                let Some(found) = lex.nouns.at(&seg.tokens, j) else { continue };
                let ends_segment = found.start + found.len == seg.tokens.len();
                let matched = seg.tokens[found.start..found.start + found.len].join(" ");
                for &g in found.value {
                    if fired.contains(&g) {
                        continue;
                    }
                    let sense = &lex.noun_groups[g];
                    let strength = match sense.scope {
                        NounScope::Mutate => Some(Strength::Moderate),
                        NounScope::Create => {
                            (method == Method::Post && Some(i) == last && ends_segment)
                                .then_some(Strength::Strong)
                        }
                        NounScope::Action => {
                            let on_item = action_at.is_some_and(|a| {
                                (Some(i) == a.checked_sub(2) && ends_segment) || i == a
                            });
                            (method == Method::Post && on_item && !last_reads)
                                .then_some(Strength::Strong)
                        }
                    };
                    if let Some(strength) = strength {
                        fired.push(g);
                        let kind =
                            Kind::Destructive { label: &sense.label, risk: sense.risk, strength };
                        self.push(&sense.rule, place, &matched, kind);
                    }
                }
            }
        }
    }

    /// The query string. An operation named in it (`?Action=...`) is read
    /// as an operation; on a request that changes something, the other
    /// parameters are read like body fields.
    fn query(&mut self, method: Method, path: &PathView, query: &[(String, String)], place: Place) {
        let lex = self.lex;
        let mut fields = Map::new();
        for (key, value) in query {
            if key.eq_ignore_ascii_case("_method") || value.is_empty() {
                continue;
            }
            let key_words = text::words(key, lex);
            let roles = lex.body.roles(&key_words);
            if roles.has(Roles::VERB) {
                let words = text::words(value, lex);
                let op_place = if place == Place::Query { Place::Operation } else { place };
                self.operation(&words, op_place);
            } else if roles.has(Roles::DRY_RUN) && text::truthy(value) {
                self.push("query.dry_run", place, key, Kind::DryRun);
            } else if method.changes() {
                fields.insert(key.clone(), form_value(value));
            }
        }
        if !fields.is_empty() {
            let words = path.final_literal().map(|(_, s)| s.tokens.clone()).unwrap_or_default();
            let mut cx = BodyCx::new(lex, method, &words, false, false);
            cx.place = place;
            self.body(&Value::Object(fields), &cx);
        }
    }

    fn headers(&mut self, action: &Action) {
        // AWS JSON APIs name the operation in a header:
        // `X-Amz-Target: DynamoDB_20120810.DeleteTable`.
        for header in action
            .headers
            .iter()
            .filter(|h| matches!(h.name.as_str(), "x-amz-target" | "soapaction"))
        {
            let words = text::words(&header.value, self.lex);
            self.operation(&words, Place::Header);
        }
    }

    // -- operations -----------------------------------------------------------

    /// Verbs of an operation's words, each with the others as its objects.
    fn operation_verbs(&mut self, words: &[String], place: Place) -> OpSummary {
        let lex = self.lex;
        let mut summary = OpSummary::default();
        let mut i = 0;
        while i < words.len() {
            let Some(found) = lex.verbs.at(words, i) else {
                i += 1;
                continue;
            };
            let objects: Vec<String> = words
                .iter()
                .enumerate()
                .filter(|(k, _)| *k < i || *k >= i + found.len)
                .map(|(_, w)| w.clone())
                .collect();
            let matched = words[i..i + found.len].join(" ");
            match self.verb(*found.value, &matched, place, Strength::Strong, &objects) {
                Effect::Read => summary.read = true,
                Effect::Write => summary.write = true,
                Effect::Destructive => summary.destructive = true,
            }
            i += found.len;
        }
        if lex.deny.find(words).is_some() {
            self.push("deny.phrase", place, &words.join(" "), Kind::Deny);
        }
        summary
    }

    /// Verbs and sensitive nouns of an operation name: a JSON-RPC method,
    /// an MCP tool with its `method` argument, a GraphQL field.
    fn operation(&mut self, words: &[String], place: Place) -> OpSummary {
        let lex = self.lex;
        let summary = self.operation_verbs(words, place);
        let creates = lex.body.create_verbs.find(words).is_some();
        let updates = lex.body.update_verbs.find(words).is_some();
        let rest: Vec<String> =
            words.iter().filter(|w| lex.verb_of(w).is_none()).cloned().collect();

        let mut fired: Vec<usize> = Vec::new();
        for j in 0..words.len() {
            let Some(found) = lex.nouns.at(words, j) else { continue };
            let matched = words[found.start..found.start + found.len].join(" ");
            for &g in found.value {
                let sense = &lex.noun_groups[g];
                let strength = match sense.scope {
                    NounScope::Mutate => (!summary.read).then_some(Strength::Moderate),
                    NounScope::Create => {
                        let head = lex.nouns.suffix(&rest).is_some_and(|f| f.value.contains(&g));
                        (creates && !summary.read && head).then_some(Strength::Strong)
                    }
                    NounScope::Action => {
                        // `confirmPaymentIntent`: an action no verb of the
                        // table names; a named one speaks for itself.
                        let acted = words.len() > found.len;
                        let named = summary.read || summary.write || summary.destructive;
                        (acted && !named && !creates && !updates).then_some(Strength::Strong)
                    }
                };
                if let Some(strength) = strength.filter(|_| !fired.contains(&g)) {
                    fired.push(g);
                    let kind =
                        Kind::Destructive { label: &sense.label, risk: sense.risk, strength };
                    self.push(&sense.rule, place, &matched, kind);
                }
            }
        }
        summary
    }

    fn rpc(&mut self, method: &str, params: Option<&Value>) {
        let words = text::words(method, self.lex);
        let summary = self.operation(&words, Place::Operation);
        let creating = self.lex.body.create_verbs.find(&words).is_some();
        let mut cx = BodyCx::new(self.lex, Method::Post, &words, creating, true);
        cx.read |= summary.read && !summary.write && !summary.destructive;
        cx.mutating = !cx.read;
        if let Some(params) = params {
            self.body(params, &cx);
        }
    }

    fn graphql(&mut self, document: &str, variables: Option<&Value>) {
        let lex = self.lex;
        let doc = graphql::analyse(document);
        if doc.read && !doc.mutation {
            self.push("graphql.query", Place::Operation, "query", Kind::Read);
        }
        let mut words = Vec::new();
        for field in &doc.fields {
            let field_words = text::words(field, lex);
            let summary = self.operation(&field_words, Place::Operation);
            if !summary.destructive {
                self.push("graphql.mutation", Place::Operation, field, Kind::Write);
            }
            words.extend(field_words);
        }
        let creating = lex.body.create_verbs.find(&words).is_some();
        let mut cx = BodyCx::new(lex, Method::Post, &words, creating, true);
        cx.mutating = doc.mutation;
        cx.read = !doc.mutation;
        for (key, value) in &doc.arguments {
            self.key(key, value, 0, &cx, 0);
        }
        if let Some(variables) = variables {
            self.body(variables, &cx);
        }
    }

    /// An MCP tool call: the tool's name with its `method`-like arguments,
    /// its arguments, and what its server advertised.
    fn tool(&mut self, name: &str, arguments: Option<&Value>, info: Option<&ToolInfo>) {
        let lex = self.lex;
        let name_words = text::words(name, lex);
        let mut words = name_words.clone();
        let mut merged = Vec::new();
        // A multi-purpose tool says what it does in an argument:
        // `label_write {"method": "delete"}`. An HTTP tool's `method` is
        // the method of the request it sends, read as a nested request.
        let args = arguments.and_then(Value::as_object);
        if let Some(args) = args.filter(|a| nested_request(a, lex).is_none()) {
            for (key, value) in args {
                let Some(value) = value.as_str() else { continue };
                let key_words = text::words(key, lex);
                if lex.body.roles(&key_words).has(Roles::VERB) && !looks_like_command(value) {
                    words.extend(text::words(value, lex));
                    merged.push(key.clone());
                }
            }
        }

        let summary = self.operation(&words, Place::Tool);
        let creating = lex.body.create_verbs.find(&words).is_some();
        let mut cx = BodyCx::new(lex, Method::Post, &words, creating, true);
        cx.read |= summary.read && !summary.write && !summary.destructive;
        cx.mutating = !cx.read;
        cx.shell_tool = lex.shell_tools.find(&name_words).is_some();
        cx.skip_top = merged;

        if let Some(info) = info {
            self.tool_info(info);
        }
        if let Some(arguments) = arguments {
            self.body(arguments, &cx);
        }
    }

    fn tool_info(&mut self, info: &ToolInfo) {
        let a = &info.annotations;
        if a.destructive_hint == Some(true) {
            self.destructive(
                rule::DESTRUCTIVE_HINT,
                Place::Annotation,
                "destructiveHint",
                Strength::Hint,
            );
        }
        if a.read_only_hint == Some(true) {
            // SECURITY: a server's claim that a tool only reads never
            // lowers anything; it is recorded for the reviewer.
            self.push("mcp.read_only_hint", Place::Annotation, "readOnlyHint", Kind::Note);
        }
        if a.read_only_hint.is_none() && a.destructive_hint.is_none() {
            // The protocol's default for a tool without annotations is
            // destructive and open-world; alone it is too weak to hold on.
            self.push("mcp.default_hints", Place::Annotation, "no annotations", Kind::Note);
        }
        if let (Some(description), Some(phrases)) =
            (&info.description, &self.lex.description_phrases)
        {
            let whole_word = |m: &aho_corasick::Match| {
                let before = description[..m.start()].chars().next_back();
                let after = description[m.end()..].chars().next();
                !before.is_some_and(char::is_alphanumeric)
                    && !after.is_some_and(char::is_alphanumeric)
            };
            if let Some(m) = phrases.find_iter(description.as_str()).find(whole_word) {
                let matched = &description[m.start()..m.end()];
                self.destructive(rule::DESCRIPTION, Place::Description, matched, Strength::Hint);
            }
        }
    }

    // -- bodies ---------------------------------------------------------------

    fn body(&mut self, body: &Value, cx: &BodyCx) {
        self.selector = false;
        self.walk(body, 0, cx, 0);
        if self.selector && cx.update && !cx.read {
            self.destructive(rule::BULK, Place::Body, "selector", Strength::Moderate);
        }
    }

    /// Counts one JSON value against the budget; false once it is spent.
    fn budget(&mut self, depth: usize) -> bool {
        self.nodes += 1;
        if self.nodes <= MAX_BODY_NODES && depth <= MAX_BODY_DEPTH {
            return true;
        }
        // SECURITY: what is not read cannot be judged, so it holds.
        self.destructive(rule::BODY_UNREAD, Place::Body, "body", Strength::Moderate);
        false
    }

    fn walk(&mut self, value: &Value, depth: usize, cx: &BodyCx, nested: usize) {
        if !self.budget(depth) {
            return;
        }
        match value {
            Value::Object(map) => {
                let request = nested_request(map, self.lex);
                if let Some((method, target)) = request
                    && nested < MAX_NESTED
                {
                    self.nested_request(method, target, nested + 1);
                }
                for (key, child) in map {
                    if !self.budget(depth + 1) {
                        return;
                    }
                    let read_as_request = request.is_some_and(|(m, _)| {
                        child.as_str().is_some_and(|c| c.eq_ignore_ascii_case(m))
                    });
                    if read_as_request || (depth == 0 && cx.skip_top.contains(key)) {
                        continue;
                    }
                    self.key(key, child, depth, cx, nested);
                }
            }
            Value::Array(items) => {
                for item in items {
                    if self.nodes > MAX_BODY_NODES {
                        return;
                    }
                    self.walk(item, depth + 1, cx, nested);
                }
            }
            _ => {}
        }
    }

    /// One key of a body and its value.
    fn key(&mut self, key: &str, value: &Value, depth: usize, cx: &BodyCx, nested: usize) {
        let lex = self.lex;
        if lex.body.overwrite_operators.contains(key) {
            self.destructive(rule::OVERWRITE_OP, cx.place, key, Strength::Strong);
        }
        let words = text::words(key, lex);
        let roles = lex.body.roles(&words);
        if words.is_empty() || roles.has(Roles::DATA) {
            return;
        }
        if roles.has(Roles::DRY_RUN) {
            if is_true(value) {
                self.push("body.dry_run", cx.place, key, Kind::DryRun);
            }
            return;
        }
        self.selector |= roles.has(Roles::SELECTOR);
        let changes = cx.mutating;
        let weakens = changes
            && (roles.has(Roles::PROTECTION) || (cx.protected_target && roles.has(Roles::SETTING)));
        let strong = |scan: &mut Self, rule: CodeRule, shown: &str| {
            scan.destructive(rule, cx.place, &format!("{key}: {shown}"), Strength::Strong);
        };

        match value {
            Value::String(s) => self.string_key(key, &words, roles, s, cx, nested),
            Value::Bool(true) => {
                if changes && roles.has(Roles::STATE_FLAG) {
                    self.option(key, cx.place, rule::FLAG);
                }
                if changes && !cx.creating && roles.has(Roles::PUBLIC_FLAG) {
                    strong(self, rule::EXPOSE, "true");
                }
                if changes && roles.has(Roles::ACCESS) {
                    self.destructive(rule::ACCESS_FIELD, cx.place, key, Strength::Moderate);
                }
            }
            Value::Bool(false) => {
                if weakens {
                    strong(self, rule::WEAKEN, "false");
                }
                if changes && !cx.creating && roles.has(Roles::PRIVATE_FLAG) {
                    strong(self, rule::EXPOSE, "false");
                }
            }
            Value::Number(n) if n.as_f64() == Some(0.0) => {
                if changes && roles.has(Roles::SCALE) {
                    strong(self, rule::SCALE_ZERO, "0");
                }
                if weakens {
                    strong(self, rule::WEAKEN, "0");
                }
            }
            Value::Number(_) => {}
            Value::Null => {
                if weakens {
                    strong(self, rule::WEAKEN, "null");
                }
            }
            Value::Object(_) | Value::Array(_) => {
                if changes && roles.has(Roles::ACCESS) {
                    self.destructive(rule::ACCESS_FIELD, cx.place, key, Strength::Moderate);
                }
                if roles.has(Roles::COMMAND)
                    && let Some(line) = command_line(value)
                {
                    self.shell(&line, cx, nested);
                }
                self.walk(value, depth + 1, cx, nested);
            }
        }
    }

    /// A key whose value is text: mostly data, unless the key gives it a
    /// meaning (an operation, SQL, a command, a setting).
    fn string_key(
        &mut self,
        key: &str,
        words: &[String],
        roles: Roles,
        s: &str,
        cx: &BodyCx,
        nested: usize,
    ) {
        let lex = self.lex;
        if roles.has(Roles::VERB) && !looks_like_command(s) {
            let verbs = text::words(s, lex);
            self.operation_verbs(&verbs, cx.place);
        }
        let search_text = words == ["query"] && cx.search;
        if roles.has(Roles::SQL) && !search_text && sql::looks_like_sql(s) {
            self.sql(s);
        } else if roles.has(Roles::COMMAND) && looks_like_command(s) {
            self.shell(s, cx, nested);
        }
        if !cx.mutating {
            return;
        }

        let shown = format!("{key}: {s}");
        let b = &lex.body;
        let exposes = roles.has(Roles::EXPOSURE)
            && !cx.creating
            && b.public_values.whole(&text::words(s, lex));
        let checks = [
            (exposes, rule::EXPOSE),
            (
                (roles.has(Roles::PROTECTION)
                    || (cx.protected_target && roles.has(Roles::SETTING)))
                    && text::falsy(s),
                rule::WEAKEN,
            ),
            (
                roles.has(Roles::BRANCH) && cx.branch_write && is_shared_branch(s, lex),
                rule::SHARED_BRANCH,
            ),
            (roles.has(Roles::DESTINATION) && cx.export && is_external(s), rule::EXFILTRATE),
        ];
        for (fires, rule) in checks {
            if fires {
                self.destructive(rule, cx.place, &shown, Strength::Strong);
            }
        }
        if roles.has(Roles::ACCESS) {
            self.destructive(rule::ACCESS_FIELD, cx.place, &shown, Strength::Moderate);
        }
        if roles.has(Roles::STATE_FLAG) && text::truthy(s) {
            self.option(key, cx.place, rule::FLAG);
        }
    }

    fn nested_request(&mut self, method: &str, target: &str, nested: usize) {
        let method = Method::of(method);
        let (path, query) = split_target(target);
        let path = PathView::parse(path, self.lex, method.changes());
        let query = query.map(text::query_pairs).unwrap_or_default();
        self.request(method, &path, &query, false, Place::Body, nested);
    }

    fn sql(&mut self, text: &str) {
        for finding in sql::analyse(text) {
            let strength = Strength::Strong;
            match finding.effect {
                SqlEffect::Read => self.push("sql.read", Place::Body, &finding.matched, Kind::Read),
                SqlEffect::Write => {
                    self.push("sql.write", Place::Body, &finding.matched, Kind::Write)
                }
                SqlEffect::Erase => {
                    let mut r = rule::SQL_ERASE;
                    if finding.sweeping {
                        r.risk = Risk::Critical;
                    }
                    self.destructive(r, Place::Body, &finding.matched, strength);
                }
                SqlEffect::MassUpdate => {
                    self.destructive(rule::SQL_MASS, Place::Body, &finding.matched, strength)
                }
                SqlEffect::Access => {
                    self.destructive(rule::SQL_ACCESS, Place::Body, &finding.matched, strength)
                }
                SqlEffect::Schema => {
                    self.destructive(rule::SQL_SCHEMA, Place::Body, &finding.matched, strength)
                }
                SqlEffect::Exec => {
                    self.destructive(
                        rule::SQL_EXEC,
                        Place::Body,
                        &finding.matched,
                        Strength::Moderate,
                    );
                }
                SqlEffect::Availability => {
                    self.destructive(rule::SQL_STOP, Place::Body, &finding.matched, strength);
                }
            }
            let words = text::words(&finding.matched, self.lex);
            if self.lex.deny.find(&words).is_some() {
                self.push("deny.phrase", Place::Body, &finding.matched, Kind::Deny);
            }
        }
    }

    fn shell(&mut self, line: &str, cx: &BodyCx, nested: usize) {
        for finding in shell::analyse(line, self.lex) {
            let m = finding.matched.as_str();
            match finding.effect {
                ShellEffect::Read if cx.shell_tool => {
                    self.push("shell.read", Place::Body, m, Kind::Read)
                }
                ShellEffect::Write if cx.shell_tool => {
                    self.push("shell.write", Place::Body, m, Kind::Write)
                }
                ShellEffect::Read | ShellEffect::Write => {}
                ShellEffect::Destructive(word) => {
                    self.option(&word, Place::Body, rule::SHELL_DESTRUCTIVE)
                }
                ShellEffect::Overwrite => {
                    self.destructive(rule::SHELL_OVERWRITE, Place::Body, m, Strength::Strong)
                }
                ShellEffect::Opaque if cx.shell_tool => {
                    self.destructive(rule::SHELL_OPAQUE, Place::Body, m, Strength::Strong);
                }
                ShellEffect::Opaque => {}
                ShellEffect::Request(method, url) => {
                    if nested < MAX_NESTED {
                        self.nested_request(method, &url, nested + 1);
                    }
                }
                ShellEffect::Sql(text) => self.sql(&text),
            }
            let words = text::words(m, self.lex);
            if self.lex.deny.find(&words).is_some() {
                self.push("deny.phrase", Place::Body, m, Kind::Deny);
            }
        }
    }

    /// A body that is not JSON: SQL or GraphQL text, by content type or by
    /// shape.
    fn text_body(&mut self, action: &Action, method: Method) {
        let text = action.body.preview.as_str();
        if text.trim().is_empty() {
            return;
        }
        let content_type = action
            .headers
            .iter()
            .find(|h| h.name == "content-type")
            .map(|h| h.value.to_ascii_lowercase())
            .unwrap_or_default();
        if content_type.contains("graphql") || graphql::looks_like_graphql(text) {
            self.graphql(text, None);
        } else if content_type.contains("sql") || sql::looks_like_sql(text) {
            self.sql(text);
        }
        if action.body.truncated && method.changes() {
            self.destructive(rule::BODY_UNREAD, Place::Body, "body", Strength::Moderate);
        }
    }
}

/// Words of the path before a verb and after it in its segment: what the
/// verb acts on.
fn objects_of(
    path: &PathView,
    index: usize,
    tokens: &[String],
    start: usize,
    len: usize,
    lex: &Lexicon,
) -> Vec<String> {
    let mut objects: Vec<String> = tokens
        .iter()
        .enumerate()
        .filter(|(k, _)| *k < start || *k >= start + len)
        .map(|(_, t)| t.clone())
        .collect();
    path.objects_before(index, 2, lex, &mut objects);
    objects
}

/// The soft relation a `DELETE` removes, if that is all it removes:
/// `/issues/42/reactions/7`, `/threads/9/subscription`.
fn soft_target(path: &PathView, lex: &Lexicon) -> Option<String> {
    let segments = &path.segments;
    let n = segments.len();
    let is_soft = |i: usize| {
        segments.get(i).is_some_and(|s| {
            s.kind == text::SegmentKind::Literal
                && (lex.soft.whole(&s.tokens) || lex.path_soft.whole(&s.tokens))
        })
    };
    // The relation is last, or followed by the key of one link
    // (`/reactions/7`, `/labels/bug`).
    let target = if is_soft(n.checked_sub(1)?) {
        n - 1
    } else if n >= 2 && is_soft(n - 2) {
        n - 2
    } else {
        return None;
    };
    let mut parent = target.checked_sub(1)?;
    while is_soft(parent) {
        parent = parent.checked_sub(1)?;
    }
    path.is_id(parent).then(|| segments[target].tokens.join(" "))
}

/// `{"method": "DELETE", "path": "/users/2"}`: a request inside a body.
fn nested_request<'j>(map: &'j Map<String, Value>, lex: &Lexicon) -> Option<(&'j str, &'j str)> {
    if !map.values().any(|v| v.as_str().and_then(text::http_method).is_some()) {
        return None;
    }
    let mut method = None;
    let mut target = None;
    for (key, value) in map {
        let Some(s) = value.as_str() else { continue };
        let k = text::words(key, lex);
        if let Some(m) = text::http_method(s)
            .filter(|_| matches!(k.last().map(String::as_str), Some("method" | "verb")))
        {
            method = Some(m);
        } else if lex.body.roles(&k).has(Roles::URL) {
            target = Some(s);
        }
    }
    method.zip(target)
}

/// Path and query of a URL or path.
fn split_target(target: &str) -> (&str, Option<&str>) {
    let rest = match target.find("://") {
        Some(i) => {
            let after = &target[i + 3..];
            after.find('/').map_or("/", |j| &after[j..])
        }
        None => target,
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    }
}

fn is_true(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => text::truthy(s),
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        _ => false,
    }
}

/// `main`, `refs/heads/master`, `origin/production`.
fn is_shared_branch(value: &str, lex: &Lexicon) -> bool {
    let name = value.trim().trim_start_matches("refs/heads/");
    let name = name.strip_prefix("origin/").unwrap_or(name);
    lex.body.protected_branches.whole(&[name.to_lowercase()])
}

/// A URL or bucket outside the API: `s3://bucket/x`, `https://host/x`.
fn is_external(value: &str) -> bool {
    let v = value.trim();
    v.contains("://") || v.starts_with("s3:") || v.starts_with("gs:") || v.starts_with("az:")
}

/// Whether a string reads as a command line rather than a single word.
fn looks_like_command(value: &str) -> bool {
    value.trim().contains(char::is_whitespace)
}

/// `["sh", "-c", "rm -rf /x"]` or `"rm -rf /x"` as one line.
fn command_line(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let words: Vec<String> = items
                .iter()
                .filter_map(Value::as_str)
                .map(|w| {
                    if w.contains(char::is_whitespace) {
                        format!("'{}'", w.replace('\'', ""))
                    } else {
                        w.to_owned()
                    }
                })
                .collect();
            (!words.is_empty()).then(|| words.join(" "))
        }
        _ => None,
    }
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_MATCHED {
        return text.to_owned();
    }
    let mut end = MAX_MATCHED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

// ---------------------------------------------------------------------------
// The decision.

fn decide(findings: Vec<Finding<'_>>) -> Assessment {
    let w = Weighing::of(&findings);
    let (verdict, risk, confidence, rationale) = if let Some(i) = w.denied {
        let rationale =
            format!("Denied: `{}` is on the rule table's deny list.", findings[i].matched);
        (Verdict::Deny, Risk::Critical, 0.95, rationale)
    } else if !w.standing.is_empty() {
        w.hold(&findings)
    } else {
        w.allow(&findings)
    };

    let mut assessment = Assessment::new(CLASSIFIER, verdict, risk, confidence, rationale);
    assessment.markers = findings
        .into_iter()
        .map(|f| Marker {
            rule: f.rule.to_owned(),
            location: f.place.as_str().to_owned(),
            matched: f.matched,
        })
        .collect();
    assessment
}

/// The findings sorted into those that stand and those set aside.
#[derive(Debug, Default)]
struct Weighing {
    /// The operation itself says it only reads.
    trusted_read: bool,
    any_read: bool,
    any_write: bool,
    dry_run: bool,
    /// Indices of destructive findings that stand.
    standing: Vec<usize>,
    /// Indices of destructive findings outweighed.
    set_aside: Vec<usize>,
    /// Index of the first deny finding.
    denied: Option<usize>,
}

impl Weighing {
    fn of(findings: &[Finding<'_>]) -> Self {
        let mut w = Weighing::default();
        for f in findings {
            match f.kind {
                Kind::Read => {
                    w.any_read = true;
                    w.trusted_read |= f.place.names_operation();
                }
                Kind::Write => w.any_write = true,
                Kind::DryRun => w.dry_run = true,
                _ => {}
            }
        }
        for (i, f) in findings.iter().enumerate() {
            match f.kind {
                Kind::Deny if w.denied.is_none() => w.denied = Some(i),
                Kind::Destructive { strength, .. } => {
                    let asked = matches!(f.place, Place::Body | Place::Query);
                    let excused = (w.dry_run && asked)
                        || match strength {
                            Strength::Strong => false,
                            Strength::Moderate => w.trusted_read,
                            Strength::Hint => w.any_read || w.any_write,
                        };
                    if excused { w.set_aside.push(i) } else { w.standing.push(i) }
                }
                _ => {}
            }
        }
        w
    }

    fn hold(&self, findings: &[Finding<'_>]) -> (Verdict, Risk, f32, String) {
        let standing: Vec<&Finding<'_>> = self.standing.iter().map(|&i| &findings[i]).collect();
        let risk = standing.iter().filter_map(|f| risk_of(f)).max().unwrap_or(Risk::High);
        let strongest =
            standing.iter().filter_map(|f| strength_of(f)).max().unwrap_or(Strength::Hint);
        let base: f32 = match strongest {
            Strength::Strong => 0.9,
            Strength::Moderate => 0.75,
            Strength::Hint => 0.6,
        };
        let confidence = (base + 0.03 * standing.len().saturating_sub(1) as f32).min(0.99);

        let mut rationale = String::with_capacity(128);
        let _ = write!(rationale, "Held: {}.", describe(&standing));
        if !self.set_aside.is_empty() {
            let aside: Vec<&Finding<'_>> = self.set_aside.iter().map(|&i| &findings[i]).collect();
            let _ = write!(rationale, " Also seen: {}.", describe(&aside));
        }
        (Verdict::Hold, risk, confidence, rationale)
    }

    fn allow(&self, findings: &[Finding<'_>]) -> (Verdict, Risk, f32, String) {
        let read = self.trusted_read && !self.any_write;
        let evidence = findings.iter().find(|f| {
            if read { matches!(f.kind, Kind::Read) } else { matches!(f.kind, Kind::Write) }
        });

        let mut rationale = String::with_capacity(96);
        rationale.push_str(if read { "Allowed as a read" } else { "Allowed as an ordinary write" });
        if let Some(e) = evidence {
            let _ = write!(rationale, " (`{}` in {})", e.matched, e.place.as_str());
        }
        rationale.push_str("; nothing destructive found.");
        let mut confidence: f32 = match (read, evidence.is_none()) {
            (true, _) => 0.9,
            (false, false) => 0.8,
            (false, true) => 0.65,
        };

        if !self.set_aside.is_empty() {
            let why = if self.dry_run {
                "a dry run"
            } else if self.trusted_read {
                "an explicit read"
            } else {
                "an explicit ordinary change"
            };
            let aside: Vec<&Finding<'_>> = self.set_aside.iter().map(|&i| &findings[i]).collect();
            let _ = write!(rationale, " Set aside as outweighed by {why}: {}.", describe(&aside));
            confidence -= 0.15;
        }
        let risk = if read { Risk::Low } else { Risk::Medium };
        (Verdict::Allow, risk, confidence, rationale)
    }
}

fn risk_of(f: &Finding<'_>) -> Option<Risk> {
    match f.kind {
        Kind::Destructive { risk, .. } => Some(risk),
        _ => None,
    }
}

fn strength_of(f: &Finding<'_>) -> Option<Strength> {
    match f.kind {
        Kind::Destructive { strength, .. } => Some(strength),
        _ => None,
    }
}

/// "deletes a resource (`DELETE` in method); moves money (`refunds` in
/// path)", riskiest first, one entry per label.
fn describe(findings: &[&Finding<'_>]) -> String {
    let mut sorted: Vec<&&Finding<'_>> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(risk_of(f)));
    let mut parts: Vec<String> = Vec::new();
    let mut labels: Vec<&str> = Vec::new();
    for f in sorted {
        let Kind::Destructive { label, .. } = f.kind else { continue };
        if labels.contains(&label) {
            continue;
        }
        labels.push(label);
        parts.push(format!("{label} (`{}` in {})", f.matched, f.place.as_str()));
    }
    parts.join("; ")
}
