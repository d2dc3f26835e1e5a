//! nodewatch: per-host health agent for GPU and AI-serving nodes.

mod agent;
mod config;
mod devices;
mod http;
mod kernel;
mod probes;
mod store;
mod xid;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{config::Config, store::Store};

/// Per-host health agent for GPU and AI-serving nodes: eBPF probes, local alert rules,
/// node health for the load balancer.
#[derive(Parser)]
#[command(name = "nodewatch", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN).
    Run {
        /// Configuration file; without it the embedded defaults are used.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Listen address for HTTP; overrides `listen:` in the config.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Validate a configuration file: exit 0, or 1 with `file:line:col: message`.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Show each probe, whether this kernel supports it, and how it attaches.
    Probes {
        /// Configuration file whose probe settings to try; default: the embedded one.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Exit codes: 0 ok, 1 invalid input or failed check, 2 runtime failure.
const EXIT_INVALID: u8 = 1;
const EXIT_RUNTIME: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, listen } => {
            let Some(mut cfg) = load(config.as_deref()) else {
                return ExitCode::from(EXIT_INVALID);
            };
            if let Some(addr) = listen {
                cfg.listen = addr;
            }
            match agent::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "nodewatch failed");
                    eprintln!("nodewatch: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Probes { config } => {
            let Some(cfg) = load(config.as_deref()) else {
                return ExitCode::from(EXIT_INVALID);
            };
            print_probes(&cfg);
            ExitCode::SUCCESS
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Option<Config> {
    match path {
        None => Some(Config::embedded()),
        Some(p) => Config::load(p).map_err(|e| eprintln!("{e}")).ok(),
    }
}

/// Starts each probe for real, reports where it landed, and detaches it again.
fn print_probes(cfg: &Config) {
    let mut store = Store::new();
    println!("{:<18} {:<10} {:<8} ATTACH", "PROBE", "SUPPORTED", "MODE");
    for def in probes::ALL {
        if !(def.enabled)(cfg) {
            println!("{:<18} {:<10} {:<8} disabled in config", def.name, "-", "-");
            continue;
        }
        let probe = (def.start)(cfg, store.registry_mut());
        println!(
            "{:<18} {:<10} {:<8} {}",
            def.name,
            probe.mode().support(),
            probe.mode().as_str(),
            probe.attach_method()
        );
    }
}
