//! The audit trail: a durable store's event log, chained by SHA-256 so that
//! an edit, a removal or an insertion shows.
//!
//! Every change to an approval (held, decided, executed, withdrawn,
//! expired) is one [`AuditEntry`]. The entry's `payload` is the approval
//! after the change, so it names the agent, the assessment, the analyst and
//! the token id (never the token). Each entry carries `prev_hash`, the hash
//! of the entry before it (64 zeros for the first), and its own `hash`:
//!
//! ```text
//! hash = hex(SHA-256(JCS(entry without "hash")))
//! ```
//!
//! where JCS is the JSON Canonicalization Scheme of RFC 8785. An export is
//! one entry per line (JSON Lines), so an auditor can check it with any
//! JCS implementation: for each line, drop `hash`, canonicalize, hash,
//! compare, and compare `prev_hash` with the previous line's `hash`.
//! [`ChainVerifier`] does exactly that.
//!
//! # Security
//!
//! The chain proves that nobody edited the log *without also rewriting
//! every later hash*. Someone with write access to the database can still
//! rewrite the whole chain, or cut its end off along with the chain head
//! the stores keep beside it.
// LIMITATION: the head hash is not anchored outside the database (signed,
// or sent to a second system), so a rewrite of the whole chain by a
// database administrator is not detected. Exporting the log regularly and
// comparing an old export's last hash with the live chain detects it.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{EventKind, StoreError, StoreEvent};
use crate::action::AgentId;
use crate::approval::{Approval, ApprovalId};

/// The `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A stream of audit entries, oldest first.
pub type AuditStream = BoxStream<'static, Result<AuditEntry, StoreError>>;

/// One link of the audit chain: one change to one approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// When the store recorded it (microsecond precision, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The approval it is about.
    pub approval_id: ApprovalId,
    /// The agent whose request it is.
    pub agent: AgentId,
    /// The analyst who decided, once someone has.
    pub analyst: Option<String>,
    /// The approval after the change, as JSON.
    pub payload: serde_json::Value,
    /// `hash` of the entry before, or [`GENESIS_HASH`].
    pub prev_hash: String,
    /// SHA-256 of this entry without `hash`, in lower-case hex.
    pub hash: String,
}

/// The fields a hash covers: an entry without its `hash`. Its JSON form
/// must stay the JSON form of [`AuditEntry`] minus one field.
#[derive(Serialize)]
struct Linked<'a> {
    seq: u64,
    kind: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    at: OffsetDateTime,
    approval_id: &'a str,
    agent: &'a str,
    analyst: Option<&'a str>,
    payload: &'a serde_json::Value,
    prev_hash: &'a str,
}

impl Linked<'_> {
    fn hash(&self) -> Result<String, serde_json::Error> {
        let canonical = serde_json_canonicalizer::to_vec(self)?;
        Ok(hex::encode(Sha256::digest(&canonical)))
    }
}

impl AuditEntry {
    /// The entry that records `approval` after a `kind` change, linked
    /// after the entry numbered `prev_seq` whose hash is `prev_hash`.
    pub fn seal(
        prev_seq: u64,
        prev_hash: &str,
        kind: EventKind,
        at: OffsetDateTime,
        approval: &Approval,
    ) -> Result<Self, serde_json::Error> {
        let mut entry = Self {
            seq: prev_seq + 1,
            kind,
            at: truncate_to_micros(at),
            approval_id: approval.id,
            agent: approval.agent().clone(),
            analyst: approval.decision.as_ref().map(|d| d.analyst.id.clone()),
            payload: serde_json::to_value(approval)?,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash()?;
        Ok(entry)
    }

    /// The hash this entry's content calls for; equal to `hash` unless the
    /// entry was changed after it was sealed.
    pub fn compute_hash(&self) -> Result<String, serde_json::Error> {
        let approval_id = self.approval_id.to_string();
        Linked {
            seq: self.seq,
            kind: self.kind.as_str(),
            at: self.at,
            approval_id: &approval_id,
            agent: self.agent.as_str(),
            analyst: self.analyst.as_deref(),
            payload: &self.payload,
            prev_hash: &self.prev_hash,
        }
        .hash()
    }

    /// The payload in canonical (RFC 8785) form, as stores keep it.
    pub fn canonical_payload(&self) -> Result<String, serde_json::Error> {
        serde_json_canonicalizer::to_string(&self.payload)
    }

    /// The event this entry announces.
    pub fn to_event(&self) -> Result<StoreEvent, serde_json::Error> {
        Ok(StoreEvent {
            seq: self.seq,
            kind: self.kind,
            approval: Approval::deserialize(&self.payload)?,
            at: self.at,
        })
    }
}

/// `at` without its nanoseconds, as every database keeps it.
pub(crate) fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    let micros = at.nanosecond() / 1_000 * 1_000;
    at.replace_nanosecond(micros).unwrap_or(at).to_offset(time::UtcOffset::UTC)
}

