//! Reading a body: keys that are settings or operations, SQL, shell
//! commands, and requests nested inside it. Free text is never read.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::request::{Method, split_target};
use super::rules::{Effect, Lexicon, Roles};
use super::scan::{CodeRule, Kind, Place, Scan, Strength, rule};
use super::shell::ShellEffect;
use super::sql::SqlEffect;
use super::text::{self, PathView};
use super::{graphql, shell, sql};
use crate::action::Action;
use crate::classify::Risk;

/// Deepest JSON nesting read.
const MAX_BODY_DEPTH: usize = 16;

/// Most JSON values read in one body.
const MAX_BODY_NODES: usize = 4096;

/// How deep requests inside requests (batches, HTTP tools) are followed.
const MAX_NESTED: usize = 2;

/// What the body rules need to know about the operation around the body.
#[derive(Debug)]
pub(super) struct BodyCx {
    /// The request changes something.
    pub(super) mutating: bool,
    /// It creates something new (where exposure is a write, not a leak).
    pub(super) creating: bool,
    /// It changes content in place, so a shared branch name matters.
    pub(super) branch_write: bool,
    /// It sends data somewhere.
    pub(super) export: bool,
    /// It changes items in place, so a selector makes it a mass change.
    pub(super) update: bool,
    /// It only reads.
    pub(super) read: bool,
    /// It is a search, so `query` holds search text.
    pub(super) search: bool,
    /// It is a shell tool, so an opaque command holds.
    pub(super) shell_tool: bool,
    /// The resource is a protection (`/settings/ssl`), so turning its
    /// setting off weakens it.
    pub(super) protected_target: bool,
    /// Top-level keys already read as part of the operation.
    pub(super) skip_top: Vec<String>,
    /// Where the values come from: the body, or the query string.
    pub(super) place: Place,
}

