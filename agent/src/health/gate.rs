//! The drain budget at the node. Before a node goes from healthy (or degraded) to draining
//! because of its alerts, the fleet's view from Alertmanager must let it: it ranks this node
//! among all that want out ([`super::budget`]) and lets it go only while its rank is within
//! `max_unhealthy`; otherwise the node waits its turn in the load balancer, degraded.
//! `health: down` is never held back. While it wants out, the node tells Alertmanager so
//! ([`fleet::UNHEALTHY_ALERT`]), which is what the other nodes count.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    AlertHealth, Budget, DrainState, Health, Inner, Status,
    budget::{self, Candidate, Limit},
    config::{DrainBudget, WhenUnreachable},
    fleet::{self, Fleet, FleetSetup},
};
use crate::{
    alerts::{Alert, State},
    store::Labels,
};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long a pending drain waits for its own alert to show in Alertmanager's answers before
/// it decides from the answers as they are.
const OWN_ALERT_WAIT: Duration = Duration::from_secs(2);

/// A firing alert of the agent's own making.
fn synthetic(name: &str, labels: &[(&str, &str)], summary: String, since_ms: i64) -> Alert {
    let mut pairs = vec![("alertname", name)];
    pairs.extend_from_slice(labels);
    Alert {
        labels: Labels::from_pairs(pairs),
        annotations: vec![("summary".into(), summary)],
        state: State::Firing,
        active_at: since_ms,
        fired_at: Some(since_ms),
        resolved_at: None,
        keep_firing_since: None,
        value: 1.0,
    }
}

impl Health {
    /// Holds drains to `cfg`, reading the fleet as `setup` says. Call before sharing the
    /// health; [`Health::spawn_fleet`] starts the queries.
    pub fn set_drain_budget(&mut self, cfg: &DrainBudget, setup: FleetSetup) {
        let limit = cfg.max_unhealthy.0;
        self.budget = Some(Budget {
            limit,
            when_unreachable: cfg.when_unreachable,
            fleet: Fleet::new(setup, matches!(limit, Limit::Percent(_))),
            started_ms: now_ms(),
        });
    }

    /// Starts the task that answers the drain budget's queries, on the current runtime; each
    /// answer is applied at once, not at the next tick.
    pub fn spawn_fleet(self: &Arc<Self>) {
        if self.budget.is_none() {
            return;
        }
        let h = Arc::clone(self);
        tokio::spawn(async move {
            let fleet = &h.budget.as_ref().expect("checked above").fleet;
            loop {
                fleet.asked().await;
                fleet.query().await;
                h.evaluate_again();
            }
        });
    }

    /// The alerts this node sends to Alertmanager only, with a drain budget: its member alert
    /// (always), and while it wants out, [`fleet::UNHEALTHY_ALERT`] with its `health`.
    pub fn fleet_alerts(&self) -> Vec<Alert> {
        let Some(b) = &self.budget else {
            return Vec::new();
        };
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = vec![synthetic(
            fleet::MEMBER_ALERT,
            &[("severity", "none")],
            "nodewatch runs on this node with a drain budget (one such alert per node is the fleet's size)".into(),
            b.started_ms,
        )];
        if g.alert_level >= Status::Draining
            && let Some(since) = g.drain.out_since_ms
        {
            let health = if g.alert_level == Status::Down {
                "down"
            } else {
                "drain"
            };
            let summary = format!(
                "nodewatch wants this node out of the load balancer (it drains when the drain budget lets it): {}",
                g.alert_reasons.join("; ")
            );
            out.push(synthetic(
                fleet::UNHEALTHY_ALERT,
                &[("health", health), ("severity", "warning")],
                summary,
                since,
            ));
        }
        out
    }

    /// The level the alerts ask for (`g.alert_level`) as the drain budget lets it be, and
    /// what to add to the reasons.
    pub(super) fn gate(
        &self,
        g: &mut Inner,
        firing: &[AlertHealth],
        from_tick: bool,
        now: Instant,
    ) -> (Status, Vec<String>) {
        let Some(b) = &self.budget else {
            return (g.alert_level, Vec::new());
        };
        // A node that waited and never left has nothing to recover from once its drain
        // alerts are gone: it is only degraded, so the others stop counting it at once.
        if g.alert_level == Status::Draining
            && !g.drain.allowed
            && g.drain.pending_since.is_some()
            && !firing.iter().any(|a| a.level >= Status::Draining)
        {
            g.alert_level = Status::Degraded;
            g.alert_reasons = AlertHealth::reasons(firing);
        }
        let wants = g.alert_level;
        let hold = g.state.min(Status::Degraded);
        let d = &mut g.drain;
        let out = gate_drain(b, d, wants, hold, firing, from_tick, now);
        self.deferred.set(i64::from(d.deferred.is_some()));
        out
    }
}