/// An audit row as stored, before any of its fields is trusted: what
/// [`ChainVerifier`] reads from a database.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Clone, Debug)]
pub(crate) struct RawEntry {
    pub(crate) seq: i64,
    pub(crate) kind: String,
    pub(crate) at: OffsetDateTime,
    pub(crate) approval_id: String,
    pub(crate) agent: String,
    pub(crate) analyst: Option<String>,
    pub(crate) payload: String,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl RawEntry {
    /// The typed entry, or why the row cannot be one.
    pub(crate) fn parse(&self) -> Result<AuditEntry, String> {
        let seq = u64::try_from(self.seq).map_err(|_| format!("seq `{}` is negative", self.seq))?;
        let kind = serde_json::Value::String(self.kind.clone());
        let kind: EventKind =
            serde_json::from_value(kind).map_err(|_| format!("unknown kind `{}`", self.kind))?;
        let approval_id = self
            .approval_id
            .parse()
            .map_err(|_| format!("approval id `{}` is not a uuid", self.approval_id))?;
        let payload = serde_json::from_str(&self.payload)
            .map_err(|error| format!("payload is not json: {error}"))?;
        Ok(AuditEntry {
            seq,
            kind,
            at: self.at,
            approval_id,
            agent: AgentId::new(self.agent.clone()),
            analyst: self.analyst.clone(),
            payload,
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        })
    }

    /// The hash the row's content calls for, computed from the stored
    /// text, so a row whose fields no longer parse is still checked.
    fn compute_hash(&self) -> Result<String, String> {
        let seq = u64::try_from(self.seq).map_err(|_| format!("seq `{}` is negative", self.seq))?;
        let payload: serde_json::Value = serde_json::from_str(&self.payload)
            .map_err(|error| format!("payload is not json: {error}"))?;
        Linked {
            seq,
            kind: &self.kind,
            at: self.at,
            approval_id: &self.approval_id,
            agent: &self.agent,
            analyst: self.analyst.as_deref(),
            payload: &payload,
            prev_hash: &self.prev_hash,
        }
        .hash()
        .map_err(|error| format!("payload cannot be canonicalized: {error}"))
    }
}

/// What a check of the audit chain found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// How many entries were checked.
    pub entries: u64,
    /// `hash` of the last entry checked, or [`GENESIS_HASH`] for an empty
    /// log. Keep it: a later check must find the chain still passing
    /// through it.
    pub last_hash: String,
    /// The first broken link, when the chain is not whole.
    pub broken: Option<BrokenLink>,
}

impl AuditReport {
    /// Whether every link held.
    pub fn is_whole(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.broken {
            None => write!(
                f,
                "audit chain whole: {} entries, last hash {}",
                self.entries, self.last_hash
            ),
            Some(link) => write!(f, "audit chain broken at seq {}: {}", link.seq, link.problem),
        }
    }
}

/// Where the chain breaks, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// The `seq` of the first entry that does not fit.
    pub seq: u64,
    /// What differs.
    pub problem: LinkProblem,
}

/// How a link is broken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LinkProblem {
    /// The entry's content does not match its hash: it was edited.
    Edited {
        /// The hash stored with the entry.
        stored: String,
        /// The hash its content calls for.
        computed: String,
    },
    /// The entry does not point at the entry before it: an entry was
    /// removed, inserted, or edited and re-hashed.
    Unlinked {
        /// `hash` of the entry before.
        expected: String,
        /// The entry's `prev_hash`.
        found: String,
    },
    /// The entry is not numbered next: entries before it are missing or
    /// out of order.
    OutOfSequence {
        /// The number the entry should have had.
        expected: u64,
    },
    /// The entry cannot be read at all.
    Unreadable {
        /// Why.
        reason: String,
    },
    /// The log ends before the head the store recorded: its last entries
    /// were removed. `seq` is the first missing one.
    Truncated {
        /// The `seq` of the head the store recorded.
        head_seq: u64,
        /// The hash of the head the store recorded.
        head_hash: String,
    },
}

