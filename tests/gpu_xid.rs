//! NVIDIA Xid errors: lines written into the real kernel log (`/dev/kmsg`) are counted by
//! code, malformed ones ignored, and an agent started afterwards does not count them again.
//!
//! Each test uses Xid codes of its own, so the tests can run side by side.

mod common;

use std::{io::Write, thread, time::Duration};

use common::{Agent, TempDir, have_root, have_tool, wait_for};

const CONFIG: &str = "interval: 200ms\nprobes:\n  tcp_retransmits: { enabled: false }\n  gpu_ioctl: { enabled: false }\n";

/// Writes each line as one record. The kernel rate-limits writers to 10 records per 5 s per
/// open file, so each call opens its own. The newline matters: without it the record stays
/// open for continuation and readers do not see it until the next record arrives.
fn kmsg(lines: &[&str]) {
    assert!(lines.len() <= 10, "more would be rate-limited");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .expect("open /dev/kmsg for writing");
    for l in lines {
        f.write_all(format!("{l}\n").as_bytes())
            .expect("write to /dev/kmsg");
    }
}

fn xid(agent: &Agent, code: u32) -> Option<f64> {
    agent.sample(&format!(
        "nodewatch_gpu_xid_errors_total{{code=\"{code}\"}}"
    ))
}

#[test]
fn counts_xid_lines_by_code_and_not_again_after_restart() {
    if !have_root("gpu_xid") {
        return;
    }
    let dir = TempDir::new("xid");
    let mut agent = Agent::start(&dir, CONFIG);
    assert_eq!(
        agent.sample("nodewatch_probe_up{probe=\"gpu_xid\",mode=\"kmsg\"}"),
        Some(1.0),
        "{}",
        agent.log_text()
    );
    kmsg(&[
        "<4>NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.",
        "<4>NVRM: Xid (PCI:0000:3b:00): 61, pid=1234, name=python3, Internal micro-controller breakpoint",
        "<4>NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.",
        "<4>NVRM: Xid (PCI:0000:3b:00): seventy-nine, not a code",
        "<4>NVRM: Xid (PCI:0000:3b:00: 79, unbalanced",
        "<4>NVRM: GPU at PCI:0000:3b:00: GPU-00000000-0000-0000-0000-000000000000",
        "<4>NVRM: Xid (PCI:0000:3d:00): 61, pid=99, name=trainer, Internal micro-controller breakpoint",
        "<4>NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.",
    ]);
    wait_for(Duration::from_secs(5), || {
        (xid(&agent, 79) == Some(3.0) && xid(&agent, 61) == Some(2.0)).then_some(())
    })
    .expect("timed out: Xid 79 x3 and 61 x2");
    thread::sleep(Duration::from_millis(500));
    let text = agent.metrics();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("nodewatch_gpu_xid_errors_total{"))
        .collect();
    eprintln!("first agent: {series:?}");
    assert_eq!(xid(&agent, 79), Some(3.0), "{text}");
    assert_eq!(xid(&agent, 61), Some(2.0), "{text}");
    // The malformed lines made no series of their own (94 and 74 belong to the other test,
    // 13 to tests/metric_families.rs).
    for l in &series {
        assert!(
            ["79", "61", "94", "74", "13"]
                .iter()
                .any(|c| l.contains(&format!("code=\"{c}\""))),
            "{series:?}"
        );
    }
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "bad lines are not fatal"
    );
    assert!(agent.stop().success());

    // A new agent starts at the end of the log: the lines above are history.
    let again = Agent::start(&dir, CONFIG);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(xid(&again, 79), None, "{}", again.metrics());
    assert_eq!(xid(&again, 61), None);
    kmsg(&["<4>NVRM: Xid (PCI:0000:3b:00): 74, pid=1, name=x, NVLink error"]);
    wait_for(Duration::from_secs(5), || {
        (xid(&again, 74) == Some(1.0)).then_some(())
    })
    .expect("timed out: Xid 74 after restart");
    let text = again.metrics();
    eprintln!(
        "restarted agent: {:?}",
        text.lines()
            .filter(|l| l.starts_with("nodewatch_gpu_xid_errors_total{"))
            .collect::<Vec<_>>()
    );
    assert_eq!(xid(&again, 79), None);
}

/// Without the capabilities eBPF needs, the ioctl probe reports itself off with one WARN line
/// and the agent still counts Xid errors.
#[test]
fn xid_counts_when_ebpf_cannot_load() {
    if !have_root("gpu_xid without eBPF") || !have_tool("gpu_xid without eBPF", "setpriv") {
        return;
    }
    let dir = TempDir::new("xid-noebpf");
    let config = "interval: 200ms\nprobes:\n  gpu_ioctl: { devices: [/dev/null] }\n";
    let agent = Agent::start_wrapped(
        &dir,
        config,
        &[
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-bpf,-perfmon,-sys_admin",
        ],
    );
    let text = agent.metrics();
    for series in [
        "nodewatch_probe_up{probe=\"gpu_ioctl\",mode=\"off\"} 0",
        "nodewatch_probe_up{probe=\"gpu_xid\",mode=\"kmsg\"} 1",
        "nodewatch_probe_up{probe=\"tcp_retransmits\",mode=\"procfs\"} 1",
    ] {
        assert!(text.contains(series), "missing {series}:\n{text}");
    }
    kmsg(&["<4>NVRM: Xid (PCI:0000:3b:00): 94, pid=1, name=x, Contained ECC error"]);
    wait_for(Duration::from_secs(5), || {
        (xid(&agent, 94) == Some(1.0)).then_some(())
    })
    .expect("timed out: Xid 94 counted without eBPF");
    let log = agent.log_text();
    let warns: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(
        warns
            .iter()
            .filter(|l| l.contains("probe=\"gpu_ioctl\""))
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        warns.len(),
        3,
        "gpu_ioctl, tcp_retransmits and accept_queue degrade:\n{log}"
    );
}
