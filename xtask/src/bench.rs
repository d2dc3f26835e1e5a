//! `cargo xtask bench`: every benchmark, written into BENCHMARKS.md — the GPU ioctl probe's
//! cost per ioctl (this file), the TCP probes' cost per event (`tcp`), the agent's footprint
//! next to node_exporter (`footprint`), `/metrics` latency (`scrape`), local scrape's tick
//! cost per 1 000 scraped series and memory (`local_scrape`), the fault-injection
//! scoreboard, the same fault through Prometheus + Alertmanager, and the healthy run
//! (`scoreboard`).
//!
//! The ioctl part:
//! A C loop times `ioctl(TCGETS)` on /dev/null (the driver answers at once, so the figure is
//! the syscall path plus whatever is attached to it) with nothing attached; with empty
//! programs (return 0) on the two ioctl tracepoints, attached by the loop itself — the floor
//! every eBPF tool on these tracepoints pays; with bpftrace's empty probes (bpftrace's
//! programs return 1, which makes the kernel also submit each record to perf: dearer); with
//! nodewatch watching another device, and watching /dev/null itself; and with a bpftrace
//! script doing the same timing. The scenarios run in turn, several passes, so a machine
//! whose speed drifts affects all of them alike; medians are quoted.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{root_dir, sh, step};

mod floor;
mod footprint;
mod gpu_state;
mod local_scrape;
mod report;
mod scoreboard;
mod scrape;
mod soak;
mod tcp;
mod tick;
pub(crate) mod util;

const LOOP_C: &str = include_str!("ioctl_loop.c");
/// Two figures of one round or one reading.
type Pair = (f64, f64);
const CALLS: &str = "200000";
const ROUNDS: &str = "3";
const PASSES: usize = 7;

/// bpftrace probes that do nothing.
const EMPTY_BT: &str =
    "tracepoint:syscalls:sys_enter_ioctl {}\ntracepoint:syscalls:sys_exit_ioctl {}\n";

/// bpftrace doing what nodewatch does for one device: resolve the fd to its inode, keep the
/// device's calls, time them per thread, add them to a log2 histogram.
fn timing_bt(rdev: u32) -> String {
    format!(
        "tracepoint:syscalls:sys_enter_ioctl
{{
  $fdt = curtask->files->fdt;
  if (args->fd < $fdt->max_fds) {{
    $file = *($fdt->fd + args->fd);
    if ($file->f_inode->i_rdev == {rdev}) {{ @start[tid] = nsecs; }}
  }}
}}
tracepoint:syscalls:sys_exit_ioctl /@start[tid]/
{{
  @ns = hist(nsecs - @start[tid]);
  delete(@start[tid]);
}}
"
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Bare,
    Floor,
    BpftraceEmpty,
    OtherMajor,
    SameMajor,
    Watched,
    WatchedCompat,
    Bpftrace,
}

impl Scenario {
    const ALL: [Scenario; 8] = [
        Scenario::Bare,
        Scenario::Floor,
        Scenario::BpftraceEmpty,
        Scenario::OtherMajor,
        Scenario::SameMajor,
        Scenario::Watched,
        Scenario::WatchedCompat,
        Scenario::Bpftrace,
    ];

    fn describe(self) -> &'static str {
        match self {
            Scenario::Bare => "no probe",
            Scenario::Floor => "empty programs (return 0) on both tracepoints: the floor",
            Scenario::BpftraceEmpty => "bpftrace, empty probes on both tracepoints",
            Scenario::OtherMajor => "nodewatch, unwatched device (watching /dev/ptmx, 5:2)",
            Scenario::SameMajor => {
                "nodewatch, unwatched device of a watched major (watching /dev/zero, 1:5)"
            }
            Scenario::Watched => "nodewatch, watched device (watching /dev/null, 1:3)",
            Scenario::WatchedCompat => {
                "nodewatch, watched device, fallback fd walk (NODEWATCH_FD_WALK=probe_read)"
            }
            Scenario::Bpftrace => "bpftrace timing /dev/null's ioctls (same work)",
        }
    }

    fn watch(self) -> Option<&'static str> {
        match self {
            Scenario::OtherMajor => Some("/dev/ptmx"),
            Scenario::SameMajor => Some("/dev/zero"),
            Scenario::Watched | Scenario::WatchedCompat => Some("/dev/null"),
            _ => None,
        }
    }
}

