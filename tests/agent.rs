//! The running agent: HTTP surface, Prometheus text that promtool accepts, clean stop that
//! detaches every program, exit codes, and the degraded mode without privileges.

mod common;

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Agent, BIN, TempDir, have_root, have_tool, http_get};

/// Ids of the programs process `pid` has attached: its bpf link fds, from /proc fdinfo.
fn attached_prog_ids(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("read fdinfo")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| info.contains("link_type:"))
        .filter_map(|info| {
            let line = info.lines().find(|l| l.starts_with("prog_id:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids
}

fn prog_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn serves_metrics_promtool_accepts_and_detaches_on_sigterm() {
    if !have_root("agent lifecycle")
        || !have_tool("agent lifecycle", "promtool")
        || !have_tool("agent lifecycle", "bpftool")
    {
        return;
    }
    let dir = TempDir::new("lifecycle");
    // Watching /dev/null attaches the GPU ioctl programs too, and puts a histogram in the text.
    let agent = Agent::start(
        &dir,
        "interval: 200ms\nprobes:\n  gpu_ioctl: { devices: [/dev/null] }\n",
    );

    let (status, body) = http_get(agent.addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"status\":\"healthy\""), "{body}");
    assert_eq!(http_get(agent.addr, "/nope").unwrap().0, 404);

    std::thread::sleep(Duration::from_millis(500));
    let text = agent.metrics();
    for series in [
        "nodewatch_probe_up{probe=\"tcp_retransmits\",mode=\"ebpf\"} 1",
        "nodewatch_tcp_retransmits_total{port=\"8000\"}",
        "nodewatch_tcp_retransmits_total{port=\"other\"}",
        "nodewatch_collector_duration_seconds{collector=\"tcp_retransmits\"}",
        "nodewatch_probe_up{probe=\"gpu_ioctl\",mode=\"ebpf\"} 1",
        "nodewatch_probe_up{probe=\"gpu_xid\",mode=\"kmsg\"} 1",
        "nodewatch_gpu_ioctl_duration_seconds_bucket{le=\"+Inf\",device=\"/dev/null\"}",
        "nodewatch_gpu_ioctl_inflight_stalled{device=\"/dev/null\"} 0",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    let (clean, complaints) = common::prometheus::check_metrics(&text);
    assert!(clean, "promtool check metrics: {complaints}\n{text}");

    let progs = attached_prog_ids(agent.child.id());
    assert_eq!(
        progs.len(),
        7,
        "expected both retransmit tracepoints, the segments-sent and accept-queue cgroup_skb programs and the three GPU ioctl ones attached: {progs:?}"
    );
    let log = agent.log.clone();
    let status = agent.stop();
    assert!(
        status.success(),
        "SIGTERM should stop the agent cleanly, got {status}"
    );
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("SIGTERM: stopping") && log.contains("probes detached"),
        "{log}"
    );
    for id in progs {
        assert!(
            !prog_exists(id),
            "program {id} still loaded after the agent stopped"
        );
    }
}

#[test]
fn openmetrics_when_asked() {
    let dir = TempDir::new("openmetrics");
    let agent = Agent::start(&dir, "");
    let mut s = std::net::TcpStream::connect(agent.addr).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    assert!(
        resp.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{resp}"
    );
    assert!(
        resp.contains("# TYPE nodewatch_tcp_retransmits counter"),
        "{resp}"
    );
    assert!(resp.trim_end().ends_with("# EOF"), "{resp}");
}

#[test]
fn cannot_bind_exits_2() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["run", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}

/// Without CAP_BPF the probe degrades to the host-wide procfs counter and the agent runs on.
#[test]
fn without_privileges_falls_back_to_procfs() {
    if !have_root("procfs fallback") {
        return; // needs root to drop to another user
    }
    let dir = TempDir::new("fallback");
    let cfg = dir.write("config.yaml", "interval: 200ms\n");
    let port = common::free_port();
    let log = dir.0.join("agent.log");
    let before = retrans_segs();
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("setpriv (util-linux)");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Some((200, body)) = http_get(addr, "/metrics")
            && body.contains("port=\"all\"")
        {
            break body;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "agent died: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            Instant::now() < deadline,
            "no procfs series: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("nodewatch_probe_up{probe=\"tcp_retransmits\",mode=\"procfs\"} 1"),
        "{text}"
    );
    let value = common::sample(&text, "nodewatch_tcp_retransmits_total{port=\"all\"}").unwrap();
    assert!(
        value >= before as f64 && value <= retrans_segs() as f64,
        "{value} outside [{before}, now]"
    );
    // accept_queue degrades to sock_diag, which works unprivileged.
    assert!(
        text.contains("nodewatch_probe_up{probe=\"accept_queue\",mode=\"sock_diag\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("nodewatch_probe_up{probe=\"gpu_ioctl\",mode=\"off\"} 0"),
        "{text}"
    );
    // One WARN line per probe that could not run in its best mode, and nothing else: the
    // eBPF probes, and the Xid reader when the kernel log is restricted to CAP_SYSLOG.
    let log = std::fs::read_to_string(&log).unwrap();
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    let xid_off = text.contains("nodewatch_probe_up{probe=\"gpu_xid\",mode=\"off\"} 0");
    assert_eq!(warns.len(), 3 + usize::from(xid_off), "{log}");
    for probe in ["tcp_retransmits", "accept_queue", "gpu_ioctl"] {
        let mine = format!("probe=\"{probe}\"");
        assert_eq!(
            warns
                .iter()
                .filter(|l| l.contains(&mine) && l.contains("eBPF unavailable"))
                .count(),
            1,
            "one WARN for {probe}:\n{log}"
        );
    }
}

fn retrans_segs() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (head, vals) = (lines.next().unwrap(), lines.next().unwrap());
    let i = head
        .split_whitespace()
        .position(|h| h == "RetransSegs")
        .unwrap();
    vals.split_whitespace().nth(i).unwrap().parse().unwrap()
}
