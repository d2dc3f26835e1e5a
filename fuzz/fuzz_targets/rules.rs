//! The rule-file parser and the evaluator: a rule file that loads is evaluated for a few
//! ticks over a fixed history of the agent's own kind of series, as the agent would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodewatch::{
    rules::{engine::Engine, file},
    store::{History, Labels},
};

const SERIES: &[(&str, &[(&str, &str)])] = &[
    ("nodewatch_tcp_retransmits_total", &[("port", "8000")]),
    ("nodewatch_tcp_retransmits_total", &[("port", "other")]),
    ("nodewatch_gpu_xid_errors_total", &[("code", "79")]),
    ("nodewatch_heartbeat_up", &[("target", "inference")]),
    (
        "nodewatch_probe_up",
        &[("probe", "gpu_ioctl"), ("mode", "off")],
    ),
    ("nodewatch_memory_used_ratio", &[]),
    ("nodewatch_disk_used_ratio", &[("mount", "/")]),
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(groups) = file::parse("fuzz.yaml", text) else {
        return;
    };
    let mut history = History::new(3_600_000, 10_000);
    for t in 0..20i64 {
        for (i, (name, labels)) in SERIES.iter().enumerate() {
            let mut pairs: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            pairs.push(("__name__".into(), name.to_string()));
            let v = match i % 3 {
                0 => (t * (i as i64 + 1)) as f64,
                1 => f64::from(t as i32 % 2),
                _ => 0.5 + t as f64 / 100.0,
            };
            history.append(&Labels::from_pairs(pairs), t * 15_000, v);
        }
    }
    let mut engine = Engine::new(groups);
    for t in 0..25i64 {
        for f in engine.evaluate(&mut history, t * 15_000, false, 15_000) {
            let _ = f.error.to_string();
        }
    }
});
