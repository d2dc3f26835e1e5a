//! Evaluates rule groups over the history, in order, as Prometheus's rule manager does:
//! recording rules write their results back as series (later rules see them at the same
//! instant), alerting rules move their alerts and write `ALERTS`; series a rule stops
//! producing get a staleness marker.

use std::collections::HashMap as StdHashMap;

use super::{
    alerting,
    file::{GroupDef, Kind, RuleDef},
    promql::{
        eval::{Evaluator, Sample, no_duplicates},
        subset,
    },
};
use crate::{
    alerts::Alert,
    store::{
        hash::{HashMap, HashSet},
        history::{History, Retention, stale},
        labels::{Labels, METRIC_NAME},
    },
};

/// A rule and what it remembers between evaluations.
#[derive(Debug)]
pub struct RuleState {
    pub def: RuleDef,
    /// Alerts by label set (alerting rules only).
    pub active: HashMap<Labels, Alert>,
    /// The error of the last evaluation, if it failed.
    pub last_error: Option<String>,
    written: HashSet<Labels>,
}

impl RuleState {
    fn new(def: RuleDef) -> Self {
        Self {
            def,
            active: HashMap::default(),
            last_error: None,
            written: HashSet::default(),
        }
    }
}

/// A group and its rules' state.
#[derive(Debug)]
pub struct Group {
    pub file: String,
    pub name: String,
    pub interval_ms: Option<i64>,
    pub limit: usize,
    pub rules: Vec<RuleState>,
    last_eval: Option<i64>,
}

/// A rule evaluation that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFailure {
    /// The file of the group.
    pub file: String,
    pub group: String,
    pub rule: String,
    pub error: String,
}

/// The loaded groups; they read and write a [`History`] given to each evaluation.
#[derive(Debug)]
pub struct Engine {
    pub groups: Vec<Group>,
    pub external_labels: Labels,
    pub external_url: String,
    /// Series written by rules that a reload removed: marked stale at the next evaluation.
    pending_stale: Vec<Labels>,
}

impl Engine {
    pub fn new(defs: Vec<GroupDef>) -> Self {
        let mut e = Self {
            groups: Vec::new(),
            external_labels: Labels::new(),
            external_url: String::new(),
            pending_stale: Vec::new(),
        };
        e.replace(defs);
        e
    }

    /// What the history must keep for these rules: each metric read through a range selector
    /// its longest range plus `slack_ms`, everything else `slack_ms` (and the longest range when
    /// a selector does not name its metric).
    pub fn retention(&self, slack_ms: i64) -> Retention {
        let mut r = Retention {
            default_ms: slack_ms,
            by_name: StdHashMap::new(),
        };
        for (name, range) in self.rules().flat_map(|r| r.def.ranges.iter()) {
            let keep = range + slack_ms;
            match name {
                Some(n) => {
                    let e = r.by_name.entry(n.clone()).or_insert(keep);
                    *e = (*e).max(keep);
                }
                None => r.default_ms = r.default_ms.max(keep),
            }
        }
        for v in r.by_name.values_mut() {
            *v = (*v).max(r.default_ms);
        }
        r
    }

    /// Every rule, in evaluation order.
    pub fn rules(&self) -> impl Iterator<Item = &RuleState> {
        self.groups.iter().flat_map(|g| g.rules.iter())
    }

    /// Loads a new set of groups. A rule that is unchanged (same file, group, and definition)
    /// keeps its alerts; series that only the old rules wrote get a staleness marker at the next
    /// evaluation.
    pub fn replace(&mut self, defs: Vec<GroupDef>) {
        let mut old: StdHashMap<(String, String), Vec<RuleState>> = self
            .groups
            .drain(..)
            .map(|g| ((g.file, g.name), g.rules))
            .collect();
        let mut orphaned: Vec<Labels> = Vec::new();
        let mut groups = Vec::new();
        for def in defs {
            let mut previous = old
                .remove(&(def.file.clone(), def.name.clone()))
                .unwrap_or_default();
            let rules = def
                .rules
                .into_iter()
                .map(|r| {
                    if let Some(i) = previous.iter().position(|p| p.def == r) {
                        return previous.remove(i);
                    }
                    // As Prometheus's `CopyState`: a rule with the same name and labels keeps
                    // its alerts (and `for` keeps running) whatever else was edited.
                    let same = |p: &RuleState| {
                        p.def.kind == r.kind && p.def.name == r.name && p.def.labels == r.labels
                    };
                    match previous.iter().position(same) {
                        Some(i) => {
                            let p = previous.remove(i);
                            let mut s = RuleState::new(r);
                            s.active = p.active;
                            s.written = p.written;
                            s
                        }
                        None => RuleState::new(r),
                    }
                })
                .collect();
            orphaned.extend(previous.into_iter().flat_map(|r| r.written));
            groups.push(Group {
                file: def.file,
                name: def.name,
                interval_ms: def.interval_ms,
                limit: def.limit,
                rules,
                last_eval: None,
            });
        }
        orphaned.extend(old.into_values().flatten().flat_map(|r| r.written));
        self.groups = groups;
        self.pending_stale = orphaned;
    }

