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

/// A health with `drain_budget: { max_unhealthy: 1, <extra> }` as node `n2`, claims
/// propagating at once (the propagation wait is [`super::gate::decide`]'s, tested there).
fn budgeted(tag: &str, extra: &str) -> Health {
    let mut h = Health::new(&cfg(Duration::ZERO), &temp(tag), &mut Store::new());
    let budget: config::DrainBudget =
        serde_saphyr::from_str(&format!("{{ max_unhealthy: 1, propagation: 0s, {extra} }}"))
            .unwrap();
    h.set_drain_budget(
        &budget,
        fleet::FleetSetup {
            node: "n2".into(),
            scope: Vec::new(),
            alertmanagers: Vec::new(),
            timeout: Duration::from_secs(1),
        },
    );
    h
}

/// This node's claim time, as it sends it.
fn claim_ms(h: &Health) -> i64 {
    h.inner
        .lock()
        .unwrap()
        .drain
        .claim
        .expect("a claim")
        .since_ms
}

/// Answers the fleet query: these nodes want out (`(node, down, out, since_ms)`).
fn view(h: &Health, answered: usize, wanting: &[(&str, bool, bool, i64)]) {
    h.budget.as_ref().unwrap().fleet.store(fleet::View {
        started: Instant::now(),
        asked: 2,
        answered,
        wanting: wanting
            .iter()
            .map(|(n, down, out, since_ms)| budget::Candidate {
                node: n.to_string(),
                down: *down,
                out: *out,
                since_ms: *since_ms,
            })
            .collect(),
        members: Default::default(),
        errors: Vec::new(),
    });
}

#[test]
fn drain_and_down_wait_for_the_budget() {
    let h = budgeted("budget", "when_unreachable: drain");
    let a = alert("Lost", Status::Draining);
    assert_eq!(h.snapshot().status, Status::Healthy);
    // Until the fleet answers, nothing changes.
    h.evaluate(std::slice::from_ref(&a), Instant::now());
    let s = h.snapshot();
    assert_eq!(s.status, Status::Healthy);
    assert!(
        s.reasons.iter().any(|r| r.starts_with("drain pending")),
        "{s:?}"
    );
    let mine = claim_ms(&h);
    // n1 is out: the budget of one is spent, n2 stays in, degraded.
    view(
        &h,
        2,
        &[("n1", false, true, mine + 10), ("n2", false, false, mine)],
    );
    h.evaluate_again();
    let s = h.snapshot();
    assert_eq!((s.status, h.deferred.get()), (Status::Degraded, 1), "{s:?}");
    assert_eq!(h.exhausted.get(), 1);
    assert!(
        s.reasons.iter().any(|r| r.starts_with(
            "drain deferred: max_unhealthy 1; 2 want out and this node is number 2 after n1"
        )),
        "{:?}",
        s.reasons
    );
    // Its claim (waiting) and the budget's trip signal go to Alertmanager.
    let own = h.fleet_alerts();
    let names: Vec<_> = own.iter().map(|a| a.name().to_string()).collect();
    assert_eq!(
        names,
        [
            fleet::MEMBER_ALERT,
            fleet::UNHEALTHY_ALERT,
            fleet::EXHAUSTED_ALERT
        ]
    );
    assert_eq!(
        (
            own[1].label("health"),
            own[1].label(fleet::CLAIM_LABEL),
            own[1].fired_at
        ),
        (Some("drain"), Some(fleet::WAITING), Some(mine))
    );
    assert_eq!(own[2].label("severity"), Some("critical"));
    assert_eq!(
        own[2].annotation("summary"),
        Some(
            "2 of 2 nodes want out, budget 1: the drain budget holds the rest in the load balancer"
        )
    );
    // n1 is back: n2 drains, and says it is out.
    view(&h, 2, &[("n2", false, false, mine)]);
    h.evaluate(std::slice::from_ref(&a), Instant::now());
    assert_eq!(
        (h.snapshot().status, h.deferred.get(), h.exhausted.get()),
        (Status::Draining, 0, 0)
    );
    let own = h.fleet_alerts();
    assert_eq!(own.len(), 2);
    assert_eq!(own[1].label(fleet::CLAIM_LABEL), Some(fleet::OUT));
    // A later claim, even a down one, does not take its place.
    view(
        &h,
        2,
        &[("n2", false, true, mine), ("n9", true, false, mine - 5_000)],
    );
    h.evaluate_again();
    assert_eq!(h.snapshot().status, Status::Draining);
    // Its own down alert: out as down, the same claim.
    h.evaluate(&[a.clone(), alert("Gone", Status::Down)], Instant::now());
    assert_eq!((h.snapshot().status, h.deferred.get()), (Status::Down, 0));
    assert_eq!(h.fleet_alerts()[1].label("health"), Some("down"));
    assert_eq!(claim_ms(&h), mine);
    // Nothing fires: back in at once (recover_after 0s), nothing told but membership.
    h.evaluate(&[], Instant::now());
    assert_eq!(h.snapshot().status, Status::Healthy);
    assert_eq!(h.fleet_alerts().len(), 1);

    // A down alert is held like a drain: the node stays in, degraded.
    h.evaluate(&[alert("Gone", Status::Down)], Instant::now());
    let mine = claim_ms(&h);
    view(
        &h,
        2,
        &[("n1", false, true, mine - 1), ("n2", true, false, mine)],
    );
    h.evaluate_again();
    assert_eq!(
        (h.snapshot().status, h.deferred.get()),
        (Status::Degraded, 1)
    );
}

