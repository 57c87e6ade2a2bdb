//! The `midosoc` binary: parses the command line and hands off to the
//! subcommand.
//!
//! Layout of the gateway:
//!
//! - `config`: the TOML file and `MIDOSOC_*` overrides, checked at start;
//! - `identity`: agents and analysts, in SQLite, secrets stored hashed;
//! - `keys`: the built-in issuer's signing key on disk;
//! - `issuer`: the token issuer the upstreams mint with, by configuration;
//! - `app`: the shared state and the routers of both listeners;
//! - `routes`: agent authentication, the action API, operations endpoints;
//! - `proxy`: the reverse proxy behind the approval layer;
//! - `framing`: refusing requests with two framings, seen on the wire;
//! - `review`: the dashboard and review API for analysts;
//! - `error`: every handler failure as problem+json;
//! - `outage`: what the agent listener does while the store is down;
//! - `metrics`, `shutdown`, `serve`, `cli`: running and administering it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod app;
mod cli;
mod config;
mod error;
mod eval;
mod framing;
mod identity;
mod issuer;
mod keys;
mod metrics;
mod outage;
mod proxy;
mod review;
mod routes;
mod serve;
mod shutdown;

/// Midosoc: a human-in-the-loop authorization gateway for AI agents.
#[derive(Debug, Parser)]
#[command(name = "midosoc", version, about)]
struct Cli {
    /// Configuration file (TOML); every key can also be set with a
    /// `MIDOSOC_*` environment variable.
    #[arg(long, global = true, env = "MIDOSOC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Log format; overrides `log.format`.
        #[arg(long, value_enum)]
        log_format: Option<config::LogFormat>,
    },
    /// Manage agents.
    #[command(subcommand)]
    Agent(cli::AgentCommand),
    /// Manage analysts.
    #[command(subcommand)]
    Analyst(cli::AnalystCommand),
    /// Check or export the approval store's hash-chained audit trail.
    #[command(subcommand)]
    Audit(cli::AuditCommand),
    /// Print or check the configuration.
    #[command(subcommand)]
    Config(cli::ConfigCommand),
    /// Run the classifier over a labelled corpus and report how it did.
    Eval(eval::EvalArgs),
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let file = cli.config.as_deref();
    let result = match cli.command {
        Command::Eval(args) => eval::run(&args, file),
        Command::Config(command) => cli::config(file, command).map(|()| ExitCode::SUCCESS),
        Command::Serve { log_format } => runtime().and_then(|rt| {
            let config = config::Config::load(file)?;
            serve::init_logging(&config, log_format)?;
            rt.block_on(serve::run(config)).map(|()| ExitCode::SUCCESS)
        }),
        Command::Agent(command) => runtime()
            .and_then(|rt| rt.block_on(cli::agent(file, command)))
            .map(|()| ExitCode::SUCCESS),
        Command::Analyst(command) => runtime()
            .and_then(|rt| rt.block_on(cli::analyst(file, command)))
            .map(|()| ExitCode::SUCCESS),
        Command::Audit(command) => runtime().and_then(|rt| rt.block_on(cli::audit(file, command))),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("midosoc: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
