//! Composition: deterministic rules decide first, and an advisory
//! classifier (usually the LLM) may make the outcome stricter, never weaker.
//!
//! [`ComposedClassifier`] runs the rules, then asks the advisor, and keeps
//! the stricter verdict and the higher risk. If the advisor is slow, down,
//! rate limited, or answers nonsense, the rules' assessment stands, marked
//! `llm.unavailable`, and `midosoc_llm_failures_total{reason}` counts it.
//! Both opinions are kept side by side in [`Assessment::opinions`], so a
//! reviewer (or an evaluation) can see what each said:
//! [`rules_opinion`] and [`advisor_opinion`] read them back.
//!
//! ```
//! use midosoc_core::classify::{ComposedClassifier, CompositionPolicy};
//! # use midosoc_core::{Action, AgentId, Assessment, Classifier, ClassifyError, Risk, Verdict};
//! # struct Fixed(Verdict);
//! # #[async_trait::async_trait]
//! # impl Classifier for Fixed {
//! #     async fn classify(&self, _: &Action) -> Result<Assessment, ClassifyError> {
//! #         Ok(Assessment::new("fixed", self.0, Risk::Low, 0.5, "fixed"))
//! #     }
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let rules = Fixed(Verdict::Hold);
//! let advisor = Fixed(Verdict::Allow);
//! let composed = ComposedClassifier::new(rules, advisor)
//!     .with_policy(CompositionPolicy { skip_confidence: None, ..Default::default() });
//!
//! let action = Action::builder(AgentId::new("agent"), "DELETE", "/v1/projects/7").build();
//! let assessment = composed.classify(&action).await.unwrap();
//! assert_eq!(assessment.verdict, Verdict::Hold); // the advisor cannot lower it
//! # });
//! ```
//!
//! Cost and latency are bounded three ways: a bounded cache reuses the
//! advisor's answer for an identical request (whoever sends it) within a
//! window; a semaphore caps advisor calls in flight, and a request that
//! cannot get a slot before the deadline is decided by the rules; and a
//! request the rules already hold or deny with high confidence can skip the
//! advisor. In [`CompositionMode::Shadow`] the advisor is asked and
//! recorded, but only the rules decide.

use std::cmp::Ordering;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};
use tracing::instrument;

use super::{Assessment, Classifier, ClassifyError, Marker, Opinion, Verdict};
use crate::action::{Action, Sha256Digest, ToolInfo};

/// `source` of the rules' own assessment in [`Assessment::opinions`].
pub const RULES_SOURCE: &str = "rules";

/// `source` of the advisor's opinion in [`Assessment::opinions`].
pub const ADVISOR_SOURCE: &str = "llm";

/// Counter of advisor calls that gave no usable answer, by `reason`.
pub const FAILURES_METRIC: &str = "midosoc_llm_failures_total";

/// Headers that change what a request means, and so are part of what the
/// advisor sees and of the cache key. Others (request ids, user agents) are
/// per-request noise.
pub(crate) const MEANINGFUL_HEADERS: &[&str] = &["content-type", "host", "x-http-method-override"];

/// Whether the advisor may change the outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompositionMode {
    /// The advisor may raise the verdict and the risk.
    #[default]
    Enforce,
    /// The advisor's opinion is recorded; only the rules decide.
    Shadow,
}

/// How rules and advisor are combined.
#[derive(Clone, Debug, PartialEq)]
pub struct CompositionPolicy {
    /// Enforce or shadow.
    pub mode: CompositionMode,
    /// Longest wait for the advisor, waiting for a free slot included.
    pub advisor_timeout: Duration,
    /// Most advisor calls in flight at once (at least one).
    pub max_concurrent: usize,
    /// Skip the advisor when the rules hold or deny with at least this
    /// confidence; `None` always asks.
    pub skip_confidence: Option<f32>,
    /// How long an advisor answer is reused; zero turns the cache off.
    pub cache_ttl: Duration,
    /// Most answers kept; zero turns the cache off.
    pub cache_capacity: usize,
    /// Whether the advisor's `deny` refuses the request; when false it
    /// holds the request for a person instead.
    pub advisor_may_deny: bool,
}

