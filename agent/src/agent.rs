//! `nodewatch run`: start the probes, then one tick loop and the HTTP server until a signal.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    haproxy,
    health::{AlertHealth, Health, State},
    heartbeats::Heartbeats,
    http, kernel,
    notify::{ActiveAlert, Notifiers},
    privileges,
    probes::{self, Probe, ProbeError},
    reload::Reloads,
    resources::Resources,
    rules::{
        self,
        file::GroupDef,
        live::{LiveRules, RuleMetrics, now_ms},
    },
    server,
    store::{CollectorLabels, ProbeLabels, Store},
    systemd,
};

/// What the tick runs: every probe, and the plain collectors beside them.
pub trait Collector: Send {
    /// The `collector` label.
    fn name(&self) -> &'static str;
    /// Reads current values into the collector's metric families.
    fn collect(&mut self) -> Result<(), ProbeError>;
    /// True while it still has kernel programs to attach.
    fn awaiting_attach(&self) -> bool {
        false
    }
    /// Events the kernel skipped delivering to its programs.
    fn missed_events(&self) -> u64 {
        0
    }
}

impl Collector for Box<dyn Probe> {
    fn name(&self) -> &'static str {
        self.as_ref().name()
    }
    fn collect(&mut self) -> Result<(), ProbeError> {
        self.as_mut().collect()
    }
    fn awaiting_attach(&self) -> bool {
        self.as_ref().awaiting_attach()
    }
    fn missed_events(&self) -> u64 {
        self.as_ref().missed_events()
    }
}

impl Collector for Resources {
    fn name(&self) -> &'static str {
        Resources::name(self)
    }
    fn collect(&mut self) -> Result<(), ProbeError> {
        Resources::collect(self)
    }
}

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
}

/// Starts every enabled probe, registering its metrics in `store`.
pub fn start_probes(cfg: &Config, store: &mut Store) -> Vec<Box<dyn Probe>> {
    let probes = probes::ALL
        .iter()
        .filter(|def| {
            let on = (def.enabled)(cfg);
            if !on {
                tracing::info!(probe = def.name, "probe disabled in config");
            }
            on
        })
        .map(|def| (def.start)(cfg, store.registry_mut()))
        .collect();
    kernel::release_btf();
    probes
}

/// The rules as the tick thread runs them, and how it learns of a reload.
struct RulesTick {
    live: LiveRules,
    reloads: Arc<Reloads>,
    config_path: Option<PathBuf>,
    config: Config,
}

impl RulesTick {
    /// When asked (SIGHUP, `POST /api/v1/reload`): re-reads the config file (for
    /// `rule_files` and `default_rules`) and every rule file; an invalid set is refused and
    /// the running one stays.
    fn reload_if_asked(&mut self) {
        let Some(number) = self.reloads.pending() else {
            return;
        };
        tracing::info!("reloading rules");
        let loaded = match &self.config_path {
            None => rules::load_for_config(&self.config, None),
            Some(p) => match Config::load(p) {
                Err(e) => Err(vec![e]),
                Ok(new) => {
                    let restart_only = Config {
                        default_rules: self.config.default_rules,
                        rule_files: self.config.rule_files.clone(),
                        ..new.clone()
                    };
                    if restart_only != self.config {
                        tracing::warn!(
                            "config changes other than rule_files and default_rules take effect at the next restart"
                        );
                    }
                    let loaded = rules::load_for_config(&new, Some(p));
                    if loaded.is_ok() {
                        self.config.default_rules = new.default_rules;
                        self.config.rule_files = new.rule_files;
                    }
                    loaded
                }
            },
        };
        let outcome = self.live.reload(loaded);
        self.reloads.finish(number, outcome);
    }
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
    let mut store = Store::new();
    let probes = start_probes(&cfg, &mut store);
    let probe_modes: Vec<(String, String)> = probes
        .iter()
        .map(|p| (p.name().to_string(), p.mode().as_str().to_string()))
        .collect();
    let rule_metrics = RuleMetrics::register(store.registry_mut());
    let interval_ms = cfg.interval.0.as_millis() as i64;
    let rules_tick = RulesTick {
        live: LiveRules::new(groups, rule_metrics, interval_ms),
        reloads: Arc::new(Reloads::default()),
        config_path,
        config: cfg.clone(),
    };
    let alerts = rules_tick.live.view();
    let reloads = Arc::clone(&rules_tick.reloads);
    for p in &probes {
        store
            .own
            .probe_up
            .get_or_create(&ProbeLabels {
                probe: p.name().into(),
                mode: p.mode().as_str().into(),
            })
            .set(i64::from(p.mode() != probes::Mode::Off));
        tracing::info!(probe = p.name(), mode = %p.mode(), attach = %p.attach_method(), "probe started");
    }
    let mut collectors: Vec<Box<dyn Collector>> = probes
        .into_iter()
        .map(|p| Box::new(p) as Box<dyn Collector>)
        .collect();
    if cfg.resources.enabled {
        let registry = store.registry_mut();
        collectors.push(Box::new(Resources::new(
            &cfg.resources,
            &cfg.proc_root,
            registry,
        )));
    }
    let heartbeats = Heartbeats::new(&cfg.heartbeats.0, store.registry_mut());
    let health = Arc::new(Health::new(
        cfg.health.recover_after.0,
        &cfg.spool_dir,
        store.registry_mut(),
    ));
    let token = cfg
        .health
        .token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let notifiers = Arc::new(Notifiers::new(
        &cfg.notifiers.0,
        &cfg.spool_dir,
        external_url(cfg.listen),
        store.registry_mut(),
    )?);
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

