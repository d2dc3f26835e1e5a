//! `cargo xtask fuzz [SECONDS]`: every cargo-fuzz target of `fuzz/` for a set time, seeded
//! from the repository's real files; prints the executions per target and fails on a crash,
//! a hang or a leak, naming the input libFuzzer saved.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{root_dir, step};

/// The targets, and the repository files (relative to the root) that seed each one besides
/// `fuzz/seeds/<target>/`. `fuzz/dicts/<target>.dict`, when present, gives libFuzzer the
/// format's keywords.
const TARGETS: &[(&str, &[&str])] = &[
    ("config", &["packaging/config.yaml"]),
    ("rules", &["alerts", "packaging/rules.d"]),
    ("rule_tests", &["alerts/tests", "alerts/tests/failing"]),
    ("xid", &[]),
    ("http", &[]),
];

/// Build flags: no sanitizer (the agent has no unsafe code on these paths, and without ASan
/// a second covers several times more inputs), debug assertions on so that an arithmetic
/// overflow is a finding rather than a silent wrap.
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

/// Installs cargo-fuzz unless a working one is on the path.
pub fn setup() -> Result<()> {
    if let Some(v) = crate::output("cargo", &["fuzz", "--version"]) {
        println!("    present: {}", v.trim());
        return Ok(());
    }
    println!("    building cargo-fuzz (a few minutes)");
    crate::sh("cargo", ["install", "cargo-fuzz", "--locked"])
}

/// Runs each target for `seconds`; fails if one finds anything.
pub fn fuzz(seconds: u64) -> Result<()> {
    let root = root_dir();
    let work = target_dir().join("fuzz");
    step("fuzz: cargo +nightly fuzz build (all targets)");
    let mut build = vec!["+nightly", "fuzz", "build"];
    build.extend(BUILD_FLAGS);
    crate::sh("cargo", build)?;
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for (target, sources) in TARGETS {
        let seeds = work.join("seeds").join(target);
        gather_seeds(&root, target, sources, &seeds)?;
        let corpus = work.join("corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        step(&format!("fuzz: {target} for {seconds} s"));
        let dict = root.join(format!("fuzz/dicts/{target}.dict"));
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run"])
            .args(BUILD_FLAGS)
            .arg(target)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A single input taking this long is a hang, and a finding.
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .args(dict.is_file().then(|| format!("-dict={}", dict.display())))
            .current_dir(&root)
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        let out = cmd
            .output()
            .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = executions(&log);
        let corpus_size = fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        report.push(format!(
            "    {target:<12} {:>12} executions  {corpus_size:>6} inputs in corpus",
            runs.map_or("?".into(), |r| r.to_string())
        ));
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("{}", tail.join("\n"));
            failed.push(format!(
                "{target}: {} (inputs kept in fuzz/artifacts/{target}/)",
                out.status
            ));
        }
    }
    step("fuzz: executions per target");
    report.iter().for_each(|l| println!("{l}"));
    if !failed.is_empty() {
        bail!("fuzzing found problems:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root_dir().join("target"))
}

/// Executions, from libFuzzer's final statistics (`stat::number_of_executed_units: N`, also
/// printed after a crash) or its `Done N runs in S second(s)` line.
fn executions(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let n = l
            .strip_prefix("stat::number_of_executed_units:")
            .or_else(|| l.strip_prefix("Done "))?;
        n.split_whitespace().next()?.parse().ok()
    })
}

/// Copies the committed seeds and the repository's real files into one folder.
fn gather_seeds(root: &Path, target: &str, sources: &[&str], into: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(into);
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let committed = format!("fuzz/seeds/{target}");
    let mut n = 0;
    for src in std::iter::once(committed.as_str()).chain(sources.iter().copied()) {
        let path = root.join(src);
        let files: Vec<PathBuf> = if path.is_dir() {
            fs::read_dir(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        } else if path.is_file() {
            vec![path]
        } else {
            continue;
        };
        for f in files {
            n += 1;
            let name = format!("{n:03}-{}", f.file_name().unwrap_or_default().display());
            fs::copy(&f, into.join(name)).with_context(|| format!("copying {}", f.display()))?;
        }
    }
    if n == 0 {
        bail!("no seeds for fuzz target {target}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_libfuzzer_totals() {
        let log = "#1024\tpulse  cov: 10\nDone 52311 runs in 5 second(s)\nstat::number_of_executed_units: 52312\n";
        assert_eq!(super::executions(log), Some(52312));
        assert_eq!(super::executions("Done 7 runs in 1 second(s)"), Some(7));
        assert_eq!(super::executions("crash"), None);
    }
}
