//! Scenario 5: from decision to release. A probe is one risky request
//! sent while some others are held in the background and some dashboards
//! follow the event stream. For each probe the run measures the time from
//! its sending to its `pending` event at every dashboard, and from the
//! approve call to the first byte of the answer the agent receives. A
//! burst then approves many held requests at once and times the last
//! release.
//!
//! With PostgreSQL the agent talks to one instance and the analyst to
//! another, so every figure crosses the shared database.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::gateway::{self, Gateway, Identities, Settings};
use super::held::{holder_report, raise_cap, spawn_holder};
use super::pg;
use super::proc::{Core, Line, Proc};
use super::{Bench, Sizes};
use crate::holder::Report;
use crate::stats::{Summary, quantile};

/// Longest wait for one probe's events and answer.
const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// Connections the burst of approvals is sent over.
const BURST_CONNECTIONS: usize = 32;

/// All decision results.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Decision {
    /// One row per store, background and dashboard count.
    pub rows: Vec<DecisionRow>,
    /// One row per store.
    pub bursts: Vec<Burst>,
    /// Stores that could not be measured, and why.
    pub notes: Vec<String>,
}

/// Probe figures for one configuration; each summary is over the
/// repetitions' percentiles.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DecisionRow {
    /// `memory`, `sqlite` or `postgres (two instances)`.
    pub store: String,
    /// Requests held in the background.
    pub background: usize,
    /// Dashboards subscribed.
    pub dashboards: usize,
    /// Probes per repetition.
    pub probes: usize,
    /// Arrival to event at a dashboard, median, µs.
    pub event_p50_us: Summary,
    /// Arrival to event at a dashboard, 99th percentile, µs.
    pub event_p99_us: Summary,
    /// Approve call to the agent's first byte, median, µs.
    pub release_p50_us: Summary,
    /// Approve call to the agent's first byte, 99th percentile, µs.
    pub release_p99_us: Summary,
    /// Probes that failed (no event, refused approval, non-2xx answer).
    pub failures: usize,
}

/// A burst of approvals.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Burst {
    /// The store.
    pub store: String,
    /// Approvals in the burst.
    pub approvals: usize,
    /// Dashboards subscribed during the burst.
    pub dashboards: usize,
    /// First approve call to the last released answer's first byte, ms.
    pub release_ms: Summary,
    /// Approvals refused or requests not answered 2xx, all repetitions.
    pub failures: u64,
    /// Times a dashboard fell behind and was told to resync.
    pub resyncs: u64,
}

/// Runs the scenario on the default store, SQLite when the gateway takes
/// it, and PostgreSQL across two instances when reachable.
pub fn run(
    bench: &mut Bench,
    sizes: &Sizes,
    postgres_url: Option<&str>,
) -> anyhow::Result<Decision> {
    let mut decision = Decision::default();
    let largest = sizes.decision_background.iter().copied().max().unwrap_or(0).max(sizes.burst);
    let (cap, agents, _) = raise_cap(bench, largest + sizes.reps * sizes.probes * 2)?;

    let sqlite_path = bench.dir.join("approvals.db");
    let sqlite_url = format!("sqlite://{}", sqlite_path.display());
    let (label, mut settings) = match gateway::store(&bench.tools, &bench.dir, &sqlite_url) {
        Ok(store) => ("sqlite".to_owned(), store),
        Err(refusal) => {
            decision.notes.push(format!(
                "SQLite store not available in this build ({refusal}); measured with the \
                 in-memory store"
            ));
            ("memory".to_owned(), Settings::default())
        }
    };
    settings.merge(&cap);
    let ids = gateway::identities(&bench.tools, &bench.dir, "decision", agents)?;
    for &background in &sizes.decision_background {
        gateway::remove_sqlite(&sqlite_path)?;
        let gw = bench.gateway(&ids, &settings)?;
        let setup = Setup { agent: gw.agent, review: gw.review, ids: &ids, analyst: &ids };
        let outcome = measure(bench, sizes, &setup, &label, background, background == largest);
        gw.stop();
        let (rows, burst) = outcome?;
        decision.rows.extend(rows);
        decision.bursts.extend(burst);
    }

    match postgres_url {
        Some(url) => match pg::Schema::create(url) {
            Ok(schema) => {
                postgres_rows(bench, sizes, &schema.url(), &cap, agents, &mut decision);
                if let Err(error) = schema.drop_now() {
                    decision.notes.push(format!("PostgreSQL: the run's schema stays: {error:#}"));
                }
            }
            Err(error) => decision.notes.push(format!("PostgreSQL: {error:#}")),
        },
        None => decision.notes.push("PostgreSQL not configured for this run".into()),
    }
    Ok(decision)
}

