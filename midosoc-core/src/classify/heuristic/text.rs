//! Cutting request text into the words the rule table speaks: path segments,
//! query pairs, camelCase, snake_case and kebab-case names.
//!
//! SECURITY: a hostile agent will spell `delete` as `%64elete`, `DeLeTe`,
//! `de\u{200b}lete` or hide it in `/search/../delete`. Paths are
//! percent-decoded until stable (at most three rounds), dot segments are
//! resolved the way a server resolves them, invisible format characters are
//! dropped, and a mixed-case run that is a known word is kept whole rather
//! than cut at its humps.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use super::rules::Lexicon;

/// Rounds of percent-decoding applied to a path or query.
const DECODE_ROUNDS: usize = 3;

/// Longest text cut into words; the rest is ignored.
const MAX_TEXT: usize = 4096;

/// Lower-case words of a rule-table entry: `writeOff`, `write_off` and
/// `write off` all give `["write", "off"]`.
pub(super) fn normal_tokens(word: &str) -> Vec<String> {
    let mut out = Vec::new();
    for run in word.split(|c: char| !c.is_alphanumeric()).filter(|r| !r.is_empty()) {
        camel_pieces(run, &mut out);
    }
    out
}

/// A rule-table entry as one comparable string.
pub(super) fn normal_form(word: &str) -> String {
    normal_tokens(word).join(" ")
}

/// The words of `text`, appended to `out`. Returns whether a word mixed
/// ASCII letters with other scripts, as look-alike spellings do.
pub(super) fn words_into(text: &str, lex: &Lexicon, out: &mut Vec<String>) -> bool {
    let text = bounded(text);
    // SECURITY: invisible characters would split `de\u{200b}lete` in two;
    // they are removed first, so the word is read whole.
    if text.chars().any(is_invisible) {
        let visible: String = text.chars().filter(|c| !is_invisible(*c)).collect();
        return runs_into(&visible, lex, out);
    }
    runs_into(text, lex, out)
}

/// Cuts `text` at every character that is not a letter or digit.
fn runs_into(text: &str, lex: &Lexicon, out: &mut Vec<String>) -> bool {
    let mut mixed = false;
    for run in text.split(|c: char| !c.is_alphanumeric()).filter(|r| !r.is_empty()) {
        mixed |= flush(run, lex, out);
    }
    mixed
}

/// The words of `text` as a new list.
pub(super) fn words(text: &str, lex: &Lexicon) -> Vec<String> {
    let mut out = Vec::with_capacity(4);
    words_into(text, lex, &mut out);
    out
}

fn bounded(text: &str) -> &str {
    if text.len() <= MAX_TEXT {
        return text;
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Format characters that render as nothing and only serve to split a word.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

// LIMITATION: look-alike letters (Cyrillic `е` for `e`) are not mapped back
// to ASCII, for want of a confusables table; a word mixing scripts is
// reported instead, and holds a request that changes something.
fn flush(run: &str, lex: &Lexicon, out: &mut Vec<String>) -> bool {
    let mixed = !run.is_ascii() && run.chars().any(|c| c.is_ascii_alphabetic());
    let lower = run.to_lowercase();
    let known = lex.is_known(&lower);
    if known || !has_humps(run) {
        push_compound(lower, known, lex, out);
    } else {
        let start = out.len();
        camel_pieces(run, out);
        // Cut compounds inside the pieces too: `requestDeleterange`.
        let pieces: Vec<String> = out.drain(start..).collect();
        for piece in pieces {
            let known = lex.is_known(&piece);
            push_compound(piece, known, lex, out);
        }
    }
    mixed
}

/// Whether a run changes case inside: `deleteRepo`, `HTTPServer`.
fn has_humps(run: &str) -> bool {
    let mut prev_lower = false;
    for c in run.chars() {
        if c.is_uppercase() && prev_lower {
            return true;
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
    }
    false
}

/// Lower-case pieces of a run cut at camelCase humps: `deleteRepository`
/// gives `delete`, `repository`; `HTTPServer` gives `http`, `server`.
fn camel_pieces(run: &str, out: &mut Vec<String>) {
    let chars: Vec<char> = run.chars().collect();
    let mut piece = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
        let next = chars.get(i + 1).copied();
        let boundary = match prev {
            Some(p) if c.is_uppercase() => {
                p.is_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_uppercase() && next.is_some_and(char::is_lowercase))
            }
            _ => false,
        };
        if boundary && !piece.is_empty() {
            out.push(std::mem::take(&mut piece));
        }
        piece.extend(c.to_lowercase());
    }
    if !piece.is_empty() {
        out.push(piece);
    }
}

/// Pushes `word`, cut in two when it is a verb glued to a known word, as in
/// etcd's `deleterange` or `purgeall`.
// LIMITATION: only a verb at the start of a glued word is found
// (`deleterange`, not `rangedelete`); an unknown glued word is read as one
// word and judged by the method and the rest of the request.
fn push_compound(word: String, known: bool, lex: &Lexicon, out: &mut Vec<String>) {
    const MIN_PART: usize = 3;
    if !known && word.len() >= 2 * MIN_PART && word.is_ascii() && lex.may_start_with_verb(&word) {
        for cut in (MIN_PART..=word.len() - MIN_PART).rev() {
            let (head, tail) = word.split_at(cut);
            if lex.verb_of(head).is_some() && lex.is_known(tail) {
                out.push(head.to_owned());
                out.push(tail.to_owned());
                return;
            }
        }
    }
    out.push(word);
}

/// Percent-decodes until the text stops changing.
pub(super) fn decode(text: &str) -> Cow<'_, str> {
    let mut current: Cow<'_, str> = Cow::Borrowed(text);
    for _ in 0..DECODE_ROUNDS {
        if !current.contains('%') {
            break;
        }
        let next = percent_decode_str(&current).decode_utf8_lossy().into_owned();
        if next == *current {
            break;
        }
        current = Cow::Owned(next);
    }
    current
}

