//! Hostile and broken HTTP clients: slow headers, huge headers, garbage, slow bodies, a flood
//! of connections. The agent answers everyone else throughout and never panics.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{Agent, TempDir, http_get, http_request};

const QUIET: &str = "interval: 200ms\nprobes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\nresources: { enabled: false }\n";

fn start(tag: &str) -> (TempDir, Agent) {
    let dir = TempDir::new(tag);
    let cfg = format!("{QUIET}spool_dir: {}\n", dir.0.join("spool").display());
    let agent = Agent::start(&dir, &cfg);
    (dir, agent)
}

/// Sends raw bytes and returns what the server answered before closing (or after 12 s).
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn healthy(agent: &Agent) {
    let t = Instant::now();
    let (status, _) = http_get(agent.addr, "/healthz").expect("the agent still answers");
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "slow answer: {:?}",
        t.elapsed()
    );
}

#[test]
fn slow_clients_are_cut_off_and_hold_nothing() {
    let (_dir, agent) = start("http-slow");
    // Clients that never finish their headers.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(agent.addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    healthy(&agent);
    // After the header timeout (5 s) the server has closed them.
    std::thread::sleep(Duration::from_secs(6));
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            n == 0 || text.starts_with("HTTP/1.1 408"),
            "still open: {text:?}"
        );
    }
    // A body that trickles in is abandoned after the request timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(agent.addr).unwrap();
    s.write_all(b"POST /api/v1/drain HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    healthy(&agent);
    assert!(
        http_get(agent.addr, "/healthz")
            .unwrap()
            .1
            .contains("healthy")
    );
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let (_dir, agent) = start("http-bad");
    let big_header = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw(agent.addr, big_header.as_bytes());
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:.80}"
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        agent.addr,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:.80}"
    );
    for garbage in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /api/v1/heartbeat/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/v1/drain HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /%ff%fe/\xc3\x28 HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let answer = raw(agent.addr, garbage);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{garbage:?} -> {answer:.120}"
        );
    }
    let long_path = format!("/{}", "x".repeat(100_000));
    assert!(http_get(agent.addr, &long_path).is_none_or(|(s, _)| s >= 400));
    assert_eq!(
        http_request(agent.addr, "POST", "/api/v1/drain", &vec![b'{'; 1 << 20]).map(|a| a.0),
        Some(413)
    );
    assert_eq!(
        http_request(agent.addr, "POST", "/api/v1/drain", b"not json")
            .unwrap()
            .0,
        400
    );
    healthy(&agent);
    let log = agent.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_flood_of_connections_does_not_take_the_agent_down() {
    let (_dir, agent) = start("http-flood");
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(agent.addr).ok())
        .collect();
    assert!(flood.len() > 300, "{}", flood.len());
    drop(flood);
    std::thread::sleep(Duration::from_millis(200));
    healthy(&agent);
    assert!(agent.stop().success());
}
