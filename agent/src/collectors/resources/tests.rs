//! Parsing and collection against fixture proc trees.

use std::path::PathBuf;

use super::*;

const STAT: &str = "cpu  100 20 30 800 50 0 10 0 5 0\ncpu0 50 10 15 400 25 0 5 0 0 0\nintr 1 2 3\n";
const STAT_LATER: &str = "cpu  160 20 50 900 50 0 10 0 5 0\n";
const MEMINFO: &str = "MemTotal:       16000 kB\nMemFree:         1000 kB\nMemAvailable:   12000 kB\nBuffers:           10 kB\n";
const PSI_CPU: &str = "some avg10=4.16 avg60=4.97 avg300=7.44 total=169612020\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
const PSI_IO: &str = "some avg10=12.50 avg60=1.00 avg300=0.10 total=5\nfull avg10=10.25 avg60=0.90 avg300=0.05 total=4\n";

#[test]
fn parses_cpu_memory_and_pressure() {
    let a = cpu_times(STAT).unwrap();
    assert_eq!(
        a,
        CpuTimes {
            busy: 160,
            total: 1010
        }
    );
    let b = cpu_times(STAT_LATER).unwrap();
    assert_eq!(cpu_usage(a, b), Some(80.0 / 180.0));
    assert_eq!(cpu_usage(a, a), None, "no time passed");
    assert_eq!(cpu_usage(b, a), None, "counters went backwards");
    assert_eq!(cpu_times("intr 1\n"), None);
    assert_eq!(cpu_times("cpu  1 2 x\n"), None);
    assert_eq!(memory_used(MEMINFO), Some(0.25));
    assert_eq!(memory_used("MemTotal: 10 kB\n"), None);
    assert_eq!(memory_used("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
    assert_eq!(pressure(PSI_CPU), vec![("some", 4.16), ("full", 0.0)]);
    assert_eq!(pressure("some avg10=oops\nweird\n"), vec![]);
}

struct Fixture(PathBuf);

impl Fixture {
    fn new(tag: &str, psi: bool) -> Self {
        let root = std::env::temp_dir().join(format!("nw-proc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::write(root.join("stat"), STAT).unwrap();
        std::fs::write(root.join("meminfo"), MEMINFO).unwrap();
        std::fs::write(root.join("loadavg"), "1.25 0.50 0.10 2/300 1234\n").unwrap();
        std::fs::write(
            root.join("self/mountinfo"),
            "22 1 253:1 / / rw - ext4 /dev/vda1 rw\n\
             23 22 0:5 / /proc rw - proc proc rw\n\
             24 22 253:9 / /nonexistent-nodewatch-mount rw - ext4 /dev/vdz rw\n",
        )
        .unwrap();
        if psi {
            std::fs::create_dir_all(root.join("pressure")).unwrap();
            std::fs::write(root.join("pressure/cpu"), PSI_CPU).unwrap();
            std::fs::write(root.join("pressure/io"), PSI_IO).unwrap();
        }
        Self(root)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn collect(fixture: &Fixture) -> (Resources, Store) {
    let mut registry = Store::new();
    let mut r = Resources::new(&ResourcesConfig::default(), &fixture.0, &mut registry);
    r.collect().unwrap();
    (r, registry)
}

fn text(registry: &Store) -> String {
    registry.encode_openmetrics()
}

#[test]
fn collects_a_fixture_tree_with_psi() {
    let f = Fixture::new("psi", true);
    let (mut r, registry) = collect(&f);
    let t = text(&registry);
    assert!(t.contains("nodewatch_memory_used_ratio 0.25"), "{t}");
    assert!(t.contains("nodewatch_load1 1.25"), "{t}");
    assert!(
        t.contains("nodewatch_pressure_ratio{resource=\"io\",kind=\"full\"} 0.1025"),
        "{t}"
    );
    assert!(
        t.contains("nodewatch_pressure_ratio{resource=\"cpu\",kind=\"some\"} 0.0416"),
        "{t}"
    );
    assert!(
        !t.contains("resource=\"memory\""),
        "no file, no series: {t}"
    );
    assert!(t.contains("nodewatch_disk_used_ratio{mount=\"/\"}"), "{t}");
    assert!(
        !t.contains("nonexistent"),
        "a failed statvfs gives no series: {t}"
    );
    assert!(!t.contains("mount=\"/proc\""), "{t}");
    // CPU usage needs two readings.
    assert!(t.contains("nodewatch_cpu_usage_ratio 0.0\n"), "{t}");
    std::fs::write(f.0.join("stat"), STAT_LATER).unwrap();
    r.collect().unwrap();
    let t = text(&registry);
    assert!(
        t.contains(&format!("nodewatch_cpu_usage_ratio {}\n", 80.0 / 180.0)),
        "{t}"
    );
}

#[test]
fn a_kernel_without_psi_has_no_pressure_series() {
    let f = Fixture::new("nopsi", false);
    let (_, registry) = collect(&f);
    let t = text(&registry);
    assert!(!t.contains("nodewatch_pressure_ratio{"), "{t}");
    assert!(t.contains("nodewatch_memory_used_ratio 0.25"), "{t}");
}

#[test]
fn vanished_files_are_errors_not_panics() {
    let f = Fixture::new("gone", true);
    let (mut r, registry) = collect(&f);
    std::fs::remove_file(f.0.join("meminfo")).unwrap();
    std::fs::write(f.0.join("loadavg"), "garbage").unwrap();
    let e = r.collect().unwrap_err().to_string();
    assert!(e.contains("meminfo"), "{e}");
    // The rest was still collected.
    assert!(text(&registry).contains("nodewatch_disk_used_ratio{mount=\"/\"}"));
}
