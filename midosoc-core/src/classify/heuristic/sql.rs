//! A small SQL reader: says what statements do, not whether they parse.
//!
//! Comments, string literals and quoted identifiers are removed first, so
//! `SELECT 1 -- DROP TABLE t` is a read and `WHERE name = 'drop table'` is
//! not a drop. Every statement of a batch is read (`SELECT ...; DROP ...`),
//! and keywords are found at any depth, so a common table expression cannot
//! hide the `DELETE` that follows it.

/// Longest SQL text read; the rest is ignored.
const MAX_SQL: usize = 64 * 1024;

/// Most lexical tokens read.
const MAX_TOKENS: usize = 20_000;

/// What a statement does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SqlEffect {
    /// Only reads.
    Read,
    /// Adds or changes rows or objects.
    Write,
    /// Deletes, drops or truncates data.
    Erase,
    /// Changes rows of a whole table at once.
    MassUpdate,
    /// Grants or revokes privileges, or manages users.
    Access,
    /// Changes a schema.
    Schema,
    /// Runs a procedure or program whose effect is not visible.
    Exec,
    /// Stops sessions or the server.
    Availability,
}

/// One thing a SQL text does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SqlFinding {
    pub(super) effect: SqlEffect,
    /// What was seen, such as `DELETE without WHERE`.
    pub(super) matched: String,
    /// Whether it reaches every row or the whole database.
    pub(super) sweeping: bool,
}

/// Keywords a SQL text starts with.
const STATEMENT_STARTS: &[&str] = &[
    "SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "DROP", "TRUNCATE", "ALTER", "CREATE", "GRANT",
    "REVOKE", "MERGE", "REPLACE", "UPSERT", "EXPLAIN", "SHOW", "DESCRIBE", "DESC", "COPY",
    "VACUUM", "CALL", "EXEC", "EXECUTE", "SET", "BEGIN", "START", "COMMIT", "ROLLBACK", "USE",
    "LOCK", "RENAME", "ANALYZE", "REINDEX", "CLUSTER", "COMMENT", "DECLARE", "DO", "KILL",
    "SHUTDOWN", "VALUES", "TABLE", "REFRESH", "LOAD", "OPTIMIZE", "PRAGMA", "ATTACH", "DETACH",
    // Cypher.
    "MATCH", "OPTIONAL", "UNWIND", "RETURN",
];

/// Objects a `DROP` can remove.
const DROP_OBJECTS: &[&str] = &[
    "TABLE",
    "DATABASE",
    "SCHEMA",
    "INDEX",
    "VIEW",
    "USER",
    "ROLE",
    "COLUMN",
    "CONSTRAINT",
    "TRIGGER",
    "FUNCTION",
    "PROCEDURE",
    "SEQUENCE",
    "TYPE",
    "EXTENSION",
    "MATERIALIZED",
    "OWNED",
    "POLICY",
    "TABLESPACE",
    "COLLECTION",
    "KEYSPACE",
    "PARTITION",
    "EVENT",
    "SERVER",
    "DOMAIN",
    "RULE",
    "PUBLICATION",
    "SUBSCRIPTION",
    "STAGE",
    "STREAM",
    "WAREHOUSE",
    "FOREIGN",
    "TEMPORARY",
    "TEMP",
    "LOGIN",
];

/// Functions that stop sessions or the server.
const STOPPING_FUNCTIONS: &[&str] = &[
    "PG_TERMINATE_BACKEND",
    "PG_CANCEL_BACKEND",
    "PG_RELOAD_CONF",
    "PG_DROP_REPLICATION_SLOT",
    "PG_PROMOTE",
    "LO_UNLINK",
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Num(String),
    Str,
    Sym(char),
}

