//! What the heuristic classifier records while it reads an action: findings,
//! their strength and place, and the recorder shared by every reader.

use crate::classify::Risk;

use super::rules::{Effect, Lexicon};
use super::text;

/// Longest matched text kept in a marker.
const MAX_MATCHED: usize = 120;

/// How much a destructive finding weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Strength {
    /// Set aside by any explicit read or ordinary change.
    Hint,
    /// Set aside when the operation itself only reads.
    Moderate,
    /// Always stands.
    Strong,
}

/// Where a finding was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Place {
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
    pub(super) fn as_str(self) -> &'static str {
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
    pub(super) fn names_operation(self) -> bool {
        matches!(self, Place::Method | Place::Path | Place::Operation | Place::Tool | Place::Header)
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Kind<'a> {
    Destructive { label: &'a str, risk: Risk, strength: Strength },
    Read,
    Write,
    DryRun,
    Deny,
    Note,
}

#[derive(Debug)]
pub(super) struct Finding<'a> {
    pub(super) rule: &'a str,
    pub(super) place: Place,
    pub(super) matched: String,
    pub(super) kind: Kind<'a>,
}

/// A rule defined by the classifier itself rather than by a word list.
#[derive(Clone, Copy, Debug)]
pub(super) struct CodeRule {
    pub(super) name: &'static str,
    pub(super) label: &'static str,
    pub(super) risk: Risk,
}

/// Rules whose knowledge is grammar (SQL, HTTP, shell) rather than words.
pub(super) mod rule {
    use super::CodeRule;
    use crate::classify::Risk;

    pub(super) const fn r(name: &'static str, label: &'static str, risk: Risk) -> CodeRule {
        CodeRule { name, label, risk }
    }

    pub(in crate::classify::heuristic) const DELETE: CodeRule =
        r("method.delete", "deletes a resource", Risk::High);
    pub(in crate::classify::heuristic) const PURGE: CodeRule =
        r("method.purge", "purges a resource", Risk::High);
    pub(in crate::classify::heuristic) const UNKNOWN_METHOD: CodeRule =
        r("method.unknown", "uses an unrecognised HTTP method", Risk::Medium);
    pub(in crate::classify::heuristic) const MIXED_SCRIPT: CodeRule =
        r("text.mixed_script", "spells words with look-alike letters", Risk::Medium);
    pub(in crate::classify::heuristic) const BODY_UNREAD: CodeRule =
        r("body.unread", "has more body than the classifier reads", Risk::Medium);
    pub(in crate::classify::heuristic) const SQL_ERASE: CodeRule =
        r("sql.erase", "deletes, drops or truncates data", Risk::High);
    pub(in crate::classify::heuristic) const SQL_MASS: CodeRule =
        r("sql.mass_update", "changes every row of a table", Risk::High);
    pub(in crate::classify::heuristic) const SQL_ACCESS: CodeRule =
        r("sql.access", "changes database privileges or users", Risk::Critical);
    pub(in crate::classify::heuristic) const SQL_SCHEMA: CodeRule =
        r("sql.schema", "changes a database schema", Risk::High);
    pub(in crate::classify::heuristic) const SQL_EXEC: CodeRule =
        r("sql.exec", "runs a stored procedure or program", Risk::High);
    pub(in crate::classify::heuristic) const SQL_STOP: CodeRule =
        r("sql.stop", "stops database sessions or the server", Risk::High);
    pub(in crate::classify::heuristic) const SHELL_OPAQUE: CodeRule =
        r("shell.opaque", "runs code the gateway cannot inspect", Risk::High);
    pub(in crate::classify::heuristic) const SHELL_DESTRUCTIVE: CodeRule =
        r("shell.destructive", "runs a destructive command", Risk::High);
    pub(in crate::classify::heuristic) const SHELL_OVERWRITE: CodeRule =
        r("shell.overwrite", "overwrites a file", Risk::High);
    pub(in crate::classify::heuristic) const FLAG: CodeRule =
        r("body.flag", "sets a destructive option", Risk::High);
    pub(in crate::classify::heuristic) const WEAKEN: CodeRule =
        r("body.protection_off", "turns off a protection", Risk::Critical);
    pub(in crate::classify::heuristic) const EXPOSE: CodeRule =
        r("body.exposure", "makes something public", Risk::Critical);
    pub(in crate::classify::heuristic) const ACCESS_FIELD: CodeRule =
        r("body.access_field", "sets roles, permissions or scopes", Risk::Critical);
    pub(in crate::classify::heuristic) const SHARED_BRANCH: CodeRule =
        r("body.shared_branch", "changes a shared branch in place", Risk::High);
    pub(in crate::classify::heuristic) const EXFILTRATE: CodeRule =
        r("body.destination", "sends data to an outside destination", Risk::Critical);
    pub(in crate::classify::heuristic) const SCALE_ZERO: CodeRule =
        r("body.scale_to_zero", "scales a running system to zero", Risk::High);
    pub(in crate::classify::heuristic) const OVERWRITE_OP: CodeRule =
        r("body.overwrite_operator", "overwrites a whole collection", Risk::High);
    pub(in crate::classify::heuristic) const BULK: CodeRule =
        r("bulk", "changes many items at once", Risk::High);
    pub(in crate::classify::heuristic) const DESTRUCTIVE_HINT: CodeRule =
        r("mcp.destructive_hint", "is marked destructive by its MCP server", Risk::Medium);
    pub(in crate::classify::heuristic) const DESCRIPTION: CodeRule =
        r("mcp.description", "is described by its server as destructive", Risk::Medium);
}

/// Findings gathered while reading one action.
pub(super) struct Scan<'a> {
    pub(super) lex: &'a Lexicon,
    pub(super) findings: Vec<Finding<'a>>,
    /// JSON values read so far, against [`MAX_BODY_NODES`].
    pub(super) nodes: usize,
    /// A selector key was seen in the body being read.
    pub(super) selector: bool,
}

impl<'a> Scan<'a> {
    pub(super) fn new(lex: &'a Lexicon) -> Self {
        Self { lex, findings: Vec::new(), nodes: 0, selector: false }
    }

    pub(super) fn push(&mut self, rule: &'a str, place: Place, matched: &str, kind: Kind<'a>) {
        let matched = clip(matched);
        let duplicate = self
            .findings
            .iter()
            .any(|f| f.rule == rule && f.place == place && f.matched == matched);
        if !duplicate {
            self.findings.push(Finding { rule, place, matched, kind });
        }
    }

    pub(super) fn destructive(
        &mut self,
        rule: CodeRule,
        place: Place,
        matched: &str,
        strength: Strength,
    ) {
        let kind = Kind::Destructive { label: rule.label, risk: rule.risk, strength };
        self.push(rule.name, place, matched, kind);
    }

    /// Reads one verb match, with the objects it acts on.
    pub(super) fn verb(
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
    pub(super) fn option(&mut self, word: &str, place: Place, fallback: CodeRule) {
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
