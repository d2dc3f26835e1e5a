//! Resource metrics of the real node, checked against the kernel read independently:
//! statvfs of the same mounts, /proc/pressure, /proc/meminfo.

mod common;

use std::{ffi::CString, time::Duration};

use common::{Agent, TempDir, have_root, have_tool, prometheus::Prometheus, sample, wait_for};

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

/// A bind mount at a path of the test's choosing, unmounted when dropped.
struct BindMount(CString);

impl BindMount {
    fn new(source: &std::path::Path, target: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(target).unwrap();
        let src = CString::new(source.as_os_str().as_bytes()).unwrap();
        let dst = CString::new(target.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated paths; a bind mount has no filesystem type or data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "bind mount: {}", std::io::Error::last_os_error());
        Self(dst)
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated path this guard mounted.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A mount point whose path holds a quote, a backslash and a newline is exported escaped:
/// promtool finds nothing wrong with the scrape, and a real Prometheus stores the series with
/// the path as it is.
#[test]
fn a_mount_point_with_quote_backslash_and_newline_is_exported_safely() {
    if !have_root("hostile mount point")
        || !have_tool("hostile mount point", "promtool")
        || !have_tool("hostile mount point", "prometheus")
    {
        return;
    }
    let dir = TempDir::new("res-hostile-mount");
    let point = dir.0.join("disk \"q\" back\\slash\nline");
    let _mount = BindMount::new(&dir.0, &point);
    let point_str = point.to_str().unwrap().to_string();
    // The scenario names the one mount; everything else is the defaults.
    let yaml_path = serde_json::to_string(&point_str).unwrap();
    let agent = Agent::start(
        &dir,
        &format!("resources:\n  disk:\n    include_mounts: [{yaml_path}]\n"),
    );
    let escaped = point_str
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let series = format!("nodewatch_disk_used_ratio{{mount=\"{escaped}\"}}");
    let text = wait_for(Duration::from_secs(5), || {
        let t = agent.metrics();
        t.contains(&series).then_some(t)
    })
    .unwrap_or_else(|| panic!("no {series} in\n{}", agent.metrics()));

    let (clean, complaints) = common::prometheus::check_metrics(&text);
    assert!(clean, "promtool check metrics: {complaints}");

    let prom_dir = TempDir::new("res-hostile-prom");
    let prom = Prometheus::start(
        &prom_dir,
        &format!(
            "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\nscrape_configs:\n  - job_name: nodewatch\n    static_configs: [{{ targets: [\"{}\"] }}]\n",
            agent.addr
        ),
    );
    prom.wait_up(Duration::from_secs(30));
    let stored = wait_for(Duration::from_secs(10), || {
        let r = prom.query("nodewatch_disk_used_ratio");
        r.into_iter()
            .find(|s| s["metric"]["mount"].as_str() == Some(point_str.as_str()))
    })
    .unwrap_or_else(|| {
        panic!(
            "prometheus has no series for {point_str:?}: {:?}",
            prom.query("nodewatch_disk_used_ratio")
        )
    });
    eprintln!("prometheus stored {stored}");
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