// ---------------------------------------------------------------------------
// Paths.

/// What a path segment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SegmentKind {
    /// Words that name a resource or an action.
    Literal,
    /// An identifier, a file name or other data.
    Id,
    /// An API version such as `v1`.
    Version,
}

/// One segment of a path.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) kind: SegmentKind,
    /// Words, for literal segments that were read.
    pub(super) tokens: Vec<String>,
    /// Where the text of a literal segment not read yet lies in
    /// [`PathView::text`].
    pending: Option<std::ops::Range<usize>>,
}

/// A path cut into segments. Custom methods (`/instances/x:stop`), matrix
/// parameters and dotted method names (`/api/chat.delete`) become segments
/// of their own.
#[derive(Clone, Debug, Default)]
pub(super) struct PathView {
    pub(super) segments: Vec<Segment>,
    /// The decoded path, when segments wait to be read.
    text: String,
    /// A word mixed scripts, as look-alike spellings do.
    pub(super) mixed_script: bool,
}

impl PathView {
    /// Reads a path (without query). With `every`, every literal segment
    /// is cut into words; otherwise only the last, which is all a read
    /// request needs, and the others wait in case they are asked for.
    pub(super) fn parse(path: &str, lex: &Lexicon, every: bool) -> Self {
        let decoded = decode(path);
        let mut raw: Vec<&str> = Vec::with_capacity(8);
        for segment in decoded.split(['/', '\\']) {
            match segment {
                "" | "." => {}
                ".." => {
                    raw.pop();
                }
                s => raw.push(s),
            }
        }

        let mut parts: Vec<(SegmentKind, &str)> = Vec::with_capacity(raw.len() + 2);
        for segment in raw {
            for part in segment.split([':', ';']).filter(|p| !p.is_empty()) {
                classify(part, lex, true, &mut parts);
            }
        }

        let last = parts.iter().rposition(|(kind, _)| *kind == SegmentKind::Literal);
        let base = decoded.as_ptr() as usize;
        let mut view = PathView {
            segments: Vec::with_capacity(parts.len() + 1),
            text: String::new(),
            mixed_script: false,
        };
        for (i, (kind, part)) in parts.into_iter().enumerate() {
            let mut segment = Segment { kind, tokens: Vec::new(), pending: None };
            if kind == SegmentKind::Literal {
                if every || Some(i) == last {
                    view.mixed_script |= words_into(part, lex, &mut segment.tokens);
                } else {
                    let start = part.as_ptr() as usize - base;
                    segment.pending = Some(start..start + part.len());
                }
            }
            view.segments.push(segment);
        }
        if view.segments.iter().any(|s| s.pending.is_some()) {
            view.text = decoded.into_owned();
        }
        view
    }

    /// Adds a query key that names a sub-resource as a last segment.
    pub(super) fn push_subresource(&mut self, key: &str, lex: &Lexicon) {
        let mut parts = Vec::new();
        classify(key, lex, false, &mut parts);
        for (kind, part) in parts {
            let mut tokens = Vec::new();
            if kind == SegmentKind::Literal {
                self.mixed_script |= words_into(part, lex, &mut tokens);
            }
            self.segments.push(Segment { kind, tokens, pending: None });
        }
    }

    /// The last segment, when it is literal.
    pub(super) fn final_literal(&self) -> Option<(usize, &Segment)> {
        let last = self.segments.len().checked_sub(1)?;
        let seg = self.segments.get(last)?;
        (seg.kind == SegmentKind::Literal).then_some((last, seg))
    }

