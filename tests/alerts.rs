//! Rules inside the running agent: a real fault makes a default rule fire on
//! `/api/v1/alerts` (timed from the fault), and SIGHUP reloads the rules, keeping the state of
//! unchanged alerts and refusing an invalid set.

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, Netns, NftTable, TempDir, have_root, healthz, http_get,
    receiver::{Answer, Receiver},
    wait_for,
};
use serde_json::Value;

/// The alerts the agent serves.
fn alerts(agent: &Agent) -> Vec<Value> {
    let (status, body) = http_get(agent.addr, "/api/v1/alerts").expect("GET /api/v1/alerts");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["alerts"].as_array().cloned().unwrap_or_default()
}

fn find<'a>(alerts: &'a [Value], name: &str) -> Option<&'a Value> {
    alerts.iter().find(|a| a["labels"]["alertname"] == name)
}

/// The number of rules in the shipped `alerts/default.yaml`, counted from its text.
fn default_rule_count() -> usize {
    let text = include_str!("../alerts/default.yaml");
    let n = text
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(n >= 10, "alerts/default.yaml has only {n} rules");
    n
}

fn sighup(agent: &Agent) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
}

fn listener(backlog: i32) -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen() again on a listening socket only changes its backlog.
    let rc = unsafe { libc::listen(l.as_raw_fd(), backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    l
}

/// An accept queue overflows; the default rule `NodewatchListenOverflow` (no `for`) must be
/// firing on `/api/v1/alerts` within the next tick or two, with the labels that drain the node.
#[test]
fn accept_queue_overflow_fires_the_default_rule_within_a_tick() {
    if !have_root("alerts end to end") {
        return;
    }
    let ns = Netns::create("alerts");
    ns.run(|| {
        let l = listener(1);
        let port = l.local_addr().unwrap().port();
        let dir = TempDir::new("alerts-e2e");
        // The default interval (1 s) and the embedded default rules.
        let agent = Agent::start(
            &dir,
            &format!(
                "probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ ports: [{port}] }}\n"
            ),
        );
        let series = format!("nodewatch_tcp_listen_overflows_total{{port=\"{port}\"}}");
        wait_for(Duration::from_secs(5), || agent.sample(&series))
            .unwrap_or_else(|| panic!("no {series}:\n{}", agent.metrics()));
        // Two ticks at zero, so the rule has a baseline.
        thread::sleep(Duration::from_millis(2100));
        assert!(find(&alerts(&agent), "NodewatchListenOverflow").is_none());

        // Backlog 1 holds two connections; the third SYN is dropped.
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let keep: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap())
            .collect();
        let fault = Instant::now();
        let dropped = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
        assert!(dropped.is_err(), "the third connection should not get in");

        let (elapsed, alert) = wait_for(Duration::from_secs(10), || {
            let all = alerts(&agent);
            let a = find(&all, "NodewatchListenOverflow")?;
            (a["state"] == "firing").then(|| (fault.elapsed(), a.clone()))
        })
        .unwrap_or_else(|| panic!("never fired:\n{}\n{}", agent.metrics(), agent.log_text()));
        eprintln!(
            "accept-queue overflow to NodewatchListenOverflow firing on /api/v1/alerts: {elapsed:?} (interval 1s)"
        );
        assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
        assert_eq!(alert["labels"]["port"], port.to_string());
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(alert["labels"]["health"], "drain");
        let summary = alert["annotations"]["summary"].as_str().unwrap();
        assert!(
            summary.starts_with(&format!("Accept queue of port {port} overflows: ")),
            "{summary}"
        );
        assert!(alert["activeAt"].as_str().unwrap().ends_with('Z'), "{alert}");
        assert!(alert["value"].as_str().unwrap().contains("e+"), "{alert}");
        let firing = agent.sample(
            "nodewatch_alerts{alertname=\"NodewatchListenOverflow\",state=\"firing\"}",
        );
        assert_eq!(firing, Some(1.0), "{}", agent.metrics());
        assert!(agent.log_text().contains("alert firing"), "{}", agent.log_text());
        drop((keep, l));
        assert!(agent.stop().success());
    });
}

