//! The fleet as the drain budget sees it: the nodes' claims ([`UNHEALTHY_ALERT`]), read from
//! every Alertmanager the agent notifies and merged (clustered Alertmanagers gossip silences,
//! not alerts, so each holds only what was posted to it).
//!
//! A query runs on a task of its own, asked for by the tick while a drain is pending or held
//! (at most once per tick; asks that come while one runs make one more); the tick only reads
//! the latest answer. Each Alertmanager is asked once per query, all at the same time, each
//! within the timeout.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use tokio::sync::Notify;

use super::budget::Candidate;
use crate::httpc::{Client, HttpConfig};

/// The always-firing alert each node with a drain budget sends to Alertmanager: the fleet's
/// size for a `max_unhealthy` in percent.
pub const MEMBER_ALERT: &str = "NodewatchFleetMember";

/// The alert a node with a drain budget sends to Alertmanager while it wants out of the load
/// balancer (drained, down, or waiting its turn), until it is back in: its claim, what the
/// other nodes count, also while its own alerts have resolved and it waits out
/// `recover_after`. Its `startsAt` is when the node began to want out.
pub const UNHEALTHY_ALERT: &str = "NodewatchNodeUnhealthy";

/// The label of [`UNHEALTHY_ALERT`] that says whether the node is out ([`OUT`]) or waits
/// ([`WAITING`]); a node that goes out sends a new claim, so the others see it at once.
pub const CLAIM_LABEL: &str = "drain_budget";
pub const OUT: &str = "out";
pub const WAITING: &str = "waiting";

/// The alert a node held back by the drain budget sends to Alertmanager: more nodes of the
/// fleet want out than the budget lets out.
pub const EXHAUSTED_ALERT: &str = "NodewatchDrainBudgetExhausted";

/// Where the fleet's alerts are read, and who this node is among them.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetSetup {
    /// This node's `node` label.
    pub node: String,
    /// The other external labels: the fleet is the nodes whose alerts carry the same.
    pub scope: Vec<(String, String)>,
    /// Every Alertmanager notified, with its notifier's `http_config`.
    pub alertmanagers: Vec<(http::Uri, HttpConfig)>,
    /// How long one Alertmanager may take to answer.
    pub timeout: Duration,
}

/// The merged answers of one query.
#[derive(Debug, Clone)]
pub struct View {
    /// When the query started: a view older than a drain's start does not decide it.
    pub started: Instant,
    pub asked: usize,
    pub answered: usize,
    /// The alerts of nodes that want out, one per alert (grouped by [`super::budget`]).
    pub wanting: Vec<Candidate>,
    /// Nodes whose member alert is firing (asked for only with a budget in percent).
    pub members: BTreeSet<String>,
    /// Why Alertmanagers did not answer.
    pub errors: Vec<String>,
}

/// The query task's side: asks, and the latest view.
pub struct Fleet {
    pub setup: FleetSetup,
    /// Whether member alerts are read too (a budget in percent).
    sizes: bool,
    /// One client per Alertmanager, with its notifier's credentials (or why it has none).
    clients: Vec<Result<Arc<Client>, String>>,
    wake: Notify,
    /// A query asked for is not started before this.
    not_before: Mutex<Option<Instant>>,
    latest: Mutex<Option<Arc<View>>>,
}

impl Fleet {
    pub fn new(setup: FleetSetup, sizes: bool) -> Self {
        let clients = setup
            .alertmanagers
            .iter()
            .map(|(_, cfg)| Client::new(cfg).map(Arc::new).map_err(|e| e.to_string()))
            .collect();
        Self {
            setup,
            sizes,
            clients,
            wake: Notify::new(),
            not_before: Mutex::new(None),
            latest: Mutex::new(None),
        }
    }

    /// Asks for a query; never blocks. Asks while one runs are folded into one more.
    pub fn request(&self) {
        self.wake.notify_one();
    }

    /// Asks for a query that starts at `at` or later (now, if `at` has passed).
    pub fn request_at(&self, at: Instant) {
        {
            let mut nb = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
            *nb = Some(nb.map_or(at, |t| t.max(at)));
        }
        self.wake.notify_one();
    }

    /// Waits until a query is asked for, and until the time it was asked for.
    pub async fn asked(&self) {
        self.wake.notified().await;
        let at = self
            .not_before
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(at) = at {
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// The latest view, if any query finished.
    pub fn latest(&self) -> Option<Arc<View>> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the latest view, as a query would.
    pub fn store(&self, view: View) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(view));
    }

