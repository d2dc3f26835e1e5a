//! Alerts as the HTTP API shows them: the shape of Prometheus's `GET /api/v1/alerts`.

use serde::Serialize;

use crate::{
    alerts::{Alert, State, rfc3339},
    rules::template::gofmt,
};

/// An alert as `/api/v1/alerts` shows it (the Prometheus API's shape).
#[derive(Debug, Clone, Serialize)]
pub struct AlertView {
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub state: State,
    #[serde(rename = "activeAt")]
    pub active_at: String,
    #[serde(rename = "keepFiringSince", skip_serializing_if = "Option::is_none")]
    pub keep_firing_since: Option<String>,
    /// The expression's value, formatted as Prometheus does (`1e+00`).
    pub value: String,
}

impl AlertView {
    /// The view of a pending or firing alert.
    pub fn new(a: &Alert) -> Self {
        Self {
            labels: a
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: a.annotations.iter().cloned().collect(),
            state: a.state,
            active_at: rfc3339(a.active_at),
            keep_firing_since: a.keep_firing_since.map(rfc3339),
            value: gofmt::format_e(a.value, None, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Labels;

    #[test]
    fn values_and_times_are_shown_as_prometheus_shows_them() {
        let a = Alert {
            labels: Labels::from_pairs([("alertname", "A"), ("port", "80")]),
            annotations: vec![("summary".into(), "port 80 at 2.5".into())],
            state: State::Firing,
            active_at: 0,
            fired_at: Some(0),
            resolved_at: None,
            keep_firing_since: None,
            value: 2.5,
        };
        let v = AlertView::new(&a);
        assert_eq!(v.value, "2.5e+00");
        assert_eq!(v.active_at, "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn every_label_is_shown_the_container_and_pod_too() {
        let a = Alert {
            labels: Labels::from_pairs([
                ("alertname", "NodewatchListenOverflow"),
                ("container", "abc123def456"),
                ("pod", "prod/web-0"),
                ("port", "8000"),
            ]),
            annotations: Vec::new(),
            state: State::Firing,
            active_at: 0,
            fired_at: Some(0),
            resolved_at: None,
            keep_firing_since: None,
            value: 1.0,
        };
        let json = serde_json::to_value(AlertView::new(&a)).unwrap();
        assert_eq!(
            json["labels"],
            serde_json::json!({
                "alertname": "NodewatchListenOverflow",
                "container": "abc123def456",
                "pod": "prod/web-0",
                "port": "8000",
            })
        );
    }
}