/// Real retransmits (an nft table drops most packets toward a watched port) make a rule from
/// `rule_files` fire; the default `for:` is replaced by an immediate rule so the test is short.
#[test]
fn retransmits_fire_a_rule_from_rule_files() {
    if !have_root("alerts retransmits") {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = TempDir::new("alerts-retrans");
    dir.write(
        "rules.yaml",
        "groups:\n  - name: t\n    rules:\n      - alert: Retransmitting\n        expr: increase(nodewatch_tcp_retransmits_total{port!~\"other|all\"}[10s]) > 0\n        labels: { severity: warning }\n        annotations: { summary: 'port {{ $labels.port }}' }\n",
    );
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms\nrule_files: [rules.yaml]\nprobes:\n  tcp_retransmits: {{ ports: [{port}] }}\n  accept_queue: {{ enabled: false }}\n"
        ),
    );
    thread::sleep(Duration::from_millis(600));
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    let _drop = NftTable::create(
        "nodewatch_test_alerts",
        &format!("chain in {{\n type filter hook input priority 0;\n tcp dport {port} drop\n}}"),
    );
    let fault = Instant::now();
    client.write_all(&[1u8; 2000]).unwrap();
    let elapsed = wait_for(Duration::from_secs(10), || {
        let all = alerts(&agent);
        let a = find(&all, "Retransmitting")?;
        (a["state"] == "firing" && a["labels"]["port"] == *port.to_string())
            .then(|| fault.elapsed())
    })
    .unwrap_or_else(|| panic!("never fired:\n{}\n{}", agent.metrics(), agent.log_text()));
    eprintln!(
        "lost segment to Retransmitting firing: {elapsed:?} (interval 200ms; the kernel's first RTO is 200ms+)"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let _ = server.set_nonblocking(true);
    drop(agent);
}

const RULES_V1: &str = "groups:
  - name: g
    rules:
      - alert: Always
        expr: nodewatch_build_info > 0
        labels: { severity: info }
        annotations: { summary: 'version {{ $labels.version }}' }
      - alert: Waiting
        expr: nodewatch_build_info > 0
        for: 1h
";

const RULES_V2: &str = "groups:
  - name: g
    rules:
      - alert: Always
        expr: nodewatch_build_info > 0
        labels: { severity: info }
        annotations: { summary: 'nodewatch {{ $labels.version }}' }
      - alert: Added
        expr: nodewatch_build_info == 1
";

const RULES_BAD: &str = "groups:
  - name: g
    rules:
      - alert: Always
        expr: histogram_count(nodewatch_build_info)
";

