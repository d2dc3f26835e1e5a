//! Real accept-queue overflows in a network namespace of the test's own: listeners with tiny
//! backlogs that never accept, flooded with connection attempts. The agent runs inside the
//! namespace; its counts are checked against the namespace's own `TcpExt: ListenOverflows`
//! and `ListenDrops`, and its queue gauges against `ss -ltn`.

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, Netns, NftTable, TempDir, have_root,
    listeners::{knock, listener, ss_queue},
    netstat, wait_for,
};

fn port_of(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

fn overflows(agent: &Agent, port: &str) -> f64 {
    agent
        .sample(&format!(
            "nodewatch_tcp_listen_overflows_total{{port=\"{port}\"}}"
        ))
        .unwrap_or_else(|| panic!("no overflow series for port {port}:\n{}", agent.metrics()))
}

/// Waits until the agent's gauges for `port` equal what `ss` shows, and returns both.
fn queues_agree(agent: &Agent, port: u16) -> (f64, f64) {
    let ss = ss_queue(port);
    let seen = wait_for(Duration::from_secs(3), || {
        let len = agent.sample(&format!(
            "nodewatch_tcp_listen_queue_length{{port=\"{port}\"}}"
        ));
        let max = agent.sample(&format!(
            "nodewatch_tcp_listen_queue_max{{port=\"{port}\"}}"
        ));
        (len == Some(ss.0) && max == Some(ss.1)).then_some(())
    });
    assert!(
        seen.is_some(),
        "port {port}: ss shows Recv-Q/Send-Q {ss:?}, agent shows\n{}",
        agent.metrics()
    );
    ss
}

fn config(ports: &[u16], mode: &str) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "interval: 200ms\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue:\n    ports: [{}]\n    mode: {mode}\n",
        ports.join(", ")
    )
}

#[test]
fn ebpf_counts_equal_the_namespaces_listen_overflows() {
    if !have_root("accept_queue ebpf") {
        return;
    }
    let ns = Netns::create("aq");
    ns.run(|| {
        let syn_l = listener(0, 2);
        let ack_l = listener(0, 2);
        let other_l = listener(0, 1);
        let (p, q, u) = (port_of(&syn_l), port_of(&ack_l), port_of(&other_l));
        let dir = TempDir::new("aq-ebpf");
        let agent = Agent::start(&dir, &config(&[p, q], "auto"));
        let probes = agent.metrics();
        assert!(
            probes.contains("nodewatch_probe_up{probe=\"accept_queue\",mode=\"ebpf\"} 1"),
            "not in eBPF mode:\n{}",
            agent.log_text()
        );
        let overflows_before = netstat("ListenOverflows");

        // SYN path: fill the queue (backlog 2 holds 3), then every attempt is a dropped SYN.
        let (mut keep, refused) = knock(p, 3);
        assert_eq!(refused, 0, "the first three fit in the queue");
        let first_drop = Instant::now();
        let (more, mut syn_drops) = knock(p, 1);
        keep.extend(more);
        let moved = wait_for(Duration::from_secs(5), || {
            (overflows(&agent, &p.to_string()) >= 1.0).then(|| first_drop.elapsed())
        })
        .expect("the overflow counter never moved");
        eprintln!("first dropped SYN to the counter moving on /metrics: {moved:?} (200 ms ticks)");
        let (more, refused) = knock(p, 6);
        keep.extend(more);
        syn_drops += refused;
        assert_eq!(syn_drops, 7, "every attempt on the full queue is refused");

        // ACK path: handshakes whose final ACK is held back until the queue is full. The
        // clients then send data; each segment that reaches the full listener is dropped.
        let hold = NftTable::create(
            "nodewatch_test_aq",
            &format!(
                "chain out {{\n type filter hook output priority 0;\n \
                 tcp dport {q} tcp flags & (syn | ack | fin | rst) == ack drop\n}}"
            ),
        );
        let (mut late, refused) = knock(q, 5);
        assert_eq!(refused, 0, "the SYNs fit while the queue is empty");
        drop(hold);
        for s in &mut late {
            s.write_all(b"x").unwrap();
        }
        thread::sleep(Duration::from_millis(1500));

        // The gauges show what ss shows while both queues are full.
        assert_eq!(queues_agree(&agent, p), (3.0, 2.0));
        assert_eq!(queues_agree(&agent, q), (3.0, 2.0));

        // Stop all traffic to the watched listeners, then compare with the kernel.
        drop(late);
        drop(keep);
        drop(syn_l);
        drop(ack_l);
        thread::sleep(Duration::from_millis(300));
        let kernel = netstat("ListenOverflows") - overflows_before;
        let agreed = wait_for(Duration::from_secs(3), || {
            let sum = overflows(&agent, &p.to_string()) + overflows(&agent, &q.to_string());
            (sum == kernel as f64).then_some(sum)
        });
        let (ap, aq) = (overflows(&agent, &p.to_string()), overflows(&agent, &q.to_string()));
        eprintln!(
            "namespace ListenOverflows +{kernel}; agent: port {p} (SYN path) {ap}, port {q} (ACK path) {aq}"
        );
        assert!(agreed.is_some(), "agent {ap} + {aq} != kernel {kernel}");
        assert_eq!(ap, syn_drops as f64, "one overflow per refused attempt");
        assert!(aq > 0.0, "the ACK path was not exercised");
        // Without a listener the gauges go away.
        let gone = wait_for(Duration::from_secs(3), || {
            agent
                .sample(&format!("nodewatch_tcp_listen_queue_length{{port=\"{p}\"}}"))
                .is_none()
                .then_some(())
        });
        assert!(gone.is_some(), "stale gauge for a closed listener");

        // An unwatched listener overflowing does not move the watched counters.
        let before_u = netstat("ListenOverflows");
        let (keep_u, refused_u) = knock(u, 6);
        assert!(refused_u > 0);
        thread::sleep(Duration::from_millis(500));
        assert_eq!(netstat("ListenOverflows") - before_u, refused_u);
        assert_eq!(overflows(&agent, &p.to_string()), ap);
        assert_eq!(overflows(&agent, &q.to_string()), aq);
        drop(keep_u);

        // The server comes back on the same port: followed without restarting the agent.
        let again = listener(p, 1);
        let (keep, refused) = knock(p, 5);
        assert_eq!(refused, 3, "backlog 1 holds two");
        let counted = wait_for(Duration::from_secs(3), || {
            (overflows(&agent, &p.to_string()) == ap + 3.0).then_some(())
        });
        assert!(counted.is_some(), "restarted listener not followed:\n{}", agent.metrics());
        assert_eq!(queues_agree(&agent, p), (2.0, 1.0));
        drop((keep, again));
        assert!(agent.stop().success());
    });
}