impl fmt::Display for LinkProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Edited { stored, computed } => {
                write!(
                    f,
                    "content was changed (stored hash {stored}, content hashes to {computed})"
                )
            }
            Self::Unlinked { expected, found } => {
                write!(f, "prev_hash is {found}, the entry before has hash {expected}")
            }
            Self::OutOfSequence { expected } => write!(f, "expected seq {expected} here"),
            Self::Unreadable { reason } => write!(f, "entry cannot be read: {reason}"),
            Self::Truncated { head_seq, head_hash } => {
                write!(f, "log ends before the recorded head (seq {head_seq}, hash {head_hash})")
            }
        }
    }
}

/// Checks entries of one chain in order, stopping at the first broken
/// link.
///
/// ```
/// use midosoc_core::store::{AuditEntry, ChainVerifier};
///
/// fn check(lines: &str) -> Result<bool, serde_json::Error> {
///     let mut verifier = ChainVerifier::new();
///     for line in lines.lines() {
///         verifier.push(&serde_json::from_str::<AuditEntry>(line)?);
///     }
///     Ok(verifier.finish(None).is_whole())
/// }
/// assert!(check("").unwrap());
/// ```
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    next_seq: u64,
    last_hash: String,
    entries: u64,
    broken: Option<BrokenLink>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// A verifier expecting the first entry of a log.
    pub fn new() -> Self {
        Self { next_seq: 1, last_hash: GENESIS_HASH.to_owned(), entries: 0, broken: None }
    }

    /// Whether a broken link was found; later entries are not checked.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Checks the next entry.
    pub fn push(&mut self, entry: &AuditEntry) {
        let computed = entry.compute_hash().map_err(|error| error.to_string());
        self.check(entry.seq, computed, &entry.prev_hash, &entry.hash);
    }

    /// Checks the next stored row.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn push_raw(&mut self, row: &RawEntry) {
        let seq = u64::try_from(row.seq).unwrap_or(0);
        self.check(seq, row.compute_hash(), &row.prev_hash, &row.hash);
    }

    fn check(&mut self, seq: u64, computed: Result<String, String>, prev_hash: &str, hash: &str) {
        if self.broken.is_some() {
            return;
        }
        let problem = match computed {
            _ if seq != self.next_seq => {
                Some(LinkProblem::OutOfSequence { expected: self.next_seq })
            }
            Err(reason) => Some(LinkProblem::Unreadable { reason }),
            Ok(computed) if computed != hash => {
                Some(LinkProblem::Edited { stored: hash.to_owned(), computed })
            }
            Ok(_) if prev_hash != self.last_hash => Some(LinkProblem::Unlinked {
                expected: self.last_hash.clone(),
                found: prev_hash.to_owned(),
            }),
            Ok(_) => None,
        };
        match problem {
            Some(problem) => self.broken = Some(BrokenLink { seq, problem }),
            None => {
                self.next_seq += 1;
                self.entries += 1;
                self.last_hash = hash.to_owned();
            }
        }
    }

    /// The report, given the head the store recorded (`seq`, `hash`) when
    /// there is one: a log that stops short of it was cut.
    pub fn finish(self, head: Option<(u64, &str)>) -> AuditReport {
        let mut broken = self.broken;
        if let (None, Some((head_seq, head_hash))) = (&broken, head) {
            let last_seq = self.next_seq - 1;
            if head_seq != last_seq || head_hash != self.last_hash {
                let problem = LinkProblem::Truncated { head_seq, head_hash: head_hash.to_owned() };
                broken = Some(BrokenLink { seq: last_seq + 1, problem });
            }
        }
        AuditReport { entries: self.entries, last_hash: self.last_hash, broken }
    }
}

