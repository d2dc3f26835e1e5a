//! The fleet, as every user runs it: agents with the embedded default rules and their push
//! heartbeats (probes off: twenty agents on one host), `external_labels` of their own, one
//! drain budget, notifying clustered Alertmanagers (Debian's `prometheus-alertmanager`,
//! `--cluster.peer`). A node that loses its service fires the default `NodewatchHeartbeatDown`
//! (`health: down`), which the budget holds back like a drain: however many nodes lose their
//! service, no more than the budget leave `/healthz`; the others stay in, degraded, and
//! `NodewatchDrainBudgetExhausted` reaches Alertmanager. Twenty agents race with three
//! Alertmanagers, one of them killed mid-run, and one agent cut off from all of them (nft);
//! when the nodes out recover, the next take their turn. With every Alertmanager stopped,
//! each node falls back as configured, with one WARN line.

mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, BIN, NftTable, TempDir, free_port, have_tool, http_get, http_request, wait_for,
};

/// The fleets run one at a time: each is a fleet of its own, and twenty agents are enough for
/// two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often the test looks at every agent's `/healthz`.
const POLL: Duration = Duration::from_millis(100);
/// The agent's default tick.
const TICK: Duration = Duration::from_secs(1);

/// One Alertmanager of a cluster on loopback, listening on 127.0.0.1 and on 127.0.0.2 (the
/// address the test cuts off with nft).
struct Alertmanager {
    child: Option<Child>,
    addr: SocketAddr,
    args: Vec<String>,
    log: std::path::PathBuf,
}

impl Alertmanager {
    fn start(dir: &TempDir, tag: &str, cluster: u16, peers: &[u16]) -> Self {
        let cfg = dir.write(
            &format!("am-{tag}.yml"),
            "route:\n  receiver: none\n  group_by: [node]\n  group_wait: 0s\nreceivers:\n  - name: none\n",
        );
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut args = vec![
            format!("--config.file={}", cfg.display()),
            format!(
                "--storage.path={}",
                dir.0.join(format!("am-{tag}")).display()
            ),
            format!("--web.listen-address={addr}"),
            format!("--web.listen-address=127.0.0.2:{port}"),
            format!("--cluster.listen-address=127.0.0.1:{cluster}"),
            format!("--cluster.advertise-address=127.0.0.1:{cluster}"),
            "--cluster.pushpull-interval=2s".into(),
            "--cluster.settle-timeout=2s".into(),
        ];
        args.extend(
            peers
                .iter()
                .map(|p| format!("--cluster.peer=127.0.0.1:{p}")),
        );
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

    /// The URL an agent uses, on 127.0.0.1 or on the address that can be cut off.
    fn url(&self, cut_off: bool) -> String {
        let host = if cut_off { "127.0.0.2" } else { "127.0.0.1" };
        format!("\"http://{host}:{}\"", self.addr.port())
    }

    /// Every alert Alertmanager holds (silenced and inhibited ones too).
    fn alerts(&self) -> Vec<serde_json::Value> {
        http_get(self.addr, "/api/v2/alerts")
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default()
    }

    /// The nodes of the alerts named `name` (and with `label` = value, when given), sorted
    /// and without repeats.
    fn nodes_of(&self, name: &str, label: Option<(&str, &str)>) -> Vec<String> {
        let set: BTreeSet<String> = self
            .alerts()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .filter(|a| label.is_none_or(|(k, v)| a["labels"][k] == v))
            .map(|a| a["labels"]["node"].as_str().unwrap_or("?").to_string())
            .collect();
        set.into_iter().collect()
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

/// `n` clustered Alertmanagers.
fn cluster(dir: &TempDir, n: usize) -> Vec<Alertmanager> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let ams: Vec<Alertmanager> = (0..n)
        .map(|i| {
            let peers: Vec<u16> = ports[..i].to_vec();
            let first = if i == 0 { vec![ports[1 % n]] } else { peers };
            Alertmanager::start(dir, &(i + 1).to_string(), ports[i], &first)
        })
        .collect();
    wait_for(Duration::from_secs(30), || {
        ams.iter().all(|a| a.peers() == n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the Alertmanagers never formed a cluster: {:?}",
            ams.iter().map(Alertmanager::peers).collect::<Vec<_>>()
        )
    });
    ams
}

/// Which agents' push heartbeat the test sends.
type Beats = Arc<Mutex<Vec<(SocketAddr, bool)>>>;

/// Beats every registered agent whose beat is on, every 250 ms until `stop`.
fn beater(beats: Beats, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let now: Vec<_> = beats.lock().unwrap().clone();
            for (addr, on) in now {
                if on {
                    let _ = http_request(addr, "POST", "/api/v1/heartbeat/svc", b"");
                }
            }
            thread::sleep(Duration::from_millis(250));
        }
    })
}

