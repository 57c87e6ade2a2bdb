//! The rule table behind the heuristic classifier: its TOML form, how two
//! tables merge, validation, and the lookup tables compiled from it.
//!
//! The table is data a security team can read and extend; nothing in it is
//! evaluated. [`Lexicon`] is its compiled form: every word normalised to
//! lower-case tokens and indexed by its first token, so that a lookup is a
//! hash probe and no text is parsed per request.

use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, MatchKind};
use foldhash::{HashMap, HashSet};
use serde::{Deserialize, Serialize};

use super::text;
use crate::classify::Risk;

/// The built-in table.
const BUILTIN: &str = include_str!("rules.toml");

/// Longest phrase, in words, a table may hold.
const MAX_PHRASE_WORDS: usize = 4;

/// The vocabulary and settings of
/// [`HeuristicClassifier`](super::HeuristicClassifier).
///
/// [`RuleTable::default`] is the built-in table. A deployment adds to it with
/// [`RuleTable::from_toml_str`] and [`RuleTable::extend`]; the format is the
/// one of the built-in table, `rules.toml` beside this module, where every
/// section is explained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTable {
    #[serde(default)]
    paths: PathRules,
    #[serde(default)]
    verbs: BTreeMap<String, VerbGroup>,
    #[serde(default)]
    nouns: BTreeMap<String, NounGroup>,
    #[serde(default)]
    relations: RelationRules,
    #[serde(default)]
    body: BodyRules,
    #[serde(default)]
    shell: ShellRules,
    #[serde(default)]
    mcp: McpRules,
    #[serde(default)]
    deny: DenyRules,
}

/// Why a rule table could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleTableError {
    /// The text is not TOML.
    #[error("rule table is not valid TOML at line {line}: {message}")]
    Syntax {
        /// Line of the error, from 1.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A key has a value of the wrong kind, or is unknown.
    #[error("invalid rule table entry at `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key, such as `verbs.erase.risk`.
        key: String,
        /// What was wrong with it.
        message: String,
    },
    /// A word has no letters or digits.
    #[error("`{key}` lists `{word}`, which has no letters or digits")]
    EmptyWord {
        /// Dotted path of the list.
        key: String,
        /// The word as written.
        word: String,
    },
    /// A word has more words than a phrase may hold.
    #[error("`{key}` lists `{word}`, longer than {MAX_PHRASE_WORDS} words")]
    LongPhrase {
        /// Dotted path of the list.
        key: String,
        /// The phrase as written.
        word: String,
    },
    /// A verb is in two groups, so its meaning is ambiguous.
    #[error("verb `{word}` is listed in both `{first}` and `{second}`")]
    DuplicateVerb {
        /// The verb.
        word: String,
        /// The first group listing it.
        first: String,
        /// The second group listing it.
        second: String,
    },
    /// A verb group limits its objects both ways.
    #[error("`{key}` sets both `only_objects` and `unless_objects`")]
    ConflictingObjects {
        /// Dotted path of the group.
        key: String,
    },
    /// A short flag is not written as `letter=word`.
    #[error("`{key}` lists `{flag}`; write short flags as `f=force`")]
    BadShortFlag {
        /// Dotted path of the list.
        key: String,
        /// The entry as written.
        flag: String,
    },
}

/// What a verb does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Effect {
    /// Held for a person.
    Destructive,
    /// An ordinary, reversible change.
    Write,
    /// No side effects.
    Read,
}

/// Whether a verb counts in the last segment of a GET.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum OnGet {
    /// Never: REST puts checks there (`GET /pulls/1/merge`).
    #[default]
    Never,
    /// As a verb phrase (`delete-user`) or confirmed (`reset?confirm=1`).
    Phrase,
    /// Always: the GET itself does it (`GET /pods/x/exec` upgrades).
    Always,
}

