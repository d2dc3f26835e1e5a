//! GPU ioctl stalls against a fake slow driver: a FUSE file (tests/fixtures/slow_ioctl.py)
//! whose ioctl sleeps for the milliseconds passed as its argument. The agent's kernel
//! histogram is compared with the durations this process measured around each call.
//!
//! The loss tests (full in-flight map, full stall ring buffer) are in `gpu_ioctl/loss.rs`.

mod common;
#[path = "gpu_ioctl/loss.rs"]
mod loss;

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, TempDir,
    fuse::{FUSEPY, FUSEPY_CHECK, SlowFs, slow_ioctl},
    have_root, have_tool_by, sample, wait_for,
};

/// The kernel's bucket: the smallest b with ns <= 2^b.
fn bucket(ns: u128) -> u32 {
    (0..64).find(|&b| ns <= 1u128 << b).unwrap()
}

/// This thread's name as the kernel has it (`comm`).
fn my_comm() -> String {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .unwrap()
        .trim_end()
        .to_string()
}

/// `(le, cumulative count)` of one device's histogram, `+Inf` as `f64::MAX`.
fn histogram(text: &str, device: &str) -> Vec<(f64, u64)> {
    let tail = format!("\",device=\"{device}\"}} ");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("nodewatch_gpu_ioctl_duration_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once(&tail)?;
            let le = if le == "+Inf" {
                f64::MAX
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// Calls per bucket exponent (non-cumulative) from an exported histogram.
fn per_bucket(h: &[(f64, u64)]) -> Vec<(u32, u64)> {
    let mut prev = 0;
    h.iter()
        .filter_map(|&(le, cum)| {
            let n = cum - prev;
            prev = cum;
            let b = if le == f64::MAX {
                99
            } else {
                (le * 1e9).round().log2().round() as u32
            };
            (n > 0).then_some((b, n))
        })
        .collect()
}

fn count(agent: &Agent, device: &str) -> Option<f64> {
    agent.sample(&format!(
        "nodewatch_gpu_ioctl_duration_seconds_count{{device=\"{device}\"}}"
    ))
}

fn config(globs: &[String], interval: &str) -> String {
    let list: Vec<String> = globs.iter().map(|g| format!("\"{g}\"")).collect();
    format!(
        "interval: {interval}\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  gpu_xid: {{ enabled: false }}\n  gpu_ioctl:\n    devices: [{}]\n    stall_threshold: 1s\n",
        list.join(", ")
    )
}

fn label(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn known_calls_give_exact_histogram_and_stalls_and_unwatched_count_nothing() {
    if !have_root("gpu_ioctl histogram")
        || !have_tool_by("gpu_ioctl histogram", FUSEPY, FUSEPY_CHECK)
    {
        return;
    }
    let dir = TempDir::new("gpu-hist");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = label(&fs.mnt.join("gpu0"));
    let other = label(&fs.mnt.join("other"));
    let agent = Agent::start(&dir, &config(std::slice::from_ref(&gpu), "200ms"));
    assert_eq!(
        agent.sample("nodewatch_probe_up{probe=\"gpu_ioctl\",mode=\"ebpf\"}"),
        Some(1.0),
        "{}",
        agent.log_text()
    );
    assert_eq!(count(&agent, &gpu), Some(0.0), "{}", agent.log_text());

    let (watched, unwatched) = (fs.open("gpu0"), fs.open("other"));
    let mut took = Vec::new();
    for ms in [3; 20].into_iter().chain([1500; 3]) {
        took.push(slow_ioctl(&watched, ms));
    }
    for ms in [3; 10].into_iter().chain([1500]) {
        slow_ioctl(&unwatched, ms);
    }

    let text = wait_for(Duration::from_secs(5), || {
        let text = agent.metrics();
        (sample(
            &text,
            &format!("nodewatch_gpu_ioctl_duration_seconds_count{{device=\"{gpu}\"}}"),
        ) == Some(23.0))
        .then_some(text)
    })
    .expect("timed out: all 23 calls counted");
    let got = per_bucket(&histogram(&text, &gpu));
    // The kernel times from syscall entry to exit, a little less than this process sees; a
    // call within 200 µs above a power of two may land in either bucket.
    let mut want: Vec<(u32, u64)> = Vec::new();
    let mut either = 0;
    for t in &took {
        let (hi, lo) = (bucket(t.as_nanos()), bucket(t.as_nanos() - 200_000));
        if hi != lo {
            either += 1;
            continue;
        }
        // Buckets below 2^10 ns and above 2^36 ns are folded; these calls are not there.
        match want.iter_mut().find(|w| w.0 == hi) {
            Some(w) => w.1 += 1,
            None => want.push((hi, 1)),
        }
    }
    want.sort();
    eprintln!(
        "durations seen here (ms): {:?}\nkernel histogram (log2 ns exponent, calls): {got:?}\nexpected from this side: {want:?} (+{either} on a boundary)",
        took.iter()
            .map(|t| (t.as_secs_f64() * 1e4).round() / 10.0)
            .collect::<Vec<_>>()
    );
    if either == 0 {
        assert_eq!(
            got, want,
            "kernel histogram differs from the measured calls"
        );
    } else {
        for (b, n) in &want {
            let g = got.iter().find(|g| g.0 == *b).map_or(0, |g| g.1);
            assert!(
                g >= *n && g <= n + either,
                "bucket 2^{b} ns: {g} vs {n}+{either}"
            );
        }
    }
    let stalls = format!("nodewatch_gpu_ioctl_stalls_total{{device=\"{gpu}\"}}");
    assert_eq!(sample(&text, &stalls), Some(3.0), "{text}");
    let sum = sample(
        &text,
        &format!("nodewatch_gpu_ioctl_duration_seconds_sum{{device=\"{gpu}\"}}"),
    )
    .unwrap();
    let seen: f64 = took.iter().map(Duration::as_secs_f64).sum();
    assert!(
        sum <= seen && sum > seen - 0.01,
        "sum {sum} vs {seen} seen here"
    );

    // The unwatched file: no series of its own, nothing added to the watched one.
    assert!(!text.contains(&other), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("nodewatch_gpu_ioctl_inflight_stalled{{device=\"{gpu}\"}}")
        ),
        Some(0.0)
    );
    let log = agent.log_text();
    let comm = my_comm();
    let stall_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("GPU ioctl stalled"))
        .collect();
    assert_eq!(stall_lines.len(), 3, "{log}");
    for l in stall_lines {
        assert!(
            l.contains(&format!("device=\"{gpu}\"")) && l.contains(&format!("comm={comm}")),
            "{l}"
        );
        assert!(l.contains("cmd=0x00004e01"), "{l}");
    }
    assert_eq!(
        agent.sample("nodewatch_gpu_ioctl_events_dropped_total{reason=\"ringbuf_full\"}"),
        Some(0.0)
    );
    assert_eq!(
        agent.sample("nodewatch_gpu_ioctl_events_dropped_total{reason=\"inflight_full\"}"),
        Some(0.0)
    );
}

#[test]
fn hung_call_shows_in_flight_until_it_returns() {
    if !have_root("gpu_ioctl hung") || !have_tool_by("gpu_ioctl hung", FUSEPY, FUSEPY_CHECK) {
        return;
    }
    let dir = TempDir::new("gpu-hung");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = label(&fs.mnt.join("gpu0"));
    let (interval, threshold) = (Duration::from_secs(1), Duration::from_secs(1));
    let agent = Agent::start(&dir, &config(std::slice::from_ref(&gpu), "1s"));
    let gauge = format!("nodewatch_gpu_ioctl_inflight_stalled{{device=\"{gpu}\"}}");
    wait_for(Duration::from_secs(5), || {
        (agent.sample(&gauge) == Some(0.0)).then_some(())
    })
    .expect("timed out: device watched");

    let file = fs.open("gpu0");
    let started = Instant::now();
    let caller = thread::Builder::new()
        .name("hung-caller".into())
        .spawn(move || slow_ioctl(&file, 20_000))
        .unwrap();
    let limit = threshold + 2 * interval;
    wait_for(limit + Duration::from_secs(1), || {
        (agent.sample(&gauge) == Some(1.0)).then_some(())
    })
    .expect("timed out: inflight_stalled 1");
    let seen_after = started.elapsed();
    eprintln!("inflight_stalled=1 seen {seen_after:?} after the call started (limit {limit:?})");
    assert!(seen_after <= limit, "{seen_after:?} > {limit:?}");
    assert!(seen_after >= threshold, "reported before the threshold");
    thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.sample(&gauge), Some(1.0), "still in flight");
    let log = agent.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("GPU ioctl hung") && l.contains("comm=hung-caller")),
        "{log}"
    );

    let took = caller.join().unwrap();
    let returned = Instant::now();
    wait_for(2 * interval + Duration::from_millis(500), || {
        (agent.sample(&gauge) == Some(0.0)).then_some(())
    })
    .expect("timed out: inflight_stalled 0");
    eprintln!(
        "call took {took:?}; inflight_stalled=0 seen {:?} after it returned",
        returned.elapsed()
    );
    assert_eq!(
        agent.sample(&format!(
            "nodewatch_gpu_ioctl_stalls_total{{device=\"{gpu}\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(count(&agent, &gpu), Some(1.0));
    let h = per_bucket(&histogram(&agent.metrics(), &gpu));
    assert_eq!(
        h,
        vec![(bucket(took.as_nanos()), 1)],
        "20 s is in (2^34, 2^35] ns"
    );
}

/// A call seen in flight at a tick is reported the moment it passes its threshold, not at the
/// next scheduled tick: with ticks 2 s apart and a 3 s threshold, the gauge reads 1 within a
/// few hundred ms of the threshold (a scheduled tick would land anywhere in the 2 s after it).
#[test]
fn a_call_passing_its_threshold_is_reported_between_ticks() {
    if !have_root("gpu_ioctl early") || !have_tool_by("gpu_ioctl early", FUSEPY, FUSEPY_CHECK) {
        return;
    }
    let dir = TempDir::new("gpu-early");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = label(&fs.mnt.join("gpu0"));
    let threshold = Duration::from_secs(3);
    let agent = Agent::start(
        &dir,
        &format!(
            "interval: 2s\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  gpu_xid: {{ enabled: false }}\n  gpu_ioctl:\n    devices: [{gpu}]\n    stall_threshold: 3s\n"
        ),
    );
    let gauge = format!("nodewatch_gpu_ioctl_inflight_stalled{{device=\"{gpu}\"}}");
    wait_for(Duration::from_secs(6), || {
        (agent.sample(&gauge) == Some(0.0)).then_some(())
    })
    .expect("timed out: device watched");
    let file = fs.open("gpu0");
    let started = Instant::now();
    let caller = thread::spawn(move || slow_ioctl(&file, 5_000));
    wait_for(Duration::from_secs(6), || {
        (agent.sample(&gauge) == Some(1.0)).then_some(())
    })
    .expect("timed out: inflight_stalled 1");
    let seen_after = started.elapsed();
    eprintln!(
        "inflight_stalled=1 seen {seen_after:?} after the call started (threshold 3 s, ticks 2 s apart)"
    );
    assert!(seen_after >= threshold, "reported before the threshold");
    assert!(
        seen_after < threshold + Duration::from_millis(500),
        "{seen_after:?}: not reported when it passed the threshold"
    );
    caller.join().unwrap();
}

#[test]
fn devices_that_appear_after_start_are_picked_up() {
    if !have_root("gpu_ioctl late device")
        || !have_tool_by("gpu_ioctl late device", FUSEPY, FUSEPY_CHECK)
    {
        return;
    }
    let dir = TempDir::new("gpu-late");
    let mnt = dir.0.join("late");
    let gpu = label(&mnt.join("gpu0"));
    let agent = Agent::start(&dir, &config(&[format!("{}/gpu*", mnt.display())], "200ms"));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&agent, &gpu), None, "nothing to watch yet");
    assert!(
        agent.log_text().contains("none yet"),
        "programs stay detached without a device:\n{}",
        agent.log_text()
    );

    // The "driver" loads: the file appears after the agent started.
    let fs = SlowFs::new(&dir, "late");
    wait_for(Duration::from_secs(5), || {
        (count(&agent, &gpu) == Some(0.0)).then_some(())
    })
    .expect("timed out: late device watched");
    let f = fs.open("gpu0");
    for _ in 0..5 {
        slow_ioctl(&f, 3);
    }
    wait_for(Duration::from_secs(3), || {
        (count(&agent, &gpu) == Some(5.0)).then_some(())
    })
    .expect("timed out: 5 calls counted");
    assert!(agent.log_text().contains("programs attached"));
}

