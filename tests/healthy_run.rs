//! No false positives: the agent with its default configuration and the embedded default rules
//! runs on this healthy host for a while, and no alert may fire, no webhook may be sent, and
//! the node must stay healthy. The test suite runs it for 45 s; `cargo xtask bench` sets
//! `NODEWATCH_HEALTHY_SECS=600` for the 10-minute run and reads the `HEALTHY {json}` line.

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{Agent, TempDir, have_root, http_get, sample, scoreboard::webhook_receiver};

#[test]
fn default_rules_fire_nothing_on_a_healthy_host() {
    if !have_root("healthy run") {
        return;
    }
    let secs: u64 = std::env::var("NODEWATCH_HEALTHY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    // Other test suites write Xid lines into the host's kernel log on purpose; the short run
    // leaves the Xid reader out so they cannot count here. The bench's run keeps it.
    let xid = if std::env::var_os("NODEWATCH_HEALTHY_ALL_PROBES").is_some() {
        ""
    } else {
        "probes:\n  gpu_xid: { enabled: false }\n"
    };
    let (hook_port, hooks) = webhook_receiver();
    let dir = TempDir::new("healthy");
    let agent = Agent::start(
        &dir,
        &format!(
            "{xid}spool_dir: {}\nnotifiers:\n  - {{ name: hook, kind: webhook, url: \"http://127.0.0.1:{hook_port}/\" }}\n",
            dir.0.join("spool").display()
        ),
    );
    let start = Instant::now();
    let mut unhealthy = Vec::new();
    let mut pending_seen = Vec::new();
    let mut ticks = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let metrics = agent.metrics();
        for l in metrics.lines() {
            if l.starts_with("nodewatch_alerts{")
                && l.contains("state=\"pending\"")
                && !l.ends_with(" 0")
            {
                pending_seen.push(l.to_string());
            }
        }
        if sample(&metrics, "nodewatch_node_healthy") != Some(1.0) {
            unhealthy.push(format!(
                "{:?}: {:?}",
                start.elapsed(),
                http_get(agent.addr, "/healthz")
            ));
        }
        ticks += 1;
        thread::sleep(Duration::from_secs(1));
    }
    let (_, alerts) = http_get(agent.addr, "/api/v1/alerts").expect("alerts");
    let fired = hooks.all_firing();
    pending_seen.sort();
    pending_seen.dedup();
    let v = serde_json::json!({
        "seconds": start.elapsed().as_secs_f64(),
        "scrapes": ticks,
        "fired": fired,
        "pending_seen": pending_seen,
        "unhealthy_samples": unhealthy.len(),
    });
    eprintln!("HEALTHY {v}");
    assert!(
        fired.is_empty() && !alerts.contains("\"firing\"") && unhealthy.is_empty(),
        "false positives on a healthy host: {v}\nalerts: {alerts}\nunhealthy: {unhealthy:?}\nlog:\n{}",
        agent.log_text()
    );
}
