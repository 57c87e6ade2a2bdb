//! The report: every figure against its target, and the Markdown page
//! `docs/benchmarks.md` with the tables, the chart and the caveats.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::Results;
use crate::stats::Summary;

/// One figure against its target.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Check {
    /// What is measured.
    pub figure: String,
    /// The bar.
    pub target: String,
    /// What was measured (median of the repetitions).
    pub measured: String,
    /// Whether the bar is met; `None` when not measured.
    pub met: Option<bool>,
}

fn check(figure: &str, target: &str, value: Option<(String, bool)>) -> Check {
    let (measured, met) = match value {
        Some((text, ok)) => (text, Some(ok)),
        None => ("not measured".to_owned(), None),
    };
    Check { figure: figure.into(), target: target.into(), measured, met }
}

/// Every figure the issue sets a target for.
pub fn checks(results: &Results) -> Vec<Check> {
    let perf = results.perf.as_ref();
    let half = perf.and_then(|p| p.latency.iter().find(|l| (l.load - 0.5).abs() < 1e-9));
    let held = results.held.as_ref();
    let decision = results.decision.as_ref();
    let single = |row: &&super::decision::DecisionRow| !row.store.starts_with("postgres");
    let mut out = vec![
        check(
            "safe-path throughput, Midosoc / nginx (same core)",
            "≥ 0.90",
            perf.and_then(|p| p.midosoc_over_nginx.as_ref())
                .map(|s| (format!("{:.2}", s.median), s.median >= 0.9)),
        ),
        check(
            "CPU per request, Midosoc / nginx",
            "≤ 1.10",
            perf.and_then(|p| p.cpu_midosoc_over_nginx.as_ref())
                .map(|s| (format!("{:.2}", s.median), s.median <= 1.1)),
        ),
        check(
            "added p50 at 50% of nginx's maximum",
            "≤ 60 µs",
            half.and_then(|l| l.midosoc_added.as_ref())
                .map(|a| (format!("{:.0} µs", a.p50_us.median), a.p50_us.median <= 60.0)),
        ),
        check(
            "added p99 at 50% of nginx's maximum",
            "≤ 250 µs",
            half.and_then(|l| l.midosoc_added.as_ref())
                .map(|a| (format!("{:.0} µs", a.p99_us.median), a.p99_us.median <= 250.0)),
        ),
        check(
            "added p99 at 50%, Midosoc / nginx",
            "≤ 1.25",
            half.and_then(|l| Some((l.midosoc_added.as_ref()?, l.nginx_added.as_ref()?))).map(
                |(m, n)| {
                    let ratio = m.p99_us.median / n.p99_us.median.max(1.0);
                    (
                        format!(
                            "{ratio:.2} ({:.0} µs vs {:.0} µs)",
                            m.p99_us.median, n.p99_us.median
                        ),
                        m.p99_us.median <= 1.25 * n.p99_us.median.max(0.0),
                    )
                },
            ),
        ),
        check(
            "heuristic classification, median per action",
            "≤ 2 µs",
            results
                .classifier
                .as_ref()
                .and_then(|c| c.rows.iter().find(|r| r.rows == "all"))
                .map(|r| (format!("{:.2} µs", r.median_ns / 1e3), r.median_ns <= 2_000.0)),
        ),
        check(
            "process memory per held request (largest N reached)",
            "≤ 16 KiB",
            held.and_then(|h| h.rows.iter().filter(|r| r.not_reached == 0).max_by_key(|r| r.n))
                .map(|r| {
                    let kib = r.rss_per_request.median / 1024.0;
                    (format!("{kib:.1} KiB at N = {}", r.n), kib <= 16.0)
                }),
        ),
        check(
            "safe-path p99 with the largest N held / none held",
            "≤ 1.20",
            held.and_then(|h| h.rows.iter().max_by_key(|r| r.n)).map(|r| {
                (
                    format!("{:.2} at N = {}", r.safe_p99_ratio.median, r.n),
                    r.safe_p99_ratio.median <= 1.2,
                )
            }),
        ),
    ];
    let worst = |rows: Vec<&super::decision::DecisionRow>,
                 f: fn(&super::decision::DecisionRow) -> f64| {
        rows.iter()
            .map(|r| f(r))
            .fold(None, |acc: Option<f64>, v| Some(acc.map_or(v, |a| a.max(v))))
    };
    type Row = super::decision::DecisionRow;
    let rows = |pred: &dyn Fn(&Row) -> bool| -> Vec<&Row> {
        decision.map(|d| d.rows.iter().filter(|r| pred(r)).collect()).unwrap_or_default()
    };
    let ms = |us: f64| format!("{:.2} ms", us / 1e3);
    out.push(check(
        "arrival to SSE event p99, one dashboard",
        "≤ 1 ms",
        worst(rows(&|r| single(&r) && r.dashboards == 1), |r| r.event_p99_us.median)
            .map(|v| (ms(v), v <= 1_000.0)),
    ));
    out.push(check(
        "arrival to SSE event p99, 100 dashboards",
        "≤ 5 ms",
        worst(rows(&|r| single(&r) && r.dashboards >= 100), |r| r.event_p99_us.median)
            .map(|v| (ms(v), v <= 5_000.0)),
    ));
    out.push(check(
        "approve to first byte p99 with 10,000 held",
        "≤ 5 ms",
        worst(rows(&|r| single(&r) && r.background >= 10_000), |r| r.release_p99_us.median)
            .map(|v| (ms(v), v <= 5_000.0)),
    ));
    out.push(check(
        "1,000 approvals, time to the last release",
        "≤ 100 ms",
        decision.and_then(|d| d.bursts.iter().find(|b| !b.store.starts_with("postgres"))).map(
            |b| {
                (
                    format!("{:.1} ms ({} approvals)", b.release_ms.median, b.approvals),
                    b.release_ms.median <= 100.0,
                )
            },
        ),
    ));
    out.push(check(
        "across two PostgreSQL instances, p99 (event and release)",
        "≤ 50 ms",
        worst(rows(&|r| r.store.starts_with("postgres")), |r| {
            r.event_p99_us.median.max(r.release_p99_us.median)
        })
        .map(|v| (ms(v), v <= 50_000.0)),
    ));
    out
}