impl BodyCx {
    pub(super) fn new(
        lex: &Lexicon,
        method: Method,
        words: &[String],
        creating: bool,
        rpc: bool,
    ) -> Self {
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

impl Scan<'_> {
    pub(super) fn body(&mut self, body: &Value, cx: &BodyCx) {
        self.selector = false;
        self.walk(body, 0, cx, 0);
        if self.selector && cx.update && !cx.read {
            self.destructive(rule::BULK, Place::Body, "selector", Strength::Moderate);
        }
    }

    /// Counts one JSON value against the budget; false once it is spent.
    pub(super) fn budget(&mut self, depth: usize) -> bool {
        self.nodes += 1;
        if self.nodes <= MAX_BODY_NODES && depth <= MAX_BODY_DEPTH {
            return true;
        }
        // SECURITY: what is not read cannot be judged, so it holds.
        self.destructive(rule::BODY_UNREAD, Place::Body, "body", Strength::Moderate);
        false
    }

    pub(super) fn walk(&mut self, value: &Value, depth: usize, cx: &BodyCx, nested: usize) {
        if !self.budget(depth) {
            return;
        }
        match value {
            Value::Object(map) if json_patch(map).is_some() => {
                if let Some((field, set)) = json_patch(map) {
                    self.key(field, set, depth, cx, nested);
                }
            }
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
    pub(super) fn key(
        &mut self,
        key: &str,
        value: &Value,
        depth: usize,
        cx: &BodyCx,
        nested: usize,
    ) {
        let lex = self.lex;
        if lex.body.overwrite_operators.contains(key) {
            self.destructive(rule::OVERWRITE_OP, cx.place, key, Strength::Strong);
        }
        let words = key_words(key, lex);
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
        self.command_key(key, &words, value, cx);

        match value {
            Value::String(s) => self.string_key(key, &words, roles, s, cx, nested),
            Value::Object(_) | Value::Array(_) => {
                if cx.mutating && roles.has(Roles::ACCESS) {
                    self.destructive(rule::ACCESS_FIELD, cx.place, key, Strength::Moderate);
                }
                if roles.has(Roles::COMMAND)
                    && let Some(line) = command_line(value)
                {
                    self.shell(&line, cx, nested);
                }
                self.walk(value, depth + 1, cx, nested);
            }
            scalar if cx.mutating => self.scalar_key(key, roles, scalar, cx),
            _ => {}
        }
    }

    /// A key that is itself an erasing command, as in database command
    /// documents: `{"dropDatabase": 1}`, `{"deleteMany": {...}}`.
    fn command_key(&mut self, key: &str, words: &[Cow<'_, str>], value: &Value, cx: &BodyCx) {
        let lex = self.lex;
        let Some(found) = lex.verbs.at(words, 0) else { return };
        let erases = Some(*found.value) == lex.erase_group;
        let given = match value {
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.trim().is_empty() && !text::falsy(s),
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Null => false,
        };
        if erases && given && cx.mutating {
            let g = &lex.verb_groups[*found.value];
            let kind =
                Kind::Destructive { label: &g.label, risk: g.risk, strength: Strength::Strong };
            self.push(&g.rule, cx.place, key, kind);
        }
    }

    /// A key set to `true`, `false`, a number or `null` in a change: a flag,
    /// a protection switched off, a size set to zero.
    fn scalar_key(&mut self, key: &str, roles: Roles, value: &Value, cx: &BodyCx) {
        let weakens =
            roles.has(Roles::PROTECTION) || (cx.protected_target && roles.has(Roles::SETTING));
        let exposes_when = |flag: bool| {
            !cx.creating
                && ((flag && roles.has(Roles::PUBLIC_FLAG))
                    || (!flag && roles.has(Roles::PRIVATE_FLAG)))
        };
        let shown = |v: &str| format!("{key}: {v}");
        let mut fired: Vec<(CodeRule, String)> = Vec::new();

        match value {
            Value::Bool(true) => {
                if roles.has(Roles::STATE_FLAG) {
                    self.option(key, cx.place, rule::FLAG);
                }
                if exposes_when(true) {
                    fired.push((rule::EXPOSE, shown("true")));
                }
                if roles.has(Roles::ACCESS) {
                    self.destructive(rule::ACCESS_FIELD, cx.place, key, Strength::Moderate);
                }
            }
            Value::Bool(false) => {
                if weakens {
                    fired.push((rule::WEAKEN, shown("false")));
                }
                if exposes_when(false) {
                    fired.push((rule::EXPOSE, shown("false")));
                }
            }
            Value::Number(n) if n.as_f64() == Some(0.0) => {
                if roles.has(Roles::SCALE) {
                    fired.push((rule::SCALE_ZERO, shown("0")));
                }
                if weakens {
                    fired.push((rule::WEAKEN, shown("0")));
                }
            }
            Value::Null if weakens => fired.push((rule::WEAKEN, shown("null"))),
            _ => {}
        }
        for (rule, matched) in fired {
            self.destructive(rule, cx.place, &matched, Strength::Strong);
        }
    }

    /// A key whose value is text: mostly data, unless the key gives it a
    /// meaning (an operation, SQL, a command, a setting).
    pub(super) fn string_key(
        &mut self,
        key: &str,
        words: &[Cow<'_, str>],
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
        let search_text = matches!(words, [only] if only == "query") && cx.search;
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

    pub(super) fn nested_request(&mut self, method: &str, target: &str, nested: usize) {
        let method = Method::of(method);
        let (path, query) = split_target(target);
        let path = PathView::parse(path, self.lex, method.changes());
        let query = query.map(text::query_pairs).unwrap_or_default();
        self.request(method, &path, &query, false, Place::Body, nested);
    }

    pub(super) fn sql(&mut self, text: &str) {
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

    pub(super) fn shell(&mut self, line: &str, cx: &BodyCx, nested: usize) {
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

    // LIMITATION: XML, multipart and other bodies are read only as SQL or
    // GraphQL text; the method, path and query still decide for them.
    /// A body that is not JSON: SQL or GraphQL text, by content type or by
    /// shape.
    pub(super) fn text_body(&mut self, action: &Action, method: Method) {
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

/// The words of a JSON key. A plain `snake_case` or `kebab-case` key is cut
/// without copying; anything else goes through the full tokeniser.
fn key_words<'k>(key: &'k str, lex: &Lexicon) -> Vec<Cow<'k, str>> {
    let plain =
        key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if plain {
        key.split(['_', '-']).filter(|w| !w.is_empty()).map(Cow::Borrowed).collect()
    } else {
        text::words(key, lex).into_iter().map(Cow::Owned).collect()
    }
}

/// A JSON Patch operation (RFC 6902) read as the field it sets:
/// `{"op": "replace", "path": "/spec/replicas", "value": 0}` sets `replicas`
/// to 0, and `{"op": "remove", "path": "/spec/tls"}` sets `tls` to nothing.
/// Removing a field edits a resource; it does not delete one.
fn json_patch(map: &Map<String, Value>) -> Option<(&str, &Value)> {
    const NOTHING: &Value = &Value::Null;
    let op = map.get("op")?.as_str()?;
    let path = map.get("path")?.as_str()?.strip_prefix('/')?;
    let field =
        path.rsplit('/').find(|p| !p.is_empty() && !p.chars().all(|c| c.is_ascii_digit()))?;
    match op {
        "add" | "replace" => Some((field, map.get("value").unwrap_or(NOTHING))),
        "remove" => Some((field, NOTHING)),
        _ => None,
    }
}

/// `{"method": "DELETE", "path": "/users/2"}`: a request inside a body.
pub(super) fn nested_request<'j>(
    map: &'j Map<String, Value>,
    lex: &Lexicon,
) -> Option<(&'j str, &'j str)> {
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

pub(super) fn is_true(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => text::truthy(s),
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        _ => false,
    }
}

/// `main`, `refs/heads/master`, `origin/production`.
pub(super) fn is_shared_branch(value: &str, lex: &Lexicon) -> bool {
    let name = value.trim().trim_start_matches("refs/heads/");
    let name = name.strip_prefix("origin/").unwrap_or(name);
    lex.body.protected_branches.whole(&[name.to_lowercase()])
}

/// A URL or bucket outside the API: `s3://bucket/x`, `https://host/x`.
pub(super) fn is_external(value: &str) -> bool {
    let v = value.trim();
    v.contains("://") || v.starts_with("s3:") || v.starts_with("gs:") || v.starts_with("az:")
}

/// Whether a string reads as a command line rather than a single word.
pub(super) fn looks_like_command(value: &str) -> bool {
    value.trim().contains(char::is_whitespace)
}

/// `["sh", "-c", "rm -rf /x"]` or `"rm -rf /x"` as one line.
pub(super) fn command_line(value: &Value) -> Option<String> {
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