#[test]
fn sock_diag_mode_counts_the_listeners_drops() {
    if !have_root("accept_queue sock_diag") {
        return;
    }
    let ns = Netns::create("aqsd");
    ns.run(|| {
        let l = listener(0, 1);
        let p = port_of(&l);
        let dir = TempDir::new("aq-sockdiag");
        let agent = Agent::start(&dir, &config(&[p], "sock_diag"));
        assert!(
            agent
                .metrics()
                .contains("nodewatch_probe_up{probe=\"accept_queue\",mode=\"sock_diag\"} 1"),
            "{}",
            agent.log_text()
        );
        // A tick sees the listener before it drops anything.
        thread::sleep(Duration::from_millis(400));
        let drops_before = netstat("ListenDrops");
        let (keep, refused) = knock(p, 6);
        assert_eq!(refused, 4);
        let kernel = netstat("ListenDrops") - drops_before;
        let seen = wait_for(Duration::from_secs(3), || {
            (overflows(&agent, &p.to_string()) == kernel as f64).then_some(())
        });
        assert!(
            seen.is_some(),
            "agent {} != ListenDrops +{kernel}",
            overflows(&agent, &p.to_string())
        );
        assert_eq!(queues_agree(&agent, p), (2.0, 1.0));
        assert_eq!(
            agent.log_text().matches("WARN").count(),
            0,
            "a chosen mode is not a fallback"
        );
        drop((keep, l));
    });
}

#[test]
fn procfs_mode_exports_the_host_wide_counter() {
    if !have_root("accept_queue procfs") {
        return;
    }
    let ns = Netns::create("aqpf");
    ns.run(|| {
        let l = listener(0, 1);
        let p = port_of(&l);
        let dir = TempDir::new("aq-procfs");
        let agent = Agent::start(&dir, &config(&[p], "procfs"));
        let (keep, refused) = knock(p, 5);
        assert_eq!(refused, 3);
        let kernel = netstat("ListenOverflows");
        let seen = wait_for(Duration::from_secs(3), || {
            (overflows(&agent, "all") == kernel as f64).then_some(())
        });
        assert!(seen.is_some(), "{}", agent.metrics());
        let text = agent.metrics();
        assert!(
            text.contains("nodewatch_probe_up{probe=\"accept_queue\",mode=\"procfs\"} 1"),
            "{text}"
        );
        assert!(!text.contains(&format!(
            "nodewatch_tcp_listen_overflows_total{{port=\"{p}\"}}"
        )));
        // Queue gauges still come from sock_diag.
        assert_eq!(queues_agree(&agent, p), (2.0, 1.0));
        drop((keep, l));
    });
}

