//! Notifications to real receivers, with the embedded default rules: a push heartbeat that goes
//! silent fires `NodewatchHeartbeatDown`; two Alertmanagers (Debian's package) see it fire and
//! resolve; a webhook receiver that checks Standard Webhooks signatures and the version-4
//! payload goes down (503, then refusing connections) and comes back, and every notification
//! arrives, none accepted twice; undelivered notifications survive `kill -9`.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use common::{Agent, TempDir, free_port, http_get, http_request, sample, wait_for};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The default rule the scenario fires: the push heartbeat `svc` goes silent.
const ALERT: &str = "NodewatchHeartbeatDown";

/// The embedded default rules (no rule file of the test's own), a push heartbeat `svc` with a
/// 1 s TTL, and `notifiers`.
fn config(dir: &TempDir, notifiers: &str) -> String {
    format!(
        "interval: 200ms\nspool_dir: {}\n\
         probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n  gpu_ioctl: {{ enabled: false }}\n  gpu_xid: {{ enabled: false }}\n\
         resources: {{ enabled: false }}\nheartbeats:\n  - {{ name: svc, push_ttl: 1s }}\nnotifiers:\n{notifiers}",
        dir.0.join("spool").display()
    )
}

fn beat(agent: &Agent) {
    let (status, _) = http_request(agent.addr, "POST", "/api/v1/heartbeat/svc", b"").unwrap();
    assert_eq!(status, 204);
}

/// Whether the default rule fires for `svc` (it keeps firing until `svc` has beaten for 10 s).
fn firing(agent: &Agent) -> bool {
    common::firing(agent, ALERT, &[("target", "svc")])
}

/// The service `svc` beating every 200 ms until dropped: the alert resolves once the rule's
/// `keep_firing_for` (10 s) has passed.
struct Beating {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Beating {
    fn start(agent: &Agent) -> Self {
        beat(agent);
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, addr) = (Arc::clone(&stop), agent.addr);
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                http_request(addr, "POST", "/api/v1/heartbeat/svc", b"");
                thread::sleep(Duration::from_millis(200));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Alertmanager {
    child: Child,
    addr: SocketAddr,
}

impl Alertmanager {
    fn start(dir: &TempDir, tag: &str) -> Self {
        let cfg = dir.write(
            &format!("am-{tag}.yml"),
            "route:\n  receiver: none\n  group_wait: 0s\nreceivers:\n  - name: none\n",
        );
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.path={}",
                dir.0.join(format!("am-{tag}")).display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join(format!("am-{tag}.log"))).unwrap())
            .spawn()
            .expect("prometheus-alertmanager (cargo xtask setup installs it)");
        let am = Self { child, addr };
        wait_for(Duration::from_secs(20), || {
            http_get(addr, "/-/ready").filter(|(s, _)| *s == 200)
        })
        .expect("alertmanager not ready");
        am
    }