/// Whether `text` reads as SQL: its first keyword starts a statement and
/// the statement has the shape of one (`DELETE` needs its `FROM`).
pub(super) fn looks_like_sql(text: &str) -> bool {
    let tokens = lex(text);
    let first = tokens.iter().find_map(|t| match t {
        Tok::Word(w) => Some(w.as_str()),
        Tok::Sym('(') => None,
        _ => Some(""),
    });
    first.is_some_and(|w| STATEMENT_STARTS.contains(&w)) && !analyse(text).is_empty()
}

/// What every statement of `text` does.
pub(super) fn analyse(text: &str) -> Vec<SqlFinding> {
    let tokens = lex(text);
    let mut findings = Vec::new();
    for statement in tokens.split(|t| *t == Tok::Sym(';')) {
        statement_findings(statement, &mut findings);
    }
    findings
}

/// A word of a statement: its token index, text and parenthesis depth.
type Word<'t> = (usize, &'t str, usize);

/// One statement and its words, for the keyword readers.
struct Statement<'t> {
    tokens: &'t [Tok],
    words: Vec<Word<'t>>,
}

impl<'t> Statement<'t> {
    fn new(tokens: &'t [Tok]) -> Self {
        let mut depth = 0usize;
        let mut words = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            match t {
                Tok::Sym('(') => depth += 1,
                Tok::Sym(')') => depth = depth.saturating_sub(1),
                Tok::Word(w) => words.push((i, w.as_str(), depth)),
                _ => {}
            }
        }
        Self { tokens, words }
    }

    fn word(&self, k: usize) -> Option<&'t str> {
        self.words.get(k).map(|w| w.1)
    }

    /// Whether `word` comes after the `k`-th word.
    fn later(&self, k: usize, word: &str) -> bool {
        self.words.iter().skip(k + 1).any(|w| w.1 == word)
    }

    /// `DELETE` or `UPDATE` at word `k`: how far its `WHERE` reaches.
    fn reach(&self, k: usize, verb: &str) -> (SqlEffect, String, bool) {
        let Some(&(pos, _, depth)) = self.words.get(k) else {
            return (SqlEffect::Write, verb.to_owned(), false);
        };
        let (has_where, always) = where_clause(self.tokens, pos, depth);
        let every_row = !has_where || always;
        let matched = match (has_where, always) {
            (false, _) => format!("{verb} without WHERE"),
            (true, true) => format!("{verb} with an always-true WHERE"),
            (true, false) => verb.to_owned(),
        };
        let effect = match (verb, every_row) {
            ("DELETE", _) => SqlEffect::Erase,
            (_, true) => SqlEffect::MassUpdate,
            (_, false) => SqlEffect::Write,
        };
        (effect, matched, every_row)
    }
}

fn statement_findings(tokens: &[Tok], out: &mut Vec<SqlFinding>) {
    let stmt = Statement::new(tokens);
    let Some(first) = stmt.word(0) else { return };
    if matches!(first, "MATCH" | "OPTIONAL" | "UNWIND" | "RETURN") {
        cypher_findings(&stmt.words, out);
        return;
    }

    let before = out.len();
    for k in 0..stmt.words.len() {
        if let Some((effect, matched, sweeping)) = keyword(&stmt, k, first) {
            out.push(SqlFinding { effect, matched, sweeping });
        }
    }

    let reads =
        ["SELECT", "WITH", "EXPLAIN", "SHOW", "DESCRIBE", "DESC", "VALUES", "TABLE", "PRAGMA"];
    if out.len() == before && reads.contains(&first) {
        out.push(SqlFinding {
            effect: SqlEffect::Read,
            matched: first.to_owned(),
            sweeping: false,
        });
    }
}