    /// Evaluates every group at `ts` over `history`, writing recorded series and `ALERTS`
    /// into it. With `respect_intervals`, a group with its own `interval` is skipped until
    /// that much time has passed since its last evaluation (with half a `tick_ms` of slack).
    pub fn evaluate(
        &mut self,
        history: &mut History,
        ts: i64,
        respect_intervals: bool,
        tick_ms: i64,
    ) -> Vec<RuleFailure> {
        for l in std::mem::take(&mut self.pending_stale) {
            history.append(&l, ts, stale());
        }
        let mut failures = Vec::new();
        for g in &mut self.groups {
            if respect_intervals
                && let (Some(iv), Some(last)) = (g.interval_ms, g.last_eval)
                && ts - last < iv - tick_ms / 2
            {
                continue;
            }
            g.last_eval = Some(ts);
            for r in &mut g.rules {
                let out = eval_rule(
                    r,
                    Evaluator {
                        history,
                        ts,
                        step_ms: if respect_intervals {
                            g.interval_ms.unwrap_or(tick_ms)
                        } else {
                            tick_ms
                        },
                    },
                    g.limit,
                    &self.external_labels,
                    &self.external_url,
                );
                match out {
                    Ok(samples) => {
                        r.last_error = None;
                        let now: HashSet<Labels> =
                            samples.iter().map(|s| s.labels.clone()).collect();
                        for s in &samples {
                            history.append(&s.labels, ts, s.value);
                        }
                        for gone in r.written.difference(&now) {
                            history.append(gone, ts, stale());
                        }
                        r.written = now;
                    }
                    Err(e) => {
                        failures.push(RuleFailure {
                            file: g.file.clone(),
                            group: g.name.clone(),
                            rule: r.def.name.clone(),
                            error: e.clone(),
                        });
                        r.last_error = Some(e);
                    }
                }
            }
        }
        failures
    }
}

