//! NVIDIA Xid and NVSwitch SXid errors: lines written into the real kernel log (`/dev/kmsg`)
//! are counted by code, GPU and the action of NVIDIA's Xid catalog, malformed ones ignored.
//! A line about a GPU the (fake) NVML reports is counted under its `gpu` and `uuid`, keeps
//! the node out across `kill -9` and a restart of the agent without being counted twice, and
//! goes when the operator clears it. A line naming no device of this node is counted while
//! the agent runs only.
//!
//! The kernel log keeps every earlier test's lines and the agent reads it from its start, so
//! each test names PCI domains of its own ([`fresh_domain`]); the tests here run one at a
//! time, as each one's lines would show in the others' agents.

mod common;

use std::{
    io::Write,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, TempDir, firing, have_root, have_tool, healthz, http_get,
    nvml::{FakeNvml, Gpu, State, fresh_domain, log_bus_id, time_until},
    wait_for,
};

const CONFIG: &str = "interval: 200ms\nprobes:\n  tcp_retransmits: { enabled: false }\n  gpu_ioctl: { enabled: false }\n  gpu_state: { enabled: false }\n";

/// One test at a time: each one's lines show in the others' agents.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Writes each line as one record. The kernel rate-limits writers to 10 records per 5 s per
/// open file, so each call opens its own. The newline matters: without it the record stays
/// open for continuation and readers do not see it until the next record arrives.
fn kmsg(lines: &[String]) {
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

/// The value of the Xid series of `code` on bus `pci`, whatever its other labels.
fn xid(text: &str, code: u32, pci: &str) -> Option<f64> {
    series(text, "nodewatch_gpu_xid_errors_total", code, pci)
        .first()
        .map(|(_, v)| *v)
}

/// The series of `family` with `code` and `pci`, with their values.
fn series(text: &str, family: &str, code: u32, pci: &str) -> Vec<(String, f64)> {
    let prefix = format!("{family}{{code=\"{code}\",pci=\"{pci}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| {
            let (s, v) = l.rsplit_once(' ').unwrap();
            (s.to_string(), v.parse().unwrap())
        })
        .collect()
}