/// What the `k`-th word of a statement does, if it is a keyword that acts.
fn keyword(stmt: &Statement<'_>, k: usize, first: &str) -> Option<(SqlEffect, String, bool)> {
    let &(pos, word, _) = stmt.words.get(k)?;
    let prev = k.checked_sub(1).and_then(|p| stmt.word(p));
    let next = stmt.word(k + 1);
    let leading = k == 0;
    let call = matches!(stmt.tokens.get(pos + 1), Some(Tok::Sym('(')));
    // `GRANT DELETE, UPDATE ON t`: privileges named, not statements run.
    let privileges = matches!(first, "GRANT" | "REVOKE");

    let found = match word {
        "DROP" if !privileges => {
            let object = if next == Some("IF") { stmt.word(k + 3) } else { next };
            let object = object.filter(|o| DROP_OBJECTS.contains(o))?;
            let sweeping = matches!(object, "DATABASE" | "SCHEMA" | "KEYSPACE" | "OWNED");
            (SqlEffect::Erase, format!("DROP {object}"), sweeping)
        }
        "TRUNCATE" if !call && !privileges => (SqlEffect::Erase, word.to_owned(), true),
        "DELETE" if !privileges && prev != Some("ON") && stmt.later(k, "FROM") => {
            stmt.reach(k, word)
        }
        "UPDATE"
            if !privileges
                && !matches!(prev, Some("ON" | "FOR" | "KEY" | "DO"))
                && stmt.later(k, "SET") =>
        {
            stmt.reach(k, word)
        }
        "GRANT" | "REVOKE" if leading => (SqlEffect::Access, word.to_owned(), false),
        "ALTER" if leading => {
            let object = next.unwrap_or("");
            let effect = if matches!(object, "USER" | "ROLE" | "LOGIN" | "DEFAULT") {
                SqlEffect::Access
            } else {
                SqlEffect::Schema
            };
            (effect, format!("ALTER {object}").trim_end().to_owned(), false)
        }
        "CREATE" if leading => {
            let object = if next == Some("OR") { stmt.word(k + 3) } else { next };
            let effect = match object {
                Some("USER" | "ROLE" | "LOGIN") => SqlEffect::Access,
                _ => SqlEffect::Write,
            };
            (effect, format!("CREATE {}", object.unwrap_or("")).trim_end().to_owned(), false)
        }
        "CALL" | "EXEC" | "EXECUTE" | "DO" if leading => (SqlEffect::Exec, word.to_owned(), false),
        "PROGRAM" if matches!(prev, Some("TO" | "FROM")) => {
            (SqlEffect::Exec, "COPY PROGRAM".to_owned(), false)
        }
        "KILL" | "SHUTDOWN" if leading => (SqlEffect::Availability, word.to_owned(), false),
        w if call && STOPPING_FUNCTIONS.contains(&w) => {
            (SqlEffect::Availability, w.to_lowercase(), false)
        }
        "INSERT" | "REPLACE" | "UPSERT" | "MERGE" | "COPY" | "COMMENT" | "LOCK" | "VACUUM"
        | "REINDEX" | "CLUSTER" | "REFRESH" | "LOAD" | "OPTIMIZE" | "RENAME"
            if leading =>
        {
            (SqlEffect::Write, word.to_owned(), false)
        }
        "OUTFILE" | "DUMPFILE" if prev == Some("INTO") => {
            (SqlEffect::Write, format!("INTO {word}"), false)
        }
        _ => return None,
    };
    Some(found)
}

