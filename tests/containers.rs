//! The agent on the host, the services in containers. No container runtime starts on these
//! machines (podman and runc refuse the hybrid cgroup layout), so each container is what a
//! runtime builds: its own network namespace and a cgroup v2 folder named as docker or
//! containerd (under Kubernetes) name theirs, with a process kept in both (tests/common/containers.rs).
//! Counts are checked against each namespace's own kernel counters and `ss` run inside it.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    thread,
    time::Duration,
};

use common::{
    Agent, NftTable, TempDir,
    containers::{FakeContainer, serial},
    fuse::{FUSEPY, FUSEPY_CHECK, SlowFs, slow_ioctl},
    have_root, have_tool_by,
    listeners::{knock, listener, ss_queue},
    netstat, snmp_tcp, wait_for,
};

fn labels(port: u16, c: &FakeContainer, pod: Option<&str>) -> String {
    match pod {
        Some(p) => format!("port=\"{port}\",container=\"{}\",pod=\"{p}\"", c.label()),
        None => format!("port=\"{port}\",container=\"{}\"", c.label()),
    }
}

const POD_UID: &str = "5f0c2a9e-7b1d-4c3e-9a8f-0123456789ab";
const POD: &str = "inference/llm-server-0";

#[test]
fn two_containers_on_one_port_are_told_apart() {
    if !have_root("containers: accept queue") {
        return;
    }
    let _serial = serial();
    let a = FakeContainer::docker("ctra");
    let b = FakeContainer::kubernetes("ctrb", POD_UID);
    let dir = TempDir::new("containers-aq");
    let pods = dir.0.join("pods");
    std::fs::create_dir_all(pods.join(format!("inference_llm-server-0_{POD_UID}"))).unwrap();
    // Any free port of the host: the containers' namespaces have nothing on it.
    let port = common::free_port();
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms\ncontainers: {{ pods_dir: {} }}\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ ports: [{port}] }}\n",
            pods.display()
        ),
    );
    assert!(
        agent
            .metrics()
            .contains("nodewatch_probe_up{probe=\"accept_queue\",mode=\"ebpf\"} 1"),
        "not in eBPF mode:\n{}",
        agent.log_text()
    );
    // Each container: its listener (backlog 2 in a, 1 in b), flooded from inside; the
    // namespace's own ListenOverflows is the oracle.
    let flood = |c: &FakeContainer, backlog: i32, attempts: usize| {
        c.inside(|| {
            let before = netstat("ListenOverflows");
            let l = listener(port, backlog);
            let (open, refused) = knock(port, attempts);
            thread::sleep(Duration::from_millis(300));
            let kernel = netstat("ListenOverflows") - before;
            assert!(refused > 0, "the queue never filled");
            (l, open, kernel)
        })
    };
    let (la, open_a, kernel_a) = flood(&a, 2, 12);
    let (lb, open_b, kernel_b) = flood(&b, 1, 6);
    eprintln!("ListenOverflows: container a +{kernel_a}, container b +{kernel_b}");
    assert_ne!(kernel_a, kernel_b, "pick floods the sum could not hide");
    let series_a = format!(
        "nodewatch_tcp_listen_overflows_total{{{}}}",
        labels(port, &a, None)
    );
    let series_b = format!(
        "nodewatch_tcp_listen_overflows_total{{{}}}",
        labels(port, &b, Some(POD))
    );
    let agreed = wait_for(Duration::from_secs(5), || {
        (agent.sample(&series_a) == Some(kernel_a as f64)
            && agent.sample(&series_b) == Some(kernel_b as f64))
        .then_some(())
    });
    assert!(
        agreed.is_some(),
        "want {series_a} {kernel_a} and {series_b} {kernel_b}:\n{}",
        agent.metrics()
    );
    // The host's own series of the port stays at zero, without container labels.
    assert_eq!(
        agent.sample(&format!(
            "nodewatch_tcp_listen_overflows_total{{port=\"{port}\"}}"
        )),
        Some(0.0)
    );
    assert!(
        !agent.metrics().contains("container=\"\""),
        "an empty container label:\n{}",
        agent.metrics()
    );

    // The queue gauges equal ss inside each namespace.
    for (c, pod) in [(&a, None), (&b, Some(POD))] {
        let ss = c.inside(|| ss_queue(port));
        let l = labels(port, c, pod);
        let seen = wait_for(Duration::from_secs(3), || {
            let len = agent.sample(&format!("nodewatch_tcp_listen_queue_length{{{l}}}"));
            let max = agent.sample(&format!("nodewatch_tcp_listen_queue_max{{{l}}}"));
            (len == Some(ss.0) && max == Some(ss.1)).then_some(())
        });
        assert!(
            seen.is_some(),
            "{l}: ss in the namespace shows {ss:?}, the agent:\n{}",
            agent.metrics()
        );
        eprintln!("{l}: queue {}/{} as ss shows", ss.0, ss.1);
    }

    // A closed listener's gauges go away.
    drop((open_a, la));
    let la_gone = wait_for(Duration::from_secs(3), || {
        agent
            .sample(&format!(
                "nodewatch_tcp_listen_queue_length{{{}}}",
                labels(port, &a, None)
            ))
            .is_none()
            .then_some(())
    });
    assert!(la_gone.is_some(), "stale gauge:\n{}", agent.metrics());
    drop((open_b, lb));

    // An alert about a container's port names it.
    let alerts = wait_for(Duration::from_secs(5), || {
        let (_, body) = common::http_get(agent.addr, "/api/v1/alerts")?;
        (body.contains(b.label()) && body.contains(a.label())).then_some(body)
    })
    .unwrap_or_else(|| panic!("no alerts naming both containers"));
    assert!(alerts.contains("NodewatchListenOverflow"), "{alerts}");
    assert!(alerts.contains(POD), "{alerts}");
    assert!(agent.stop().success());
}

