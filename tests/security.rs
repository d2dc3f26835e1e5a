//! Least privilege and secrets: a config or rule file any user may write is refused at start
//! (exit 1, a clear message), and neither the webhook secret nor the drain token ever reaches
//! the logs, even at trace level.

mod common;

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use common::{
    Agent, TempDir,
    receiver::{Answer, Receiver},
    wait_for,
};

/// Everything that needs the kernel off: these tests are about files and logs.
const QUIET: &str = "probes:
  tcp_retransmits: { enabled: false }
  accept_queue: { enabled: false }
  gpu_ioctl: { enabled: false }
  gpu_xid: { enabled: false }
resources: { enabled: false }
interval: 200ms
";

fn chmod(path: &std::path::Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn nodewatch(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(common::BIN)
        .args(args)
        .output()
        .expect("run nodewatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A POST with an `Authorization` header; the raw answer.
fn post_with_token(addr: std::net::SocketAddr, path: &str, auth: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

#[test]
fn world_writable_config_or_rule_file_is_refused() {
    let dir = TempDir::new("security-perms");
    let spool = dir.0.join("spool");
    let cfg = dir.write(
        "config.yaml",
        &format!(
            "{QUIET}spool_dir: {}\nrule_files: [local.yaml]\n",
            spool.display()
        ),
    );
    let rules = dir.write(
        "local.yaml",
        "groups:\n  - name: local\n    rules:\n      - alert: X\n        expr: absent(nodewatch_no_such_metric)\n",
    );
    chmod(&cfg, 0o644);
    chmod(&rules, 0o644);
    let (code, err) = nodewatch(&["check-config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, 0, "{err}");

    chmod(&cfg, 0o666);
    for cmd in ["run", "check-config"] {
        let args: Vec<&std::ffi::OsStr> = if cmd == "run" {
            vec!["run".as_ref(), "--config".as_ref(), cfg.as_os_str()]
        } else {
            vec!["check-config".as_ref(), cfg.as_os_str()]
        };
        let (code, err) = nodewatch(&args);
        assert_eq!(code, 1, "{cmd}: {err}");
        assert!(
            err.contains(&format!(
                "{}: writable by every user (mode 0666)",
                cfg.display()
            )) && err.contains("chmod o-w"),
            "{cmd}: {err}"
        );
    }

    chmod(&cfg, 0o640);
    chmod(&rules, 0o602);
    let (code, err) = nodewatch(&["run".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: writable by every user (mode 0602)",
            rules.display()
        )),
        "{err}"
    );
}

/// A webhook with a signing secret, a drain token, an alert that fires at once, drain and
/// undrain with the token, a receiver that refuses a notification (its answer is logged), and
/// a SIGHUP: the log at trace level holds neither secret.
#[test]
fn secrets_never_reach_the_logs() {
    const HOOK_SECRET: &str = "hook-SECRET-7f3a9c1e";
    const TOKEN: &str = "token-SECRET-51d0b2";
    const PASSWORD: &str = "basic-SECRET-9e2c44";
    let dir = TempDir::new("security-secrets");
    let receiver = Receiver::start(Answer::Status(200));
    let secret = dir.write("hook.key", &format!("{HOOK_SECRET}\n"));
    let token = dir.write("token", &format!("{TOKEN}\n"));
    chmod(&secret, 0o600);
    chmod(&token, 0o600);
    dir.write(
        "rules.yaml",
        "groups:\n  - name: t\n    rules:\n      - alert: SecretTest\n        expr: absent(nodewatch_no_such_metric)\n",
    );
    let config = format!(
        "{QUIET}spool_dir: {spool}\nrule_files: [rules.yaml]
notifiers:
  - {{ name: ops, kind: webhook, url: \"{url}\", secret_file: {secret}, timeout: 2s, http_config: {{ basic_auth: {{ username: ops, password: {PASSWORD} }} }} }}
health: {{ token_file: {token} }}
",
        spool = dir.0.join("spool").display(),
        url = receiver.url(),
        secret = secret.display(),
        token = token.display(),
    );
    let agent = Agent::start_logged(&dir, &config, "trace", "agent.log");
    wait_for(Duration::from_secs(10), || {
        (!receiver.requests().is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no notification:\n{}", agent.log_text()));
    let first = &receiver.requests()[0];
    assert!(
        first
            .head
            .to_ascii_lowercase()
            .contains("webhook-signature: v1,"),
        "the secret is in use: {}",
        first.head
    );
    assert!(
        first
            .head
            .to_ascii_lowercase()
            .contains("authorization: basic "),
        "the password is in use: {}",
        first.head
    );
    let auth = format!("Bearer {TOKEN}");
    for path in ["/api/v1/drain", "/api/v1/undrain", "/api/v1/reload"] {
        let answer = post_with_token(agent.addr, path, &auth, r#"{"reason": "security test"}"#);
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    // A refused notification is logged with the receiver's answer.
    receiver.set_answer(Answer::Status(400));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(600));
    let log = agent.log_text();
    agent.stop();
    let log = log + &std::fs::read_to_string(dir.0.join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "trace logging on:\n{log}"
    );
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{PASSWORD}"))
    };
    for (what, s) in [
        ("webhook secret", HOOK_SECRET),
        ("drain token", TOKEN),
        ("basic-auth password", PASSWORD),
        ("basic-auth header", &basic),
    ] {
        assert!(!log.contains(s), "the {what} is in the log:\n{log}");
    }

    // A bad whsec_ key stops the start without quoting it.
    let bad = dir.write("bad.key", "whsec_QUJD!SECRETPART");
    chmod(&bad, 0o600);
    let cfg = dir.write(
        "bad.yaml",
        &format!(
            "{QUIET}spool_dir: {}\nnotifiers:\n  - {{ name: ops, kind: webhook, url: \"{}\", secret_file: {} }}\n",
            dir.0.join("spool2").display(),
            receiver.url(),
            bad.display()
        ),
    );
    let (code, err) = nodewatch(&["run".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("contents not shown"), "{err}");
    assert!(
        !err.contains("SECRETPART") && !err.contains("QUJD"),
        "{err}"
    );
}