#[test]
fn counts_xid_lines_by_code_and_action_and_not_again_after_restart() {
    if !have_root("gpu_xid") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("xid");
    let config = format!("{CONFIG}spool_dir: {}\n", dir.0.join("spool").display());
    let (a, b) = (
        format!("{:04x}:3b:00", fresh_domain()),
        format!("{:04x}:3d:00", fresh_domain()),
    );
    let mut agent = Agent::start(&dir, &config);
    assert_eq!(
        agent.sample("nodewatch_probe_up{probe=\"gpu_xid\",mode=\"kmsg\"}"),
        Some(1.0),
        "{}",
        agent.log_text()
    );
    kmsg(&[
        format!("<4>NVRM: Xid (PCI:{a}): 79, pid=1234, name=python3, GPU has fallen off the bus."),
        format!("<4>NVRM: Xid (PCI:{a}): 13, pid=1234, name=python3, Graphics Engine Exception"),
        format!("<4>NVRM: Xid (PCI:{a}): 79, pid=1234, name=python3, GPU has fallen off the bus."),
        format!("<4>NVRM: Xid (PCI:{a}): seventy-nine, not a code"),
        format!("<4>NVRM: Xid (PCI:{a}: 79, unbalanced"),
        format!("<4>NVRM: GPU at PCI:{a}: GPU-00000000-0000-0000-0000-000000000000"),
        format!(
            "<4>NVRM: Xid (PCI:{b}): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"
        ),
        format!("<4>NVRM: Xid (PCI:{a}): 79, pid=1234, name=python3, GPU has fallen off the bus."),
        format!(
            "<4>nvidia-nvswitch2: SXid (PCI:{b}.0): 24007, Fatal, Link 34 sourcetrack timeout error (First)"
        ),
    ]);
    let want = [
        (
            "nodewatch_gpu_xid_errors_total",
            79,
            &a,
            format!(
                "nodewatch_gpu_xid_errors_total{{code=\"79\",pci=\"{a}\",gpu=\"\",uuid=\"\",action=\"reboot\"}}"
            ),
            3.0,
        ),
        (
            "nodewatch_gpu_xid_errors_total",
            13,
            &a,
            format!(
                "nodewatch_gpu_xid_errors_total{{code=\"13\",pci=\"{a}\",gpu=\"\",uuid=\"\",action=\"restart_app\"}}"
            ),
            1.0,
        ),
        (
            "nodewatch_gpu_xid_errors_total",
            154,
            &b,
            format!(
                "nodewatch_gpu_xid_errors_total{{code=\"154\",pci=\"{b}\",gpu=\"\",uuid=\"\",action=\"reset_gpu\"}}"
            ),
            1.0,
        ),
        (
            "nodewatch_gpu_sxid_errors_total",
            24007,
            &b,
            format!("nodewatch_gpu_sxid_errors_total{{code=\"24007\",pci=\"{b}\",fatal=\"true\"}}"),
            1.0,
        ),
    ];
    let matches = |text: &str| {
        want.iter().all(|(family, code, pci, line, v)| {
            series(text, family, *code, pci) == vec![(line.clone(), *v)]
        })
    };
    wait_for(Duration::from_secs(5), || {
        matches(&agent.metrics()).then_some(())
    })
    .unwrap_or_else(|| panic!("not counted as written:\n{}", agent.metrics()));
    thread::sleep(Duration::from_millis(500));
    let text = agent.metrics();
    assert!(matches(&text), "{text}");
    for bad in [
        format!("pci=\"{a}\",gpu=\"\",uuid=\"\",action=\"inspect_hardware\""),
        "code=\"seventy".to_string(),
    ] {
        assert!(
            !text.contains(&bad),
            "a malformed line made a series: {bad}\n{text}"
        );
    }
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "bad lines are not fatal"
    );
    assert!(agent.stop().success());

    // These lines name no device of this node: the next agent neither restores nor re-reads
    // them, and counts what comes next.
    let again = Agent::start(&dir, &config);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(xid(&again.metrics(), 79, &a), None, "{}", again.metrics());
    kmsg(&[format!(
        "<4>NVRM: Xid (PCI:{a}): 74, pid=1, name=x, NVLink error"
    )]);
    wait_for(Duration::from_secs(5), || {
        (xid(&again.metrics(), 74, &a) == Some(1.0)).then_some(())
    })
    .expect("timed out: Xid 74 after restart");
    assert_eq!(xid(&again.metrics(), 79, &a), None);
}