    let tick_keeps = collectors.iter().any(|c| c.awaiting_attach());
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
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
                tick_loop(collectors, &store, rules_tick, outputs, interval, &stop_rx)
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
        server::serve(listener, app, shutdown_signal()).await
    });
    systemd::notify("STOPPING=1");
    let _ = stop_tx.send(());
    // Joining drops the probes, which detaches every program.
    if ticker.join().is_err() {
        tracing::error!("tick thread panicked");
    }
    tracing::info!("stopped; probes detached");
    served.map_err(RunError::Serve)
}

/// The agent's own URL as receivers see it: this host's name and the HTTP port.
fn external_url(listen: std::net::SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("http://{host}:{}", listen.port())
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

/// What the alerts firing after each tick act on.
struct Outputs<'a> {
    health: &'a Health,
    notifiers: &'a Notifiers,
}

/// The firing alerts that ask for a health state (`health: drain` or `health: down`).
fn health_of(firing: &[ActiveAlert]) -> Vec<AlertHealth> {
    firing
        .iter()
        .filter_map(|a| {
            let level = State::from_label(a.labels.get("health")?)?;
            Some(AlertHealth {
                alertname: a.labels.get("alertname").cloned().unwrap_or_default(),
                level,
                summary: a.annotations.get("summary").cloned().unwrap_or_default(),
            })
        })
        .collect()
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

/// One tick: every probe collects, then the rules evaluate what they wrote. Blocking reads
/// stay on this thread, off the async workers.
fn tick_loop(
    mut probes: Vec<Box<dyn Collector>>,
    store: &Store,
    mut rules: RulesTick,
    outputs: Outputs<'_>,
    interval: Duration,
    stop: &mpsc::Receiver<()>,
) {
    let mut failing = vec![false; probes.len()];
    let mut next = Instant::now();
    // The capabilities this thread holds: all it started with, until set once below.
    let mut holds: Option<&[u32]> = None;
    loop {
        // This thread attaches what waits for a device; once nothing does, it needs nothing.
        // capset only when that changes, not every tick.
        let needs: &[u32] = if probes.iter().any(|p| p.awaiting_attach()) {
            privileges::ATTACH
        } else {
            &[]
        };
        if holds != Some(needs) {
            match privileges::keep_only(needs) {
                Ok(()) => {
                    if needs.is_empty() {
                        tracing::debug!("tick thread dropped its capabilities");
                    }
                    holds = Some(needs);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not drop the tick thread's capabilities");
                    holds = Some(needs);
                }
            }
        }
        for (probe, failing) in probes.iter_mut().zip(failing.iter_mut()) {
            let labels = CollectorLabels {
                collector: probe.name().into(),
            };
            let started = Instant::now();
            let result = probe.collect();
            let missed = probe.missed_events();
            if missed > 0 {
                let c = store.own.missed_events.get_or_create(&labels);
                let before = c.get();
                if missed > before {
                    if before == 0 {
                        tracing::warn!(collector = %labels.collector, missed, "the kernel skipped some of this probe's events (another BPF program was running on the CPU); counts may fall short");
                    }
                    c.inc_by(missed - before);
                }
            }
            store
                .own
                .collector_duration
                .get_or_create(&labels)
                .set(started.elapsed().as_secs_f64());
            // Say it once when a collector starts failing and once when it recovers.
            match result {
                Ok(()) if *failing => {
                    *failing = false;
                    tracing::info!(collector = %labels.collector, "collection recovered");
                }
                Ok(()) => {}
                Err(e) => {
                    store.own.collector_errors.get_or_create(&labels).inc();
                    if !*failing {
                        *failing = true;
                        tracing::warn!(collector = %labels.collector, error = %e, "collection failed");
                    }
                }
            }
        }
        rules.reload_if_asked();
        rules.live.tick(now_ms(), &store.encode_openmetrics());
        let firing = rules.live.firing();
        outputs.health.evaluate(&health_of(&firing), Instant::now());
        outputs
            .notifiers
            .observe(&firing, &rules.live.pending(), std::time::SystemTime::now());
        next += interval;
        let now = Instant::now();
        if next < now {
            // Fell behind (a stalled read): skip the missed ticks rather than burst.
            next = now + interval;
        }
        match stop.recv_timeout(next - now) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
