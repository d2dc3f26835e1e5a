//! Real retransmits on loopback, caused by an nft table that drops a share of the packets,
//! counted by the agent and checked against the kernel's own per-socket `tcpi_total_retrans`.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use common::{Agent, NftTable, TempDir, have_root, mss_listener, netstat, snmp_tcp};

const PAYLOAD: usize = 256 * 1024;
/// Events the kernel did not run the probe for; printed when a count falls short.
const MISSED: &str = "nodewatch_probe_missed_events_total{collector=\"tcp_retransmits\"}";

/// Connections to `port`, each sending PAYLOAD bytes both ways. Returns every socket (both
/// ends), still open, once all the data arrived.
fn exchange(listener: &TcpListener, conns: usize) -> Vec<TcpStream> {
    let addr = listener.local_addr().unwrap();
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect through the lossy path");
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                s.write_all(&vec![7u8; PAYLOAD]).unwrap();
                let mut back = vec![0u8; PAYLOAD];
                s.read_exact(&mut back).unwrap();
                s
            })
        })
        .collect();
    let mut servers = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..conns {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        servers.push(s.try_clone().unwrap());
        handles.push(thread::spawn(move || {
            let mut got = vec![0u8; PAYLOAD];
            s.read_exact(&mut got).unwrap();
            s.write_all(&got).unwrap();
        }));
    }
    handles.into_iter().for_each(|h| h.join().unwrap());
    let mut all: Vec<TcpStream> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    all.extend(servers);
    all
}

fn tcp_info(s: &TcpStream) -> libc::tcp_info {
    // SAFETY: a zeroed tcp_info is valid; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info
    }
}

