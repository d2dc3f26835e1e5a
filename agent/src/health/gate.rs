//! The drain budget at the node. Before a node leaves the load balancer because of its alerts
//! (`health: drain`, and `down` unless `hold_down: false`), the fleet's view from Alertmanager
//! must let it: the node claims its place ([`fleet::UNHEALTHY_ALERT`], `startsAt` when it began
//! to want out), waits until every earlier claim can have arrived (`propagation`), and goes
//! only while its rank ([`super::budget`]) is within `max_unhealthy`; otherwise it waits its
//! turn in the load balancer, degraded. A node that is out says so in its claim, and ranks
//! before every node still waiting: a late claim never puts it back in.
//!
//! [`decide`] is the whole decision, a pure function of the fleet's view, the budget and this
//! node's claim; [`Health::gate`] keeps the claim between evaluations and says what changed.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::{
    AlertHealth, Budget, DrainState, Health, Inner, Status,
    budget::{self, Candidate, Limit, Verdict},
    config::{DrainBudget, WhenUnreachable},
    fleet::{self, Fleet, FleetSetup, View},
};
use crate::{
    alerts::{Alert, State},
    store::Labels,
    wake::Wake,
};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long a claim waits for itself to show in Alertmanager's answers before the node decides
/// from the answers as they are (an Alertmanager that keeps refusing it must not hold it
/// forever).
pub const OWN_CLAIM_WAIT: Duration = Duration::from_secs(2);

/// When a node began to want out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Wall clock, milliseconds since the epoch: its `startsAt`, the order of the fleet.
    pub since_ms: i64,
    /// The same moment on this node's monotonic clock.
    pub at: Instant,
}

/// The budget's rules, from `health.drain_budget`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub node: String,
    pub limit: Limit,
    pub when_unreachable: WhenUnreachable,
    pub hold_down: bool,
    pub propagation: Duration,
}

/// What this node brings to a decision.
#[derive(Debug, Clone, Copy)]
pub struct Mine {
    /// What its alerts ask for: draining or down.
    pub wants: Status,
    pub claim: Claim,
    /// Out now (let out before, or drained by hand).
    pub out: bool,
    /// Drained by hand (`nodewatch drain`): never held, but counted.
    pub manual: bool,
}

/// What the budget says.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Out of the load balancer.
    Out(Option<Verdict>),
    /// No view can decide yet; the node stays as it is (in, or out). A new view is needed no
    /// earlier than `ask_at`.
    Wait { why: &'static str, ask_at: Instant },
    /// No Alertmanager answered: out alone (`when_unreachable: drain`, or already out), or in.
    Unreachable { out: bool },
    /// Held: in the load balancer, degraded, until its turn.
    Held(Verdict),
}

/// The decision for `mine` from `view` (the latest, if any), at `now`.
pub fn decide(rules: &Rules, mine: &Mine, view: Option<&View>, now: Instant) -> Decision {
    let never_held = mine.manual || (mine.wants == Status::Down && !rules.hold_down);
    // Only an answer asked for after the claim can hold it.
    let view = view.filter(|v| v.started >= mine.claim.at);
    let verdict = view
        .filter(|v| v.answered > 0)
        .map(|v| rank(rules, mine, v));
    if never_held {
        return Decision::Out(verdict);
    }
    let Some(view) = view else {
        return Decision::Wait {
            why: "asking Alertmanager for the drain budget",
            ask_at: now,
        };
    };
    if view.answered == 0 {
        return Decision::Unreachable {
            out: mine.out || rules.when_unreachable == WhenUnreachable::Drain,
        };
    }
    let verdict = verdict.expect("answered");
    if !mine.out {
        // Written before read: the claim must be in the answer, or the node that reads
        // later would not see this one.
        let visible = view.wanting.iter().any(|c| c.node == rules.node);
        if !visible && now.saturating_duration_since(mine.claim.at) < OWN_CLAIM_WAIT {
            return Decision::Wait {
                why: "waiting for Alertmanager to hold this node's claim",
                ask_at: now,
            };
        }
        // Every claim made before this one has arrived by then (the propagation bound), so
        // the rank below is final: only earlier claims come before it.
        let settled = mine.claim.at + rules.propagation;
        if view.started < settled {
            return Decision::Wait {
                why: "waiting for earlier claims to reach Alertmanager",
                ask_at: settled,
            };
        }
    }
    if verdict.within() {
        Decision::Out(Some(verdict))
    } else {
        Decision::Held(verdict)
    }
}

