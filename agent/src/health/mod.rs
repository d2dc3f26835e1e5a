//! Node health for the load balancer: healthy, degraded (in rotation at a lower weight),
//! draining or down, from the `health` labels of firing alerts (the worst wins) and from
//! manual maintenance. Getting worse is immediate; recovering from an alert waits
//! `recover_after`, so a flapping signal does not flap the node. Manual maintenance is kept
//! in `spool_dir` and survives a restart.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, atomic::AtomicU64},
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use serde::{Deserialize, Serialize};

use self::config::HealthConfig;
use crate::{
    alerts::Alert,
    files::write_atomic,
    store::{Family, Store, label_set, names},
};

pub mod budget;
pub mod config;
pub mod fleet;
mod gate;
pub mod haproxy;

/// The node's health, ordered from best to worst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Healthy,
    /// Still serving, at `health.degraded_weight` of its weight.
    Degraded,
    Draining,
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Draining => "draining",
            Status::Down => "down",
        }
    }

    /// The level a `health` label asks for: `degrade`, `drain` or `down`; anything else is
    /// ignored.
    pub fn from_label(v: &str) -> Option<Self> {
        match v {
            "degrade" | "degraded" => Some(Status::Degraded),
            "drain" | "draining" => Some(Status::Draining),
            "down" => Some(Status::Down),
            _ => None,
        }
    }
}

/// What a firing alert asks of the node's health (its `health` label).
#[derive(Debug, Clone, PartialEq)]
struct AlertHealth {
    alertname: String,
    level: Status,
    summary: String,
    /// When it started firing, in milliseconds since the epoch.
    since_ms: i64,
}

impl AlertHealth {
    /// The firing alerts that ask for a health state (`health: degrade`, `drain` or `down`).
    fn of(firing: &[Alert]) -> Vec<Self> {
        firing
            .iter()
            .filter(|a| a.state == crate::alerts::State::Firing)
            .filter_map(|a| {
                Some(Self {
                    alertname: a.name().to_string(),
                    level: Status::from_label(a.label("health")?)?,
                    summary: a.annotation("summary").unwrap_or_default().to_string(),
                    since_ms: a.fired_at.unwrap_or(a.active_at),
                })
            })
            .collect()
    }

    /// Why these alerts make the node worse than healthy, one line each.
    fn reasons(firing: &[Self]) -> Vec<String> {
        firing
            .iter()
            .filter(|a| a.level > Status::Healthy)
            .map(|a| match a.summary.is_empty() {
                true => format!("alert {} ({})", a.alertname, a.level.as_str()),
                false => format!(
                    "alert {} ({}): {}",
                    a.alertname,
                    a.level.as_str(),
                    a.summary
                ),
            })
            .collect()
    }
}

/// `health.drain_budget` with the fleet's view.
struct Budget {
    rules: gate::Rules,
    fleet: fleet::Fleet,
    /// When the agent started: its member alert's `startsAt`.
    started_ms: i64,
}

/// Where a drain stands, between two decisions ([`gate::decide`]).
#[derive(Debug, Default)]
struct DrainState {
    /// When the node began to want out: its place in the fleet's ranking, kept until it is
    /// back in.
    claim: Option<gate::Claim>,
    /// What it wants: draining or down.
    wants: Status,
    /// Out (let out by the budget, deciding alone, or by hand): it stays out until a view
    /// ranks it past the budget.
    out: bool,
    /// Why it is held back, while it is.
    held: Option<String>,
    /// Since when it is held back, in milliseconds since the epoch.
    held_since_ms: Option<i64>,
    /// The last ranking of this node among the fleet's claims.
    verdict: Option<budget::Verdict>,
    /// No Alertmanager answered the last query looked at (said once).
    unreachable: bool,
    /// This tick's one extra query, asked when a view did not hold this node's own claim yet.
    asked_again: bool,
}

/// Manual maintenance, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Maintenance {
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub since: u64,
}