/// Each thread that calls a watched device keeps a slot in the kernel's in-flight map between
/// calls; the slot goes when the thread exits, so the map holds live threads only.
#[test]
fn thread_slots_are_freed_when_threads_exit() {
    if !have_root("gpu_ioctl slots")
        || !have_tool_by("gpu_ioctl slots", FUSEPY, FUSEPY_CHECK)
        || !common::have_tool("gpu_ioctl slots", "bpftool")
    {
        return;
    }
    let dir = TempDir::new("gpu-slots");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = label(&fs.mnt.join("gpu0"));
    let agent = Agent::start(&dir, &config(std::slice::from_ref(&gpu), "200ms"));
    wait_for(Duration::from_secs(5), || {
        (count(&agent, &gpu) == Some(0.0)).then_some(())
    })
    .expect("timed out: device watched");
    let map = inflight_map_id(agent.child.id());
    let entries = || -> usize {
        let out = Command::new("bpftool")
            .args(["--json", "map", "dump", "id", &map.to_string()])
            .output()
            .expect("bpftool map dump");
        let text = String::from_utf8_lossy(&out.stdout);
        text.matches("\"key\"").count()
    };
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let f = fs.open("gpu0");
            thread::spawn(move || {
                slow_ioctl(&f, 3);
                thread::sleep(Duration::from_millis(300));
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(150));
    let live = entries();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let after = entries();
    eprintln!("in-flight map: {live} slots while 20 callers lived, {after} after they exited");
    assert_eq!(live, 20);
    assert_eq!(after, 0);
    wait_for(Duration::from_secs(3), || {
        (count(&agent, &gpu) == Some(20.0)).then_some(())
    })
    .expect("timed out: 20 calls counted");
}

/// The id of the agent's in-flight map, found among its fds: the only hash map with 8-byte
/// keys (pid_tgid), 32-byte values (start, device, command, cgroup, histogram slot) and
/// 16384 entries.
fn inflight_map_id(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .find(|info| {
            [
                "map_type:\t1",
                "key_size:\t8",
                "value_size:\t32",
                "max_entries:\t16384",
            ]
            .iter()
            .all(|f| info.contains(f))
        })
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("map_id:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .expect("the agent holds its in-flight map")
}

/// Every entry program counts the same: the default one (file and inode through
/// `bpf_rdonly_cast`), the one with helper reads from the file on (`NODEWATCH_FD_WALK=btf`)
/// and the one with helper reads only (`=probe_read`, for kernels that refuse BTF-typed
/// pointers in tracepoint programs). Calls before and after the tick that gives the pair its
/// histogram slot (the first ones are counted in the hash, the later ones in the slot) add
/// up exactly.
#[test]
fn every_entry_program_counts_the_same() {
    if !have_root("gpu_ioctl entry programs")
        || !have_tool_by("gpu_ioctl entry programs", FUSEPY, FUSEPY_CHECK)
    {
        return;
    }
    for (walk, shown) in [
        ("", "fd walk: BTF, bpf_rdonly_cast"),
        ("btf", "fd walk: BTF;"),
        ("probe_read", "fd walk: bpf_probe_read_kernel"),
    ] {
        let dir = TempDir::new(&format!("gpu-walk-{walk}"));
        let fs = SlowFs::new(&dir, "mnt");
        let gpu = label(&fs.mnt.join("gpu0"));
        let agent = Agent::start_wrapped(
            &dir,
            &config(std::slice::from_ref(&gpu), "200ms"),
            &["env", &format!("NODEWATCH_FD_WALK={walk}")],
        );
        assert!(
            agent.log_text().contains(shown),
            "{walk}: {}",
            agent.log_text()
        );
        let (watched, unwatched) = (fs.open("gpu0"), fs.open("other"));
        for _ in 0..10 {
            slow_ioctl(&watched, 3);
            slow_ioctl(&unwatched, 3);
        }
        // Seen by a tick, the pair has its slot from now on.
        wait_for(Duration::from_secs(5), || {
            (count(&agent, &gpu) == Some(10.0)).then_some(())
        })
        .unwrap_or_else(|| panic!("{walk}: timed out: 10 calls counted"));
        for ms in [3; 10].into_iter().chain([1100]) {
            slow_ioctl(&watched, ms);
            slow_ioctl(&unwatched, ms);
        }
        wait_for(Duration::from_secs(5), || {
            (count(&agent, &gpu) == Some(21.0)).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{walk}: timed out: 21 calls counted, {:?}",
                count(&agent, &gpu)
            )
        });
        assert_eq!(
            agent.sample(&format!(
                "nodewatch_gpu_ioctl_stalls_total{{device=\"{gpu}\"}}"
            )),
            Some(1.0),
            "{walk}"
        );
    }
}

/// On a host whose watched drivers are all known, the entry program lets through only the
/// command types those drivers use (NVIDIA's `'F'` and `'m'` on its frontend major) and stops
/// every other ioctl before the fd walk. Here `/proc/devices` (through `proc_root`) names
/// `/dev/null`'s major 1 as NVIDIA's: its `'F'` and `'m'` calls are timed, exactly, and the
/// terminal calls on the same fd (`TCGETS`, type `'T'`) are not.
#[test]
fn only_the_known_drivers_command_types_reach_the_fd_walk() {
    if !have_root("gpu_ioctl command types") {
        return;
    }
    let dir = TempDir::new("gpu-types");
    let proc = dir.0.join("proc");
    std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
    let devices: String = std::fs::read_to_string("/proc/devices")
        .unwrap()
        .lines()
        .map(|l| match l.trim().split_once(' ') {
            Some(("1", _)) => "  1 nvidia-frontend\n".to_string(),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(proc.join("devices"), devices).unwrap();
    std::fs::copy("/proc/sys/kernel/pid_max", proc.join("sys/kernel/pid_max")).unwrap();
    // NVIDIA's handler is in the kernel's symbols (here a fixture): the probe tries to attach
    // its driver-entry program there, and where the kernel has no kprobes it keeps the
    // tracepoints and says why.
    std::fs::write(
        proc.join("kallsyms"),
        "ffffffffc1000000 t nvidia_unlocked_ioctl\t[nvidia]\n",
    )
    .unwrap();
    let agent = Agent::start_wrapped(
        &dir,
        &format!(
            "interval: 200ms\nproc_root: {}\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n  gpu_xid: {{ enabled: false }}\n  gpu_ioctl:\n    devices: [/dev/null]\n",
            proc.display()
        ),
        &["env", "NODEWATCH_KPROBES=assume"],
    );
    wait_for(Duration::from_secs(5), || {
        (count(&agent, "/dev/null") == Some(0.0)).then_some(())
    })
    .unwrap_or_else(|| panic!("timed out: /dev/null watched\n{}", agent.log_text()));
    let log = agent.log_text();
    assert!(
        log.contains("driver entry not used: kprobe on nvidia_unlocked_ioctl"),
        "{log}"
    );
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
    let ioctl = |cmd: libc::c_ulong| {
        let mut arg = [0u8; 64];
        // SAFETY: an ioctl on our own fd; /dev/null answers ENOTTY without touching `arg`.
        unsafe { libc::ioctl(fd, cmd as _, arg.as_mut_ptr()) }
    };
    for _ in 0..100 {
        ioctl(libc::TCGETS as libc::c_ulong);
    }
    // _IOC(_IOC_NONE, 'F', 200, 0) (NV_ESC_CARD_INFO's number) and NVKMS's _IOWR('m', 0, 16).
    let nv: libc::c_ulong = (0x46 << 8) | 200;
    let nvkms: libc::c_ulong = (3 << 30) | (16 << 16) | (0x6d << 8);
    for _ in 0..7 {
        ioctl(nv);
    }
    for _ in 0..3 {
        ioctl(nvkms);
    }
    for _ in 0..100 {
        ioctl(libc::TCGETS as libc::c_ulong);
    }
    let seen = wait_for(Duration::from_secs(5), || {
        (count(&agent, "/dev/null") == Some(10.0)).then_some(())
    });
    thread::sleep(Duration::from_millis(500));
    assert!(
        seen.is_some() && count(&agent, "/dev/null") == Some(10.0),
        "want the 10 NVIDIA-type calls, not the 200 TCGETS: {:?}\n{}",
        count(&agent, "/dev/null"),
        agent.metrics()
    );
}