/// This node's place among the claims of `view`.
fn rank(rules: &Rules, mine: &Mine, view: &View) -> Verdict {
    let me = Candidate {
        node: rules.node.clone(),
        down: mine.wants == Status::Down,
        out: mine.out,
        since_ms: mine.claim.since_ms,
    };
    budget::verdict(
        &view.wanting,
        &view.members,
        &me,
        rules.limit,
        !rules.hold_down,
    )
}

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
            rules: Rules {
                node: setup.node.clone(),
                limit,
                when_unreachable: cfg.when_unreachable,
                hold_down: cfg.hold_down,
                propagation: cfg.propagation.0,
            },
            fleet: Fleet::new(setup, matches!(limit, Limit::Percent(_))),
            started_ms: now_ms(),
        });
    }

    /// Starts the task that answers the drain budget's queries, on the current runtime; each
    /// answer is applied at once, not at the next tick, and an answer that lets the node out
    /// or holds it back wakes the tick (`wake`), so its claim reaches Alertmanager at once.
    pub fn spawn_fleet(self: &Arc<Self>, wake: Wake) {
        if self.budget.is_none() {
            return;
        }
        let h = Arc::clone(self);
        tokio::spawn(async move {
            let fleet = &h.budget.as_ref().expect("checked above").fleet;
            loop {
                fleet.asked().await;
                fleet.query().await;
                let before = h.drain_phase();
                h.evaluate_again();
                if h.drain_phase() != before {
                    wake.now();
                }
            }
        });
    }

    /// What the fleet sees of this node's drain: out, held back, the budget exhausted.
    fn drain_phase(&self) -> (bool, bool, bool) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let d = &g.drain;
        (
            d.out,
            d.held.is_some(),
            d.verdict.as_ref().is_some_and(Verdict::exhausted),
        )
    }

    /// The alerts this node sends to Alertmanager only, with a drain budget: its member alert
    /// (always); while it wants out, its claim [`fleet::UNHEALTHY_ALERT`] with its `health`
    /// and whether it is out; while the budget holds it back, [`fleet::EXHAUSTED_ALERT`].
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
        let d = &g.drain;
        let Some(claim) = d.claim else {
            return out;
        };
        let health = if d.wants == Status::Down {
            "down"
        } else {
            "drain"
        };
        let (state, summary) = if d.out {
            (
                fleet::OUT,
                "nodewatch took this node out of the load balancer",
            )
        } else {
            (
                fleet::WAITING,
                "nodewatch wants this node out of the load balancer and waits for the drain budget",
            )
        };
        let mut reasons = g.alert_reasons.clone();
        if let Some(m) = &g.maintenance {
            reasons.push(format!("maintenance: {}", m.reason));
        }
        out.push(synthetic(
            fleet::UNHEALTHY_ALERT,
            &[
                ("health", health),
                (fleet::CLAIM_LABEL, state),
                ("severity", "warning"),
            ],
            format!("{summary}: {}", reasons.join("; ")),
            claim.since_ms,
        ));
        if let (false, Some(v)) = (d.out, d.verdict.as_ref().filter(|v| v.exhausted())) {
            out.push(synthetic(
                fleet::EXHAUSTED_ALERT,
                &[("severity", "critical")],
                format!(
                    "{} of {} nodes want out, budget {}: the drain budget holds the rest in the load balancer",
                    v.wanting, v.size, v.allowed
                ),
                d.held_since_ms.unwrap_or(claim.since_ms),
            ));
        }
        out
    }

    /// The level the alerts (`g.alert_level`) and manual maintenance ask for as the drain
    /// budget lets it be, and what to add to the reasons.
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
        // alerts are gone: it was only degraded (and recovers from that as usual), so the
        // others stop counting it at once.
        if g.alert_level >= Status::Draining
            && !g.drain.out
            && !firing.iter().any(|a| a.level >= Status::Draining)
        {
            g.alert_level = Status::Degraded;
            g.alert_reasons = AlertHealth::reasons(firing);
        }
        let manual = g.maintenance.is_some();
        let wants = g.alert_level.max(if manual {
            Status::Draining
        } else {
            Status::Healthy
        });
        let hold = g.state.min(Status::Degraded);
        let out = gate_drain(b, &mut g.drain, wants, manual, hold, from_tick, now);
        self.deferred.set(i64::from(g.drain.held.is_some()));
        self.exhausted.set(i64::from(
            g.drain.verdict.as_ref().is_some_and(Verdict::exhausted),
        ));
        out
    }
}

