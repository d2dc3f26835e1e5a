//! Node health through every door: `/healthz`, the HAProxy agent-check port read by a real
//! HAProxy, and the `drain` / `undrain` / `status` commands; manual drain survives `kill -9`;
//! only loopback callers or token holders may change it; a degraded node stays in HAProxy at
//! half its weight.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Agent, BIN, Netns, TempDir, free_port, haproxy::Haproxy, have_root, http_get, wait_for,
};

const QUIET: &str = "interval: 200ms\nprobes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\nresources: { enabled: false }\n";

fn config(dir: &TempDir, agent_port: u16, extra: &str) -> String {
    format!(
        "{QUIET}spool_dir: {}\nhealth:\n  haproxy_agent_listen: 127.0.0.1:{agent_port}\n  recover_after: 0s\n{extra}",
        dir.0.join("spool").display()
    )
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn agent_check(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut line = String::new();
    s.read_to_string(&mut line).unwrap();
    line
}

#[test]
fn drain_reaches_healthz_haproxy_and_survives_kill_9() {
    let dir = TempDir::new("health-drain");
    let agent_port = free_port();
    let cfg = config(&dir, agent_port, "");
    let agent = Agent::start(&dir, &cfg);
    let addr = agent.addr.to_string();
    assert_eq!(http_get(agent.addr, "/healthz").unwrap().0, 200);
    assert_eq!(agent_check(agent_port), "up ready 100%\n");
    assert_eq!(
        common::sample(&agent.metrics(), "nodewatch_node_healthy"),
        Some(1.0)
    );

    let (code, out, err) = cli(&["drain", "--reason", "kernel upgrade", "--addr", &addr]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node: draining"), "{out}");
    let (status, body) = http_get(agent.addr, "/healthz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"status\":\"draining\""), "{body}");
    assert!(body.contains("maintenance: kernel upgrade"), "{body}");
    assert_eq!(
        agent_check(agent_port),
        "up drain #maintenance: kernel upgrade\n"
    );
    let (code, out, _) = cli(&["status", "--addr", &addr]);
    assert_eq!(code, 0);
    assert!(
        out.contains("node: draining") && out.contains("maintenance: kernel upgrade"),
        "{out}"
    );
    assert_eq!(
        common::sample(&agent.metrics(), "nodewatch_node_healthy"),
        Some(0.0)
    );

    // kill -9 and start again on the same spool_dir: still in maintenance.
    drop(agent);
    let agent = Agent::start(&dir, &cfg);
    let (status, body) = http_get(agent.addr, "/healthz").unwrap();
    assert_eq!(status, 503, "the drain did not survive kill -9: {body}");
    assert_eq!(
        agent_check(agent_port),
        "up drain #maintenance: kernel upgrade\n"
    );

    let (code, out, err) = cli(&["undrain", "--addr", &agent.addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node: healthy"), "{out}");
    assert_eq!(http_get(agent.addr, "/healthz").unwrap().0, 200);
    assert_eq!(agent_check(agent_port), "up ready 100%\n");

    // Bad requests are refused with a reason, not a crash.
    let (code, _, err) = cli(&[
        "drain",
        "--reason",
        "   ",
        "--addr",
        &agent.addr.to_string(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reason"), "{err}");
    let (code, _, err) = cli(&["status", "--addr", "127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot reach the agent"), "{err}");
}

#[test]
fn haproxy_drains_the_server_and_puts_it_back() {
    let dir = TempDir::new("health-haproxy");
    let agent_port = free_port();
    let agent = Agent::start(&dir, &config(&dir, agent_port, ""));
    let haproxy = Haproxy::start(&dir, agent_port);
    let state = |want: &str| {
        wait_for(Duration::from_secs(10), || {
            let s = haproxy.status();
            (s == want).then_some(s)
        })
        .unwrap_or_else(|| panic!("HAProxy never showed {want}: {}", haproxy.status()))
    };
    state("UP");
    let addr = agent.addr.to_string();
    let t = Instant::now();
    assert_eq!(cli(&["drain", "--reason", "test", "--addr", &addr]).0, 0);
    state("DRAIN (agent)");
    eprintln!(
        "drain command to HAProxy DRAIN: {:?} (agent-inter 100ms)",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(cli(&["undrain", "--addr", &addr]).0, 0);
    state("UP");
    eprintln!("undrain to HAProxy UP: {:?}", t.elapsed());
}

/// `/healthz`: status, the response head (lowercase) and the body.
fn healthz(addr: SocketAddr) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A `health: degrade` alert keeps the node in HAProxy at half its configured weight, still
/// UP, with `/healthz` 200 and `x-envoy-degraded`; it is back at full weight when the alert
/// resolves. The fault is a server that stops calling accept(): its accept queue fills past
/// 80 % (without overflowing) and the default rule `NodewatchListenQueueNearlyFull`
/// (`health: degrade`, after its 10 s `for`) fires. A manual drain on top wins, and leaving it
/// goes back to the degraded weight, not to DRAIN.
#[test]
fn haproxy_weighs_a_degraded_node_down_and_back_up() {
    if !have_root("degraded node in HAProxy (accept-queue probe)") {
        return;
    }
    let dir = TempDir::new("health-degraded");
    let agent_port = free_port();
    // Backlog 4: four connections nobody accepts fill it (the kernel queues one more before
    // it drops).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // SAFETY: listen() again on a listening socket only changes its backlog.
    let rc = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    let cfg = format!(
        "interval: 200ms\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ ports: [{port}] }}\n\
         resources: {{ enabled: false }}\nspool_dir: {}\n\
         health:\n  haproxy_agent_listen: 127.0.0.1:{agent_port}\n  recover_after: 0s\n",
        dir.0.join("spool").display()
    );
    let agent = Agent::start(&dir, &cfg);
    let queue = format!("nodewatch_tcp_listen_queue_max{{port=\"{port}\"}}");
    wait_for(Duration::from_secs(5), || {
        agent.sample(&queue).filter(|m| *m == 4.0)
    })
    .unwrap_or_else(|| panic!("no {queue} of 4:\n{}", agent.metrics()));
    let haproxy = Haproxy::start(&dir, agent_port);
    let state = |want: (&str, u32, u32), within: Duration| {
        wait_for(within, || {
            let s = haproxy.state();
            (s.0 == want.0 && (s.1, s.2) == (want.1, want.2)).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "HAProxy never showed {want:?}: {:?}\n{}\n{}",
                haproxy.state(),
                http_get(agent.addr, "/api/v1/alerts").map_or(String::new(), |r| r.1),
                agent.log_text()
            )
        })
    };
    state(("UP", 100, 100), Duration::from_secs(10));
    assert_eq!(agent_check(agent_port), "up ready 100%\n");

    // The server stops accepting: four connections wait in its queue of four.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let waiting: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap())
        .collect();
    let t = Instant::now();
    state(("UP", 50, 50), Duration::from_secs(20));
    eprintln!(
        "accept queue full to HAProxy weight 50 of 100: {:?} (the rule's 10 s `for`, 200 ms ticks, agent-inter 100ms)",
        t.elapsed()
    );
    assert_eq!(
        agent.sample(&format!(
            "nodewatch_tcp_listen_overflows_total{{port=\"{port}\"}}"
        )),
        Some(0.0),
        "full, not overflowing"
    );
    let reply = agent_check(agent_port);
    assert!(
        reply.starts_with(&format!(
            "up ready 50% #alert NodewatchListenQueueNearlyFull (degraded): Accept queue of port {port} is "
        )) && reply.ends_with("% full\n"),
        "{reply}"
    );
    let (code, head, body) = healthz(agent.addr);
    assert_eq!(code, 200, "degraded still serves: {body}");
    assert!(head.contains("\r\nx-envoy-degraded:"), "{head}");
    assert!(body.contains("\"status\":\"degraded\""), "{body}");
    assert!(body.contains("\"weight\":50"), "{body}");
    assert!(body.contains("NodewatchListenQueueNearlyFull"), "{body}");
    let addr = agent.addr.to_string();
    let (code, out, err) = cli(&["status", "--addr", &addr]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("node: degraded (load-balancer weight 50%)\n"),
        "{out}"
    );
    let text = agent.metrics();
    for (series, want) in [
        ("nodewatch_node_healthy", 1.0),
        ("nodewatch_node_degraded", 1.0),
        (
            "nodewatch_health_transitions_total{state=\"degraded\"}",
            1.0,
        ),
    ] {
        assert_eq!(
            common::sample(&text, series),
            Some(want),
            "{series}\n{text}"
        );
    }

    // A manual drain wins; leaving it goes back to the degraded weight.
    assert_eq!(cli(&["drain", "--reason", "swap", "--addr", &addr]).0, 0);
    wait_for(Duration::from_secs(5), || {
        (haproxy.status() == "DRAIN (agent)").then_some(())
    })
    .unwrap_or_else(|| panic!("no DRAIN: {:?}", haproxy.state()));
    assert_eq!(healthz(agent.addr).0, 503);
    assert_eq!(cli(&["undrain", "--addr", &addr]).0, 0);
    state(("UP", 50, 50), Duration::from_secs(5));

    // The server accepts again: the queue empties, the alert resolves, the node is back at
    // full weight.
    let t = Instant::now();
    let accepted: Vec<TcpStream> = (0..4).map(|_| listener.accept().unwrap().0).collect();
    state(("UP", 100, 100), Duration::from_secs(5));
    eprintln!("queue emptied to HAProxy weight 100: {:?}", t.elapsed());
    drop((waiting, accepted));
    let (code, head, body) = healthz(agent.addr);
    assert_eq!(code, 200);
    assert!(!head.contains("x-envoy-degraded"), "{head}");
    assert!(body.contains("\"status\":\"healthy\""), "{body}");
    assert_eq!(
        common::sample(&agent.metrics(), "nodewatch_node_degraded"),
        Some(0.0)
    );
}

/// From an address that is not loopback, drain needs the token.
#[test]
fn non_loopback_callers_need_the_token() {
    if !have_root("non-loopback drain") {
        return;
    }
    let ns = Netns::create("hauth");
    ns.run(|| {
        // A second address on the namespace's loopback device: not 127/8, so not loopback
        // to the agent.
        let out = Command::new("ip")
            .args(["addr", "add", "10.77.0.1/32", "dev", "lo"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = TempDir::new("health-token");
        let token = dir.write("token", "s3cret-token\n");
        let wrong = dir.write("wrong", "not-it\n");
        let port = free_port();
        let cfg = format!(
            "{QUIET}spool_dir: {}\nhealth:\n  token_file: {}\n",
            dir.0.join("spool").display(),
            token.display()
        );
        let cfg_file = dir.write("config.yaml", &cfg);
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&cfg_file)
            .args(["--listen", &format!("0.0.0.0:{port}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let remote: SocketAddr = format!("10.77.0.1:{port}").parse().unwrap();
        wait_for(Duration::from_secs(20), || http_get(remote, "/healthz")).expect("agent up");
        let addr = remote.to_string();
        let (code, _, err) = cli(&["drain", "--reason", "x", "--addr", &addr]);
        assert_eq!(code, 1, "no token from 10.77.0.1 must be refused: {err}");
        assert!(err.contains("403"), "{err}");
        let (code, _, err) = cli(&[
            "drain",
            "--reason",
            "x",
            "--addr",
            &addr,
            "--token-file",
            wrong.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "a wrong token must be refused: {err}");
        let (code, out, err) = cli(&[
            "drain",
            "--reason",
            "x",
            "--addr",
            &addr,
            "--token-file",
            token.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("draining"), "{out}");
        // Reloading the rules is guarded the same way.
        let (code, _, err) = cli(&["reload", "--addr", &addr]);
        assert_eq!(code, 1, "a reload without the token must be refused: {err}");
        assert!(err.contains("403"), "{err}");
        let (code, out, err) = cli(&[
            "reload",
            "--addr",
            &addr,
            "--token-file",
            token.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("reloaded: "), "{out}");
        let _ = child.kill();
        let _ = child.wait();
    });
}

/// A real fault drains the node in HAProxy: an accept-queue overflow makes the default rule
/// `NodewatchListenOverflow` (`health: drain`) fire; when its one-minute window has passed,
/// the node is put back.
#[test]
fn haproxy_drains_on_an_accept_queue_overflow_and_recovers() {
    if !have_root("fault to HAProxy drain") {
        return;
    }
    let ns = Netns::create("hadrain");
    ns.run(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // SAFETY: listen() again only changes the backlog.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 1) };
        let dir = TempDir::new("health-fault");
        let agent_port = free_port();
        let agent = Agent::start(
            &dir,
            &format!(
                "interval: 200ms\nspool_dir: {}\nprobes:\n  accept_queue: {{ ports: [{port}] }}\n  gpu_ioctl: {{ enabled: false }}\n\
                 resources: {{ enabled: false }}\nhealth:\n  haproxy_agent_listen: 127.0.0.1:{agent_port}\n  recover_after: 0s\n",
                dir.0.join("spool").display()
            ),
        );
        let haproxy = Haproxy::start(&dir, agent_port);
        wait_for(Duration::from_secs(10), || (haproxy.status() == "UP").then_some(()))
            .expect("HAProxy never saw the node UP");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut keep = Vec::new();
        let mut fault_at = None;
        for _ in 0..4 {
            let t = Instant::now();
            match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                Ok(s) => keep.push(s),
                Err(_) => {
                    fault_at.get_or_insert(t);
                }
            }
        }
        let fault_at = fault_at.expect("the queue never overflowed");
        wait_for(Duration::from_secs(10), || {
            (haproxy.status() == "DRAIN (agent)").then_some(())
        })
        .unwrap_or_else(|| panic!("no DRAIN: {}\n{}", haproxy.status(), agent.log_text()));
        let drained = fault_at.elapsed();
        eprintln!("first dropped SYN to HAProxy DRAIN (agent): {drained:?} (200 ms ticks, agent-inter 100ms)");
        let (status, body) = http_get(agent.addr, "/healthz").unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("NodewatchListenOverflow"), "{body}");
        // The rule looks back one minute; after that the node comes back by itself.
        wait_for(Duration::from_secs(90), || (haproxy.status() == "UP").then_some(()))
            .unwrap_or_else(|| panic!("not back UP: {}\n{}", haproxy.status(), agent.log_text()));
        eprintln!("back UP {:?} after the fault", fault_at.elapsed());
        drop(keep);
    });
}