/// `NVRM: Xid (PCI:dddd:19:00): 79` about GPU 0 of a fake NVML: counted under its `gpu`,
/// `uuid` and `action`, the node out within 2 s; after `kill -9` and a restart the node is
/// still out and the Xid counted once; the operator's clear brings the node back, also across
/// a restart.
#[test]
fn an_xid_on_an_nvml_gpu_keeps_the_node_out_across_kill_9_until_cleared() {
    if !have_root("gpu_xid restart") || !have_tool("gpu_xid restart", "cc") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("xid-restart");
    let state = State::new(vec![Gpu::h100(0), Gpu::h100(1)]);
    let fake = FakeNvml::build(&dir, &state);
    let spool = dir.0.join("spool");
    // The default tick and rules; the NVML probe on the fake library.
    let config = format!(
        "probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n  gpu_ioctl: {{ enabled: false }}\n{}spool_dir: {}\nhealth: {{ recover_after: 0s }}\n",
        fake.config(Some(2)),
        spool.display()
    );
    let pci = log_bus_id(&state.gpus[0].pci).to_string();
    let uuid = state.gpus[0].uuid.clone();
    let series = format!(
        "nodewatch_gpu_xid_errors_total{{code=\"79\",pci=\"{pci}\",gpu=\"0\",uuid=\"{uuid}\",action=\"reboot\"}}"
    );
    let mut agent = Agent::start(&dir, &config);
    wait_for(Duration::from_secs(5), || {
        (healthz(&agent) == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("healthy at first:\n{}", agent.log_text()));

    kmsg(&[format!(
        "<4>NVRM: Xid (PCI:{pci}): 79, pid=1234, name=python3, GPU has fallen off the bus."
    )]);
    let alert = [
        ("gpu", "0"),
        ("uuid", uuid.as_str()),
        ("pci", pci.as_str()),
        ("health", "down"),
    ];
    let t0 = Instant::now();
    let took = time_until(Duration::from_secs(5), || {
        agent.sample(&series) == Some(1.0)
            && firing(&agent, "NodewatchGpuXidReboot", &alert)
            && healthz(&agent) == 503
    });
    eprintln!("Xid 79 on GPU 0 -> counted, NodewatchGpuXidReboot and /healthz 503 after {took:?}");
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "not out within 2 s ({:?}):\n{}\n{}",
        t0.elapsed(),
        agent.metrics(),
        agent.log_text()
    );

    // kill -9: no chance to write anything on the way out.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let agent = Agent::start(&dir, &config);
    let out = time_until(Duration::from_secs(5), || {
        agent.sample(&series) == Some(1.0) && healthz(&agent) == 503
    });
    assert!(
        out.is_some(),
        "not out after the restart:\n{}",
        agent.metrics()
    );
    thread::sleep(Duration::from_secs(2));
    let text = agent.metrics();
    assert_eq!(
        common::sample(&text, &series),
        Some(1.0),
        "counted once:\n{text}"
    );
    assert_eq!(
        text.matches(&format!("pci=\"{pci}\"")).count(),
        1,
        "one series for the GPU:\n{text}"
    );
    assert!(firing(&agent, "NodewatchGpuXidReboot", &alert));
    let (_, body) = http_get(agent.addr, "/healthz").unwrap();
    assert!(
        body.contains("\"status\":\"down\"") && body.contains("NodewatchGpuXidReboot"),
        "{body}"
    );
    eprintln!("after kill -9 and restart: still out, Xid 79 counted once");

    // The operator reset the GPU and clears its Xid state.
    std::fs::write(spool.join("gpu_xid.clear"), format!("{pci}\n")).unwrap();
    let cleared = time_until(Duration::from_secs(5), || {
        agent.sample(&series).is_none()
            && !firing(&agent, "NodewatchGpuXidReboot", &[("pci", &pci)])
    });
    assert!(cleared.is_some(), "not cleared:\n{}", agent.metrics());
    assert!(
        !spool.join("gpu_xid.clear").exists(),
        "the request is taken"
    );
    assert!(agent.stop().success());
    let agent = Agent::start(&dir, &config);
    thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.sample(&series),
        None,
        "cleared for good:\n{}",
        agent.metrics()
    );
    assert!(!firing(&agent, "NodewatchGpuXidReboot", &[("pci", &pci)]));
}

/// Without the capabilities eBPF needs, the ioctl probe reports itself off with one WARN line
/// and the agent still counts Xid errors.
#[test]
fn xid_counts_when_ebpf_cannot_load() {
    if !have_root("gpu_xid without eBPF") || !have_tool("gpu_xid without eBPF", "setpriv") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("xid-noebpf");
    let config = format!(
        "interval: 200ms\nprobes:\n  gpu_ioctl: {{ devices: [/dev/null] }}\n  gpu_state: {{ enabled: false }}\nspool_dir: {}\n",
        dir.0.join("spool").display()
    );
    let agent = Agent::start_wrapped(
        &dir,
        &config,
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
    let pci = format!("{:04x}:3b:00", fresh_domain());
    kmsg(&[format!(
        "<4>NVRM: Xid (PCI:{pci}): 94, pid=1, name=x, Contained ECC error"
    )]);
    wait_for(Duration::from_secs(5), || {
        (xid(&agent.metrics(), 94, &pci) == Some(1.0)).then_some(())
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
