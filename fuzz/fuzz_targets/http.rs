//! The HTTP surface as a client sees it: raw bytes on one connection, parsed by hyper and
//! answered by the agent's handlers with the server's limits. The first byte picks the peer
//! (loopback or not), so both sides of the drain/undrain check are reached.
#![no_main]

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use axum::Router;
use libfuzzer_sys::fuzz_target;
use nodewatch::{
    collectors::heartbeats::Heartbeats,
    config::Config,
    health::Health,
    http::{AppState, router, server::serve_connection},
    store::Store,
    wake::Wake,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = "heartbeats:\n  - { name: trainer, push_ttl: 10s }\n";

fn app() -> Router {
    static APP: OnceLock<Router> = OnceLock::new();
    APP.get_or_init(|| {
        let cfg = Config::parse("fuzz.yaml", CONFIG).expect("the fuzz config is valid");
        let spool = std::env::temp_dir().join("nodewatch-fuzz-http");
        std::fs::create_dir_all(&spool).expect("temporary spool folder");
        let mut store = Store::new();
        let heartbeats = Heartbeats::new(&cfg.heartbeats.0, &Wake::default(), &mut store);
        let health = Arc::new(Health::new(&cfg.health, &spool, &mut store));
        router(Arc::new(AppState {
            store: Arc::new(store),
            heartbeats,
            health,
            token: Some("s3cret-token".into()),
            probes: vec![("gpu_xid".into(), "kmsg".into())],
            alerts: Default::default(),
            // No tick thread here: a reload is answered 503 at once.
            reloads: Default::default(),
            reload_wait: std::time::Duration::ZERO,
        }))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    let Some((&first, request)) = data.split_first() else {
        return;
    };
    let peer: SocketAddr = if first & 1 == 0 {
        "127.0.0.1:40000".parse().unwrap()
    } else {
        "10.1.2.3:40000".parse().unwrap()
    };
    let app = app();
    runtime.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(serve_connection(server, peer, app));
        // The whole request, then end of input: the server answers what it got and closes.
        let _ = client.write_all(request).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        served.await.expect("the connection task does not panic");
    });
});
