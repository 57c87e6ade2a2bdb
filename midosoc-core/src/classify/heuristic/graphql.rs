//! A small GraphQL reader: which operations a document holds and, for
//! mutations, the root fields called and the literal arguments given.

use serde_json::Value;

/// Longest document read.
const MAX_DOCUMENT: usize = 64 * 1024;

/// Most tokens read.
const MAX_TOKENS: usize = 20_000;

/// What a GraphQL document asks for.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Document {
    /// It holds a mutation.
    pub(super) mutation: bool,
    /// It holds a query or a subscription.
    pub(super) read: bool,
    /// Root fields of its mutations, such as `deleteRepository`.
    pub(super) fields: Vec<String>,
    /// Literal arguments given to those fields, at any depth:
    /// `requiresApprovingReviews: false`.
    pub(super) arguments: Vec<(String, Value)>,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Name(String),
    Punct(char),
    Str(String),
    Num(String),
}

/// Whether `text` starts like a GraphQL document.
pub(super) fn looks_like_graphql(text: &str) -> bool {
    match lex(text).first() {
        Some(Tok::Name(n)) => {
            matches!(n.as_str(), "query" | "mutation" | "subscription" | "fragment")
        }
        Some(Tok::Punct('{')) => true,
        _ => false,
    }
}

/// Reads a document.
pub(super) fn analyse(text: &str) -> Document {
    let toks = lex(text);
    let mut doc = Document::default();
    let mut i = 0;
    while let Some(tok) = toks.get(i) {
        match tok {
            Tok::Name(kind) if matches!(kind.as_str(), "query" | "subscription" | "mutation") => {
                let mutation = kind == "mutation";
                i = skip_to_selection(&toks, i + 1);
                if mutation {
                    doc.mutation = true;
                    i = mutation_fields(&toks, i, &mut doc);
                } else {
                    doc.read = true;
                    i = skip_balanced(&toks, i, '{', '}');
                }
            }
            Tok::Name(kind) if kind == "fragment" => {
                i = skip_to_selection(&toks, i + 1);
                i = skip_balanced(&toks, i, '{', '}');
            }
            Tok::Punct('{') => {
                doc.read = true;
                i = skip_balanced(&toks, i, '{', '}');
            }
            _ => i += 1,
        }
    }
    doc
}

/// From after an operation keyword to its `{`: name, variables, directives.
fn skip_to_selection(toks: &[Tok], mut i: usize) -> usize {
    while let Some(tok) = toks.get(i) {
        match tok {
            Tok::Punct('{') => return i,
            Tok::Punct('(') => i = skip_balanced(toks, i, '(', ')'),
            _ => i += 1,
        }
    }
    i
}

/// Reads the root selection set of a mutation at `toks[i] == '{'`.
fn mutation_fields(toks: &[Tok], mut i: usize, doc: &mut Document) -> usize {
    if toks.get(i) != Some(&Tok::Punct('{')) {
        return i;
    }
    i += 1;
    while let Some(tok) = toks.get(i) {
        match tok {
            Tok::Punct('}') => return i + 1,
            Tok::Name(name) => {
                let mut field = name.clone();
                i += 1;
                if toks.get(i) == Some(&Tok::Punct(':')) {
                    if let Some(Tok::Name(real)) = toks.get(i + 1) {
                        field = real.clone();
                    }
                    i += 2;
                }
                doc.fields.push(field);
                if toks.get(i) == Some(&Tok::Punct('(')) {
                    let end = skip_balanced(toks, i, '(', ')');
                    arguments(toks.get(i..end).unwrap_or(&[]), &mut doc.arguments);
                    i = end;
                }
            }
            Tok::Punct('{') => i = skip_balanced(toks, i, '{', '}'),
            _ => i += 1,
        }
    }
    i
}

/// `name: literal` pairs anywhere inside an argument list.
fn arguments(toks: &[Tok], out: &mut Vec<(String, Value)>) {
    for window in toks.windows(3) {
        let [Tok::Name(key), Tok::Punct(':'), value] = window else { continue };
        let value = match value {
            Tok::Name(n) if n == "true" => Value::Bool(true),
            Tok::Name(n) if n == "false" => Value::Bool(false),
            Tok::Name(n) if n == "null" => Value::Null,
            Tok::Name(n) => Value::String(n.clone()),
            Tok::Str(s) => Value::String(s.clone()),
            Tok::Num(n) => n.parse::<i64>().map_or_else(|_| Value::String(n.clone()), Value::from),
            Tok::Punct(_) => continue,
        };
        out.push((key.clone(), value));
    }
}

/// Index just past the bracket that closes `toks[i]`.
fn skip_balanced(toks: &[Tok], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0usize;
    while let Some(tok) = toks.get(i) {
        if *tok == Tok::Punct(open) {
            depth += 1;
        } else if *tok == Tok::Punct(close) {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    i
}

fn lex(text: &str) -> Vec<Tok> {
    let text = text.get(..MAX_DOCUMENT.min(text.len())).unwrap_or(text);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() && out.len() < MAX_TOKENS {
        let c = chars[i];
        match c {
            c if c.is_whitespace() || c == ',' || c == '\u{FEFF}' => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '"' => {
                let (text, end) = string_at(&chars, i);
                out.push(Tok::Str(text));
                i = end;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Name(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '.' | '+' | '-'))
                {
                    i += 1;
                }
                out.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c => {
                out.push(Tok::Punct(c));
                i += 1;
            }
        }
    }
    out
}

/// The string starting at `chars[i] == '"'` (plain or `"""` block), and
/// the index just past it.
fn string_at(chars: &[char], mut i: usize) -> (String, usize) {
    const BLOCK: [char; 3] = ['"', '"', '"'];
    let mut text = String::new();
    if chars.get(i..i + 3) == Some(&BLOCK) {
        i += 3;
        while i < chars.len() && chars.get(i..i + 3) != Some(&BLOCK) {
            text.push(chars[i]);
            i += 1;
        }
        return (text, i + 3);
    }
    i += 1;
    while i < chars.len() && chars[i] != '"' {
        if chars[i] == '\\' {
            i += 1;
        }
        text.extend(chars.get(i));
        i += 1;
    }
    (text, i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_fields_and_literal_arguments_are_found() {
        let doc = analyse(
            "mutation { updateBranchProtectionRule(input: {branchProtectionRuleId: \"B\", \
             requiresApprovingReviews: false}) { clientMutationId } \
             alias: deleteRepository(input: {repositoryId: \"R\"}) { clientMutationId } }",
        );
        assert!(doc.mutation);
        assert_eq!(doc.fields, vec!["updateBranchProtectionRule", "deleteRepository"]);
        assert!(doc.arguments.contains(&("requiresApprovingReviews".into(), Value::Bool(false))));
    }

    #[test]
    fn queries_are_reads_and_strings_hide_nothing() {
        let doc = analyse("query { search(q: \"mutation { deleteRepository }\") { id } }");
        assert!(doc.read);
        assert!(!doc.mutation);
        assert!(doc.fields.is_empty());
        assert!(looks_like_graphql("{ viewer { login } }"));
        assert!(!looks_like_graphql("SELECT 1"));
    }
}