/// The two-instance rows on the store at `url`, or a note saying why not.
fn postgres_rows(
    bench: &Bench,
    sizes: &Sizes,
    url: &str,
    cap: &Settings,
    agents: usize,
    decision: &mut Decision,
) {
    match gateway::store(&bench.tools, &bench.dir, url) {
        Ok(mut store) => {
            store.merge(cap);
            match postgres(bench, sizes, &store, agents) {
                Ok((rows, burst)) => {
                    decision.rows.extend(rows);
                    decision.bursts.extend(burst);
                }
                Err(error) => decision.notes.push(format!("PostgreSQL: {error:#}")),
            }
        }
        Err(refusal) => {
            decision.notes.push(format!("PostgreSQL store not available in this build ({refusal})"))
        }
    }
}

fn postgres(
    bench: &Bench,
    sizes: &Sizes,
    settings: &Settings,
    agents: usize,
) -> anyhow::Result<(Vec<DecisionRow>, Option<Burst>)> {
    let agent_side = gateway::identities(&bench.tools, &bench.dir, "pg-agent-side", agents)?;
    let review_side = gateway::identities(&bench.tools, &bench.dir, "pg-review-side", 1)?;
    let a = bench.gateway(&agent_side, settings)?;
    let b = Gateway::start(
        &bench.tools,
        &bench.placement,
        Core::Load,
        &review_side,
        settings,
        bench.upstream,
        &bench.gateway_log,
    )?;
    let setup = Setup { agent: a.agent, review: b.review, ids: &agent_side, analyst: &review_side };
    let background = sizes.burst;
    let outcome = measure(bench, sizes, &setup, "postgres (two instances)", background, true);
    a.stop();
    b.stop();
    outcome
}

struct Setup<'a> {
    agent: SocketAddr,
    review: SocketAddr,
    ids: &'a Identities,
    analyst: &'a Identities,
}

fn measure(
    bench: &Bench,
    sizes: &Sizes,
    setup: &Setup<'_>,
    store: &str,
    background: usize,
    with_burst: bool,
) -> anyhow::Result<(Vec<DecisionRow>, Option<Burst>)> {
    let (sink, lines) = mpsc::channel::<Line>();
    let mut dashboards =
        spawn_dashboards(bench, setup.review, &setup.analyst.analyst_token, &sink)?;
    let mut subscribed = 0;
    subscribed = add_dashboards(&mut dashboards, &lines, subscribed, 1)?;

    // Background requests, held over HTTP/1.1 by their own holder; their
    // approval ids come from the first dashboard's events.
    let keys = &setup.ids.agent_keys;
    let mut bulk = spawn_holder(bench, setup.agent, keys, false)?;
    let mut held_ids = Vec::new();
    if background > 0 {
        bulk.send(&format!("hold {background} bg"))?;
        held_ids = collect_pending(&lines, background, "/bg-")?;
    }

    let mut probe = spawn_probe_holder(bench, setup.agent, keys, &sink)?;
    let mut rows = Vec::new();
    for &count in &sizes.dashboards {
        if count > subscribed {
            subscribed = add_dashboards(&mut dashboards, &lines, subscribed, count - subscribed)?;
        }
        let mut reps = Vec::new();
        for rep in 0..sizes.reps {
            let tag = format!("b{background}-d{count}-r{rep}");
            reps.push(probes(bench, setup, &mut probe, &lines, &tag, sizes.probes, subscribed)?);
        }
        let pick = |f: fn(&Probes) -> f64| Summary::of(&reps.iter().map(f).collect::<Vec<_>>());
        let row = DecisionRow {
            store: store.to_owned(),
            background,
            dashboards: subscribed,
            probes: sizes.probes,
            event_p50_us: pick(|p| p.event_p50),
            event_p99_us: pick(|p| p.event_p99),
            release_p50_us: pick(|p| p.release_p50),
            release_p99_us: pick(|p| p.release_p99),
            failures: reps.iter().map(|p| p.failures).sum(),
        };
        eprintln!(
            "  {store} held {background} dashboards {subscribed}: event p50 {:.0} µs p99 {:.0} µs; \
             release p50 {:.0} µs p99 {:.0} µs; failures {}",
            row.event_p50_us.median,
            row.event_p99_us.median,
            row.release_p50_us.median,
            row.release_p99_us.median,
            row.failures
        );
        rows.push(row);
    }

    let burst = if with_burst && !held_ids.is_empty() {
        Some(burst(bench, setup, store, &mut bulk, &lines, &held_ids, sizes, subscribed)?)
    } else {
        None
    };
    probe.close_input();
    bulk.close_input();
    dashboards.close_input();
    Ok((rows, burst))
}

