//! The fleet: five agents on this host (probes off, push heartbeats and a drain rule each,
//! distinct `external_labels`) notify two clustered Alertmanagers (Debian's
//! `prometheus-alertmanager`, `--cluster.peer`). The same rule firing on four nodes is four
//! alerts in Alertmanager; with `drain_budget: { max_unhealthy: 2 }`, four nodes losing their
//! service at once leave exactly two out of `/healthz`, never more than two for longer than a
//! tick; when a drained node recovers, a deferred one drains in its place; a `health: down`
//! alert takes a fifth node out regardless. With both Alertmanagers stopped, each node falls
//! back as configured, with one WARN line.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Agent, BIN, TempDir, free_port, have_tool, http_get, http_request, wait_for};

const TICK: Duration = Duration::from_millis(200);
/// How often the test looks at every agent's `/healthz`.
const POLL: Duration = Duration::from_millis(50);

const RULES: &str = "groups:
  - name: fleet
    rules:
      - alert: FleetServiceLost
        expr: nodewatch_heartbeat_up{target=\"svc\"} == 0
        labels: { health: drain, severity: critical }
        annotations: { summary: \"svc stopped beating\" }
      - alert: FleetGpuGone
        expr: nodewatch_heartbeat_up{target=\"gpu\"} == 0
        labels: { health: down, severity: critical }
        annotations: { summary: \"gpu stopped beating\" }
";

/// One Alertmanager of a two-peer cluster on loopback.
struct Alertmanager {
    child: Option<Child>,
    addr: SocketAddr,
    args: Vec<String>,
    log: std::path::PathBuf,
}

impl Alertmanager {
    fn start(dir: &TempDir, tag: &str, cluster: u16, peer: u16) -> Self {
        let cfg = dir.write(
            &format!("am-{tag}.yml"),
            "route:\n  receiver: none\n  group_by: [node]\n  group_wait: 0s\nreceivers:\n  - name: none\n",
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let args = vec![
            format!("--config.file={}", cfg.display()),
            format!(
                "--storage.path={}",
                dir.0.join(format!("am-{tag}")).display()
            ),
            format!("--web.listen-address={addr}"),
            format!("--cluster.listen-address=127.0.0.1:{cluster}"),
            format!("--cluster.advertise-address=127.0.0.1:{cluster}"),
            format!("--cluster.peer=127.0.0.1:{peer}"),
            "--cluster.pushpull-interval=2s".into(),
            "--cluster.settle-timeout=2s".into(),
        ];
        let mut am = Self {
            child: None,
            addr,
            args,
            log: dir.0.join(format!("am-{tag}.log")),
        };
        am.up();
        am
    }

    fn up(&mut self) {
        let child = Command::new("prometheus-alertmanager")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("prometheus-alertmanager (cargo xtask setup installs it)");
        self.child = Some(child);
        wait_for(Duration::from_secs(20), || {
            http_get(self.addr, "/-/ready").filter(|(s, _)| *s == 200)
        })
        .unwrap_or_else(|| {
            panic!(
                "alertmanager {} not ready:\n{}",
                self.addr,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every alert Alertmanager holds (silenced and inhibited ones too).
    fn alerts(&self) -> Vec<serde_json::Value> {
        let (_, body) = http_get(self.addr, "/api/v2/alerts").expect("alertmanager API");
        serde_json::from_str(&body).unwrap_or_default()
    }

    /// The nodes of the alerts named `name`, one entry per alert.
    fn nodes_of(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .alerts()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| a["labels"]["node"].as_str().unwrap_or("?").to_string())
            .collect();
        v.sort();
        v
    }

    fn peers(&self) -> usize {
        http_get(self.addr, "/api/v2/status")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["cluster"]["peers"].as_array().map(Vec::len))
            .unwrap_or(0)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two clustered Alertmanagers.
fn cluster(dir: &TempDir) -> (Alertmanager, Alertmanager) {
    let (c1, c2) = (free_port(), free_port());
    let am1 = Alertmanager::start(dir, "1", c1, c2);
    let am2 = Alertmanager::start(dir, "2", c2, c1);
    wait_for(Duration::from_secs(20), || {
        (am1.peers() == 2 && am2.peers() == 2).then_some(())
    })
    .expect("the two Alertmanagers never formed a cluster");
    (am1, am2)
}

/// Which of each agent's push heartbeats the test sends: `[svc, gpu]`.
type Beats = Arc<Mutex<Vec<(SocketAddr, [bool; 2])>>>;

/// Beats every registered agent's wanted targets every 250 ms until `stop`.
fn beater(beats: Beats, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let now: Vec<_> = beats.lock().unwrap().clone();
            for (addr, want) in now {
                for (target, on) in ["svc", "gpu"].iter().zip(want) {
                    if on {
                        let _ =
                            http_request(addr, "POST", &format!("/api/v1/heartbeat/{target}"), b"");
                    }
                }
            }
            thread::sleep(Duration::from_millis(250));
        }
    })
}

fn node_config(dir: &TempDir, node: &str, ams: &[&Alertmanager], budget: &str) -> String {
    dir.write("rules.yaml", RULES);
    let urls: Vec<String> = ams
        .iter()
        .map(|a| format!("\"http://{}\"", a.addr))
        .collect();
    format!(
        "interval: 200ms
default_rules: false
rule_files: [rules.yaml]
spool_dir: {spool}
probes:
  tcp_retransmits: {{ enabled: false }}
  accept_queue: {{ enabled: false }}
  gpu_ioctl: {{ enabled: false }}
  gpu_xid: {{ enabled: false }}
  gpu_state: {{ enabled: false }}
resources: {{ enabled: false }}
containers: {{ enabled: false }}
external_labels: {{ node: {node}, fleet: test-{pid} }}
heartbeats:
  - {{ name: svc, push_ttl: 1s }}
  - {{ name: gpu, push_ttl: 1s }}
notifiers:
  - {{ name: am, kind: alertmanager, urls: [{urls}], resend_interval: 1s, timeout: 1s }}
health:
  recover_after: 0s
  drain_budget: {budget}
",
        spool = dir.0.join("spool").display(),
        pid = std::process::id(),
        urls = urls.join(", "),
    )
}

/// `/healthz` of one agent: its status word and reasons.
fn health(agent: &Agent) -> (u16, String, Vec<String>) {
    let Some((code, body)) = http_get(agent.addr, "/healthz") else {
        return (0, "unreachable".into(), Vec::new());
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let reasons = v["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    (
        code,
        v["status"].as_str().unwrap_or("?").to_string(),
        reasons,
    )
}

/// When each sample was taken, and the nodes out then.
type Samples = Arc<Mutex<Vec<(Instant, BTreeSet<String>)>>>;

/// Samples of which nodes are out of `/healthz` (503), every [`POLL`].
struct Monitor {
    samples: Samples,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(nodes: Vec<(String, SocketAddr)>) -> Self {
        let samples: Samples = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&samples), Arc::clone(&stop));
        let handle = thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let t = Instant::now();
                let out: BTreeSet<String> = nodes
                    .iter()
                    .filter(|(_, addr)| http_get(*addr, "/healthz").is_some_and(|(c, _)| c == 503))
                    .map(|(n, _)| n.clone())
                    .collect();
                s.lock().unwrap().push((t, out));
                thread::sleep(POLL.saturating_sub(t.elapsed()));
            }
        });
        Self {
            samples,
            stop,
            handle: Some(handle),
        }
    }

    /// The latest sample's nodes out.
    fn out(&self) -> BTreeSet<String> {
        self.samples
            .lock()
            .unwrap()
            .last()
            .map(|s| s.1.clone())
            .unwrap_or_default()
    }

    /// Waits until the same `want` nodes have been out for `steady`.
    fn settle(&self, want: &BTreeSet<String>, steady: Duration, timeout: Duration) -> bool {
        wait_for(timeout, || {
            let s = self.samples.lock().unwrap();
            let since = s.iter().rev().take_while(|(_, out)| out == want).last()?.0;
            (s.last()?.0.duration_since(since) >= steady).then_some(())
        })
        .is_some()
    }

    /// Stops, and returns the longest stretch with more than `max` nodes out (from its first
    /// sample to the first sample after it) and how many such stretches there were.
    fn finish(mut self, max: usize) -> (Duration, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        let s = self.samples.lock().unwrap();
        let (mut longest, mut stretches, mut start) = (Duration::ZERO, 0, None);
        for (t, out) in s.iter() {
            match (out.len() > max, start) {
                (true, None) => {
                    start = Some(*t);
                    stretches += 1;
                }
                (false, Some(s0)) => {
                    longest = longest.max(t.duration_since(s0));
                    start = None;
                }
                _ => {}
            }
        }
        if let (Some(s0), Some((t, _))) = (start, s.last()) {
            longest = longest.max(t.duration_since(s0));
        }
        (longest, stretches, s.len())
    }
}

/// The order the budget ranks the nodes in, from what both Alertmanagers hold: down first,
/// then the earliest `startsAt` of their drain and down alerts, then the name.
fn ranking(ams: &[&Alertmanager]) -> Vec<String> {
    let mut nodes: BTreeMap<String, (bool, String)> = BTreeMap::new();
    for am in ams {
        for a in am.alerts() {
            let l = &a["labels"];
            let (Some(node), Some(h)) = (l["node"].as_str(), l["health"].as_str()) else {
                continue;
            };
            if h != "drain" && h != "down" {
                continue;
            }
            let starts = a["startsAt"].as_str().unwrap_or_default().to_string();
            let e = nodes.entry(node.into()).or_insert((false, starts.clone()));
            e.0 |= h == "down";
            // RFC 3339 in UTC with milliseconds: ordered as text.
            if starts < e.1 {
                e.1 = starts;
            }
        }
    }
    let mut v: Vec<(bool, String, String)> = nodes
        .into_iter()
        .map(|(n, (down, s))| (!down, s, n))
        .collect();
    v.sort();
    v.into_iter().map(|(_, _, n)| n).collect()
}

fn set(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.to_string()).collect()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Starts one agent per `(node, budget)`, each beating both of its targets from the start.
fn start_nodes(
    nodes: &[(&str, &str)],
    ams: &[&Alertmanager],
    beats: &Beats,
) -> (Vec<Agent>, Vec<TempDir>) {
    let (mut agents, mut dirs) = (Vec::new(), Vec::new());
    for (node, budget) in nodes {
        let d = TempDir::new(&format!("fleet-{node}"));
        let agent = Agent::start(&d, &node_config(&d, node, ams, budget));
        beats.lock().unwrap().push((agent.addr, [true, true]));
        // The first beats go before a TTL runs out.
        let _ = http_request(agent.addr, "POST", "/api/v1/heartbeat/svc", b"");
        let _ = http_request(agent.addr, "POST", "/api/v1/heartbeat/gpu", b"");
        agents.push(agent);
        dirs.push(d);
    }
    (agents, dirs)
}

/// Waits until every Alertmanager holds the member alert of exactly `names`.
fn wait_members(ams: &[&Alertmanager], names: &[String]) {
    for am in ams {
        wait_for(Duration::from_secs(15), || {
            (am.nodes_of("NodewatchFleetMember") == names).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "members in {}: {:?}",
                am.addr,
                am.nodes_of("NodewatchFleetMember")
            )
        });
    }
}

#[test]
fn five_nodes_share_one_drain_budget_through_two_clustered_alertmanagers() {
    if !have_tool("fleet", "prometheus-alertmanager") {
        return;
    }
    let dir = TempDir::new("fleet-ams");
    let (am1, am2) = cluster(&dir);
    let ams = [&am1, &am2];
    let beats: Beats = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let beating = beater(Arc::clone(&beats), Arc::clone(&stop));
    let names: Vec<String> = (1..=5).map(|i| format!("node{i}")).collect();
    let nodes: Vec<(&str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), "{ max_unhealthy: 2 }"))
        .collect();
    let (agents, _dirs) = start_nodes(&nodes, &ams, &beats);
    let logs = |i: usize| agents[i].log_text();
    // Every node announces itself to both Alertmanagers; all are in.
    wait_members(&ams, &names);
    assert!(agents.iter().all(|a| health(a).0 == 200));
    let monitor = Monitor::start(
        names
            .iter()
            .cloned()
            .zip(agents.iter().map(|a| a.addr))
            .collect(),
    );

    // 1. Four nodes lose their service at once.
    let lost = Instant::now();
    for b in beats.lock().unwrap().iter_mut().take(4) {
        b.1[0] = false;
    }
    // The same rule on four nodes is four alerts, in each Alertmanager.
    for am in ams {
        wait_for(Duration::from_secs(10), || {
            (am.nodes_of("FleetServiceLost") == names[..4]).then_some(())
        })
        .unwrap_or_else(|| panic!("{}: {:?}", am.addr, am.nodes_of("FleetServiceLost")));
    }
    eprintln!(
        "four FleetServiceLost alerts, one per node, in both Alertmanagers {:?} after the beats stopped",
        lost.elapsed()
    );
    // Exactly two out: the two the ranking puts first; the other two wait, degraded.
    let settled = wait_for(Duration::from_secs(10), || {
        let rank = ranking(&ams);
        (rank.len() == 4).then_some(())?;
        let want = set(&[&rank[0], &rank[1]]);
        monitor
            .settle(&want, 2 * TICK, Duration::ZERO)
            .then_some(rank)
    });
    let rank = settled.unwrap_or_else(|| {
        panic!(
            "never exactly two out: {:?}, ranking {:?}\n{}",
            monitor.out(),
            ranking(&ams),
            logs(0)
        )
    });
    eprintln!(
        "ranking {rank:?}: out {:?}, {:?} after the beats stopped",
        monitor.out(),
        lost.elapsed()
    );
    assert!(
        monitor.settle(
            &set(&[&rank[0], &rank[1]]),
            Duration::from_secs(2),
            Duration::from_secs(5)
        ),
        "the two out did not stay: {:?}",
        monitor.out()
    );
    let idx = |n: &str| names.iter().position(|x| x == n).unwrap();
    for (i, n) in rank.iter().enumerate() {
        let a = &agents[idx(n)];
        let (code, status, reasons) = health(a);
        let deferred = common::sample(&a.metrics(), "nodewatch_drain_deferred");
        if i < 2 {
            assert_eq!(
                (code, status.as_str(), deferred),
                (503, "draining", Some(0.0)),
                "{n}: {reasons:?}"
            );
        } else {
            assert_eq!(
                (code, status.as_str(), deferred),
                (200, "degraded", Some(1.0)),
                "{n}: {reasons:?}"
            );
            assert!(
                reasons.iter().any(|r| r.starts_with(
                    "drain deferred: max_unhealthy 2; 4 want out and this node is number "
                )),
                "{n}: {reasons:?}"
            );
            let log = a.log_text();
            assert_eq!(
                count(&log, "drain deferred: the node stays"),
                1,
                "{n}: one log line:\n{log}"
            );
            let out = Command::new(BIN)
                .args(["status", "--addr", &a.addr.to_string()])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("node: degraded") && text.contains("reason: drain deferred"),
                "{text}"
            );
        }
    }
    // The deferred nodes' drain alerts still fire: that is how the others see them wait.
    assert_eq!(am1.nodes_of("NodewatchNodeUnhealthy"), names[..4]);

    // 2. The first drained node recovers: the first deferred one drains in its place.
    let back = idx(&rank[0]);
    beats.lock().unwrap()[back].1[0] = true;
    let t = Instant::now();
    let want = set(&[&rank[1], &rank[2]]);
    assert!(
        monitor.settle(&want, 2 * TICK, Duration::from_secs(10)),
        "after {} recovered: out {:?}, want {want:?}",
        rank[0],
        monitor.out()
    );
    eprintln!(
        "{} back: {} drained in its place {:?} later",
        rank[0],
        rank[2],
        t.elapsed()
    );
    assert_eq!(health(&agents[back]).1, "healthy");
    assert_eq!(health(&agents[idx(&rank[3])]).1, "degraded");

    // 3. A down alert on the fifth node takes it out regardless; it takes a place in the
    //    budget, so the later of the two drained nodes goes back in.
    beats.lock().unwrap()[4].1[1] = false;
    let t = Instant::now();
    wait_for(Duration::from_secs(10), || {
        (health(&agents[4]).1 == "down").then_some(())
    })
    .unwrap_or_else(|| panic!("node5 never down: {:?}\n{}", health(&agents[4]), logs(4)));
    eprintln!("node5 down {:?} after its gpu beats stopped", t.elapsed());
    let want = set(&["node5", &rank[1]]);
    assert!(
        monitor.settle(&want, Duration::from_secs(1), Duration::from_secs(10)),
        "with node5 down: out {:?}, want {want:?}",
        monitor.out()
    );
    assert_eq!(health(&agents[idx(&rank[2])]).1, "degraded");

    let (longest, stretches, samples) = monitor.finish(2);
    eprintln!(
        "more than two out: {stretches} times, the longest {longest:?} ({samples} samples of every /healthz, {POLL:?} apart; tick {TICK:?})"
    );
    assert!(
        longest <= TICK + 2 * POLL,
        "more than two nodes were out for {longest:?}, longer than a tick"
    );
    stop.store(true, Ordering::Relaxed);
    beating.join().unwrap();
    drop(agents);
}

