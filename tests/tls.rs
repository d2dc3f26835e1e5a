//! TLS and authentication as the Prometheus ecosystem speaks them, against real peers with a
//! private CA made at test time: nodewatch behind its own web config is scraped by a real
//! Prometheus over TLS with basic auth and reached by `nodewatch status`; an HTTPS heartbeat
//! target with a private CA is up; an HTTPS webhook that requires a client certificate gets
//! signed notifications directly and through tinyproxy (HTTP CONNECT); Alertmanager 0.25 with
//! its own web config (TLS, basic auth) receives alerts, and a notifier with the wrong CA or
//! the wrong password keeps its notification queued until a restart with the fixed file.

mod common;

use std::{process::Command, time::Duration};

use common::{
    Agent, BIN, TempDir, have_tool, http_get,
    prometheus::Prometheus,
    sample,
    tls::{HttpsServer, Pki, Proc, Tinyproxy, TlsAgent, curl},
    wait_for,
};

/// The agent, quiet: only what a scenario adds.
const QUIET: &str = "interval: 200ms\nprobes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\n  gpu_ioctl: { enabled: false }\n  gpu_xid: { enabled: false }\nresources: { enabled: false }\n";

fn bcrypt(password: &str) -> String {
    // Cost 4: the lowest; the hash format is what matters here.
    bcrypt::hash(password, 4).unwrap()
}