    /// The active alerts named `name`, as Alertmanager's API lists them.
    fn alerts(&self, name: &str) -> Vec<serde_json::Value> {
        let (_, body) = http_get(self.addr, "/api/v2/alerts").expect("alertmanager API");
        let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        all.into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .collect()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn both_alertmanagers_see_the_alert_fire_and_resolve() {
    let dir = TempDir::new("notify-am");
    let (am1, am2) = (
        Alertmanager::start(&dir, "1"),
        Alertmanager::start(&dir, "2"),
    );
    let agent = Agent::start(
        &dir,
        &config(
            &dir,
            &format!(
                "  - {{ name: am, kind: alertmanager, urls: [\"http://{}\", \"http://{}\"], resend_interval: 1s }}\n",
                am1.addr, am2.addr
            ),
        ),
    );
    // No beat: the heartbeat expires after 1 s and the default rule fires.
    let started = Instant::now();
    for am in [&am1, &am2] {
        let got = wait_for(Duration::from_secs(10), || {
            let a = am.alerts(ALERT);
            (!a.is_empty()).then_some(a)
        })
        .unwrap_or_else(|| panic!("{} never got the alert:\n{}", am.addr, agent.log_text()));
        assert_eq!(got[0]["annotations"]["summary"], "Heartbeat svc is down");
        assert_eq!(got[0]["labels"]["target"], "svc");
        assert_eq!(got[0]["labels"]["severity"], "critical");
        // The default external label: the node's name, so two nodes' alerts stay two.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(got[0]["labels"]["node"], host.trim());
        assert_eq!(got[0]["status"]["state"], "active");
    }
    eprintln!(
        "start to firing in both Alertmanagers: {:?} (1 s TTL)",
        started.elapsed()
    );
    // Re-sent while firing.
    thread::sleep(Duration::from_millis(2500));
    let text = agent.metrics();
    for n in ["am/0", "am/1"] {
        let sent = sample(
            &text,
            &format!("nodewatch_notifications_total{{notifier=\"{n}\",result=\"sent\"}}"),
        );
        assert!(sent.is_some_and(|s| s >= 2.0), "{n} not re-sent: {text}");
    }
    // The service beats again: the alert resolves in both (after its 10 s keep_firing_for).
    let beating = Beating::start(&agent);
    for am in [&am1, &am2] {
        let gone = wait_for(Duration::from_secs(25), || {
            am.alerts(ALERT).is_empty().then_some(())
        });
        assert!(gone.is_some(), "{} still has the alert", am.addr);
    }
    drop(beating);
}

/// What the receiver does with the next request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Accept,
    Unavailable,
    BadRequest,
}

/// A webhook receiver that checks each request's Standard Webhooks signature and payload.
struct Receiver {
    addr: SocketAddr,
    key: Vec<u8>,
    mode: Arc<Mutex<Mode>>,
    /// Accepted notifications: (webhook-id, alert name, status).
    accepted: Arc<Mutex<Vec<(String, String, String)>>>,
    problems: Arc<Mutex<Vec<String>>>,
    listener: Option<(Arc<Mutex<bool>>, thread::JoinHandle<()>)>,
}

impl Receiver {
    fn new(key: &[u8]) -> Self {
        // Bound here and kept, so no other process can take the port in between.
        let first = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = first.local_addr().unwrap();
        let mut r = Self {
            addr,
            key: key.to_vec(),
            mode: Arc::new(Mutex::new(Mode::Accept)),
            accepted: Arc::default(),
            problems: Arc::default(),
            listener: None,
        };
        r.serve(first);
        r
    }

    /// Starts listening again on the same port.
    fn up(&mut self) {
        let l = TcpListener::bind(self.addr).expect("rebind the receiver's port");
        self.serve(l);
    }

