//! Footprint: nodewatch's CPU share of a core and RSS, idle and under load (paced ioctls on a
//! watched device, a retransmit storm), next to Debian's node_exporter measured at the same
//! time; the in-kernel time of nodewatch's programs, and ring-buffer drops.

use std::{fmt::Write, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use super::{
    BpfStats,
    util::{
        ANY_TYPE, Flows, Loss, Nodewatch, Usage, env_num, node_exporter, prog_stats, sum, wait_log,
        watch,
    },
};

/// Idle and load configs: the defaults, with a watched device for the ioctl rows.
const NULL_WATCHED: &str = "probes:\n  gpu_ioctl: { devices: [/dev/null] }\n";

pub fn section(nodewatch: &Path, looper: &Path, dir: &Path) -> Result<String> {
    let idle_secs = env_num("NODEWATCH_BENCH_IDLE_SECS", 60);
    let load_secs = env_num("NODEWATCH_BENCH_LOAD_SECS", 20);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Footprint\n\nnodewatch (release build, default config, 1 s interval, default rules) and Debian's \
         `prometheus-node-exporter` (default collectors) run side by side; both are scraped every \
         15 s as a Prometheus would. CPU is user + system time from `/proc/<pid>/stat` over the \
         window, as a share of one core; RSS is the largest `VmRSS` seen (sampled every second). \
         In-kernel is the run time of nodewatch's eBPF programs (`kernel.bpf_stats_enabled=1`) \
         per second of wall time, as a share of one core: it is spent in the threads that make \
         the calls, not in the agent.\n"
    );
    let (ne, ne_addr) = node_exporter()?;

    crate::step(&format!("bench footprint: idle, {idle_secs} s"));
    let nw = Nodewatch::start(nodewatch, dir, "idle", "")?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    let u = watch(&[nw.proc.pid(), ne.pid()], idle_secs, &[nw.addr, ne_addr])?;
    let (idle_nw, idle_ne) = (u[0], u[1]);
    drop(nw);

    let _ = writeln!(
        out,
        "| scenario | window | nodewatch CPU (share of a core) | nodewatch RSS MiB | in-kernel (share of a core) | ring-buffer / in-flight drops | node_exporter CPU | node_exporter RSS MiB |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let row = |out: &mut String,
               name: &str,
               secs: u64,
               nw: Usage,
               k: Option<f64>,
               drops: Option<f64>,
               ne: Usage| {
        let _ = writeln!(
            out,
            "| {name} | {secs} s | {:.3} % | {:.1} | {} | {} | {:.3} % | {:.1} |",
            nw.cpu * 100.0,
            nw.rss_max,
            k.map_or("—".into(), |k| format!("{:.3} %", k * 100.0)),
            drops.map_or("—".into(), |d| format!("{d:.0}")),
            ne.cpu * 100.0,
            ne.rss_max
        );
    };
    row(
        &mut out,
        "idle (default config)",
        idle_secs,
        idle_nw,
        None,
        None,
        idle_ne,
    );

    // Load: paced ioctls on a watched device.
    let _stats = BpfStats::enable()?;
    let nw = Nodewatch::start(nodewatch, dir, "ioctl", NULL_WATCHED)?;
    let log = dir.join("ioctl.log");
    wait_log(&log, "programs attached")?;
    let mut cpu_by_rate = Vec::new();
    for rate in [0u64, 10_000, 100_000, 1_000_000] {
        crate::step(&format!(
            "bench footprint: {rate} ioctl/s on /dev/null (watched), {load_secs} s"
        ));
        let before = nw.metrics()?;
        let (k0, _) = prog_stats(nw.proc.pid(), ANY_TYPE);
        let load = (rate > 0)
            .then(|| {
                Command::new(looper)
                    .args([
                        "--paced",
                        "/dev/null",
                        &rate.to_string(),
                        &load_secs.to_string(),
                    ])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
            })
            .transpose()?;
        let t0 = std::time::Instant::now();
        let u = watch(&[nw.proc.pid(), ne.pid()], load_secs, &[nw.addr, ne_addr])?;
        let made = match load {
            Some(c) => {
                let o = c.wait_with_output()?;
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .unwrap_or(0.0)
            }
            None => 0.0,
        };
        let wall = t0.elapsed().as_secs_f64();
        let (k1, _) = prog_stats(nw.proc.pid(), ANY_TYPE);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let after = nw.metrics()?;
        let drops = sum(&after, "nodewatch_gpu_ioctl_events_dropped_total")
            - sum(&before, "nodewatch_gpu_ioctl_events_dropped_total");
        let timed = sum(&after, "nodewatch_gpu_ioctl_duration_seconds_count")
            - sum(&before, "nodewatch_gpu_ioctl_duration_seconds_count");
        if rate > 0 && timed < made {
            bail!("nodewatch timed {timed} of {made} ioctls");
        }
        let name = if rate == 0 {
            "watched device, no calls".to_string()
        } else {
            format!(
                "{} ioctl/s on the watched device ({:.0} made, {timed:.0} timed)",
                rate, made
            )
        };
        row(
            &mut out,
            &name,
            load_secs,
            u[0],
            Some((k1 - k0) / 1e9 / wall),
            Some(drops),
            u[1],
        );
        cpu_by_rate.push((rate, u[0].cpu, (k1 - k0) / 1e9 / wall));
    }
    drop(nw);

    // Load: a retransmit storm on a watched port.
    crate::step(&format!("bench footprint: retransmit storm, {load_secs} s"));
    let flows = Flows::start(8)?;
    let nw = Nodewatch::start(
        nodewatch,
        dir,
        "storm",
        &format!(
            "probes:\n  tcp_retransmits: {{ ports: [{}] }}\n",
            flows.port
        ),
    )?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = nw.metrics()?;
    let (k0, _) = prog_stats(nw.proc.pid(), ANY_TYPE);
    let loss = Loss::start(flows.port, 10)?;
    let t0 = std::time::Instant::now();
    let u = watch(&[nw.proc.pid(), ne.pid()], load_secs, &[nw.addr, ne_addr])?;
    let wall = t0.elapsed().as_secs_f64();
    drop(loss);
    let (k1, _) = prog_stats(nw.proc.pid(), ANY_TYPE);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let after = nw.metrics()?;
    let retrans = sum(&after, "nodewatch_tcp_retransmits_total")
        - sum(&before, "nodewatch_tcp_retransmits_total");
    row(
        &mut out,
        &format!(
            "retransmit storm: 8 flows, 10 % loss ({:.0} segments/s retransmitted)",
            retrans / wall
        ),
        load_secs,
        u[0],
        Some((k1 - k0) / 1e9 / wall),
        None,
        u[1],
    );
    drop((nw, flows, ne));

    // Verdicts against the targets.
    let idle_ok = idle_nw.cpu <= 0.005;
    let rss_ok = idle_nw.rss_max <= 30.0;
    let below = idle_nw.cpu < idle_ne.cpu && idle_nw.rss_max < idle_ne.rss_max;
    let _ = writeln!(
        out,
        "\nTargets: idle ≤ 0.5 % of a core: **{}** ({:.3} %); idle RSS ≤ 30 MiB: **{}** ({:.1} MiB); \
         below node_exporter (CPU and RSS): **{}** (node_exporter {:.3} %, {:.1} MiB).",
        met(idle_ok),
        idle_nw.cpu * 100.0,
        met(rss_ok),
        idle_nw.rss_max,
        met(below),
        idle_ne.cpu * 100.0,
        idle_ne.rss_max
    );
    if !(idle_ok && rss_ok && below) {
        let _ = writeln!(
            out,
            "Why a target can be missed: nodewatch works every 1 s tick whether scraped or not \
             (every collector, then every default rule over its history), while node_exporter \
             only works when scraped (every 15 s here); at this resolution (user + system ticks of \
             10 ms over the window) the two can also read the same. What would fix it: a longer \
             `interval` (CPU falls with it, detection time grows with it), or evaluating only the \
             rules whose input changed."
        );
    }
    let at = |r: u64| {
        cpu_by_rate
            .iter()
            .find(|c| c.0 == r)
            .copied()
            .context("rate")
    };
    let (_, c10k, k10k) = at(10_000)?;
    let (_, c100k, k100k) = at(100_000)?;
    let (_, c1m, k1m) = at(1_000_000)?;
    let _ = writeln!(
        out,
        "CPU growing less than linearly with the event rate: the agent's own CPU went {:.3} % → {:.3} % → {:.3} % \
         for 10 k → 100 k → 1 M ioctl/s (×{:.1} and ×{:.1} for ×10 the rate): **{}**. The in-kernel cost is \
         per event, so it grows with the rate by nature ({:.3} % → {:.3} % → {:.3} % of a core), paid by \
         the calling threads. Ring-buffer drops at 100 k ioctl/s: see the table (the ring buffer \
         carries only stalls — calls over the threshold — so calls on /dev/null never use it; the \
         in-flight table would count `inflight_full`).",
        c10k * 100.0,
        c100k * 100.0,
        c1m * 100.0,
        c100k / c10k.max(1e-9),
        c1m / c100k.max(1e-9),
        met(c100k / c10k.max(1e-9) < 10.0 && c1m / c100k.max(1e-9) < 10.0),
        k10k * 100.0,
        k100k * 100.0,
        k1m * 100.0,
    );
    Ok(out)
}

pub fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}