/// A Cypher query (graph databases): `MATCH (n) DETACH DELETE n`.
fn cypher_findings(words: &[Word<'_>], out: &mut Vec<SqlFinding>) {
    let has_where = words.iter().any(|w| w.1 == "WHERE");
    let mut found = false;
    for (k, &(_, word, _)) in words.iter().enumerate() {
        let prev = k.checked_sub(1).and_then(|p| words.get(p)).map(|w| w.1);
        let (effect, matched, sweeping) = match word {
            "DELETE" if prev == Some("DETACH") => (SqlEffect::Erase, "DETACH DELETE", !has_where),
            "DELETE" => (SqlEffect::Erase, "DELETE", !has_where),
            "CREATE" | "MERGE" | "SET" | "REMOVE" => (SqlEffect::Write, word, false),
            _ => continue,
        };
        out.push(SqlFinding { effect, matched: matched.to_owned(), sweeping });
        found = true;
    }
    if !found {
        out.push(SqlFinding {
            effect: SqlEffect::Read,
            matched: "MATCH".to_owned(),
            sweeping: false,
        });
    }
}

/// Whether the statement from `pos` on has a `WHERE` at `depth`, and
/// whether that condition is always true (`1=1`, `TRUE`, `x = x`, `OR 1`).
fn where_clause(stmt: &[Tok], pos: usize, depth: usize) -> (bool, bool) {
    let mut d = depth;
    let mut start = None;
    for (i, t) in stmt.iter().enumerate().skip(pos + 1) {
        match t {
            Tok::Sym('(') => d += 1,
            Tok::Sym(')') => {
                if d == depth {
                    break;
                }
                d = d.saturating_sub(1);
            }
            Tok::Word(w) if d == depth && w == "WHERE" => {
                start = Some(i + 1);
                break;
            }
            _ => {}
        }
    }
    let Some(start) = start else { return (false, false) };
    let condition = stmt.get(start..).unwrap_or(&[]);
    let always = condition_is_always_true(condition);
    (true, always)
}

fn condition_is_always_true(cond: &[Tok]) -> bool {
    let trivially_true = |c: &[Tok]| match c {
        [Tok::Word(w), ..] if w == "TRUE" => true,
        [Tok::Sym('('), rest @ ..] => matches!(rest, [Tok::Word(w), ..] if w == "TRUE"),
        [a, Tok::Sym('='), b, ..] => a == b || (*a == Tok::Str && *b == Tok::Str),
        [Tok::Num(n)] => n != "0",
        [Tok::Num(n), next, ..] => n != "0" && !matches!(next, Tok::Sym(_)),
        _ => false,
    };
    if trivially_true(cond) {
        return true;
    }
    cond.iter()
        .enumerate()
        .filter(|(_, t)| matches!(t, Tok::Word(w) if w == "OR"))
        .any(|(i, _)| trivially_true(cond.get(i + 1..).unwrap_or(&[])))
}

/// Tokens of SQL text: words upper-cased, strings and comments dropped.
fn lex(text: &str) -> Vec<Tok> {
    let text = text.get(..MAX_SQL.min(text.len())).unwrap_or(text);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() && out.len() < MAX_TOKENS {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            '-' if next == Some('-') => i = skip_until(&chars, i, '\n'),
            '#' => i = skip_until(&chars, i, '\n'),
            '/' if next == Some('*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                i += 2;
            }
            '\'' => {
                i = skip_quoted(&chars, i, '\'');
                out.push(Tok::Str);
            }
            '"' | '`' => {
                i = skip_quoted(&chars, i, c);
                out.push(Tok::Word("\"IDENT\"".to_owned()));
            }
            '[' => {
                i = skip_until(&chars, i, ']') + 1;
                out.push(Tok::Word("\"IDENT\"".to_owned()));
            }
            '$' if next.is_some_and(|n| n == '$' || n.is_alphabetic()) => {
                i = skip_dollar_quoted(&chars, i);
                out.push(Tok::Str);
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '$'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push(Tok::Word(word.to_uppercase()));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                out.push(Tok::Num(chars[start..i].iter().collect()));
            }
            c => {
                out.push(Tok::Sym(c));
                i += 1;
            }
        }
    }
    out
}

fn skip_until(chars: &[char], from: usize, end: char) -> usize {
    let mut i = from + 1;
    while i < chars.len() && chars[i] != end {
        i += 1;
    }
    i
}