/// Warnings for every summary whose repetitions spread by more than 10%.
pub fn spread_warnings(results: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let mut note = |what: String, s: &Summary| {
        if s.noisy {
            out.push(format!(
                "spread {:.0}% > 10%: {what} (min {:.1}, median {:.1}, max {:.1})",
                s.spread() * 100.0,
                s.min,
                s.median,
                s.max
            ));
        }
    };
    if let Some(perf) = &results.perf {
        for row in &perf.throughput {
            note(format!("{} req/s", row.name), &row.rps);
            note(format!("{} CPU µs/request", row.name), &row.cpu_us_per_request);
        }
        for level in &perf.latency {
            for t in &level.targets {
                note(format!("{} p99 at {:.0}% load", t.name, level.load * 100.0), &t.p99_us);
            }
        }
    }
    if let Some(held) = &results.held {
        for row in &held.rows {
            note(format!("memory per held request, N = {}", row.n), &row.rss_per_request);
            note(format!("safe p99 with N = {} held", row.n), &row.safe_p99_held_us);
        }
    }
    if let Some(decision) = &results.decision {
        for row in &decision.rows {
            let what =
                format!("{}, {} held, {} dashboards", row.store, row.background, row.dashboards);
            note(format!("event p99 ({what})"), &row.event_p99_us);
            note(format!("release p99 ({what})"), &row.release_p99_us);
        }
    }
    out
}

fn s(summary: &Summary, digits: usize) -> String {
    let flag = if summary.noisy { " ⚠" } else { "" };
    format!("{:.d$} ({:.d$}–{:.d$}){flag}", summary.median, summary.min, summary.max, d = digits)
}