fn eval_rule(
    r: &mut RuleState,
    ev: Evaluator<'_>,
    limit: usize,
    external_labels: &Labels,
    external_url: &str,
) -> Result<Vec<Sample>, String> {
    let ts = ev.ts;
    let result = ev.eval(&r.def.expr).map_err(|e| e.0)?.into_vector();
    match r.def.kind {
        Kind::Recording => {
            let out: Vec<Sample> = result
                .into_iter()
                .map(|mut s| {
                    s.labels.set(METRIC_NAME.into(), r.def.name.clone());
                    for (k, t) in &r.def.labels {
                        s.labels.set(k.clone(), t.raw().to_string());
                    }
                    s
                })
                .collect();
            let out = no_duplicates(out).map_err(|_| {
                "vector contains metrics with the same labelset after applying rule labels"
                    .to_string()
            })?;
            if limit > 0 && out.len() > limit {
                return Err(format!("exceeded limit {limit} with {} series", out.len()));
            }
            Ok(out)
        }
        Kind::Alerting => {
            // Template queries run at the rule's instant, over the same history.
            let query = |text: &str| -> Result<Vec<(Labels, f64)>, String> {
                let e = promql_parser::parser::parse(text).map_err(|e| e.to_string())?;
                subset::check(&e).map_err(|u| u.message)?;
                let v = ev.eval(&e).map_err(|e| e.0)?;
                Ok(v.into_vector()
                    .into_iter()
                    .map(|s| (s.labels, s.value))
                    .collect())
            };
            let rule = alerting::Rule {
                name: &r.def.name,
                for_ms: r.def.for_ms,
                keep_firing_for_ms: r.def.keep_firing_for_ms,
                labels: &r.def.labels,
                annotations: &r.def.annotations,
                external_labels,
                external_url,
                limit,
                query: Some(&query),
            };
            alerting::evaluate(&rule, &mut r.active, result, ts)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        alerts::State,
        rules::{file, promql::eval::Evaluator},
        store::history::DEFAULT_MAX_SERIES,
    };

    /// An engine and the history it evaluates over.
    struct E {
        engine: Engine,
        history: History,
    }

    impl E {
        fn evaluate(&mut self, t: i64, respect: bool, tick: i64) -> Vec<RuleFailure> {
            self.engine.evaluate(&mut self.history, t, respect, tick)
        }
        fn replace(&mut self, defs: Vec<GroupDef>) {
            self.engine.replace(defs)
        }
        fn rules(&self) -> impl Iterator<Item = &RuleState> {
            self.engine.rules()
        }
    }

    const RULES: &str = "groups:
  - name: g
    rules:
      - record: x:doubled
        expr: x * 2
      - alert: Big
        expr: x:doubled > 10
        for: 2s
";

    fn engine(text: &str) -> E {
        let defs = file::parse("r.yaml", text).unwrap();
        E {
            engine: Engine::new(defs),
            history: History::new(60_000, DEFAULT_MAX_SERIES),
        }
    }

    fn x(e: &mut E, t: i64, v: Option<f64>) {
        let samples = v
            .map(|v| vec![(Labels::from_pairs([("__name__", "x"), ("a", "1")]), v)])
            .unwrap_or_default();
        e.history.ingest_scrape(t, samples);
    }

    fn recorded(e: &E, t: i64) -> Vec<f64> {
        let q = promql_parser::parser::parse("x:doubled").unwrap();
        let ev = Evaluator {
            history: &e.history,
            ts: t,
            step_ms: 1000,
        };
        ev.eval(&q)
            .unwrap()
            .into_vector()
            .iter()
            .map(|s| s.value)
            .collect()
    }

    fn big(e: &E) -> Option<State> {
        e.rules()
            .find(|r| r.def.name == "Big")
            .and_then(|r| r.active.values().next())
            .map(|a| a.state)
    }

    #[test]
    fn recorded_series_feed_later_rules_at_the_same_instant_and_go_stale() {
        let mut e = engine(RULES);
        for (t, v) in [(0, 6.0), (1000, 6.0), (2000, 6.0)] {
            x(&mut e, t, Some(v));
            assert!(e.evaluate(t, true, 1000).is_empty());
        }
        assert_eq!(recorded(&e, 2000), vec![12.0]);
        assert_eq!(
            big(&e),
            Some(State::Firing),
            "pending at 0, firing 2s later"
        );
        let alerts = promql_parser::parser::parse("ALERTS").unwrap();
        let ev = Evaluator {
            history: &e.history,
            ts: 2000,
            step_ms: 1000,
        };
        let a = ev.eval(&alerts).unwrap().into_vector();
        assert_eq!(a[0].labels.get("alertstate"), Some("firing"));
        // x goes away: its recording goes stale at once instead of lingering for 5 minutes.
        x(&mut e, 3000, None);
        e.evaluate(3000, true, 1000);
        assert!(recorded(&e, 3000).is_empty());
        assert_eq!(big(&e), Some(State::Inactive));
    }

    #[test]
    fn replace_keeps_alerts_of_rules_with_the_same_name_and_labels() {
        let mut e = engine(RULES);
        for t in [0, 1000, 2000] {
            x(&mut e, t, Some(6.0));
            e.evaluate(t, true, 1000);
        }
        assert_eq!(big(&e), Some(State::Firing));
        e.replace(file::parse("r.yaml", RULES).unwrap());
        assert_eq!(big(&e), Some(State::Firing), "same rule: alert kept");
        let active_at = |e: &E| {
            e.rules()
                .find(|r| r.def.name == "Big")
                .and_then(|r| r.active.values().next())
                .map(|a| a.active_at)
        };
        let since = active_at(&e);
        let annotated = RULES.replace(
            "for: 2s",
            "for: 2s\n        annotations:\n          summary: edited",
        );
        e.replace(file::parse("r.yaml", &annotated).unwrap());
        assert_eq!(
            big(&e),
            Some(State::Firing),
            "annotation edited: alert kept"
        );
        assert_eq!(active_at(&e), since, "`for` not restarted");
        e.replace(
            file::parse(
                "r.yaml",
                &annotated.replace("x:doubled > 10", "x:doubled > 11"),
            )
            .unwrap(),
        );
        assert_eq!(
            big(&e),
            Some(State::Firing),
            "same name and labels: kept, as Prometheus keeps it"
        );
        let labelled = annotated.replace(
            "for: 2s",
            "for: 2s\n        labels:\n          severity: page",
        );
        e.replace(file::parse("r.yaml", &labelled).unwrap());
        assert_eq!(big(&e), None, "labels changed: starts afresh");
        e.replace(file::parse("r.yaml", "groups: []").unwrap());
        x(&mut e, 3000, Some(6.0));
        e.evaluate(3000, true, 1000);
        assert!(
            recorded(&e, 3000).is_empty(),
            "removed rule's series marked stale"
        );
    }

    #[test]
    fn a_group_interval_is_respected_live_but_not_in_unit_tests() {
        let text = RULES.replace("  - name: g\n", "  - name: g\n    interval: 10s\n");
        let mut e = engine(&text);
        x(&mut e, 0, Some(6.0));
        e.evaluate(0, true, 1000);
        x(&mut e, 1000, Some(7.0));
        e.evaluate(1000, true, 1000);
        assert_eq!(
            recorded(&e, 1000),
            vec![12.0],
            "not evaluated again after 1s"
        );
        e.evaluate(1000, false, 1000);
        assert_eq!(recorded(&e, 1000), vec![14.0]);
    }
}