#[test]
fn probes_command_names_the_mode() {
    if !have_root("nodewatch probes") {
        return;
    }
    let dir = TempDir::new("aq-probes");
    for (mode, want) in [
        ("auto", "ebpf"),
        ("sock_diag", "sock_diag"),
        ("procfs", "procfs"),
    ] {
        let cfg = dir.write("c.yaml", &config(&[8000], mode));
        let out = Command::new(common::BIN)
            .args(["probes", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("accept_queue"))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(line.split_whitespace().nth(2), Some(want), "{line}");
        if want == "ebpf" {
            assert!(line.contains("cgroup_skb ingress"), "{line}");
        }
    }
}

/// The program is attached in multi mode, so cgroup programs of others (systemd's IP
/// accounting and firewalling) can still attach below the root.
#[test]
fn attaches_in_multi_mode_beside_other_cgroup_programs() {
    if !have_root("accept_queue attach mode") {
        return;
    }
    let dir = TempDir::new("aq-multi");
    let agent = Agent::start(&dir, "interval: 200ms\n");
    let log = agent.log_text();
    let root = log
        .split("cgroup_skb ingress on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no attach line:\n{log}"))
        .to_string();
    let out = Command::new("bpftool")
        .args(["cgroup", "show", &root])
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("accept_queue"))
        .unwrap_or_else(|| panic!("not attached to {root}:\n{text}"));
    assert!(line.contains("multi"), "{line}");
    assert!(agent.stop().success());
}

/// IPv6, and a dual-stack listener reached over IPv4: the same exact count.
#[test]
fn ipv6_and_dual_stack_listeners_count_exactly() {
    if !have_root("accept_queue ipv6") {
        return;
    }
    let ns = Netns::create("aq6");
    ns.run(|| {
        let v6 = TcpListener::bind("[::1]:0").expect("bind [::1]");
        let dual = TcpListener::bind("[::]:0").expect("bind [::]");
        for l in [&v6, &dual] {
            // SAFETY: listen() again only changes the backlog.
            assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 1) }, 0);
        }
        let (p6, pd) = (port_of(&v6), port_of(&dual));
        let dir = TempDir::new("aq-v6");
        let agent = Agent::start(&dir, &config(&[p6, pd], "ebpf"));
        let before = netstat("ListenOverflows");
        let try_all = |addr: SocketAddr, n: usize| -> (Vec<TcpStream>, u64) {
            let mut open = Vec::new();
            let mut refused = 0;
            for _ in 0..n {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                    Ok(s) => open.push(s),
                    Err(_) => refused += 1,
                }
            }
            (open, refused)
        };
        let (k6, r6) = try_all(format!("[::1]:{p6}").parse().unwrap(), 5);
        // IPv4 packets to an AF_INET6 socket (v4-mapped).
        let (kd, rd) = try_all(format!("127.0.0.1:{pd}").parse().unwrap(), 5);
        assert_eq!((r6, rd), (3, 3), "backlog 1 holds two");
        drop((k6, kd, v6, dual));
        thread::sleep(Duration::from_millis(300));
        let kernel = netstat("ListenOverflows") - before;
        let agreed = wait_for(Duration::from_secs(3), || {
            let (a6, ad) = (
                overflows(&agent, &p6.to_string()),
                overflows(&agent, &pd.to_string()),
            );
            (a6 + ad == kernel as f64).then_some((a6, ad))
        });
        eprintln!("IPv6 and dual-stack: kernel ListenOverflows +{kernel}, agent {agreed:?}");
        assert_eq!(
            agreed,
            Some((3.0, 3.0)),
            "kernel +{kernel}\n{}",
            agent.metrics()
        );
    });
}

