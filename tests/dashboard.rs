//! The shipped Grafana dashboard against a real Prometheus (Debian's package) that scrapes a
//! running agent with the shipped scrape config: every query of every panel runs without
//! error, and the panels of the signals this test exercises return data. And its shape: the
//! `container` variable, and every TCP and GPU ioctl panel filtered by it and split by it.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use common::{
    Agent, NftTable, TempDir, free_port, have_root, have_tool, http_get, http_request,
    nvml::{FakeNvml, Gpu, State},
    wait_for,
};

const DASHBOARD: &str = include_str!("../packaging/grafana/nodewatch.json");
const SCRAPE_CONFIG: &str = include_str!("../packaging/prometheus/prometheus.yml");

/// Every panel's signal is exercised in this test, so every panel must return data.
const MUST_HAVE_DATA: &[&str] = &[
    "Node healthy",
    "Availability over the range",
    "MTTR (mean time to recover)",
    "MTBF (mean time between failures)",
    "Firing alerts",
    "Nodes out, drains the budget defers, budget exhausted",
    "Retransmitted segments/s by port and container",
    "Accept-queue overflows/s by port and container",
    "Accept-queue fill by port and container",
    "ioctl latency heatmap",
    "ioctl p99 by device and container",
    "Stalled ioctls/s by device and container",
    "ioctls hung right now",
    "NVIDIA Xid errors by GPU, code and action",
    "NVSwitch SXid errors this boot",
    "NVLinks down by GPU",
    "NVLink errors/s by GPU, link and type",
    "NVLink fabric healthy and GPUs needing a reset",
    "PCIe link width and its maximum",
    "PCIe link generation and its maximum",
    "Persistence mode",
    "InfiniBand ports up",
    "InfiniBand link downs",
    "InfiniBand errors/s by port and counter",
    "GPUs present and expected",
    "GPU temperature",
    "GPU power",
    "GPU utilization",
    "GPU memory used",
    "ECC errors by GPU and type",
    "Clock events (throttle reasons) holding clocks down",
    "Remapped rows, pending and failed remaps",
    "PCIe replays/s",
    "NVML calls hung and timed out",
    "NVML call errors by GPU and call",
    "Targets up",
    "Check latency",
    "Failures/s by reason",
    "Scrape targets up",
    "Scrape duration and samples",
    "Scrape failures/s by reason",
    "CPU and memory",
    "Disk used by mount",
    "Pressure (PSI avg10)",
    "Load (1 min)",
    "Probe modes",
    "Collection time by collector",
];

struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus with the shipped config, pointed at `target` and scraping every second.
fn prometheus(dir: &TempDir, target: SocketAddr) -> Prometheus {
    let config = SCRAPE_CONFIG
        .replace(
            "[\"gpu-node-01:9477\", \"gpu-node-02:9477\"]",
            &format!("[\"{target}\"]"),
        )
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("scrape_timeout: 5s", "scrape_timeout: 1s");
    assert!(
        config.contains(&target.to_string()),
        "the shipped targets line changed"
    );
    let file = dir.write("prometheus.yml", &config);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (cargo xtask setup installs Debian's package)");
    let p = Prometheus { child, addr };
    wait_for(Duration::from_secs(20), || {
        http_get(addr, "/-/ready").filter(|(s, _)| *s == 200)
    })
    .expect("prometheus not ready");
    // Discovery hands targets over in batches every 5 s: wait for a successful scrape.
    wait_for(Duration::from_secs(30), || {
        let (_, body) = http_get(addr, "/api/v1/targets")?;
        body.contains("\"health\":\"up\"").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "prometheus never scraped {target}: {:?}",
            http_get(addr, "/api/v1/targets")
        )
    });
    p
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every (panel title, expr) of the dashboard with Grafana's variables filled in (`container`
/// as All: the agent's own series, of host processes, have no container label).
fn queries(instance: &str) -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$job", "nodewatch")
                .replace("$instance", instance)
                .replace("$container", ".*")
                .replace("$__rate_interval", "15s")
                .replace("$__range_s", "60")
                .replace("$__range", "1m");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// A listener with backlog 1 that never accepts, overflowed by a few attempts.
fn overflow(port: u16) -> (TcpListener, Vec<TcpStream>) {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    // SAFETY: listen() again only changes the backlog.
    unsafe { libc::listen(l.as_raw_fd(), 1) };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let keep = (0..6)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok())
        .collect();
    (l, keep)
}