/// Something attached for one scenario; detached on drop.
struct Attached {
    child: Option<Child>,
    agent: Option<SocketAddr>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            // SIGINT: both bpftrace and nodewatch detach and exit cleanly on it.
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn bench() -> Result<()> {
    crate::setup()?;
    if !crate::is_root() {
        bail!("the benchmark loads eBPF programs: run `cargo xtask bench` as root");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root_dir().join("target"));
    // NODEWATCH_BENCH_BIN=path runs a binary already built (for development: the in-kernel
    // figures do not depend on the agent's build profile, its eBPF is always optimized).
    let nodewatch = match std::env::var_os("NODEWATCH_BENCH_BIN") {
        Some(bin) => PathBuf::from(bin).canonicalize()?,
        None => {
            step("bench: cargo build --release -p nodewatch");
            sh("cargo", ["build", "--release", "-p", "nodewatch"])?;
            target.join("release/nodewatch")
        }
    };
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("ioctl_loop.c");
    std::fs::write(&src, LOOP_C)?;
    let looper = dir.join("ioctl_loop");
    step("bench: cc -O2 ioctl_loop.c");
    sh(
        "cc",
        [
            "-O2".as_ref(),
            "-o".as_ref(),
            looper.as_os_str(),
            src.as_os_str(),
        ],
    )?;
    let null = std::fs::metadata("/dev/null")?.rdev();
    // The kernel's dev_t (major << 20 | minor), not glibc's encoding.
    let null_kdev = (libc_major(null) << 20) | libc_minor(null);

    // NODEWATCH_BENCH_ONLY=tcp,footprint,... runs those sections alone and prints them
    // instead of rewriting BENCHMARKS.md (for development).
    let only = std::env::var("NODEWATCH_BENCH_ONLY").ok();
    let want = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|s| s == name))
    };
    let mut md = header();
    if want("ioctl") {
        md.push_str(IOCTL_METHOD);
        md.push_str(&section("ioctl", || {
            ioctl(&nodewatch, &dir, &looper, null_kdev)
        }));
    }
    if want("floor") {
        md.push_str(&section("floor", || {
            floor::section(&nodewatch, &dir, &looper, null_kdev)
        }));
    }
    if want("tcp") {
        md.push_str(&section("tcp", || tcp::section(&nodewatch, &dir)));
    }
    if want("footprint") {
        md.push_str(&section("footprint", || {
            footprint::section(&nodewatch, &looper, &dir)
        }));
    }
    if want("tick") {
        md.push_str(&section("tick", || tick::section(&nodewatch, &dir)));
    }
    if want("gpu_state") {
        md.push_str(&section("gpu_state", || {
            gpu_state::section(&nodewatch, &dir)
        }));
    }
    if want("scrape") {
        md.push_str(&section("scrape", || scrape::section(&nodewatch, &dir)));
    }
    if want("local_scrape") {
        md.push_str(&section("local_scrape", || {
            local_scrape::section(&nodewatch, &dir)
        }));
    }
    if want("scoreboard") {
        md.push_str(&section("scoreboard", || scoreboard::section(&dir)));
    }
    if want("storm") {
        md.push_str(&section("storm", || scoreboard::storm(&dir)));
    }
    if want("pipeline") {
        md.push_str(&section("pipeline", || {
            scoreboard::pipeline(&nodewatch, &dir)
        }));
    }
    if want("soak") {
        md.push_str(&section("soak", || {
            soak::section(&nodewatch, &looper, &dir)
        }));
    }
    if want("healthy") {
        md.push_str(&section("healthy", scoreboard::healthy));
    }
    if only.is_some() {
        println!("{md}");
        return Ok(());
    }
    md.push_str(RECORDED);
    let path = root_dir().join("BENCHMARKS.md");
    std::fs::write(&path, md)?;
    step(&format!("bench: wrote {}", path.display()));
    Ok(())
}

