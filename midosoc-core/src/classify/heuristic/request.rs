//! Reading an HTTP request: its method (with overrides), path, query string
//! and operation headers.

use serde_json::{Map, Value};

use super::body::BodyCx;
use super::call::form_value;
use super::rules::{Effect, Lexicon, NounScope, OnGet, Roles};
use super::scan::{Kind, Place, Scan, Strength, rule};
use super::text::{self, PathView};
use crate::action::Action;

/// Headers that override the method on the wire.
const OVERRIDE_HEADERS: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];

/// Query keys that confirm a side effect: `GET /users/9/reset?confirm=true`.
const CONFIRM_KEYS: &[&str] =
    &["confirm", "confirmed", "force", "yes", "execute", "commit", "really", "sure"];

/// What a request is doing, as far as its method says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Read,
    Post,
    Put,
    Patch,
    Delete,
    Purge,
    Other,
}

impl Method {
    pub(super) fn of(name: &str) -> Self {
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

    pub(super) fn danger(self) -> u8 {
        match self {
            Method::Read => 0,
            Method::Post => 1,
            Method::Other => 2,
            Method::Put | Method::Patch => 3,
            Method::Delete | Method::Purge => 4,
        }
    }

    pub(super) fn changes(self) -> bool {
        self != Method::Read
    }
}

impl Scan<'_> {
    /// The method, or a more dangerous one the request asks to override it
    /// with (`X-HTTP-Method-Override: DELETE`, `_method=DELETE`).
    pub(super) fn effective_method(
        &mut self,
        action: &Action,
        query: &[(String, String)],
    ) -> Method {
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

    /// Method, path and query of a request (also one nested in a body).
    pub(super) fn request(
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

    pub(super) fn path_verbs(
        &mut self,
        method: Method,
        path: &PathView,
        place: Place,
        confirmed: bool,
    ) {
        if method == Method::Read {
            self.read_path_verb(path, place, confirmed);
            return;
        }

        let lex = self.lex;
        let last = path.final_literal().map(|(i, _)| i);
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
        let Some((_, seg)) = path.final_literal() else { return };
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

    /// The last segment of a GET. REST puts checks there
    /// (`GET /pulls/1/merge`); only a verb phrase (`delete-user`), a
    /// confirmed bare verb (`reset?confirm=true`) or a verb whose GET acts
    /// (`/pods/x/exec`) is an action.
    fn read_path_verb(&mut self, path: &PathView, place: Place, confirmed: bool) {
        let lex = self.lex;
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
    }

    // LIMITATION: an operation named only by words the table lacks
    // (`generate-jitconfig` minting a runner credential, an `account_links`
    // onboarding URL) passes as an ordinary write; the LLM classifier, when
    // configured, is the second opinion for such names.
    pub(super) fn path_nouns(&mut self, method: Method, path: &PathView, place: Place) {
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
    pub(super) fn query(
        &mut self,
        method: Method,
        path: &PathView,
        query: &[(String, String)],
        place: Place,
    ) {
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

    pub(super) fn headers(&mut self, action: &Action) {
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
}

/// Words of the path before a verb and after it in its segment: what the
/// verb acts on.
pub(super) fn objects_of(
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
pub(super) fn soft_target(path: &PathView, lex: &Lexicon) -> Option<String> {
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

/// Path and query of a URL or path.
pub(super) fn split_target(target: &str) -> (&str, Option<&str>) {
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