impl Default for CompositionPolicy {
    fn default() -> Self {
        Self {
            mode: CompositionMode::Enforce,
            advisor_timeout: Duration::from_secs(4),
            max_concurrent: 8,
            skip_confidence: Some(0.9),
            cache_ttl: Duration::from_secs(300),
            cache_capacity: 10_000,
            advisor_may_deny: false,
        }
    }
}

/// Rules first, then an advisor that can only make the outcome stricter.
/// See the module docs.
pub struct ComposedClassifier<R, A> {
    rules: R,
    advisor: A,
    policy: CompositionPolicy,
    permits: Semaphore,
    cache: Option<Mutex<LruCache<Sha256Digest, Cached>>>,
}

struct Cached {
    at: Instant,
    assessment: Assessment,
}

impl<R, A> fmt::Debug for ComposedClassifier<R, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComposedClassifier").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl<R, A> ComposedClassifier<R, A> {
    /// Composes `rules` and `advisor` with the default policy.
    pub fn new(rules: R, advisor: A) -> Self {
        Self::build(rules, advisor, CompositionPolicy::default())
    }

    /// The same composition under `policy`.
    pub fn with_policy(self, policy: CompositionPolicy) -> Self {
        Self::build(self.rules, self.advisor, policy)
    }

    fn build(rules: R, advisor: A, policy: CompositionPolicy) -> Self {
        let capacity = NonZeroUsize::new(policy.cache_capacity)
            .filter(|_| !policy.cache_ttl.is_zero())
            .map(|cap| Mutex::new(LruCache::new(cap)));
        Self {
            permits: Semaphore::new(policy.max_concurrent.max(1)),
            cache: capacity,
            rules,
            advisor,
            policy,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &CompositionPolicy {
        &self.policy
    }

    /// The rules classifier.
    pub fn rules(&self) -> &R {
        &self.rules
    }

    /// The advisory classifier.
    pub fn advisor(&self) -> &A {
        &self.advisor
    }
}

/// The rules' own assessment inside a composed one.
pub fn rules_opinion(assessment: &Assessment) -> Option<&Assessment> {
    assessment
        .opinions
        .iter()
        .find(|o| o.source == RULES_SOURCE)
        .and_then(|o| o.assessment.as_deref())
}

/// The advisor's opinion inside a composed one: its assessment, or why it
/// gave none.
pub fn advisor_opinion(assessment: &Assessment) -> Option<&Opinion> {
    assessment.opinions.iter().find(|o| o.source == ADVISOR_SOURCE)
}

/// What came of asking the advisor.
enum Advice {
    Given(Assessment),
    Skipped,
    Failed(Failure),
}

/// Why the advisor gave no answer: a stable reason and a readable detail.
struct Failure {
    reason: &'static str,
    detail: String,
}

impl Failure {
    fn of(err: &ClassifyError) -> Self {
        match err {
            ClassifyError::Timeout(_) => Self { reason: "timeout", detail: err.to_string() },
            ClassifyError::InvalidAnswer(_) => {
                Self { reason: "invalid_answer", detail: err.to_string() }
            }
            ClassifyError::Unavailable(source) => {
                Self { reason: unavailable_reason(source.as_ref()), detail: source.to_string() }
            }
        }
    }
}

#[cfg(feature = "llm")]
fn unavailable_reason(source: &(dyn std::error::Error + Send + Sync + 'static)) -> &'static str {
    source.downcast_ref::<super::llm::LlmError>().map_or("unavailable", |e| e.reason())
}

#[cfg(not(feature = "llm"))]
fn unavailable_reason(_: &(dyn std::error::Error + Send + Sync + 'static)) -> &'static str {
    "unavailable"
}

#[async_trait]
impl<R: Classifier, A: Classifier> Classifier for ComposedClassifier<R, A> {
    #[instrument(skip_all, fields(request.digest = %action.request_digest))]
    async fn classify(&self, action: &Action) -> Result<Assessment, ClassifyError> {
        // INVARIANT: the rules always run, and run first. Their error is
        // the caller's to handle (it holds); the advisor cannot mask it.
        let rules = self.rules.classify(action).await?;

        let advice = if self.skips(&rules) { Advice::Skipped } else { self.consult(action).await };
        if let Advice::Failed(failure) = &advice {
            metrics::counter!(FAILURES_METRIC, "reason" => failure.reason).increment(1);
            tracing::warn!(llm.failure = failure.reason, "llm gave no opinion, rules decide");
        }
        Ok(self.combine(rules, advice))
    }
}

impl<R: Classifier, A: Classifier> ComposedClassifier<R, A> {
    /// Whether the rules are sure enough of a hold or deny to skip the
    /// advisor, which could not lower it anyway.
    fn skips(&self, rules: &Assessment) -> bool {
        rules.verdict >= Verdict::Hold
            && self.policy.skip_confidence.is_some_and(|min| rules.confidence >= min)
    }

    /// Asks the advisor, through the cache and the concurrency limit,
    /// within the deadline.
    async fn consult(&self, action: &Action) -> Advice {
        // LIMITATION: identical requests that arrive together all miss the
        // cache and each call the advisor; only later ones reuse the answer.
        // Safe: it costs calls, not correctness.
        let key = cache_key(action);
        if let Some(assessment) = self.cached(&key) {
            tracing::debug!("llm answer reused from cache");
            return Advice::Given(assessment);
        }

        let limit = self.policy.advisor_timeout;
        let deadline = Instant::now() + limit;
        let permit = match timeout_at(deadline, self.permits.acquire()).await {
            // A slot freed just as the deadline passed leaves no time for
            // a call: count it as saturation, not as a call that timed out.
            Ok(Ok(permit)) if Instant::now() < deadline => permit,
            _ => {
                let detail = format!("no free llm slot within {limit:?}");
                return Advice::Failed(Failure { reason: "saturated", detail });
            }
        };

        let answer = timeout_at(deadline, self.advisor.classify(action)).await;
        drop(permit);
        match answer {
            Err(_) => Advice::Failed(Failure::of(&ClassifyError::Timeout(limit))),
            Ok(Err(err)) => Advice::Failed(Failure::of(&err)),
            Ok(Ok(assessment)) => {
                self.remember(key, &assessment);
                Advice::Given(assessment)
            }
        }
    }

    fn cached(&self, key: &Sha256Digest) -> Option<Assessment> {
        let mut cache = self.cache.as_ref()?.lock().ok()?;
        match cache.get(key) {
            Some(hit) if hit.at.elapsed() < self.policy.cache_ttl => Some(hit.assessment.clone()),
            Some(_) => {
                cache.pop(key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, key: Sha256Digest, assessment: &Assessment) {
        if let Some(mut cache) = self.cache.as_ref().and_then(|c| c.lock().ok()) {
            cache.put(key, Cached { at: Instant::now(), assessment: assessment.clone() });
        }
    }

    /// The composed assessment: the rules' one, raised by the advice when
    /// enforcing, with both opinions attached.
    fn combine(&self, rules: Assessment, advice: Advice) -> Assessment {
        let mut out = rules.clone();
        out.opinions = vec![Opinion {
            source: RULES_SOURCE.to_owned(),
            assessment: Some(Box::new(rules.clone())),
            failure: None,
        }];

        match advice {
            Advice::Skipped => {
                out.markers.push(Marker::new("llm.skipped", "llm", "rules_confident"));
                let why = format!(
                    "not consulted: the rules already {} with confidence {:.2}",
                    rules.verdict.as_str(),
                    rules.confidence
                );
                out.opinions.push(failed_opinion(why));
            }
            Advice::Failed(failure) => {
                out.markers.push(Marker::new("llm.unavailable", "llm", failure.reason));
                out.rationale = format!(
                    "{} (LLM unavailable: {}; the rules decided.)",
                    rules.rationale, failure.reason
                );
                out.opinions
                    .push(failed_opinion(format!("{}: {}", failure.reason, failure.detail)));
            }
            Advice::Given(advice) => {
                if self.policy.mode == CompositionMode::Enforce {
                    self.raise(&mut out, &rules, &advice);
                }
                out.opinions.push(Opinion {
                    source: ADVISOR_SOURCE.to_owned(),
                    assessment: Some(Box::new(advice)),
                    failure: None,
                });
            }
        }
        out
    }

    /// Raises `out` (a copy of `rules`) to what `advice` found, where that
    /// is stricter. Never lowers anything.
    fn raise(&self, out: &mut Assessment, rules: &Assessment, advice: &Assessment) {
        let ceiling = if self.policy.advisor_may_deny { Verdict::Deny } else { Verdict::Hold };
        let advised = advice.verdict.min(ceiling);

        // INVARIANT: verdict and risk are the maxima of the rules' and the
        // advisor's; the composed outcome is never weaker than the rules'.
        out.verdict = rules.verdict.max(advised);
        out.risk = rules.risk.max(advice.risk);
        out.markers.extend(advice.markers.iter().cloned());

        match advised.cmp(&rules.verdict) {
            Ordering::Greater => {
                out.classifier = ADVISOR_SOURCE.to_owned();
                out.confidence = advice.confidence;
                out.rationale = format!(
                    "The LLM raised the verdict from {} to {}: {} Rules: {}",
                    rules.verdict, advised, advice.rationale, rules.rationale
                );
                let change = format!("{}->{}", rules.verdict, advised);
                out.markers.push(Marker::new("llm.raised_verdict", "llm", change));
            }
            Ordering::Equal => {
                out.confidence = rules.confidence.max(advice.confidence);
                out.rationale = format!("{} The LLM agrees.", rules.rationale);
            }
            Ordering::Less => {
                out.rationale = format!(
                    "{} The LLM suggested {}, which cannot lower the rules' verdict.",
                    rules.rationale, advice.verdict
                );
                let change = format!("{}->{}", rules.verdict, advice.verdict);
                out.markers.push(Marker::new("llm.downgrade_ignored", "llm", change));
            }
        }
        if advice.verdict > ceiling {
            out.markers.push(Marker::new("llm.deny_held", "llm", advice.verdict.as_str()));
        }
        if advice.risk > rules.risk {
            let change = format!("{}->{}", rules.risk, advice.risk);
            out.markers.push(Marker::new("llm.raised_risk", "llm", change));
        }
    }
}

fn failed_opinion(failure: String) -> Opinion {
    Opinion { source: ADVISOR_SOURCE.to_owned(), assessment: None, failure: Some(failure) }
}

/// What makes two actions the same question for the advisor: the request
/// digest (method, URL, body), the headers that change its meaning, the
/// stated intent and what the tool's server advertised. The agent is left
/// out, so one agent's answer serves another's identical request.
#[derive(Serialize)]
struct CacheKey<'a> {
    request: &'a Sha256Digest,
    headers: Vec<(&'a str, &'a str)>,
    intent: Option<&'a str>,
    tool: Option<&'a ToolInfo>,
}

fn cache_key(action: &Action) -> Sha256Digest {
    let key = CacheKey {
        request: &action.request_digest,
        headers: action
            .headers
            .iter()
            .filter(|h| MEANINGFUL_HEADERS.contains(&h.name.as_str()))
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect(),
        intent: action.intent.as_deref(),
        tool: action.operation.as_ref().and_then(|op| op.tool.as_ref()),
    };
    Sha256Digest::of(&serde_json::to_vec(&key).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    use super::*;
    use crate::action::AgentId;
    use crate::classify::Risk;

    /// A classifier with a fixed answer that counts its calls.
    struct Fixed {
        answer: Result<(Verdict, Risk, f32), &'static str>,
        calls: AtomicUsize,
    }

    impl Fixed {
        fn says(verdict: Verdict, risk: Risk, confidence: f32) -> Arc<Self> {
            Arc::new(Self { answer: Ok((verdict, risk, confidence)), calls: AtomicUsize::new(0) })
        }

        fn fails(why: &'static str) -> Arc<Self> {
            Arc::new(Self { answer: Err(why), calls: AtomicUsize::new(0) })
        }

        fn calls(&self) -> usize {
            self.calls.load(AtomicOrdering::SeqCst)
        }
    }

    #[async_trait]
    impl Classifier for Fixed {
        async fn classify(&self, _: &Action) -> Result<Assessment, ClassifyError> {
            self.calls.fetch_add(1, AtomicOrdering::SeqCst);
            match self.answer {
                Ok((verdict, risk, confidence)) => {
                    Ok(Assessment::new("fixed", verdict, risk, confidence, "fixed answer."))
                }
                Err(why) => Err(ClassifyError::InvalidAnswer(why.to_owned())),
            }
        }
    }

    /// An advisor that never answers.
    struct Silent;

    #[async_trait]
    impl Classifier for Silent {
        async fn classify(&self, _: &Action) -> Result<Assessment, ClassifyError> {
            std::future::pending().await
        }
    }

    fn action(agent: &str, url: &str) -> Action {
        Action::builder(AgentId::new(agent), "POST", url).body("{}").build()
    }

    fn always_ask() -> CompositionPolicy {
        CompositionPolicy { skip_confidence: None, ..CompositionPolicy::default() }
    }

    const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Hold, Verdict::Deny];
    const RISKS: [Risk; 4] = [Risk::Low, Risk::Medium, Risk::High, Risk::Critical];

    #[tokio::test]
    async fn composed_outcome_is_never_weaker_than_the_rules_for_any_pair_of_opinions() {
        for rules_verdict in VERDICTS {
            for advice_verdict in VERDICTS {
                for (rules_risk, advice_risk) in RISKS.iter().zip(RISKS.iter().rev()) {
                    let rules = Fixed::says(rules_verdict, *rules_risk, 0.5);
                    let advisor = Fixed::says(advice_verdict, *advice_risk, 0.5);
                    let composed =
                        ComposedClassifier::new(rules, advisor).with_policy(always_ask());
                    let out = composed.classify(&action("a", "/x")).await.unwrap();

                    let ceiling = advice_verdict.min(Verdict::Hold);
                    assert_eq!(out.verdict, rules_verdict.max(ceiling));
                    assert_eq!(out.risk, (*rules_risk).max(*advice_risk));
                    assert!(out.verdict >= rules_verdict && out.risk >= *rules_risk);
                }
            }
        }
    }

    #[tokio::test]
    async fn advisor_deny_holds_unless_the_policy_lets_it_deny() {
        let composed = ComposedClassifier::new(
            Fixed::says(Verdict::Allow, Risk::Low, 0.6),
            Fixed::says(Verdict::Deny, Risk::Critical, 0.9),
        )
        .with_policy(always_ask());
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!(out.verdict, Verdict::Hold);
        assert!(out.markers.iter().any(|m| m.rule == "llm.deny_held"));

        let composed =
            composed.with_policy(CompositionPolicy { advisor_may_deny: true, ..always_ask() });
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!(out.verdict, Verdict::Deny);
        assert_eq!(out.classifier, ADVISOR_SOURCE);
    }

    #[tokio::test]
    async fn both_opinions_are_kept_side_by_side() {
        let composed = ComposedClassifier::new(
            Fixed::says(Verdict::Hold, Risk::High, 0.7),
            Fixed::says(Verdict::Allow, Risk::Low, 0.9),
        )
        .with_policy(always_ask());
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!(out.verdict, Verdict::Hold);
        assert_eq!(rules_opinion(&out).map(|a| a.verdict), Some(Verdict::Hold));
        let advice = advisor_opinion(&out).and_then(|o| o.assessment.as_deref()).unwrap();
        assert_eq!(advice.verdict, Verdict::Allow);
        assert!(out.markers.iter().any(|m| m.rule == "llm.downgrade_ignored"));
    }

    #[tokio::test]
    async fn advisor_failure_leaves_the_rules_standing_and_says_why() {
        let composed = ComposedClassifier::new(
            Fixed::says(Verdict::Hold, Risk::High, 0.7),
            Fixed::fails("nonsense"),
        )
        .with_policy(always_ask());
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!((out.verdict, out.risk), (Verdict::Hold, Risk::High));
        let marker = out.markers.iter().find(|m| m.rule == "llm.unavailable").unwrap();
        assert_eq!(marker.matched, "invalid_answer");
        let failure = advisor_opinion(&out).and_then(|o| o.failure.as_deref()).unwrap();
        assert!(failure.starts_with("invalid_answer"), "{failure}");
    }

    #[tokio::test(start_paused = true)]
    async fn silent_advisor_times_out_and_the_rules_decide() {
        let policy =
            CompositionPolicy { advisor_timeout: Duration::from_millis(50), ..always_ask() };
        let composed = ComposedClassifier::new(Fixed::says(Verdict::Allow, Risk::Low, 0.8), Silent)
            .with_policy(policy);
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!(out.verdict, Verdict::Allow);
        let marker = out.markers.iter().find(|m| m.rule == "llm.unavailable").unwrap();
        assert_eq!(marker.matched, "timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn saturated_advisor_slots_fall_back_to_the_rules_after_the_deadline() {
        let policy = CompositionPolicy {
            advisor_timeout: Duration::from_millis(50),
            max_concurrent: 1,
            ..always_ask()
        };
        let advisor = Fixed::says(Verdict::Hold, Risk::High, 0.9);
        let composed = ComposedClassifier::new(
            Fixed::says(Verdict::Allow, Risk::Low, 0.8),
            Arc::clone(&advisor),
        )
        .with_policy(policy);

        // Another call holds the only slot for longer than the deadline.
        let busy = composed.permits.try_acquire().unwrap();
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!(out.verdict, Verdict::Allow);
        let marker = out.markers.iter().find(|m| m.rule == "llm.unavailable").unwrap();
        assert_eq!(marker.matched, "saturated");
        assert_eq!(advisor.calls(), 0);

        drop(busy);
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!(out.verdict, Verdict::Hold);
    }

    #[tokio::test]
    async fn confident_rules_hold_skips_the_advisor_but_an_allow_never_does() {
        let advisor = Fixed::says(Verdict::Hold, Risk::High, 0.9);
        let composed = ComposedClassifier::new(
            Fixed::says(Verdict::Hold, Risk::High, 0.95),
            Arc::clone(&advisor),
        );
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!(advisor.calls(), 0);
        assert!(out.markers.iter().any(|m| m.rule == "llm.skipped"));
        assert!(advisor_opinion(&out).and_then(|o| o.failure.as_deref()).is_some());

        let advisor = Fixed::says(Verdict::Hold, Risk::High, 0.9);
        let composed = ComposedClassifier::new(
            Fixed::says(Verdict::Allow, Risk::Low, 1.0),
            Arc::clone(&advisor),
        );
        composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!(advisor.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn identical_requests_from_different_agents_reuse_the_answer_within_the_window() {
        let advisor = Fixed::says(Verdict::Hold, Risk::High, 0.9);
        let policy = CompositionPolicy { cache_ttl: Duration::from_secs(60), ..always_ask() };
        let composed = ComposedClassifier::new(
            Fixed::says(Verdict::Allow, Risk::Low, 0.5),
            Arc::clone(&advisor),
        )
        .with_policy(policy);

        let first = composed.classify(&action("alice", "/x")).await.unwrap();
        let second = composed.classify(&action("bob", "/x")).await.unwrap();
        assert_eq!(advisor.calls(), 1);
        assert_eq!(first.verdict, second.verdict);

        composed.classify(&action("bob", "/y")).await.unwrap();
        assert_eq!(advisor.calls(), 2, "a different request is a different question");

        tokio::time::advance(Duration::from_secs(61)).await;
        composed.classify(&action("alice", "/x")).await.unwrap();
        assert_eq!(advisor.calls(), 3, "the window has passed");
    }

    #[tokio::test]
    async fn shadow_mode_records_the_advisor_but_the_rules_decide() {
        let policy = CompositionPolicy { mode: CompositionMode::Shadow, ..always_ask() };
        let composed = ComposedClassifier::new(
            Fixed::says(Verdict::Allow, Risk::Low, 0.6),
            Fixed::says(Verdict::Hold, Risk::Critical, 0.9),
        )
        .with_policy(policy);
        let out = composed.classify(&action("a", "/x")).await.unwrap();
        assert_eq!((out.verdict, out.risk), (Verdict::Allow, Risk::Low));
        assert_eq!(out.classifier, "fixed");
        let advice = advisor_opinion(&out).and_then(|o| o.assessment.as_deref()).unwrap();
        assert_eq!(advice.verdict, Verdict::Hold);
    }

    #[test]
    fn failures_are_counted_by_reason() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            runtime.block_on(async {
                let composed = ComposedClassifier::new(
                    Fixed::says(Verdict::Allow, Risk::Low, 0.5),
                    Fixed::fails("garbage"),
                )
                .with_policy(always_ask());
                composed.classify(&action("a", "/x")).await.unwrap();
                composed.classify(&action("a", "/y")).await.unwrap();
            });
        });
        let counted: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == FAILURES_METRIC)
            .map(|(key, _, _, value)| {
                (key.key().labels().map(|l| l.value().to_owned()).collect::<Vec<_>>(), value)
            })
            .collect();
        assert_eq!(
            counted,
            vec![(
                vec!["invalid_answer".to_owned()],
                metrics_util::debugging::DebugValue::Counter(2)
            )]
        );
    }
}