/// Figures measured once by hand (a before/after that one run of the bench cannot make),
/// carried over into every rewrite of BENCHMARKS.md.
const RECORDED: &str = include_str!("bench_recorded.md");

/// A section's Markdown, or, when it failed, a paragraph saying so: one broken section does not
/// lose the others' figures.
fn section(name: &str, f: impl FnOnce() -> Result<String>) -> String {
    f().unwrap_or_else(|e| {
        eprintln!("xtask: bench section {name} failed: {e:#}");
        format!("\n## {name}\n\n**This section failed in this run**: {e:#}\n")
    })
}

/// The ioctl cost: every scenario in turn, several passes, then the in-kernel pass.
fn ioctl(nodewatch: &Path, dir: &Path, looper: &Path, null_kdev: u32) -> Result<String> {
    // results[scenario][pass]: (ns per ioctl, ns per getppid) of each round.
    let mut results: Vec<Vec<Vec<(f64, f64)>>> = vec![Vec::new(); Scenario::ALL.len()];
    for pass in 1..=PASSES {
        for (i, &s) in Scenario::ALL.iter().enumerate() {
            step(&format!("bench pass {pass}/{PASSES}: {}", s.describe()));
            let attached = attach(s, nodewatch, dir, null_kdev)?;
            let (rounds, _) = run_loop(looper, s == Scenario::Floor)?;
            if let (Scenario::Watched | Scenario::WatchedCompat, Some(addr)) = (s, attached.agent) {
                check_counted(addr)?;
            }
            drop(attached);
            results[i].push(rounds);
        }
    }
    // One more pass with the kernel's run-time accounting on: the programs' own time per
    // ioctl, which other work on the machine disturbs far less than the loop's wall time.
    let mut in_kernel = Vec::new();
    {
        let _stats = BpfStats::enable().context("enable kernel.bpf_stats_enabled")?;
        for s in [
            Scenario::Floor,
            Scenario::Watched,
            Scenario::WatchedCompat,
            Scenario::Bpftrace,
        ] {
            step(&format!("bench, program run time: {}", s.describe()));
            let attached = attach(s, nodewatch, dir, null_kdev)?;
            let (_, own) = run_loop(looper, s == Scenario::Floor)?;
            let (ns, cnt) = match (own, attached.child.as_ref()) {
                (Some(own), _) => own,
                (None, Some(c)) => prog_stats(c.id()),
                (None, None) => (0.0, 0.0),
            };
            drop(attached);
            // Two programs run per ioctl.
            in_kernel.push((s.describe(), if cnt > 0.0 { 2.0 * ns / cnt } else { 0.0 }));
        }
    }
    Ok(report::markdown(&results, &in_kernel))
}

/// The top of BENCHMARKS.md: how to reproduce, and on what it ran.
fn header() -> String {
    let commit = crate::output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let dirty = crate::output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.trim().is_empty());
    let date = crate::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let bt = crate::output("bpftrace", &["--version"]).unwrap_or_default();
    let ne = Command::new("prometheus-node-exporter")
        .arg("--version")
        .output()
        .map(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            t.lines().next().unwrap_or("").to_string()
        })
        .unwrap_or_default();
    format!(
        "# Benchmarks\n\nEverything below is written by one command, as root, from the repository root:\n\n\
         ```sh\ncargo xtask bench\n```\n\n\
         It builds the agent in release mode and runs every section in turn on the same machine, so \
         every comparison is between figures measured minutes apart; ratios, not absolute times, \
         are what carries over to other machines. Shorter runs for development: \
         `NODEWATCH_BENCH_HEALTHY_SECS` (default 600), `NODEWATCH_BENCH_IDLE_SECS` (60), \
         `NODEWATCH_BENCH_LOAD_SECS` (20), `NODEWATCH_BENCH_SCRAPES` (1000), \
         `NODEWATCH_BENCH_CONNS` (20000), `NODEWATCH_BENCH_GPU_SECS` (300), \
         `NODEWATCH_BENCH_PACKETS` (20000), `NODEWATCH_BENCH_FLOOR_CALLS` (500000), \
         `NODEWATCH_BENCH_STORM_RUNS` (10), `NODEWATCH_BENCH_LOCAL_SCRAPE_SECS` (30); `NODEWATCH_BENCH_BIN` runs a binary already built \
         instead of building the release one.\n\n\
         This run: commit {}{}, {}. {} Load average at the end: {}. {}; {}.\n",
        commit.trim(),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        date.trim(),
        report::machine(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        bt.trim(),
        ne.trim()
    )
}

