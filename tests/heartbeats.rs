//! Heartbeats against a real local HTTP server that the test starts, slows down, breaks,
//! hangs and stops; push heartbeats through the agent's own endpoint.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Agent, TempDir, http_request, sample, wait_for};

/// How the test server answers.
#[derive(Clone, Debug)]
enum Mode {
    Ok {
        delay: Duration,
        body: &'static str,
    },
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
}

/// An HTTP server on loopback whose behaviour the test switches.
struct Server {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(Mode::Ok {
            delay: Duration::ZERO,
            body: "ok",
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (mode, stop) = (Arc::clone(&mode), Arc::clone(&stop));
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return; // drops the listener: connections are refused from now on
                    }
                    let Ok(conn) = conn else { continue };
                    let (mode, stop) = (Arc::clone(&mode), Arc::clone(&stop));
                    thread::spawn(move || serve(conn, &mode, &stop));
                }
            })
        };
        Self {
            addr,
            mode,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Stops accepting: the port refuses connections afterwards.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            a.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut conn: TcpStream, mode: &Mutex<Mode>, stop: &AtomicBool) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let mode = mode.lock().unwrap().clone();
    let (status, body) = match mode {
        Mode::Ok { delay, body } => {
            thread::sleep(delay);
            (200, body)
        }
        Mode::Status(s) => (s, "broken"),
        Mode::Hang => {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
            return;
        }
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

const QUIET: &str = "interval: 200ms\nprobes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\nresources: { enabled: false }\n";

fn series(text: &str, metric: &str, labels: &str) -> Option<f64> {
    sample(text, &format!("{metric}{{{labels}}}"))
}

/// Waits until the agent reports `target` up (1) or down (0); panics with the metrics if not.
fn wait_state(agent: &Agent, target: &str, up: f64, within: Duration) -> String {
    wait_for(within, || {
        let text = agent.metrics();
        (series(
            &text,
            "nodewatch_heartbeat_up",
            &format!("target=\"{target}\""),
        ) == Some(up))
        .then_some(text)
    })
    .unwrap_or_else(|| panic!("{target} never became {up}:\n{}", agent.metrics()))
}

fn failures(text: &str, target: &str, reason: &str) -> f64 {
    series(
        text,
        "nodewatch_heartbeat_failures_total",
        &format!("target=\"{target}\",reason=\"{reason}\""),
    )
    .unwrap_or(0.0)
}

#[test]
fn http_and_tcp_heartbeats_follow_a_real_server() {
    let mut server = Server::start();
    let a = server.addr;
    let dir = TempDir::new("hb-http");
    let agent = Agent::start(
        &dir,
        &format!(
            "{QUIET}heartbeats:\n  \
             - {{ name: web, url: \"http://{a}/health\", interval: 200ms, timeout: 150ms, down_after: 2, up_after: 2, body_regex: \"^ok\" }}\n  \
             - {{ name: sock, tcp: \"{a}\", interval: 200ms, timeout: 150ms }}\n"
        ),
    );
    wait_state(&agent, "web", 1.0, Duration::from_secs(3));
    wait_state(&agent, "sock", 1.0, Duration::from_secs(3));

    // Latency follows a delay the server adds.
    server.set(Mode::Ok {
        delay: Duration::from_millis(100),
        body: "ok",
    });
    let latency = wait_for(Duration::from_secs(3), || {
        let l = series(
            &agent.metrics(),
            "nodewatch_heartbeat_latency_seconds",
            "target=\"web\"",
        )?;
        (l >= 0.1).then_some(l)
    })
    .expect("latency never reflected the delay");
    eprintln!(
        "server delay 100 ms, heartbeat latency {:.2} ms",
        latency * 1000.0
    );
    assert!((0.1..0.110).contains(&latency), "latency {latency}");

    // 500: down only after two failures in a row.
    server.set(Mode::Status(500));
    let text = wait_state(&agent, "web", 0.0, Duration::from_secs(3));
    assert!(failures(&text, "web", "status") >= 2.0, "{text}");
    // Back: up only after two successes.
    server.set(Mode::Ok {
        delay: Duration::ZERO,
        body: "ok",
    });
    wait_state(&agent, "web", 1.0, Duration::from_secs(3));

    // A body that does not match.
    server.set(Mode::Ok {
        delay: Duration::ZERO,
        body: "degraded",
    });
    let text = wait_state(&agent, "web", 0.0, Duration::from_secs(3));
    assert!(failures(&text, "web", "body") >= 2.0, "{text}");

    // A server that accepts but never answers is down at the timeout, not hung.
    server.set(Mode::Ok {
        delay: Duration::ZERO,
        body: "ok",
    });
    wait_state(&agent, "web", 1.0, Duration::from_secs(3));
    server.set(Mode::Hang);
    let hung = Instant::now();
    let text = wait_state(&agent, "web", 0.0, Duration::from_secs(3));
    eprintln!(
        "hanging server reported down after {:?} (2 × 150 ms timeouts, 200 ms interval)",
        hung.elapsed()
    );
    assert!(failures(&text, "web", "timeout") >= 2.0, "{text}");
    assert_eq!(
        series(&text, "nodewatch_heartbeat_up", "target=\"sock\""),
        Some(1.0),
        "the hanging HTTP target does not hold back the TCP one"
    );

    // Stopped: refused, for both kinds.
    server.stop();
    let text = wait_state(&agent, "sock", 0.0, Duration::from_secs(3));
    assert!(failures(&text, "sock", "refused") >= 1.0, "{text}");
    let text = wait_for(Duration::from_secs(3), || {
        let t = agent.metrics();
        (failures(&t, "web", "refused") >= 1.0).then_some(t)
    });
    assert!(text.is_some(), "{}", agent.metrics());
    assert!(agent.stop().success());
}

#[test]
fn push_heartbeat_expires_after_its_ttl_and_comes_back() {
    let dir = TempDir::new("hb-push");
    let agent = Agent::start(
        &dir,
        &format!(
            "{QUIET}heartbeats:\n  - {{ name: trainer, push_ttl: 1s }}\n  - {{ name: web, url: \"http://127.0.0.1:9/\" }}\n"
        ),
    );
    let post = |name: &str, body: &[u8]| {
        http_request(
            agent.addr,
            "POST",
            &format!("/api/v1/heartbeat/{name}"),
            body,
        )
        .expect("agent answers")
    };
    assert_eq!(post("trainer", b"").0, 204);
    let text = agent.metrics();
    assert_eq!(
        series(&text, "nodewatch_heartbeat_up", "target=\"trainer\""),
        Some(1.0),
        "{text}"
    );

    // Silence: down once the TTL has passed, not before.
    let beat = Instant::now();
    let text = wait_state(&agent, "trainer", 0.0, Duration::from_secs(3));
    let expired = beat.elapsed();
    eprintln!("push heartbeat with a 1 s TTL reported down {expired:?} after the last beat");
    assert!(expired >= Duration::from_secs(1), "{expired:?}");
    assert!(expired < Duration::from_millis(1300), "{expired:?}");
    assert_eq!(failures(&text, "trainer", "expired"), 1.0, "{text}");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        failures(&agent.metrics(), "trainer", "expired"),
        1.0,
        "one expiry per silence"
    );

    // The next beat brings it back at once.
    assert_eq!(post("trainer", b"").0, 204);
    let text = agent.metrics();
    assert_eq!(
        series(&text, "nodewatch_heartbeat_up", "target=\"trainer\""),
        Some(1.0),
        "{text}"
    );

    // Unknown names, non-push targets, large bodies and other methods are refused.
    assert_eq!(post("nobody", b"").0, 404);
    assert_eq!(post("web", b"").0, 404, "an HTTP target takes no pushes");
    assert_eq!(post("trainer", &[b'x'; 64 * 1024]).0, 413);
    assert_eq!(
        http_request(agent.addr, "GET", "/api/v1/heartbeat/trainer", b"")
            .unwrap()
            .0,
        405
    );
}