#[test]
fn with_hold_down_false_down_is_never_held_and_takes_a_place() {
    let h = budgeted("budget-down", "hold_down: false");
    h.evaluate(&[alert("Gone", Status::Down)], Instant::now());
    assert_eq!(
        h.snapshot().status,
        Status::Down,
        "never held, not even asked"
    );
    // A drain alert elsewhere: the down node ranks first, the drained node goes back in.
    let h = budgeted("budget-down2", "hold_down: false");
    let a = alert("Lost", Status::Draining);
    h.evaluate(std::slice::from_ref(&a), Instant::now());
    let mine = claim_ms(&h);
    view(&h, 2, &[("n2", false, false, mine)]);
    h.evaluate_again();
    assert_eq!(h.snapshot().status, Status::Draining);
    view(
        &h,
        2,
        &[("n2", false, true, mine), ("n9", true, true, mine + 5_000)],
    );
    h.evaluate_again();
    assert_eq!(h.snapshot().status, Status::Degraded);
}

#[test]
fn a_manual_drain_is_never_held_and_counts() {
    let h = budgeted("budget-manual", "");
    // The budget is spent by another node; the operator drains this one anyway.
    view(&h, 2, &[("n1", false, true, 0)]);
    h.drain("disk swap").unwrap();
    assert_eq!(h.snapshot().status, Status::Draining);
    let own = h.fleet_alerts();
    assert_eq!(own.len(), 2, "no trip signal: nothing is held");
    assert_eq!(
        (own[1].label("health"), own[1].label(fleet::CLAIM_LABEL)),
        (Some("drain"), Some(fleet::OUT))
    );
    assert!(
        own[1]
            .annotation("summary")
            .unwrap()
            .contains("maintenance: disk swap")
    );
    h.undrain().unwrap();
    assert_eq!(h.snapshot().status, Status::Healthy);
    assert_eq!(h.fleet_alerts().len(), 1);
    let _ = std::fs::remove_dir_all(temp("budget-manual"));
}

#[test]
fn a_waiting_node_whose_alert_resolves_has_nothing_to_recover_from() {
    let mut h = budgeted("budget-resolve", "when_unreachable: drain");
    h.recover_after = Duration::from_secs(60);
    let a = alert("Lost", Status::Draining);
    h.evaluate(std::slice::from_ref(&a), Instant::now());
    let mine = claim_ms(&h);
    view(
        &h,
        2,
        &[("n1", false, true, mine - 5), ("n2", false, false, mine)],
    );
    h.evaluate_again();
    assert_eq!(h.snapshot().status, Status::Degraded);
    h.evaluate(&[], Instant::now());
    assert_eq!(h.deferred.get(), 0);
    assert_eq!(
        h.fleet_alerts().len(),
        1,
        "the others stop counting it at once"
    );
    assert_eq!(
        h.snapshot().status,
        Status::Degraded,
        "degraded recovers as usual"
    );
}

#[test]
fn a_drain_is_let_out_only_by_a_view_that_holds_its_own_claim() {
    let h = budgeted("budget-own", "when_unreachable: drain");
    let start = Instant::now();
    let a = alert("Lost", Status::Draining);
    h.evaluate(std::slice::from_ref(&a), start);
    // Read before this node's claim reached Alertmanager: it could not see the others that
    // posted at the same moment either, so it does not decide yet.
    view(&h, 2, &[]);
    h.evaluate_again();
    let s = h.snapshot();
    assert_eq!(s.status, Status::Healthy, "{s:?}");
    assert!(
        s.reasons
            .iter()
            .any(|r| r.contains("waiting for Alertmanager to hold this node's claim")),
        "{s:?}"
    );
    // The next answer holds it, and another node that claimed a moment earlier.
    let mine = claim_ms(&h);
    view(
        &h,
        2,
        &[("n1", false, false, mine - 5), ("n2", false, false, mine)],
    );
    h.evaluate_again();
    assert_eq!(
        (h.snapshot().status, h.deferred.get()),
        (Status::Degraded, 1)
    );

    // An Alertmanager that never shows the node's claim delays the decision by 2 s, no more.
    let h = budgeted("budget-own-late", "when_unreachable: drain");
    h.evaluate(std::slice::from_ref(&a), start);
    view(&h, 2, &[]);
    h.evaluate(std::slice::from_ref(&a), start + Duration::from_secs(1));
    assert_eq!(h.snapshot().status, Status::Healthy);
    view(&h, 2, &[]);
    h.evaluate(std::slice::from_ref(&a), start + Duration::from_secs(3));
    assert_eq!(h.snapshot().status, Status::Draining);
}

#[test]
fn without_an_answer_the_node_decides_as_configured() {
    for (when, want) in [("drain", Status::Draining), ("stay", Status::Degraded)] {
        let h = budgeted(
            &format!("budget-{when}"),
            &format!("when_unreachable: {when}"),
        );
        h.evaluate(&[alert("Lost", Status::Draining)], Instant::now());
        view(&h, 0, &[]);
        h.evaluate_again();
        let s = h.snapshot();
        assert_eq!(s.status, want, "{when}: {s:?}");
        assert!(
            s.reasons
                .iter()
                .any(|r| r.contains("no Alertmanager answered (2 asked)")),
            "{when}: {s:?}"
        );
    }
}
