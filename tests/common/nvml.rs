//! The fake NVML: `tests/fixtures/fake_nvml.c` built into a `libnvidia-ml.so.1` of the test's
//! own that answers from a state file the test rewrites while the agent runs (the same idea
//! as the FUSE slow device). A test that uses it first checks `have_tool(test, "cc")`.

use std::{
    collections::BTreeSet,
    fmt::Write,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use super::TempDir;

/// The fixture's source.
pub const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/fake_nvml.c");

/// One fake GPU: what its NVML calls answer (`None`: not supported).
#[derive(Debug, Clone)]
pub struct Gpu {
    pub name: String,
    pub uuid: String,
    pub temp: Option<u32>,
    pub power_mw: Option<u32>,
    pub util_gpu: Option<u32>,
    pub mem_total: Option<u64>,
    pub mem_used: Option<u64>,
    pub ecc_corrected: Option<u64>,
    pub ecc_uncorrected: Option<u64>,
    pub clocks_event: Option<u64>,
    /// Correctable, uncorrectable, pending, failed.
    pub remapped: Option<(u32, u32, bool, bool)>,
    pub pcie_replays: Option<u32>,
    /// Every call about it returns NVML_ERROR_GPU_IS_LOST.
    pub lost: bool,
    /// Every call about it returns NVML_ERROR_RESET_REQUIRED.
    pub reset_required: bool,
    /// Its PCI address, `dddd:bb:dd.f` ([`fresh_domain`] keeps each test's apart).
    pub pci: String,
    pub persistence: Option<bool>,
    /// Width, maximum width, generation, maximum generation.
    pub pcie_link: Option<(u32, u32, u32, u32)>,
    /// Its NVLinks: down, and the replay, recovery, crc_flit, crc_data counts.
    pub nvlinks: Option<Vec<(bool, [u64; 4])>>,
    /// Fabric state (1 not started, 2 in progress, 3 completed), status (an NVML return
    /// code), health mask.
    pub fabric: Option<(u32, u32, u32)>,
    /// `(call, milliseconds)`: that call sleeps first (temperature, power, ...).
    pub block: Vec<(&'static str, u64)>,
    /// `(call, NVML return code)`: that call fails.
    pub error: Vec<(&'static str, u32)>,
}

impl Gpu {
    /// An H100 with every value given; `n` varies them.
    pub fn h100(n: u32) -> Self {
        Self {
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: format!("GPU-{n:08x}-1c2d-3e4f-5a6b-7c8d9e0f1a2b"),
            temp: Some(40 + n),
            power_mw: Some(71_234 + n * 1000),
            util_gpu: Some(37 + n),
            mem_total: Some(85_520_809_984),
            mem_used: Some(1_048_576 * (n as u64 + 1)),
            ecc_corrected: Some(3 + n as u64),
            ecc_uncorrected: Some(0),
            clocks_event: Some(0x1),
            remapped: Some((n, 0, false, false)),
            pcie_replays: Some(7 + n),
            lost: false,
            reset_required: false,
            pci: format!("{:04x}:{:02x}:00.0", fresh_domain(), 0x19 + n),
            persistence: Some(true),
            pcie_link: Some((16, 16, 5, 5)),
            nvlinks: Some(vec![(false, [0, 0, 0, 0]); 4]),
            fabric: Some((3, 0, 0)),
            block: Vec::new(),
            error: Vec::new(),
        }
    }
}

/// The NVLink error counter types, in the order of [`Gpu::nvlinks`].
pub const NVLINK_ERROR_TYPES: [&str; 4] = ["replay", "recovery", "crc_flit", "crc_data"];

/// A PCI domain no earlier line of the kernel log names, probably: the kernel log keeps the
/// Xid lines of every earlier test since boot and the agent reads it from its start, so each
/// fake GPU gets a domain of its own (real machines use domain 0000 and a few others).
pub fn fresh_domain() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let seed = (std::process::id() ^ nanos).wrapping_mul(2_654_435_761);
    0x1000 + (seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) * 0x111)) % 0xe000
}

/// The bus id of `pci` (`dddd:bb:dd.f`) as the driver's log writes it: `dddd:bb:dd`.
pub fn log_bus_id(pci: &str) -> &str {
    pci.split_once('.').map_or(pci, |(a, _)| a)
}

/// The whole state: driver, GPUs, and what init and count do.
#[derive(Debug, Clone)]
pub struct State {
    pub driver: String,
    pub gpus: Vec<Gpu>,
    /// NVML's count, when it differs from `gpus.len()` (a GPU gone from the driver).
    pub count: Option<u32>,
    pub init_block_ms: u64,
    pub init_error: u32,
    /// Log every call's start and end to `<state>.calls`.
    pub call_log: bool,
}

impl State {
    pub fn new(gpus: Vec<Gpu>) -> Self {
        Self {
            driver: "550.54.15".into(),
            gpus,
            count: None,
            init_block_ms: 0,
            init_error: 0,
            call_log: false,
        }
    }

