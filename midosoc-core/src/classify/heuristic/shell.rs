//! A small shell reader: splits a command line into simple commands and
//! says what each one does, by the programs and verbs of the rule table.
//!
//! It does not expand anything. A command it cannot see through (a script,
//! an interpreter, `npm run x`, `make`) is reported as opaque: the gateway
//! cannot tell what it will do, so a shell tool holds it.

use super::rules::{Effect, Lexicon, Roles};
use super::{sql, text};

/// Longest command line read.
const MAX_COMMAND: usize = 16 * 1024;

/// Most simple commands read from one line.
const MAX_COMMANDS: usize = 64;

/// How deep `sh -c '...'` is followed.
const MAX_NESTING: usize = 2;

/// What a simple command does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ShellEffect {
    /// Only reads.
    Read,
    /// An ordinary change.
    Write,
    /// A destructive verb or option, named by this word of the rule table
    /// (`rm`, `prune`, `force`).
    Destructive(String),
    /// Output redirected over a file.
    Overwrite,
    /// Code the gateway cannot see.
    Opaque,
    /// An HTTP request: method and URL.
    Request(&'static str, String),
    /// SQL text handed to a database client.
    Sql(String),
}

/// One thing a command line does, with the words that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ShellFinding {
    pub(super) effect: ShellEffect,
    pub(super) matched: String,
}

/// What every simple command of `line` does.
pub(super) fn analyse(line: &str, lex: &Lexicon) -> Vec<ShellFinding> {
    let mut out = Vec::new();
    analyse_into(line, lex, 0, &mut out);
    out
}

fn analyse_into(line: &str, lex: &Lexicon, nesting: usize, out: &mut Vec<ShellFinding>) {
    let line = line.get(..MAX_COMMAND.min(line.len())).unwrap_or(line);
    for command in split(line).into_iter().take(MAX_COMMANDS) {
        simple_command(&command, lex, nesting, out);
    }
}

/// A simple command: its words, and files it overwrites with `>`.
#[derive(Debug, Default)]
struct Command {
    words: Vec<String>,
    overwrites: Vec<String>,
}

/// Cuts a command line at `;`, `&`, `|`, newlines, `$(`, backquotes and
/// parentheses, honouring quotes and backslashes.
fn split(line: &str) -> Vec<Command> {
    let mut cutter = Cutter::default();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                cutter.in_word = true;
                cutter.word.extend(chars.by_ref().take_while(|&q| q != '\''));
            }
            '"' => {
                cutter.in_word = true;
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => cutter.word.extend(chars.next()),
                        _ => cutter.word.push(q),
                    }
                }
            }
            '\\' => {
                cutter.in_word = true;
                cutter.word.extend(chars.next());
            }
            '>' => {
                let append = chars.next_if_eq(&'>').is_some();
                cutter.redirect(!append);
            }
            '<' => cutter.redirect(false),
            '$' if chars.next_if_eq(&'(').is_some() => cutter.end_command(),
            ';' | '&' | '|' | '\n' | '(' | ')' | '`' => cutter.end_command(),
            c if c.is_whitespace() => cutter.end_word(),
            c => {
                cutter.in_word = true;
                cutter.word.push(c);
            }
        }
    }
    cutter.end_command();
    cutter.commands
}

/// The state of [`split`].
#[derive(Debug, Default)]
struct Cutter {
    commands: Vec<Command>,
    current: Command,
    word: String,
    in_word: bool,
    /// The next word is a redirection target; `true` when it is
    /// overwritten (`>`), `false` when appended to or read.
    redirect: Option<bool>,
}

impl Cutter {
    fn end_word(&mut self) {
        if !self.in_word {
            return;
        }
        let word = std::mem::take(&mut self.word);
        match self.redirect.take() {
            Some(true) if word != "/dev/null" && !word.starts_with('&') => {
                self.current.overwrites.push(word);
            }
            Some(_) => {}
            None => self.current.words.push(word),
        }
        self.in_word = false;
    }

