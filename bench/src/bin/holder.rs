//! `holder`: agents whose risky requests are held; driven by commands on
//! standard input (see the library's `holder` module).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use midosoc_bench::holder::{Holder, Target};
use midosoc_bench::lines::{Printer, commands};

/// Sends risky requests through the gateway and times their answers.
#[derive(Debug, Parser)]
struct Args {
    /// The gateway's agent listener.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// A file with one agent key per line.
    #[arg(long)]
    keys_file: PathBuf,
    /// Path prefix of held requests.
    #[arg(long, default_value = "/up/items/")]
    prefix: String,
    /// Multiplex held requests over HTTP/2 (prior knowledge).
    #[arg(long)]
    http2: bool,
    /// Requests per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// Write every request's outcome here (JSON) at exit.
    #[arg(long)]
    results: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.keys_file)
        .with_context(|| format!("cannot read `{}`", args.keys_file.display()))?;
    let keys: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    anyhow::ensure!(!keys.is_empty(), "no agent keys in `{}`", args.keys_file.display());

    let target = Target {
        addr: args.addr,
        prefix: args.prefix,
        keys,
        http2: args.http2,
        streams_per_connection: args.streams,
    };
    let holder = Holder::new(target, Printer::stdout());
    holder.run(commands()).await;
    if let Some(path) = args.results {
        std::fs::write(path, serde_json::to_vec(&holder.outcomes())?)?;
    }
    // Give the printer a moment to flush the last report.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    Ok(())
}
