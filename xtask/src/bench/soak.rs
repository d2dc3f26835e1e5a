//! Soak: nodewatch's resident memory over a long run at a high event rate (100 k ioctl/s on a
//! watched device, scraped every 10 s as a Prometheus would): it must stay flat.

use std::{
    fmt::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::util::{Nodewatch, env_num, rss_mib, series_count, sum, wait_log};

const RATE: u64 = 100_000;

pub fn section(nodewatch: &Path, looper: &Path, dir: &Path) -> Result<String> {
    let secs = env_num("NODEWATCH_BENCH_SOAK_SECS", 600);
    crate::step(&format!(
        "bench soak: {RATE} ioctl/s on a watched device for {secs} s"
    ));
    let nw = Nodewatch::start(
        nodewatch,
        dir,
        "soak",
        "probes:\n  gpu_ioctl: { devices: [/dev/null] }\n",
    )?;
    wait_log(&dir.join("soak.log"), "programs attached")?;
    let load = Command::new(looper)
        .args(["--paced", "/dev/null", &RATE.to_string(), &secs.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(10));
        let text = nw.metrics()?;
        samples.push((
            started.elapsed().as_secs(),
            rss_mib(nw.proc.pid())?,
            series_count(&text),
            sum(&text, "nodewatch_gpu_ioctl_duration_seconds_count"),
        ));
    }
    let _ = load.wait_with_output()?;
    let text = nw.metrics()?;
    let drops = sum(&text, "nodewatch_gpu_ioctl_events_dropped_total");

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Soak: memory at a sustained event rate\n\n`NODEWATCH_BENCH_ONLY=soak cargo xtask bench` \
         (`NODEWATCH_BENCH_SOAK_SECS`, default 600): nodewatch (release, default config and rules, \
         /dev/null watched as a GPU) under {RATE} ioctl/s for {secs} s, `/metrics` scraped every \
         10 s; `VmRSS` and the number of series sampled at each scrape.\n"
    );
    let _ = writeln!(out, "| elapsed | RSS MiB | series | ioctls timed |");
    let _ = writeln!(out, "|---:|---:|---:|---:|");
    let step = (samples.len() / 10).max(1);
    for (i, (t, rss, series, timed)) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == samples.len() {
            let _ = writeln!(out, "| {t} s | {rss:.1} | {series} | {timed:.0} |");
        }
    }
    let first = samples.iter().take(6).map(|s| s.1).fold(0.0, f64::max);
    let last = samples
        .iter()
        .rev()
        .take(6)
        .map(|s| s.1)
        .fold(0.0, f64::max);
    let flat = last <= first * 1.05 + 1.0;
    let _ = writeln!(
        out,
        "\nLargest RSS in the first minute {first:.1} MiB, in the last minute {last:.1} MiB: \
         {}. Ring-buffer / in-flight drops: {drops:.0}.",
        if flat { "flat (**met**)" } else { "**grew**" }
    );
    Ok(out)
}