const IOCTL_METHOD: &str = "
## GPU ioctl probe: cost per ioctl

A small C loop (`xtask/src/ioctl_loop.c`, `cc -O2`) times `ioctl(fd, TCGETS)` on `/dev/null` —
the driver answers `-ENOTTY` at once, so the figure is the syscall path plus whatever is
attached to it — then `getppid()`, a syscall nobody traces. Scenarios:

| scenario | what is attached |
|---|---|
| no probe | nothing |
| floor | two-instruction programs (`r0 = 0; exit`) on `syscalls:sys_enter_ioctl` and `sys_exit_ioctl`, attached by the loop itself the way nodewatch attaches its own: what any eBPF program on these tracepoints costs before doing anything |
| bpftrace, empty probes | `tracepoint:syscalls:sys_enter_ioctl {}` and the exit one; bpftrace's programs return 1, which makes the kernel also hand each record to perf, so they cost more than the floor, and vary between runs |
| nodewatch, unwatched | the agent watching `/dev/ptmx` (another major: the call is dropped after one array lookup), or `/dev/zero` (same major as `/dev/null`, other minor: dropped after the minor table) |
| nodewatch, watched | the agent watching `/dev/null` (1:3): every call is timed into the histogram |
| nodewatch, watched, fallback | the same with `NODEWATCH_FD_WALK=probe_read`: the entry program for kernels that refuse BTF-typed pointers in tracepoint programs |
| bpftrace timing | a bpftrace script doing the same work: resolve the fd to its inode, keep `/dev/null`'s calls, time them per thread, log2 histogram (`xtask/src/bench.rs`, `timing_bt`) |

The scenarios run one after another, several passes; \"above the floor\" is the median over
passes of (scenario − floor) in the same pass, because this VM is shared and its speed drifts.
A last pass with `kernel.bpf_stats_enabled=1` reads the programs' own run time from the kernel
(`run_time_ns / run_cnt`), which other load disturbs far less. The watched runs also check that
the agent's `nodewatch_gpu_ioctl_duration_seconds_count` covers every call the loop made.
Target: ≤ 150 ns per watched call above the floor, and no slower than bpftrace doing the same.
";