/// When a sensitive noun counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum NounScope {
    /// Any change that names it.
    Mutate,
    /// Creating one.
    Create,
    /// An action on one.
    Action,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PathRules {
    file_extensions: Vec<String>,
    format_extensions: Vec<String>,
    id_aliases: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct VerbGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effect: Option<Effect>,
    #[serde(skip_serializing_if = "Option::is_none")]
    risk: Option<Risk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_get: Option<OnGet>,
    words: Vec<String>,
    only_objects: Vec<String>,
    unless_objects: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NounGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    risk: Option<Risk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on: Option<NounScope>,
    words: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RelationRules {
    soft: Vec<String>,
    path_soft: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BodyRules {
    verb_keys: Vec<String>,
    sql_keys: Vec<String>,
    command_keys: Vec<String>,
    url_keys: Vec<String>,
    data_keys: Vec<String>,
    dry_run_keys: Vec<String>,
    state_flags: Vec<String>,
    protections: Vec<String>,
    exposure_keys: Vec<String>,
    public_values: Vec<String>,
    public_flags: Vec<String>,
    private_flags: Vec<String>,
    access_keys: Vec<String>,
    branch_keys: Vec<String>,
    protected_branches: Vec<String>,
    branch_write_verbs: Vec<String>,
    destination_keys: Vec<String>,
    export_verbs: Vec<String>,
    scale_keys: Vec<String>,
    setting_keys: Vec<String>,
    overwrite_operators: Vec<String>,
    selector_keys: Vec<String>,
    bulk_words: Vec<String>,
    update_verbs: Vec<String>,
    create_verbs: Vec<String>,
    search_verbs: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ShellRules {
    read_programs: Vec<String>,
    write_programs: Vec<String>,
    subcommand_programs: Vec<String>,
    opaque_subcommands: Vec<String>,
    sql_programs: Vec<String>,
    request_programs: Vec<String>,
    short_flags: BTreeMap<String, Vec<String>>,
    wrappers: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct McpRules {
    shell_tools: Vec<String>,
    remote_targets: Vec<String>,
    description_phrases: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DenyRules {
    phrases: Vec<String>,
}

impl Default for RuleTable {
    /// The built-in table.
    fn default() -> Self {
        // INVARIANT: the built-in table parses and validates; a unit test
        // loads it, so a broken edit never reaches a build that ships.
        Self::from_toml_str(BUILTIN).unwrap_or_else(|e| panic!("built-in rule table: {e}"))
    }
}

impl RuleTable {
    /// A table with no vocabulary at all: every request is judged by its
    /// method alone. A base for a table written from scratch.
    pub fn empty() -> Self {
        Self {
            paths: PathRules::default(),
            verbs: BTreeMap::new(),
            nouns: BTreeMap::new(),
            relations: RelationRules::default(),
            body: BodyRules::default(),
            shell: ShellRules::default(),
            mcp: McpRules::default(),
            deny: DenyRules::default(),
        }
    }

    /// Parses and validates a table written in TOML.
    pub fn from_toml_str(text: &str) -> Result<Self, RuleTableError> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            let line = e.span().map_or(1, |span| {
                text.get(..span.start).map_or(1, |before| before.matches('\n').count() + 1)
            });
            RuleTableError::Syntax { line, message: one_line(e.message()) }
        })?;
        let table: Self = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            RuleTableError::Invalid {
                key: e.path().to_string(),
                message: one_line(e.inner().message()),
            }
        })?;
        table.validate()?;
        Ok(table)
    }

    /// Adds `other` to this table.
    ///
    /// Lists grow; a group's label, effect, risk or scope given in `other`
    /// replaces this table's. A verb listed in a group of `other` leaves
    /// every other verb group first, so a configuration can reclassify a
    /// built-in verb.
    pub fn extend(&mut self, other: RuleTable) {
        append(&mut self.paths.file_extensions, other.paths.file_extensions);
        append(&mut self.paths.format_extensions, other.paths.format_extensions);
        append(&mut self.paths.id_aliases, other.paths.id_aliases);

        for (name, group) in other.verbs {
            for word in &group.words {
                let key = text::normal_form(word);
                for existing in self.verbs.values_mut() {
                    existing.words.retain(|w| text::normal_form(w) != key);
                }
            }
            let mine = self.verbs.entry(name).or_default();
            mine.label = group.label.or(mine.label.take());
            mine.effect = group.effect.or(mine.effect);
            mine.risk = group.risk.or(mine.risk);
            mine.on_get = group.on_get.or(mine.on_get);
            append(&mut mine.words, group.words);
            append(&mut mine.only_objects, group.only_objects);
            append(&mut mine.unless_objects, group.unless_objects);
        }
        for (name, group) in other.nouns {
            let mine = self.nouns.entry(name).or_default();
            mine.label = group.label.or(mine.label.take());
            mine.risk = group.risk.or(mine.risk);
            mine.on = group.on.or(mine.on);
            append(&mut mine.words, group.words);
        }

        append(&mut self.relations.soft, other.relations.soft);
        append(&mut self.relations.path_soft, other.relations.path_soft);
        self.body.extend(other.body);
        self.shell.extend(other.shell);
        append(&mut self.mcp.shell_tools, other.mcp.shell_tools);
        append(&mut self.mcp.remote_targets, other.mcp.remote_targets);
        append(&mut self.mcp.description_phrases, other.mcp.description_phrases);
        append(&mut self.deny.phrases, other.deny.phrases);
    }

    /// Checks what serde cannot: words that normalise to nothing, verbs in
    /// two groups, contradictory object limits, malformed short flags.
    pub fn validate(&self) -> Result<(), RuleTableError> {
        Lexicon::compile(self).map(|_| ())
    }

    /// The phrases that are denied outright, as written.
    pub fn denied_phrases(&self) -> &[String] {
        &self.deny.phrases
    }
}

