//! `upstream`: the API behind the proxies under test. Prints
//! `listening ADDR` once it accepts connections.

use std::sync::Arc;

use clap::Parser;
use midosoc_bench::upstream::{Recorder, serve};

/// Answers every request at once with a small JSON body.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening {}", listener.local_addr()?);
    serve(listener, Arc::new(Recorder::default())).await?;
    Ok(())
}
