//! The health state machine, driven with explicit times.

use std::time::{Duration, Instant};

use super::*;
use crate::{alerts::State, store::Labels};

/// A firing alert whose `health` label asks for `level`.
fn alert(name: &str, level: Status) -> Alert {
    let health = match level {
        Status::Down => "down",
        Status::Degraded => "degrade",
        _ => "drain",
    };
    Alert {
        labels: Labels::from_pairs([("alertname", name), ("health", health)]),
        annotations: vec![("summary".into(), format!("{name} fired"))],
        state: State::Firing,
        active_at: 0,
        fired_at: Some(0),
        resolved_at: None,
        keep_firing_since: None,
        value: 1.0,
    }
}

/// The health config with this `recover_after` and the default degraded weight.
fn cfg(recover_after: Duration) -> HealthConfig {
    HealthConfig {
        recover_after: crate::yaml::HumanDuration(recover_after),
        ..HealthConfig::default()
    }
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nw-health-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn worst_alert_wins_at_once_and_recovery_waits() {
    let dir = temp("hyst");
    let h = Health::new(&cfg(Duration::from_secs(10)), &dir, &mut Store::new());
    let t0 = Instant::now();
    assert_eq!(h.snapshot().status, Status::Healthy);
    h.evaluate(
        &[alert("A", Status::Draining), alert("B", Status::Down)],
        t0,
    );
    let s = h.snapshot();
    assert_eq!(s.status, Status::Down, "worse is immediate");
    assert_eq!(s.reasons.len(), 2, "{:?}", s.reasons);
    // The down alert resolves: still down until it has been gone for recover_after.
    h.evaluate(&[alert("A", Status::Draining)], t0 + Duration::from_secs(1));
    assert_eq!(h.snapshot().status, Status::Down);
    assert!(
        h.snapshot()
            .reasons
            .iter()
            .any(|r| r.starts_with("recovering"))
    );
    h.evaluate(
        &[alert("A", Status::Draining)],
        t0 + Duration::from_secs(11),
    );
    assert_eq!(h.snapshot().status, Status::Draining);
    // A flap resets the recovery.
    h.evaluate(&[], t0 + Duration::from_secs(12));
    h.evaluate(
        &[alert("A", Status::Draining)],
        t0 + Duration::from_secs(15),
    );
    h.evaluate(&[], t0 + Duration::from_secs(16));
    h.evaluate(&[], t0 + Duration::from_secs(25));
    assert_eq!(
        h.snapshot().status,
        Status::Draining,
        "9 s after the flap is not enough"
    );
    h.evaluate(&[], t0 + Duration::from_secs(26));
    assert_eq!(h.snapshot().status, Status::Healthy);
    assert!(h.snapshot().reasons.is_empty());
}

#[test]
fn unhealthy_time_and_transitions_are_counted() {
    let dir = temp("count");
    let h = Health::new(&cfg(Duration::ZERO), &dir, &mut Store::new());
    let t0 = Instant::now();
    h.evaluate(&[], t0);
    h.evaluate(&[alert("A", Status::Down)], t0 + Duration::from_secs(1));
    h.evaluate(&[alert("A", Status::Down)], t0 + Duration::from_secs(3));
    h.evaluate(&[], t0 + Duration::from_secs(4));
    h.evaluate(&[], t0 + Duration::from_secs(9));
    assert_eq!(h.unhealthy_seconds.get(), 3.0);
    let entered = |s: &str| {
        h.transitions
            .get_or_create(&StateLabels { state: s.into() })
            .get()
    };
    assert_eq!((entered("down"), entered("healthy")), (1, 1));
    assert_eq!(h.healthy.get(), 1);
}

#[test]
fn manual_drain_is_immediate_and_survives_a_restart() {
    let dir = temp("manual");
    let h = Health::new(&cfg(Duration::from_secs(60)), &dir, &mut Store::new());
    h.drain("kernel upgrade").unwrap();
    let s = h.snapshot();
    assert_eq!(s.status, Status::Draining);
    assert_eq!(s.reasons, vec!["maintenance: kernel upgrade".to_string()]);
    drop(h);
    let h = Health::new(&cfg(Duration::from_secs(60)), &dir, &mut Store::new());
    assert_eq!(
        h.snapshot().status,
        Status::Draining,
        "restored from spool_dir"
    );
    assert_eq!(h.snapshot().maintenance.unwrap().reason, "kernel upgrade");
    // Undrain is immediate (no hysteresis for the operator's own drain)...
    h.undrain().unwrap();
    assert_eq!(h.snapshot().status, Status::Healthy);
    // ...but a firing alert still keeps the node out.
    h.evaluate(&[alert("A", Status::Down)], Instant::now());
    h.drain("x").unwrap();
    h.undrain().unwrap();
    assert_eq!(h.snapshot().status, Status::Down);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn labels_map_to_states() {
    assert_eq!(Status::from_label("drain"), Some(Status::Draining));
    assert_eq!(Status::from_label("down"), Some(Status::Down));
    assert_eq!(Status::from_label("degrade"), Some(Status::Degraded));
    assert!(Status::Healthy < Status::Degraded && Status::Degraded < Status::Draining);
    assert_eq!(Status::from_label("page"), None);
}

#[test]
fn degraded_sits_between_healthy_and_draining() {
    let dir = temp("degraded");
    let mut store = Store::new();
    let h = Health::new(&cfg(Duration::from_secs(10)), &dir, &mut store);
    let t0 = Instant::now();
    h.evaluate(&[alert("Hot", Status::Degraded)], t0);
    let s = h.snapshot();
    assert_eq!(
        (s.status, s.weight),
        (Status::Degraded, 50),
        "worse is immediate"
    );
    assert_eq!(
        s.reasons,
        vec!["alert Hot (degraded): Hot fired".to_string()]
    );
    assert_eq!((h.healthy.get(), h.degraded.get()), (1, 1), "still serving");
    // A drain alert on top wins; when it resolves the node is degraded again after the wait.
    h.evaluate(
        &[alert("Hot", Status::Degraded), alert("Q", Status::Draining)],
        t0 + Duration::from_secs(1),
    );
    assert_eq!(h.snapshot().status, Status::Draining);
    assert_eq!(h.snapshot().weight, 0);
    assert_eq!((h.healthy.get(), h.degraded.get()), (0, 0));
    h.evaluate(
        &[alert("Hot", Status::Degraded)],
        t0 + Duration::from_secs(2),
    );
    assert_eq!(h.snapshot().status, Status::Draining, "recovery waits");
    h.evaluate(
        &[alert("Hot", Status::Degraded)],
        t0 + Duration::from_secs(12),
    );
    assert_eq!(h.snapshot().status, Status::Degraded);
    // Recovering from degraded waits recover_after too.
    h.evaluate(&[], t0 + Duration::from_secs(13));
    let s = h.snapshot();
    assert_eq!(s.status, Status::Degraded);
    assert!(
        s.reasons
            .iter()
            .any(|r| r.starts_with("recovering: 10s more")),
        "{:?}",
        s.reasons
    );
    h.evaluate(&[], t0 + Duration::from_secs(23));
    let s = h.snapshot();
    assert_eq!((s.status, s.weight), (Status::Healthy, 100));
    assert_eq!((h.healthy.get(), h.degraded.get()), (1, 0));
    // Degraded time is not time out of the load balancer.
    assert_eq!(h.unhealthy_seconds.get(), 11.0);
    let entered = |s: &str| {
        h.transitions
            .get_or_create(&StateLabels { state: s.into() })
            .get()
    };
    assert_eq!(
        (entered("degraded"), entered("draining"), entered("healthy")),
        (2, 1, 1)
    );
    let text = store.encode_prometheus();
    assert!(text.contains("nodewatch_node_degraded 0"), "{text}");
}

#[test]
fn manual_drain_wins_over_degraded() {
    let dir = temp("degraded-manual");
    let h = Health::new(&cfg(Duration::from_secs(60)), &dir, &mut Store::new());
    h.evaluate(&[alert("Hot", Status::Degraded)], Instant::now());
    h.drain("swap GPU").unwrap();
    assert_eq!(h.snapshot().status, Status::Draining);
    h.undrain().unwrap();
    let s = h.snapshot();
    assert_eq!(
        (s.status, s.weight),
        (Status::Degraded, 50),
        "the alert still fires"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
