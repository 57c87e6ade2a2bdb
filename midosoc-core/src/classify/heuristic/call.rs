//! Reading the calls a body carries: JSON-RPC methods, GraphQL documents and
//! MCP tool calls with what their server advertised.

use serde_json::{Map, Value};

use super::body::{BodyCx, looks_like_command, nested_request};
use super::graphql;
use super::request::Method;
use super::rules::{Effect, NounScope, Roles};
use super::scan::{Kind, Place, Scan, Strength, rule};
use super::text;
use crate::action::{Action, ToolInfo};

/// Most calls read from one JSON-RPC or GraphQL batch.
pub(super) const MAX_BATCH: usize = 64;

/// What an operation's words said, for the rules that combine them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct OpSummary {
    pub(super) read: bool,
    pub(super) write: bool,
    pub(super) destructive: bool,
}

/// One call carried by a JSON body.
#[derive(Debug)]
pub(super) enum Call<'j> {
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
pub(super) fn calls(json: &Value) -> Vec<Call<'_>> {
    match json {
        Value::Array(items) if items.iter().any(is_envelope) => {
            items.iter().take(MAX_BATCH).map(call).collect()
        }
        other => vec![call(other)],
    }
}

pub(super) fn is_envelope(v: &Value) -> bool {
    matches!(call(v), Call::Tool { .. } | Call::Rpc { .. } | Call::GraphQl { .. })
}

pub(super) fn call(json: &Value) -> Call<'_> {
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
pub(super) fn form_value(value: &str) -> Value {
    match value {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        v => v.parse::<i64>().map_or_else(|_| Value::String(v.to_owned()), Value::from),
    }
}

/// A form-encoded body as JSON: `metadata[note]=x&force=true` gives
/// `{"metadata": {"note": "x"}, "force": true}`.
pub(super) fn form_body(action: &Action) -> Option<Value> {
    pub(super) const MAX_PAIRS: usize = 256;
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

impl Scan<'_> {
    /// Verbs of an operation's words, each with the others as its objects.
    pub(super) fn operation_verbs(&mut self, words: &[String], place: Place) -> OpSummary {
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
    pub(super) fn operation(&mut self, words: &[String], place: Place) -> OpSummary {
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

    pub(super) fn rpc(&mut self, method: &str, params: Option<&Value>) {
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

    pub(super) fn graphql(&mut self, document: &str, variables: Option<&Value>) {
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
    pub(super) fn tool(&mut self, name: &str, arguments: Option<&Value>, info: Option<&ToolInfo>) {
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

    pub(super) fn tool_info(&mut self, info: &ToolInfo) {
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
}