/// Traffic through a lossy path on `port`, so segments are retransmitted.
fn retransmit(port: u16) {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let _loss = NftTable::create(
        "nodewatch_test_dash",
        &format!(
            "chain out {{\n type filter hook output priority 0;\n tcp dport {port} numgen random mod 100 < 20 drop\n}}"
        ),
    );
    let client = thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&vec![1u8; 512 * 1024]).unwrap();
    });
    let (mut s, _) = l.accept().unwrap();
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).unwrap();
    client.join().unwrap();
}

/// ioctls on a watched device (`/dev/null` stands in for a GPU: a char device, cheap to call).
fn gpu_ioctls() {
    let f = std::fs::File::open("/dev/null").unwrap();
    for _ in 0..200 {
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: TCGETS on /dev/null fails with ENOTTY; the call is what the probe times.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::TCGETS, &mut t) };
    }
}

#[test]
fn every_dashboard_query_runs_and_exercised_signals_have_data() {
    if !have_root("dashboard") || !have_tool("dashboard", "cc") {
        return;
    }
    let (retrans_port, aq_port, hb_port) = (free_port(), free_port(), free_port());
    // A scrape target nobody serves: the scrape panels show it down and failing.
    let scrape_port = free_port();
    let hb = TcpListener::bind(("127.0.0.1", hb_port)).unwrap();
    let dir = TempDir::new("dashboard");
    // Two GPUs through the fake NVML, one of them failing a call every time.
    let mut gpu1 = Gpu::h100(1);
    gpu1.error = vec![("power", 999)];
    let nvml = FakeNvml::build(&dir, &State::new(vec![Gpu::h100(0), gpu1]));
    // An InfiniBand port whose counters move while Prometheus scrapes.
    let ib = common::infiniband::IbTree::new(&dir);
    ib.add_port("mlx5_0", 1);
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms\nprobes:\n  tcp_retransmits: {{ ports: [{retrans_port}] }}\n  accept_queue: {{ ports: [{aq_port}] }}\n  gpu_ioctl: {{ devices: [\"/dev/null\"] }}\n{}{}\
             heartbeats:\n  - {{ name: tcp, tcp: \"127.0.0.1:{hb_port}\", interval: 200ms, timeout: 100ms }}\n  - {{ name: push, push_ttl: 60s }}\n\
             scrape:\n  - {{ job: refused, url: \"http://127.0.0.1:{scrape_port}/metrics\" }}\n\
             spool_dir: {}\nhealth:\n  recover_after: 0s\n",
            nvml.config(Some(2)),
            ib.config(),
            dir.0.join("spool").display()
        ),
    );
    // The push target beats before Prometheus starts (which can take longer than its TTL on
    // a busy machine) and after.
    let beat = || {
        assert_eq!(
            http_request(agent.addr, "POST", "/api/v1/heartbeat/push", b"")
                .unwrap()
                .0,
            204
        )
    };
    beat();
    let prom = prometheus(&dir, agent.addr);
    // Prometheus has scraped the agent before anything happens: a busy machine can delay the
    // first scrape by seconds, and what happened before it is not in Prometheus.
    let scraped = wait_for(Duration::from_secs(30), || {
        let (_, b) = http_get(
            prom.addr,
            &format!("/api/v1/query?query={}", urlencode("up == 1")),
        )?;
        b.contains("nodewatch").then_some(())
    });
    assert!(scraped.is_some(), "Prometheus never scraped the agent");
    beat();
    // Exercise the signals while Prometheus scrapes every second. First a maintenance window
    // (drain, then undrain), so the node has been down and recovered once: MTTR and MTBF.
    for path in ["/api/v1/drain", "/api/v1/undrain"] {
        let body: &[u8] = if path.ends_with("/drain") {
            br#"{"reason": "test"}"#
        } else {
            b""
        };
        assert_eq!(http_request(agent.addr, "POST", path, body).unwrap().0, 200);
        thread::sleep(Duration::from_millis(1200));
    }
    // Then the TCP heartbeat's service goes away: failures by reason, the node down.
    drop(hb);
    let (_listener, _conns) = overflow(aq_port);
    retransmit(retrans_port);
    gpu_ioctls();
    // A GPU that fell off the bus (Xid 79): the default rule fires and takes the node down.
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .and_then(|mut f| {
            f.write_all(b"<4>NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=test, GPU has fallen off the bus.\n")?;
            f.write_all(b"<4>nvidia-nvswitch0: SXid (PCI:0000:c7:00.0): 24007, Fatal, Link 34 sourcetrack timeout error (First)\n")
        })
        .expect("write /dev/kmsg");
    // The InfiniBand port's link flaps and it counts errors.
    for n in 1..=3 {
        ib.set("mlx5_0", 1, "counters/link_downed", &n.to_string());
        ib.set("mlx5_0", 1, "counters/symbol_error", &(n * 100).to_string());
        thread::sleep(Duration::from_millis(1100));
    }
    thread::sleep(Duration::from_secs(4));

    let mut has_data: BTreeMap<String, bool> = BTreeMap::new();
    for (title, expr) in queries(&agent.addr.to_string()) {
        let path = format!("/api/v1/query?query={}", urlencode(&expr));
        let (status, body) = http_get(prom.addr, &path).expect("query prometheus");
        assert_eq!(status, 200, "{title}: {expr}\n{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{title}: {expr}\n{body}");
        let rows = v["data"]["result"].as_array().map_or(0, Vec::len);
        *has_data.entry(title).or_default() |= rows > 0;
    }
    for title in MUST_HAVE_DATA {
        assert_eq!(
            has_data.get(*title),
            Some(&true),
            "panel {title:?} returned no data while its signal was exercised: {has_data:?}"
        );
    }
    eprintln!(
        "{} panels queried; with data: {:?}",
        has_data.len(),
        has_data
            .iter()
            .filter(|(_, d)| **d)
            .map(|(t, _)| t)
            .collect::<Vec<_>>()
    );
}

/// The metric families whose series carry `container` and `pod`.
const CONTAINER_METRICS: &[&str] = &[
    "nodewatch_tcp_retransmits_total",
    "nodewatch_tcp_listen_overflows_total",
    "nodewatch_tcp_listen_queue_length",
    "nodewatch_tcp_listen_queue_max",
    "nodewatch_gpu_ioctl_",
];

/// The selectors (`{...}`) written right after each use of a container metric in `expr`.
fn container_selectors(expr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in CONTAINER_METRICS {
        for (i, _) in expr.match_indices(m) {
            let rest = &expr[i..];
            let name_end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let after = &rest[name_end..];
            let selector = if after.starts_with('{') {
                after[..after.find('}').map_or(after.len(), |e| e + 1)].to_string()
            } else {
                String::new()
            };
            out.push((rest[..name_end].to_string(), selector));
        }
    }
    out
}

#[test]
fn container_variable_filters_and_splits_every_tcp_and_gpu_ioctl_panel() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = vars
        .iter()
        .find(|v| v["name"] == "container")
        .expect("a `container` template variable");
    assert_eq!(var["type"], "query", "{var}");
    assert_eq!(var["multi"], true, "{var}");
    assert_eq!(var["includeAll"], true, "{var}");
    // `.*` also matches series without the label: All shows host processes' series too.
    assert_eq!(var["allValue"], ".*", "{var}");
    assert_eq!(
        var["current"]["value"][0], "$__all",
        "All by default: {var}"
    );
    let query = var["query"].as_str().unwrap();
    assert!(
        query.starts_with("label_values(") && query.ends_with(", container)"),
        "{query}"
    );
    assert!(
        query.contains("nodewatch_tcp_") && query.contains("nodewatch_gpu_ioctl_"),
        "the values come from both the TCP and the GPU ioctl series: {query}"
    );
    let mut panels = 0;
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or_default();
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let uses = container_selectors(expr);
            if uses.is_empty() {
                continue;
            }
            panels += 1;
            for (metric, selector) in &uses {
                assert!(
                    selector.contains("container=~\"$container\""),
                    "{title}: {metric} is not filtered by $container: {expr}"
                );
            }
            // Sums keep containers apart, and the legend tells them apart.
            for by in expr.match_indices("sum by (").map(|(i, _)| &expr[i..]) {
                let labels = &by[..by.find(')').unwrap()];
                assert!(
                    labels == "sum by (le" || labels.contains("container, pod"),
                    "{title}: `{labels})` adds containers together: {expr}"
                );
            }
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            assert!(
                legend == "{{le}}" || legend.contains("{{container}}"),
                "{title}: legend {legend:?} does not name the container"
            );
        }
    }
    assert!(
        panels >= 7,
        "too few TCP and GPU ioctl panels found: {panels}"
    );
}
