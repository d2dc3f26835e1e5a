//! The GPU state probe's idle cost: the agent with `gpu_state` reading eight GPUs through the
//! tests' fake NVML (`tests/fixtures/fake_nvml.c`) next to the same agent with the probe
//! off, side by side over the same window; CPU from schedstat as in the tick section, the
//! NVML thread's share on its own, and RSS.

use std::{
    fmt::Write,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    tick::run_ns,
    util::{Nodewatch, env_num, rss_mib},
};

/// GPUs the fake library answers for: an HGX node.
const GPUS: u32 = 8;
/// NVML calls per GPU per reading without links: temperature, power, utilization, memory,
/// ECC (two), clock events, remapped rows, PCIe replays; then persistence mode, the PCIe link
/// (four), the first NVLink's state (not supported: the end of the list) and the fabric.
const CALLS_PER_GPU: u32 = 9 + 1 + 4 + 1 + 1;
/// NVLinks of an H100 SXM, each asked its state and four error counters.
const NVLINKS: u32 = 18;
/// Calls per GPU with every link answering.
const CALLS_PER_GPU_LINKS: u32 = 9 + 1 + 4 + NVLINKS * 5 + 1;

/// The fake library's state: eight H100s with every value given; with `links`, also 18
/// NVLinks each, a completed fabric registration, persistence mode and the PCIe link.
fn state_text(links: bool) -> String {
    let mut s = format!("driver 550.54.15\ncount {GPUS}\n");
    for i in 0..GPUS {
        let _ = write!(
            s,
            "{i}.name NVIDIA H100 80GB HBM3\n{i}.uuid GPU-{i:08x}-1c2d-3e4f-5a6b-7c8d9e0f1a2b\n\
             {i}.temp {}\n{i}.power_mw 312000\n{i}.util_gpu 87\n{i}.mem_total 85520809984\n\
             {i}.mem_used 70000000000\n{i}.ecc_corrected 3\n{i}.ecc_uncorrected 0\n\
             {i}.clocks_event 0x4\n{i}.remap_correctable 0\n{i}.remap_uncorrectable 0\n\
             {i}.remap_pending 0\n{i}.remap_failed 0\n{i}.pcie_replays 0\n",
            40 + i
        );
        if links {
            let _ = write!(
                s,
                "{i}.persistence 1\n{i}.pcie_width 16\n{i}.pcie_width_max 16\n{i}.pcie_gen 5\n\
                 {i}.pcie_gen_max 5\n{i}.fabric_state 3\n{i}.fabric_status 0\n{i}.fabric_health 0\n\
                 {i}.nvlinks {NVLINKS}\n"
            );
        }
    }
    s
}

/// Builds the fake library into `dir/<name>/`, answering from the state beside it.
fn build_fake(dir: &Path, name: &str, links: bool) -> Result<std::path::PathBuf> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let state = dir.join("nvml-state");
    std::fs::write(&state, state_text(links))?;
    let lib = dir.join("libnvidia-ml.so.1");
    let src = crate::root_dir().join("tests/fixtures/fake_nvml.c");
    crate::step("bench gpu_state: cc -shared -fPIC fake_nvml.c");
    let ok = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2"])
        .arg(format!("-DFAKE_NVML_STATE=\"{}\"", state.display()))
        .arg("-o")
        .arg(&lib)
        .arg(&src)
        .status()
        .context("cc")?
        .success();
    if !ok {
        bail!("cc {} failed", src.display());
    }
    Ok(lib)
}

/// CPU ns so far of the threads of `pid` named `comm`.
fn thread_ns(pid: u32, comm: &str) -> Result<f64> {
    let mut total = 0.0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let t = t?.path();
        if std::fs::read_to_string(t.join("comm"))?.trim() != comm {
            continue;
        }
        let text = std::fs::read_to_string(t.join("schedstat"))?;
        total += text
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse::<f64>()?;
    }
    Ok(total)
}

/// Mean of one gauge over the scraped texts.
fn mean(texts: &[String], series: &str) -> f64 {
    let v: Vec<f64> = texts
        .iter()
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        })
        .collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

