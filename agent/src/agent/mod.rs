//! `nodewatch run`: start the collectors, then one tick loop and the HTTP server until a
//! signal.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, thread, time::Duration};

pub mod privileges;
pub mod systemd;
mod tick;

use self::tick::{Outputs, RulesTick, tick_loop};
use crate::{
    alerts::NODE_LABEL,
    collectors::{Collectors, heartbeats::Heartbeats},
    config::Config,
    health::{Health, fleet::FleetSetup, haproxy},
    http::{
        self, server,
        web::{self, TlsServer, WebConfig},
    },
    notify::Notifiers,
    rules::{
        file::GroupDef,
        live::{LiveRules, RuleMetrics},
        reload::Reloads,
    },
    store::Store,
};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error("health.token_file {path}: {message}")]
    Token { path: String, message: String },
    #[error("web_config_file: {0}")]
    WebConfig(String),
}

/// Runs the agent until SIGINT or SIGTERM; SIGHUP reloads the rules.
pub fn run(
    cfg: Config,
    config_path: Option<PathBuf>,
    groups: Vec<GroupDef>,
) -> Result<(), RunError> {
    // Until the reload handler is in place, a SIGHUP must not end the agent (its default).
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let web = match &cfg.web_config_file {
        None => WebConfig::default(),
        Some(p) => WebConfig::load(p).map_err(|e| RunError::WebConfig(e.to_string()))?,
    };
    let tls = web
        .tls
        .clone()
        .map(|t| TlsServer::new(t).map(Arc::new))
        .transpose()
        .map_err(RunError::WebConfig)?;
    let mut store = Store::new();
    let collectors = Collectors::start(&cfg.collectors(), &mut store);
    let probe_modes = collectors.modes();
    let heartbeats = collectors.find::<Heartbeats>().cloned().unwrap_or_default();
    let rule_metrics = RuleMetrics::register(&mut store);
    let interval_ms = cfg.interval.0.as_millis() as i64;
    let external_labels = cfg.external_labels.resolved();
    let mut live = LiveRules::new(groups, rule_metrics, interval_ms);
    live.set_external_labels(crate::store::Labels::from_pairs(external_labels.clone()));
    let rules_tick = RulesTick {
        live,
        reloads: Arc::new(Reloads::default()),
        config_path,
        config: cfg.clone(),
    };
    let alerts = rules_tick.live.view();
    let reloads = Arc::clone(&rules_tick.reloads);
    let mut health = Health::new(&cfg.health, &cfg.spool_dir, &mut store);
    if let Some(budget) = &cfg.health.drain_budget {
        let (alertmanagers, timeout) = cfg.alertmanagers();
        let setup = FleetSetup {
            node: external_labels.get(NODE_LABEL).cloned().unwrap_or_default(),
            scope: external_labels
                .iter()
                .filter(|(k, _)| *k != NODE_LABEL)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            alertmanagers,
            // Short: a query that waits holds a drain back.
            timeout: timeout.min(Duration::from_secs(1)),
        };
        tracing::info!(node = %setup.node, max_unhealthy = %budget.max_unhealthy.0, alertmanagers = setup.alertmanagers.len(), "drain budget: drains wait for the fleet's view from Alertmanager");
        health.set_drain_budget(budget, setup);
    }
    let health = Arc::new(health);
    let token = cfg
        .health
        .token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let mut notifiers = Notifiers::new(
        &cfg.notifiers.0,
        &cfg.spool_dir,
        external_url(cfg.listen, tls.is_some()),
        external_labels,
        &mut store,
    )?;
    notifiers.set_tick_interval(cfg.interval.0);
    let notifiers = Arc::new(notifiers);
    let store = Arc::new(store);

    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|source| RunError::Bind {
        addr: cfg.listen,
        source,
    })?;
    listener.set_nonblocking(true).map_err(RunError::Serve)?;
    let local = listener.local_addr().map_err(RunError::Serve)?;
    let agent_check = match cfg.health.haproxy_agent_listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .map_err(|source| RunError::Bind { addr, source })?;
            l.set_nonblocking(true).map_err(RunError::Serve)?;
            Some(l)
        }
        None => None,
    };

    let tick_keeps = collectors.awaiting_attach();
    let stop = collectors.wake().clone();
    let ticker = {
        let store = Arc::clone(&store);
        let health = Arc::clone(&health);
        let notifiers = Arc::clone(&notifiers);
        let interval = cfg.interval.0;
        thread::Builder::new()
            .name("tick".into())
            .spawn(move || {
                let outputs = Outputs {
                    health: &health,
                    notifiers: &notifiers,
                };
                tick_loop(collectors, &store, rules_tick, outputs, interval)
            })
            .map_err(RunError::Runtime)?
    };
    // Everything that needed privileges is done: programs attached, sockets bound. The tick
    // thread, already started, keeps CAP_BPF and CAP_PERFMON only while a probe still waits
    // for a device to attach to; every thread started from here on has none.
    if let Err(e) = privileges::drop_all(tick_keeps) {
        tracing::warn!(error = %e, "could not drop capabilities; running with them");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        watch_sighup(Arc::clone(&reloads))?;
        tracing::info!(listen = %local, interval = ?cfg.interval.0, "nodewatch started");
        systemd::notify("READY=1");
        heartbeats.spawn();
        notifiers.spawn();
        health.spawn_fleet(stop.clone());
        if let Some(l) = agent_check {
            let l = tokio::net::TcpListener::from_std(l)?;
            tracing::info!(listen = %l.local_addr()?, "HAProxy agent-check listening");
            tokio::spawn(haproxy::serve(l, Arc::clone(&health)));
        }
        let app = http::router(Arc::new(http::AppState {
            store,
            heartbeats,
            health,
            token,
            probes: probe_modes,
            alerts,
            reloads,
            // Served by the tick thread between two ticks; within the server's 10 s per request.
            reload_wait: (cfg.interval.0 * 2 + Duration::from_secs(1)).min(Duration::from_secs(8)),
        }));
        let app = if web.users.is_empty() {
            app
        } else {
            web::with_basic_auth(app, Arc::new(web::Users::new(web.users.clone())))
        };
        if cfg.web_config_file.is_some() {
            tracing::info!(
                tls = tls.is_some(),
                basic_auth_users = web.users.len(),
                "web config: TLS and basic auth of the HTTP server"
            );
        }
        server::serve(listener, app, tls, shutdown_signal()).await
    });
    systemd::notify("STOPPING=1");
    stop.stop();
    // Joining drops the probes, which detaches every program.
    if ticker.join().is_err() {
        tracing::error!("tick thread panicked");
    }
    tracing::info!("stopped; probes detached");
    served.map_err(RunError::Serve)
}

/// The agent's own URL as receivers see it: this host's name and the HTTP port.
fn external_url(listen: std::net::SocketAddr, tls: bool) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}:{}", listen.port())
}

/// Reads the drain/undrain token; an unreadable or empty file stops the start.
fn read_token(path: &std::path::Path) -> Result<String, RunError> {
    let err = |message: String| RunError::Token {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(err("empty".into()));
    }
    Ok(token)
}

/// Asks the tick thread to reload the rules on every SIGHUP.
fn watch_sighup(reloads: Arc<Reloads>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reloads.request();
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
    }
}