fn spawn_dashboards(
    bench: &Bench,
    review: SocketAddr,
    token: &str,
    sink: &mpsc::Sender<Line>,
) -> anyhow::Result<Proc> {
    let mut command = bench.placement.command(&bench.tools.sse_client, Core::Load);
    command.arg("--addr").arg(review.to_string()).arg("--token").arg(token);
    Proc::spawn("sse", command, Some(sink.clone()), Stdio::inherit())
}

fn spawn_probe_holder(
    bench: &Bench,
    agent: SocketAddr,
    keys: &[String],
    sink: &mpsc::Sender<Line>,
) -> anyhow::Result<Proc> {
    let keys_file = bench.dir.join("probe-keys.txt");
    std::fs::write(&keys_file, keys.join("\n"))?;
    let mut command = bench.placement.command(&bench.tools.holder, Core::Load);
    command.arg("--addr").arg(agent.to_string()).arg("--keys-file").arg(&keys_file);
    Proc::spawn("probe", command, Some(sink.clone()), Stdio::inherit())
}

fn add_dashboards(
    dashboards: &mut Proc,
    lines: &mpsc::Receiver<Line>,
    subscribed: usize,
    more: usize,
) -> anyhow::Result<usize> {
    dashboards.send(&format!("add {more}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, line) = next(lines, deadline).context("dashboards never became ready")?;
        if let Some(total) = line.strip_prefix("ready ") {
            let total: usize = total.trim().parse()?;
            anyhow::ensure!(
                total == subscribed + more,
                "expected {} dashboards",
                subscribed + more
            );
            return Ok(total);
        }
        if let Some(error) = line.strip_prefix("error ") {
            bail!("dashboards: {error}");
        }
    }
}

fn next(lines: &mpsc::Receiver<Line>, deadline: Instant) -> anyhow::Result<Line> {
    let left = deadline.saturating_duration_since(Instant::now());
    lines.recv_timeout(left).map_err(|_| anyhow::anyhow!("timed out waiting for events"))
}

/// A parsed `ev` line.
struct Event<'a> {
    subscriber: usize,
    kind: &'a str,
    id: &'a str,
    url: &'a str,
    at: u64,
}

fn event(line: &str) -> Option<Event<'_>> {
    let mut words = line.split(' ');
    if words.next()? != "ev" {
        return None;
    }
    let subscriber = words.next()?.parse().ok()?;
    let _seq = words.next()?;
    let kind = words.next()?;
    let id = words.next()?;
    let url = words.next()?;
    let at = words.next()?.parse().ok()?;
    Some(Event { subscriber, kind, id, url, at })
}

/// Waits for `count` pending events whose URL contains `marker` at the
/// first dashboard; returns their approval ids.
fn collect_pending(
    lines: &mpsc::Receiver<Line>,
    count: usize,
    marker: &str,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut ids = Vec::new();
    while ids.len() < count {
        let (_, line) = next(lines, deadline)
            .with_context(|| format!("{} of {count} background requests held", ids.len()))?;
        if let Some(ev) = event(&line)
            && ev.subscriber == 0
            && ev.kind == "pending"
            && ev.url.contains(marker)
        {
            ids.push(ev.id.to_owned());
        }
    }
    Ok(ids)
}

struct Probes {
    event_p50: f64,
    event_p99: f64,
    release_p50: f64,
    release_p99: f64,
    failures: usize,
}

