//! `sse-client`: analyst dashboards following the event stream; driven by
//! commands on standard input (see the library's `sse` module).

use clap::Parser;
use midosoc_bench::lines::{Printer, commands};
use midosoc_bench::sse::Dashboards;

/// Subscribes to `/api/events` and prints every event with its arrival.
#[derive(Debug, Parser)]
struct Args {
    /// The gateway's review listener.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// An analyst's bearer token.
    #[arg(long)]
    token: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let dashboards = Dashboards::new(args.addr, args.token, Printer::stdout());
    dashboards.run(commands()).await;
}
