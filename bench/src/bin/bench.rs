//! `bench`: runs the whole suite and writes `bench/results/results.json`,
//! `docs/benchmarks.md` and the latency chart beside it. `bench/run.sh`
//! installs the tools, builds, runs the classifier benchmark and then
//! this.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use midosoc_bench::driver::{self, Selection, Sizes, Tools, chart, report};

/// The Midosoc benchmark suite.
#[derive(Debug, Parser)]
struct Args {
    /// Repetitions of each measurement (at least one).
    #[arg(
        long,
        default_value_t = 3,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    reps: usize,
    /// Scenarios to run, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "perf,classifier,held,decision"
    )]
    only: Vec<Scenario>,
    /// PostgreSQL for the two-instance run; `none` skips it.
    #[arg(
        long,
        env = "MIDOSOC_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Scratch folder for configurations, data and logs; kept afterwards
    /// (without it, a temporary folder is made and removed).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Write results here instead of the repository.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A scenario of the suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Safe-path throughput and added latency.
    Perf,
    /// The classifier's cost.
    Classifier,
    /// Many requests held at once.
    Held,
    /// Decision to release.
    Decision,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = args.out.clone().unwrap_or_else(|| repo.clone());
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("no folder for the bench binary")?;
    let tools = Tools::beside(bin_dir);
    let missing = tools.missing_own();
    anyhow::ensure!(
        missing.is_empty(),
        "missing programs (build them first): {}",
        missing.join(", ")
    );

    // Only a folder made here is removed at the end; one named by the
    // user may hold anything.
    let remove_scratch = args.scratch.is_none();
    let results_dir = out.join("bench/results");
    let docs = out.join("docs");
    for dir in [&results_dir, &docs] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--out: cannot create {}", dir.display()))?;
    }
    let scratch = match args.scratch {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("midosoc-bench-{}", std::process::id())),
    };
    let mut sizes = Sizes::full();
    sizes.reps = args.reps;
    let has = |scenario: Scenario| args.only.contains(&scenario);
    let selection = Selection {
        perf: has(Scenario::Perf),
        classifier: has(Scenario::Classifier),
        held: has(Scenario::Held),
        decision: has(Scenario::Decision),
    };
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo.join("target"), PathBuf::from);
    let postgres = (args.postgres_url != "none").then_some(args.postgres_url.as_str());

    let results = driver::run(
        tools,
        scratch.clone(),
        &sizes,
        &selection,
        &target_dir.join("criterion"),
        postgres,
    )?;

    std::fs::write(results_dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    let chart_name = "benchmarks-latency.png";
    let chart = match results.perf.as_ref().map(|p| chart::draw(p, &docs.join(chart_name))) {
        Some(Ok(())) => Some(chart_name),
        Some(Err(error)) => {
            eprintln!("no chart: {error:#}");
            None
        }
        None => None,
    };
    let notes = std::fs::read_to_string(repo.join("bench/NOTES.md")).unwrap_or_default();
    std::fs::write(docs.join("benchmarks.md"), report::markdown(&results, chart, &notes))?;

    println!("{}", report::targets_table(&results));
    for warning in &results.warnings {
        println!("warning: {warning}");
    }
    println!(
        "wall time {:.0} s; wrote {}, {}",
        results.wall_seconds,
        results_dir.join("results.json").display(),
        docs.join("benchmarks.md").display()
    );
    if remove_scratch {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}
