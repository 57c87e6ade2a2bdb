//! Weighing the findings into a verdict, a risk, a confidence and a
//! rationale a reviewer can read.

use std::fmt::Write as _;

use super::scan::{Finding, Kind, Place, Strength};
use crate::classify::{Assessment, Marker, Risk, Verdict};

/// Name recorded as the deciding classifier.
const CLASSIFIER: &str = "heuristic";

pub(super) fn decide(findings: Vec<Finding<'_>>) -> Assessment {
    let w = Weighing::of(&findings);
    let (verdict, risk, confidence, rationale) = if let Some(i) = w.denied {
        let rationale =
            format!("Denied: `{}` is on the rule table's deny list.", findings[i].matched);
        (Verdict::Deny, Risk::Critical, 0.95, rationale)
    } else if !w.standing.is_empty() {
        w.hold(&findings)
    } else {
        w.allow(&findings)
    };

    let mut assessment = Assessment::new(CLASSIFIER, verdict, risk, confidence, rationale);
    assessment.markers = findings
        .into_iter()
        .map(|f| Marker {
            rule: f.rule.to_owned(),
            location: f.place.as_str().to_owned(),
            matched: f.matched,
        })
        .collect();
    assessment
}

/// The findings sorted into those that stand and those set aside.
#[derive(Debug, Default)]
pub(super) struct Weighing {
    /// The operation itself says it only reads.
    pub(super) trusted_read: bool,
    pub(super) any_read: bool,
    pub(super) any_write: bool,
    pub(super) dry_run: bool,
    /// Indices of destructive findings that stand.
    pub(super) standing: Vec<usize>,
    /// Indices of destructive findings outweighed.
    pub(super) set_aside: Vec<usize>,
    /// Index of the first deny finding.
    pub(super) denied: Option<usize>,
}

impl Weighing {
    pub(super) fn of(findings: &[Finding<'_>]) -> Self {
        let mut w = Weighing::default();
        for f in findings {
            match f.kind {
                Kind::Read => {
                    w.any_read = true;
                    w.trusted_read |= f.place.names_operation();
                }
                Kind::Write => w.any_write = true,
                Kind::DryRun => w.dry_run = true,
                _ => {}
            }
        }
        for (i, f) in findings.iter().enumerate() {
            match f.kind {
                Kind::Deny if w.denied.is_none() => w.denied = Some(i),
                Kind::Destructive { strength, .. } => {
                    // LIMITATION: whether an upstream honours a dry-run flag
                    // cannot be known here. A dry run therefore excuses only
                    // what the body or query asked for; a method or path
                    // that deletes still holds.
                    let asked = matches!(f.place, Place::Body | Place::Query);
                    let excused = (w.dry_run && asked)
                        || match strength {
                            Strength::Strong => false,
                            Strength::Moderate => w.trusted_read,
                            Strength::Hint => w.any_read || w.any_write,
                        };
                    if excused { w.set_aside.push(i) } else { w.standing.push(i) }
                }
                _ => {}
            }
        }
        w
    }

    pub(super) fn hold(&self, findings: &[Finding<'_>]) -> (Verdict, Risk, f32, String) {
        let standing: Vec<&Finding<'_>> = self.standing.iter().map(|&i| &findings[i]).collect();
        let risk = standing.iter().filter_map(|f| risk_of(f)).max().unwrap_or(Risk::High);
        let strongest =
            standing.iter().filter_map(|f| strength_of(f)).max().unwrap_or(Strength::Hint);
        let base: f32 = match strongest {
            Strength::Strong => 0.9,
            Strength::Moderate => 0.75,
            Strength::Hint => 0.6,
        };
        let confidence = (base + 0.03 * standing.len().saturating_sub(1) as f32).min(0.99);

        let mut rationale = String::with_capacity(128);
        let _ = write!(rationale, "Held: {}.", describe(&standing));
        if !self.set_aside.is_empty() {
            let aside: Vec<&Finding<'_>> = self.set_aside.iter().map(|&i| &findings[i]).collect();
            let _ = write!(rationale, " Also seen: {}.", describe(&aside));
        }
        (Verdict::Hold, risk, confidence, rationale)
    }

    pub(super) fn allow(&self, findings: &[Finding<'_>]) -> (Verdict, Risk, f32, String) {
        let read = self.trusted_read && !self.any_write;
        let evidence = findings.iter().find(|f| {
            if read { matches!(f.kind, Kind::Read) } else { matches!(f.kind, Kind::Write) }
        });

        let mut rationale = String::with_capacity(96);
        rationale.push_str(if read { "Allowed as a read" } else { "Allowed as an ordinary write" });
        if let Some(e) = evidence {
            let _ = write!(rationale, " (`{}` in {})", e.matched, e.place.as_str());
        }
        rationale.push_str("; nothing destructive found.");
        let mut confidence: f32 = match (read, evidence.is_none()) {
            (true, _) => 0.9,
            (false, false) => 0.8,
            (false, true) => 0.65,
        };

        if !self.set_aside.is_empty() {
            let why = if self.dry_run {
                "a dry run"
            } else if self.trusted_read {
                "an explicit read"
            } else {
                "an explicit ordinary change"
            };
            let aside: Vec<&Finding<'_>> = self.set_aside.iter().map(|&i| &findings[i]).collect();
            let _ = write!(rationale, " Set aside as outweighed by {why}: {}.", describe(&aside));
            confidence -= 0.15;
        }
        let risk = if read { Risk::Low } else { Risk::Medium };
        (Verdict::Allow, risk, confidence, rationale)
    }
}

pub(super) fn risk_of(f: &Finding<'_>) -> Option<Risk> {
    match f.kind {
        Kind::Destructive { risk, .. } => Some(risk),
        _ => None,
    }
}

pub(super) fn strength_of(f: &Finding<'_>) -> Option<Strength> {
    match f.kind {
        Kind::Destructive { strength, .. } => Some(strength),
        _ => None,
    }
}

/// "deletes a resource (`DELETE` in method); moves money (`refunds` in
/// path)", riskiest first, one entry per label.
pub(super) fn describe(findings: &[&Finding<'_>]) -> String {
    let mut sorted: Vec<&&Finding<'_>> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(risk_of(f)));
    let mut parts: Vec<String> = Vec::new();
    let mut labels: Vec<&str> = Vec::new();
    for f in sorted {
        let Kind::Destructive { label, .. } = f.kind else { continue };
        if labels.contains(&label) {
            continue;
        }
        labels.push(label);
        parts.push(format!("{label} (`{}` in {})", f.matched, f.place.as_str()));
    }
    parts.join("; ")
}
