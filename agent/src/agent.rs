//! `nodewatch run`: start the probes, then one tick loop and the HTTP server until a signal.

use std::{
    net::SocketAddr,
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    http,
    probes::{self, Probe},
    store::{CollectorLabels, ProbeLabels, Store},
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
}

/// Starts every enabled probe, registering its metrics in `store`.
pub fn start_probes(cfg: &Config, store: &mut Store) -> Vec<Box<dyn Probe>> {
    probes::ALL
        .iter()
        .filter(|def| {
            let on = (def.enabled)(cfg);
            if !on {
                tracing::info!(probe = def.name, "probe disabled in config");
            }
            on
        })
        .map(|def| (def.start)(cfg, store.registry_mut()))
        .collect()
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<(), RunError> {
    let mut store = Store::new();
    let probes = start_probes(&cfg, &mut store);
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
    let store = Arc::new(store);

    let listener = std::net::TcpListener::bind(cfg.listen).map_err(|source| RunError::Bind {
        addr: cfg.listen,
        source,
    })?;
    listener.set_nonblocking(true).map_err(RunError::Serve)?;
    let local = listener.local_addr().map_err(RunError::Serve)?;

    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let ticker = {
        let store = Arc::clone(&store);
        let interval = cfg.interval.0;
        thread::Builder::new()
            .name("tick".into())
            .spawn(move || tick_loop(probes, &store, interval, &stop_rx))
            .map_err(RunError::Runtime)?
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tracing::info!(listen = %local, interval = ?cfg.interval.0, "nodewatch started");
        let app = http::router(Arc::new(http::AppState { store }));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    let _ = stop_tx.send(());
    // Joining drops the probes, which detaches every program.
    if ticker.join().is_err() {
        tracing::error!("tick thread panicked");
    }
    tracing::info!("stopped; probes detached");
    served.map_err(RunError::Serve)
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

/// One tick: every probe collects. Blocking reads stay on this thread, off the async workers.
fn tick_loop(
    mut probes: Vec<Box<dyn Probe>>,
    store: &Store,
    interval: Duration,
    stop: &mpsc::Receiver<()>,
) {
    let mut failing = vec![false; probes.len()];
    let mut next = Instant::now();
    loop {
        for (probe, failing) in probes.iter_mut().zip(failing.iter_mut()) {
            let labels = CollectorLabels {
                collector: probe.name().into(),
            };
            let started = Instant::now();
            let result = probe.collect();
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