/// [`Health::gate`] for a node with a budget.
fn gate_drain(
    b: &Budget,
    d: &mut DrainState,
    wants: Status,
    hold: Status,
    firing: &[AlertHealth],
    from_tick: bool,
    now: Instant,
) -> (Status, Vec<String>) {
    if wants < Status::Draining {
        *d = DrainState {
            unreachable: d.unreachable,
            ..DrainState::default()
        };
        return (wants, Vec::new());
    }
    if d.out_since_ms.is_none() {
        let earliest = firing
            .iter()
            .filter(|a| a.level >= Status::Draining)
            .map(|a| a.since_ms)
            .min();
        d.out_since_ms = Some(earliest.unwrap_or_else(now_ms));
    }
    if wants == Status::Down {
        // Never held back (it counts against the budget through its alerts); once it is
        // only draining, it keeps its place until a view says otherwise.
        d.allowed = true;
        d.deferred = None;
        d.pending_since = None;
        return (Status::Down, Vec::new());
    }
    let since = *d.pending_since.get_or_insert(now);
    if from_tick {
        d.asked_again = false;
        b.fleet.request();
    }
    let Some(view) = b.fleet.latest().filter(|v| v.started >= since) else {
        if d.allowed {
            return (Status::Draining, Vec::new());
        }
        // The first answer comes within the timeout; until then nothing changes.
        return (
            hold,
            vec!["drain pending: asking Alertmanager for the drain budget".into()],
        );
    };
    if view.answered == 0 {
        let decide_alone = d.allowed || b.when_unreachable == WhenUnreachable::Drain;
        if !d.unreachable {
            d.unreachable = true;
            let errors = view.errors.join("; ");
            if d.allowed {
                tracing::warn!(asked = view.asked, %errors, "drain budget: no Alertmanager answered; this node, already out, stays out");
            } else if decide_alone {
                tracing::warn!(asked = view.asked, %errors, "drain budget: no Alertmanager answered; this node decides alone (when_unreachable: drain)");
            } else {
                tracing::warn!(asked = view.asked, %errors, "drain budget: no Alertmanager answered; this node stays in the load balancer (when_unreachable: stay)");
            }
        }
        if decide_alone {
            d.allowed = true;
            d.deferred = None;
            return (
                Status::Draining,
                vec![format!(
                    "drain budget: no Alertmanager answered ({} asked); decided alone",
                    view.asked
                )],
            );
        }
        return defer(
            d,
            format!(
                "drain deferred: no Alertmanager answered ({} asked) and when_unreachable is stay",
                view.asked
            ),
        );
    }
    if d.unreachable {
        d.unreachable = false;
        tracing::info!(
            answered = view.answered,
            asked = view.asked,
            "drain budget: Alertmanager answers again"
        );
    }
    let me = Candidate {
        node: b.fleet.setup.node.clone(),
        down: false,
        since_ms: d.out_since_ms.unwrap_or_default(),
    };
    // Written before read: a new drain is let out only by a view that already holds this
    // node's own alert, so of two nodes deciding at once the later reader sees both. (An
    // Alertmanager that keeps refusing the alert delays the decision by OWN_ALERT_WAIT.)
    if !d.allowed
        && !view.wanting.iter().any(|c| c.node == me.node)
        && now.saturating_duration_since(since) < OWN_ALERT_WAIT
    {
        if !from_tick && !d.asked_again {
            d.asked_again = true;
            b.fleet.request();
        }
        return (
            hold,
            vec!["drain pending: waiting for Alertmanager to hold this node's alert".into()],
        );
    }
    let v = budget::verdict(&view.wanting, &view.members, &me, b.limit);
    if v.within() {
        d.allowed = true;
        d.deferred = None;
        return (Status::Draining, Vec::new());
    }
    d.allowed = false;
    let mut ahead: Vec<String> = v
        .ahead
        .iter()
        .take(5)
        .map(|(n, down)| match down {
            true => format!("{n} (down)"),
            false => n.clone(),
        })
        .collect();
    if v.ahead.len() > 5 {
        ahead.push(format!("{} more", v.ahead.len() - 5));
    }
    let limit = match b.limit {
        Limit::Nodes(_) => format!("max_unhealthy {}", b.limit),
        Limit::Percent(_) => format!(
            "max_unhealthy {} lets {} of {} nodes out",
            b.limit, v.allowed, v.size
        ),
    };
    defer(
        d,
        format!(
            "drain deferred: {limit}; {} want out and this node is number {} after {}",
            v.wanting,
            v.rank + 1,
            ahead.join(", ")
        ),
    )
}

/// Keeps the node in, degraded, and says so once.
fn defer(d: &mut DrainState, reason: String) -> (Status, Vec<String>) {
    if d.deferred.is_none() {
        tracing::warn!(%reason, "drain deferred: the node stays in the load balancer, degraded, until the drain budget lets it out");
    }
    d.deferred = Some(reason.clone());
    (Status::Degraded, vec![reason])
}
