//! The health state machine, driven with explicit times.

use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

use super::*;

fn alert(name: &str, level: State) -> AlertHealth {
    AlertHealth {
        alertname: name.into(),
        level,
        summary: format!("{name} fired"),
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
    let h = Health::new(Duration::from_secs(10), &dir, &mut Registry::default());
    let t0 = Instant::now();
    assert_eq!(h.snapshot().status, State::Healthy);
    h.evaluate(&[alert("A", State::Draining), alert("B", State::Down)], t0);
    let s = h.snapshot();
    assert_eq!(s.status, State::Down, "worse is immediate");
    assert_eq!(s.reasons.len(), 2, "{:?}", s.reasons);
    // The down alert resolves: still down until it has been gone for recover_after.
    h.evaluate(&[alert("A", State::Draining)], t0 + Duration::from_secs(1));
    assert_eq!(h.snapshot().status, State::Down);
    assert!(
        h.snapshot()
            .reasons
            .iter()
            .any(|r| r.starts_with("recovering"))
    );
    h.evaluate(&[alert("A", State::Draining)], t0 + Duration::from_secs(11));
    assert_eq!(h.snapshot().status, State::Draining);
    // A flap resets the recovery.
    h.evaluate(&[], t0 + Duration::from_secs(12));
    h.evaluate(&[alert("A", State::Draining)], t0 + Duration::from_secs(15));
    h.evaluate(&[], t0 + Duration::from_secs(16));
    h.evaluate(&[], t0 + Duration::from_secs(25));
    assert_eq!(
        h.snapshot().status,
        State::Draining,
        "9 s after the flap is not enough"
    );
    h.evaluate(&[], t0 + Duration::from_secs(26));
    assert_eq!(h.snapshot().status, State::Healthy);
    assert!(h.snapshot().reasons.is_empty());
}

#[test]
fn unhealthy_time_and_transitions_are_counted() {
    let dir = temp("count");
    let h = Health::new(Duration::ZERO, &dir, &mut Registry::default());
    let t0 = Instant::now();
    h.evaluate(&[], t0);
    h.evaluate(&[alert("A", State::Down)], t0 + Duration::from_secs(1));
    h.evaluate(&[alert("A", State::Down)], t0 + Duration::from_secs(3));
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
    let h = Health::new(Duration::from_secs(60), &dir, &mut Registry::default());
    h.drain("kernel upgrade").unwrap();
    let s = h.snapshot();
    assert_eq!(s.status, State::Draining);
    assert_eq!(s.reasons, vec!["maintenance: kernel upgrade".to_string()]);
    drop(h);
    let h = Health::new(Duration::from_secs(60), &dir, &mut Registry::default());
    assert_eq!(
        h.snapshot().status,
        State::Draining,
        "restored from spool_dir"
    );
    assert_eq!(h.snapshot().maintenance.unwrap().reason, "kernel upgrade");
    // Undrain is immediate (no hysteresis for the operator's own drain)...
    h.undrain().unwrap();
    assert_eq!(h.snapshot().status, State::Healthy);
    // ...but a firing alert still keeps the node out.
    h.evaluate(&[alert("A", State::Down)], Instant::now());
    h.drain("x").unwrap();
    h.undrain().unwrap();
    assert_eq!(h.snapshot().status, State::Down);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn labels_map_to_states() {
    assert_eq!(State::from_label("drain"), Some(State::Draining));
    assert_eq!(State::from_label("down"), Some(State::Down));
    assert_eq!(State::from_label("page"), None);
}
