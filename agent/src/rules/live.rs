//! The rules inside the running agent: each tick, the store's samples go into its history,
//! every group is evaluated at the tick's timestamp, and the alerts are published for
//! `/api/v1/alerts`, node health and the notifiers, and as `nodewatch_alerts`. A reload swaps
//! the rules and keeps the alerts of unchanged ones.

use std::{collections::BTreeSet, sync::Arc, time::Instant};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use super::{
    engine::Engine,
    file::{GroupDef, Kind},
    reload::Outcome,
};
use crate::{
    alerts::{Alert, Published, State},
    store::{Family, GaugeF64, Labels, Store, hash::HashMap, history, label_set, names},
    yaml::Error as RuleError,
};

label_set! {
    /// Labels `{alertname, state}`.
    pub struct AlertLabels { pub alertname, pub state }
}

label_set! {
    /// Labels `{rule_group}`: the group's file and name, `file;name` as Prometheus writes it.
    pub struct GroupLabels { pub rule_group }
}

/// The rule engine's own metrics.
#[derive(Clone, Default)]
pub struct RuleMetrics {
    pub alerts: Family<AlertLabels, Gauge>,
    pub reload_ok: Gauge,
    pub reload_ok_time: Gauge,
    pub eval_duration: GaugeF64,
    pub eval_failures: Family<GroupLabels, Counter>,
    pub history_series: Gauge,
    pub history_samples: Gauge,
    pub history_dropped: Counter,
}

impl RuleMetrics {
    /// Registers the families in `store`.
    pub fn register(store: &mut Store) -> Self {
        let m = Self::default();
        store.register(
            names::ALERTS,
            "Alerts by alert name and state (pending, firing)",
            m.alerts.clone(),
        );
        store.register(
            names::CONFIG_LAST_RELOAD_SUCCESSFUL,
            "Whether the last load of the rules (at start, on SIGHUP or POST /api/v1/reload) succeeded",
            m.reload_ok.clone(),
        );
        store.register(
            names::CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP,
            "Unix time of the last successful load of the rules",
            m.reload_ok_time.clone(),
        );
        store.register(
            names::RULE_EVALUATION_DURATION,
            "Seconds the last evaluation of all rules took, history update included",
            m.eval_duration.clone(),
        );
        store.register(
            names::RULE_EVALUATION_FAILURES,
            "Rule evaluations that failed, by group",
            m.eval_failures.clone(),
        );
        store.register(
            names::RULE_HISTORY_SERIES,
            "Series held in the rules' in-memory history",
            m.history_series.clone(),
        );
        store.register(
            names::RULE_HISTORY_SAMPLES,
            "Samples held in the rules' in-memory history, all series together",
            m.history_samples.clone(),
        );
        store.register(
            names::RULE_HISTORY_DROPPED_SAMPLES,
            "Samples not kept, or evicted early, because the history holds its maximum number of series or samples",
            m.history_dropped.clone(),
        );
        m
    }
}

/// The rules of the running agent.
pub struct LiveRules {
    engine: Engine,
    /// What the history must keep for rules just (re)loaded, handed to it at the next tick.
    retention: Option<history::Retention>,
    metrics: RuleMetrics,
    interval_ms: i64,
    view: Published,
    /// State of each alert at the last tick, to log changes once.
    last: HashMap<(String, Labels), State>,
    failing: BTreeSet<(String, String)>,
}

impl LiveRules {
    /// Starts with `defs`, evaluated every `interval_ms`.
    pub fn new(defs: Vec<GroupDef>, metrics: RuleMetrics, interval_ms: i64) -> Self {
        let mut r = Self {
            engine: Engine::new(Vec::new()),
            retention: None,
            metrics,
            interval_ms,
            view: Arc::default(),
            last: HashMap::default(),
            failing: BTreeSet::new(),
        };
        r.install(defs);
        r
    }

    /// What templates see as `$externalLabels`: the labels the notifiers add to every alert.
    pub fn set_external_labels(&mut self, labels: Labels) {
        self.engine.external_labels = labels;
    }

    /// The alerts as published after each tick.
    pub fn view(&self) -> Published {
        Arc::clone(&self.view)
    }

    fn install(&mut self, defs: Vec<GroupDef>) {
        let old_names = self.alert_names();
        self.engine.replace(defs);
        let retention = self.engine.retention(2 * self.interval_ms + 1000);
        let history_ms = retention
            .by_name
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .max(retention.default_ms);
        self.retention = Some(retention);
        let new_names = self.alert_names();
        for gone in old_names.difference(&new_names) {
            for state in ["pending", "firing"] {
                self.metrics.alerts.remove(&AlertLabels {
                    alertname: gone.clone(),
                    state: state.into(),
                });
            }
        }
        self.metrics.reload_ok.set(1);
        self.metrics.reload_ok_time.set(now_ms() / 1000);
        let rules = self.engine.rules().count();
        tracing::info!(
            groups = self.engine.groups.len(),
            rules,
            history_ms,
            "rules loaded"
        );
    }

    fn alert_names(&self) -> BTreeSet<String> {
        self.engine
            .rules()
            .filter(|r| r.def.kind == Kind::Alerting)
            .map(|r| r.def.name.clone())
            .collect()
    }

