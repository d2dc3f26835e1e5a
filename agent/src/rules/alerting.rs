//! Alert state: inactive → pending → firing → resolved, with `for` and `keep_firing_for`,
//! exactly as Prometheus's `AlertingRule.Eval` moves it.

use super::{
    promql::eval::Sample,
    template::{Data, Query, Template},
};
use crate::{
    alerts::{Alert, RESOLVED_RETENTION_MS, State},
    store::hash::HashMap,
    store::labels::{Labels, METRIC_NAME},
};

/// What an alerting rule contributes to one evaluation.
pub struct Rule<'a> {
    pub name: &'a str,
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    pub labels: &'a [(String, Template)],
    pub annotations: &'a [(String, Template)],
    pub external_labels: &'a Labels,
    pub external_url: &'a str,
    /// Most pending and firing alerts allowed; 0 means no limit.
    pub limit: usize,
    /// The template function `query`.
    pub query: Option<&'a Query<'a>>,
}

/// One evaluation at `ts` of an alerting rule whose expression gave `result`. Updates
/// `active` and returns the `ALERTS` and `ALERTS_FOR_STATE` samples Prometheus writes.
pub fn evaluate(
    rule: &Rule<'_>,
    active: &mut HashMap<Labels, Alert>,
    result: Vec<Sample>,
    ts: i64,
) -> Result<Vec<Sample>, String> {
    let mut current: HashMap<Labels, Alert> =
        HashMap::with_capacity_and_hasher(result.len(), Default::default());
    for s in result {
        let data = Data {
            labels: &s.labels,
            external_labels: rule.external_labels,
            external_url: rule.external_url,
            value: s.value,
            query: rule.query,
        };
        let mut labels = s.labels.without_name();
        for (k, t) in rule.labels {
            labels.set(k.clone(), t.expand(&data));
        }
        labels.set("alertname".into(), rule.name.to_string());
        let annotations = rule
            .annotations
            .iter()
            .map(|(k, t)| (k.clone(), t.expand(&data)))
            .collect();
        if current.contains_key(&labels) {
            return Err(
                "vector contains metrics with the same labelset after applying alert labels".into(),
            );
        }
        current.insert(
            labels.clone(),
            Alert {
                labels,
                annotations,
                state: State::Pending,
                active_at: ts,
                fired_at: None,
                resolved_at: None,
                keep_firing_since: None,
                value: s.value,
            },
        );
    }
    for (k, a) in &current {
        match active.get_mut(k) {
            Some(old) if old.state != State::Inactive => {
                old.value = a.value;
                old.annotations = a.annotations.clone();
            }
            _ => {
                active.insert(k.clone(), a.clone());
            }
        }
    }

    let mut out = Vec::new();
    let mut pending_or_firing = 0;
    let mut remove = Vec::new();
    for (k, a) in active.iter_mut() {
        if current.contains_key(k) {
            a.keep_firing_since = None;
        } else {
            let mut keep_firing = false;
            if a.state == State::Firing && rule.keep_firing_for_ms > 0 {
                let since = *a.keep_firing_since.get_or_insert(ts);
                keep_firing = ts - since < rule.keep_firing_for_ms;
            }
            // A pending alert just goes; a resolved one is kept a while to report it.
            let expired = a
                .resolved_at
                .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS);
            if a.state == State::Pending || expired {
                remove.push(k.clone());
            }
            if a.state != State::Inactive && !keep_firing {
                a.state = State::Inactive;
                a.resolved_at = Some(ts);
            }
            if !keep_firing {
                continue;
            }
        }
        pending_or_firing += 1;
        if a.state == State::Pending && ts - a.active_at >= rule.for_ms {
            a.state = State::Firing;
            a.fired_at = Some(ts);
        }
        let mut l = a.labels.clone();
        l.set(METRIC_NAME.into(), "ALERTS".into());
        l.set("alertstate".into(), a.state.as_str().into());
        out.push(Sample {
            labels: l,
            value: 1.0,
        });
        let mut l = a.labels.clone();
        l.set(METRIC_NAME.into(), "ALERTS_FOR_STATE".into());
        out.push(Sample {
            labels: l,
            value: a.active_at.div_euclid(1000) as f64,
        });
    }
    for k in remove {
        active.remove(&k);
    }
    if rule.limit > 0 && pending_or_firing > rule.limit {
        active.clear();
        return Err(format!(
            "exceeded limit of {} with {pending_or_firing} alerts",
            rule.limit
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule<'a>(for_ms: i64, keep: i64, ann: &'a [(String, Template)]) -> Rule<'a> {
        static EMPTY: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::new);
        Rule {
            name: "A",
            for_ms,
            keep_firing_for_ms: keep,
            labels: &[],
            annotations: ann,
            external_labels: &EMPTY,
            external_url: "",
            limit: 0,
            query: None,
        }
    }

    fn hit(v: f64) -> Vec<Sample> {
        vec![Sample {
            labels: Labels::from_pairs([("__name__", "x"), ("port", "80")]),
            value: v,
        }]
    }

    fn state(active: &HashMap<Labels, Alert>) -> Option<State> {
        active.values().next().map(|a| a.state)
    }

    #[test]
    fn pending_then_firing_then_resolved_then_forgotten() {
        let r = rule(2000, 0, &[]);
        let mut active = HashMap::default();
        let out = evaluate(&r, &mut active, hit(1.0), 0).unwrap();
        assert_eq!(state(&active), Some(State::Pending));
        assert_eq!(out[0].labels.get("alertstate"), Some("pending"));
        assert_eq!(out[0].labels.get("port"), Some("80"));
        assert_eq!(out[0].labels.get("alertname"), Some("A"));
        evaluate(&r, &mut active, hit(2.0), 1000).unwrap();
        assert_eq!(state(&active), Some(State::Pending));
        evaluate(&r, &mut active, hit(3.0), 2000).unwrap();
        assert_eq!(state(&active), Some(State::Firing));
        assert_eq!(active.values().next().unwrap().value, 3.0);
        let out = evaluate(&r, &mut active, vec![], 3000).unwrap();
        assert!(out.is_empty());
        let a = active.values().next().unwrap();
        assert_eq!((a.state, a.resolved_at), (State::Inactive, Some(3000)));
        evaluate(&r, &mut active, vec![], 3000 + RESOLVED_RETENTION_MS + 1).unwrap();
        assert!(active.is_empty());
    }

    #[test]
    fn pending_alert_that_goes_away_is_dropped() {
        let r = rule(5000, 0, &[]);
        let mut active = HashMap::default();
        evaluate(&r, &mut active, hit(1.0), 0).unwrap();
        evaluate(&r, &mut active, vec![], 1000).unwrap();
        assert!(active.is_empty());
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert() {
        let r = rule(0, 2000, &[]);
        let mut active = HashMap::default();
        evaluate(&r, &mut active, hit(1.0), 0).unwrap();
        assert_eq!(state(&active), Some(State::Firing), "for: 0 fires at once");
        evaluate(&r, &mut active, vec![], 1000).unwrap();
        assert_eq!(state(&active), Some(State::Firing));
        evaluate(&r, &mut active, vec![], 2000).unwrap();
        assert_eq!(state(&active), Some(State::Firing));
        evaluate(&r, &mut active, vec![], 3000).unwrap();
        assert_eq!(state(&active), Some(State::Inactive));
    }

    #[test]
    fn annotations_are_expanded_and_updated() {
        let ann = [(
            "summary".to_string(),
            Template::parse("port {{ $labels.port }} at {{ $value }}").unwrap(),
        )];
        let r = rule(0, 0, &ann);
        let mut active = HashMap::default();
        evaluate(&r, &mut active, hit(1.5), 0).unwrap();
        evaluate(&r, &mut active, hit(2.5), 1000).unwrap();
        let a = active.values().next().unwrap();
        assert_eq!(a.annotations[0].1, "port 80 at 2.5");
        assert_eq!(a.active_at, 0);
    }
}