fn opt(summary: Option<&Summary>, digits: usize) -> String {
    summary.map_or_else(|| "–".to_owned(), |x| s(x, digits))
}

/// The targets table, for the console and the page.
pub fn targets_table(results: &Results) -> String {
    let mut out = String::from("| figure | target | measured | met |\n|---|---|---|---|\n");
    for c in &results.targets {
        let met = match c.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(out, "| {} | {} | {} | {met} |", c.figure, c.target, c.measured);
    }
    out
}

/// The whole page.
pub fn markdown(results: &Results, chart: Option<&str>, notes: &str) -> String {
    let m = &results.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Midosoc measured beside nginx, a bare hyper proxy and the upstream reached directly, \
         in one run on one machine. Every cell is the median of {} repetitions, with the \
         minimum and maximum in brackets; ⚠ marks a spread above 10%. Ratios are taken within \
         each repetition.\n",
        results.sizes.as_ref().map_or(3, |s| s.reps)
    );
    let _ = writeln!(out, "Run it all (installs nginx, wrk and h2load when absent):\n");
    let _ = writeln!(out, "```sh\nbash bench/run.sh\n```\n");
    let _ = writeln!(
        out,
        "**Machine:** {} cores ({}), kernel {}, {:.0} GiB, open-file limit {}; {}; {}. \
         Processes {} pinned with `taskset`: the proxy under test on core 0, load generator, \
         upstream, holder and dashboards on core 1. Wall time of the run: {:.0} s.\n",
        m.cores,
        m.cpu,
        m.kernel,
        m.memory_gib,
        m.open_file_limit,
        m.nginx,
        m.wrk,
        if results.pinned { "were" } else { "were **not**" },
        results.wall_seconds
    );
    if let Some((p50, p99)) = m.fsync_us {
        let _ = writeln!(
            out,
            "**Disk:** a 4 KiB append made durable with `fsync` in the run's folder takes \
             {p50:.0} µs at the median and {p99:.0} µs at p99. The SQLite store commits every \
             change that way before announcing it, so these bound the SQLite rows of \
             scenario 5 from below.\n"
        );
    }

    let _ = writeln!(out, "## Against the targets\n\n{}", targets_table(results));
    perf_sections(&mut out, results, chart);
    classifier_section(&mut out, results);
    held_section(&mut out, results);
    decision_section(&mut out, results);

    let _ = writeln!(out, "## Warnings\n");
    if results.warnings.is_empty() {
        let _ = writeln!(out, "None.\n");
    }
    for w in &results.warnings {
        let _ = writeln!(out, "- {w}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "## Pitfalls\n");
    let _ = writeln!(
        out,
        "- **Loopback shares one kernel.** Client, proxy and upstream all run on this machine; \
         the TCP stack's work for both ends of every connection is charged to whichever \
         process is running, and socket memory counts both ends. Figures compare proxies \
         under the same handicap; they are not what a networked deployment sees.\n\
         - **Closed-loop tools hide queueing.** wrk sends the next request only when the \
         previous answer came back, so a stall slows the client instead of showing as latency. \
         wrk is used only for maximum throughput; latencies come from the open-loop `loadgen`, \
         which releases requests on a fixed schedule and times each from its release \
         (coordinated omission corrected, as wrk2 and `oha --latency-correction` do).\n\
         - **Two cores.** The load generator shares core 1 with the upstream (and, in the \
         held and decision scenarios, the holder and dashboards), so their cost is in every \
         figure alike. Other work on the machine shows up as spread; ⚠ marks it.\n\
         - **CPU per request** is user plus system time of the proxy process(es) from \
         `/proc/PID/stat` (10 ms ticks) over a 5-second run, divided by requests served.\n\
         - **Held requests and file descriptors.** Over HTTP/1.1 each held request is a \
         connection and a descriptor at both ends; where N exceeds the open-file limit, \
         requests are multiplexed over HTTP/2 (100 streams per connection) and the row says so.\n"
    );
    if !notes.trim().is_empty() {
        let _ = writeln!(out, "{}", notes.trim());
    }
    out
}

fn perf_sections(out: &mut String, results: &Results, chart: Option<&str>) {
    let Some(perf) = &results.perf else { return };
    let _ = writeln!(out, "## 1. Safe-path throughput\n");
    let _ = writeln!(
        out,
        "`GET /up/items/42` with an agent key, wrk with one thread and 32 keep-alive \
         connections, {} s per run. nginx: one worker, keep-alive upstream pool, access log \
         off. Midosoc: heuristic classifier on, logging at `error`.\n",
        results.sizes.as_ref().map_or(5, |s| s.throughput_secs)
    );
    let _ = writeln!(out, "| target | req/s | CPU µs per request | errors |\n|---|---|---|---|");
    for row in &perf.throughput {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            row.name,
            s(&row.rps, 0),
            s(&row.cpu_us_per_request, 1),
            row.errors
        );
    }
    let _ = writeln!(
        out,
        "\nMidosoc / nginx: {}; Midosoc / direct: {}; CPU per request Midosoc / nginx: {}.",
        opt(perf.midosoc_over_nginx.as_ref(), 2),
        opt(perf.midosoc_over_direct.as_ref(), 2),
        opt(perf.cpu_midosoc_over_nginx.as_ref(), 2)
    );
    let _ = writeln!(
        out,
        "`bare-hyper` is the HTTP stack the gateway is built on (a hyper server and \
         hyper-util's pooled client) forwarding with nothing else: CPU per request bare / \
         nginx {}, the floor of this design; Midosoc / bare: {} req/s, {} CPU per request, \
         the cost of the gateway's own work (authentication, the action, the classifier, \
         header rules).",
        opt(perf.cpu_bare_over_nginx.as_ref(), 2),
        opt(perf.midosoc_over_bare.as_ref(), 2),
        opt(perf.cpu_midosoc_over_bare.as_ref(), 2)
    );
    if let Some(ratio) = &perf.classifier_on_over_off {
        let _ = writeln!(out, "Classifier on / off (req/s): {}.", s(ratio, 2));
    }
    if let Some(note) = &perf.classifier_off_note {
        let _ = writeln!(out, "Classifier off: {note}.");
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## 2. Added latency at fixed load\n");
    let _ = writeln!(
        out,
        "Open loop at fixed fractions of {}'s maximum, 64 connections, latency from each \
         request's release to its last byte. Added latency is the target's percentile minus \
         the direct upstream's, per repetition.\n",
        perf.reference
    );
    let _ = writeln!(
        out,
        "| load | rate | target | answered req/s | p50 µs | p99 µs | p99.9 µs \
         | added p50 µs | added p99 µs | added p99.9 µs | errors |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for level in &perf.latency {
        for t in &level.targets {
            let added = match t.name.as_str() {
                "nginx" => level.nginx_added.as_ref(),
                "midosoc" => level.midosoc_added.as_ref(),
                "bare-hyper" => level.bare_added.as_ref(),
                _ => None,
            };
            let (a50, a99, a999) = added.map_or(("–".into(), "–".into(), "–".into()), |a| {
                (s(&a.p50_us, 0), s(&a.p99_us, 0), s(&a.p999_us, 0))
            });
            let _ = writeln!(
                out,
                "| {:.0}% | {:.0} | {} | {}{} | {} | {} | {} | {a50} | {a99} | {a999} | {} |",
                level.load * 100.0,
                level.rate,
                t.name,
                s(&t.achieved_rate, 0),
                if t.achieved_rate.median < 0.95 * level.rate { " (overloaded)" } else { "" },
                s(&t.p50_us, 0),
                s(&t.p99_us, 0),
                s(&t.p999_us, 0),
                t.errors
            );
        }
    }
    let _ = writeln!(
        out,
        "\nA target marked overloaded answered less than 95% of the offered rate: its \
         latencies are mostly time spent queued, and say how far past its capacity the load \
         was rather than what a request costs.\n"
    );
    if let Some(chart) = chart {
        let _ = writeln!(
            out,
            "![Latency distributions at each load level: direct, nginx, Midosoc]({chart})\n"
        );
    }
}

fn classifier_section(out: &mut String, results: &Results) {
    let Some(cost) = &results.classifier else { return };
    let _ = writeln!(out, "## 3. Classifier cost\n");
    let _ = writeln!(
        out,
        "criterion, `HeuristicClassifier::assess` on the rows of `../shared/corpus/dev.jsonl` \
         taken in turn (one action per iteration).\n"
    );
    let _ = writeln!(
        out,
        "| rows | median ns/action | 95% CI of the median | mean ns |\n|---|---|---|---|"
    );
    for r in &cost.rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0}–{:.0} | {:.0} |",
            r.rows, r.median_ns, r.median_low_ns, r.median_high_ns, r.mean_ns
        );
    }
    let _ = writeln!(out);
}