/// The embedded defaults, but for what the scenario names: the node, the fleet, the service's
/// push heartbeat, the Alertmanagers, the budget; and no probes or host resources (twenty
/// agents share this host: one host's signals would be twenty nodes' fault).
fn node_config(dir: &TempDir, node: &str, am_urls: &[String], budget: &str) -> String {
    format!(
        "spool_dir: {spool}
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
notifiers:
  - {{ name: am, kind: alertmanager, urls: [{urls}] }}
health:
  drain_budget: {budget}
",
        spool = dir.0.join("spool").display(),
        pid = std::process::id(),
        urls = am_urls.join(", "),
    )
}

/// `/healthz` of one agent: its code, status word and reasons.
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

/// What the monitor saw over a run.
#[derive(Debug)]
struct Overshoot {
    /// The most nodes out in one sample.
    most: usize,
    /// Samples with more than the budget out.
    samples_over: usize,
    /// The longest run of consecutive samples over.
    longest_run: usize,
    samples: usize,
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

    /// Waits until the same nodes, `check`ed, have been out for `steady`; returns them.
    fn settle(
        &self,
        steady: Duration,
        timeout: Duration,
        check: impl Fn(&BTreeSet<String>) -> bool,
    ) -> Option<BTreeSet<String>> {
        wait_for(timeout, || {
            let s = self.samples.lock().unwrap();
            let last = &s.last()?.1;
            if !check(last) {
                return None;
            }
            let since = s.iter().rev().take_while(|(_, out)| out == last).last()?.0;
            (s.last()?.0.duration_since(since) >= steady).then(|| last.clone())
        })
    }

    /// Stops, and says how far past `max` the fleet went.
    fn finish(mut self, max: usize) -> Overshoot {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        let s = self.samples.lock().unwrap();
        let (mut run, mut o) = (
            0,
            Overshoot {
                most: 0,
                samples_over: 0,
                longest_run: 0,
                samples: s.len(),
            },
        );
        for (_, out) in s.iter() {
            o.most = o.most.max(out.len());
            if out.len() > max {
                o.samples_over += 1;
                run += 1;
                o.longest_run = o.longest_run.max(run);
            } else {
                run = 0;
            }
        }
        o
    }
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// Starts one agent per `(node, budget, cut_off)`, each beating from the start.
fn start_nodes(
    nodes: &[(String, &str, bool)],
    ams: &[Alertmanager],
    beats: &Beats,
) -> (Vec<Agent>, Vec<TempDir>) {
    let (mut agents, mut dirs) = (Vec::new(), Vec::new());
    for (node, budget, cut_off) in nodes {
        let d = TempDir::new(&format!("fleet-{node}"));
        let urls: Vec<String> = ams.iter().map(|a| a.url(*cut_off)).collect();
        let agent = Agent::start(&d, &node_config(&d, node, &urls, budget));
        beats.lock().unwrap().push((agent.addr, true));
        // The first beat goes before the TTL runs out.
        let _ = http_request(agent.addr, "POST", "/api/v1/heartbeat/svc", b"");
        agents.push(agent);
        dirs.push(d);
    }
    (agents, dirs)
}

/// Waits until every Alertmanager holds the member alert of exactly `names`.
fn wait_members(ams: &[&Alertmanager], names: &[String]) {
    for am in ams {
        wait_for(Duration::from_secs(30), || {
            (am.nodes_of("NodewatchFleetMember", None) == names).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "members in {}: {:?}",
                am.addr,
                am.nodes_of("NodewatchFleetMember", None)
            )
        });
    }
}