fn probes(
    bench: &Bench,
    setup: &Setup<'_>,
    probe: &mut Proc,
    lines: &mpsc::Receiver<Line>,
    tag: &str,
    count: usize,
    dashboards: usize,
) -> anyhow::Result<Probes> {
    let mut events = Vec::new();
    let mut releases = Vec::new();
    let mut failures = 0;
    for i in 0..count {
        match one_probe(bench, setup, probe, lines, &format!("{tag}-p{i}"), dashboards) {
            Ok((mut seen, release)) => {
                events.append(&mut seen);
                releases.push(release);
            }
            Err(error) => {
                failures += 1;
                eprintln!("  probe failed: {error:#}");
            }
        }
    }
    let us = |v: u64| v as f64 / 1e3;
    Ok(Probes {
        event_p50: us(quantile(&mut events, 0.5)),
        event_p99: us(quantile(&mut events, 0.99)),
        release_p50: us(quantile(&mut releases, 0.5)),
        release_p99: us(quantile(&mut releases, 0.99)),
        failures,
    })
}

/// One probe: sent, seen by every dashboard, approved, answered.
fn one_probe(
    bench: &Bench,
    setup: &Setup<'_>,
    probe: &mut Proc,
    lines: &mpsc::Receiver<Line>,
    tag: &str,
    dashboards: usize,
) -> anyhow::Result<(Vec<u64>, u64)> {
    probe.send(&format!("probe {tag}"))?;
    let suffix = format!("/{tag}");
    let deadline = Instant::now() + PROBE_LIMIT;
    let mut sent = None;
    let mut seen: HashMap<usize, u64> = HashMap::new();
    let mut id = None;
    let mut approved_at = None;
    loop {
        let (_, line) = next(lines, deadline).context("probe timed out")?;
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["sent", t, at] if *t == tag => sent = at.parse::<u64>().ok(),
            ["failed", t, ..] if *t == tag => bail!("probe request failed: {line}"),
            ["first-byte", t, at, status] if *t == tag => {
                let at: u64 = at.parse()?;
                anyhow::ensure!(status.starts_with('2'), "probe answered {status}");
                let approved = approved_at.context("answered before it was approved")?;
                let sent = sent.context("answered before it was sent")?;
                let events = seen.values().map(|&t| t.saturating_sub(sent)).collect();
                return Ok((events, at.saturating_sub(approved)));
            }
            _ => {
                if let Some(ev) = event(&line)
                    && ev.kind == "pending"
                    && ev.url.ends_with(&suffix)
                {
                    seen.entry(ev.subscriber).or_insert(ev.at);
                    id = Some(ev.id.to_owned());
                }
            }
        }
        if approved_at.is_none()
            && sent.is_some()
            && seen.len() >= dashboards
            && let Some(id) = &id
        {
            let (at, status) =
                bench.client.approve(setup.review, &setup.analyst.analyst_token, id)?;
            anyhow::ensure!((200..300).contains(&status), "approval refused with {status}");
            approved_at = Some(at);
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "one call site; a struct would only rename them")]
fn burst(
    bench: &Bench,
    setup: &Setup<'_>,
    store: &str,
    bulk: &mut Proc,
    lines: &mpsc::Receiver<Line>,
    held_ids: &[String],
    sizes: &Sizes,
    dashboards: usize,
) -> anyhow::Result<Burst> {
    let size = sizes.burst.min(held_ids.len() / sizes.reps.max(1)).max(1);
    let mut times = Vec::new();
    let mut failures = 0;
    let mut finished = 0;
    for rep in 0..sizes.reps {
        let Some(ids) = held_ids.get(rep * size..(rep + 1) * size) else { break };
        let (started, statuses) = bench.client.approve_many(
            setup.review,
            &setup.analyst.analyst_token,
            ids,
            BURST_CONNECTIONS,
        )?;
        failures += statuses.iter().filter(|s| !(200..300).contains(*s)).count() as u64;
        finished += size as u64;
        bulk.send(&format!("wait {finished} 60000"))?;
        let report: Report = holder_report(bulk)?;
        let not_ok: u64 =
            report.statuses.iter().filter(|(s, _)| !(200..300).contains(*s)).map(|(_, n)| n).sum();
        failures += not_ok + report.errors;
        if report.finished() < finished {
            failures += finished - report.finished();
        }
        let ms = report.last_first_byte_ns.saturating_sub(started) as f64 / 1e6;
        eprintln!("  {store} burst {} of {size}: last release after {ms:.1} ms", rep + 1);
        times.push(ms);
    }
    let resyncs = lines.try_iter().filter(|(_, line)| line.starts_with("resync")).count() as u64;
    Ok(Burst {
        store: store.to_owned(),
        approvals: size,
        dashboards,
        release_ms: Summary::of(&times),
        failures,
        resyncs,
    })
}
