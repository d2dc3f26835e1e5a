//! The tick's own cost: the idle agent (release build, embedded defaults, 1 s tick, nobody
//! scraping) as a share of one core over a long window, next to the same agent built from an
//! earlier revision (`NODEWATCH_BENCH_BASELINE`, default the last commit before series kept
//! a stable identity across ticks) run at the same time; where the time of one tick goes, from
//! both agents' own duration gauges; and the tick's path from the store to the history timed
//! alone over many series (`agent/examples/tick_path.rs`, built in both trees).

use std::{
    fmt::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::util::{Nodewatch, env_num, rss_mib};

/// The revision the tick is compared with: the last one whose tick cloned every label set of
/// the store into a list, and found vanished series by building a set of them all.
const BASELINE_REV: &str = "ccb8277";

/// The example that times the tick's path alone, in the repository.
const TICK_PATH: &str = "agent/examples/tick_path.rs";

/// The worktree of `rev` under `dir`.
fn baseline_tree(rev: &str, dir: &Path) -> PathBuf {
    dir.join(format!("baseline-{rev}"))
}

/// Builds `rev` in a worktree under `dir` (kept, so a second run is quick); its binary.
fn build_baseline(rev: &str, dir: &Path) -> Result<PathBuf> {
    let root = crate::root_dir();
    let tree = baseline_tree(rev, dir);
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

/// Builds the tick-path example in `tree` (into `target`) and runs it: its lines
/// `<samples> <rules> <median µs> <min µs>`.
fn tick_path(tree: &Path, target: &Path) -> Result<Vec<(String, String, f64, f64)>> {
    let root = crate::root_dir();
    if tree != root {
        // The baseline predates the example: the same file, built against its library.
        std::fs::create_dir_all(tree.join("agent/examples"))?;
        std::fs::copy(root.join(TICK_PATH), tree.join(TICK_PATH))?;
    }
    crate::step(&format!("bench tick: tick_path in {}", tree.display()));
    let ok = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "nodewatch",
            "--example",
            "tick_path",
        ])
        .current_dir(tree)
        .env("CARGO_TARGET_DIR", target)
        .status()
        .context("cargo build of the tick_path example")?
        .success();
    if !ok {
        bail!("the tick_path example does not build in {}", tree.display());
    }
    let out = Command::new(target.join("release/examples/tick_path"))
        .output()
        .context("tick_path")?;
    if !out.status.success() {
        bail!("tick_path failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [series, rules, median, min] => Ok((
                    series.to_string(),
                    rules.to_string(),
                    median.parse()?,
                    min.parse()?,
                )),
                _ => bail!("tick_path printed {l:?}"),
            }
        })
        .collect()
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
         share of one core (0.10 % is 1 ms of CPU per 1 s tick). `before` is the same agent built from `{rev}`, whose tick \
         cloned every label set of the store into a list and found vanished series by building a \
         set of them all; both run side by side over the same window. Reproduce: `NODEWATCH_BENCH_ONLY=tick \
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
    let mut texts: Vec<Vec<String>> = vec![Vec::new(); agents.len()];
    for _ in 0..30 {
        for ((_, a), t) in agents.iter().zip(&mut texts) {
            t.push(a.metrics()?);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = writeln!(
        out,
        "\nWhere the time of one tick goes (wall time of each step, mean of 30 ticks, \
         from `nodewatch_collector_duration_seconds` and `nodewatch_rule_evaluation_duration_seconds`, \
         which includes handing the tick's samples to the history), in µs:\n"
    );
    let header: Vec<&str> = agents.iter().map(|(n, _)| *n).collect();
    let _ = writeln!(
        out,
        "| step | {} |\n|---|{}",
        header.join(" | "),
        "---:|".repeat(header.len())
    );
    let means = |metric: &str| -> Vec<Vec<(String, f64)>> {
        texts.iter().map(|t| gauge_means(t, metric)).collect()
    };
    let collectors = means("nodewatch_collector_duration_seconds");
    let rules = means("nodewatch_rule_evaluation_duration_seconds");
    let last = collectors.last().cloned().unwrap_or_default();
    for (labels, _) in &last {
        let cells: Vec<String> = collectors
            .iter()
            .map(|m| {
                m.iter()
                    .find(|(l, _)| l == labels)
                    .map_or("–".into(), |(_, v)| format!("{:.0}", v * 1e6))
            })
            .collect();
        let _ = writeln!(out, "| collector {labels} | {} |", cells.join(" | "));
    }
    let cells: Vec<String> = rules
        .iter()
        .map(|m| {
            m.first()
                .map_or("–".into(), |(_, v)| format!("{:.0}", v * 1e6))
        })
        .collect();
    let _ = writeln!(out, "| rules | {} |", cells.join(" | "));
    drop(before);
    drop(now);

    // The path alone, over more series than an idle node has.
    let root = crate::root_dir();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let after = tick_path(&root, &target)?;
    let tree = baseline_tree(&rev, dir);
    let before = if baseline.is_some() {
        match tick_path(&tree, &tree.join("target")) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("xtask: bench tick: no baseline tick_path: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let _ = writeln!(
        out,
        "\nThe tick's path alone (`{TICK_PATH}`, release build): a store giving N samples per \
         tick (counters, float gauges, and histograms for a tenth of the samples; every value \
         changed and one series replaced each tick), then one `LiveRules::tick` — the store's samples into the \
         history, staleness, evaluation, pruning — with no rules and with the embedded default \
         rules. CPU time of the ticking thread per tick, median (min) of many ticks, in µs; \
         `before` is the same file built against `{rev}`.\n\n\
         | samples | rules | before | after (this tree) |\n|---:|---|---:|---:|"
    );
    for (series, rules, median, min) in &after {
        let b = before
            .as_ref()
            .and_then(|b| b.iter().find(|x| &x.0 == series && &x.1 == rules))
            .map_or("–".into(), |x| format!("{:.0} ({:.0})", x.2, x.3));
        let _ = writeln!(out, "| {series} | {rules} | {b} | {median:.0} ({min:.0}) |");
    }
    Ok(out)
}