/// The nodes whose claim in any of `ams` says they are out.
fn claimed_out(ams: &[&Alertmanager]) -> BTreeSet<String> {
    ams.iter()
        .flat_map(|a| a.nodes_of("NodewatchNodeUnhealthy", Some(("drain_budget", "out"))))
        .collect()
}

/// Waits until `am` holds claims of more than `allowed` nodes, then until it holds
/// `NodewatchDrainBudgetExhausted`; the time between the two.
fn exhausted_after(am: &Alertmanager, allowed: usize, timeout: Duration) -> Duration {
    let over = wait_for(timeout, || {
        (am.nodes_of("NodewatchNodeUnhealthy", None).len() > allowed).then(Instant::now)
    })
    .unwrap_or_else(|| panic!("never more than {allowed} claims: {:?}", am.alerts()));
    wait_for(timeout, || {
        (!am.nodes_of("NodewatchDrainBudgetExhausted", None)
            .is_empty())
        .then(|| over.elapsed())
    })
    .unwrap_or_else(|| panic!("no NodewatchDrainBudgetExhausted in {}", am.addr))
}

/// Once more nodes want out than `allowed`: the trip signal reaches `am` within 2 s, and
/// exactly `allowed` nodes settle out (the same set for 3 s); they are returned.
fn trip_and_settle(
    am: &Alertmanager,
    monitor: &Monitor,
    allowed: usize,
    lost: Instant,
) -> BTreeSet<String> {
    let trip = exhausted_after(am, allowed, Duration::from_secs(15));
    eprintln!(
        "NodewatchDrainBudgetExhausted in Alertmanager {trip:?} after it held claim number {}",
        allowed + 1
    );
    assert!(trip <= Duration::from_secs(2), "{trip:?}");
    let out = monitor
        .settle(Duration::from_secs(3), Duration::from_secs(20), |o| {
            o.len() == allowed
        })
        .unwrap_or_else(|| panic!("never exactly {allowed} out: {:?}", monitor.out()));
    eprintln!("out {out:?}, {:?} after the beats stopped", lost.elapsed());
    out
}

/// Checks a node held back: in, degraded, with the budget's reason, said once.
fn assert_held(agent: &Agent, node: &str, reason_starts: &str) {
    let (code, status, reasons) = health(agent);
    assert_eq!(
        (code, status.as_str()),
        (200, "degraded"),
        "{node}: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with(reason_starts)),
        "{node}: {reasons:?}"
    );
    assert_eq!(
        common::sample(&agent.metrics(), "nodewatch_drain_deferred"),
        Some(1.0),
        "{node}"
    );
    let log = agent.log_text();
    assert_eq!(
        count(&log, "drain deferred: the node stays"),
        1,
        "{node}: one log line:\n{log}"
    );
}