fn held_section(out: &mut String, results: &Results) {
    let Some(held) = &results.held else { return };
    let _ = writeln!(out, "## 4. Held requests\n");
    let _ = writeln!(
        out,
        "A fresh gateway per repetition. Memory is the growth of the gateway's resident set \
         (VmRSS) and of the kernel's TCP socket memory (`/proc/net/sockstat`, both ends) \
         divided by N. Safe-path p99 is open-loop at {:.0} req/s. {}.\n",
        held.side_rate, held.cap_note
    );
    let _ = writeln!(
        out,
        "| N | transport | time to N (s) | RSS per held (B) | socket mem per held (B) | errors \
         | safe p99 none held (µs) | safe p99 N held (µs) | ratio |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for r in &held.rows {
        let reached = if r.not_reached > 0 {
            format!(" ({} not reached)", r.not_reached)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {}{reached} | {} | {} | {} | {} | {} | {} |",
            r.n,
            r.transport,
            s(&r.reach_seconds, 2),
            s(&r.rss_per_request, 0),
            s(&r.socket_per_request, 0),
            s(&r.errors, 0),
            s(&r.safe_p99_none_us, 0),
            s(&r.safe_p99_held_us, 0),
            s(&r.safe_p99_ratio, 2)
        );
    }
    let _ = writeln!(out);
}