#[test]
fn sighup_reloads_rules_keeping_unchanged_alerts_and_refusing_invalid_ones() {
    let dir = TempDir::new("alerts-reload");
    let rules = dir.write("rules.yaml", RULES_V1);
    let agent = Agent::start(
        &dir,
        "interval: 200ms\nrule_files: [rules.yaml]\nprobes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\n",
    );
    let reload_ok = "nodewatch_config_last_reload_successful";
    assert_eq!(agent.sample(reload_ok), Some(1.0));
    let first = wait_for(Duration::from_secs(3), || {
        let all = alerts(&agent);
        let a = find(&all, "Always")?.clone();
        let w = find(&all, "Waiting")?.clone();
        (a["state"] == "firing" && w["state"] == "pending").then_some(a)
    })
    .unwrap_or_else(|| panic!("v1 not running: {:?}\n{}", alerts(&agent), agent.log_text()));
    assert!(
        first["annotations"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("version "),
        "{first}"
    );

    // A valid new set: `Always` has only its annotation edited and keeps its state (as in
    // Prometheus: same name and labels); `Waiting` goes.
    std::fs::write(&rules, RULES_V2).unwrap();
    sighup(&agent);
    let got = wait_for(Duration::from_secs(3), || {
        let all = alerts(&agent);
        (find(&all, "Added").is_some() && find(&all, "Waiting").is_none()).then_some(all)
    })
    .unwrap_or_else(|| panic!("v2 not loaded: {:?}\n{}", alerts(&agent), agent.log_text()));
    let always = find(&got, "Always").expect("unchanged alert kept");
    assert_eq!(
        always["activeAt"], first["activeAt"],
        "state of an alert with the same name and labels kept"
    );
    let edited = wait_for(Duration::from_secs(3), || {
        let all = alerts(&agent);
        let a = find(&all, "Always")?.clone();
        a["annotations"]["summary"]
            .as_str()?
            .starts_with("nodewatch ")
            .then_some(a)
    })
    .unwrap_or_else(|| panic!("annotation not updated: {:?}", alerts(&agent)));
    assert_eq!(edited["activeAt"], first["activeAt"]);
    assert_eq!(always["state"], "firing");
    assert_eq!(agent.sample(reload_ok), Some(1.0));
    let text = agent.metrics();
    assert!(!text.contains("alertname=\"Waiting\""), "{text}");

    // An invalid set is refused with its errors; the running set stays.
    std::fs::write(&rules, RULES_BAD).unwrap();
    sighup(&agent);
    wait_for(Duration::from_secs(3), || {
        (agent.sample(reload_ok) == Some(0.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("invalid reload not reported:\n{}", agent.log_text()));
    let log = agent.log_text();
    assert!(
        log.contains(&format!(
            "{}:5:15: alert \\\"Always\\\": unsupported function `histogram_count`",
            rules.display()
        )) || log.contains(&format!(
            "{}:5:15: alert \"Always\": unsupported function `histogram_count`",
            rules.display()
        )),
        "{log}"
    );
    assert!(log.contains("reload refused"), "{log}");
    // Said once for the one SIGHUP, not once per tick.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        agent.log_text().matches("reload refused").count(),
        1,
        "{}",
        agent.log_text()
    );
    thread::sleep(Duration::from_millis(500));
    let still = alerts(&agent);
    assert!(find(&still, "Added").is_some(), "{still:?}");
    assert_eq!(
        find(&still, "Always").unwrap()["activeAt"],
        first["activeAt"]
    );

    // Fixed again: accepted.
    std::fs::write(&rules, RULES_V2).unwrap();
    sighup(&agent);
    wait_for(Duration::from_secs(3), || {
        (agent.sample(reload_ok) == Some(1.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("good reload not reported:\n{}", agent.log_text()));
    assert!(agent.stop().success());
}

const DRAIN_V1: &str = "groups:
  - name: g
    rules:
      - alert: Drained
        expr: nodewatch_build_info > 0
        for: 1s
        labels: { severity: page, health: drain }
        annotations: { summary: 'the node is out (tpyo)' }
";

/// Fixing a typo in an annotation and reloading changes nothing else, as in Prometheus: the
/// firing alert stays firing with its `activeAt`, no "resolved" goes out, and the node stays
/// out of the load balancer.
#[test]
fn an_annotation_edit_keeps_a_firing_alert_and_the_node_out() {
    let dir = TempDir::new("alerts-annotation-edit");
    let rules = dir.write("rules.yaml", DRAIN_V1);
    let receiver = Receiver::start(Answer::Status(200));
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms\nrule_files: [rules.yaml]\nspool_dir: {}\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\nnotifiers:\n  - {{ name: ops, kind: webhook, url: \"{}\" }}\n",
            dir.0.join("spool").display(),
            receiver.url()
        ),
    );
    let sent = |status: &str| {
        receiver
            .notifications()
            .iter()
            .filter(|(n, s)| n == "Drained" && s == status)
            .count()
    };
    wait_for(Duration::from_secs(10), || {
        (sent("firing") >= 1 && healthz(&agent) == 503).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not firing: {:?}\n{}",
            receiver.notifications(),
            agent.log_text()
        )
    });
    let before = find(&alerts(&agent), "Drained").unwrap().clone();

    std::fs::write(&rules, DRAIN_V1.replace("tpyo", "typo")).unwrap();
    sighup(&agent);
    let after = wait_for(Duration::from_secs(5), || {
        let a = find(&alerts(&agent), "Drained")?.clone();
        (a["annotations"]["summary"] == "the node is out (typo)").then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "edit not loaded: {:?}\n{}",
            alerts(&agent),
            agent.log_text()
        )
    });
    // A few more ticks and a notifier round for anything that would have gone out.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(after["state"], "firing");
    assert_eq!(after["activeAt"], before["activeAt"], "`for` not restarted");
    assert_eq!(sent("resolved"), 0, "{:?}", receiver.notifications());
    assert_eq!(healthz(&agent), 503, "the node stays out");
    assert!(agent.stop().success());
}

/// `nodewatch reload` (`POST /api/v1/reload`) does what SIGHUP does and says how it went:
/// the number of rules, or the errors with the running rules kept.
#[test]
fn reload_over_http_answers_with_the_outcome() {
    let dir = TempDir::new("alerts-http-reload");
    let rules = dir.write("rules.yaml", RULES_V1);
    let agent = Agent::start(
        &dir,
        "interval: 200ms\nrule_files: [rules.yaml]\nprobes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\n",
    );
    let addr = agent.addr.to_string();
    let reload = || {
        let out = std::process::Command::new(common::BIN)
            .args(["reload", "--addr", &addr])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    std::fs::write(&rules, RULES_V2).unwrap();
    let (code, out, err) = reload();
    assert_eq!(code, Some(0), "{out}{err}");
    // The embedded defaults stay loaded beside the file's two rules.
    assert_eq!(
        out,
        format!("reloaded: {} rules\n", default_rule_count() + 2)
    );
    wait_for(Duration::from_secs(3), || {
        find(&alerts(&agent), "Added").map(|_| ())
    })
    .unwrap_or_else(|| panic!("v2 not running:\n{}", agent.log_text()));

    std::fs::write(&rules, RULES_BAD).unwrap();
    let (code, out, err) = reload();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("reload refused; the running rules stay"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:5:15: alert \"Always\": unsupported function `histogram_count`",
            rules.display()
        )),
        "{err}"
    );
    assert_eq!(
        agent.sample("nodewatch_config_last_reload_successful"),
        Some(0.0)
    );
    assert!(
        find(&alerts(&agent), "Added").is_some(),
        "the running rules stay"
    );
    assert!(agent.stop().success());
}

#[test]
fn run_refuses_invalid_rule_files() {
    let dir = TempDir::new("alerts-run-bad");
    dir.write("rules.yaml", RULES_BAD);
    let cfg = dir.write("config.yaml", "rule_files: [rules.yaml]\n");
    let out = std::process::Command::new(common::BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rules.yaml:5:15: alert \"Always\": unsupported function `histogram_count`"),
        "{err}"
    );
}

/// The `default_rules` knob itself (the one test that turns it off): `false` drops the embedded
/// rules, so a silent heartbeat alerts nobody and the node stays in; flipping it to `true` and
/// reloading brings them back, and the same silence takes the node out.
#[test]
fn default_rules_false_drops_the_embedded_rules_until_reloaded_with_them() {
    let dir = TempDir::new("alerts-no-defaults");
    dir.write("rules.yaml", RULES_V1);
    let body = |defaults: bool| {
        format!(
            "interval: 200ms\ndefault_rules: {defaults}\nrule_files: [rules.yaml]\nheartbeats:\n  - {{ name: svc, push_ttl: 1s }}\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n"
        )
    };
    let agent = Agent::start(&dir, &body(false));
    let silent = "nodewatch_heartbeat_up{target=\"svc\"}";
    wait_for(Duration::from_secs(5), || {
        (agent.sample(silent) == Some(0.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("svc never expired:\n{}", agent.metrics()));
    // A few ticks with the heartbeat down: only the file's rules run.
    thread::sleep(Duration::from_millis(600));
    let names: Vec<String> = alerts(&agent)
        .iter()
        .map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        names.iter().all(|n| n == "Always" || n == "Waiting"),
        "{names:?}"
    );
    assert_eq!(healthz(&agent), 200);
    let addr = agent.addr.to_string();
    let reload = || {
        let out = std::process::Command::new(common::BIN)
            .args(["reload", "--addr", &addr])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(reload(), "reloaded: 2 rules\n");

    // Back on: the embedded rules run again and the silent heartbeat takes the node out.
    dir.write("config.yaml", &body(true));
    assert_eq!(
        reload(),
        format!("reloaded: {} rules\n", default_rule_count() + 2)
    );
    wait_for(Duration::from_secs(5), || {
        (common::firing(&agent, "NodewatchHeartbeatDown", &[("target", "svc")])
            && healthz(&agent) == 503)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "defaults not back: {:?}\n{}",
            alerts(&agent),
            agent.log_text()
        )
    });
    assert!(agent.stop().success());
}
