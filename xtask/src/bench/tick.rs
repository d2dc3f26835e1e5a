//! The tick's own cost: the idle agent (release build, embedded defaults, 1 s tick, nobody
//! scraping) as a share of one core over a long window, next to the same agent built from an
//! earlier revision (`NODEWATCH_BENCH_BASELINE`, default the last commit before the store
//! was read typed) run at the same time; and where the time of one tick goes, from the
//! agent's own duration gauges.

use std::{
    fmt::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::util::{Nodewatch, env_num, rss_mib};

/// The revision the tick is compared with: the last one whose rules read the registry as
/// text encoded and parsed back every tick.
const BASELINE_REV: &str = "a0b97bf";

/// Builds `rev` in a worktree under `dir` (kept, so a second run is quick); its binary.
fn build_baseline(rev: &str, dir: &Path) -> Result<PathBuf> {
    let root = crate::root_dir();
    let tree = dir.join(format!("baseline-{rev}"));
    if !tree.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&tree);
        let _ = Command::new("git")
            .args(["worktree", "prune"])
            .current_dir(&root)
            .status();
        let ok = Command::new("git")
            .args(["worktree", "add", "--detach"])
            .arg(&tree)
            .arg(rev)
            .current_dir(&root)
            .status()
            .context("git worktree add")?
            .success();
        if !ok {
            bail!("cannot check out {rev} (a shallow clone?)");
        }
    }
    crate::step(&format!("bench tick: release build of {rev}"));
    let ok = Command::new("cargo")
        .args(["build", "--release", "-p", "nodewatch"])
        .current_dir(&tree)
        // Its own target folder: the two trees' builds do not evict each other.
        .env("CARGO_TARGET_DIR", tree.join("target"))
        .status()
        .context("cargo build of the baseline")?
        .success();
    if !ok {
        bail!("the baseline {rev} does not build");
    }
    Ok(tree.join("target/release/nodewatch"))
}

/// Nanoseconds on a CPU of every thread of `pid` so far (`/proc/<pid>/task/*/schedstat`):
/// exact, unlike the 10 ms ticks of `utime`/`stime`, which a 1 ms burst per second only
/// samples.
pub(super) fn run_ns(pid: u32) -> Result<f64> {
    let mut total = 0.0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(t?.path().join("schedstat"))?;
        total += text
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse::<f64>()?;
    }
    Ok(total)
}

/// Mean of the gauge samples of `metric` per label set, over the texts scraped.
fn gauge_means(texts: &[String], metric: &str) -> Vec<(String, f64)> {
    let mut sums: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for t in texts {
        for line in t.lines() {
            let Some(rest) = line.strip_prefix(metric) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            if !(labels.is_empty() || labels.starts_with('{')) {
                continue;
            }
            if let Ok(v) = value.parse::<f64>() {
                let e = sums.entry(labels.to_string()).or_default();
                e.0 += v;
                e.1 += 1.0;
            }
        }
    }
    sums.into_iter().map(|(k, (s, n))| (k, s / n)).collect()
}

pub fn section(nodewatch: &Path, dir: &Path) -> Result<String> {
    let secs = env_num("NODEWATCH_BENCH_TICK_SECS", 600);
    let rev = std::env::var("NODEWATCH_BENCH_BASELINE").unwrap_or_else(|_| BASELINE_REV.into());
    let baseline = match build_baseline(&rev, dir) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("xtask: bench tick: no baseline: {e:#}");
            None
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## The tick's own cost\n\nThe idle agent: release build, embedded default config and rules, 1 s tick, \
         nothing scraping it, no heartbeats or notifiers. CPU is the time every thread of the \
         agent spent on a CPU (`/proc/<pid>/task/*/schedstat`, in ns) over the window, as a \
         share of one core (0.10 % is 1 ms of CPU per 1 s tick). `before` is the same agent built from `{rev}`, whose rules read \
         the registry as OpenMetrics text encoded and parsed back every tick; both run side by \
         side over the same window. Reproduce: `NODEWATCH_BENCH_ONLY=tick \
         NODEWATCH_BENCH_TICK_SECS={secs} cargo xtask bench`.\n"
    );
    let now = Nodewatch::start(nodewatch, dir, "tick-after", "")?;
    let before = baseline
        .as_deref()
        .map(|b| Nodewatch::start(b, dir, "tick-before", ""))
        .transpose()?;
    std::thread::sleep(Duration::from_secs(5));
    let mut agents = vec![("after (this tree)", &now)];
    if let Some(b) = &before {
        agents.insert(0, ("before", b));
    }
    crate::step(&format!(
        "bench tick: {secs} s idle, {} agents",
        agents.len()
    ));
    let start: Vec<f64> = agents
        .iter()
        .map(|(_, a)| run_ns(a.proc.pid()))
        .collect::<Result<_>>()?;
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
    let _ = writeln!(
        out,
        "| agent | window | CPU (share of a core) | CPU per tick | RSS MiB |\n|---|---:|---:|---:|---:|"
    );
    for ((name, a), cpu) in agents.iter().zip(&used) {
        let _ = writeln!(
            out,
            "| {name} | {wall:.0} s | {:.3} % | {:.0} µs | {:.1} |",
            cpu / wall * 100.0,
            cpu / wall * 1e6,
            rss_mib(a.proc.pid())?
        );
    }
    // Where one tick's time goes: the last tick's durations, sampled every second.
    let mut texts = Vec::new();
    for _ in 0..30 {
        texts.push(now.metrics()?);
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = writeln!(
        out,
        "\nWhere the time of one tick goes (this tree; wall time of each step, mean of 30 ticks, \
         from `nodewatch_collector_duration_seconds` and `nodewatch_rule_evaluation_duration_seconds`, \
         which includes handing the tick's samples to the history):\n\n| step | µs |\n|---|---:|"
    );
    for (labels, v) in gauge_means(&texts, "nodewatch_collector_duration_seconds") {
        let _ = writeln!(out, "| collector {labels} | {:.0} |", v * 1e6);
    }
    for (_, v) in gauge_means(&texts, "nodewatch_rule_evaluation_duration_seconds") {
        let _ = writeln!(out, "| rules | {:.0} |", v * 1e6);
    }
    Ok(out)
}
