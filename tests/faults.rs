//! Faults the agent must ride out: /proc files that vanish, a receiver that hangs, a full disk
//! under `spool_dir`. Each time the agent keeps serving, says what happened once (not once
//! per tick), and counts it in a metric.

mod common;

use std::{collections::BTreeSet, process::Command, time::Duration};

use common::{
    Agent, TempDir, have_root,
    receiver::{Answer, Receiver},
    wait_for,
};

/// Probes off: these faults are in files and peers, not the kernel.
const QUIET: &str = "probes:
  tcp_retransmits: { enabled: false }
  accept_queue: { enabled: false }
  gpu_ioctl: { enabled: false }
  gpu_xid: { enabled: false }
interval: 200ms
";

/// An alert that fires at once, for the notifier tests.
const FIRE_AT_ONCE: &str = "groups:
  - name: t
    rules:
      - alert: FaultTest
        expr: absent(nodewatch_no_such_metric)
      - alert: FaultTest2
        expr: absent(nodewatch_no_such_metric_either)
";

/// The distinct notifications the receiver has seen, a retried one once: (alert name, status,
/// startsAt). The default rules run too, so theirs may be among them.
fn seen(receiver: &Receiver) -> BTreeSet<(String, String, String)> {
    receiver.alerts().into_iter().collect()
}

/// Whether both alerts of [`FIRE_AT_ONCE`] are among `seen`, firing.
fn both_fired(seen: &BTreeSet<(String, String, String)>) -> bool {
    ["FaultTest", "FaultTest2"]
        .iter()
        .all(|name| seen.iter().any(|(n, s, _)| n == name && s == "firing"))
}

fn count(log: &str, what: &str) -> usize {
    log.matches(what).count()
}