fn attach(s: Scenario, nodewatch: &Path, dir: &Path, null_kdev: u32) -> Result<Attached> {
    let bt = |script: String| -> Result<Attached> {
        let path = dir.join("probe.bt");
        std::fs::write(&path, script)?;
        let child = Command::new("bpftrace")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start bpftrace")?;
        let mut a = Attached {
            child: Some(child),
            agent: None,
        };
        // bpftrace prints "Attaching N probes..." once the programs are in.
        let out = a.child.as_mut().and_then(|c| c.stdout.as_mut()).unwrap();
        let mut buf = [0u8; 64];
        let n = out.read(&mut buf)?;
        if !String::from_utf8_lossy(&buf[..n]).contains("Attaching") {
            bail!("bpftrace did not attach");
        }
        thread::sleep(Duration::from_millis(500));
        Ok(a)
    };
    match s {
        Scenario::Bare => Ok(Attached {
            child: None,
            agent: None,
        }),
        // The loop attaches the floor's programs itself.
        Scenario::Floor => Ok(Attached {
            child: None,
            agent: None,
        }),
        Scenario::BpftraceEmpty => bt(EMPTY_BT.to_string()),
        Scenario::Bpftrace => bt(timing_bt(null_kdev)),
        _ => {
            let watch = s.watch().expect("a nodewatch scenario");
            let cfg = dir.join("nodewatch.yaml");
            std::fs::write(
                &cfg,
                format!(
                    "interval: 1s\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  gpu_xid: {{ enabled: false }}\n  gpu_ioctl: {{ devices: [{watch}] }}\n"
                ),
            )?;
            let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let log = dir.join("nodewatch.log");
            let walk = if s == Scenario::WatchedCompat {
                "probe_read"
            } else {
                "btf"
            };
            let child = Command::new(nodewatch)
                .env("NODEWATCH_FD_WALK", walk)
                .args(["run", "--config"])
                .arg(&cfg)
                .args(["--listen", &addr.to_string()])
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .context("start nodewatch")?;
            let a = Attached {
                child: Some(child),
                agent: Some(addr),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while !std::fs::read_to_string(&log)?.contains("programs attached") {
                if Instant::now() > deadline {
                    bail!(
                        "nodewatch did not attach:\n{}",
                        std::fs::read_to_string(&log)?
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
            thread::sleep(Duration::from_millis(500));
            Ok(a)
        }
    }
}

/// (ns per ioctl, ns per getppid) of each round, and the empty programs' (run_time_ns,
/// run_cnt) when the loop attached them.
fn run_loop(looper: &Path, empty_programs: bool) -> Result<(Vec<Pair>, Option<Pair>)> {
    let out = Command::new(looper)
        .args(["/dev/null", CALLS, ROUNDS])
        .args(empty_programs.then_some("--empty-programs"))
        .output()
        .context("run ioctl_loop")?;
    if !out.status.success() {
        bail!(
            "ioctl_loop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let pair = |l: &str| -> Option<(f64, f64)> {
        let (a, b) = l.split_once(' ')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let rounds = text
        .lines()
        .filter(|l| !l.starts_with("bpf "))
        .filter_map(pair)
        .collect();
    let stats = text
        .lines()
        .find_map(|l| l.strip_prefix("bpf "))
        .and_then(pair);
    Ok((rounds, stats))
}

/// Sums `run_time_ns` and `run_cnt` over the BPF programs process `pid` holds.
fn prog_stats(pid: u32) -> (f64, f64) {
    let (mut ns, mut cnt) = (0.0, 0.0);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0.0, 0.0);
    };
    for info in fds.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()) {
        if !info.contains("prog_type:") {
            continue;
        }
        for l in info.lines() {
            let field = |name: &str| l.strip_prefix(name)?.trim().parse::<f64>().ok();
            ns += field("run_time_ns:").unwrap_or(0.0);
            cnt += field("run_cnt:").unwrap_or(0.0);
        }
    }
    (ns, cnt)
}

/// Turns on the kernel's per-program run time accounting; puts the old value back on drop.
pub(crate) struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    pub(crate) fn enable() -> Result<Self> {
        let old = std::fs::read_to_string(Self::PATH)?;
        std::fs::write(Self::PATH, "1")?;
        Ok(Self(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

/// The watched run really timed every call: the agent's count covers the loop's calls.
fn check_counted(addr: SocketAddr) -> Result<()> {
    let calls: u64 = CALLS.parse::<u64>()? * ROUNDS.parse::<u64>()?;
    let series = "nodewatch_gpu_ioctl_duration_seconds_count{device=\"/dev/null\"} ";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(addr)?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let counted: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0);
        if counted >= calls {
            println!("    nodewatch timed {counted} ioctls on /dev/null (loop made {calls}+)");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nodewatch timed {counted} ioctls, the loop made at least {calls}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// glibc's `major()`/`minor()` for a `st_rdev`.
fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}
