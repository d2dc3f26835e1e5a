//! The one alert type: what the rules produce, and what notify, node health and the HTTP API
//! read. Nothing here knows how alerts are evaluated or delivered.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use serde::Serialize;

use crate::store::labels::Labels;

/// The external label that names the node an alert is about: Alertmanager keeps the same
/// alert of two nodes apart by it, and the drain budget groups the fleet's alerts by it.
pub const NODE_LABEL: &str = "node";

/// How long a resolved alert is kept (and reported as resolved), as in Prometheus.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// The state of one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Resolved: the condition no longer holds (kept for [`RESOLVED_RETENTION_MS`]).
    Inactive,
    /// The condition holds, for less than the rule's `for`.
    Pending,
    Firing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Inactive => "inactive",
            State::Pending => "pending",
            State::Firing => "firing",
        }
    }
}

/// One alert of a rule: one label set of its expression's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    /// Annotations in name order (an empty value is kept, unlike a label).
    pub annotations: Vec<(String, String)>,
    pub state: State,
    /// Milliseconds since the epoch.
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub keep_firing_since: Option<i64>,
    pub value: f64,
}

/// The pending and firing alerts of the last tick, in label order, as the rules publish them.
pub type Published = Arc<RwLock<Vec<Alert>>>;

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds since the epoch as a time.
pub fn system_time(ms: i64) -> SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
}

impl Alert {
    /// The value of label `name`, if set.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name)
    }

    /// The alert's name (its `alertname` label).
    pub fn name(&self) -> &str {
        self.label("alertname").unwrap_or_default()
    }

    /// The value of annotation `name`, if set.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The labels as a sorted map.
    pub fn label_map(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The annotations as a sorted map.
    pub fn annotation_map(&self) -> BTreeMap<String, String> {
        self.annotations.iter().cloned().collect()
    }

    /// When it started firing (when it became active, if it has not fired).
    pub fn firing_since(&self) -> SystemTime {
        system_time(self.fired_at.unwrap_or(self.active_at))
    }
}
