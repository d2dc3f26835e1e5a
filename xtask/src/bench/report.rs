//! The benchmark's Markdown report.

use std::{fmt::Write, thread};

use super::{CALLS, PASSES, ROUNDS, Scenario};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Quotes, per scenario, the median of every round, and the cost above the floor as the
/// median over passes of (this scenario − floor) within the same pass: the machine's speed
/// drifts (other work shares it), and a pass runs its scenarios within seconds of each other.
pub fn markdown(results: &[Vec<Vec<(f64, f64)>>], in_kernel: &[(&str, f64)]) -> String {
    let mut out = String::new();
    let all = |i: usize| -> Vec<f64> { results[i].iter().flatten().map(|r| r.0).collect() };
    let pass_medians = |i: usize| -> Vec<f64> {
        results[i]
            .iter()
            .map(|p| median(p.iter().map(|r| r.0).collect()))
            .collect()
    };
    let floor_by_pass = pass_medians(1);
    let above = |i: usize| {
        median(
            pass_medians(i)
                .iter()
                .zip(&floor_by_pass)
                .map(|(a, f)| a - f)
                .collect(),
        )
    };
    let _ = writeln!(
        out,
        "\n### Result ({PASSES} passes × {ROUNDS} rounds × {CALLS} calls per scenario)\n"
    );
    let _ = writeln!(
        out,
        "| scenario | ns per ioctl (median) | pass medians | above the floor (paired, median) | getppid ns (median) |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|---:|");
    for (i, s) in Scenario::ALL.iter().enumerate() {
        let passes: Vec<String> = pass_medians(i).iter().map(|m| format!("{m:.0}")).collect();
        let extra = if i <= 1 {
            "—".to_string()
        } else {
            format!("{:+.0}", above(i))
        };
        let ppid = median(results[i].iter().flatten().map(|r| r.1).collect());
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {extra} | {ppid:.0} |",
            s.describe(),
            median(all(i)),
            passes.join(" "),
        );
    }
    let floor_prog = in_kernel.first().map_or(0.0, |k| k.1);
    let _ = writeln!(
        out,
        "\nIn-kernel run time of the programs per ioctl (both tracepoints; one more pass with \
         kernel.bpf_stats_enabled=1, which adds its own clock reads to every figure):\n"
    );
    let _ = writeln!(
        out,
        "| programs | ns per ioctl | above the empty programs |"
    );
    let _ = writeln!(out, "|---|---:|---:|");
    for (name, ns) in in_kernel {
        let _ = writeln!(out, "| {name} | {ns:.0} | {:+.0} |", ns - floor_prog);
    }
    let (watched, compat, bpftrace) = (above(5), above(6), above(7));
    let _ = writeln!(
        out,
        "\nnodewatch per watched call above the floor: {watched:.0} ns (target ≤ 150 ns: {}), \
         {compat:.0} ns with the fallback fd walk; bpftrace doing the same timing: \
         {bpftrace:.0} ns (nodewatch {} bpftrace).",
        if watched <= 150.0 { "met" } else { "missed" },
        if watched <= bpftrace {
            "no slower than"
        } else {
            "slower than"
        }
    );
    out
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let clock =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default()
            .trim()
            .to_string();
    format!("Machine: {cpu}, {cpus} CPUs, kernel {kernel}, clocksource {clock}.")
}