/// What `/healthz` and `nodewatch status` show.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub status: Status,
    /// The share of its configured weight the load balancer should give the node, in percent:
    /// 100 healthy, `health.degraded_weight` degraded, 0 draining or down.
    pub weight: u8,
    pub reasons: Vec<String>,
    /// Seconds since the Unix epoch when the node entered this state.
    pub since: u64,
    pub maintenance: Option<Maintenance>,
}

label_set! {
    /// Labels `{state}`.
    struct StateLabels { state }
}

struct Inner {
    state: Status,
    since: u64,
    reasons: Vec<String>,
    /// The alert-driven level in force (held during recovery) and its reasons.
    alert_level: Status,
    alert_reasons: Vec<String>,
    recovering_since: Option<Instant>,
    maintenance: Option<Maintenance>,
    last_eval: Option<Instant>,
    last_firing: Vec<AlertHealth>,
    /// The drain budget's part (idle without a budget).
    drain: DrainState,
}

/// The node's health, shared by the tick, the HTTP API and the HAProxy listener.
pub struct Health {
    inner: Mutex<Inner>,
    recover_after: Duration,
    degraded_weight: u8,
    maintenance_file: PathBuf,
    healthy: Gauge,
    degraded: Gauge,
    transitions: Family<StateLabels, Counter>,
    unhealthy_seconds: Counter<f64, AtomicU64>,
    deferred: Gauge,
    exhausted: Gauge,
    /// `health.drain_budget` and the fleet's view, when configured.
    budget: Option<Budget>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Health {
    /// Registers the health metrics and loads any persisted maintenance from `spool_dir`.
    pub fn new(cfg: &HealthConfig, spool_dir: &Path, store: &mut Store) -> Self {
        let maintenance_file = spool_dir.join("maintenance.json");
        let maintenance = std::fs::read(&maintenance_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<Maintenance>(&b).ok());
        if let Some(m) = &maintenance {
            tracing::info!(reason = %m.reason, "manual drain restored from the previous run");
        }
        let h = Self {
            inner: Mutex::new(Inner {
                state: Status::Healthy,
                since: unix_now(),
                reasons: Vec::new(),
                alert_level: Status::Healthy,
                alert_reasons: Vec::new(),
                recovering_since: None,
                maintenance,
                last_eval: None,
                last_firing: Vec::new(),
                drain: DrainState::default(),
            }),
            recover_after: cfg.recover_after.0,
            degraded_weight: cfg.degraded_weight.0,
            maintenance_file,
            healthy: Gauge::default(),
            degraded: Gauge::default(),
            transitions: Family::default(),
            unhealthy_seconds: Counter::default(),
            deferred: Gauge::default(),
            exhausted: Gauge::default(),
            budget: None,
        };
        store.register(
            names::NODE_HEALTHY,
            "Whether the node is in the load balancer (1: healthy or degraded) or out (0: draining or down)",
            h.healthy.clone(),
        );
        store.register(
            names::NODE_DEGRADED,
            "Whether the node is degraded (1): in the load balancer at a lower weight",
            h.degraded.clone(),
        );
        store.register(
            names::HEALTH_TRANSITIONS,
            "Changes of the node's health, by the state entered",
            h.transitions.clone(),
        );
        store.register(
            names::UNHEALTHY_SECONDS,
            "Seconds the node spent draining or down",
            h.unhealthy_seconds.clone(),
        );
        store.register(
            names::DRAIN_DEFERRED,
            "Whether the node waits to drain (1) because the drain budget is spent: it stays in the load balancer, degraded",
            h.deferred.clone(),
        );
        store.register(
            names::DRAIN_BUDGET_EXHAUSTED,
            "Whether more nodes of the fleet want out of the load balancer than the drain budget lets out (1), as this node saw it while it wanted out",
            h.exhausted.clone(),
        );
        h.evaluate_levels(&[], Instant::now(), false);
        h
    }

    /// Recomputes the state from the alerts now (those firing with a `health` label count);
    /// called every tick. With a drain budget, a drain that is pending or held asks for the
    /// fleet's view (answered off this path).
    pub fn evaluate(&self, alerts: &[Alert], now: Instant) {
        self.evaluate_levels(&AlertHealth::of(alerts), now, true);
    }

    fn evaluate_levels(&self, firing: &[AlertHealth], now: Instant, from_tick: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = g.last_eval
            && g.state > Status::Degraded
        {
            self.unhealthy_seconds
                .inc_by(now.saturating_duration_since(last).as_secs_f64());
        }
        g.last_eval = Some(now);
        g.last_firing = firing.to_vec();

        let level = firing
            .iter()
            .map(|a| a.level)
            .max()
            .unwrap_or(Status::Healthy);
        let reasons = AlertHealth::reasons(firing);
        let mut recovering = None;
        if level >= g.alert_level {
            g.alert_level = level;
            g.alert_reasons = reasons;
            g.recovering_since = None;
        } else {
            let since = *g.recovering_since.get_or_insert(now);
            let waited = now.saturating_duration_since(since);
            if waited >= self.recover_after {
                g.alert_level = level;
                g.alert_reasons = reasons;
                g.recovering_since = None;
            } else {
                recovering = Some(self.recover_after - waited);
            }
        }

        let (gated, notes) = self.gate(&mut g, firing, from_tick, now);
        let manual = g
            .maintenance
            .as_ref()
            .map(|m| format!("maintenance: {}", m.reason));
        let desired = gated.max(if manual.is_some() {
            Status::Draining
        } else {
            Status::Healthy
        });
        let mut all = g.alert_reasons.clone();
        all.extend(notes);
        if let Some(left) = recovering {
            all.push(format!(
                "recovering: {} more without alerts before {}",
                humantime::format_duration(Duration::from_secs(left.as_secs().max(1))),
                level
                    .max(if manual.is_some() {
                        Status::Draining
                    } else {
                        Status::Healthy
                    })
                    .as_str()
            ));
        }
        all.extend(manual);
        g.reasons = all;
        if desired != g.state {
            tracing::info!(
                from = g.state.as_str(),
                to = desired.as_str(),
                reasons = %g.reasons.join("; "),
                "node health changed"
            );
            g.state = desired;
            g.since = unix_now();
            self.transitions
                .get_or_create(&StateLabels {
                    state: desired.as_str().into(),
                })
                .inc();
        }
        self.healthy.set(i64::from(g.state <= Status::Degraded));
        self.degraded.set(i64::from(g.state == Status::Degraded));
    }

    /// The current state and why.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            status: g.state,
            weight: match g.state {
                Status::Healthy => 100,
                Status::Degraded => self.degraded_weight,
                Status::Draining | Status::Down => 0,
            },
            reasons: g.reasons.clone(),
            since: g.since,
            maintenance: g.maintenance.clone(),
        }
    }

    /// Starts manual maintenance (the node drains at once) and persists it.
    pub fn drain(&self, reason: &str) -> std::io::Result<()> {
        let m = Maintenance {
            reason: reason.to_string(),
            since: unix_now(),
        };
        write_atomic(&self.maintenance_file, &serde_json::to_vec(&m)?)?;
        tracing::info!(reason, "manual drain");
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .maintenance = Some(m);
        self.evaluate_again();
        Ok(())
    }

    /// Ends manual maintenance. Alerts still firing keep the node out.
    pub fn undrain(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.maintenance_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        tracing::info!("manual drain ended");
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .maintenance = None;
        self.evaluate_again();
        Ok(())
    }

    /// Re-evaluates with the alerts of the last tick, after a manual change.
    fn evaluate_again(&self) {
        let firing = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_firing
            .clone();
        self.evaluate_levels(&firing, Instant::now(), false);
    }
}

#[cfg(test)]
mod tests;