pub fn section(nodewatch: &Path, dir: &Path) -> Result<String> {
    let secs = env_num("NODEWATCH_BENCH_GPU_SECS", 300);
    let lib = build_fake(dir, "nvml-plain", false)?;
    let lib_links = build_fake(dir, "nvml-links", true)?;
    let config = |lib: &Path| {
        format!(
            "probes:\n  gpu_state: {{ library: \"{}\", expected_gpus: {GPUS} }}\n",
            lib.display()
        )
    };
    let on = Nodewatch::start(nodewatch, dir, "gpu-on", &config(&lib))?;
    let links = Nodewatch::start(nodewatch, dir, "gpu-links", &config(&lib_links))?;
    let off = Nodewatch::start(
        nodewatch,
        dir,
        "gpu-off",
        "probes:\n  gpu_state: { enabled: false }\n",
    )?;
    for a in [&on, &links] {
        let text = a.metrics()?;
        if !text.contains(&format!("nodewatch_gpu_devices {GPUS}")) {
            bail!("the agent does not read the fake GPUs:\n{text}");
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    crate::step(&format!("bench gpu_state: {secs} s idle, probe on and off"));
    let agents = [
        ("gpu_state off", &off),
        ("gpu_state on, 8 GPUs without NVLink or fabric", &on),
        (
            "gpu_state on, 8 GPUs with 18 NVLinks, fabric, PCIe link, persistence",
            &links,
        ),
    ];
    let start: Vec<f64> = agents
        .iter()
        .map(|(_, a)| run_ns(a.proc.pid()))
        .collect::<Result<_>>()?;
    let nvml_start = [
        thread_ns(on.proc.pid(), "nvml")?,
        thread_ns(links.proc.pid(), "nvml")?,
    ];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
    }
    let wall = t0.elapsed().as_secs_f64();
    let used: Vec<f64> = agents
        .iter()
        .zip(&start)
        .map(|((_, a), s)| Ok((run_ns(a.proc.pid())? - s) / 1e9))
        .collect::<Result<_>>()?;
    let nvml = [
        (thread_ns(on.proc.pid(), "nvml")? - nvml_start[0]) / 1e9,
        (thread_ns(links.proc.pid(), "nvml")? - nvml_start[1]) / 1e9,
    ];
    let rss: Vec<f64> = agents
        .iter()
        .map(|(_, a)| rss_mib(a.proc.pid()))
        .collect::<Result<_>>()?;
    let mut texts: [Vec<String>; 3] = Default::default();
    for _ in 0..30 {
        for ((_, a), t) in agents.iter().zip(&mut texts) {
            t.push(a.metrics()?);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let rules: Vec<f64> = texts
        .iter()
        .map(|t| mean(t, "nodewatch_rule_evaluation_duration_seconds"))
        .collect();
    let collect: Vec<f64> = texts[1..]
        .iter()
        .map(|t| {
            mean(
                t,
                "nodewatch_collector_duration_seconds{collector=\"gpu_state\"}",
            )
        })
        .collect();
    let count = |t: &[String]| {
        t.last().map_or(0, |t| {
            t.lines()
                .filter(|l| {
                    l.starts_with("nodewatch_gpu_")
                        && !l.starts_with("nodewatch_gpu_ioctl")
                        && !l.starts_with("nodewatch_gpu_xid")
                        && !l.starts_with("nodewatch_gpu_sxid")
                })
                .count()
        })
    };
    let series = [count(&texts[1]), count(&texts[2])];

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## GPU state probe: idle cost\n\nThe agent with `gpu_state` reading {GPUS} GPUs every 1 s tick through the tests' fake NVML \
         (`tests/fixtures/fake_nvml.c`, built with `cc -shared -fPIC -O2`; it answers each call from memory and stats its \
         state file once per reading), once with GPUs that answer no NVLink, fabric, PCIe-link or persistence query \
         (each of those calls returns NOT_SUPPORTED) and once with GPUs that answer them all, as an HGX H100 node with \
         18 NVLinks per GPU would, next to the same agent with the probe off, side by side over the same window; \
         otherwise the embedded defaults, nothing scraping. CPU as in the tick section: every thread's time on a CPU \
         (`/proc/<pid>/task/*/schedstat`) as a share of one core. Per reading the probe makes {} NVML calls ({} per GPU \
         and the count) and exports {} series without links, and {} calls ({} per GPU) and {} series with them. The real \
         library adds the driver's own work per call (ioctls into the NVIDIA driver), which a machine without a GPU \
         cannot measure. Reproduce: `NODEWATCH_BENCH_ONLY=gpu_state NODEWATCH_BENCH_GPU_SECS={secs} cargo xtask bench`.\n",
        GPUS * CALLS_PER_GPU + 1,
        CALLS_PER_GPU,
        series[0],
        GPUS * CALLS_PER_GPU_LINKS + 1,
        CALLS_PER_GPU_LINKS,
        series[1],
    );
    let _ = writeln!(
        out,
        "| agent | window | CPU (share of a core) | CPU per tick | RSS MiB |\n|---|---:|---:|---:|---:|"
    );
    for (((name, _), cpu), rss) in agents.iter().zip(&used).zip(&rss) {
        let _ = writeln!(
            out,
            "| {name} | {wall:.0} s | {:.3} % | {:.0} µs | {rss:.1} |",
            cpu / wall * 100.0,
            cpu / wall * 1e6,
        );
    }
    for (name, i, j) in [
        ("difference: the probe, without links", 1, 0),
        (
            "difference: the links, fabric, PCIe and persistence readings",
            2,
            1,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {name} | | {:+.3} % | {:+.0} µs | {:+.1} |",
            (used[i] - used[j]) / wall * 100.0,
            (used[i] - used[j]) / wall * 1e6,
            rss[i] - rss[j]
        );
    }
    let _ = writeln!(
        out,
        "\nOf that, the NVML thread itself (the calls, reading the GPUs into a snapshot): {:.0} µs per tick without links, \
         {:.0} µs with them; the tick thread's collection (asking, waiting for the snapshot, writing the series; \
         `nodewatch_collector_duration_seconds`, mean of 30 ticks): {:.0} µs and {:.0} µs of wall time, the NVML thread's \
         work it waits for included; the rules, which also keep the GPU series' history: {:.0} µs and {:.0} µs per tick, \
         against {:.0} µs with the probe off.",
        nvml[0] / wall * 1e6,
        nvml[1] / wall * 1e6,
        collect[0] * 1e6,
        collect[1] * 1e6,
        rules[1] * 1e6,
        rules[2] * 1e6,
        rules[0] * 1e6,
    );
    Ok(out)
}
