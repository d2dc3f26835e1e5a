//! Helpers for tests that run the real `nodewatch` binary against the real kernel.
#![allow(dead_code)]

pub mod containers;
pub mod fuse;
pub mod haproxy;
pub mod health_server;
pub mod infiniband;
pub mod listeners;
pub mod metrics_server;
pub mod nvml;
pub mod prometheus;
pub mod receiver;
pub mod scoreboard;
pub mod tls;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_nodewatch");

/// True when this test may touch the kernel. On CI (`CI=true`) a test that needs root and
/// does not have it fails instead of skipping.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{test} needs root and CI is set: run `cargo xtask test` as root"
    );
    eprintln!("SKIPPED {test}: needs root (run `cargo xtask test` as root)");
    false
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A loopback listener whose connections use 1000-byte segments in both directions (its
/// SYN-ACK advertises that MSS), so one skb carries many segments, as on a real NIC with TSO.
pub fn mss_listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mss: libc::c_int = 1000;
    // SAFETY: setting an int option on a valid socket.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&l),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&raw const mss).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_MAXSEG: {}", std::io::Error::last_os_error());
    l
}

/// A scratch folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("nodewatch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Spawns `nodewatch run --config <config> --listen <a free loopback port> <extra>` in `dir`
/// (through `wrapper` when given), its log in `dir/log_name`: the child, its address, the log.
pub fn spawn_agent(
    dir: &TempDir,
    config: &str,
    wrapper: &[&str],
    extra: &[&std::ffi::OsStr],
    rust_log: &str,
    log_name: &str,
) -> (Child, SocketAddr, PathBuf) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.write("config.yaml", config);
    let log = dir.0.join(log_name);
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let child = cmd
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--listen", &addr.to_string()])
        .args(extra)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create log"))
        .spawn()
        .expect("spawn nodewatch");
    (child, addr, log)
}

/// A running agent, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `nodewatch run --config <config>` listening on a free loopback port and waits
    /// until `/metrics` answers.
    pub fn start(dir: &TempDir, config: &str) -> Self {
        Self::start_wrapped(dir, config, &[])
    }

    /// As [`Agent::start`], run through `wrapper` (e.g. `setpriv` with fewer capabilities).
    pub fn start_wrapped(dir: &TempDir, config: &str, wrapper: &[&str]) -> Self {
        Self::start_full(dir, config, wrapper, "info", "agent.log")
    }

    /// As [`Agent::start`], with `RUST_LOG=rust_log` and the log in `dir/log_name`.
    pub fn start_logged(dir: &TempDir, config: &str, rust_log: &str, log_name: &str) -> Self {
        Self::start_full(dir, config, &[], rust_log, log_name)
    }

    fn start_full(
        dir: &TempDir,
        config: &str,
        wrapper: &[&str],
        rust_log: &str,
        log_name: &str,
    ) -> Self {
        let (child, addr, log) = spawn_agent(dir, config, wrapper, &[], rust_log, log_name);
        let mut agent = Self { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(addr, "/metrics").is_none() {
            if let Some(status) = agent.child.try_wait().expect("wait") {
                panic!("nodewatch exited early ({status}):\n{}", agent.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "nodewatch did not answer in 30 s:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics").expect("scrape /metrics").1
    }

    /// The value of one sample, e.g. `nodewatch_tcp_retransmits_total{port="8000"}`.
    pub fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.metrics(), series)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(mut self) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "nodewatch ignored SIGTERM for 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tool the test needs, found on `PATH`; on CI its absence is a failure, elsewhere a skip.
pub fn have_tool(test: &str, tool: &str) -> bool {
    have_tool_by(test, tool, &format!("command -v {tool}"))
}

/// As [`have_tool`], for a tool that the shell command `check` finds (exit status 0) rather
/// than a program on `PATH`, e.g. a Python module ([`fuse::FUSEPY_CHECK`]).
pub fn have_tool_by(test: &str, tool: &str, check: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", check])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{test} needs `{tool}` (cargo xtask setup installs it)"
        );
        eprintln!("SKIPPED {test}: `{tool}` not installed (cargo xtask setup installs it)");
    }
    found
}

/// The value of `series` (name with its exact label set) in Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A minimal HTTP/1.1 GET: status and body, or None when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// The payload of a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n..)?.strip_prefix("\r\n")?;
    }
}

