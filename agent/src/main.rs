//! nodewatch: per-host health agent for GPU and AI-serving nodes. The command line; the
//! agent itself is the `nodewatch` library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use nodewatch::{agent, client, collectors, config::Config, httpc::HttpConfig, rules};

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
        /// A web-config file (exporter-toolkit's format: TLS, client certificates, basic-auth
        /// users); overrides `web_config_file:` in the config.
        #[arg(long = "web.config.file", value_name = "FILE")]
        web_config_file: Option<PathBuf>,
    },
    /// Validate a configuration file: exit 0, or 1 with every problem, one `file:line:col:
    /// key: message` line each.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Put this node in maintenance: the load balancer drains it until `undrain`. Survives an
    /// agent restart.
    Drain {
        /// Why, shown in /healthz, HAProxy and `status`.
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        target: Target,
    },
    /// End maintenance started with `drain` (alerts still firing keep the node out).
    Undrain {
        #[command(flatten)]
        target: Target,
    },
    /// Make a running agent re-read its rule files (as SIGHUP does): exit 0 with the number
    /// of rules, or 1 with the errors (the running rules stay).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Ask a running agent: node health and why (a drain the drain budget defers, too),
    /// firing alerts, probe modes.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Validate rule files (Prometheus format, nodewatch's PromQL subset): exit 0, or 1 with
    /// `file:line:col: message` for every problem.
    CheckRules {
        /// The rule files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests written for `promtool test rules`: exit 0 when all pass, else 1.
    TestRules {
        /// The test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show each probe, whether this kernel supports it, and how it attaches.
    Probes {
        /// Configuration file whose probe settings to try; default: the embedded one.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Which running agent a command talks to.
#[derive(clap::Args)]
struct Target {
    /// The agent's address: `host:port`, `http://host:port` or `https://host:port`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9477")]
    addr: String,
    /// A file with the agent's token (`health.token_file`), for non-loopback addresses.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// An `http_config` in YAML (as amtool's `--http.config.file`): basic auth, TLS (CA,
    /// client certificate), for an agent with a web config.
    #[arg(long = "http.config.file", value_name = "FILE")]
    http_config_file: Option<PathBuf>,
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
        Command::Run {
            config,
            listen,
            web_config_file,
        } => {
            let Some(mut cfg) = load(config.as_deref()) else {
                return ExitCode::from(EXIT_INVALID);
            };
            if let Some(addr) = listen {
                cfg.listen = addr;
            }
            if let Some(f) = web_config_file {
                cfg.web_config_file = Some(f);
            }
            if let Some(f) = &cfg.web_config_file
                && let Err(e) = nodewatch::http::web::WebConfig::load(f)
            {
                eprintln!("{e}");
                return ExitCode::from(EXIT_INVALID);
            }
            let groups = match rules::load_for_config(&cfg, config.as_deref()) {
                Ok(g) => g,
                Err(errors) => {
                    errors.iter().for_each(|e| eprintln!("{e}"));
                    return ExitCode::from(EXIT_INVALID);
                }
            };
            match agent::run(cfg, config, groups) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "nodewatch failed");
                    eprintln!("nodewatch: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg)
                if let Some(Err(e)) = cfg
                    .web_config_file
                    .as_deref()
                    .map(nodewatch::http::web::WebConfig::load) =>
            {
                eprintln!("{e}");
                ExitCode::from(EXIT_INVALID)
            }
            Ok(cfg) => match rules::load_for_config(&cfg, Some(&file)) {
                Ok(groups) => {
                    let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                    println!("{}: ok ({n} rules)", file.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    errors.iter().for_each(|e| eprintln!("{e}"));
                    ExitCode::from(EXIT_INVALID)
                }
            },
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Drain { reason, target } => talk(
            &target,
            "POST",
            "/api/v1/drain",
            Some(serde_json::json!({ "reason": reason })),
        ),
        Command::Undrain { target } => talk(&target, "POST", "/api/v1/undrain", None),
        Command::Status { target } => talk(&target, "GET", "/api/v1/status", None),
        Command::Reload { target } => talk(&target, "POST", "/api/v1/reload", None),
        Command::CheckRules { files } => {
            let mut ok = true;
            for f in &files {
                match rules::file::load(f) {
                    Ok(groups) => {
                        let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                        println!("{}: ok ({n} rules)", f.display());
                    }
                    Err(errors) => {
                        ok = false;
                        errors.iter().for_each(|e| eprintln!("{e}"));
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_INVALID)
            }
        }
        Command::TestRules { files } => {
            if rules::unittest::run_files(&files) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_INVALID)
            }
        }
        Command::Probes { config } => {
            let Some(cfg) = load(config.as_deref()) else {
                return ExitCode::from(EXIT_INVALID);
            };
            print_probes(&cfg);
            ExitCode::SUCCESS
        }
    }
}

/// Sends one request to a running agent and prints what it says.
fn talk(target: &Target, method: &str, path: &str, body: Option<serde_json::Value>) -> ExitCode {
    let http_config = match &target.http_config_file {
        None => None,
        Some(file) => match load_http_config(file) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_INVALID);
            }
        },
    };
    match client::request(
        &target.addr,
        method,
        path,
        body.as_ref(),
        target.token_file.as_deref(),
        http_config.as_ref(),
    ) {
        Ok(v) if path == "/api/v1/status" => {
            print!("{}", client::describe_status(&v));
            ExitCode::SUCCESS
        }
        Ok(v) if path == "/api/v1/reload" => {
            println!("reloaded: {} rules", v["rules"]);
            ExitCode::SUCCESS
        }
        Err(client::ClientError::Refused { status: 422, body }) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            eprintln!("nodewatch: reload refused; the running rules stay");
            for e in v["errors"].as_array().into_iter().flatten() {
                eprintln!("{}", e.as_str().unwrap_or_default());
            }
            ExitCode::from(EXIT_INVALID)
        }
        Ok(v) => {
            let status = v["status"].as_str().unwrap_or("unknown");
            println!("node: {status}");
            for r in v["reasons"].as_array().into_iter().flatten() {
                println!("  reason: {}", r.as_str().unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(e @ (client::ClientError::Refused { .. } | client::ClientError::Usage(_))) => {
            eprintln!("nodewatch: {e}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(e) => {
            eprintln!("nodewatch: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// An `http_config` file, as `--http.config.file` names it.
fn load_http_config(file: &std::path::Path) -> Result<HttpConfig, String> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{name}: {e}"))?;
    nodewatch::yaml::parse::<HttpConfig>(&name, &text).map_err(|e| e.to_string())
}

fn load(path: Option<&std::path::Path>) -> Option<Config> {
    match path {
        None => Some(Config::embedded()),
        Some(p) => Config::load(p).map_err(|e| eprintln!("{e}")).ok(),
    }
}

/// Starts each collector for real, reports where it landed, and stops it again.
fn print_probes(cfg: &Config) {
    println!("{:<18} {:<10} {:<8} ATTACH", "PROBE", "SUPPORTED", "MODE");
    for [name, support, mode, attach] in collectors::describe(&cfg.collectors()) {
        println!("{name:<18} {support:<10} {mode:<8} {attach}");
    }
}