/// A connect from `127.0.0.1:from` to `port` that does not wait for the handshake.
fn connect_from(from: u16, port: u16) -> std::os::fd::OwnedFd {
    // SAFETY: plain socket calls on a socket this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let sa = |p: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: p.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sa(from);
        assert_eq!(
            libc::bind(fd, (&raw const local).cast(), len),
            0,
            "bind {from}"
        );
        let remote = sa(port);
        libc::connect(fd, (&raw const remote).cast(), len);
        std::os::fd::FromRawFd::from_raw_fd(fd)
    }
}

/// A SYN sent again for a connection the SYN queue already holds (its SYN-ACK was lost) that
/// meets a full accept queue is answered with a SYN-ACK, not dropped: the kernel counts no
/// overflow, and neither does the agent.
#[test]
fn a_retransmitted_syn_for_a_waiting_connection_is_not_an_overflow() {
    if !have_root("accept_queue syn retransmit") {
        return;
    }
    let ns = Netns::create("aqrsyn");
    ns.run(|| {
        let l = listener(0, 1);
        let p = port_of(&l);
        let dir = TempDir::new("aq-rsyn");
        let agent = Agent::start(&dir, &config(&[p], "ebpf"));
        let a_port = common::free_port();
        let lost = NftTable::create(
            "nodewatch_test_rsyn",
            &format!(
                "chain in {{\n type filter hook input priority 0;\n \
                 tcp sport {p} tcp dport {a_port} tcp flags & (syn | ack) == syn | ack drop\n}}"
            ),
        );
        let (overflows_before, syn_retrans_before) = (netstat("ListenOverflows"), netstat("TCPSynRetrans"));
        let a = connect_from(a_port, p);
        thread::sleep(Duration::from_millis(100));
        let (keep, refused) = knock(p, 2);
        assert_eq!(refused, 0, "two fit in the queue besides the waiting one");
        // A resends its SYN after 1 s, into the full queue.
        thread::sleep(Duration::from_millis(2500));
        let syn_retrans = netstat("TCPSynRetrans") - syn_retrans_before;
        assert!(syn_retrans > 0, "A never resent its SYN");
        drop((a, lost, keep, l));
        thread::sleep(Duration::from_millis(300));
        let kernel = netstat("ListenOverflows") - overflows_before;
        let seen = wait_for(Duration::from_secs(2), || {
            let a = overflows(&agent, &p.to_string());
            (a == kernel as f64).then_some(a)
        });
        eprintln!(
            "SYNs resent into a full queue: {syn_retrans}; kernel ListenOverflows +{kernel}, agent {}",
            overflows(&agent, &p.to_string())
        );
        assert!(seen.is_some(), "agent {} != kernel {kernel}", overflows(&agent, &p.to_string()));
    });
}

/// A listener in a namespace of its own whose cgroup's processes live elsewhere: a service
/// started with `ip netns exec` from the host's cgroup (here, this test's). The agent runs on
/// the host; its queue gauges for the listener equal what `ss` shows inside the namespace.
#[test]
fn queue_gauges_reach_a_listener_in_a_namespace_its_cgroup_does_not_live_in() {
    if !have_root("accept_queue in another namespace") {
        return;
    }
    let ns = Netns::create("aqns");
    // The listener's process, spawned from a thread inside the namespace: it lives there,
    // in this test's cgroup, whose other processes (this one first) stay on the host.
    let mut server = ns.run(|| {
        std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen(3)\nprint(s.getsockname()[1], flush=True)\nsys.stdin.read()\n",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start python3")
    });
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().expect("the listener's port");
    let dir = TempDir::new("aq-netns");
    let agent = Agent::start(&dir, &config(&[port], "auto"));
    // Two connections wait in its accept queue (it never accepts).
    let clients: Vec<TcpStream> = ns.run(|| {
        (0..2)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
            .collect()
    });
    let ss = ns.run(|| ss_queue(port));
    assert_eq!(ss, (2.0, 3.0), "ss inside the namespace");
    let seen = wait_for(Duration::from_secs(5), || {
        let len = agent.sample(&format!(
            "nodewatch_tcp_listen_queue_length{{port=\"{port}\"}}"
        ));
        let max = agent.sample(&format!(
            "nodewatch_tcp_listen_queue_max{{port=\"{port}\"}}"
        ));
        (len == Some(ss.0) && max == Some(ss.1)).then_some(())
    });
    assert!(
        seen.is_some(),
        "port {port}: ss shows Recv-Q/Send-Q {ss:?} in the namespace, agent shows\n{}\n{}",
        agent.metrics(),
        agent.log_text()
    );
    drop(clients);
    let _ = server.kill();
    let _ = server.wait();
    assert!(agent.stop().success());
}