#[test]
fn prometheus_scrapes_nodewatch_over_tls_with_basic_auth() {
    if !have_tool("tls scrape", "prometheus")
        || !have_tool("tls scrape", "openssl")
        || !have_tool("tls scrape", "curl")
    {
        return;
    }
    let dir = TempDir::new("tls-scrape");
    let pki = Pki::new(&dir, "agent");
    let (cert, key) = pki.issue("agent");
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  prometheus: {}\n",
            cert.display(),
            key.display(),
            bcrypt("scrape-pw")
        ),
    );
    let agent = TlsAgent::start(&dir, QUIET, &web, &pki.ca);

    // Without credentials: /metrics and the API answer 401, /healthz answers.
    let (status, _) = curl(&agent.url("/metrics"), &pki.ca, None).expect("curl /metrics");
    assert_eq!(status, 401);
    let (status, _) = curl(&agent.url("/api/v1/status"), &pki.ca, None).expect("curl status");
    assert_eq!(status, 401);
    let (status, _) =
        curl(&agent.url("/metrics"), &pki.ca, Some("prometheus:wrong")).expect("curl /metrics");
    assert_eq!(status, 401);
    let (status, body) = curl(&agent.url("/healthz"), &pki.ca, None).expect("curl /healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(
        &agent.url("/metrics"),
        &pki.ca,
        Some("prometheus:scrape-pw"),
    )
    .expect("curl");
    assert_eq!(status, 200);
    assert!(body.contains("nodewatch_build_info"), "{body}");
    // Plain HTTP on the TLS port gets nothing.
    assert!(http_get(agent.addr, "/healthz").is_none_or(|(s, _)| s != 200));

    // A real Prometheus, configured as its docs say, scrapes it.
    let prom_dir = TempDir::new("tls-scrape-prom");
    let prom = Prometheus::start(
        &prom_dir,
        &format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\nscrape_configs:\n  - job_name: nodewatch\n    scheme: https\n    tls_config: {{ ca_file: {} }}\n    basic_auth: {{ username: prometheus, password: scrape-pw }}\n    static_configs: [{{ targets: [\"{}\"] }}]\n",
            pki.ca.display(),
            agent.addr
        ),
    );
    prom.wait_up(Duration::from_secs(30));
    let up = prom.query("up{job=\"nodewatch\"}");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["value"][1], "1", "{up:?}");

    // `nodewatch status` reaches it with --addr https:// and --http.config.file.
    let cli = dir.write(
        "cli.yml",
        &format!(
            "basic_auth: {{ username: prometheus, password: scrape-pw }}\ntls_config: {{ ca_file: {} }}\n",
            pki.ca.display()
        ),
    );
    let out = Command::new(BIN)
        .args(["status", "--addr", &agent.url("")])
        .arg("--http.config.file")
        .arg(&cli)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("node: healthy"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without credentials the agent says 401; without the CA, the TLS failure is named.
    let out = Command::new(BIN)
        .args(["status", "--addr", &agent.url("")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("unknown certificate authority"), "{stderr}");
    let nocreds = dir.write(
        "nocreds.yml",
        &format!("tls_config: {{ ca_file: {} }}\n", pki.ca.display()),
    );
    let out = Command::new(BIN)
        .args(["status", "--addr", &agent.url("")])
        .arg("--http.config.file")
        .arg(&nocreds)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
}

#[test]
fn an_https_heartbeat_target_with_a_private_ca_is_up() {
    if !have_tool("tls heartbeat", "openssl") {
        return;
    }
    let dir = TempDir::new("tls-heartbeat");
    let pki = Pki::new(&dir, "svc");
    let (cert, key) = pki.issue("svc");
    let server = HttpsServer::start(&dir, "svc", &cert, &key, None);
    let url = format!("https://localhost:{}/health", server.addr.port());
    let agent = Agent::start(
        &dir,
        &format!(
            "{QUIET}heartbeats:\n  - name: private\n    url: \"{url}\"\n    http_config: {{ tls_config: {{ ca_file: {} }} }}\n  - name: untrusted\n    url: \"{url}\"\n",
            pki.ca.display()
        ),
    );
    let text = wait_for(Duration::from_secs(10), || {
        let t = agent.metrics();
        (sample(&t, "nodewatch_heartbeat_up{target=\"private\"}") == Some(1.0)
            && sample(
                &t,
                "nodewatch_heartbeat_failures_total{target=\"untrusted\",reason=\"tls\"}",
            )
            .is_some_and(|n| n >= 1.0))
        .then_some(t)
    })
    .unwrap_or_else(|| panic!("{}\n{}", agent.metrics(), agent.log_text()));
    assert_eq!(
        sample(&text, "nodewatch_heartbeat_up{target=\"untrusted\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        server.requests().iter().any(|r| r["path"] == "/health"),
        "the server saw the checks"
    );
}

/// The default rule that fires in these scenarios: the push heartbeat `svc` never beats.
const ALERT: &str = "NodewatchHeartbeatDown";

/// The quiet agent with the embedded default rules, a push heartbeat that never beats (so
/// [`ALERT`] fires) and `notifiers`.
fn notifying(dir: &TempDir, notifiers: &str) -> String {
    format!(
        "{QUIET}spool_dir: {}\nheartbeats:\n  - {{ name: svc, push_ttl: 1s }}\nnotifiers:\n{notifiers}",
        dir.0.join("spool").display()
    )
}

/// The alert name a recorded webhook request carries.
fn alertname(r: &serde_json::Value) -> String {
    let body: serde_json::Value =
        serde_json::from_str(r["body"].as_str().unwrap_or_default()).unwrap_or_default();
    body["alerts"][0]["labels"]["alertname"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The Standard Webhooks signature of a recorded request, checked with `key`.
fn signed(r: &serde_json::Value, key: &[u8]) -> bool {
    use base64::Engine as _;
    use hmac::Mac as _;
    let h = &r["headers"];
    let (Some(id), Some(ts), Some(sig)) = (
        h["webhook-id"].as_str(),
        h["webhook-timestamp"].as_str(),
        h["webhook-signature"].as_str(),
    ) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.{}", r["body"].as_str().unwrap_or_default()).as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    sig == format!("v1,{want}")
}

#[test]
fn an_https_webhook_requiring_a_client_certificate_gets_signed_notifications_directly_and_through_a_proxy()
 {
    if !have_tool("tls webhook", "openssl") || !have_tool("tls webhook", "tinyproxy") {
        return;
    }
    let dir = TempDir::new("tls-webhook");
    let pki = Pki::new(&dir, "hooks");
    let (server_cert, server_key) = pki.issue("receiver");
    let (client_cert, client_key) = pki.issue("nodewatch-client");
    let server = HttpsServer::start(&dir, "hook", &server_cert, &server_key, Some(&pki.ca));
    let proxy = Tinyproxy::start(&dir);
    let secret = "a-secret-that-is-long-enough";
    let key_file = dir.write("hook.key", secret);
    let url = format!("https://127.0.0.1:{}/hook", server.addr.port());
    let tls = format!(
        "tls_config: {{ ca_file: {}, cert_file: {}, key_file: {} }}",
        pki.ca.display(),
        client_cert.display(),
        client_key.display()
    );
    let agent = Agent::start(
        &dir,
        &notifying(
            &dir,
            &format!(
                "  - {{ name: direct, kind: webhook, url: \"{url}?via=direct\", secret_file: {k}, http_config: {{ {tls} }} }}\n\
                 \x20 - {{ name: proxied, kind: webhook, url: \"{url}?via=proxy\", secret_file: {k}, http_config: {{ {tls}, proxy_url: \"http://{p}\" }} }}\n\
                 \x20 - {{ name: nocert, kind: webhook, url: \"{url}?via=nocert\", secret_file: {k}, timeout: 1s, http_config: {{ tls_config: {{ ca_file: {ca} }} }} }}\n",
                k = key_file.display(),
                p = proxy.addr,
                ca = pki.ca.display(),
            ),
        ),
    );
    let via = |v: &str| -> Vec<serde_json::Value> {
        server
            .requests()
            .into_iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("via={v}")))
            })
            .collect()
    };
    let has_alert = |v: &str| via(v).iter().any(|r| alertname(r) == ALERT);
    wait_for(Duration::from_secs(15), || {
        (has_alert("direct") && has_alert("proxy")).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", server.requests(), agent.log_text()));
    for r in via("direct").iter().chain(via("proxy").iter()) {
        assert_eq!(r["client_cn"], "nodewatch-client", "{r}");
        assert!(signed(r, secret.as_bytes()), "bad signature: {r}");
        let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["version"], "4");
    }
    let port = server.addr.port();
    assert!(
        proxy
            .log_text()
            .contains(&format!("CONNECT 127.0.0.1:{port}")),
        "tinyproxy saw no CONNECT:\n{}",
        proxy.log_text()
    );
    // Without a client certificate the handshake fails: counted, logged, kept.
    assert!(via("nocert").is_empty());
    let text = wait_for(Duration::from_secs(10), || {
        let t = agent.metrics();
        sample(
            &t,
            "nodewatch_notifications_total{notifier=\"nocert\",result=\"tls_error\"}",
        )
        .filter(|n| *n >= 1.0)
        .map(|_| t)
    })
    .unwrap_or_else(|| panic!("{}\n{}", agent.metrics(), agent.log_text()));
    assert_eq!(
        sample(
            &text,
            "nodewatch_notification_queue_length{notifier=\"nocert\"}"
        ),
        Some(1.0),
        "{text}"
    );
    let log = agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("notifier=nocert") && l.contains("client certificate")),
        "{log}"
    );
}

/// Alertmanager 0.25 with a web config of its own (TLS and basic auth).
struct SecureAlertmanager {
    _proc: Proc,
    addr: std::net::SocketAddr,
    ca: std::path::PathBuf,
}

impl SecureAlertmanager {
    fn start(dir: &TempDir, pki: &Pki, password: &str) -> Self {
        let (cert, key) = pki.issue("alertmanager");
        let web = dir.write(
            "am-web.yml",
            &format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  nodewatch: {}\n",
                cert.display(),
                key.display(),
                bcrypt(password)
            ),
        );
        let cfg = dir.write(
            "am.yml",
            "route:\n  receiver: none\n  group_wait: 0s\nreceivers:\n  - name: none\n",
        );
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--web.config.file={}", web.display()))
            .arg(format!("--storage.path={}", dir.0.join("am").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("am.log")).unwrap())
            .spawn()
            .expect("prometheus-alertmanager (cargo xtask setup installs it)");
        let am = Self {
            _proc: Proc(child),
            addr,
            ca: pki.ca.clone(),
        };
        wait_for(Duration::from_secs(20), || {
            curl(
                &format!("https://{addr}/-/ready"),
                &am.ca,
                Some(&format!("nodewatch:{password}")),
            )
            .filter(|(s, _)| *s == 200)
        })
        .expect("alertmanager not ready over TLS");
        am
    }

    fn alerts(&self, password: &str, name: &str) -> Vec<serde_json::Value> {
        let (_, body) = curl(
            &format!("https://{}/api/v2/alerts", self.addr),
            &self.ca,
            Some(&format!("nodewatch:{password}")),
        )
        .expect("alertmanager API");
        let all: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        all.into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .collect()
    }
}