/// Skips a quoted run; a doubled quote or a backslash escapes.
fn skip_quoted(chars: &[char], from: usize, quote: char) -> usize {
    let mut i = from + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            c if c == quote => {
                if chars.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    i
}

/// Skips `$tag$ ... $tag$` (PostgreSQL dollar quoting).
fn skip_dollar_quoted(chars: &[char], from: usize) -> usize {
    let mut i = from + 1;
    while i < chars.len() && chars[i] != '$' {
        if !(chars[i].is_alphanumeric() || chars[i] == '_') {
            return from + 1;
        }
        i += 1;
    }
    let tag: Vec<char> = chars.get(from..=i).unwrap_or(&[]).to_vec();
    i += 1;
    while i < chars.len() {
        if chars.get(i..i + tag.len()) == Some(tag.as_slice()) {
            return i + tag.len();
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(sql: &str) -> Vec<(SqlEffect, String)> {
        analyse(sql).into_iter().map(|f| (f.effect, f.matched)).collect()
    }

    #[test]
    fn statements_are_read_for_what_they_do() {
        let cases: &[(&str, SqlEffect, &str)] = &[
            ("SELECT * FROM t WHERE a = 1", SqlEffect::Read, "SELECT"),
            ("select 1; drop table invoices;", SqlEffect::Erase, "DROP TABLE"),
            ("DROP TABLE IF EXISTS t", SqlEffect::Erase, "DROP TABLE"),
            (
                "WITH t AS (SELECT 1) DELETE FROM events WHERE 1=1",
                SqlEffect::Erase,
                "DELETE with an always-true WHERE",
            ),
            ("DELETE FROM users", SqlEffect::Erase, "DELETE without WHERE"),
            ("DELETE FROM users WHERE id = 4", SqlEffect::Erase, "DELETE"),
            ("UPDATE accounts SET balance = 0", SqlEffect::MassUpdate, "UPDATE without WHERE"),
            (
                "UPDATE accounts SET a = 1 WHERE id = 2 OR 1 = 1",
                SqlEffect::MassUpdate,
                "UPDATE with an always-true WHERE",
            ),
            ("UPDATE accounts SET a = 1 WHERE id = 2", SqlEffect::Write, "UPDATE"),
            ("GRANT ALL ON db.* TO 'x'", SqlEffect::Access, "GRANT"),
            ("truncate events", SqlEffect::Erase, "TRUNCATE"),
            ("INSERT INTO t VALUES (1)", SqlEffect::Write, "INSERT"),
            ("SELECT pg_terminate_backend(42)", SqlEffect::Availability, "pg_terminate_backend"),
            ("COPY t TO PROGRAM 'curl x'", SqlEffect::Exec, "COPY PROGRAM"),
            ("ALTER USER bob WITH SUPERUSER", SqlEffect::Access, "ALTER USER"),
            ("MATCH (n:User) DETACH DELETE n", SqlEffect::Erase, "DETACH DELETE"),
            ("MATCH (n:User) WHERE n.id = 1 SET n.name = 'x'", SqlEffect::Write, "SET"),
            ("MATCH (n) RETURN count(n)", SqlEffect::Read, "MATCH"),
        ];
        for (sql, effect, matched) in cases {
            assert!(
                effects(sql).contains(&(*effect, (*matched).to_owned())),
                "{sql}: {:?}",
                effects(sql)
            );
        }
    }

    #[test]
    fn comments_strings_and_clauses_hide_nothing_and_invent_nothing() {
        assert_eq!(
            effects("SELECT a FROM t -- DROP TABLE t"),
            vec![(SqlEffect::Read, "SELECT".into())]
        );
        assert_eq!(
            effects("SELECT 'drop table t' /* delete from x */"),
            vec![(SqlEffect::Read, "SELECT".into())]
        );
        assert_eq!(effects("SELECT * FROM t FOR UPDATE"), vec![(SqlEffect::Read, "SELECT".into())]);
        assert_eq!(effects("SELECT TRUNCATE(1.5, 0)"), vec![(SqlEffect::Read, "SELECT".into())]);
        assert!(looks_like_sql("  (select 1)"));
        assert!(!looks_like_sql("delete old branches please"));
        assert!(!looks_like_sql("is:open label:bug"));
    }
}