/// A store whose event log is a verifiable audit trail.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Checks the whole chain and reports the first broken link, if any.
    async fn verify_audit(&self) -> Result<AuditReport, StoreError>;

    /// Every entry after `after` (all when `None`), oldest first, read in
    /// pages as the stream is polled. Write each as one JSON line.
    fn export_audit(&self, after: Option<u64>) -> AuditStream;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::action::Action;
    use crate::approval::{Analyst, ApprovalStatus, Decision, Outcome};
    use crate::classify::{Assessment, Risk, Verdict};

    fn approval() -> Approval {
        let action =
            Action::builder(AgentId::new("agent-7"), "DELETE", "https://api.example.com/x")
                .body("{}")
                .build();
        let assessment = Assessment::new("test", Verdict::Hold, Risk::High, 0.9, "deletes x");
        Approval::pending(action, assessment, Duration::from_secs(60))
    }

    fn chain() -> Vec<AuditEntry> {
        let mut approval = approval();
        let first = AuditEntry::seal(
            0,
            GENESIS_HASH,
            EventKind::Pending,
            OffsetDateTime::now_utc(),
            &approval,
        )
        .unwrap();
        approval.status = ApprovalStatus::Approved;
        approval.decision = Some(Decision::new(Outcome::Approve, Analyst::new("a-1", "Ada"), None));
        let second = AuditEntry::seal(
            1,
            &first.hash,
            EventKind::Decided,
            OffsetDateTime::now_utc(),
            &approval,
        )
        .unwrap();
        vec![first, second]
    }

    fn verify(entries: &[AuditEntry]) -> AuditReport {
        let mut verifier = ChainVerifier::new();
        entries.iter().for_each(|e| verifier.push(e));
        verifier.finish(None)
    }

    #[test]
    fn a_sealed_chain_verifies_and_names_agent_and_analyst() {
        let entries = chain();

        let report = verify(&entries);

        assert!(report.is_whole(), "{report}");
        assert_eq!(report.entries, 2);
        assert_eq!(report.last_hash, entries[1].hash);
        assert_eq!(entries[1].agent.as_str(), "agent-7");
        assert_eq!(entries[1].analyst.as_deref(), Some("a-1"));
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
    }

    #[test]
    fn the_hash_is_sha256_of_the_canonical_entry_without_its_hash() {
        let entry = chain().remove(0);

        let mut line = serde_json::to_value(&entry).unwrap();
        let stored = line.as_object_mut().unwrap().remove("hash").unwrap();
        let canonical = serde_json_canonicalizer::to_vec(&line).unwrap();

        assert_eq!(stored, hex::encode(Sha256::digest(&canonical)));
    }

    #[test]
    fn an_entry_survives_a_json_line_round_trip() {
        let entries = chain();

        let lines: Vec<String> =
            entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        let read: Vec<AuditEntry> =
            lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();

        assert_eq!(read, entries);
        assert!(verify(&read).is_whole());
        assert_eq!(read[1].to_event().unwrap().approval.status, ApprovalStatus::Approved);
    }

    #[test]
    fn an_edited_payload_is_named_by_its_seq() {
        let mut entries = chain();
        entries[1].payload["status"] = "denied".into();

        let report = verify(&entries);

        let broken = report.broken.unwrap();
        assert_eq!(broken.seq, 2);
        assert!(matches!(broken.problem, LinkProblem::Edited { .. }), "{:?}", broken.problem);
    }

    #[test]
    fn a_removed_entry_breaks_the_sequence() {
        let mut entries = chain();
        entries.remove(0);

        let broken = verify(&entries).broken.unwrap();

        assert_eq!(
            broken,
            BrokenLink { seq: 2, problem: LinkProblem::OutOfSequence { expected: 1 } }
        );
    }

    #[test]
    fn a_rehashed_entry_no_longer_links_to_its_predecessor() {
        let mut entries = chain();
        entries[1].prev_hash = "f".repeat(64);
        entries[1].hash = entries[1].compute_hash().unwrap();

        let broken = verify(&entries).broken.unwrap();

        assert_eq!(broken.seq, 2);
        assert!(matches!(broken.problem, LinkProblem::Unlinked { .. }));
    }

    #[test]
    fn a_log_cut_short_of_its_recorded_head_is_truncated() {
        let entries = chain();
        let mut verifier = ChainVerifier::new();
        verifier.push(&entries[0]);

        let report = verifier.finish(Some((2, &entries[1].hash)));

        let broken = report.broken.unwrap();
        assert_eq!(broken.seq, 2);
        assert!(matches!(broken.problem, LinkProblem::Truncated { head_seq: 2, .. }));
    }
}
