//! Resource metrics of the real node, checked against the kernel read independently:
//! statvfs of the same mounts, /proc/pressure, /proc/meminfo.

mod common;

use std::{ffi::CString, time::Duration};

use common::{Agent, TempDir, sample, wait_for};

const QUIET: &str = "interval: 200ms\nprobes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\n";

/// df's Use%: used / (used + available), from statvfs.
fn statvfs_ratio(mount: &str) -> f64 {
    let c = CString::new(mount).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed struct for the kernel to fill.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0, "statvfs {mount}");
        st
    };
    let used = (st.f_blocks - st.f_bfree) as f64;
    used / (used + st.f_bavail as f64)
}

/// `{mount}` labels of nodewatch_disk_used_ratio in a scrape.
fn mounts(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("nodewatch_disk_used_ratio{mount=\""))
        .filter_map(|l| l.split_once("\"}").map(|(m, _)| m.to_string()))
        .collect()
}

#[test]
fn disk_ratios_equal_statvfs_of_the_same_mounts() {
    let dir = TempDir::new("res-disk");
    let agent = Agent::start(&dir, QUIET);
    let text = wait_for(Duration::from_secs(3), || {
        let t = agent.metrics();
        (!mounts(&t).is_empty()).then_some(t)
    })
    .expect("no disk series");
    let found = mounts(&text);
    assert!(
        found.iter().any(|m| m == "/"),
        "the root filesystem is reported: {found:?}"
    );
    for pseudo in ["/proc", "/sys", "/dev", "/sys/fs/cgroup"] {
        assert!(
            !found.iter().any(|m| m == pseudo),
            "{pseudo} is not a real filesystem: {found:?}"
        );
    }
    for m in &found {
        let agent_value = sample(
            &text,
            &format!("nodewatch_disk_used_ratio{{mount=\"{m}\"}}"),
        )
        .unwrap();
        let ours = statvfs_ratio(m);
        eprintln!("{m}: agent {agent_value:.6}, statvfs {ours:.6}");
        // Other processes write meanwhile: equal to a few blocks in a million.
        assert!(
            (agent_value - ours).abs() < 1e-4,
            "{m}: agent {agent_value}, statvfs {ours}"
        );
    }
}

#[test]
fn pressure_and_memory_equal_procfs() {
    let dir = TempDir::new("res-psi");
    let agent = Agent::start(&dir, QUIET);
    std::thread::sleep(Duration::from_millis(500));
    let psi_available = std::path::Path::new("/proc/pressure/cpu").exists();
    for resource in ["cpu", "memory", "io"] {
        let read = || std::fs::read_to_string(format!("/proc/pressure/{resource}")).ok();
        if read().is_none() {
            assert!(!psi_available);
            continue;
        }
        // avg10 changes every 2 s, and the agent's value is from its last tick, which may be
        // just before a change: accept the value on either side of the scrape, and try again
        // when a change fell between the tick and the first read.
        let compare = || -> Result<(), String> {
            let before = read().unwrap();
            let text = agent.metrics();
            let after = read().unwrap();
            for kind in ["some", "full"] {
                let avg10 = |t: &str| -> Option<f64> {
                    let line = t.lines().find(|l| l.starts_with(kind))?;
                    let v: f64 = line
                        .split_whitespace()
                        .find_map(|p| p.strip_prefix("avg10="))?
                        .parse()
                        .ok()?;
                    Some(v / 100.0)
                };
                let Some(b) = avg10(&before) else { continue };
                let a = avg10(&after).unwrap();
                let got = sample(
                    &text,
                    &format!("nodewatch_pressure_ratio{{resource=\"{resource}\",kind=\"{kind}\"}}"),
                )
                .unwrap_or_else(|| panic!("no {resource}/{kind} series:\n{text}"));
                if (got - b).abs() >= 1e-9 && (got - a).abs() >= 1e-9 {
                    return Err(format!(
                        "{resource} {kind}: agent {got}, /proc/pressure {b} then {a}"
                    ));
                }
            }
            Ok(())
        };
        let mut result = compare();
        for _ in 0..4 {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            result = compare();
        }
        if let Err(e) = result {
            panic!("{e}");
        }
    }
    let text = agent.metrics();
    let mem = sample(&text, "nodewatch_memory_used_ratio").expect("memory series");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb = |k: &str| -> f64 {
        let l = meminfo.lines().find(|l| l.starts_with(k)).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let ours = (kb("MemTotal:") - kb("MemAvailable:")) / kb("MemTotal:");
    assert!(
        (mem - ours).abs() < 0.01,
        "memory: agent {mem}, meminfo {ours}"
    );
    let cpu = wait_for(Duration::from_secs(2), || {
        sample(&agent.metrics(), "nodewatch_cpu_usage_ratio")
    })
    .expect("cpu series");
    assert!((0.0..=1.0).contains(&cpu), "{cpu}");
    assert!(sample(&text, "nodewatch_load1").is_some_and(|l| l >= 0.0));
}