    /// The state file's text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let count = self.count.unwrap_or(self.gpus.len() as u32);
        let _ = writeln!(s, "driver {}\ncount {count}", self.driver);
        let _ = writeln!(
            s,
            "init_block_ms {}\ninit_error {}",
            self.init_block_ms, self.init_error
        );
        let _ = writeln!(s, "call_log {}", u8::from(self.call_log));
        for (i, g) in self.gpus.iter().enumerate() {
            let mut kv = |k: &str, v: String| {
                let _ = writeln!(s, "{i}.{k} {v}");
            };
            kv("name", g.name.clone());
            kv("uuid", g.uuid.clone());
            let fields = [
                ("temp", g.temp.map(u64::from)),
                ("power_mw", g.power_mw.map(u64::from)),
                ("util_gpu", g.util_gpu.map(u64::from)),
                ("mem_total", g.mem_total),
                ("mem_used", g.mem_used),
                ("ecc_corrected", g.ecc_corrected),
                ("ecc_uncorrected", g.ecc_uncorrected),
                ("clocks_event", g.clocks_event),
                ("pcie_replays", g.pcie_replays.map(u64::from)),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    kv(k, v.to_string());
                }
            }
            if let Some((c, u, p, f)) = g.remapped {
                kv("remap_correctable", c.to_string());
                kv("remap_uncorrectable", u.to_string());
                kv("remap_pending", u8::from(p).to_string());
                kv("remap_failed", u8::from(f).to_string());
            }
            if g.lost {
                kv("lost", "1".into());
            }
            if g.reset_required {
                kv("reset_required", "1".into());
            }
            kv("pci", g.pci.clone());
            if let Some(p) = g.persistence {
                kv("persistence", u8::from(p).to_string());
            }
            if let Some((w, wm, ge, gm)) = g.pcie_link {
                kv("pcie_width", w.to_string());
                kv("pcie_width_max", wm.to_string());
                kv("pcie_gen", ge.to_string());
                kv("pcie_gen_max", gm.to_string());
            }
            if let Some(links) = &g.nvlinks {
                kv("nvlinks", links.len().to_string());
                for (l, (down, errors)) in links.iter().enumerate() {
                    kv(&format!("nvlink.{l}.down"), u8::from(*down).to_string());
                    for (name, v) in NVLINK_ERROR_TYPES.iter().zip(errors) {
                        kv(&format!("nvlink.{l}.{name}"), v.to_string());
                    }
                }
            }
            if let Some((state, status, health)) = g.fabric {
                kv("fabric_state", state.to_string());
                kv("fabric_status", status.to_string());
                kv("fabric_health", format!("{health:#x}"));
            }
            for (call, ms) in &g.block {
                kv(&format!("block.{call}"), ms.to_string());
            }
            for (call, code) in &g.error {
                kv(&format!("error.{call}"), code.to_string());
            }
        }
        s
    }
}

/// A built fake library and its state file.
pub struct FakeNvml {
    pub lib: PathBuf,
    pub state: PathBuf,
}

