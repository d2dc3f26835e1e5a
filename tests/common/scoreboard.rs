//! The fault-injection scoreboard's rig: an agent with the default rules, a webhook
//! notifier posting to a receiver of the test's own, and a real HAProxy on its agent-check
//! port. After a fault it times, from the injection: the metric moving, the rule firing on
//! `/api/v1/alerts`, the webhook arriving, HAProxy taking the server out.

use std::{
    io::Write,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    Agent, TempDir, free_port,
    haproxy::Haproxy,
    http_get,
    receiver::{Answer, Receiver},
};

/// Webhook bodies received, with when they arrived.
pub struct Received(Receiver);

impl Received {
    /// Each JSON body, with when it arrived.
    fn bodies(&self) -> Vec<(Instant, Value)> {
        self.0
            .requests()
            .into_iter()
            .filter_map(|r| Some((r.at, serde_json::from_str(&r.body).ok()?)))
            .collect()
    }

    /// When the first notification that `alertname` fires arrived.
    pub fn firing(&self, alertname: &str) -> Option<Instant> {
        self.bodies().into_iter().find_map(|(t, v)| {
            let alerts = v["alerts"].as_array()?;
            alerts
                .iter()
                .any(|a| a["labels"]["alertname"] == alertname && a["status"] == "firing")
                .then_some(t)
        })
    }

    /// Every alertname that arrived firing.
    pub fn all_firing(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .bodies()
            .into_iter()
            .flat_map(|(_, v)| v["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["status"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// A webhook receiver on loopback answering 200 to every POST; runs until the process ends.
pub fn webhook_receiver() -> (u16, Received) {
    let r = Receiver::start(Answer::Status(200));
    (r.addr.port(), Received(r))
}

/// The agent, its webhook receiver and HAProxy.
pub struct Rig {
    pub agent: Agent,
    pub hooks: Received,
    pub haproxy: Haproxy,
}

impl Rig {
    /// Starts the agent with `config` (the probes of one fault; default rules and interval)
    /// plus a webhook notifier and the HAProxy agent-check port, then HAProxy, and waits
    /// until HAProxy has the server `UP`.
    pub fn start(dir: &TempDir, config: &str) -> Self {
        let (hook_port, hooks) = webhook_receiver();
        let agent_port = free_port();
        let cfg = format!(
            "{config}spool_dir: {}\nnotifiers:\n  - {{ name: hook, kind: webhook, url: \"http://127.0.0.1:{hook_port}/hook\", timeout: 2s }}\nhealth:\n  haproxy_agent_listen: 127.0.0.1:{agent_port}\n",
            dir.0.join("spool").display()
        );
        let agent = Agent::start(dir, &cfg);
        let haproxy = Haproxy::start(dir, agent_port);
        super::wait_for(Duration::from_secs(10), || {
            (haproxy.status() == "UP").then_some(())
        })
        .expect("timed out: HAProxy has the server UP");
        Self {
            agent,
            hooks,
            haproxy,
        }
    }

    /// The state of `alertname` on `/api/v1/alerts`, if listed.
    pub fn alert_state(&self, alertname: &str) -> Option<String> {
        let (_, body) = http_get(self.agent.addr, "/api/v1/alerts")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["alerts"].as_array()?.iter().find_map(|a| {
            (a["labels"]["alertname"] == alertname)
                .then(|| a["state"].as_str().unwrap_or("").into())
        })
    }
}

/// One row of the scoreboard.
#[derive(Debug)]
pub struct Row {
    pub fault: &'static str,
    pub rule: &'static str,
    pub metric: Option<Duration>,
    pub fired: Option<Duration>,
    pub webhook: Option<Duration>,
    /// None when the rule has no `health` label; Some(None) when it should drain and did not.
    pub haproxy: Option<Option<Duration>>,
}

impl Row {
    /// Prints the row (`SCOREBOARD {json}` on stderr) and appends it to the file named by
    /// `NODEWATCH_SCOREBOARD_OUT`, which `cargo xtask bench` reads.
    pub fn report(&self) {
        let s = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let v = serde_json::json!({
            "fault": self.fault,
            "rule": self.rule,
            "metric": s(self.metric),
            "fired": s(self.fired),
            "webhook": s(self.webhook),
            "drains": self.haproxy.is_some(),
            "haproxy": s(self.haproxy.flatten()),
        });
        eprintln!("SCOREBOARD {v}");
        if let Ok(path) = std::env::var("NODEWATCH_SCOREBOARD_OUT") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open NODEWATCH_SCOREBOARD_OUT");
            writeln!(f, "{v}").unwrap();
        }
    }

    /// Fails the test when any column that applies was not reached.
    pub fn assert_detected(&self, rig: &Rig) {
        let missing = self.metric.is_none()
            || self.fired.is_none()
            || self.webhook.is_none()
            || self.haproxy == Some(None);
        assert!(
            !missing,
            "{}: not detected in time: {self:?}\nalerts: {:?}\nmetrics:\n{}\nlog:\n{}",
            self.fault,
            http_get(rig.agent.addr, "/api/v1/alerts"),
            rig.agent.metrics(),
            rig.agent.log_text()
        );
    }
}

/// Polls every 50 ms from `injected` until every column is reached or `limit` passes.
/// `moved` says whether the metric reacted, given `/metrics`; `drain` is the HAProxy status
/// the rule's `health` label leads to (`None`: the rule does not drain).
pub fn measure(
    rig: &Rig,
    fault: &'static str,
    rule: &'static str,
    injected: Instant,
    limit: Duration,
    drain: Option<&str>,
    mut moved: impl FnMut(&str) -> bool,
) -> Row {
    let mut row = Row {
        fault,
        rule,
        metric: None,
        fired: None,
        webhook: None,
        haproxy: drain.map(|_| None),
    };
    while injected.elapsed() < limit {
        let now = injected.elapsed();
        if row.metric.is_none()
            && let Some((_, text)) = http_get(rig.agent.addr, "/metrics")
            && moved(&text)
        {
            row.metric = Some(now);
        }
        if row.fired.is_none() && rig.alert_state(rule).as_deref() == Some("firing") {
            row.fired = Some(now);
        }
        if row.webhook.is_none() {
            row.webhook = rig.hooks.firing(rule).map(|t| t - injected);
        }
        if let (Some(want), Some(None)) = (drain, row.haproxy)
            && rig.haproxy.status().starts_with(want)
        {
            row.haproxy = Some(Some(now));
        }
        if row.metric.is_some()
            && row.fired.is_some()
            && row.webhook.is_some()
            && row.haproxy != Some(None)
        {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    row
}