/// Waits until nothing is in flight on any socket, so no retransmit can still happen.
fn settle(socks: &[TcpStream]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while socks.iter().any(|s| tcp_info(s).tcpi_unacked != 0) {
        assert!(
            Instant::now() < deadline,
            "sockets still have unacked data after 30 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn total_retrans(socks: &[TcpStream]) -> u64 {
    socks
        .iter()
        .map(|s| u64::from(tcp_info(s).tcpi_total_retrans))
        .sum()
}

/// `local port -> peer port: tcpi_total_retrans` per socket, for a failure message.
fn per_socket(socks: &[TcpStream]) -> String {
    socks
        .iter()
        .map(|s| {
            format!(
                "{} -> {}: {}",
                s.local_addr().unwrap().port(),
                s.peer_addr().unwrap().port(),
                tcp_info(s).tcpi_total_retrans
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn counts_exactly_the_kernels_retransmits_per_watched_port() {
    if !have_root("tcp_retransmits") {
        return;
    }
    let watched = mss_listener();
    let unwatched = mss_listener();
    let (w, u) = (
        watched.local_addr().unwrap().port(),
        unwatched.local_addr().unwrap().port(),
    );

    let dir = TempDir::new("retrans");
    let agent = Agent::start(
        &dir,
        &format!("interval: 200ms\nprobes:\n  tcp_retransmits:\n    ports: [{w}]\n"),
    );
    let up = agent.sample("nodewatch_probe_up{probe=\"tcp_retransmits\",mode=\"ebpf\"}");
    assert_eq!(
        up,
        Some(1.0),
        "probe not in eBPF mode:\n{}",
        agent.log_text()
    );
    let series = format!("nodewatch_tcp_retransmits_total{{port=\"{w}\"}}");
    assert_eq!(agent.sample(&series), Some(0.0));
    let other_before = agent
        .sample("nodewatch_tcp_retransmits_total{port=\"other\"}")
        .expect("other series");

    // Toward the listeners, drop on output: the kernel counts the retransmit, then the
    // transmit fails (err != 0 in the tracepoint). Back from them, drop on input: the
    // transmit succeeds and the packet is lost after. Both kinds must be counted.
    let lossy = NftTable::create(
        "nodewatch_test_retrans",
        &format!(
            "chain out {{\n type filter hook output priority 0;\n \
               tcp dport {{ {w}, {u} }} numgen random mod 100 < 12 drop\n}}\n\
             chain in {{\n type filter hook input priority 0;\n \
               tcp sport {{ {w}, {u} }} numgen random mod 100 < 12 drop\n}}"
        ),
    );
    let w_socks = exchange(&watched, 6);
    let u_socks = exchange(&unwatched, 3);
    drop(lossy);
    settle(&w_socks);
    settle(&u_socks);

    let w_kernel = total_retrans(&w_socks);
    let u_kernel = total_retrans(&u_socks);
    assert!(
        w_kernel > 0,
        "the lossy path caused no retransmits on the watched port"
    );
    assert!(
        u_kernel > 0,
        "the lossy path caused no retransmits on the unwatched port"
    );

    // The agent reads its maps every 200 ms: wait for a tick after the last retransmit (a
    // loaded machine can delay ticks; the loop ends as soon as the counts agree).
    let other = "nodewatch_tcp_retransmits_total{port=\"other\"}";
    let read = || {
        (
            agent.sample(&series),
            agent.sample(other).unwrap_or(-1.0) - other_before,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut seen, mut other_delta) = read();
    while (seen != Some(w_kernel as f64) || other_delta < u_kernel as f64)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(100));
        (seen, other_delta) = read();
    }
    let missed = agent.sample(MISSED);
    eprintln!(
        "watched port {w}: kernel tcpi_total_retrans {w_kernel}, agent {seen:?}; \
         unwatched port {u}: kernel {u_kernel}, agent other +{other_delta}; missed {missed:?}"
    );
    assert_eq!(
        seen,
        Some(w_kernel as f64),
        "agent count differs from the kernel's; per socket:\n{}",
        per_socket(&w_socks)
    );
    assert!(
        other_delta >= u_kernel as f64,
        "unwatched retransmits missing from other: +{other_delta}, kernel {u_kernel}"
    );
    assert!(
        agent
            .sample(&format!("nodewatch_tcp_retransmits_total{{port=\"{u}\"}}"))
            .is_none()
    );

    let status = agent.stop();
    assert!(status.success(), "agent exited with {status}");
}

/// Retransmits whose transmit fails locally (a firewall on this host drops them: the
/// tracepoint reports err = -EPERM) are counted by the kernel, so the agent counts them too.
#[test]
fn counts_retransmits_that_fail_locally_like_the_kernel() {
    if !have_root("tcp_retransmits") {
        return;
    }
    let l = mss_listener();
    let port = l.local_addr().unwrap().port();
    let dir = TempDir::new("retrans-fail");
    let agent = Agent::start(
        &dir,
        &format!("interval: 200ms\nprobes:\n  tcp_retransmits:\n    ports: [{port}]\n"),
    );
    let series = format!("nodewatch_tcp_retransmits_total{{port=\"{port}\"}}");

    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    let fails_before = netstat("TCPRetransFail");

    // The data leaves the client and is lost on arrival, so the client retransmits...
    let lost = NftTable::create(
        "nodewatch_test_rfail_in",
        &format!("chain in {{\n type filter hook input priority 0;\n tcp dport {port} drop\n}}"),
    );
    client.write_all(&[1u8; 4000]).unwrap();
    thread::sleep(Duration::from_millis(300));
    // ...then its retransmits are refused by the local firewall (err = -EPERM)...
    let refused = NftTable::create(
        "nodewatch_test_rfail_out",
        &format!("chain out {{\n type filter hook output priority 0;\n tcp dport {port} drop\n}}"),
    );
    drop(lost);
    thread::sleep(Duration::from_millis(2500));
    // ...until the path heals and the data arrives.
    drop(refused);
    server
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = [0u8; 4000];
    server.read_exact(&mut got).unwrap();
    let socks = [client, server];
    settle(&socks);
    let fails = netstat("TCPRetransFail") - fails_before;
    assert!(
        fails > 0,
        "no retransmit failed locally: the test did not exercise err != 0"
    );
    let kernel = total_retrans(&socks);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = agent.sample(&series);
    while seen != Some(kernel as f64) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        seen = agent.sample(&series);
    }
    let missed = agent.sample(MISSED);
    eprintln!(
        "port {port}: kernel tcpi_total_retrans {kernel} (of which failed locally: {fails} host-wide), agent {seen:?}, missed {missed:?}"
    );
    assert_eq!(
        seen,
        Some(kernel as f64),
        "agent count differs from the kernel's (events the kernel skipped: {missed:?}); per socket:\n{}\nlog:\n{}",
        per_socket(&socks),
        agent.log_text()
    );
}

/// The ratio's two halves against the kernel's own counters: in a namespace whose only
/// traffic is on the watched port (loss on input, which the sender still sends), the agent's
/// retransmits equal the namespace's `RetransSegs`, and its segments sent equal `OutSegs` (new
/// segments) plus `RetransSegs`, less the SYN-ACK retransmits, which the kernel counts in both
/// (`tcp_make_synack` adds every SYN-ACK to `OutSegs`, `tcp_rtx_synack` a retransmitted one to
/// `RetransSegs` too) while each is one segment on the wire. So the default rules' ratio is the
/// kernel's.
///
/// The SYN-ACK retransmits are the SYN-ACKs an nft counter saw leave, less one per connection
/// (`PassiveOpens`). The counters are read once every byte is acknowledged, before the sockets
/// close: the ACK that a TIME_WAIT socket sends (one whose application closed it, for the
/// peer's FIN) counts in `OutSegs` but runs no cgroup program, so the closing handshakes stay
/// out of the comparison.
#[test]
fn segments_sent_equal_the_namespaces_out_segs_and_retrans_segs() {
    if !have_root("tcp_retransmits segments sent") {
        return;
    }
    let ns = common::Netns::create("segs");
    let l = ns.run(mss_listener);
    let port = l.local_addr().unwrap().port();
    let dir = TempDir::new("retrans-segs");
    // The agent on the host: its programs see every namespace.
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 200ms\nprobes:\n  tcp_retransmits:\n    ports: [{port}]\n  accept_queue: {{ enabled: false }}\n"
        ),
    );
    let sent = format!("nodewatch_tcp_segments_sent_total{{port=\"{port}\"}}");
    let retrans = format!("nodewatch_tcp_retransmits_total{{port=\"{port}\"}}");
    assert_eq!(agent.sample(&sent), Some(0.0), "{}", agent.metrics());
    let (socks, kernel) = ns.run(|| {
        let synacks = NftTable::create(
            "nodewatch_test_segs_synacks",
            &format!(
                "counter synacks {{}}\nchain out {{\n type filter hook output priority 0;\n tcp sport {port} tcp flags & (syn | ack) == syn | ack counter name \"synacks\"\n}}"
            ),
        );
        let lossy = NftTable::create(
            "nodewatch_test_segs",
            &format!(
                "chain in {{\n type filter hook input priority 0;\n tcp dport {port} numgen random mod 100 < 5 drop\n tcp sport {port} numgen random mod 100 < 5 drop\n}}"
            ),
        );
        let before = [snmp_tcp("OutSegs"), snmp_tcp("RetransSegs"), snmp_tcp("PassiveOpens")];
        let socks = exchange(&l, 4);
        drop(lossy);
        settle(&socks);
        // Nothing is in flight and every byte was read: the connections stay quiet.
        let after = [snmp_tcp("OutSegs"), snmp_tcp("RetransSegs"), snmp_tcp("PassiveOpens")];
        let [out_segs, retrans_segs, opens] = [0, 1, 2].map(|i| after[i] - before[i]);
        (socks, (out_segs, retrans_segs, synacks.counter("synacks") - opens))
    });
    let (out_segs, retrans_segs, synack_retrans) = kernel;
    eprintln!(
        "namespace: OutSegs +{out_segs}, RetransSegs +{retrans_segs}, SYN-ACK retransmits {synack_retrans}"
    );
    assert!(retrans_segs > 0, "the lossy path caused no retransmit");
    let want_sent = out_segs + retrans_segs - synack_retrans;
    let agreed = common::wait_for(Duration::from_secs(5), || {
        (agent.sample(&sent) == Some(want_sent as f64)
            && agent.sample(&retrans) == Some(retrans_segs as f64))
        .then_some(())
    });
    assert!(
        agreed.is_some(),
        "want {sent} {want_sent} (OutSegs + RetransSegs - SYN-ACK retransmits {synack_retrans}) and {retrans} {retrans_segs}:\n{}",
        agent.metrics()
    );
    drop(socks);
    drop(l);
    assert!(agent.stop().success());
}
