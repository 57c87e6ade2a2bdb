//! The administrative subcommands: agents, analysts, the audit trail and
//! configuration.
//!
//! Secrets are printed once, to standard output, and nowhere else.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use futures::TryStreamExt as _;

use crate::config::{Config, EXAMPLE};
use crate::identity::{Identities, Role};

/// `midosoc agent ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AgentCommand {
    /// Create an agent and print its key (shown once).
    Add {
        /// Letters, digits, `.`, `_` or `-`.
        name: String,
    },
    /// List agents.
    List,
    /// Remove an agent; its key stops working within a second.
    Remove {
        /// The agent's name.
        name: String,
    },
}

/// `midosoc analyst ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AnalystCommand {
    /// Create an analyst and print their sign-in token (shown once).
    Add {
        /// Letters, digits, `.`, `_` or `-`.
        name: String,
        /// What the analyst may do.
        #[arg(long, value_parser = ["viewer", "approver", "admin"])]
        role: String,
    },
    /// List analysts.
    List,
    /// Remove an analyst; their token stops working at once.
    Remove {
        /// The analyst's name.
        name: String,
    },
}

/// `midosoc audit ...`
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check every link of the audit chain; exits non-zero and names the
    /// first broken link when one is.
    Verify,
    /// Write the audit trail to standard output as JSON Lines, oldest
    /// first.
    Export {
        /// Only entries after this sequence number.
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
    },
}

/// `midosoc config ...`
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print a commented example configuration with every key.
    Example,
    /// Check a configuration (file and `MIDOSOC_*` variables) and exit.
    Check,
}

/// Runs `midosoc agent ...`.
pub(crate) async fn agent(config: Option<&Path>, command: AgentCommand) -> anyhow::Result<()> {
    let identities = open(config).await?;
    match command {
        AgentCommand::Add { name } => {
            let key = identities.add_agent(&name).await?;
            println!("agent `{name}` created. Its key, shown only once:");
            println!("{key}");
            println!("The agent sends it as `Authorization: Bearer <key>`.");
        }
        AgentCommand::List => {
            for agent in identities.list_agents().await? {
                println!("{}\t{}", agent.name, agent.created_at);
            }
        }
        AgentCommand::Remove { name } => {
            remove(identities.remove_agent(&name).await?, "agent", &name)?
        }
    }
    Ok(())
}

/// Runs `midosoc analyst ...`.
pub(crate) async fn analyst(config: Option<&Path>, command: AnalystCommand) -> anyhow::Result<()> {
    let identities = open(config).await?;
    match command {
        AnalystCommand::Add { name, role } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let token = identities.add_analyst(&name, role).await?;
            println!("analyst `{name}` ({role}) created. Sign-in token, shown only once:");
            println!("{token}");
        }
        AnalystCommand::List => {
            for analyst in identities.list_analysts().await? {
                println!("{}\t{}", analyst.name, analyst.role);
            }
        }
        AnalystCommand::Remove { name } => {
            remove(identities.remove_analyst(&name).await?, "analyst", &name)?;
        }
    }
    Ok(())
}

/// Runs `midosoc audit ...` on the store the configuration names.
pub(crate) async fn audit(file: Option<&Path>, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let config = Config::load(file)?;
    let (_store, trail) = crate::app::open_store(&config.store_url()).await?;
    let Some(trail) = trail else {
        anyhow::bail!("the `memory` store keeps no audit trail; set `store.url` to a database");
    };
    match command {
        AuditCommand::Verify => {
            let report = trail.verify_audit().await.context("cannot read the audit trail")?;
            println!("{report}");
            Ok(if report.is_whole() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        AuditCommand::Export { after } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut entries = trail.export_audit(after);
            while let Some(entry) = entries.try_next().await? {
                serde_json::to_writer(&mut out, &entry)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `midosoc config ...`.
pub(crate) fn config(file: Option<&Path>, command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Example => print!("{EXAMPLE}"),
        ConfigCommand::Check => {
            let config = Config::load(file)?;
            let source = file.map_or("defaults".to_owned(), |f| format!("`{}`", f.display()));
            println!(
                "configuration {source} is valid: agents on {}, dashboard on {}, {} upstream(s), \
                 classifier: {}",
                config.agent.listen,
                config.review.listen,
                config.upstream.len(),
                config.classifier,
            );
        }
    }
    Ok(())
}

async fn open(config: Option<&Path>) -> anyhow::Result<Identities> {
    let config = Config::load(config)?;
    Ok(Identities::open(&config.data_dir).await?)
}

fn remove(removed: bool, kind: &str, name: &str) -> anyhow::Result<()> {
    if removed {
        println!("{kind} `{name}` removed");
        Ok(())
    } else {
        anyhow::bail!("no {kind} named `{name}`")
    }
}