    /// Asks every Alertmanager at once and keeps the merged answer as the latest view.
    pub async fn query(&self) {
        let started = Instant::now();
        let wanting = matchers(&self.setup, &[("alertname", "=", UNHEALTHY_ALERT)]);
        let members = matchers(&self.setup, &[("alertname", "=", MEMBER_ALERT)]);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (am, _)) in self.setup.alertmanagers.iter().enumerate() {
            let mut asks = vec![(false, url(am, &wanting))];
            if self.sizes {
                asks.push((true, url(am, &members)));
            }
            for (is_members, u) in asks {
                let timeout = self.setup.timeout;
                let client = self.clients[i].clone();
                tasks.spawn(async move { (i, is_members, get(client, u, timeout).await) });
            }
        }
        let mut view = View {
            started,
            asked: self.setup.alertmanagers.len(),
            answered: 0,
            wanting: Vec::new(),
            members: BTreeSet::new(),
            errors: Vec::new(),
        };
        // An Alertmanager has answered when every one of its requests did (a task that
        // panicked did not).
        let mut got = vec![0usize; view.asked];
        while let Some(done) = tasks.join_next().await {
            let Ok((i, is_members, answer)) = done else {
                continue;
            };
            match answer {
                Err(e) => {
                    view.errors
                        .push(format!("{}: {e}", self.setup.alertmanagers[i].0));
                    continue;
                }
                Ok(alerts) if is_members => view.members.extend(alerts.into_iter().map(|c| c.node)),
                Ok(alerts) => view.wanting.extend(alerts),
            }
            got[i] += 1;
        }
        let requests = 1 + usize::from(self.sizes);
        view.answered = got.iter().filter(|&&n| n == requests).count();
        view.errors.sort();
        self.store(view);
    }
}

/// The matchers of one question: `extra`, the node label present, and the fleet's scope.
fn matchers(setup: &FleetSetup, extra: &[(&str, &str, &str)]) -> Vec<String> {
    let quote = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out: Vec<String> = extra
        .iter()
        .map(|(k, op, v)| format!("{k}{op}\"{}\"", quote(v)))
        .collect();
    out.push(format!("{}!=\"\"", crate::alerts::NODE_LABEL));
    out.extend(
        setup
            .scope
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", quote(v))),
    );
    out
}

/// `GET /api/v2/alerts` with `filter`s: active, silenced, inhibited and unprocessed alike.
fn url(base: &http::Uri, matchers: &[String]) -> String {
    let mut u = format!(
        "{}/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true",
        base.to_string().trim_end_matches('/')
    );
    for m in matchers {
        u.push_str("&filter=");
        u.push_str(&percent_encode(m));
    }
    u
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One Alertmanager's answer: its alerts as `(node, down, out, startsAt)`.
async fn get(
    client: Result<Arc<Client>, String>,
    url: String,
    timeout: Duration,
) -> Result<Vec<Candidate>, String> {
    let client = client?;
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let answer = tokio::time::timeout(
        timeout,
        client.request(http::Method::GET, &uri, &[], Bytes::new()),
    )
    .await
    .map_err(|_| format!("no answer within {timeout:?}"))?
    .map_err(|e| e.to_string())?;
    if !(200..300).contains(&answer.status) {
        return Err(format!("HTTP {}", answer.status));
    }
    parse(&answer.body)
}

/// Alertmanager's `GET /api/v2/alerts` answer as candidates; an alert without a node label
/// or a readable `startsAt` is left out. A claim labelled [`OUT`] says its node is out.
pub fn parse(body: &[u8]) -> Result<Vec<Candidate>, String> {
    let alerts: Vec<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| format!("unreadable answer: {e}"))?;
    Ok(alerts
        .iter()
        .filter_map(|a| {
            let labels = &a["labels"];
            let node = labels[crate::alerts::NODE_LABEL].as_str()?;
            let starts = humantime::parse_rfc3339_weak(a["startsAt"].as_str()?).ok()?;
            let since_ms = starts
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            Some(Candidate {
                node: node.to_string(),
                down: labels["health"] == "down",
                out: labels[CLAIM_LABEL] == OUT,
                since_ms,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> FleetSetup {
        FleetSetup {
            node: "gpu-1".into(),
            scope: vec![("cluster".into(), "a\"b".into())],
            alertmanagers: vec![("http://am1:9093/".parse().unwrap(), HttpConfig::default())],
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn asks_for_the_claims_of_this_fleet() {
        let m = matchers(&setup(), &[("alertname", "=", UNHEALTHY_ALERT)]);
        assert_eq!(
            m,
            [
                "alertname=\"NodewatchNodeUnhealthy\"",
                "node!=\"\"",
                "cluster=\"a\\\"b\""
            ]
        );
        let u = url(&setup().alertmanagers[0].0, &m[..1]);
        assert_eq!(
            u,
            "http://am1:9093/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true&filter=alertname%3D%22NodewatchNodeUnhealthy%22"
        );
    }

    #[test]
    fn reads_alertmanagers_answer() {
        let body = br#"[
          {"labels":{"alertname":"A","health":"drain","node":"n2"},"startsAt":"2026-01-01T00:00:01.500Z","status":{"state":"suppressed"}},
          {"labels":{"alertname":"B","health":"down","node":"n3","drain_budget":"out"},"startsAt":"2026-01-01T00:00:02Z"},
          {"labels":{"alertname":"C","health":"drain"},"startsAt":"2026-01-01T00:00:02Z"}
        ]"#;
        let got = parse(body).unwrap();
        assert_eq!(got.len(), 2, "no node label: left out");
        assert_eq!(got[0].node, "n2");
        assert!(!got[0].down && got[1].down);
        assert!(!got[0].out && got[1].out);
        assert_eq!(got[1].since_ms - got[0].since_ms, 500);
        assert!(parse(b"{").is_err());
    }
}