    fn redirect(&mut self, overwrite: bool) {
        self.end_word();
        // A file descriptor before `>` (`2>`) was taken as a word: drop it.
        if overwrite
            && self.current.words.last().is_some_and(|w| w.chars().all(|d| d.is_ascii_digit()))
        {
            self.current.words.pop();
        }
        self.redirect = Some(overwrite);
    }

    fn end_command(&mut self) {
        self.end_word();
        if !self.current.words.is_empty() || !self.current.overwrites.is_empty() {
            self.commands.push(std::mem::take(&mut self.current));
        }
    }
}

fn simple_command(command: &Command, lex: &Lexicon, nesting: usize, out: &mut Vec<ShellFinding>) {
    for target in &command.overwrites {
        out.push(ShellFinding { effect: ShellEffect::Overwrite, matched: format!("> {target}") });
    }
    let words = unwrapped(&command.words, lex);
    let Some(first) = words.first() else { return };
    let program = program_name(first);
    let args = &words[1..];
    let shell = &lex.shell;
    let line = words.join(" ");
    let mut push = |effect| out.push(ShellFinding { effect, matched: line.clone() });

    let destructive_option = options(&program, args, lex, &mut push);
    if matches!(program.as_str(), "sh" | "bash" | "zsh" | "dash" | "ksh" | "fish") {
        match args.iter().position(|a| a == "-c").and_then(|i| args.get(i + 1)) {
            Some(inner) if nesting < MAX_NESTING => analyse_into(inner, lex, nesting + 1, out),
            _ => push(ShellEffect::Opaque),
        }
    } else if shell.request_programs.contains(program.as_str()) {
        let (method, url) = request_of(args);
        push(url.map_or(ShellEffect::Write, |url| ShellEffect::Request(method, url)));
    } else if shell.sql_programs.contains(program.as_str()) {
        let sql: Vec<&String> = args.iter().filter(|a| sql::looks_like_sql(a)).collect();
        if sql.is_empty() {
            push(ShellEffect::Opaque);
        }
        for text in sql {
            push(ShellEffect::Sql(text.clone()));
        }
    } else if shell.read_programs.contains(program.as_str()) {
        if !destructive_option {
            push(ShellEffect::Read);
        }
    } else if shell.write_programs.contains(program.as_str()) {
        push(ShellEffect::Write);
    } else if shell.subcommand_programs.contains(program.as_str()) {
        subcommands(args, lex, &mut push);
    } else if lex.verb_of(&program).is_some_and(|g| is_destructive(lex, g)) {
        push(ShellEffect::Destructive(program.clone()));
    } else {
        push(ShellEffect::Opaque);
    }
}

/// The words of a command without `NAME=value` assignments and wrappers
/// such as `sudo` or `timeout 10` (with their options).
fn unwrapped<'w>(mut words: &'w [String], lex: &Lexicon) -> &'w [String] {
    loop {
        match words.first() {
            Some(w) if is_assignment(w) => words = &words[1..],
            Some(w) if lex.shell.wrappers.contains(program_name(w).as_str()) => {
                words = &words[1..];
                while words.first().is_some_and(|w| w.starts_with('-') || w.parse::<f64>().is_ok())
                {
                    words = &words[1..];
                }
            }
            _ => return words,
        }
    }
}

/// Reads the options of a command (`--force`, `-delete`, `git push -f`);
/// returns whether one was destructive.
fn options(
    program: &str,
    args: &[String],
    lex: &Lexicon,
    push: &mut impl FnMut(ShellEffect),
) -> bool {
    let mut destructive = false;
    for arg in args.iter().filter(|a| a.starts_with('-') && a.len() > 1) {
        for word in option_words(arg, program, lex) {
            let tokens = text::words(&word, lex);
            if lex.body.roles(&tokens).has(Roles::STATE_FLAG)
                || lex.verb_of(&word).is_some_and(|g| is_destructive(lex, g))
            {
                push(ShellEffect::Destructive(word));
                destructive = true;
            } else if tokens.iter().any(|t| t == "exec") {
                push(ShellEffect::Opaque);
            }
        }
    }
    destructive
}