/// [`Health::gate`] for a node with a budget: keeps the claim, asks for views, and says each
/// change once in the log.
fn gate_drain(
    b: &Budget,
    d: &mut DrainState,
    wants: Status,
    manual: bool,
    hold: Status,
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
    d.wants = wants;
    let claim = *d.claim.get_or_insert(Claim {
        since_ms: now_ms(),
        at: now,
    });
    if from_tick {
        d.asked_again = false;
        b.fleet.request();
    }
    let mine = Mine {
        wants,
        claim,
        out: d.out,
        manual,
    };
    let view = b.fleet.latest();
    let decision = decide(&b.rules, &mine, view.as_deref(), now);
    let view = view.as_deref();
    if !matches!(decision, Decision::Unreachable { .. })
        && d.unreachable
        && let Some(v) = view.filter(|v| v.answered > 0)
    {
        d.unreachable = false;
        tracing::info!(
            answered = v.answered,
            asked = v.asked,
            "drain budget: Alertmanager answers again"
        );
    }
    match decision {
        Decision::Out(verdict) => {
            d.verdict = verdict;
            d.out = true;
            d.held = None;
            d.held_since_ms = None;
            (wants, Vec::new())
        }
        Decision::Wait { why, ask_at } if !d.out => {
            if ask_at > now {
                b.fleet.request_at(ask_at);
            } else if !from_tick && !d.asked_again {
                // The answer came without this node's claim: one more query this tick.
                d.asked_again = true;
                b.fleet.request();
            }
            (hold, vec![format!("drain pending: {why}")])
        }
        Decision::Wait { .. } => (wants, Vec::new()),
        Decision::Unreachable { out } => {
            let v = view.expect("an answer said nobody answered");
            if !d.unreachable {
                d.unreachable = true;
                let errors = v.errors.join("; ");
                if d.out {
                    tracing::warn!(asked = v.asked, %errors, "drain budget: no Alertmanager answered; this node, already out, stays out");
                } else if out {
                    tracing::warn!(asked = v.asked, %errors, "drain budget: no Alertmanager answered; this node decides alone (when_unreachable: drain)");
                } else {
                    tracing::warn!(asked = v.asked, %errors, "drain budget: no Alertmanager answered; this node stays in the load balancer (when_unreachable: stay)");
                }
            }
            d.verdict = None;
            if out {
                d.out = true;
                d.held = None;
                d.held_since_ms = None;
                return (
                    wants,
                    vec![format!(
                        "drain budget: no Alertmanager answered ({} asked); decided alone",
                        v.asked
                    )],
                );
            }
            hold_back(
                d,
                format!(
                    "drain deferred: no Alertmanager answered ({} asked) and when_unreachable is stay",
                    v.asked
                ),
            )
        }
        Decision::Held(v) => {
            if d.out {
                tracing::info!(
                    rank = v.rank + 1,
                    allowed = v.allowed,
                    "drain budget: more nodes are out than the budget lets out; this node, ranked later, goes back in"
                );
            }
            d.out = false;
            let reason = deferred_reason(b.rules.limit, &v);
            d.verdict = Some(v);
            hold_back(d, reason)
        }
    }
}

/// Why a node waits its turn: the budget, how many want out, and who goes first.
fn deferred_reason(limit: Limit, v: &Verdict) -> String {
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
    let limit = match limit {
        Limit::Nodes(_) => format!("max_unhealthy {limit}"),
        Limit::Percent(_) => format!(
            "max_unhealthy {limit} lets {} of {} nodes out",
            v.allowed, v.size
        ),
    };
    format!(
        "drain deferred: {limit}; {} want out and this node is number {} after {}",
        v.wanting,
        v.rank + 1,
        ahead.join(", ")
    )
}

/// Keeps the node in, degraded, and says so once.
fn hold_back(d: &mut DrainState, reason: String) -> (Status, Vec<String>) {
    if d.held.is_none() {
        tracing::warn!(%reason, "drain deferred: the node stays in the load balancer, degraded, until the drain budget lets it out");
        d.held_since_ms = Some(now_ms());
    }
    d.held = Some(reason.clone());
    (Status::Degraded, vec![reason])
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