#[test]
fn retransmits_in_a_container_are_its_namespaces() {
    if !have_root("containers: retransmits") {
        return;
    }
    let _serial = serial();
    let c = FakeContainer::docker("ctrr");
    // The listener belongs to the container: made inside, on a port of its namespace.
    let l = c.inside(common::mss_listener);
    let port = l.local_addr().unwrap().port();
    let dir = TempDir::new("containers-rt");
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms\nprobes:\n  accept_queue: {{ enabled: false }}\n  tcp_retransmits: {{ ports: [{port}] }}\n"
        ),
    );
    let series = format!(
        "nodewatch_tcp_retransmits_total{{{}}}",
        labels(port, &c, None)
    );
    let retrans = c.inside(|| {
        let lossy = NftTable::create(
            "nodewatch_test_ctr_rt",
            &format!(
                "chain out {{\n type filter hook output priority 0;\n tcp dport {port} numgen random mod 100 < 12 drop\n}}\nchain in {{\n type filter hook input priority 0;\n tcp sport {port} numgen random mod 100 < 12 drop\n}}"
            ),
        );
        let before = snmp_tcp("RetransSegs");
        let addr = l.local_addr().unwrap();
        // Loopback sends up to 64 KiB in one packet, so a round may lose none of its few data
        // packets: exchange again (a bounded number of times) until the kernel retransmitted.
        let mut kept = Vec::new();
        for _ in 0..10 {
            let client = thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s.write_all(&vec![7u8; 256 * 1024]).unwrap();
                let mut back = vec![0u8; 256 * 1024];
                s.read_exact(&mut back).unwrap();
                s
            });
            let (mut s, _) = l.accept().unwrap();
            let mut got = vec![0u8; 256 * 1024];
            s.read_exact(&mut got).unwrap();
            s.write_all(&got).unwrap();
            kept.push((client.join().unwrap(), s));
            if snmp_tcp("RetransSegs") > before {
                break;
            }
        }
        drop(lossy);
        // Nothing left in flight: no retransmit can follow.
        thread::sleep(Duration::from_secs(2));
        let n = snmp_tcp("RetransSegs") - before;
        drop(kept);
        n
    });
    drop(l);
    eprintln!("container's namespace RetransSegs +{retrans}");
    assert!(retrans > 0, "the lossy path caused no retransmit");
    let agreed = wait_for(Duration::from_secs(5), || {
        (agent.sample(&series) == Some(retrans as f64)).then_some(())
    });
    assert!(
        agreed.is_some(),
        "want {series} {retrans}:\n{}",
        agent.metrics()
    );
    assert_eq!(
        agent.sample(&format!(
            "nodewatch_tcp_retransmits_total{{port=\"{port}\"}}"
        )),
        Some(0.0),
        "the host's series of the port"
    );
    assert!(agent.stop().success());
}

