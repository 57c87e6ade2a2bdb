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

mod body;
mod call;
mod decide;
mod graphql;
mod request;
mod rules;
mod scan;
mod shell;
mod sql;
#[cfg(test)]
mod tests;
mod text;

use async_trait::async_trait;
use tracing::instrument;

use self::body::BodyCx;
use self::call::{Call, MAX_BATCH, calls, form_body};
use self::decide::decide;
use self::request::Method;
use self::rules::Lexicon;
use self::scan::{Place, Scan, Strength, rule};
use self::text::PathView;
use crate::action::Action;
use crate::classify::{Assessment, Classifier, ClassifyError};

pub use self::rules::{RuleTable, RuleTableError};

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
