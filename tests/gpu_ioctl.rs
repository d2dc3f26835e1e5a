//! GPU ioctl stalls against a fake slow driver: a FUSE file (tests/fixtures/slow_ioctl.py)
//! whose ioctl sleeps for the milliseconds passed as its argument. The agent's kernel
//! histogram is compared with the durations this process measured around each call.

mod common;

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{Agent, TempDir, have_root, sample, wait_for, wait_until};

/// Debian's python3-fusepy installs `fusepy` for this interpreter only.
const PYTHON: &str = "/usr/bin/python3";
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/slow_ioctl.py"
);
/// `_IO('N', 1)`: no data, so the raw argument reaches the FUSE handler as is.
const SLOW_CMD: libc::c_ulong = 0x4e01;

fn have_fusepy(test: &str) -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import fusepy"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "{test} needs python3-fusepy and fuse3 (cargo xtask setup installs them)"
        );
        eprintln!("SKIPPED {test}: python3-fusepy not installed");
    }
    ok
}

/// The fake driver, mounted at `dir/<name>`; unmounted and stopped on drop.
struct SlowFs {
    child: Child,
    mnt: PathBuf,
}

impl SlowFs {
    /// Creates the mount point; `mount` then serves files `gpu0` and `other` there.
    fn new(dir: &TempDir, name: &str) -> Self {
        let mnt = dir.0.join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let child = Command::new(PYTHON)
            .arg(FIXTURE)
            .arg(&mnt)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("start the FUSE fixture");
        let fs = Self { child, mnt };
        let parent = std::fs::metadata(dir.0.as_path()).unwrap();
        wait_until(Duration::from_secs(10), "FUSE fixture mounted", || {
            let m = std::fs::metadata(fs.mnt.join("gpu0")).ok()?;
            use std::os::unix::fs::MetadataExt;
            (m.dev() != parent.dev()).then_some(())
        });
        fs
    }

    fn open(&self, name: &str) -> File {
        File::options()
            .read(true)
            .write(true)
            .open(self.mnt.join(name))
            .expect("open a file of the FUSE fixture")
    }
}