/// Two containers serve on the same port number, each in its own namespace. The segments each
/// sends are counted apart and exactly (its namespace's `OutSegs + RetransSegs`): the first
/// container's traffic before and after the tick that gives the port's slot to its cgroup,
/// the second's, on the same port, in the hash beside it.
#[test]
fn segments_sent_by_two_containers_on_one_port_are_each_exact() {
    if !have_root("containers: segments sent") {
        return;
    }
    let _serial = serial();
    let a = FakeContainer::docker("ctsa");
    let b = FakeContainer::docker("ctsb");
    let port = common::free_port();
    let dir = TempDir::new("containers-segs");
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms\nprobes:\n  accept_queue: {{ enabled: false }}\n  tcp_retransmits: {{ ports: [{port}] }}\n"
        ),
    );
    let sent = |c: &FakeContainer| c.inside(|| snmp_tcp("OutSegs") + snmp_tcp("RetransSegs"));
    // A connection made inside the container: its sockets carry the container's cgroup.
    let connect = |c: &FakeContainer| {
        c.inside(|| {
            let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (server, _) = l.accept().unwrap();
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            (l, client, server)
        })
    };
    let ping = |(_, client, server): &mut (std::net::TcpListener, TcpStream, TcpStream),
                n: usize| {
        let mut byte = [0u8; 1];
        for _ in 0..n {
            client.write_all(&[1]).unwrap();
            server.read_exact(&mut byte).unwrap();
            server.write_all(&[2]).unwrap();
            client.read_exact(&mut byte).unwrap();
        }
    };
    let (a0, b0) = (sent(&a), sent(&b));
    let mut ca = connect(&a);
    ping(&mut ca, 200);
    // Ticks pass: the port's slot goes to a's cgroup.
    thread::sleep(Duration::from_millis(700));
    ping(&mut ca, 200);
    let mut cb = connect(&b);
    ping(&mut cb, 200);
    // The last delayed ACKs go out; then the connections stay open and idle.
    thread::sleep(Duration::from_millis(300));
    let (na, nb) = (sent(&a) - a0, sent(&b) - b0);
    eprintln!("OutSegs + RetransSegs: container a +{na}, container b +{nb}");
    let series = |c: &FakeContainer| {
        format!(
            "nodewatch_tcp_segments_sent_total{{{}}}",
            labels(port, c, None)
        )
    };
    let agreed = wait_for(Duration::from_secs(5), || {
        (agent.sample(&series(&a)) == Some(na as f64)
            && agent.sample(&series(&b)) == Some(nb as f64))
        .then_some(())
    });
    assert!(
        agreed.is_some(),
        "want {} {na} and {} {nb}:\n{}",
        series(&a),
        series(&b),
        agent.metrics()
    );
    drop((ca, cb));
    assert!(agent.stop().success());
}

#[test]
fn a_stalled_gpu_call_in_a_container_is_counted_and_logged_with_it() {
    if !have_root("containers: gpu ioctl")
        || !have_tool_by("containers: gpu ioctl", FUSEPY, FUSEPY_CHECK)
    {
        return;
    }
    let _serial = serial();
    let c = FakeContainer::docker("ctrg");
    let dir = TempDir::new("containers-gpu");
    let fs = SlowFs::new(&dir, "gpu");
    let device = fs.mnt.join("gpu0");
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n  gpu_ioctl:\n    devices: [\"{}\"]\n    stall_threshold: 500ms\n",
            device.display()
        ),
    );
    let file = fs.open("gpu0");
    let label = device.display().to_string();
    let took = c.inside(|| slow_ioctl(&file, 800));
    assert!(took >= Duration::from_millis(800));
    let stalls = format!(
        "nodewatch_gpu_ioctl_stalls_total{{device=\"{label}\",container=\"{}\"}}",
        c.label()
    );
    let counted = wait_for(Duration::from_secs(5), || {
        (agent.sample(&stalls) == Some(1.0)).then_some(())
    });
    assert!(counted.is_some(), "want {stalls} 1:\n{}", agent.metrics());
    assert_eq!(
        agent.sample(&format!(
            "nodewatch_gpu_ioctl_stalls_total{{device=\"{label}\"}}"
        )),
        Some(0.0),
        "the host's series"
    );
    let logged = wait_for(Duration::from_secs(3), || {
        let log = agent.log_text();
        log.lines()
            .any(|l| l.contains("GPU ioctl stalled") && l.contains(c.label()))
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "stall not logged with its container:\n{}",
        agent.log_text()
    );
    assert!(agent.stop().success());
}
