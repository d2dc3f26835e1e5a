//! Local scrape end to end: the real binary scrapes Debian's node_exporter and a fake model
//! server exposing vLLM's metric names; the scraped series reach the rules (and not
//! `/metrics`), the opt-in model-server rules move the node's weight in a real HAProxy, and a
//! target that floods the agent with series fails its scrape while the agent stays small.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Agent, TempDir, firing, free_port,
    haproxy::Haproxy,
    have_root, have_tool,
    metrics_server::{MetricsServer, vllm},
    wait_for,
};

/// The opt-in rule file, as shipped.
const MODEL_SERVER_RULES: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../alerts/model-servers.yaml");

/// Debian's node_exporter on a free loopback port, stopped on drop.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (cargo xtask setup installs Debian's package)");
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for(Duration::from_secs(10), || {
            common::http_get(addr, "/metrics").filter(|r| r.0 == 200)
        })
        .expect("node_exporter never answered");
        Self { child, port }
    }

    /// node_exporter behind its own web config (exporter-toolkit's, as in production): TLS
    /// with a certificate of `pki`, and basic auth for `user`.
    fn start_tls(dir: &TempDir, pki: &common::tls::Pki, user: (&str, &str)) -> Self {
        let (cert, key) = pki.issue("node-exporter");
        let web = dir.write(
            "node-exporter-web.yml",
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  {}: {}\n",
                cert.display(),
                key.display(),
                user.0,
                bcrypt::hash(user.1, 4).unwrap()
            ),
        );
        let port = free_port();
        let child = Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--web.config.file={}", web.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (cargo xtask setup installs Debian's package)");
        let url = format!("https://127.0.0.1:{port}/metrics");
        wait_for(Duration::from_secs(10), || {
            common::tls::curl(&url, &pki.ca, Some(&format!("{}:{}", user.0, user.1)))
                .filter(|r| r.0 == 200)
        })
        .expect("node_exporter never answered over TLS");
        Self { child, port }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value an alert's `value` annotation holds, when the alert fires.
fn alert_value(agent: &Agent, name: &str) -> Option<f64> {
    let (200, body) = common::http_get(agent.addr, "/api/v1/alerts")? else {
        return None;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["state"] == "firing" && a["labels"]["alertname"] == name)?["annotations"]
        ["value"]
        .as_str()?
        .parse()
        .ok()
}

