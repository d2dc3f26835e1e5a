//! Probe `gpu_state` against a fake `libnvidia-ml.so.1` (tests/fixtures/fake_nvml.c) that
//! answers from a state file this test rewrites while the agent runs: values exported exactly
//! as the library answers, an uncorrectable ECC error that drains the node, a GPU that goes
//! missing or falls off the bus, a call that blocks for 30 s while the tick goes on, an init
//! that hangs, and no library at all.

mod common;

use std::{
    collections::BTreeSet,
    os::unix::fs::FileExt,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Agent, BIN, TempDir, firing, have_tool, healthz, http_get, loadavg,
    nvml::{FakeNvml, Gpu, State, expected_lines, gpu_lines, monotonic_ns, parse_line, time_until},
    proc_with_own_loadavg, wait_for,
};

/// The other probes off: this test is about NVML alone.
const QUIET: &str = "probes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\n  gpu_ioctl: { enabled: false }\n  gpu_xid: { enabled: false }\n";

/// A config with `gpu_state` on `fake`, everything else `extra`.
fn config(dir: &TempDir, fake: &FakeNvml, expected: Option<u32>, extra: &str) -> String {
    format!(
        "{QUIET}{}spool_dir: {}\nhealth: {{ recover_after: 0s }}\n{extra}",
        fake.config(expected),
        dir.0.join("spool").display()
    )
}