#[test]
fn alertmanager_behind_tls_and_basic_auth_gets_alerts_once_a_wrong_ca_or_password_is_fixed() {
    if !have_tool("tls alertmanager", "prometheus-alertmanager")
        || !have_tool("tls alertmanager", "openssl")
    {
        return;
    }
    let dir = TempDir::new("tls-am");
    let pki = Pki::new(&dir, "am");
    let other = Pki::new(&dir, "other");
    let am = SecureAlertmanager::start(&dir, &pki, "am-pw");
    let password = dir.write("am.password", "am-pw\n");
    let wrong = dir.write("wrong.password", "not-it\n");
    let config = |ca: &std::path::Path, pw: &std::path::Path| {
        notifying(
            &dir,
            &format!(
                "  - name: am\n    kind: alertmanager\n    url: \"https://{}\"\n    timeout: 1s\n    http_config:\n      basic_auth: {{ username: nodewatch, password_file: {} }}\n      tls_config: {{ ca_file: {} }}\n",
                am.addr,
                pw.display(),
                ca.display()
            ),
        )
    };
    let queued = |agent: &Agent, result: &str| {
        wait_for(Duration::from_secs(15), || {
            let t = agent.metrics();
            (sample(
                &t,
                &format!("nodewatch_notifications_total{{notifier=\"am\",result=\"{result}\"}}"),
            )
            .is_some_and(|n| n >= 1.0)
                && sample(&t, "nodewatch_notification_queue_length{notifier=\"am\"}")
                    .is_some_and(|n| n >= 1.0))
            .then_some(())
        })
        .unwrap_or_else(|| panic!("no {result}:\n{}\n{}", agent.metrics(), agent.log_text()));
    };

    // 1. The wrong CA: the handshake fails, named; the notification stays queued.
    let agent = Agent::start(&dir, &config(&other.ca, &password));
    queued(&agent, "tls_error");
    assert!(
        agent.log_text().contains("unknown certificate authority"),
        "{}",
        agent.log_text()
    );
    assert!(am.alerts("am-pw", ALERT).is_empty());
    assert!(agent.stop().success());

    // 2. Restarted with the right CA and the wrong password: 401, still queued.
    let agent = Agent::start(&dir, &config(&pki.ca, &wrong));
    queued(&agent, "auth_error");
    assert!(
        agent.log_text().contains("HTTP 401"),
        "{}",
        agent.log_text()
    );
    assert!(am.alerts("am-pw", ALERT).is_empty());
    assert!(agent.stop().success());

    // 3. Fixed: Alertmanager has the alert.
    let agent = Agent::start(&dir, &config(&pki.ca, &password));
    let got = wait_for(Duration::from_secs(15), || {
        let a = am.alerts("am-pw", ALERT);
        (!a.is_empty()).then_some(a)
    })
    .unwrap_or_else(|| panic!("alertmanager got nothing:\n{}", agent.log_text()));
    assert_eq!(got[0]["labels"]["severity"], "critical", "{got:?}");
    assert_eq!(got[0]["labels"]["target"], "svc", "{got:?}");
    let text = agent.metrics();
    assert!(
        sample(
            &text,
            "nodewatch_notifications_total{notifier=\"am\",result=\"sent\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// `CapabilityBoundingSet=` of the packaged unit, as setpriv arguments (`-all,+bpf,...`).
fn unit_capabilities() -> String {
    let unit = include_str!("../packaging/nodewatch.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

/// Replaces `to` with `from`'s content at once (write beside, then rename), mode 0600.
fn install(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// Under exactly the unit's capability set (no CAP_DAC_OVERRIDE, and none at all once the
/// probes are attached) the agent reads its root-owned 0600 key, and a rotated certificate
/// is served without a restart.
#[test]
fn under_the_units_capabilities_a_rotated_server_certificate_is_served() {
    if !common::have_root("tls rotation")
        || !have_tool("tls rotation", "openssl")
        || !have_tool("tls rotation", "setpriv")
    {
        return;
    }
    let dir = TempDir::new("tls-rotate");
    let first = Pki::new(&dir, "first");
    let second = Pki::new(&dir, "second");
    let (c1, k1) = first.issue("agent-one");
    let (c2, k2) = second.issue("agent-two");
    let (cert, key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    install(&c1, &cert);
    install(&k1, &key);
    let web = dir.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        ),
    );
    let caps = unit_capabilities();
    let agent = TlsAgent::start_wrapped(
        &dir,
        QUIET,
        &web,
        &first.ca,
        &[
            "setpriv",
            "--bounding-set",
            &caps,
            "--no-new-privs",
            "--inh-caps=-all",
        ],
    );
    wait_for(Duration::from_secs(10), || {
        agent
            .log_text()
            .contains("dropped every capability")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{}", agent.log_text()));
    assert!(curl(&agent.url("/healthz"), &second.ca, None).is_none());

    install(&k2, &key);
    install(&c2, &cert);
    wait_for(Duration::from_secs(10), || {
        curl(&agent.url("/healthz"), &second.ca, None).filter(|(s, _)| *s == 200)
    })
    .unwrap_or_else(|| {
        panic!(
            "the rotated certificate is not served:\n{}",
            agent.log_text()
        )
    });
    assert!(curl(&agent.url("/healthz"), &first.ca, None).is_none());
    assert!(
        agent.log_text().contains("TLS certificate reloaded"),
        "{}",
        agent.log_text()
    );
}