    /// Replaces the rules with a validated new set, or keeps the old ones and says why.
    pub fn reload(&mut self, loaded: Result<Vec<GroupDef>, Vec<RuleError>>) -> Outcome {
        match loaded {
            Ok(defs) => {
                self.install(defs);
                Ok(self.engine.rules().count())
            }
            Err(errors) => {
                self.metrics.reload_ok.set(0);
                for e in &errors {
                    tracing::error!(error = %e, "invalid rules");
                }
                tracing::error!(
                    errors = errors.len(),
                    "reload refused: the previous rules keep running"
                );
                Err(errors.iter().map(ToString::to_string).collect())
            }
        }
    }

    /// One tick at `ts_ms`, after the collectors wrote into `store`: its samples go into its
    /// history, which the rules then read.
    pub fn tick(&mut self, ts_ms: i64, store: &Store) {
        let started = Instant::now();
        let mut history = store.history();
        if let Some(r) = self.retention.take() {
            history.set_retention(r);
        }
        let dropped_before = history.dropped_samples();
        history.ingest(ts_ms, |out| store.collect(out));
        let failures = self
            .engine
            .evaluate(&mut history, ts_ms, true, self.interval_ms);
        history.prune(ts_ms);

        // Only evaluations that ran and failed count: a group waiting for its own interval
        // keeps its last error for the view but is not failing again.
        let mut failing = BTreeSet::new();
        for f in failures {
            let key = (f.group.clone(), f.rule.clone());
            if !self.failing.contains(&key) {
                tracing::warn!(group = %f.group, rule = %f.rule, error = %f.error, "rule evaluation failed");
            }
            self.metrics
                .eval_failures
                .get_or_create(&GroupLabels {
                    rule_group: format!("{};{}", f.file, f.group),
                })
                .inc();
            failing.insert(key);
        }
        for g in &self.engine.groups {
            for r in &g.rules {
                if r.last_error.is_some() {
                    failing.insert((g.name.clone(), r.def.name.clone()));
                }
            }
        }
        self.failing = failing;
        self.publish();
        let h = &*history;
        self.metrics.history_series.set(h.series_count() as i64);
        self.metrics.history_samples.set(h.sample_count() as i64);
        self.metrics
            .history_dropped
            .inc_by(h.dropped_samples() - dropped_before);
        self.metrics
            .eval_duration
            .set(started.elapsed().as_secs_f64());
    }

    /// The pending and firing alerts of the last tick, for node health and the notifiers.
    pub fn alerts(&self) -> Vec<Alert> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn publish(&mut self) {
        let mut counts: HashMap<&str, (i64, i64)> = HashMap::default();
        let mut view = Vec::new();
        let mut now = HashMap::default();
        for r in self.engine.rules().filter(|r| r.def.kind == Kind::Alerting) {
            let c = counts.entry(&r.def.name).or_default();
            for a in r.active.values() {
                match a.state {
                    State::Pending => c.0 += 1,
                    State::Firing => c.1 += 1,
                    State::Inactive => {}
                }
                let key = (r.def.name.clone(), a.labels.clone());
                let before = self.last.get(&key).copied();
                if before != Some(a.state) {
                    match a.state {
                        State::Firing => {
                            tracing::info!(alert = %r.def.name, labels = %a.labels, value = a.value, "alert firing")
                        }
                        State::Inactive if before == Some(State::Firing) => {
                            tracing::info!(alert = %r.def.name, labels = %a.labels, "alert resolved")
                        }
                        _ => {}
                    }
                }
                now.insert(key, a.state);
                if a.state != State::Inactive {
                    view.push(a.clone());
                }
            }
        }
        for (name, (pending, firing)) in counts {
            for (state, n) in [("pending", pending), ("firing", firing)] {
                self.metrics
                    .alerts
                    .get_or_create(&AlertLabels {
                        alertname: name.to_string(),
                        state: state.into(),
                    })
                    .set(n);
            }
        }
        view.sort_by(|a, b| a.labels.cmp(&b.labels));
        self.last = now;
        match self.view.write() {
            Ok(mut v) => *v = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }
}

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule that always fails: `x` has two series that differ only in their name once the
    /// name is dropped.
    const FAILING: &str = "groups:
  - name: slow
    interval: 10s
    rules:
      - record: r
        expr: -{__name__=~\"x|y\"}
";

    #[test]
    fn failures_count_evaluations_that_failed_not_ticks_a_group_waits() {
        let mut store = Store::new();
        let metrics = RuleMetrics::register(&mut store);
        let defs = super::super::file::parse("r.yaml", FAILING).unwrap();
        let mut live = LiveRules::new(defs, metrics.clone(), 1000);
        store.history().ingest_scrape(
            0,
            vec![
                (Labels::from_pairs([("__name__", "x")]), 1.0),
                (Labels::from_pairs([("__name__", "y")]), 1.0),
            ],
        );
        let failures = || {
            metrics
                .eval_failures
                .get_or_create(&GroupLabels {
                    rule_group: "r.yaml;slow".into(),
                })
                .get()
        };
        // 25 one-second ticks: the group runs at 0, 10 and 20 s.
        for t in 0..25 {
            live.tick(t * 1000, &store);
        }
        assert_eq!(failures(), 3);
    }
}
