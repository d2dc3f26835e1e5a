//! State that survives a restart: an agent killed with SIGKILL while alerts fire does not
//! announce them again when it comes back with them still firing (one of them waits out its
//! `for` again first), and alerts that resolved while it was down are sent as resolved, with
//! the `startsAt` they were announced with.

mod common;

use std::{path::Path, time::Duration};

use common::{
    Agent, TempDir,
    receiver::{Answer, Receiver},
    wait_for,
};

const RULES: &str = "groups:
  - name: t
    rules:
      - alert: MemoryHigh
        expr: nodewatch_memory_used_ratio > 0.5
      - alert: MemoryHighFor
        expr: nodewatch_memory_used_ratio > 0.5
        for: 1s
";

fn set_memory(proc: &Path, used_percent: u64) {
    std::fs::write(
        proc.join("meminfo"),
        format!(
            "MemTotal: 1000 kB\nMemAvailable: {} kB\n",
            1000 - used_percent * 10
        ),
    )
    .unwrap();
}

/// The notifications of the test's own rules, in the order received: (alert name, status,
/// startsAt). The default rules run beside them.
fn ours(receiver: &Receiver) -> Vec<(String, String, String)> {
    receiver
        .alerts()
        .into_iter()
        .filter(|(name, _, _)| name.starts_with("MemoryHigh"))
        .collect()
}

/// `(alert name, status)` of `n`, sorted.
fn sorted(n: &[(String, String, String)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = n.iter().map(|(a, s, _)| (a.clone(), s.clone())).collect();
    v.sort();
    v
}

/// The startsAt of `n`, sorted.
fn starts(n: &[(String, String, String)]) -> Vec<String> {
    let mut v: Vec<String> = n.iter().map(|(_, _, t)| t.clone()).collect();
    v.sort();
    v
}

fn sigkill(mut agent: Agent) {
    agent.child.kill().expect("SIGKILL");
    agent.child.wait().expect("wait");
}

#[test]
fn kill_9_and_restart_neither_repeats_nor_loses_notifications() {
    let dir = TempDir::new("restart");
    let proc = dir.0.join("proc");
    std::fs::create_dir_all(proc.join("self")).unwrap();
    std::fs::write(proc.join("stat"), "cpu  1 0 1 10 0 0 0 0 0 0\n").unwrap();
    std::fs::write(proc.join("loadavg"), "0.1 0.1 0.1 1/1 1\n").unwrap();
    std::fs::write(proc.join("self/mountinfo"), "").unwrap();
    set_memory(&proc, 75);
    dir.write("rules.yaml", RULES);
    let receiver = Receiver::start(Answer::Status(200));
    let config = format!(
        "probes:
  tcp_retransmits: {{ enabled: false }}
  accept_queue: {{ enabled: false }}
  gpu_ioctl: {{ enabled: false }}
  gpu_xid: {{ enabled: false }}
interval: 200ms
proc_root: {}
spool_dir: {}
rule_files: [rules.yaml]
notifiers:
  - {{ name: ops, kind: webhook, url: \"{}\" }}
",
        proc.display(),
        dir.0.join("spool").display(),
        receiver.url()
    );
    let firing = |name: &str| (name.to_string(), "firing".to_string());
    let resolved = |name: &str| (name.to_string(), "resolved".to_string());

    let first = Agent::start_logged(&dir, &config, "info", "agent1.log");
    wait_for(Duration::from_secs(10), || {
        (ours(&receiver).len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("not announced:\n{}", first.log_text()));
    let announced = ours(&receiver);
    assert_eq!(
        sorted(&announced),
        vec![firing("MemoryHigh"), firing("MemoryHighFor")]
    );
    // Kept as announced (written behind the deliveries, by a thread of its own).
    let announced_file = dir.0.join("spool/notifications/announced.json");
    wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&announced_file).ok()?;
        (text.contains("\"MemoryHigh\"") && text.contains("\"MemoryHighFor\"")).then_some(())
    })
    .unwrap_or_else(|| panic!("announced.json never listed both:\n{}", first.log_text()));
    sigkill(first);

    // Back with both still firing (MemoryHighFor pending for a second first): nothing new.
    let second = Agent::start_logged(&dir, &config, "info", "agent2.log");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ours(&receiver).len(),
        2,
        "{:?}\n{}",
        ours(&receiver),
        second.log_text()
    );
    assert!(
        second
            .log_text()
            .contains("alerts announced as firing by the previous run"),
        "{}",
        second.log_text()
    );
    sigkill(second);

    // Resolved while down: sent as resolved when the agent is back.
    set_memory(&proc, 10);
    let third = Agent::start_logged(&dir, &config, "info", "agent3.log");
    wait_for(Duration::from_secs(10), || {
        (ours(&receiver).len() >= 4).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "resolutions not sent: {:?}\n{}",
            ours(&receiver),
            third.log_text()
        )
    });
    let after = ours(&receiver)[2..].to_vec();
    assert_eq!(
        sorted(&after),
        vec![resolved("MemoryHigh"), resolved("MemoryHighFor")]
    );
    assert_eq!(
        starts(&after),
        starts(&announced),
        "resolved with the announced startsAt"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ours(&receiver).len(), 4, "{:?}", ours(&receiver));
    assert!(third.stop().success());
}
