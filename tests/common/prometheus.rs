//! A real Prometheus server started for a test, with its own config and storage, and its
//! HTTP query API.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{TempDir, free_port, http_get, wait_for};

/// A running `prometheus`, stopped when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus with `config` (prometheus.yml text) in `dir` and waits until it is
    /// ready.
    pub fn start(dir: &TempDir, config: &str) -> Self {
        let file = dir.write("prometheus.yml", config);
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.0.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus (cargo xtask setup installs Debian's package)");
        let p = Self { child, addr, log };
        wait_for(Duration::from_secs(20), || {
            http_get(addr, "/-/ready").filter(|(s, _)| *s == 200)
        })
        .unwrap_or_else(|| panic!("prometheus not ready:\n{}", p.log_text()));
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The targets API's answer.
    pub fn targets(&self) -> serde_json::Value {
        let (_, body) = http_get(self.addr, "/api/v1/targets").expect("targets API");
        serde_json::from_str(&body).expect("targets JSON")
    }

    /// Waits (up to `timeout`) until every active target has been scraped successfully;
    /// panics with the targets' last errors otherwise.
    pub fn wait_up(&self, timeout: Duration) {
        wait_for(timeout, || {
            let t = self.targets();
            let active = t["data"]["activeTargets"].as_array()?.clone();
            (!active.is_empty() && active.iter().all(|a| a["health"] == "up")).then_some(())
        })
        .unwrap_or_else(|| panic!("prometheus never scraped: {}", self.targets()));
    }

    /// The result vector of an instant query.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", urlencode(expr)),
        )
        .expect("query API");
        assert_eq!(status, 200, "{expr}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Percent-encoding of a query parameter.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `promtool check metrics` on `text`: whether it passed with nothing to say, and what it said.
pub fn check_metrics(text: &str) -> (bool, String) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs Debian's prometheus)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && complaints.trim().is_empty(),
        complaints,
    )
}