#[test]
fn without_alertmanager_each_node_falls_back_as_configured() {
    if !have_tool("fleet", "prometheus-alertmanager") {
        return;
    }
    let dir = TempDir::new("fleet-down-ams");
    let (mut am1, mut am2) = cluster(&dir);
    let beats: Beats = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let beating = beater(Arc::clone(&beats), Arc::clone(&stop));
    let (agents, _dirs) = start_nodes(
        &[
            ("alone", "{ max_unhealthy: 1 }"),
            ("stays", "{ max_unhealthy: 1, when_unreachable: stay }"),
        ],
        &[&am1, &am2],
        &beats,
    );
    wait_for(Duration::from_secs(15), || {
        (am1.nodes_of("NodewatchFleetMember").len() == 2).then_some(())
    })
    .expect("both members announced");
    am1.stop();
    am2.stop();
    for b in beats.lock().unwrap().iter_mut() {
        b.1[0] = false;
    }
    let (alone, stays) = (&agents[0], &agents[1]);
    wait_for(Duration::from_secs(10), || {
        (health(alone).1 == "draining").then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", health(alone), alone.log_text()));
    wait_for(Duration::from_secs(10), || {
        (health(stays).1 == "degraded").then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", health(stays), stays.log_text()));
    // Ten ticks more: still one WARN line each.
    thread::sleep(10 * TICK);
    let (code, _, reasons) = health(alone);
    assert_eq!(code, 503);
    assert!(
        reasons
            .iter()
            .any(|r| r == "drain budget: no Alertmanager answered (2 asked); decided alone"),
        "{reasons:?}"
    );
    let (code, status, reasons) = health(stays);
    assert_eq!((code, status.as_str()), (200, "degraded"));
    assert!(
        reasons.iter().any(|r| r.starts_with(
            "drain deferred: no Alertmanager answered (2 asked) and when_unreachable is stay"
        )),
        "{reasons:?}"
    );
    assert_eq!(
        common::sample(&stays.metrics(), "nodewatch_drain_deferred"),
        Some(1.0)
    );
    for (a, says) in [
        (alone, "this node decides alone"),
        (stays, "this node stays in the load balancer"),
    ] {
        let log = a.log_text();
        let warns: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("drain budget: no Alertmanager answered;"))
            .collect();
        assert_eq!(warns.len(), 1, "one line:\n{log}");
        assert!(
            warns[0].contains("WARN") && warns[0].contains(says),
            "{}",
            warns[0]
        );
    }
    // One Alertmanager back: the node that stayed says so once and decides by the budget.
    am1.up();
    wait_for(Duration::from_secs(10), || {
        stays
            .log_text()
            .contains("drain budget: Alertmanager answers again")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", stays.log_text()));
    let (_, _, reasons) = health(stays);
    assert!(
        !reasons
            .iter()
            .any(|r| r.contains("no Alertmanager answered")),
        "{reasons:?}"
    );
    stop.store(true, Ordering::Relaxed);
    beating.join().unwrap();
}

/// `max_unhealthy: "40%"`: the fleet's size is the nodes whose member alert Alertmanager
/// holds (five), so 40 % lets two of them out when four lose their service.
#[test]
fn a_percentage_budget_takes_the_fleet_size_from_the_member_alerts() {
    if !have_tool("fleet percent", "prometheus-alertmanager") {
        return;
    }
    let dir = TempDir::new("fleet-pct");
    let (am1, am2) = cluster(&dir);
    let ams = [&am1, &am2];
    let beats: Beats = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let beating = beater(Arc::clone(&beats), Arc::clone(&stop));
    let names: Vec<String> = (1..=5).map(|i| format!("pct{i}")).collect();
    let nodes: Vec<(&str, &str)> = names
        .iter()
        .map(|n| (n.as_str(), "{ max_unhealthy: \"40%\" }"))
        .collect();
    let (agents, _dirs) = start_nodes(&nodes, &ams, &beats);
    wait_members(&ams, &names);
    let monitor = Monitor::start(
        names
            .iter()
            .cloned()
            .zip(agents.iter().map(|a| a.addr))
            .collect(),
    );
    for b in beats.lock().unwrap().iter_mut().take(4) {
        b.1[0] = false;
    }
    let rank = wait_for(Duration::from_secs(15), || {
        let rank = ranking(&ams);
        (rank.len() == 4).then_some(())?;
        monitor
            .settle(&set(&[&rank[0], &rank[1]]), 2 * TICK, Duration::ZERO)
            .then_some(rank)
    })
    .unwrap_or_else(|| {
        panic!(
            "never exactly two out: {:?}, ranking {:?}",
            monitor.out(),
            ranking(&ams)
        )
    });
    let idx = |n: &str| names.iter().position(|x| x == n).unwrap();
    for n in &rank[2..] {
        let (code, status, reasons) = health(&agents[idx(n)]);
        assert_eq!(
            (code, status.as_str()),
            (200, "degraded"),
            "{n}: {reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.starts_with(
                "drain deferred: max_unhealthy 40% lets 2 of 5 nodes out; 4 want out"
            )),
            "{n}: {reasons:?}"
        );
    }
    let (longest, stretches, samples) = monitor.finish(2);
    eprintln!(
        "40 % of five: two out; more than two out {stretches} times in {samples} samples, at most {longest:?}"
    );
    assert!(
        longest <= TICK + 2 * POLL,
        "more than two out for {longest:?}"
    );
    stop.store(true, Ordering::Relaxed);
    beating.join().unwrap();
}