#[test]
fn two_gpus_are_exported_exactly_as_the_library_answers() {
    if !have_tool("gpu_state values", "cc") {
        return;
    }
    let dir = TempDir::new("gpu-state-values");
    let mut gpu0 = Gpu::h100(0);
    gpu0.clocks_event = Some(0x41); // idle and thermal slowdown
    gpu0.ecc_uncorrected = Some(2);
    gpu0.remapped = Some((5, 1, true, false));
    let mut gpu1 = Gpu::h100(1);
    gpu1.remapped = None; // not supported by this GPU: no series
    gpu1.error = vec![("power", 999)]; // NVML_ERROR_UNKNOWN, every time
    let mut state = State::new(vec![gpu0, gpu1]);
    let fake = FakeNvml::build(&dir, &state);
    let agent = Agent::start(&dir, &config(&dir, &fake, Some(2), ""));

    let want = |state: &State| -> BTreeSet<(String, u64)> {
        let mut w: BTreeSet<(String, u64)> = state
            .gpus
            .iter()
            .enumerate()
            .flat_map(|(i, g)| {
                let mut g = g.clone();
                if !g.error.is_empty() {
                    g.power_mw = None;
                }
                expected_lines(i, &g, &state.driver)
            })
            .map(|l| parse_line(&l))
            .collect();
        for l in [
            "nodewatch_gpu_devices 2",
            "nodewatch_gpu_devices_expected 2",
            "nodewatch_gpu_nvml_hung 0",
        ] {
            w.insert(parse_line(l));
        }
        w
    };
    let expected = want(&state);
    let got = wait_for(Duration::from_secs(5), || {
        let lines = gpu_lines(&agent.metrics());
        (lines == expected).then_some(lines)
    })
    .unwrap_or_else(|| gpu_lines(&agent.metrics()));
    assert_eq!(
        got,
        expected,
        "exported GPU series differ from what the library answers\nlog:\n{}",
        agent.log_text()
    );
    eprintln!("{} series exactly as the library answers", got.len());

    // The failing call is counted for its GPU; the collector itself does not fail.
    let text = agent.metrics();
    let errors = common::sample(
        &text,
        "nodewatch_gpu_nvml_errors_total{gpu=\"1\",call=\"nvmlDeviceGetPowerUsage\"}",
    )
    .expect("the failing call is counted");
    assert!(errors >= 1.0, "{text}");
    assert!(
        !text.contains("nodewatch_collector_errors_total{collector=\"gpu_state\"}"),
        "{text}"
    );
    assert_eq!(
        common::sample(
            &text,
            "nodewatch_probe_up{probe=\"gpu_state\",mode=\"nvml\"}"
        ),
        Some(1.0)
    );

    // New answers are exported at the next tick.
    state.gpus[0].temp = Some(83);
    state.gpus[0].util_gpu = Some(100);
    state.gpus[1].pcie_replays = Some(1234);
    fake.set(&state);
    let expected = want(&state);
    let took = time_until(Duration::from_secs(3), || {
        gpu_lines(&agent.metrics()) == expected
    });
    assert!(
        took.is_some(),
        "new values not exported: {:?}",
        gpu_lines(&agent.metrics())
            .symmetric_difference(&expected)
            .collect::<Vec<_>>()
    );

    let log = agent.log_text();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NVML call failed"))
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one line for the failing call, not one per tick:\n{log}"
    );
    assert!(
        failed[0].contains("gpu=1") && failed[0].contains("nvmlDeviceGetPowerUsage"),
        "{log}"
    );

    let probes = Command::new(BIN)
        .args(["probes", "--config"])
        .arg(dir.0.join("config.yaml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probes.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("gpu_state"))
        .unwrap_or_else(|| panic!("{text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[1..3], ["yes", "nvml"], "{line}");
    assert!(
        line.contains("driver 550.54.15, 2 GPUs; 2 expected, from config"),
        "{line}"
    );
}

#[test]
fn a_new_uncorrectable_ecc_error_fires_and_drains_within_2s() {
    if !have_tool("gpu_state ECC", "cc") {
        return;
    }
    let dir = TempDir::new("gpu-state-ecc");
    let mut state = State::new(vec![Gpu::h100(0), Gpu::h100(1)]);
    state.gpus[0].ecc_uncorrected = Some(4); // from before the agent started: not new
    let fake = FakeNvml::build(&dir, &state);
    // The default tick (1 s) and the embedded rules.
    let agent = Agent::start(&dir, &config(&dir, &fake, None, ""));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(healthz(&agent), 200, "{}", agent.log_text());
    assert!(!firing(&agent, "NodewatchGpuEccUncorrectable", &[]));

    state.gpus[0].ecc_uncorrected = Some(5);
    fake.set(&state);
    let t0 = Instant::now();
    let (mut fired, mut drained) = (None, None);
    while t0.elapsed() < Duration::from_secs(5) && (fired.is_none() || drained.is_none()) {
        if fired.is_none()
            && firing(
                &agent,
                "NodewatchGpuEccUncorrectable",
                &[("gpu", "0"), ("type", "uncorrected"), ("health", "drain")],
            )
        {
            fired = Some(t0.elapsed());
        }
        if drained.is_none() && healthz(&agent) == 503 {
            drained = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("ECC error -> alert firing {fired:?}, /healthz 503 {drained:?}");
    let limit = Duration::from_secs(2);
    assert!(
        fired.is_some_and(|t| t < limit),
        "NodewatchGpuEccUncorrectable not firing within 2 s: {fired:?}\n{}",
        agent.log_text()
    );
    assert!(
        drained.is_some_and(|t| t < limit),
        "/healthz not 503 within 2 s: {drained:?}"
    );
    let (_, body) = http_get(agent.addr, "/healthz").unwrap();
    assert!(
        body.contains("\"status\":\"draining\"") && body.contains("NodewatchGpuEccUncorrectable"),
        "{body}"
    );
    assert!(
        !firing(&agent, "NodewatchGpuEccUncorrectable", &[("gpu", "1")]),
        "only the GPU with the new error"
    );
}

#[test]
fn a_missing_or_lost_gpu_takes_the_node_down() {
    if !have_tool("gpu_state missing", "cc") {
        return;
    }
    let dir = TempDir::new("gpu-state-missing");
    let mut state = State::new(vec![Gpu::h100(0), Gpu::h100(1)]);
    let fake = FakeNvml::build(&dir, &state);
    let agent = Agent::start(&dir, &config(&dir, &fake, Some(2), "interval: 200ms\n"));
    wait_for(Duration::from_secs(3), || {
        (agent.sample("nodewatch_gpu_devices") == Some(2.0) && healthz(&agent) == 200).then_some(())
    })
    .expect("two GPUs, healthy");

    let down = |why: &str| {
        let took = time_until(Duration::from_secs(3), || {
            firing(&agent, "NodewatchGpuMissing", &[("health", "down")]) && healthz(&agent) == 503
        });
        assert!(
            took.is_some(),
            "{why}: NodewatchGpuMissing not firing\n{}",
            agent.metrics()
        );
        assert_eq!(agent.sample("nodewatch_gpu_devices"), Some(1.0), "{why}");
        assert_eq!(agent.sample("nodewatch_gpu_devices_expected"), Some(2.0));
        let (_, body) = http_get(agent.addr, "/healthz").unwrap();
        assert!(body.contains("\"status\":\"down\""), "{why}: {body}");
        let text = agent.metrics();
        assert!(
            !text.contains("nodewatch_gpu_temperature_celsius{gpu=\"1\""),
            "{why}: the missing GPU's series are gone\n{text}"
        );
        assert!(text.contains("nodewatch_gpu_temperature_celsius{gpu=\"0\""));
        eprintln!("{why}: NodewatchGpuMissing and /healthz 503 after {took:?}");
    };
    let healthy = |why: &str| {
        let took = time_until(Duration::from_secs(3), || {
            !firing(&agent, "NodewatchGpuMissing", &[]) && healthz(&agent) == 200
        });
        assert!(took.is_some(), "{why}: still down");
        assert_eq!(agent.sample("nodewatch_gpu_devices"), Some(2.0));
    };

    // NVML counts one GPU where two are expected.
    state.count = Some(1);
    fake.set(&state);
    down("expected 2, NVML counts 1");
    state.count = None;
    fake.set(&state);
    healthy("both counted again");

    // NVML still counts it but cannot reach it: fallen off the bus.
    state.gpus[1].lost = true;
    fake.set(&state);
    down("GPU 1 lost");
    let log = agent.log_text();
    assert_eq!(
        log.matches("GPU unreachable through NVML").count(),
        1,
        "one line when it goes:\n{log}"
    );
    state.gpus[1].lost = false;
    fake.set(&state);
    healthy("GPU 1 back");
    assert!(
        agent
            .log_text()
            .contains("GPU reachable through NVML again")
    );
}

#[test]
fn a_call_blocked_for_30s_leaves_metrics_and_the_tick_going() {
    if !have_tool("gpu_state hung call", "cc") {
        return;
    }
    let dir = TempDir::new("gpu-state-hung");
    let mut state = State::new(vec![Gpu::h100(0), Gpu::h100(1)]);
    state.call_log = true;
    let fake = FakeNvml::build(&dir, &state);
    let (proc, load) = proc_with_own_loadavg(&dir);
    let agent = Agent::start(
        &dir,
        &config(
            &dir,
            &fake,
            Some(2),
            &format!("proc_root: {}\n", proc.display()),
        ),
    );
    let temp1 = "nodewatch_gpu_temperature_celsius{gpu=\"1\",uuid=\"GPU-00000001-1c2d-3e4f-5a6b-7c8d9e0f1a2b\"}";
    wait_for(Duration::from_secs(3), || agent.sample(temp1)).expect("first reading");

    // GPU 0's temperature read now sleeps 30 s in the driver.
    state.gpus[0].block = vec![("temperature", 30_000)];
    fake.set(&state);
    let blocked_at = Instant::now();
    let timeouts = "nodewatch_gpu_nvml_timeouts_total{call=\"nvmlDeviceGetTemperature\"}";
    let seen = time_until(Duration::from_secs(4), || {
        agent.sample("nodewatch_gpu_nvml_hung") == Some(1.0) && agent.sample(timeouts) == Some(1.0)
    });
    assert!(
        seen.is_some(),
        "the hung call is not reported:\n{}",
        agent.metrics()
    );
    eprintln!(
        "hung call reported {:?} after the state changed",
        seen.unwrap()
    );
    // What it answers after this call returns: no more blocking, a new temperature.
    state.gpus[0].block.clear();
    state.gpus[1].temp = Some(66);
    fake.set(&state);

    // While it hangs: /metrics answers at once, the other collectors keep their 1 s tick.
    let mut n = 0;
    let mut slowest_scrape = Duration::ZERO;
    let mut slowest_follow = Duration::ZERO;
    while blocked_at.elapsed() < Duration::from_secs(26) {
        n += 1;
        load.write_all_at(loadavg(n).as_bytes(), 0).unwrap();
        let want = f64::from(n) / 100.0;
        let t = Instant::now();
        let followed = time_until(Duration::from_millis(2500), || {
            let t = Instant::now();
            let text = agent.metrics();
            slowest_scrape = slowest_scrape.max(t.elapsed());
            common::sample(&text, "nodewatch_load1") == Some(want)
        });
        assert!(
            followed.is_some(),
            "load1 {want} not collected within 2.5 s while NVML hangs: the tick stalled\n{}",
            agent.log_text()
        );
        slowest_follow = slowest_follow.max(t.elapsed());
        let text = agent.metrics();
        assert_eq!(common::sample(&text, "nodewatch_gpu_nvml_hung"), Some(1.0));
        assert_eq!(common::sample(&text, timeouts), Some(1.0), "counted once");
        let took = common::sample(
            &text,
            "nodewatch_collector_duration_seconds{collector=\"gpu_state\"}",
        )
        .unwrap();
        assert!(took < 0.6, "the gpu_state collection waited {took} s");
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!(
        "{n} changes of load1 collected while NVML hung; slowest {slowest_follow:?}, slowest scrape {slowest_scrape:?}"
    );
    assert!(
        slowest_scrape < Duration::from_secs(1),
        "{slowest_scrape:?}"
    );

    // The call returns after 30 s: reported, and the new readings come.
    let back = time_until(Duration::from_secs(10), || {
        agent.sample("nodewatch_gpu_nvml_hung") == Some(0.0) && agent.sample(temp1) == Some(66.0)
    });
    assert!(
        back.is_some(),
        "not back after the call returned:\n{}",
        agent.metrics()
    );
    eprintln!("back {:?} after the call started", blocked_at.elapsed());
    let log = agent.log_text();
    assert_eq!(
        log.matches("NVML call hung").count(),
        1,
        "logged once:\n{log}"
    );
    assert!(log.contains("NVML call returned"), "{log}");

    // No NVML call started while the temperature read was out.
    let calls = fake.calls();
    let is = |c: &(u64, String, String, i32), what: &str| {
        c.1 == what && c.2 == "temperature" && c.3 == 0
    };
    let (start, end) = calls
        .iter()
        .filter(|c| is(c, "start"))
        .find_map(|s| {
            let e = calls.iter().find(|e| e.0 >= s.0 && is(e, "end"))?;
            (e.0 - s.0 >= 29_000_000_000).then_some((s.0, e.0))
        })
        .unwrap_or_else(|| panic!("no 30 s temperature call in the log: {calls:?}"));
    let during: Vec<_> = calls
        .iter()
        .filter(|c| c.0 > start && c.0 < end && c.1 == "start")
        .collect();
    assert!(
        during.is_empty(),
        "NVML calls started while one hung: {during:?}"
    );
    assert!(monotonic_ns() > end);
    eprintln!(
        "the blocked call lasted {:.1} s, no other NVML call started meanwhile",
        (end - start) as f64 / 1e9
    );
}

#[test]
fn an_init_that_hangs_is_reported_and_the_agent_stops_cleanly() {
    if !have_tool("gpu_state init hang", "cc") {
        return;
    }
    let dir = TempDir::new("gpu-state-init");
    let mut state = State::new(vec![Gpu::h100(0)]);
    state.init_block_ms = 60_000;
    state.call_log = true;
    let fake = FakeNvml::build(&dir, &state);
    let t0 = Instant::now();
    let agent = Agent::start(&dir, &config(&dir, &fake, Some(1), "interval: 200ms\n"));
    let started = t0.elapsed();
    assert!(started < Duration::from_secs(15), "start took {started:?}");
    let reported = wait_for(Duration::from_secs(3), || {
        let text = agent.metrics();
        (common::sample(&text, "nodewatch_gpu_nvml_hung") == Some(1.0)).then_some(text)
    })
    .unwrap_or_else(|| panic!("no hung init reported:\n{}", agent.metrics()));
    assert_eq!(
        common::sample(
            &reported,
            "nodewatch_gpu_nvml_timeouts_total{call=\"nvmlInit_v2\"}"
        ),
        Some(1.0),
        "{reported}"
    );
    assert_eq!(
        common::sample(
            &reported,
            "nodewatch_probe_up{probe=\"gpu_state\",mode=\"nvml\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        healthz(&agent),
        200,
        "a hung NVML call alone waits for its rule's `for`"
    );
    eprintln!("agent served {started:?} after start with NVML init hanging");

    // SIGTERM while the init is still out: a clean exit, and NVML is never shut down.
    let t = Instant::now();
    let status = agent.stop();
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    let calls = fake.calls();
    assert!(
        calls.iter().any(|c| c.1 == "start" && c.2 == "init")
            && !calls.iter().any(|c| c.2 == "shutdown" || c.1 == "end"),
        "{calls:?}"
    );
}

#[test]
fn no_library_or_no_driver_turns_the_probe_off_and_the_agent_runs() {
    let dir = TempDir::new("gpu-state-off");
    let cases = [
        (
            "/nonexistent/libnvidia-ml.so.1",
            None,
            "INFO",
            "no NVML library",
        ),
        (
            "/nonexistent/libnvidia-ml.so.1",
            Some(2),
            "WARN",
            "no NVML library",
        ),
    ];
    for (library, expected, level, what) in cases {
        let expected = expected.map_or("null".to_string(), |n: u32| n.to_string());
        let agent = Agent::start(
            &dir,
            &format!(
                "{QUIET}  gpu_state: {{ library: {library}, expected_gpus: {expected} }}\nspool_dir: {}\n",
                dir.0.join("spool").display()
            ),
        );
        std::thread::sleep(Duration::from_millis(1500));
        let text = agent.metrics();
        assert_eq!(
            common::sample(
                &text,
                "nodewatch_probe_up{probe=\"gpu_state\",mode=\"off\"}"
            ),
            Some(0.0),
            "{text}"
        );
        assert!(!text.contains("nodewatch_gpu_devices"), "{text}");
        assert_eq!(healthz(&agent), 200);
        let log = agent.log_text();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("gpu_state") && !l.contains("probe started"))
            .collect();
        assert_eq!(lines.len(), 1, "one line:\n{log}");
        assert!(
            lines[0].contains(level) && lines[0].contains(what),
            "{level} {what}: {}",
            lines[0]
        );
    }
}

#[test]
fn a_driver_nvml_cannot_talk_to_turns_the_probe_off() {
    if !have_tool("gpu_state driver not loaded", "cc") {
        return;
    }
    let dir = TempDir::new("gpu-state-nodriver");
    let mut state = State::new(vec![Gpu::h100(0)]);
    state.init_error = 9; // NVML_ERROR_DRIVER_NOT_LOADED
    let fake = FakeNvml::build(&dir, &state);
    let agent = Agent::start(&dir, &config(&dir, &fake, Some(1), ""));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        agent.sample("nodewatch_probe_up{probe=\"gpu_state\",mode=\"off\"}"),
        Some(0.0)
    );
    let log = agent.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("NVML does not start"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("WARN") && line.contains("nvmlInit_v2"),
        "{line}"
    );
}

/// The NVIDIA GPUs on this machine's PCI bus, as the probe counts them.
fn nvidia_on_pci() -> usize {
    std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let read = |f| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
                    read("vendor").trim() == "0x10de"
                        && ["0x0300", "0x0302"]
                            .iter()
                            .any(|c| read("class").starts_with(c))
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn probes_lists_gpu_state_off_on_machines_without_nvidia() {
    let out = Command::new(BIN).arg("probes").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("gpu_state"))
        .unwrap_or_else(|| panic!("{text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    if nvidia_on_pci() == 0 {
        assert_eq!(words[1..3], ["no", "off"], "{line}");
    } else {
        eprintln!("this machine has NVIDIA GPUs: {line}");
    }
}

/// Each fault NVML reports on one of two GPUs takes the node out within 2 s, by an alert
/// naming that GPU (and link); clearing it brings the node back. The default tick (1 s) and
/// the embedded rules.
#[test]
fn nvlink_fabric_and_lost_gpu_faults_take_the_node_out_within_2s() {
    if !have_tool("gpu_state faults", "cc") {
        return;
    }
    let dir = TempDir::new("gpu-state-faults");
    let state = State::new(vec![Gpu::h100(0), Gpu::h100(1)]);
    let fake = FakeNvml::build(&dir, &state);
    let agent = Agent::start(&dir, &config(&dir, &fake, Some(2), ""));
    wait_for(Duration::from_secs(5), || {
        (agent.sample("nodewatch_gpu_devices") == Some(2.0) && healthz(&agent) == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("two GPUs, healthy:\n{}", agent.log_text()));
    let uuid1 = state.gpus[1].uuid.clone();

    type Fault = (
        &'static str,
        fn(&mut Gpu),
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    let faults: [Fault; 5] = [
        (
            "NVLink 2 inactive",
            |g| g.nvlinks.as_mut().unwrap()[2].0 = true,
            "NodewatchGpuNvlinkDown",
            &[("link", "2"), ("health", "drain")],
        ),
        (
            "fabric registration in progress, not completed",
            |g| g.fabric = Some((2, 0, 0)),
            "NodewatchGpuFabricUnhealthy",
            &[("health", "drain")],
        ),
        (
            "fabric health mask: route unhealthy",
            |g| g.fabric = Some((3, 0, 1 << 4)),
            "NodewatchGpuFabricUnhealthy",
            &[("health", "drain")],
        ),
        (
            "NVML answers RESET_REQUIRED",
            |g| g.reset_required = true,
            "NodewatchGpuNeedsReset",
            &[("health", "down")],
        ),
        (
            "NVML answers GPU_IS_LOST",
            |g| g.lost = true,
            "NodewatchGpuNeedsReset",
            &[("health", "down")],
        ),
    ];
    for (what, fault, alert, labels) in faults {
        let mut broken = state.clone();
        fault(&mut broken.gpus[1]);
        fake.set(&broken);
        let mut want: Vec<(&str, &str)> = vec![("gpu", "1"), ("uuid", uuid1.as_str())];
        want.extend_from_slice(labels);
        let t0 = Instant::now();
        let took = time_until(Duration::from_secs(5), || {
            firing(&agent, alert, &want) && healthz(&agent) == 503
        });
        eprintln!("{what}: {alert} firing and /healthz 503 after {took:?}");
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(2)),
            "{what}: {alert} {want:?} not firing with /healthz 503 within 2 s ({:?})\n{}",
            t0.elapsed(),
            agent.metrics()
        );
        assert!(
            !firing(&agent, alert, &[("gpu", "0")]),
            "{what}: only GPU 1 is named"
        );
        let (_, body) = http_get(agent.addr, "/healthz").unwrap();
        assert!(body.contains(alert), "{what}: {body}");
        fake.set(&state);
        let back = time_until(Duration::from_secs(5), || {
            !firing(&agent, alert, &[]) && healthz(&agent) == 200
        });
        assert!(
            back.is_some(),
            "{what}: not healthy again\n{}",
            agent.metrics()
        );
    }
    let text = agent.metrics();
    assert_eq!(
        common::sample(
            &text,
            &format!("nodewatch_gpu_needs_reset{{gpu=\"1\",uuid=\"{uuid1}\"}}")
        ),
        Some(0.0),
        "{text}"
    );
}

/// Persistence mode off and a PCIe link at x8 of x16 are exported and alerted on their GPU;
/// neither takes the node out of the load balancer (the narrow link degrades it).
#[test]
fn persistence_off_and_a_narrow_pcie_link_are_reported_on_their_gpu() {
    if !have_tool("gpu_state persistence and PCIe", "cc") {
        return;
    }
    let dir = TempDir::new("gpu-state-pcie");
    let mut state = State::new(vec![Gpu::h100(0), Gpu::h100(1)]);
    state.gpus[0].persistence = Some(false);
    state.gpus[1].pcie_link = Some((8, 16, 3, 5)); // x8 of x16, and Gen3 at idle of Gen5
    let fake = FakeNvml::build(&dir, &state);
    let agent = Agent::start(&dir, &config(&dir, &fake, Some(2), ""));
    let (u0, u1) = (state.gpus[0].uuid.clone(), state.gpus[1].uuid.clone());
    let fired = time_until(Duration::from_secs(20), || {
        firing(
            &agent,
            "NodewatchGpuPersistenceModeOff",
            &[("gpu", "0"), ("uuid", &u0), ("severity", "warning")],
        ) && firing(
            &agent,
            "NodewatchGpuPcieLinkDegraded",
            &[("gpu", "1"), ("uuid", &u1), ("health", "degrade")],
        )
    });
    assert!(fired.is_some(), "not reported:\n{}", agent.metrics());
    let text = agent.metrics();
    for (series, v) in [
        (
            format!("nodewatch_gpu_persistence_mode{{gpu=\"0\",uuid=\"{u0}\"}}"),
            0.0,
        ),
        (
            format!("nodewatch_gpu_persistence_mode{{gpu=\"1\",uuid=\"{u1}\"}}"),
            1.0,
        ),
        (
            format!("nodewatch_gpu_pcie_link_width{{gpu=\"1\",uuid=\"{u1}\"}}"),
            8.0,
        ),
        (
            format!("nodewatch_gpu_pcie_link_width_max{{gpu=\"1\",uuid=\"{u1}\"}}"),
            16.0,
        ),
        (
            format!("nodewatch_gpu_pcie_link_generation{{gpu=\"1\",uuid=\"{u1}\"}}"),
            3.0,
        ),
        (
            format!("nodewatch_gpu_pcie_link_generation_max{{gpu=\"1\",uuid=\"{u1}\"}}"),
            5.0,
        ),
    ] {
        assert_eq!(common::sample(&text, &series), Some(v), "{series}\n{text}");
    }
    assert!(!firing(
        &agent,
        "NodewatchGpuPersistenceModeOff",
        &[("gpu", "1")]
    ));
    assert!(!firing(
        &agent,
        "NodewatchGpuPcieLinkDegraded",
        &[("gpu", "0")]
    ));
    assert_eq!(
        healthz(&agent),
        200,
        "a warning and a degrade keep the node in"
    );
    eprintln!("persistence off on GPU 0 and x8 of x16 on GPU 1 reported after {fired:?}");
}