/// `git push`, `kubectl delete pod x`, `aws ec2 terminate-instances`: the
/// first words after the program that are verbs of the table decide.
fn subcommands(args: &[String], lex: &Lexicon, push: &mut impl FnMut(ShellEffect)) {
    let mut decided = false;
    for arg in args.iter().filter(|a| !a.starts_with('-')).take(4) {
        let lower = arg.to_lowercase();
        if lex.shell.opaque_subcommands.contains(lower.as_str()) {
            push(ShellEffect::Opaque);
            return;
        }
        let tokens = text::words(arg, lex);
        let Some(found) = lex.verbs.at(&tokens, 0) else { continue };
        let group = &lex.verb_groups[*found.value];
        match group.effect {
            Effect::Read => push(ShellEffect::Read),
            Effect::Write => push(ShellEffect::Write),
            Effect::Destructive => {
                let objects: Vec<String> = args
                    .iter()
                    .flat_map(|a| text::words(a, lex))
                    .filter(|t| !tokens.contains(t))
                    .collect();
                let limited = group.only.as_ref().is_some_and(|only| only.find(&objects).is_none())
                    || group.unless.find(&objects).is_some();
                if limited {
                    push(ShellEffect::Write);
                } else {
                    push(ShellEffect::Destructive(tokens[..found.len].join(" ")));
                }
            }
        }
        decided = true;
        break;
    }
    if !decided {
        push(ShellEffect::Write);
    }
}

fn is_destructive(lex: &Lexicon, group: usize) -> bool {
    lex.verb_groups.get(group).is_some_and(|g| g.effect == Effect::Destructive)
}

/// The words an option stands for: `--force-with-lease` gives itself,
/// `-f` gives `force` for programs that say so.
fn option_words(arg: &str, program: &str, lex: &Lexicon) -> Vec<String> {
    let body = arg.trim_start_matches('-');
    let body = body.split('=').next().unwrap_or(body);
    if arg.starts_with("--") || body.chars().count() > 3 {
        return vec![body.to_owned()];
    }
    let Some(letters) = lex.shell.short_flags.get(program) else { return Vec::new() };
    body.chars()
        .filter_map(|c| letters.iter().find(|(l, _)| *l == c).map(|(_, w)| w.to_string()))
        .collect()
}

/// The method and URL of `curl -X DELETE https://...`.
fn request_of(args: &[String]) -> (&'static str, Option<String>) {
    let mut method = None;
    let mut has_data = false;
    let mut url = None;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        match arg.as_str() {
            "-X" | "--request" | "--method" => {
                method = args.get(i + 1).and_then(|m| text::http_method(m));
                i += 1;
            }
            "-d" | "--data" | "--data-raw" | "--data-binary" | "--json" | "-F" | "--form" => {
                has_data = true;
                i += 1;
            }
            "-I" | "--head" => method = Some("HEAD"),
            a if a.starts_with("-X") && a.len() > 2 => method = text::http_method(&a[2..]),
            a if a.starts_with("--request=") || a.starts_with("--method=") => {
                method = a.split_once('=').and_then(|(_, m)| text::http_method(m));
            }
            a if url.is_none() && (a.contains("://") || a.starts_with('/')) => {
                url = Some(a.to_owned())
            }
            _ => {}
        }
        i += 1;
    }
    let method = method.unwrap_or(if has_data { "POST" } else { "GET" });
    (method, url)
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

/// `/usr/bin/rm` → `rm`.
fn program_name(word: &str) -> String {
    word.rsplit('/').next().unwrap_or(word).to_lowercase()
}