    fn serve(&mut self, l: TcpListener) {
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(Mutex::new(false));
        let (stop2, mode, accepted, problems, key) = (
            Arc::clone(&stop),
            Arc::clone(&self.mode),
            Arc::clone(&self.accepted),
            Arc::clone(&self.problems),
            self.key.clone(),
        );
        let h = thread::spawn(move || {
            while !*stop2.lock().unwrap() {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        handle(s, *mode.lock().unwrap(), &key, &accepted, &problems);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        self.listener = Some((stop, h));
    }

    /// Stops listening: connections are refused.
    fn down(&mut self) {
        if let Some((stop, h)) = self.listener.take() {
            *stop.lock().unwrap() = true;
            h.join().unwrap();
        }
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn accepted(&self) -> Vec<(String, String, String)> {
        self.accepted.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

fn handle(
    mut s: TcpStream,
    mode: Mode,
    key: &[u8],
    accepted: &Mutex<Vec<(String, String, String)>>,
    problems: &Mutex<Vec<String>>,
) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then_some(v)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < i + 4 + len {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            break (head, buf[i + 4..].to_vec());
        }
    };
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let mut reply = |code: &str| {
        let _ = write!(
            s,
            "HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    match mode {
        Mode::Unavailable => return reply("503 Service Unavailable"),
        Mode::BadRequest => return reply("400 Bad Request"),
        Mode::Accept => {}
    }
    let (id, ts, sig) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&body);
    let want = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut p = problems.lock().unwrap();
    if sig != want {
        p.push(format!("bad signature for {id}: {sig} != {want}"));
    }
    if payload["version"] != "4"
        || payload["receiver"] != "ops"
        || !payload["alerts"][0]["labels"]["alertname"].is_string()
        || !payload["alerts"][0]["labels"]["node"].is_string()
    {
        p.push(format!("unexpected payload: {payload}"));
    }
    drop(p);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    accepted.lock().unwrap().push((
        id,
        text(&payload["alerts"][0]["labels"]["alertname"]),
        text(&payload["status"]),
    ));
    reply("200 OK");
}

/// The statuses of the scenario's alert as accepted, in order (the other default rules' alerts,
/// if any fire, are not the scenario's).
fn statuses(r: &Receiver) -> Vec<String> {
    r.accepted()
        .into_iter()
        .filter(|(_, name, _)| name == ALERT)
        .map(|(_, _, s)| s)
        .collect()
}

#[test]
fn webhook_notifications_survive_outages_and_kill_9() {
    let dir = TempDir::new("notify-hook");
    let secret = b"a-secret-that-is-long-enough";
    let key_file = dir.write("hook.key", std::str::from_utf8(secret).unwrap());
    let mut receiver = Receiver::new(secret);
    let cfg = config(
        &dir,
        &format!(
            "  - {{ name: ops, kind: webhook, url: \"http://{}/hook\", secret_file: {}, timeout: 1s }}\n",
            receiver.addr,
            key_file.display()
        ),
    );
    let agent = Agent::start(&dir, &cfg);
    // 1. Fires (no beat within the TTL) and is delivered.
    wait_for(Duration::from_secs(10), || {
        (statuses(&receiver) == ["firing"]).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", receiver.accepted(), agent.log_text()));

    // 2. The receiver answers 503 while the alert resolves, then refuses connections while it
    //    fires again: nothing is delivered, everything is kept.
    receiver.set(Mode::Unavailable);
    let beating = Beating::start(&agent);
    wait_for(Duration::from_secs(20), || (!firing(&agent)).then_some(()))
        .unwrap_or_else(|| panic!("never resolved:\n{}", agent.log_text()));
    thread::sleep(Duration::from_millis(1500));
    receiver.down();
    drop(beating);
    wait_for(Duration::from_secs(10), || firing(&agent).then_some(())).expect("fires again");
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(statuses(&receiver), ["firing"]);
    let text = agent.metrics();
    assert!(
        sample(
            &text,
            "nodewatch_notifications_total{notifier=\"ops\",result=\"retried\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "nodewatch_notification_queue_length{notifier=\"ops\"}"
        ),
        Some(2.0),
        "{text}"
    );

    // 3. Back: both arrive, in order.
    receiver.set(Mode::Accept);
    receiver.up();
    wait_for(Duration::from_secs(40), || {
        (statuses(&receiver) == ["firing", "resolved", "firing"]).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", receiver.accepted(), agent.log_text()));

    // 4. Receiver down, the alert resolves, the agent is killed before it could deliver.
    receiver.down();
    let beating = Beating::start(&agent);
    wait_for(Duration::from_secs(25), || {
        sample(
            &agent.metrics(),
            "nodewatch_notification_queue_length{notifier=\"ops\"}",
        )
        .filter(|n| *n >= 1.0)
    })
    .expect("the resolution is queued");
    drop(beating);
    drop(agent); // SIGKILL
    receiver.up();
    let agent = Agent::start(&dir, &cfg);
    beat(&agent);
    wait_for(Duration::from_secs(20), || {
        (statuses(&receiver).first_chunk::<4>()
            == Some(&[
                "firing".to_string(),
                "resolved".to_string(),
                "firing".to_string(),
                "resolved".to_string(),
            ]))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "spooled notification lost: {:?}\n{}",
            receiver.accepted(),
            agent.log_text()
        )
    });

    // Never the same notification accepted twice, and every signature checked out.
    let ids: Vec<String> = receiver
        .accepted()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "an id was accepted twice: {ids:?}");
    let problems = receiver.problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");

    // 5. A 4xx is not retried: logged with the answer and counted as failed.
    receiver.set(Mode::BadRequest);
    thread::sleep(Duration::from_millis(1500)); // no beat: fires again
    wait_for(Duration::from_secs(10), || {
        sample(
            &agent.metrics(),
            "nodewatch_notifications_total{notifier=\"ops\",result=\"failed\"}",
        )
        .filter(|n| *n >= 1.0)
    })
    .unwrap_or_else(|| panic!("{}", agent.log_text()));
    assert!(
        agent
            .log_text()
            .contains("receiver refused the notification")
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in statuses(&receiver) {
        *counts.entry(s).or_default() += 1;
    }
    eprintln!("accepted by status: {counts:?}; ids unique: {}", ids.len());
}