#[test]
fn five_nodes_losing_their_service_leave_no_more_than_the_budget() {
    let _serial = serial();
    if !have_tool("fleet", "prometheus-alertmanager") {
        return;
    }
    let dir = TempDir::new("fleet-ams");
    let ams = cluster(&dir, 2);
    let am_refs: Vec<&Alertmanager> = ams.iter().collect();
    let beats: Beats = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let beating = beater(Arc::clone(&beats), Arc::clone(&stop));
    let names: Vec<String> = (1..=5).map(|i| format!("node{i}")).collect();
    let nodes: Vec<(String, &str, bool)> = names
        .iter()
        .map(|n| (n.clone(), "{ max_unhealthy: 2 }", false))
        .collect();
    let (agents, _dirs) = start_nodes(&nodes, &ams, &beats);
    wait_members(&am_refs, &names);
    assert!(agents.iter().all(|a| health(a).0 == 200));
    let monitor = Monitor::start(
        names
            .iter()
            .cloned()
            .zip(agents.iter().map(|a| a.addr))
            .collect(),
    );

    // Four nodes lose their service at once: the default NodewatchHeartbeatDown (down).
    let lost = Instant::now();
    for b in beats.lock().unwrap().iter_mut().take(4) {
        b.1 = false;
    }
    let out = trip_and_settle(&ams[0], &monitor, 2, lost);
    assert_eq!(claimed_out(&am_refs), out, "the claims say who is out");
    let idx = |n: &str| names.iter().position(|x| x == n).unwrap();
    for n in &names[..4] {
        let a = &agents[idx(n)];
        if out.contains(n) {
            assert_eq!(health(a).1, "down", "{n}");
            continue;
        }
        assert_held(
            a,
            n,
            "drain deferred: max_unhealthy 2; 4 want out and this node is number ",
        );
        let cli = Command::new(BIN)
            .args(["status", "--addr", &a.addr.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&cli.stdout);
        assert!(
            text.contains("node: degraded") && text.contains("reason: drain deferred"),
            "{text}"
        );
        assert_eq!(
            common::sample(&a.metrics(), "nodewatch_drain_budget_exhausted"),
            Some(1.0)
        );
    }
    assert_eq!(health(&agents[4]).1, "healthy");

    let o = monitor.finish(2);
    eprintln!("five nodes, budget 2: {o:?} in {} samples", o.samples);
    assert_eq!(o.samples_over, 0, "more than two out: {o:?}");
    stop.store(true, Ordering::Relaxed);
    beating.join().unwrap();
}

#[test]
fn twenty_nodes_race_for_a_budget_of_twenty_percent() {
    let _serial = serial();
    if !have_tool("fleet", "prometheus-alertmanager") || !have_tool("fleet", "nft") {
        return;
    }
    let dir = TempDir::new("fleet-20");
    let mut ams = cluster(&dir, 3);
    let beats: Beats = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let beating = beater(Arc::clone(&beats), Arc::clone(&stop));
    let names: Vec<String> = (1..=20).map(|i| format!("node{i:02}")).collect();
    // node20 reaches the Alertmanagers through 127.0.0.2, which the test cuts off.
    let nodes: Vec<(String, &str, bool)> = names
        .iter()
        .map(|n| match n.as_str() {
            "node20" => (
                n.clone(),
                "{ max_unhealthy: \"20%\", when_unreachable: stay }",
                true,
            ),
            _ => (n.clone(), "{ max_unhealthy: \"20%\" }", false),
        })
        .collect();
    let (agents, _dirs) = start_nodes(&nodes, &ams, &beats);
    wait_members(&ams.iter().collect::<Vec<_>>(), &names);
    let ports: Vec<String> = ams.iter().map(|a| a.addr.port().to_string()).collect();
    let _cut = NftTable::create(
        "nw_fleet_cut",
        &format!(
            "chain output {{ type filter hook output priority 0; ip daddr 127.0.0.2 tcp dport {{ {} }} drop; }}",
            ports.join(", ")
        ),
    );
    let monitor = Monitor::start(
        names
            .iter()
            .cloned()
            .zip(agents.iter().map(|a| a.addr))
            .collect(),
    );
    let idx = |n: &str| names.iter().position(|x| x == n).unwrap();

    // Twelve nodes lose their service at once: eleven that reach Alertmanager, and node20.
    let failing: Vec<String> = names[..11].iter().chain(&names[19..]).cloned().collect();
    let lost = Instant::now();
    for n in &failing {
        beats.lock().unwrap()[idx(n)].1 = false;
    }
    let out = trip_and_settle(&ams[0], &monitor, 4, lost);
    let am_refs: Vec<&Alertmanager> = ams.iter().collect();
    assert_eq!(claimed_out(&am_refs), out, "the claims say who is out");
    assert!(out.iter().all(|n| failing.contains(n) && n != "node20"));
    for n in failing
        .iter()
        .filter(|n| !out.contains(*n) && *n != "node20")
    {
        assert_held(
            &agents[idx(n)],
            n,
            "drain deferred: max_unhealthy 20% lets 4 of 20 nodes out; 11 want out and this node is number ",
        );
    }
    // node20 hears from no Alertmanager: it stays in, as when_unreachable says, once told.
    let cut = &agents[idx("node20")];
    wait_for(Duration::from_secs(10), || {
        health(cut)
            .2
            .iter()
            .any(|r| {
                r.starts_with(
                    "drain deferred: no Alertmanager answered (3 asked) and when_unreachable is stay",
                )
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("node20: {:?}\n{}", health(cut), cut.log_text()));
    assert_eq!(health(cut).1, "degraded");

    // One of the three Alertmanagers dies: the other two still hold every claim.
    ams[2].stop();
    let still = monitor
        .settle(Duration::from_secs(5), Duration::from_secs(15), |o| {
            o.len() == 4
        })
        .unwrap_or_else(|| {
            panic!(
                "not four out with an Alertmanager gone: {:?}",
                monitor.out()
            )
        });
    assert_eq!(still, out, "the same four stay out");

    // The four out recover: four of the waiting take their turn (after the default
    // keep_firing_for and recover_after).
    let back = Instant::now();
    for n in &out {
        beats.lock().unwrap()[idx(n)].1 = true;
    }
    let next = monitor
        .settle(Duration::from_secs(3), Duration::from_secs(90), |o| {
            o.len() == 4 && o.is_disjoint(&out)
        })
        .unwrap_or_else(|| panic!("no turn taken: out {:?}", monitor.out()));
    eprintln!(
        "{next:?} took their turn {:?} after {out:?} beat again",
        back.elapsed()
    );
    for n in &out {
        assert_eq!(health(&agents[idx(n)]).1, "healthy", "{n}");
    }

    // Everyone recovers: the trip signal resolves.
    for b in beats.lock().unwrap().iter_mut() {
        b.1 = true;
    }
    wait_for(Duration::from_secs(90), || {
        ams[0]
            .nodes_of("NodewatchDrainBudgetExhausted", None)
            .is_empty()
            .then_some(())
    })
    .expect("NodewatchDrainBudgetExhausted never resolved");

    let o = monitor.finish(4);
    eprintln!("twenty nodes, budget 20 %: {o:?} in {} samples", o.samples);
    assert!(
        o.longest_run <= 1,
        "more than four out for more than one sample: {o:?}"
    );
    stop.store(true, Ordering::Relaxed);
    beating.join().unwrap();
}

#[test]
fn without_alertmanager_each_node_falls_back_as_configured() {
    let _serial = serial();
    if !have_tool("fleet", "prometheus-alertmanager") {
        return;
    }
    let dir = TempDir::new("fleet-down-ams");
    let mut ams = cluster(&dir, 2);
    let beats: Beats = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let beating = beater(Arc::clone(&beats), Arc::clone(&stop));
    let (agents, _dirs) = start_nodes(
        &[
            ("alone".into(), "{ max_unhealthy: 1 }", false),
            (
                "stays".into(),
                "{ max_unhealthy: 1, when_unreachable: stay }",
                false,
            ),
        ],
        &ams,
        &beats,
    );
    wait_for(Duration::from_secs(15), || {
        (ams[0].nodes_of("NodewatchFleetMember", None).len() == 2).then_some(())
    })
    .expect("both members announced");
    for a in &mut ams {
        a.stop();
    }
    for b in beats.lock().unwrap().iter_mut() {
        b.1 = false;
    }
    let (alone, stays) = (&agents[0], &agents[1]);
    wait_for(Duration::from_secs(10), || {
        (health(alone).1 == "down").then_some(())
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
        assert!(warns[0].contains(says), "{}", warns[0]);
    }
    // One Alertmanager back: the node that stayed says so once and decides by the budget.
    ams[0].up();
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
