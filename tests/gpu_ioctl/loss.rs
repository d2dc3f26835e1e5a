//! GPU ioctl losses: more calls in flight than the kernel's in-flight map holds, more stalls
//! in one tick than the stall ring buffer holds. Each loss is counted, said once, and the
//! agent runs on.

use std::{
    fs::File,
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use super::{
    common::{
        Agent, TempDir,
        fuse::{FUSEPY, FUSEPY_CHECK, SlowFs, raw_slow_ioctl},
        have_root, have_tool_by, sample, wait_for,
    },
    config, count, label,
};

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
    wait_for(Duration::from_secs(5), || {
        (count(&agent, &gpu) == Some(0.0)).then_some(())
    })
    .expect("timed out: device watched");
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
    wait_for(Duration::from_secs(5), || {
        (count(&agent, &gpu) == Some(slots as f64 + 1.0)).then_some(())
    })
    .expect("timed out: a call timed after the threads left");
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
    if !have_root("gpu_ioctl ring buffer full")
        || !have_tool_by("gpu_ioctl ring buffer full", FUSEPY, FUSEPY_CHECK)
    {
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
    wait_for(Duration::from_secs(5), || {
        (count(&agent, &gpu) == Some(0.0)).then_some(())
    })
    .expect("timed out: device watched");
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
    wait_for(interval * 2, || {
        (agent.sample(&stalls) == Some(calls as f64)).then_some(())
    })
    .expect("timed out: every stall counted");
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