#[test]
fn proc_files_that_vanish_are_counted_and_logged_once() {
    let dir = TempDir::new("faults-proc");
    let proc = dir.0.join("proc");
    std::fs::create_dir_all(proc.join("self")).unwrap();
    let files = [
        ("stat", "cpu  100 0 100 1000 0 0 0 0 0 0\n"),
        ("meminfo", "MemTotal: 1000 kB\nMemAvailable: 250 kB\n"),
        ("loadavg", "0.50 0.40 0.30 1/100 4242\n"),
        ("self/mountinfo", ""),
    ];
    for (name, text) in files {
        std::fs::write(proc.join(name), text).unwrap();
    }
    let config = format!(
        "{QUIET}proc_root: {}\nspool_dir: {}\n",
        proc.display(),
        dir.0.join("spool").display()
    );
    let agent = Agent::start(&dir, &config);
    wait_for(Duration::from_secs(5), || {
        agent.sample("nodewatch_memory_used_ratio")
    })
    .unwrap_or_else(|| panic!("no memory ratio:\n{}", agent.metrics()));
    assert_eq!(agent.sample("nodewatch_memory_used_ratio"), Some(0.75));
    let errors = r#"nodewatch_collector_errors_total{collector="resources"}"#;
    let before = agent.sample(errors).unwrap_or(0.0);

    std::fs::remove_file(proc.join("meminfo")).unwrap();
    std::fs::remove_file(proc.join("loadavg")).unwrap();
    // Several ticks fail...
    wait_for(Duration::from_secs(5), || {
        (agent.sample(errors).unwrap_or(0.0) >= before + 5.0).then_some(())
    })
    .unwrap_or_else(|| panic!("errors not counted:\n{}", agent.metrics()));
    // ...while the agent serves and the rest is still read.
    assert_eq!(
        common::http_get(agent.addr, "/healthz").map(|(s, _)| s),
        Some(200)
    );
    assert_eq!(
        count(&agent.log_text(), "collection failed"),
        1,
        "{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("meminfo"), "{}", agent.log_text());

    for (name, text) in &files[1..3] {
        std::fs::write(proc.join(name), text).unwrap();
    }
    wait_for(Duration::from_secs(5), || {
        agent
            .log_text()
            .contains("collection recovered")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no recovery:\n{}", agent.log_text()));
    let settled = agent.sample(errors);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        agent.sample(errors),
        settled,
        "errors stop when files are back"
    );
    let log = agent.log_text();
    assert_eq!(count(&log, "collection failed"), 1, "{log}");
    assert_eq!(count(&log, "collection recovered"), 1, "{log}");
    assert!(agent.stop().success());
}

fn notifier_config(dir: &TempDir, spool: &std::path::Path, url: &str) -> String {
    dir.write("rules.yaml", FIRE_AT_ONCE);
    format!(
        "{QUIET}resources: {{ enabled: false }}\nspool_dir: {}\nrule_files: [rules.yaml]
notifiers:
  - {{ name: ops, kind: webhook, url: \"{url}\", timeout: 500ms }}
",
        spool.display()
    )
}

#[test]
fn a_receiver_that_hangs_is_retried_and_logged_once() {
    let dir = TempDir::new("faults-hang");
    let receiver = Receiver::start(Answer::Hang);
    let agent = Agent::start(
        &dir,
        &notifier_config(&dir, &dir.0.join("spool"), &receiver.url()),
    );
    let retried = r#"nodewatch_notifications_total{notifier="ops",result="retried"}"#;
    wait_for(Duration::from_secs(15), || {
        (agent.sample(retried).unwrap_or(0.0) >= 3.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no retries:\n{}\n{}", agent.metrics(), agent.log_text()));
    assert_eq!(
        common::http_get(agent.addr, "/healthz").map(|(s, _)| s),
        Some(200),
        "the agent serves while its receiver hangs"
    );
    let log = agent.log_text();
    assert_eq!(
        count(&log, "delivery failed; retrying with backoff"),
        1,
        "{log}"
    );
    assert!(log.contains("no answer within 500ms"), "{log}");

    receiver.set_answer(Answer::Status(200));
    let sent = r#"nodewatch_notifications_total{notifier="ops",result="sent"}"#;
    let queue = r#"nodewatch_notification_queue_length{notifier="ops"}"#;
    // Everything queued is delivered: each distinct notification the receiver saw (through
    // the hang and after) is counted sent once, and both test alerts are among them.
    wait_for(Duration::from_secs(15), || {
        let text = agent.metrics();
        let seen = seen(&receiver);
        (both_fired(&seen)
            && common::sample(&text, queue) == Some(0.0)
            && common::sample(&text, sent) == Some(seen.len() as f64))
        .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not delivered: {:?}\n{}\n{}",
            seen(&receiver),
            agent.metrics(),
            agent.log_text()
        )
    });
    assert!(agent.log_text().contains("receiver reachable again"));
    assert!(agent.stop().success());
}

/// A tmpfs of 64 KiB under `spool_dir`, filled up: notifications are still delivered (from
/// memory), the failure is logged once and counted per notification.
#[test]
fn a_full_disk_under_the_spool_is_logged_once_and_counted() {
    if !have_root("full disk under spool_dir (mounts a tmpfs)") {
        return;
    }
    let dir = TempDir::new("faults-disk");
    let spool = dir.0.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "nodewatch-test",
            spool.to_str().unwrap(),
        ])
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spool.clone());
    // The spool folders exist; then the disk is full.
    std::fs::create_dir_all(spool.join("notifications/ops")).unwrap();
    let filler = std::fs::File::create(spool.join("filler")).unwrap();
    let mut filler = std::io::BufWriter::new(filler);
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);

    let receiver = Receiver::start(Answer::Status(200));
    let agent = Agent::start(&dir, &notifier_config(&dir, &spool, &receiver.url()));
    let unspooled = r#"nodewatch_notifications_total{notifier="ops",result="unspooled"}"#;
    let sent = r#"nodewatch_notifications_total{notifier="ops",result="sent"}"#;
    // Every notification went out from memory, and each was counted as not spooled.
    wait_for(Duration::from_secs(10), || {
        let text = agent.metrics();
        let seen = seen(&receiver);
        let n = Some(seen.len() as f64);
        (both_fired(&seen)
            && common::sample(&text, sent) == n
            && common::sample(&text, unspooled) == n)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "not delivered: {:?}\n{}\n{}",
            seen(&receiver),
            agent.metrics(),
            agent.log_text()
        )
    });
    let log = agent.log_text();
    assert_eq!(
        count(&log, "cannot write the notification spool"),
        1,
        "{log}"
    );
    assert_eq!(count(&log, "cannot save the announced alerts"), 1, "{log}");
    assert_eq!(
        common::http_get(agent.addr, "/healthz").map(|(s, _)| s),
        Some(200)
    );
    assert!(agent.stop().success());
}
