//! The `midosoc` binary: parses the command line and hands off to the
//! subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod eval;
mod identity;

/// Midosoc: a human-in-the-loop authorization gateway for AI agents.
#[derive(Debug, Parser)]
#[command(name = "midosoc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the classifier over a labelled corpus and report how it did.
    Eval(eval::EvalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(args) => eval::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("midosoc: {error:#}");
            ExitCode::FAILURE
        }
    }
}