    /// Literal segments, with their index.
    pub(super) fn literals(&self) -> impl Iterator<Item = (usize, &Segment)> {
        self.segments.iter().enumerate().filter(|(_, s)| s.kind == SegmentKind::Literal)
    }

    /// Words of up to `count` literal segments before `index`, nearest
    /// first: the resource an action segment acts on.
    pub(super) fn objects_before(
        &self,
        index: usize,
        count: usize,
        lex: &Lexicon,
        out: &mut Vec<String>,
    ) {
        let before = self.segments.get(..index).unwrap_or(&[]);
        for seg in before.iter().rev().filter(|s| s.kind == SegmentKind::Literal).take(count) {
            match seg.pending.clone().and_then(|range| self.text.get(range)) {
                Some(text) => {
                    words_into(text, lex, out);
                }
                None => out.extend(seg.tokens.iter().cloned()),
            }
        }
    }

    /// Whether the segment at `index` is an identifier.
    pub(super) fn is_id(&self, index: usize) -> bool {
        self.segments.get(index).is_some_and(|s| s.kind == SegmentKind::Id)
    }
}

/// Sorts one part of a path: an id, a version, words, or (with
/// `split_dots`) a dotted name cut into parts.
fn classify<'p>(
    part: &'p str,
    lex: &Lexicon,
    split_dots: bool,
    out: &mut Vec<(SegmentKind, &'p str)>,
) {
    let lower: Cow<'_, str> = if part.chars().any(char::is_uppercase) {
        Cow::Owned(part.to_lowercase())
    } else {
        Cow::Borrowed(part)
    };
    // `cancel.json`: a response format after an action word.
    if let Some((stem, ext)) = part.rsplit_once('.')
        && lex.format_extensions.contains(ext.to_ascii_lowercase().as_str())
        && !stem.is_empty()
        && stem.chars().all(|c| c.is_alphabetic() || c == '_' || c == '-')
    {
        return classify(stem, lex, false, out);
    }
    let kind = if lex.id_aliases.contains(&*lower) || is_file_like(&lower, lex) {
        SegmentKind::Id
    } else if is_version(&lower) {
        SegmentKind::Version
    } else if is_id_like(part) {
        SegmentKind::Id
    } else if split_dots && part.contains('.') {
        for piece in part.split('.').filter(|p| !p.is_empty()) {
            classify(piece, lex, false, out);
        }
        return;
    } else if part.chars().any(char::is_alphanumeric) {
        SegmentKind::Literal
    } else {
        return;
    };
    out.push((kind, part));
}

/// `ci.yml`, `delete_all_branches.sh`: a file, which is data.
fn is_file_like(lower: &str, lex: &Lexicon) -> bool {
    match lower.rsplit_once('.') {
        Some((stem, ext)) => !stem.is_empty() && lex.file_extensions.contains(ext),
        None => false,
    }
}

/// `v1`, `v2beta1`, `v1alpha`.
fn is_version(lower: &str) -> bool {
    let Some(rest) = lower.strip_prefix('v') else { return false };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let tail = &rest[digits..];
    let letters = tail.chars().take_while(char::is_ascii_lowercase).count();
    tail[letters..].chars().all(|c| c.is_ascii_digit())
}

/// Numbers, hashes, prefixed ids (`cus_NffrFeUfNV2Hib`), emails, digests.
fn is_id_like(part: &str) -> bool {
    let digits = part.chars().filter(char::is_ascii_digit).count();
    let len = part.chars().count();
    digits == len
        || part.contains('@')
        || digits >= 2
        || (digits == 1 && len >= 8)
        || (len >= 24 && part.chars().all(char::is_alphanumeric))
}

// ---------------------------------------------------------------------------
// Queries.

/// Query pairs, decoded.
pub(super) fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_pairs(bounded(query)).collect()
}

/// Pairs of a query string or form body (`a=1&b=x+y`), decoded.
pub(super) fn form_pairs(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.split('&').filter(|pair| !pair.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(&key.replace('+', " ")).into_owned(), decode(&value.replace('+', " ")).into_owned())
    })
}

/// Whether a query or form value means "yes".
pub(super) fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "y" | "on" | "all" | "force" | "server" | "client"
    )
}

/// Whether a string value means "off".
pub(super) fn falsy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "false" | "0" | "no" | "n" | "off" | "none" | "disabled" | "disable" | "never"
    )
}

/// The upper-case HTTP method a string names, if it names one.
pub(super) fn http_method(value: &str) -> Option<&'static str> {
    const METHODS: &[&str] =
        &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "PURGE", "TRACE", "CONNECT"];
    let value = value.trim();
    METHODS.iter().copied().find(|m| m.eq_ignore_ascii_case(value))
}