/// The names and labels of the alerts firing now (a default rule may move the node too).
fn firing_alerts(agent: &Agent) -> Vec<String> {
    let Some((200, body)) = common::http_get(agent.addr, "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["labels"].to_string())
        .collect()
}

/// The first load average of /proc/loadavg.
fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// node_exporter's `node_load1` reaches a rule within a tick or two of the agent's start,
/// labelled `job` and `instance`, with the value the kernel gives; `/metrics` does not show
/// it.
#[test]
fn node_exporter_series_reach_the_rules() {
    if !have_root("scrape node_exporter") || !have_tool("scrape", "prometheus-node-exporter") {
        return;
    }
    let ne = NodeExporter::start();
    let dir = TempDir::new("scrape-node");
    dir.write(
        "rules.yaml",
        "groups:\n  - name: t\n    rules:\n      - alert: NodeLoadSeen\n        expr: node_load1{job=\"node\"} >= 0 and on(job, instance) up{job=\"node\"} == 1 and on(job, instance) scrape_samples_scraped > 100\n        annotations: { value: \"{{ $value }}\", instance: \"{{ $labels.instance }}\" }\n",
    );
    let agent = Agent::start(
        &dir,
        &format!(
            "spool_dir: {}\nrule_files: [rules.yaml]\nscrape:\n  - {{ job: node, url: \"http://127.0.0.1:{}/metrics\" }}\n",
            dir.0.join("spool").display(),
            ne.port
        ),
    );
    let started = Instant::now();
    let value = wait_for(Duration::from_secs(5), || {
        alert_value(&agent, "NodeLoadSeen")
    })
    .unwrap_or_else(|| panic!("node_load1 never reached the rules:\n{}", agent.log_text()));
    eprintln!(
        "node_load1 = {value} reached the rules {:?} after the agent answered",
        started.elapsed()
    );
    assert!(
        (value - load1()).abs() < 1.0,
        "node_load1 {value} against /proc/loadavg {}",
        load1()
    );
    assert!(firing(
        &agent,
        "NodeLoadSeen",
        &[("instance", &format!("127.0.0.1:{}", ne.port))]
    ));
    let text = agent.metrics();
    assert!(
        !text.contains("node_load1"),
        "scraped series exported:\n{text}"
    );
    // The thread that reads the targets holds no capability.
    let mut scrape_threads = 0;
    for t in std::fs::read_dir(format!("/proc/{}/task", agent.child.id())).unwrap() {
        let t = t.unwrap().path();
        if std::fs::read_to_string(t.join("comm")).unwrap().trim() != "scrape" {
            continue;
        }
        scrape_threads += 1;
        let status = std::fs::read_to_string(t.join("status")).unwrap();
        for set in ["CapEff:", "CapPrm:"] {
            let line = status.lines().find(|l| l.starts_with(set)).unwrap();
            assert!(line.ends_with("0000000000000000"), "scrape thread {line}");
        }
    }
    assert_eq!(scrape_threads, 1);
    assert!(
        text.contains(&format!(
            "nodewatch_scrape_target_up{{scrape_job=\"node\",scrape_instance=\"127.0.0.1:{}\"}} 1",
            ne.port
        )),
        "{text}"
    );
}

/// The same node_exporter behind TLS and basic auth, as production runs it: the target's
/// `http_config` (a private CA, a user) reaches it; without the password the scrape fails
/// with its 401, without the CA with a TLS failure, and neither is kept.
#[test]
fn an_https_target_with_basic_auth_is_scraped_with_its_http_config() {
    if !have_root("scrape https")
        || !have_tool("scrape https", "prometheus-node-exporter")
        || !have_tool("scrape https", "openssl")
    {
        return;
    }
    let dir = TempDir::new("scrape-tls");
    let pki = common::tls::Pki::new(&dir, "scrape");
    let ne = NodeExporter::start_tls(&dir, &pki, ("nodewatch", "s3cret"));
    dir.write("pw", "s3cret\n");
    dir.write(
        "rules.yaml",
        "groups:\n  - name: t\n    rules:\n      - alert: NodeLoadSeen\n        expr: node_load1{job=\"node\"} >= 0 and on(job, instance) up{job=\"node\"} == 1\n        annotations: { value: \"{{ $value }}\" }\n",
    );
    let url = format!("https://127.0.0.1:{}/metrics", ne.port);
    let agent = Agent::start(
        &dir,
        &format!(
            "spool_dir: {spool}\nrule_files: [rules.yaml]\nscrape:\n  - job: node\n    url: \"{url}\"\n    http_config:\n      basic_auth: {{ username: nodewatch, password_file: {pw} }}\n      tls_config: {{ ca_file: {ca} }}\n  - job: nopass\n    url: \"{url}\"\n    http_config: {{ tls_config: {{ ca_file: {ca} }} }}\n  - job: noca\n    url: \"{url}\"\n",
            spool = dir.0.join("spool").display(),
            pw = dir.0.join("pw").display(),
            ca = pki.ca.display(),
        ),
    );
    let value = wait_for(Duration::from_secs(5), || {
        alert_value(&agent, "NodeLoadSeen")
    })
    .unwrap_or_else(|| panic!("node_load1 never reached the rules:\n{}", agent.log_text()));
    assert!(
        (value - load1()).abs() < 1.0,
        "node_load1 {value} against /proc/loadavg {}",
        load1()
    );
    let failures = |job: &str, reason: &str| {
        common::sample(
            &agent.metrics(),
            &format!(
                "nodewatch_scrape_failures_total{{scrape_job=\"{job}\",scrape_instance=\"127.0.0.1:{}\",reason=\"{reason}\"}}",
                ne.port
            ),
        )
        .unwrap_or(0.0)
    };
    wait_for(Duration::from_secs(5), || {
        (failures("nopass", "status") >= 1.0 && failures("noca", "tls") >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("{}\n{}", agent.metrics(), agent.log_text()));
    let text = agent.metrics();
    for (job, up) in [("node", 1), ("nopass", 0), ("noca", 0)] {
        assert!(
            text.contains(&format!(
                "nodewatch_scrape_target_up{{scrape_job=\"{job}\",scrape_instance=\"127.0.0.1:{}\"}} {up}",
                ne.port
            )),
            "{job}: {text}"
        );
    }
}

/// A fake vLLM server behind a real HAProxy: its waiting queue over the rule's threshold puts
/// the node at the degraded weight within 2 s, back to full once the queue has drained (after
/// `health.recover_after`, 30 s by default); the server dying drains the node within 2 s.
#[test]
fn model_server_moves_the_node_in_haproxy() {
    if !have_root("scrape model server") || !have_tool("scrape", "haproxy") {
        return;
    }
    let dir = TempDir::new("scrape-vllm");
    let agent_port = free_port();
    let mut server = MetricsServer::start(&vllm(0));
    // The model-server rules beside the embedded defaults, as a user adds them.
    let agent = Agent::start(
        &dir,
        &format!(
            "spool_dir: {}\nrule_files: [{MODEL_SERVER_RULES}]\nscrape:\n  - {{ job: vllm, url: \"{}\" }}\nhealth:\n  haproxy_agent_listen: 127.0.0.1:{agent_port}\n",
            dir.0.join("spool").display(),
            server.url()
        ),
    );
    let haproxy = Haproxy::start(&dir, agent_port);
    // Status and, when given, effective weight.
    let state = |want: (&str, Option<u32>), within: Duration| -> Duration {
        let t = Instant::now();
        wait_for(within, || {
            let s = haproxy.state();
            (s.0 == want.0 && want.1.is_none_or(|w| s.1 == w)).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "HAProxy never showed {want:?} within {within:?}: {:?}\nfiring: {:?}\n{}",
                haproxy.state(),
                firing_alerts(&agent),
                agent.log_text()
            )
        });
        t.elapsed()
    };
    state(("UP", Some(100)), Duration::from_secs(10));

    server.set(vllm(25));
    let took = state(("UP", Some(50)), Duration::from_secs(2));
    eprintln!("queue of 25: degraded weight in HAProxy after {took:?}");
    assert!(firing(
        &agent,
        "ModelServerQueueGrowing",
        &[("job", "vllm"), ("health", "degrade")]
    ));

    server.set(vllm(0));
    let took = state(("UP", Some(100)), Duration::from_secs(40));
    eprintln!("queue drained: full weight after {took:?} (recover_after 30 s)");

    server.stop();
    let took = state(("DRAIN (agent)", None), Duration::from_secs(2));
    eprintln!("server dead: DRAIN in HAProxy after {took:?}");
    assert!(firing(&agent, "ModelServerDown", &[("job", "vllm")]));
    assert_eq!(
        agent.sample(&format!(
            "nodewatch_scrape_target_up{{scrape_job=\"vllm\",scrape_instance=\"{}\"}}",
            server.addr
        )),
        Some(0.0)
    );
}

/// The agent's resident memory, from /proc.
fn rss_bytes(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A target that suddenly exposes 60 000 series, over the default `sample_limit` of 20 000:
/// its scrape fails with the reason counted and logged, none of its series stay with the
/// rules, the agent stays under 64 MiB and `/metrics` keeps answering.
#[test]
fn a_flood_of_series_fails_the_scrape_and_the_agent_stays_small() {
    if !have_root("scrape flood") {
        return;
    }
    let dir = TempDir::new("scrape-flood");
    let series = |n: usize| -> String {
        (0..n)
            .map(|i| format!("flood_requests{{path=\"/v1/completions/{i}\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"}} {i}\n"))
            .collect()
    };
    let server = MetricsServer::start(&series(10));
    dir.write(
        "rules.yaml",
        "groups:\n  - name: t\n    rules:\n      - alert: FloodSeen\n        expr: count(flood_requests) > 0\n",
    );
    let agent = Agent::start(
        &dir,
        &format!(
            "spool_dir: {}\nrule_files: [rules.yaml]\nscrape:\n  - {{ job: flood, url: \"{}\" }}\n",
            dir.0.join("spool").display(),
            server.url()
        ),
    );
    wait_for(Duration::from_secs(5), || {
        firing(&agent, "FloodSeen", &[]).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the target's series never reached the rules:\n{}",
            agent.log_text()
        )
    });

    let body = series(60_000);
    eprintln!("flood body: {} bytes", body.len());
    server.set(body);
    let failures = format!(
        "nodewatch_scrape_failures_total{{scrape_job=\"flood\",scrape_instance=\"{}\",reason=\"sample_limit\"}}",
        server.addr
    );
    wait_for(Duration::from_secs(5), || {
        agent.sample(&failures).filter(|n| *n >= 1.0)
    })
    .unwrap_or_else(|| panic!("no sample_limit failure:\n{}", agent.metrics()));
    wait_for(Duration::from_secs(3), || {
        (!firing(&agent, "FloodSeen", &[])).then_some(())
    })
    .expect("the target's series stayed with the rules after a failed scrape");
    let log = agent.log_text();
    assert!(
        log.contains("60000 samples, over sample_limit 20000: nothing kept"),
        "{log}"
    );

    // Ten more seconds of failing scrapes of the 60 000 series, one a second: /metrics
    // answers every time and the agent stays under 64 MiB.
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let t = Instant::now();
        let (code, _) = common::http_get(agent.addr, "/metrics").expect("/metrics answers");
        assert_eq!(code, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "/metrics took {:?}",
            t.elapsed()
        );
        peak = peak.max(rss_bytes(&agent));
        std::thread::sleep(Duration::from_millis(100));
    }
    let n = agent.sample(&failures).unwrap();
    eprintln!("{n} failed scrapes; peak RSS {} KiB", peak / 1024);
    assert!(n >= 8.0, "{n} failed scrapes in about 12 s");
    assert!(peak < 64 << 20, "RSS {} MiB", peak >> 20);
}