impl FakeNvml {
    /// Builds the fixture into `dir/nvml/libnvidia-ml.so.1`, reading `dir/nvml/state`, and
    /// writes `state` there.
    pub fn build(dir: &TempDir, state: &State) -> Self {
        let folder = dir.0.join("nvml");
        std::fs::create_dir_all(&folder).unwrap();
        let fake = Self {
            lib: folder.join("libnvidia-ml.so.1"),
            state: folder.join("state"),
        };
        fake.set(state);
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror"])
            .arg(format!("-DFAKE_NVML_STATE=\"{}\"", fake.state.display()))
            .arg("-o")
            .arg(&fake.lib)
            .arg(SOURCE)
            .output()
            .expect("run cc (cargo xtask setup installs gcc)");
        assert!(
            out.status.success(),
            "cc {SOURCE}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fake
    }

    /// Replaces the state at once: the library reads either the old or the new file.
    pub fn set(&self, state: &State) {
        let tmp = self.state.with_extension("tmp");
        std::fs::write(&tmp, state.text()).unwrap();
        std::fs::rename(&tmp, &self.state).unwrap();
    }

    /// `probes.gpu_state` for this library.
    pub fn config(&self, expected: Option<u32>) -> String {
        let expected = expected.map_or_else(|| "null".to_string(), |n| n.to_string());
        format!(
            "  gpu_state: {{ library: \"{}\", expected_gpus: {expected} }}\n",
            self.lib.display()
        )
    }

    /// The call log (`<CLOCK_MONOTONIC ns> start|end <call> <gpu>` lines), when enabled.
    pub fn calls(&self) -> Vec<(u64, String, String, i32)> {
        let text =
            std::fs::read_to_string(format!("{}.calls", self.state.display())).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((
                    w.next()?.parse().ok()?,
                    w.next()?.to_string(),
                    w.next()?.to_string(),
                    w.next()?.parse().ok()?,
                ))
            })
            .collect()
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of the call log.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Waits until `f` holds, polling every 50 ms; how long it took.
pub fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The `nodewatch_gpu_*` series of `text` (not the ioctl and Xid ones, nor the per-call error
/// counts) with their values, compared as numbers (the exporter writes `1.0` where Rust
/// writes `1`).
pub fn gpu_lines(text: &str) -> BTreeSet<(String, u64)> {
    text.lines()
        .filter(|l| l.starts_with("nodewatch_gpu_"))
        .filter(|l| {
            !["ioctl", "xid", "sxid", "nvml_errors", "nvml_timeouts"]
                .iter()
                .any(|x| l.starts_with(&format!("nodewatch_gpu_{x}")))
        })
        .map(parse_line)
        .collect()
}

/// A sample line as (series, the bits of its value).
pub fn parse_line(l: &str) -> (String, u64) {
    let (series, value) = l.rsplit_once(' ').unwrap();
    let v: f64 = value.parse().unwrap_or_else(|_| panic!("{l}"));
    (series.to_string(), v.to_bits())
}

/// Every line the agent must export for `g` as GPU `i`.
pub fn expected_lines(i: usize, g: &Gpu, driver: &str) -> Vec<String> {
    let l = format!("gpu=\"{i}\",uuid=\"{}\"", g.uuid);
    let mut out = vec![format!(
        "nodewatch_gpu_info{{{l},name=\"{}\",driver=\"{driver}\"}} 1",
        g.name
    )];
    let mut one = |metric: &str, extra: &str, v: String| {
        out.push(format!("nodewatch_gpu_{metric}{{{l}{extra}}} {v}"));
    };
    if let Some(t) = g.temp {
        one("temperature_celsius", "", t.to_string());
    }
    if let Some(p) = g.power_mw {
        one("power_watts", "", (f64::from(p) / 1000.0).to_string());
    }
    if let Some(u) = g.util_gpu {
        one("utilization_ratio", "", (f64::from(u) / 100.0).to_string());
    }
    if let (Some(t), Some(u)) = (g.mem_total, g.mem_used) {
        one("memory_used_bytes", "", u.to_string());
        one("memory_total_bytes", "", t.to_string());
    }
    if let Some(c) = g.ecc_corrected {
        one("ecc_errors_total", ",type=\"corrected\"", c.to_string());
    }
    if let Some(u) = g.ecc_uncorrected {
        one("ecc_errors_total", ",type=\"uncorrected\"", u.to_string());
    }
    if let Some(bits) = g.clocks_event {
        for (bit, reason) in [
            (0x1, "gpu_idle"),
            (0x2, "applications_clocks_setting"),
            (0x4, "sw_power_cap"),
            (0x8, "hw_slowdown"),
            (0x10, "sync_boost"),
            (0x20, "sw_thermal"),
            (0x40, "hw_thermal"),
            (0x80, "hw_power_brake"),
            (0x100, "display_clock_setting"),
        ] {
            let on = u8::from(bits & bit != 0);
            one(
                "clock_event",
                &format!(",reason=\"{reason}\""),
                on.to_string(),
            );
        }
    }
    if let Some((c, u, p, f)) = g.remapped {
        one("remapped_rows", ",kind=\"correctable\"", c.to_string());
        one("remapped_rows", ",kind=\"uncorrectable\"", u.to_string());
        one("row_remap_pending", "", u8::from(p).to_string());
        one("row_remap_failed", "", u8::from(f).to_string());
    }
    if let Some(n) = g.pcie_replays {
        one("pcie_replays_total", "", n.to_string());
    }
    if let Some(p) = g.persistence {
        one("persistence_mode", "", u8::from(p).to_string());
    }
    if let Some((w, wm, ge, gm)) = g.pcie_link {
        one("pcie_link_width", "", w.to_string());
        one("pcie_link_width_max", "", wm.to_string());
        one("pcie_link_generation", "", ge.to_string());
        one("pcie_link_generation_max", "", gm.to_string());
    }
    for (l, (down, errors)) in g.nvlinks.iter().flatten().enumerate() {
        one(
            "nvlink_up",
            &format!(",link=\"{l}\""),
            u8::from(!down).to_string(),
        );
        for (t, v) in NVLINK_ERROR_TYPES.iter().zip(errors) {
            one(
                "nvlink_errors_total",
                &format!(",link=\"{l}\",type=\"{t}\""),
                v.to_string(),
            );
        }
    }
    if let Some((state, status, health)) = g.fabric {
        let name = ["not_supported", "not_started", "in_progress", "completed"]
            .get(state as usize)
            .copied()
            .unwrap_or("not_supported");
        one("fabric_state", &format!(",state=\"{name}\""), "1".into());
        let faults =
            [0, 2, 4, 6].iter().any(|s| (health >> s) & 3 == 1) || (health >> 8) & 0xf >= 2;
        let healthy = state == 3 && status == 0 && !faults;
        one("fabric_healthy", "", u8::from(healthy).to_string());
    }
    one("needs_reset", "", "0".into());
    out
}
