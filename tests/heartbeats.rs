//! Heartbeats against a real local HTTP server that the test starts, slows down, breaks,
//! hangs, glitches, stops and restarts; push heartbeats through the agent's own endpoint.
//! A failure is confirmed by retries: how fast a refused or hung target is down, and that a
//! lost check or a short restart is not an outage.

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, TempDir, firing,
    health_server::{Mode, Server},
    healthz, http_request, sample, wait_for,
};

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

/// Scrapes every 10 ms until `target` is down; when the scrape saw it, and what it read.
fn down_at(agent: &Agent, target: &str, within: Duration) -> (Instant, String) {
    let deadline = Instant::now() + within;
    loop {
        let text = agent.metrics();
        let t = Instant::now();
        if series(
            &text,
            "nodewatch_heartbeat_up",
            &format!("target=\"{target}\""),
        ) == Some(0.0)
        {
            return (t, text);
        }
        assert!(
            Instant::now() < deadline,
            "{target} never went down:\n{}",
            agent.metrics()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The default rule's firing gauge: 1 while a heartbeat is down.
const DOWN_FIRING: &str = "nodewatch_alerts{alertname=\"NodewatchHeartbeatDown\",state=\"firing\"}";

/// Scrapes every 10 ms for `how_long`; panics if `target` is ever down or the default
/// `NodewatchHeartbeatDown` ever fires.
fn stays_up(agent: &Agent, target: &str, how_long: Duration, what: &str) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        let text = agent.metrics();
        assert_eq!(
            series(
                &text,
                "nodewatch_heartbeat_up",
                &format!("target=\"{target}\"")
            ),
            Some(1.0),
            "{what}: {target} went down"
        );
        assert_eq!(
            sample(&text, DOWN_FIRING),
            Some(0.0),
            "{what}: NodewatchHeartbeatDown fired"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The default rule `NodewatchHeartbeatDown` fires for `target` and takes the node out.
fn alerted_and_out(agent: &Agent, target: &str) {
    wait_for(Duration::from_secs(3), || {
        (firing(agent, "NodewatchHeartbeatDown", &[("target", target)]) && healthz(agent) == 503)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{target} down but NodewatchHeartbeatDown not firing or /healthz not 503:\n{}",
            agent.log_text()
        )
    });
}

/// One check a second, the defaults otherwise (500 ms timeout, 3 retries 100 ms apart).
fn one_target(dir: &TempDir, entry: &str) -> Agent {
    Agent::start(
        dir,
        &format!("{QUIET}heartbeats:\n  - {{ {entry}, interval: 1s }}\n"),
    )
}

/// A port that refuses is down about 300 ms (3 retries 100 ms apart) after its first failed
/// check, not at the first one; a server that accepts and never answers at the 500 ms timeout
/// plus those 300 ms.
#[test]
fn refused_and_hung_targets_are_confirmed_down_quickly() {
    let mut server = Server::start();
    let dir = TempDir::new("hb-confirm");
    let agent = one_target(&dir, &format!("name: sock, tcp: \"{}\"", server.addr));
    wait_state(&agent, "sock", 1.0, Duration::from_secs(3));
    // Stop right after a check: the next one, an interval later, is the first to fail.
    let last = server.next_accept(Instant::now(), Duration::from_secs(3));
    server.stop();
    let first_failed = last + Duration::from_secs(1);
    let (down, text) = down_at(&agent, "sock", Duration::from_secs(3));
    let took = down.saturating_duration_since(first_failed);
    eprintln!("refused port: down {took:?} after its first failed check (3 retries 100 ms apart)");
    assert!(
        down > first_failed + Duration::from_millis(280),
        "down before its retries: {took:?} after the first failed check"
    );
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(
        failures(&text, "sock", "refused"),
        1.0,
        "a check and its retries count once: {text}"
    );
    alerted_and_out(&agent, "sock");

    let server = Server::start();
    let dir = TempDir::new("hb-confirm-hang");
    let agent = one_target(
        &dir,
        &format!("name: web, url: \"http://{}/health\"", server.addr),
    );
    wait_state(&agent, "web", 1.0, Duration::from_secs(3));
    server.set(Mode::Hang);
    let hung = Instant::now();
    let first = wait_for(Duration::from_secs(3), || {
        server.requests().into_iter().find(|t| *t > hung)
    })
    .expect("no check came");
    let (down, text) = down_at(&agent, "web", Duration::from_secs(3));
    let took = down.saturating_duration_since(first);
    eprintln!(
        "hung server: down {took:?} after its first unanswered check (500 ms timeout + 3 retries)"
    );
    // From when the server read the request, which a loaded machine delays by tens of ms:
    // well above the 500 ms a check without its retries would take, below a second check.
    assert!(took > Duration::from_millis(700), "{took:?}");
    assert!(took < Duration::from_millis(950), "{took:?}");
    assert_eq!(failures(&text, "web", "timeout"), 1.0, "{text}");
    alerted_and_out(&agent, "web");
}

/// A target that goes down asks for a tick at once: with a 30 s tick interval, the default
/// rule fires and `/healthz` turns 503 a moment after the confirmation, long before the next
/// scheduled tick.
#[test]
fn a_change_of_state_is_evaluated_without_waiting_for_the_tick() {
    let mut server = Server::start();
    let addr = server.addr;
    let dir = TempDir::new("hb-early");
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 30s
probes:
  tcp_retransmits: {{ enabled: false }}
  accept_queue: {{ enabled: false }}
  gpu_xid: {{ enabled: false }}
resources: {{ enabled: false }}
heartbeats:
  - {{ name: web, url: \"http://{addr}/health\", interval: 500ms }}
"
        ),
    );
    // The first tick ran at start (the target's first result may have come after it).
    wait_state(&agent, "web", 1.0, Duration::from_secs(3));
    assert_eq!(healthz(&agent), 200);
    thread::sleep(Duration::from_secs(1));
    server.stop();
    let stopped = Instant::now();
    let fired = wait_for(Duration::from_secs(10), || {
        firing(&agent, "NodewatchHeartbeatDown", &[("target", "web")]).then(Instant::now)
    })
    .unwrap_or_else(|| panic!("not alerted within 10 s:\n{}", agent.log_text()));
    let took = fired - stopped;
    eprintln!("heartbeat down alerted {took:?} after the target stopped (tick interval 30 s)");
    assert_eq!(healthz(&agent), 503, "the node drains with the alert");
}

/// A check that fails and a retry that passes is a lost check, counted but not an outage, up
/// to the last retry; one more failure is down.
#[test]
fn a_lost_check_is_not_an_outage() {
    let server = Server::start();
    let dir = TempDir::new("hb-lost");
    let agent = one_target(
        &dir,
        &format!("name: web, url: \"http://{}/health\"", server.addr),
    );
    wait_state(&agent, "web", 1.0, Duration::from_secs(3));
    let glitch = |modes: Vec<Mode>, reason: &str, before: f64| {
        let n = modes.len();
        server.glitch(modes);
        wait_for(Duration::from_secs(3), || {
            (failures(&agent.metrics(), "web", reason) > before).then_some(())
        })
        .unwrap_or_else(|| panic!("the glitch was never seen:\n{}", agent.metrics()));
        stays_up(
            &agent,
            "web",
            Duration::from_millis(1200),
            &format!("{n} × {reason}"),
        );
    };
    glitch(vec![Mode::Status(500)], "status", 0.0);
    glitch(vec![Mode::Hang], "timeout", 0.0);
    // The check and its first two retries fail, the third passes.
    glitch(vec![Mode::Status(503); 3], "status", 1.0);
    let text = agent.metrics();
    assert_eq!(failures(&text, "web", "status"), 2.0, "{text}");
    assert_eq!(failures(&text, "web", "timeout"), 1.0, "{text}");
    // The check and all three retries fail: down.
    server.glitch(vec![Mode::Status(500); 4]);
    down_at(&agent, "web", Duration::from_secs(3));
    wait_state(&agent, "web", 1.0, Duration::from_secs(3));
}

/// A service that restarts within 300 ms (its port refuses meanwhile) is not down, even when
/// the first check falls just after it stopped.
#[test]
fn a_restart_of_300_ms_is_not_an_outage() {
    let mut server = Server::start();
    let addr = server.addr;
    let dir = TempDir::new("hb-restart");
    let agent = one_target(&dir, &format!("name: sock, tcp: \"{addr}\""));
    wait_state(&agent, "sock", 1.0, Duration::from_secs(3));
    let mut tried = 0;
    loop {
        tried += 1;
        assert!(tried <= 5, "no check ever fell into the restart");
        let before = failures(&agent.metrics(), "sock", "refused");
        // Stop 20 ms before the next check is due, start again 300 ms later.
        let last = server.next_accept(Instant::now(), Duration::from_secs(3));
        thread::sleep(
            (last + Duration::from_millis(980)).saturating_duration_since(Instant::now()),
        );
        server.stop();
        let stopped = Instant::now();
        thread::sleep(Duration::from_millis(300));
        server = Server::start_on(addr);
        let outage = stopped.elapsed();
        stays_up(&agent, "sock", Duration::from_millis(1500), "restart");
        if failures(&agent.metrics(), "sock", "refused") > before {
            eprintln!(
                "restart with the port closed for {outage:?}: a check failed, the target stayed up"
            );
            break;
        }
    }
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
    // At least the delay, and under the check's 150 ms timeout (a loaded machine adds a few
    // ms of its own).
    assert!((0.1..0.150).contains(&latency), "latency {latency}");

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
        "hanging server reported down after {:?} (down_after 2: twice a 150 ms timeout and 3 retries, 200 ms interval)",
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
            "heartbeats:\n  - { name: a, url: \"ftp://x/\" }\n",
            2,
            "must be http(s)://",
        ),
        (
            "heartbeats:\n  - name: a\n    url: \"https://x/\"\n    http_config: { tls_config: { ca_file: /nonexistent/ca.pem } }\n",
            4,
            "ca_file /nonexistent/ca.pem: No such file",
        ),
        (
            "heartbeats:\n  - { name: a, tcp: \"x:1\", http_config: { follow_redirects: false } }\n",
            2,
            "apply to `url` checks only",
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
            "heartbeats:\n  - { name: a, tcp: \"x:1\", retries: 11 }\n",
            2,
            "at most 10",
        ),
        (
            "heartbeats:\n  - { name: a, push_ttl: 1s, retries: 2 }\n",
            2,
            "apply to `url` and `tcp` checks only",
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
