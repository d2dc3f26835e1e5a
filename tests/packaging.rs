//! The Debian package and the systemd unit: contents and conffiles, a real install on this
//! machine with `dpkg -i`, the installed agent run under the unit's capability set (every
//! probe attaches), an upgrade that keeps edited conffiles, removal and purge; the unit passes
//! `systemd-analyze verify` and rates below 3.0 in `systemd-analyze security`.

mod common;

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::{TempDir, free_port, have_root, http_get, wait_for};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/nodewatch.service"
);

/// The package `cargo xtask test` built from this tree, or None (skipped) outside it.
fn test_deb(test: &str) -> Option<PathBuf> {
    match std::env::var_os("NODEWATCH_TEST_DEB") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var("CI").is_err(),
                "{test}: NODEWATCH_TEST_DEB unset on CI: run `cargo xtask test`"
            );
            eprintln!("SKIPPED {test}: run through `cargo xtask test`, which builds the package");
            None
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn package_has_the_files_and_conffiles() {
    let Some(deb) = test_deb("package contents") else {
        return;
    };
    let deb = deb.to_str().unwrap();
    let listing = ok("dpkg-deb", &["-c", deb]);
    for path in [
        "./usr/bin/nodewatch",
        "./lib/systemd/system/nodewatch.service",
        "./etc/nodewatch/config.yaml",
        "./etc/nodewatch/rules.d/local.yaml",
        "./usr/share/nodewatch/grafana/nodewatch.json",
        "./usr/share/nodewatch/prometheus/prometheus.yml",
        "./usr/share/nodewatch/prometheus/alertmanager.yml",
        "./usr/share/nodewatch/examples/config.yaml",
        "./usr/share/nodewatch/rules/model-servers.yaml",
        "./usr/share/man/man1/nodewatch.1.gz",
        "./usr/share/doc/nodewatch/README.md",
        "./usr/share/doc/nodewatch/copyright",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} missing:\n{listing}"
        );
    }
    assert!(listing.contains("-rwxr-xr-x root/root"), "{listing}");
    let dir = TempDir::new("deb-ctrl");
    ok("dpkg-deb", &["-e", deb, dir.0.to_str().unwrap()]);
    let conffiles = std::fs::read_to_string(dir.0.join("conffiles")).unwrap();
    assert_eq!(
        conffiles,
        "/etc/nodewatch/config.yaml\n/etc/nodewatch/rules.d/local.yaml\n"
    );
    let control = std::fs::read_to_string(dir.0.join("control")).unwrap();
    assert!(control.contains("Package: nodewatch\n"), "{control}");
}

#[test]
fn unit_rates_below_3_in_systemd_analyze_security() {
    let out = run("systemd-analyze", &["security", "--offline=yes", UNIT]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no rating: {text}{}", String::from_utf8_lossy(&out.stderr)));
    let rating: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    eprintln!("{line}");
    assert!(rating < 3.0, "{line}");
}

/// `CapabilityBoundingSet=` of the unit, as setpriv arguments (`-all,+bpf,...`).
fn unit_capabilities(unit: &str) -> String {
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

/// Purges the package when the test ends, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "nodewatch"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn installs_runs_sandboxed_upgrades_and_purges() {
    if !have_root("dpkg install") {
        return;
    }
    let Some(deb) = test_deb("dpkg install") else {
        return;
    };
    let deb = deb.to_str().unwrap();
    let installed_before = run("dpkg-query", &["-W", "-f=${Status}", "nodewatch"]);
    assert!(
        !String::from_utf8_lossy(&installed_before.stdout).contains("install ok installed"),
        "nodewatch is already installed here; this test installs and purges it"
    );
    ok("dpkg", &["-i", deb]);
    let _purge = Installed;

    // The installed binary runs, and its config and unit check out.
    assert!(ok("/usr/bin/nodewatch", &["--version"]).starts_with("nodewatch "));
    ok(
        "/usr/bin/nodewatch",
        &["check-config", "/etc/nodewatch/config.yaml"],
    );
    assert!(ok("man", &["-w", "nodewatch"]).contains("nodewatch.1"));
    let verify = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/nodewatch.service"],
    );
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    assert!(std::path::Path::new("/var/lib/nodewatch").is_dir());

    // Under exactly the unit's capability set, every eBPF probe attaches, and the agent
    // drops those capabilities afterwards.
    let unit = std::fs::read_to_string("/lib/systemd/system/nodewatch.service").unwrap();
    let caps = unit_capabilities(&unit);
    let port = free_port();
    let dir = TempDir::new("deb-run");
    let log = dir.0.join("agent.log");
    let mut agent = Command::new("setpriv")
        .args(["--bounding-set", &caps, "--no-new-privs", "--inh-caps=-all"])
        .args([
            "/usr/bin/nodewatch",
            "run",
            "--config",
            "/etc/nodewatch/config.yaml",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("setpriv");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let metrics = wait_for(Duration::from_secs(20), || {
        http_get(addr, "/metrics")
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    let metrics = metrics.unwrap_or_else(|| panic!("agent did not serve:\n{log}"));
    let probes: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("nodewatch_probe_up{"))
        .collect();
    assert!(!probes.is_empty(), "{metrics}");
    for p in &probes {
        // The Xid reader's best mode is the kernel log; NVML's and the InfiniBand ports',
        // on these machines without an NVIDIA driver or RDMA devices, is off; every other
        // probe's is eBPF.
        let (best, up) = if p.contains("probe=\"gpu_xid\"") {
            ("kmsg", " 1")
        } else if p.contains("probe=\"gpu_state\"") || p.contains("probe=\"infiniband\"") {
            ("off", " 0")
        } else {
            ("ebpf", " 1")
        };
        assert!(
            p.contains(&format!("mode=\"{best}\"")) && p.ends_with(up),
            "with {caps} a probe did not reach its best mode: {p}\n{log}"
        );
    }
    assert!(!log.contains("WARN"), "{log}");
    assert!(log.contains("dropped every capability"), "{log}");
    eprintln!("under {caps}: {}", probes.join("; "));

    // An upgrade (here: the same package again) keeps an edited conffile.
    let conf = "/etc/nodewatch/config.yaml";
    let edited = format!(
        "{}\n# edited by the operator\n",
        std::fs::read_to_string(conf).unwrap()
    );
    std::fs::write(conf, &edited).unwrap();
    ok("dpkg", &["-i", deb]);
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited);

    // Remove keeps the conffiles, purge removes them and the state.
    ok("dpkg", &["--remove", "nodewatch"]);
    assert!(!std::path::Path::new("/usr/bin/nodewatch").exists());
    assert!(std::path::Path::new(conf).exists());
    ok("dpkg", &["--purge", "nodewatch"]);
    assert!(!std::path::Path::new("/etc/nodewatch").exists());
    assert!(!std::path::Path::new("/var/lib/nodewatch").exists());
}