impl BodyRules {
    fn extend(&mut self, other: BodyRules) {
        let BodyRules {
            verb_keys,
            sql_keys,
            command_keys,
            url_keys,
            data_keys,
            dry_run_keys,
            state_flags,
            protections,
            exposure_keys,
            public_values,
            public_flags,
            private_flags,
            access_keys,
            branch_keys,
            protected_branches,
            branch_write_verbs,
            destination_keys,
            export_verbs,
            scale_keys,
            setting_keys,
            overwrite_operators,
            selector_keys,
            bulk_words,
            update_verbs,
            create_verbs,
            search_verbs,
        } = other;
        append(&mut self.verb_keys, verb_keys);
        append(&mut self.sql_keys, sql_keys);
        append(&mut self.command_keys, command_keys);
        append(&mut self.url_keys, url_keys);
        append(&mut self.data_keys, data_keys);
        append(&mut self.dry_run_keys, dry_run_keys);
        append(&mut self.state_flags, state_flags);
        append(&mut self.protections, protections);
        append(&mut self.exposure_keys, exposure_keys);
        append(&mut self.public_values, public_values);
        append(&mut self.public_flags, public_flags);
        append(&mut self.private_flags, private_flags);
        append(&mut self.access_keys, access_keys);
        append(&mut self.branch_keys, branch_keys);
        append(&mut self.protected_branches, protected_branches);
        append(&mut self.branch_write_verbs, branch_write_verbs);
        append(&mut self.destination_keys, destination_keys);
        append(&mut self.export_verbs, export_verbs);
        append(&mut self.scale_keys, scale_keys);
        append(&mut self.setting_keys, setting_keys);
        append(&mut self.overwrite_operators, overwrite_operators);
        append(&mut self.selector_keys, selector_keys);
        append(&mut self.bulk_words, bulk_words);
        append(&mut self.update_verbs, update_verbs);
        append(&mut self.create_verbs, create_verbs);
        append(&mut self.search_verbs, search_verbs);
    }
}

impl ShellRules {
    fn extend(&mut self, other: ShellRules) {
        append(&mut self.read_programs, other.read_programs);
        append(&mut self.write_programs, other.write_programs);
        append(&mut self.subcommand_programs, other.subcommand_programs);
        append(&mut self.opaque_subcommands, other.opaque_subcommands);
        append(&mut self.sql_programs, other.sql_programs);
        append(&mut self.request_programs, other.request_programs);
        append(&mut self.wrappers, other.wrappers);
        for (program, flags) in other.short_flags {
            append(self.short_flags.entry(program).or_default(), flags);
        }
    }
}

