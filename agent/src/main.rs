//! `egressd`: command-line entry point. See `egressd --help`.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// eBPF host agent that keeps outbound connections inside allowlisted regions.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the policy, attach the kernel programs and stream deny/audit events as JSON
    /// lines on stdout until SIGINT or SIGTERM.
    Run {
        /// Policy file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// cgroup v2 directory to attach to; overrides the file's `cgroup` (default: the
        /// cgroup2 root, i.e. the whole host).
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
    },
    /// Validate the policy exactly as `run` would load it and print a summary; exits 1
    /// with `file:line:column: field: message` on bad input. Needs no privileges.
    Check {
        /// Policy file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("EGRESSD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let res = match cli.command {
        Command::Run { config, cgroup } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(egressd::daemon::run(&config, cgroup))),
        Command::Check { config } => check(&config),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egressd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = egressd::config::load(path)?;
    let policy = egressd::policy::compile(&cfg);
    for w in egressd::check::warnings(&cfg, &policy) {
        eprintln!("egressd: warning: {}: {w}", path.display());
    }
    print!("{}", egressd::check::summary(&cfg, &policy));
    Ok(())
}