/// Runs `nft -f -` with `script`, panicking with nft's message on failure.
pub fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft (apt install nftables; cargo xtask setup does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An nft table of the test's own, deleted on drop.
pub struct NftTable(pub String);

impl NftTable {
    pub fn create(name: &str, body: &str) -> Self {
        let table = format!("{name}_{}", std::process::id());
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &table])
            .stderr(Stdio::null())
            .status();
        nft(&format!("table inet {table} {{\n{body}\n}}\n"));
        Self(table)
    }

    /// The packets counted so far by the table's named counter `name` (a `counter <name> {}`
    /// object that a rule feeds with `counter name "<name>"`).
    pub fn counter(&self, name: &str) -> u64 {
        let out = Command::new("nft")
            .args(["list", "counter", "inet", &self.0, name])
            .output()
            .expect("run nft");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "nft list counter {name}: {text}");
        let mut words = text.split_whitespace();
        words
            .find(|w| *w == "packets")
            .and_then(|_| words.next()?.parse().ok())
            .unwrap_or_else(|| panic!("no packet count for counter {name}: {text}"))
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}

/// A network namespace of the test's own, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// `ip netns add` a namespace named after `tag` and this process, with loopback up.
    pub fn create(tag: &str) -> Self {
        let name = format!("nw_{tag}_{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread that has entered the namespace: the sockets it opens, and the
    /// processes it spawns (the agent, nft, ss), live there. A panic in `f` is re-raised.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            let joined = s
                .spawn(|| {
                    let ns = std::fs::File::open(&path).expect("open the netns");
                    // SAFETY: a valid namespace fd; only this thread changes namespace.
                    let rc = unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                    };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join();
            joined.unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// A `TcpExt:` counter of the calling thread's network namespace. (`/proc/net` follows the
/// process's main thread; `/proc/thread-self/net` follows this one.)
pub fn netstat(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").expect("read netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (head, vals) = (lines.next().unwrap(), lines.next().unwrap());
    let i = head
        .split_whitespace()
        .position(|h| h == field)
        .unwrap_or_else(|| panic!("no TcpExt {field}"));
    vals.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// A `Tcp:` counter (`/proc/net/snmp`) of the calling thread's network namespace.
pub fn snmp_tcp(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (head, vals) = (lines.next().unwrap(), lines.next().unwrap());
    let i = head
        .split_whitespace()
        .position(|h| h == field)
        .unwrap_or_else(|| panic!("no Tcp {field}"));
    vals.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Polls `f` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 request with a body: status and response body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .ok()?;
    // A server may answer (413) before reading everything: a failed write is not fatal.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let buf = String::from_utf8_lossy(&buf).into_owned();
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|b| b.1.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Whether the agent's `/api/v1/alerts` shows `name` firing, with `labels` among its labels.
pub fn firing(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> bool {
    let Some((200, body)) = http_get(agent.addr, "/api/v1/alerts") else {
        return false;
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["alerts"].as_array().unwrap().iter().any(|a| {
        a["state"] == "firing"
            && a["labels"]["alertname"] == name
            && labels.iter().all(|(k, want)| a["labels"][*k] == *want)
    })
}

/// The status code of the agent's `/healthz` (0 when nothing answers).
pub fn healthz(agent: &Agent) -> u16 {
    http_get(agent.addr, "/healthz").map_or(0, |(s, _)| s)
}

/// A proc root with the real /proc's files but a `loadavg` of the test's own, so the
/// resources collector's `nodewatch_load1` shows whether the tick still runs.
pub fn proc_with_own_loadavg(dir: &TempDir) -> (PathBuf, std::fs::File) {
    let root = dir.0.join("proc");
    std::fs::create_dir_all(&root).unwrap();
    for e in std::fs::read_dir("/proc").unwrap() {
        let name = e.unwrap().file_name();
        let s = name.to_string_lossy();
        if s == "loadavg" || s.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        std::os::unix::fs::symlink(std::path::Path::new("/proc").join(&name), root.join(&name))
            .unwrap();
    }
    let path = root.join("loadavg");
    std::fs::write(&path, loadavg(0)).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    (root, f)
}

/// A loadavg line of fixed width whose load1 is `n`/100 (rewritten in place, one write).
pub fn loadavg(n: u32) -> String {
    format!("{}.{:02} 0.40 0.30 1/123 4567\n", n / 100 % 10, n % 100)
}