/// Appends the words of `more` that `list` lacks.
fn append(list: &mut Vec<String>, more: Vec<String>) {
    for word in more {
        if !list.contains(&word) {
            list.push(word);
        }
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// The compiled form.

/// A destructive, write or read verb group, compiled.
#[derive(Debug)]
pub(super) struct VerbSense {
    /// Marker rule name, such as `verb.erase`.
    pub(super) rule: String,
    /// What it means, for the rationale.
    pub(super) label: String,
    pub(super) effect: Effect,
    pub(super) risk: Risk,
    pub(super) on_get: OnGet,
    /// Destructive only for these objects, when set.
    pub(super) only: Option<PhraseMap<()>>,
    /// An ordinary write for these objects.
    pub(super) unless: PhraseMap<()>,
}

/// A sensitive noun group, compiled.
#[derive(Debug)]
pub(super) struct NounSense {
    pub(super) rule: String,
    pub(super) label: String,
    pub(super) risk: Risk,
    pub(super) scope: NounScope,
}

/// What a body key may mean. One key may have several roles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Roles(u32);

impl Roles {
    pub(super) const VERB: Roles = Roles(1);
    pub(super) const SQL: Roles = Roles(1 << 1);
    pub(super) const COMMAND: Roles = Roles(1 << 2);
    pub(super) const URL: Roles = Roles(1 << 3);
    pub(super) const DATA: Roles = Roles(1 << 4);
    pub(super) const DRY_RUN: Roles = Roles(1 << 5);
    pub(super) const EXPOSURE: Roles = Roles(1 << 6);
    pub(super) const PUBLIC_FLAG: Roles = Roles(1 << 7);
    pub(super) const PRIVATE_FLAG: Roles = Roles(1 << 8);
    pub(super) const ACCESS: Roles = Roles(1 << 9);
    pub(super) const BRANCH: Roles = Roles(1 << 10);
    pub(super) const DESTINATION: Roles = Roles(1 << 11);
    pub(super) const SCALE: Roles = Roles(1 << 12);
    pub(super) const SELECTOR: Roles = Roles(1 << 13);
    /// A word of the key marks a destructive option (`force`, `revoke_old`).
    pub(super) const STATE_FLAG: Roles = Roles(1 << 14);
    /// A word of the key names a protection (`audit_logging`).
    pub(super) const PROTECTION: Roles = Roles(1 << 15);
    /// The key holds the value of a setting the path names.
    pub(super) const SETTING: Roles = Roles(1 << 16);

    /// Whether every role of `other` is among these.
    pub(super) fn has(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    fn add(&mut self, other: Roles) {
        self.0 |= other.0;
    }
}

/// Word lists of the body rules, compiled.
#[derive(Debug, Default)]
pub(super) struct BodyLexicon {
    /// A whole key, its words joined by spaces → its roles.
    keys: HashMap<Box<str>, Roles>,
    /// Words found anywhere in a key → roles (state flags, protections).
    key_words: PhraseMap<Roles>,
    pub(super) public_values: PhraseMap<()>,
    pub(super) protected_branches: PhraseMap<()>,
    pub(super) branch_write_verbs: PhraseMap<()>,
    pub(super) export_verbs: PhraseMap<()>,
    pub(super) overwrite_operators: HashSet<Box<str>>,
    pub(super) bulk_words: PhraseMap<()>,
    pub(super) update_verbs: PhraseMap<()>,
    pub(super) create_verbs: PhraseMap<()>,
    pub(super) search_verbs: PhraseMap<()>,
}

impl BodyLexicon {
    /// The roles of a key, given its words.
    pub(super) fn roles<S: AsRef<str>>(&self, words: &[S]) -> Roles {
        let mut roles = match words {
            [] => Roles::default(),
            [one] => self.keys.get(one.as_ref()).copied().unwrap_or_default(),
            many => {
                let joined = many.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ");
                self.keys.get(joined.as_str()).copied().unwrap_or_default()
            }
        };
        for i in 0..words.len() {
            if let Some(found) = self.key_words.at(words, i) {
                roles.add(*found.value);
            }
        }
        roles
    }
}

/// Shell rules, compiled. Program names are kept as written, lower-cased.
#[derive(Debug, Default)]
pub(super) struct ShellLexicon {
    pub(super) read_programs: HashSet<Box<str>>,
    pub(super) write_programs: HashSet<Box<str>>,
    pub(super) subcommand_programs: HashSet<Box<str>>,
    pub(super) opaque_subcommands: HashSet<Box<str>>,
    pub(super) sql_programs: HashSet<Box<str>>,
    pub(super) request_programs: HashSet<Box<str>>,
    pub(super) wrappers: HashSet<Box<str>>,
    /// Program → short flag letter → the word it stands for.
    pub(super) short_flags: HashMap<Box<str>, Vec<(char, Box<str>)>>,
}

/// Everything the classifier looks words up in.
#[derive(Debug)]
pub(super) struct Lexicon {
    pub(super) verb_groups: Vec<VerbSense>,
    pub(super) noun_groups: Vec<NounSense>,
    /// Verb → its group; matched as written.
    pub(super) verbs: PhraseMap<usize>,
    /// Noun → its groups; each noun is also entered in its plural forms.
    pub(super) nouns: PhraseMap<Vec<usize>>,
    pub(super) soft: PhraseMap<()>,
    pub(super) path_soft: PhraseMap<()>,
    pub(super) file_extensions: HashSet<Box<str>>,
    pub(super) format_extensions: HashSet<Box<str>>,
    pub(super) id_aliases: HashSet<Box<str>>,
    pub(super) body: BodyLexicon,
    pub(super) shell: ShellLexicon,
    pub(super) shell_tools: PhraseMap<()>,
    /// Where an `exec` tool runs: a remote target makes it more than a hint.
    pub(super) remote_targets: PhraseMap<()>,
    /// Phrases of a tool description, matched in one pass over its text.
    pub(super) description_phrases: Option<AhoCorasick>,
    pub(super) deny: PhraseMap<()>,
    /// The group of `delete`: its verbs only unlink a soft relation.
    pub(super) erase_group: Option<usize>,
    /// The group of `exec`: in a tool's name it only hints, and what the
    /// call carries (SQL, a command) decides.
    pub(super) exec_group: Option<usize>,
    /// Every word of the table, for cutting compounds like `deleterange`.
    known: HashSet<Box<str>>,
    /// First three letters of every verb: a compound starts with one.
    verb_prefixes: HashSet<[u8; 3]>,
}

impl Lexicon {
    /// Compiles and validates a table.
    pub(super) fn compile(table: &RuleTable) -> Result<Self, RuleTableError> {
        let mut known = HashSet::default();
        let (verbs, verb_groups) = compile_verbs(&table.verbs, &mut known)?;
        let (nouns, noun_groups) = compile_nouns(&table.nouns, &mut known)?;

        let r = &table.relations;
        let soft = set(&mut known, "relations", "soft", &r.soft)?;
        let path_soft = set(&mut known, "relations", "path_soft", &r.path_soft)?;
        let body = compile_body(&table.body, &mut known)?;
        let shell = compile_shell(&table.shell)?;
        let shell_tools = set(&mut known, "mcp", "shell_tools", &table.mcp.shell_tools)?;
        let remote_targets =
            nouns_set(&mut known, "mcp", "remote_targets", &table.mcp.remote_targets)?;
        let description_phrases = description_automaton(&table.mcp.description_phrases)?;
        let deny = set(&mut known, "deny", "phrases", &table.deny.phrases)?;

        let verb_prefixes = verbs
            .entries
            .keys()
            .filter_map(|w| w.as_bytes().get(..3).and_then(|p| <[u8; 3]>::try_from(p).ok()))
            .collect();
        let erase_group = verbs.word("delete").copied();
        let exec_group = verbs.word("exec").copied();
        Ok(Self {
            verb_groups,
            noun_groups,
            erase_group,
            exec_group,
            verbs,
            nouns,
            soft,
            path_soft,
            file_extensions: raw_set(&table.paths.file_extensions),
            format_extensions: raw_set(&table.paths.format_extensions),
            id_aliases: raw_set(&table.paths.id_aliases),
            body,
            shell,
            shell_tools,
            remote_targets,
            description_phrases,
            deny,
            known,
            verb_prefixes,
        })
    }

    /// Whether `word` (lower case) is a word of the table, singular or
    /// plural.
    pub(super) fn is_known(&self, word: &str) -> bool {
        self.known.contains(word)
    }

    /// Whether a word could start with a verb of the table.
    pub(super) fn may_start_with_verb(&self, word: &str) -> bool {
        word.as_bytes()
            .get(..3)
            .and_then(|p| <[u8; 3]>::try_from(p).ok())
            .is_some_and(|p| self.verb_prefixes.contains(&p))
    }

    /// The verb group a single word belongs to.
    pub(super) fn verb_of(&self, word: &str) -> Option<usize> {
        self.verbs.word(word).copied()
    }
}

/// The verb groups: each verb in one group only.
fn compile_verbs(
    groups: &BTreeMap<String, VerbGroup>,
    known: &mut HashSet<Box<str>>,
) -> Result<(PhraseMap<usize>, Vec<VerbSense>), RuleTableError> {
    let mut verbs = PhraseMap::default();
    let mut senses = Vec::new();
    let mut owner: HashMap<Vec<String>, String> = HashMap::default();
    for (name, group) in groups {
        let key = format!("verbs.{name}");
        if !group.only_objects.is_empty() && !group.unless_objects.is_empty() {
            return Err(RuleTableError::ConflictingObjects { key });
        }
        let index = senses.len();
        for word in &group.words {
            let phrase = phrase(&key, "words", word)?;
            if let Some(first) = owner.insert(phrase.clone(), key.clone()) {
                return Err(RuleTableError::DuplicateVerb {
                    word: word.clone(),
                    first,
                    second: key,
                });
            }
            remember(known, &phrase);
            verbs.insert(phrase, index);
        }
        let only = if group.only_objects.is_empty() {
            None
        } else {
            Some(nouns_set(known, &key, "only_objects", &group.only_objects)?)
        };
        senses.push(VerbSense {
            rule: format!("verb.{name}"),
            label: group.label.clone().unwrap_or_else(|| name.replace('_', " ")),
            effect: group.effect.unwrap_or(Effect::Destructive),
            risk: group.risk.unwrap_or(Risk::High),
            on_get: group.on_get.unwrap_or_default(),
            only,
            unless: nouns_set(known, &key, "unless_objects", &group.unless_objects)?,
        });
    }
    Ok((verbs, senses))
}

/// The noun groups: a noun may be in several, and matches its plurals.
fn compile_nouns(
    groups: &BTreeMap<String, NounGroup>,
    known: &mut HashSet<Box<str>>,
) -> Result<(PhraseMap<Vec<usize>>, Vec<NounSense>), RuleTableError> {
    let mut nouns: PhraseMap<Vec<usize>> = PhraseMap::default();
    let mut senses = Vec::new();
    for (name, group) in groups {
        let key = format!("nouns.{name}");
        let index = senses.len();
        for word in &group.words {
            for form in with_plurals(phrase(&key, "words", word)?) {
                remember(known, &form);
                nouns.insert_with(form, |groups| {
                    if !groups.contains(&index) {
                        groups.push(index);
                    }
                });
            }
        }
        senses.push(NounSense {
            rule: format!("noun.{name}"),
            label: group.label.clone().unwrap_or_else(|| name.replace('_', " ")),
            risk: group.risk.unwrap_or(Risk::High),
            scope: group.on.unwrap_or(NounScope::Mutate),
        });
    }
    Ok((nouns, senses))
}

fn compile_body(
    b: &BodyRules,
    known: &mut HashSet<Box<str>>,
) -> Result<BodyLexicon, RuleTableError> {
    let whole: [(&str, &[String], Roles); 14] = [
        ("verb_keys", &b.verb_keys, Roles::VERB),
        ("sql_keys", &b.sql_keys, Roles::SQL),
        ("command_keys", &b.command_keys, Roles::COMMAND),
        ("url_keys", &b.url_keys, Roles::URL),
        ("data_keys", &b.data_keys, Roles::DATA),
        ("dry_run_keys", &b.dry_run_keys, Roles::DRY_RUN),
        ("exposure_keys", &b.exposure_keys, Roles::EXPOSURE),
        ("public_flags", &b.public_flags, Roles::PUBLIC_FLAG),
        ("private_flags", &b.private_flags, Roles::PRIVATE_FLAG),
        ("access_keys", &b.access_keys, Roles::ACCESS),
        ("branch_keys", &b.branch_keys, Roles::BRANCH),
        ("destination_keys", &b.destination_keys, Roles::DESTINATION),
        ("scale_keys", &b.scale_keys, Roles::SCALE),
        ("setting_keys", &b.setting_keys, Roles::SETTING),
    ];
    let mut keys: HashMap<Box<str>, Roles> = HashMap::default();
    for (field, words, role) in
        whole.into_iter().chain([("selector_keys", b.selector_keys.as_slice(), Roles::SELECTOR)])
    {
        for word in words {
            let phrase = phrase("body", field, word)?;
            remember(known, &phrase);
            keys.entry(Box::from(phrase.join(" "))).or_default().add(role);
        }
    }
    let mut key_words: PhraseMap<Roles> = PhraseMap::default();
    for (field, words, role) in [
        ("state_flags", &b.state_flags, Roles::STATE_FLAG),
        ("protections", &b.protections, Roles::PROTECTION),
    ] {
        for word in words {
            let phrase = phrase("body", field, word)?;
            remember(known, &phrase);
            key_words.insert_with(phrase, |roles| roles.add(role));
        }
    }

    let mut set = |field: &str, words: &[String]| set(known, "body", field, words);
    Ok(BodyLexicon {
        keys,
        key_words,
        public_values: set("public_values", &b.public_values)?,
        protected_branches: set("protected_branches", &b.protected_branches)?,
        branch_write_verbs: set("branch_write_verbs", &b.branch_write_verbs)?,
        export_verbs: set("export_verbs", &b.export_verbs)?,
        overwrite_operators: raw_set(&b.overwrite_operators),
        bulk_words: set("bulk_words", &b.bulk_words)?,
        update_verbs: set("update_verbs", &b.update_verbs)?,
        create_verbs: set("create_verbs", &b.create_verbs)?,
        search_verbs: set("search_verbs", &b.search_verbs)?,
    })
}

fn compile_shell(s: &ShellRules) -> Result<ShellLexicon, RuleTableError> {
    let mut short_flags = HashMap::default();
    for (program, flags) in &s.short_flags {
        let mut letters = Vec::new();
        for flag in flags {
            let bad = || RuleTableError::BadShortFlag {
                key: format!("shell.short_flags.{program}"),
                flag: flag.clone(),
            };
            let (letter, word) = flag.split_once('=').ok_or_else(bad)?;
            let mut chars = letter.chars();
            let (Some(letter), None) = (chars.next(), chars.next()) else {
                return Err(bad());
            };
            if word.trim().is_empty() {
                return Err(bad());
            }
            letters.push((letter, Box::from(word.trim().to_lowercase())));
        }
        short_flags.insert(Box::from(program.to_lowercase()), letters);
    }
    Ok(ShellLexicon {
        read_programs: raw_set(&s.read_programs),
        write_programs: raw_set(&s.write_programs),
        subcommand_programs: raw_set(&s.subcommand_programs),
        opaque_subcommands: raw_set(&s.opaque_subcommands),
        sql_programs: raw_set(&s.sql_programs),
        request_programs: raw_set(&s.request_programs),
        wrappers: raw_set(&s.wrappers),
        short_flags,
    })
}

/// An automaton finding the description phrases, in any case, in one pass.
fn description_automaton(phrases: &[String]) -> Result<Option<AhoCorasick>, RuleTableError> {
    let mut patterns = Vec::new();
    for word in phrases {
        patterns.push(phrase("mcp", "description_phrases", word)?.join(" "));
    }
    if patterns.is_empty() {
        return Ok(None);
    }
    let automaton = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostLongest)
        .build(&patterns)
        .map_err(|e| RuleTableError::Invalid {
            key: "mcp.description_phrases".into(),
            message: e.to_string(),
        })?;
    Ok(Some(automaton))
}

/// A word of the table as tokens, or why it is unusable.
fn phrase(key: &str, field: &str, word: &str) -> Result<Vec<String>, RuleTableError> {
    let tokens = text::normal_tokens(word);
    if tokens.is_empty() {
        return Err(RuleTableError::EmptyWord {
            key: format!("{key}.{field}"),
            word: word.to_owned(),
        });
    }
    if tokens.len() > MAX_PHRASE_WORDS {
        return Err(RuleTableError::LongPhrase {
            key: format!("{key}.{field}"),
            word: word.to_owned(),
        });
    }
    Ok(tokens)
}

fn set(
    known: &mut HashSet<Box<str>>,
    key: &str,
    field: &str,
    words: &[String],
) -> Result<PhraseMap<()>, RuleTableError> {
    let mut map = PhraseMap::default();
    for word in words {
        let phrase = phrase(key, field, word)?;
        remember(known, &phrase);
        map.insert(phrase, ());
    }
    Ok(map)
}

/// Like [`set`], for nouns: each also matches its plural.
fn nouns_set(
    known: &mut HashSet<Box<str>>,
    key: &str,
    field: &str,
    words: &[String],
) -> Result<PhraseMap<()>, RuleTableError> {
    let mut map = PhraseMap::default();
    for word in words {
        for form in with_plurals(phrase(key, field, word)?) {
            remember(known, &form);
            map.insert(form, ());
        }
    }
    Ok(map)
}

fn raw_set(words: &[String]) -> HashSet<Box<str>> {
    words.iter().map(|w| Box::from(w.trim().to_lowercase())).collect()
}

fn remember(known: &mut HashSet<Box<str>>, phrase: &[String]) {
    for word in phrase {
        known.insert(Box::from(word.as_str()));
    }
}

// ---------------------------------------------------------------------------
// Phrase lookup.

/// The words of a phrase after its first, and the phrase's value.
type Tail<V> = (Box<[Box<str>]>, V);

/// Words and phrases with a value, indexed by their first word.
#[derive(Debug)]
pub(super) struct PhraseMap<V> {
    /// First word → the phrases it starts, longest first.
    entries: HashMap<Box<str>, Vec<Tail<V>>>,
}

impl<V> Default for PhraseMap<V> {
    fn default() -> Self {
        Self { entries: HashMap::default() }
    }
}

/// A phrase found in a list of tokens.
#[derive(Debug)]
pub(super) struct Found<'m, V> {
    pub(super) value: &'m V,
    pub(super) start: usize,
    pub(super) len: usize,
}

impl<V> Clone for Found<'_, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for Found<'_, V> {}

impl<V> PhraseMap<V> {
    fn insert(&mut self, phrase: Vec<String>, value: V) {
        let mut words = phrase.into_iter().map(|w| w.into_boxed_str());
        let Some(first) = words.next() else { return };
        let rest: Box<[Box<str>]> = words.collect();
        let list = self.entries.entry(first).or_default();
        if let Some(slot) = list.iter_mut().find(|(r, _)| *r == rest) {
            slot.1 = value;
        } else {
            list.push((rest, value));
            list.sort_by_key(|(r, _)| std::cmp::Reverse(r.len()));
        }
    }

    fn insert_with(&mut self, phrase: Vec<String>, update: impl FnOnce(&mut V))
    where
        V: Default,
    {
        let mut words = phrase.into_iter().map(|w| w.into_boxed_str());
        let Some(first) = words.next() else { return };
        let rest: Box<[Box<str>]> = words.collect();
        let list = self.entries.entry(first).or_default();
        if let Some(slot) = list.iter_mut().find(|(r, _)| *r == rest) {
            update(&mut slot.1);
        } else {
            let mut value = V::default();
            update(&mut value);
            list.push((rest, value));
            list.sort_by_key(|(r, _)| std::cmp::Reverse(r.len()));
        }
    }

    /// The value of a one-word entry, matched as written.
    pub(super) fn word(&self, word: &str) -> Option<&V> {
        self.entries.get(word)?.iter().find(|(rest, _)| rest.is_empty()).map(|(_, v)| v)
    }

    /// The longest phrase that starts at `tokens[at]`.
    pub(super) fn at<S: AsRef<str>>(&self, tokens: &[S], at: usize) -> Option<Found<'_, V>> {
        let list = self.entries.get(tokens.get(at)?.as_ref())?;
        let following = tokens.get(at + 1..).unwrap_or(&[]);
        // Longest first: the first that fits is the longest.
        list.iter().find(|(rest, _)| rest_matches(rest, following)).map(|(rest, value)| Found {
            value,
            start: at,
            len: rest.len() + 1,
        })
    }

    /// The first phrase found anywhere in `tokens`.
    pub(super) fn find<S: AsRef<str>>(&self, tokens: &[S]) -> Option<Found<'_, V>> {
        (0..tokens.len()).find_map(|i| self.at(tokens, i))
    }

    /// The phrase that ends `tokens`, longest first.
    pub(super) fn suffix<S: AsRef<str>>(&self, tokens: &[S]) -> Option<Found<'_, V>> {
        let n = tokens.len();
        (1..=n.min(MAX_PHRASE_WORDS))
            .rev()
            .find_map(|len| self.at(tokens, n - len).filter(|f| f.len == len))
    }

    /// Whether `tokens` is exactly one phrase of the map.
    pub(super) fn whole<S: AsRef<str>>(&self, tokens: &[S]) -> bool {
        !tokens.is_empty() && self.at(tokens, 0).is_some_and(|f| f.len == tokens.len())
    }
}

fn rest_matches<S: AsRef<str>>(rest: &[Box<str>], tokens: &[S]) -> bool {
    tokens.len() >= rest.len() && rest.iter().zip(tokens).all(|(want, got)| **want == *got.as_ref())
}

/// A phrase and the same phrase with its last word in the plural forms
/// English may give it: `policy` also gives `policys`, `policyes` and
/// `policies`, so that a lookup needs no guessing at run time.
fn with_plurals(phrase: Vec<String>) -> Vec<Vec<String>> {
    let mut all = vec![phrase.clone()];
    let Some(last) = phrase.last() else { return all };
    let mut forms = vec![format!("{last}s"), format!("{last}es")];
    if let Some(stem) = last.strip_suffix('y') {
        forms.push(format!("{stem}ies"));
    }
    for form in forms {
        let mut variant = phrase.clone();
        if let Some(end) = variant.last_mut() {
            *end = form;
        }
        all.push(variant);
    }
    all
}
