//! `loadgen`: open-loop load at a fixed rate; prints the outcome as JSON.

use std::time::Duration;

use clap::Parser;
use midosoc_bench::http1;
use midosoc_bench::loadgen::{Spec, run};

/// Sends requests on a fixed schedule and reports their latency.
#[derive(Debug, Parser)]
struct Args {
    /// Where to send them.
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// The request path.
    #[arg(long, default_value = "/up/items/42")]
    path: String,
    /// An agent key sent as a bearer token.
    #[arg(long)]
    key: Option<String>,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// Seconds to measure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds to send before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let auth = args.key.as_ref().map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let spec = Spec {
        addr: args.addr,
        request: http1::request("GET", &args.path, &args.addr.to_string(), &headers),
        rate: args.rate,
        connections: args.connections,
        duration: Duration::from_secs_f64(args.seconds),
        warmup: Duration::from_secs_f64(args.warmup),
    };
    let outcome = run(spec).await?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}