fn decision_section(out: &mut String, results: &Results) {
    let Some(decision) = &results.decision else { return };
    let _ = writeln!(out, "## 5. Decision to release\n");
    let _ = writeln!(
        out,
        "Each probe: one risky request sent; its `pending` event awaited at every dashboard; \
         approved with `POST /api/approvals/{{id}}/approve`; its answer's first byte timed at \
         the agent. Percentiles per repetition over all probes (event: over every dashboard's \
         copy); the table gives their median (min–max) over repetitions.\n"
    );
    let _ = writeln!(
        out,
        "| store | held | dashboards | probes | event p50 (µs) | event p99 (µs) \
         | approve→first byte p50 (µs) | p99 (µs) | failures |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for r in &decision.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.store,
            r.background,
            r.dashboards,
            r.probes,
            s(&r.event_p50_us, 0),
            s(&r.event_p99_us, 0),
            s(&r.release_p50_us, 0),
            s(&r.release_p99_us, 0),
            r.failures
        );
    }
    let _ = writeln!(out);
    if !decision.bursts.is_empty() {
        let _ = writeln!(
            out,
            "| store | approvals in burst | dashboards | first approve → last release (ms) \
             | failures | dashboard resyncs |\n|---|---|---|---|---|---|"
        );
        for b in &decision.bursts {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                b.store,
                b.approvals,
                b.dashboards,
                s(&b.release_ms, 1),
                b.failures,
                b.resyncs
            );
        }
        let _ = writeln!(out);
    }
    for note in &decision.notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(out);
}
