//! `cargo xtask corpus DIR`: how much of a corpus of public rule files and rule-test files
//! nodewatch takes as promtool does. The corpus lives outside the repository (see README,
//! "Rules written for Prometheus"): every `*.yml`/`*.yaml` under DIR/rules with top-level
//! `groups:` is a rule file, every one under DIR/tests with `rule_files:` and `tests:` a
//! rule-test file. Rule files that promtool refuses are left out; of the rules in the rest,
//! the share that `nodewatch check-rules` loads is reported (an error is charged to the rule
//! whose entry holds its line, an error outside every rule to all of the file's rules). Of
//! the test files, the share where `nodewatch test-rules` gives promtool's verdict.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// Runs the measurement with the nodewatch binary `bin`.
pub fn corpus(dir: &Path, bin: &str) -> Result<()> {
    let mut files = Vec::new();
    walk(&dir.join("rules"), &mut files)?;
    walk(&dir.join("tests"), &mut files)?;
    files.sort();
    if files.is_empty() {
        bail!("no YAML files under {0}/rules and {0}/tests", dir.display());
    }
    let tests_dir = dir.join("tests");
    let (mut accepted, mut loaded, mut refused_files) = (0usize, 0usize, 0usize);
    let (mut tests, mut agree) = (0usize, 0usize);
    let mut refused = Vec::new();
    let mut disagreements = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let top = |key: &str| {
            text.lines().any(|l| {
                l.starts_with(key) || l.starts_with(&format!("\"{}\"", &key[..key.len() - 1]))
            })
        };
        let is_test = f.starts_with(&tests_dir);
        if is_test && top("rule_files:") && top("tests:") {
            tests += 1;
            let (p_ok, _) = run("promtool", &["test", "rules"], f)?;
            let (n_ok, n_err) = run(bin, &["test-rules"], f)?;
            if p_ok == n_ok {
                agree += 1;
            } else {
                let first = n_err.lines().take(6).collect::<Vec<_>>().join("\n      ");
                disagreements.push(format!(
                    "{}: promtool {}, nodewatch {}\n      {first}",
                    f.display(),
                    word(p_ok),
                    word(n_ok)
                ));
            }
        } else if !is_test && top("groups:") {
            let (p_ok, _) = run("promtool", &["check", "rules"], f)?;
            if !p_ok {
                refused_files += 1;
                continue;
            }
            let starts = rule_starts(&text);
            accepted += starts.len();
            let (n_ok, n_err) = run(bin, &["check-rules"], f)?;
            if n_ok {
                loaded += starts.len();
                continue;
            }
            let mut bad = vec![false; starts.len()];
            for line in n_err.lines() {
                refused.push(line.to_string());
                match error_line(line).map(|l| starts.partition_point(|&s| s <= l)) {
                    Some(i) if i > 0 => bad[i - 1] = true,
                    _ => bad.iter_mut().for_each(|b| *b = true),
                }
            }
            loaded += bad.iter().filter(|b| !**b).count();
        }
    }
    println!("rules refused by nodewatch check-rules:");
    for r in &refused {
        println!("  {r}");
    }
    println!("rule-test files where the verdicts differ:");
    for d in &disagreements {
        println!("  {d}");
    }
    let pct = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    println!(
        "rules: {loaded} of {accepted} that promtool accepts load in nodewatch ({:.1} %); {refused_files} rule files promtool refuses were left out",
        pct(loaded, accepted)
    );
    println!(
        "rule tests: nodewatch gives promtool's verdict on {agree} of {tests} files ({:.1} %)",
        pct(agree, tests)
    );
    Ok(())
}

fn word(ok: bool) -> &'static str {
    if ok { "pass" } else { "FAIL" }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Lines (1-based) where a rule's entry starts: `- alert:` or `- record:`, quoted or not.
fn rule_starts(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            let Some(rest) = t.strip_prefix('-') else {
                return false;
            };
            let key = rest.trim_start().trim_start_matches('"');
            key.starts_with("alert") || key.starts_with("record")
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The line of a `file:line:col: message` error.
fn error_line(line: &str) -> Option<usize> {
    let mut parts = line.rsplitn(2, ".yml:").chain(line.rsplitn(2, ".yaml:"));
    parts.find_map(|p| p.split(':').next()?.parse().ok())
}

fn run(program: &str, args: &[&str], file: &Path) -> Result<(bool, String)> {
    let started = Instant::now();
    let out = Command::new(program)
        .args(args)
        .arg(file.file_name().context("a file")?)
        .current_dir(file.parent().context("a folder")?)
        .output()
        .with_context(|| format!("cannot start `{program}`"))?;
    if started.elapsed().as_secs() > 30 {
        eprintln!("slow: {program} on {}", file.display());
    }
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    ))
}