impl Drop for SlowFs {
    fn drop(&mut self) {
        let _ = Command::new("fusermount")
            .arg("-u")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Holds one ioctl in the fake driver for `ms`; returns how long it took from here.
fn slow_ioctl(f: &File, ms: u64) -> Duration {
    let t = Instant::now();
    // SAFETY: an ioctl without data on an fd we own; the argument is a plain number.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), SLOW_CMD, ms as libc::c_ulong) };
    let took = t.elapsed();
    assert_eq!(rc, 0, "ioctl: {}", std::io::Error::last_os_error());
    took
}

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
    if !have_root("gpu_ioctl histogram") || !have_fusepy("gpu_ioctl histogram") {
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

    let text = wait_until(Duration::from_secs(5), "all 23 calls counted", || {
        let text = agent.metrics();
        (sample(
            &text,
            &format!("nodewatch_gpu_ioctl_duration_seconds_count{{device=\"{gpu}\"}}"),
        ) == Some(23.0))
        .then_some(text)
    });
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
    if !have_root("gpu_ioctl hung") || !have_fusepy("gpu_ioctl hung") {
        return;
    }
    let dir = TempDir::new("gpu-hung");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = label(&fs.mnt.join("gpu0"));
    let (interval, threshold) = (Duration::from_secs(1), Duration::from_secs(1));
    let agent = Agent::start(&dir, &config(std::slice::from_ref(&gpu), "1s"));
    let gauge = format!("nodewatch_gpu_ioctl_inflight_stalled{{device=\"{gpu}\"}}");
    wait_until(Duration::from_secs(5), "device watched", || {
        (agent.sample(&gauge) == Some(0.0)).then_some(())
    });

    let file = fs.open("gpu0");
    let started = Instant::now();
    let caller = thread::Builder::new()
        .name("hung-caller".into())
        .spawn(move || slow_ioctl(&file, 20_000))
        .unwrap();
    let limit = threshold + 2 * interval;
    wait_until(limit + Duration::from_secs(1), "inflight_stalled 1", || {
        (agent.sample(&gauge) == Some(1.0)).then_some(())
    });
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
    wait_until(
        2 * interval + Duration::from_millis(500),
        "inflight_stalled 0",
        || (agent.sample(&gauge) == Some(0.0)).then_some(()),
    );
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

#[test]
fn devices_that_appear_after_start_are_picked_up() {
    if !have_root("gpu_ioctl late device") || !have_fusepy("gpu_ioctl late device") {
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
    wait_until(Duration::from_secs(5), "late device watched", || {
        (count(&agent, &gpu) == Some(0.0)).then_some(())
    });
    let f = fs.open("gpu0");
    for _ in 0..5 {
        slow_ioctl(&f, 3);
    }
    wait_until(Duration::from_secs(3), "5 calls counted", || {
        (count(&agent, &gpu) == Some(5.0)).then_some(())
    });
    assert!(agent.log_text().contains("programs attached"));
}

/// Each thread that calls a watched device keeps a slot in the kernel's in-flight map between
/// calls; the slot goes when the thread exits, so the map holds live threads only.
#[test]
fn thread_slots_are_freed_when_threads_exit() {
    if !have_root("gpu_ioctl slots")
        || !have_fusepy("gpu_ioctl slots")
        || !common::have_tool("gpu_ioctl slots", "bpftool")
    {
        return;
    }
    let dir = TempDir::new("gpu-slots");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = label(&fs.mnt.join("gpu0"));
    let agent = Agent::start(&dir, &config(std::slice::from_ref(&gpu), "200ms"));
    wait_until(Duration::from_secs(5), "device watched", || {
        (count(&agent, &gpu) == Some(0.0)).then_some(())
    });
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
    wait_until(Duration::from_secs(3), "20 calls counted", || {
        (count(&agent, &gpu) == Some(20.0)).then_some(())
    });
}

/// The id of the agent's in-flight map, found among its fds: the only hash map with 8-byte
/// keys (pid_tgid), 16-byte values and 16384 entries.
fn inflight_map_id(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .find(|info| {
            [
                "map_type:\t1",
                "key_size:\t8",
                "value_size:\t16",
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

/// The fallback entry program (fd walk with bpf_probe_read_kernel only, for kernels that
/// refuse BTF-typed pointers in tracepoint programs) counts the same.
#[test]
fn fallback_fd_walk_counts_the_same() {
    if !have_root("gpu_ioctl fallback walk") || !have_fusepy("gpu_ioctl fallback walk") {
        return;
    }
    let dir = TempDir::new("gpu-compat");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = label(&fs.mnt.join("gpu0"));
    let agent = Agent::start_wrapped(
        &dir,
        &config(std::slice::from_ref(&gpu), "200ms"),
        &["env", "NODEWATCH_FD_WALK=probe_read"],
    );
    assert!(
        agent.log_text().contains("fd walk: bpf_probe_read_kernel"),
        "{}",
        agent.log_text()
    );
    let (watched, unwatched) = (fs.open("gpu0"), fs.open("other"));
    for ms in [3; 10].into_iter().chain([1100]) {
        slow_ioctl(&watched, ms);
        slow_ioctl(&unwatched, ms);
    }
    wait_until(Duration::from_secs(5), "11 calls counted", || {
        (count(&agent, &gpu) == Some(11.0)).then_some(())
    });
    assert_eq!(
        agent.sample(&format!(
            "nodewatch_gpu_ioctl_stalls_total{{device=\"{gpu}\"}}"
        )),
        Some(1.0)
    );
}

/// `ioctl(fd, SLOW_CMD, ms)` without asserting, for threads that must reach a barrier: true
/// when the driver answered (0, or ENOTTY from a device without that command).
fn raw_slow_ioctl(fd: libc::c_int, ms: u64) -> bool {
    // SAFETY: an ioctl without data on an open fd; the argument is a plain number.
    let rc = unsafe { libc::ioctl(fd, SLOW_CMD, ms as libc::c_ulong) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOTTY)
}

/// The agent's WARN lines that contain `what`.
fn warn_lines(agent: &Agent, what: &str) -> Vec<String> {
    agent
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(what))
        .map(str::to_string)
        .collect()
}

/// What the caller threads of the in-flight test share.
struct Callers {
    fd: libc::c_int,
    called: std::sync::Barrier,
    release: std::sync::Barrier,
    failed: std::sync::atomic::AtomicUsize,
}

extern "C" fn caller(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `arg` is the Arc<Callers> the spawner leaked for this thread; taken back once.
    let shared = unsafe { std::sync::Arc::from_raw(arg as *const Callers) };
    if !raw_slow_ioctl(shared.fd, 0) {
        shared
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    shared.called.wait();
    shared.release.wait();
    std::ptr::null_mut()
}

/// Starts a pthread running [`caller`] with a 32 KiB stack and no guard page.
fn spawn_caller(shared: &std::sync::Arc<Callers>) -> libc::pthread_t {
    let arg = std::sync::Arc::into_raw(shared.clone()) as *mut libc::c_void;
    // SAFETY: attr is initialised before use and destroyed after; `caller` takes `arg` back.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_attr_init(&mut attr), 0);
        assert_eq!(libc::pthread_attr_setstacksize(&mut attr, 32 * 1024), 0);
        assert_eq!(libc::pthread_attr_setguardsize(&mut attr, 0), 0);
        let mut t: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut t, &attr, caller, arg);
        libc::pthread_attr_destroy(&mut attr);
        assert_eq!(
            rc,
            0,
            "pthread_create: {}",
            std::io::Error::from_raw_os_error(rc)
        );
        t
    }
}

/// More threads on a watched device than the kernel's in-flight map has slots: each call that
/// finds no slot is not timed and is counted as `inflight_full`, the agent says so in one
/// WARN line and runs on, and the slots come back when the threads exit.
#[test]
fn a_full_inflight_map_counts_every_untimed_call_and_says_so_once() {
    use std::sync::{Arc, Barrier, atomic::AtomicUsize};
    if !have_root("gpu_ioctl in-flight map full") {
        return;
    }
    let slots = nodewatch_common::gpu_ioctl::MAX_INFLIGHT as usize;
    const EXTRA: usize = 100;
    let threads = slots + EXTRA;
    // A device that answers at once and that nothing else on the host calls ioctl on; the
    // FUSE fixture would need a thread of its own for each of 16 000 concurrent calls.
    let gpu = "/dev/full".to_string();
    let dir = TempDir::new("gpu-inflight-full");
    let mut agent = Agent::start(&dir, &config(std::slice::from_ref(&gpu), "200ms"));
    wait_until(Duration::from_secs(5), "device watched", || {
        (count(&agent, &gpu) == Some(0.0)).then_some(())
    });
    let dropped = "nodewatch_gpu_ioctl_events_dropped_total{reason=\"inflight_full\"}";
    assert_eq!(agent.sample(dropped), Some(0.0));

    // Every thread makes one call and then stays alive, holding its slot, until all have.
    // Plain pthreads with small stacks and no guard pages: std's threads take four memory
    // mappings each, and 16 000 of them would pass vm.max_map_count (65 530).
    let f = File::open(&gpu).unwrap();
    let shared = Arc::new(Callers {
        fd: f.as_raw_fd(),
        called: Barrier::new(threads + 1),
        release: Barrier::new(threads + 1),
        failed: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let handles: Vec<libc::pthread_t> = (0..threads).map(|_| spawn_caller(&shared)).collect();
    shared.called.wait();
    eprintln!(
        "{threads} threads made their call in {:?}",
        started.elapsed()
    );
    let seen = wait_for(Duration::from_secs(10), || {
        let text = agent.metrics();
        let got = (
            sample(&text, dropped),
            sample(
                &text,
                &format!("nodewatch_gpu_ioctl_duration_seconds_count{{device=\"{gpu}\"}}"),
            ),
        );
        (got == (Some(EXTRA as f64), Some(slots as f64))).then_some(got)
    });
    shared.release.wait();
    for h in handles {
        // SAFETY: each handle is a joinable thread this test created and joins once.
        assert_eq!(unsafe { libc::pthread_join(h, std::ptr::null_mut()) }, 0);
    }
    let failed = &shared.failed;
    assert_eq!(
        failed.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "some ioctls failed"
    );
    let (drop_now, timed_now) = (agent.sample(dropped), count(&agent, &gpu));
    eprintln!("{threads} callers: timed {timed_now:?}, dropped {drop_now:?}");
    assert!(
        seen.is_some(),
        "expected {slots} calls timed and {EXTRA} dropped, got {timed_now:?} and {drop_now:?}"
    );

    // The slots are free again: a new thread's call is timed.
    thread::spawn(move || raw_slow_ioctl(f.as_raw_fd(), 0))
        .join()
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "a call timed after the threads left",
        || (count(&agent, &gpu) == Some(slots as f64 + 1.0)).then_some(()),
    );
    assert_eq!(agent.sample(dropped), Some(EXTRA as f64));
    thread::sleep(Duration::from_millis(600)); // a few more ticks: still one line
    let lines = warn_lines(&agent, "GPU ioctl events lost");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("inflight_full"), "{}", lines[0]);
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died");
}

/// More stalls between two ticks than the ring buffer holds: the stalls are all counted, the
/// ones that did not fit are counted as `ringbuf_full`, every stall is either logged, summed
/// up in a "more this tick" line or dropped, and the loss is said once.
#[test]
fn a_full_stall_ring_buffer_loses_log_lines_not_counts_and_says_so_once() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    if !have_root("gpu_ioctl ring buffer full") || !have_fusepy("gpu_ioctl ring buffer full") {
        return;
    }
    // What the ring holds: each record is 8 bytes of header plus the event, 8-byte aligned.
    let record = (size_of::<nodewatch_common::gpu_ioctl::StallEvent>() + 8).next_multiple_of(8);
    let capacity = nodewatch_common::gpu_ioctl::EVENTS_BYTES as usize / record;
    // Twice what fits, so that even if one tick drains the ring in the middle of the burst,
    // one half overflows it.
    let calls = 2 * capacity + 1000;
    let interval = Duration::from_secs(5);
    let dir = TempDir::new("gpu-ringbuf-full");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = label(&fs.mnt.join("gpu0"));
    let cfg = config(std::slice::from_ref(&gpu), "5s")
        .replace("stall_threshold: 1s", "stall_threshold: 1ms");
    let mut agent = Agent::start(&dir, &cfg);
    wait_until(Duration::from_secs(5), "device watched", || {
        (count(&agent, &gpu) == Some(0.0)).then_some(())
    });
    let dropped = "nodewatch_gpu_ioctl_events_dropped_total{reason=\"ringbuf_full\"}";
    let stalls = format!("nodewatch_gpu_ioctl_stalls_total{{device=\"{gpu}\"}}");

    // Every call holds the driver for 1 ms, the threshold: each one is a stall.
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (f, next) = (fs.open("gpu0"), next.clone());
            thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    assert!(raw_slow_ioctl(f.as_raw_fd(), 1), "ioctl failed");
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    let burst = started.elapsed();
    eprintln!("{calls} stalls of 1 ms in {burst:?} (the ring holds {capacity})");
    assert!(
        burst < interval,
        "the burst took {burst:?}, longer than a tick: it cannot be sure to overflow the ring"
    );
    wait_until(interval * 2, "every stall counted", || {
        (agent.sample(&stalls) == Some(calls as f64)).then_some(())
    });
    let lost = agent.sample(dropped).unwrap() as usize;
    let log = agent.log_text();
    let one_by_one = log.matches("GPU ioctl stalled").count();
    let summed: usize = log
        .lines()
        .filter(|l| l.contains("GPU ioctl stalls: more this tick"))
        .map(|l| {
            let v = l.split("more=").nth(1).expect("a more= field");
            v.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    eprintln!("logged {one_by_one}, summed up {summed}, lost {lost} (ring full)");
    assert!(lost > 0, "the ring never filled");
    assert_eq!(one_by_one + summed + lost, calls, "stalls unaccounted for");
    let ticks_logged = log
        .lines()
        .filter(|l| l.contains("GPU ioctl stalled"))
        .count();
    assert!(
        ticks_logged <= 20 * 2,
        "{ticks_logged} stall lines: the per-tick limit did not hold"
    );
    let lines = warn_lines(&agent, "GPU ioctl events lost");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("ringbuf_full"), "{}", lines[0]);
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent died");
}