#[test]
fn bad_heartbeat_configs_are_located() {
    let dir = TempDir::new("hb-bad");
    for (text, line, want) in [
        ("heartbeats:\n  - { name: a }\n", 2, "needs exactly one of"),
        (
            "heartbeats:\n  - { name: a, url: \"https://x/\" }\n",
            2,
            "https is not supported",
        ),
        (
            "heartbeats:\n  - { name: a, tcp: \"nohost\" }\n",
            2,
            "must be host:port",
        ),
        (
            "heartbeats:\n  - { name: a, push_ttl: 1s }\n  - { name: a, push_ttl: 2s }\n",
            3,
            "listed twice",
        ),
        (
            "heartbeats:\n  - { name: \"a/b\", push_ttl: 1s }\n",
            2,
            "must be 1-64 letters",
        ),
        (
            "heartbeats:\n  - { name: a, url: \"http://x/\", body_regex: \"(\" }\n",
            2,
            "invalid body_regex",
        ),
        (
            "heartbeats:\n  - { name: a, url: \"http://x/\", interval: 1s, timeout: 2s }\n",
            2,
            "longer than the interval",
        ),
        (
            "heartbeats:\n  - { name: a, tcp: \"x:1\", down_after: 0 }\n",
            2,
            "at least 1",
        ),
        (
            "heartbeats:\n  - { name: a, push_ttl: 1s, body_contains: ok }\n",
            2,
            "apply to `url` checks only",
        ),
        (
            "heartbeats:\n  - { name: a, push_ttl: 1s, colour: red }\n",
            2,
            "unknown field `colour`",
        ),
    ] {
        let path = dir.write("bad.yaml", text);
        let out = std::process::Command::new(common::BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(
            err.starts_with(&format!("{}:{line}:", path.display())),
            "{text}: {err}"
        );
        assert!(err.contains(want), "{text}: want {want:?} in {err}");
    }
}
