//! The tick's path from the store to the rules' history, timed alone: a store giving `N`
//! samples per tick (counters, float gauges and a few histograms of 30 samples each, as the
//! collectors write them), every value changed and one series replaced each tick, then
//! `LiveRules::tick` (samples into the history, staleness, evaluation, pruning), with no rules
//! or with the embedded default rules. It prints the CPU time of one tick, in µs, as
//! `<N> <rules> <median> <min>` lines. `cargo xtask bench` (section tick) builds it in
//! this tree and in the baseline's and runs both; it uses only what both trees have.
//!
//! `cargo run --release -p nodewatch --example tick_path -- 100 1000 5000`

use nodewatch::{
    label_set,
    rules::{
        self,
        live::{LiveRules, RuleMetrics},
    },
    store::{Family, GaugeF64, Log2Histogram, Store},
};
use nodewatch_common::gpu_ioctl::BUCKETS;
use prometheus_client::metrics::counter::Counter;

label_set! {
    struct Port { port }
}

label_set! {
    struct Target { target, kind }
}

/// CPU time of this thread, in ns: other load on the machine does not count.
fn thread_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Per-tick CPU times (ns) of `ticks` ticks over a store of about `series` samples.
fn run(series: usize, with_rules: bool, ticks: usize) -> Vec<u64> {
    let mut store = Store::new();
    let metrics = RuleMetrics::register(&mut store);
    let counters = Family::<Port, Counter>::default();
    let gauges = Family::<Target, GaugeF64>::default();
    let hist = Family::<Port, Log2Histogram>::default();
    store.register("bench_counter", "C", counters.clone());
    store.register("bench_ratio", "G", gauges.clone());
    store.register("bench_seconds", "H", hist.clone());
    // A histogram series is 30 samples; a tenth of the samples are histograms.
    let histograms = (series / 300).max(1);
    let half = (series - histograms * 30) / 2;
    let defs = if with_rules {
        rules::default_rules()
    } else {
        Vec::new()
    };
    let mut live = LiveRules::new(defs, metrics, 1000);
    let mut out = Vec::with_capacity(ticks);
    let mut buckets = [0u64; BUCKETS];
    for tick in 0..ticks + 10 {
        // What collectors do: set every value, and now and then replace a series.
        for p in 0..half {
            counters
                .get_or_create(&Port {
                    port: p.to_string(),
                })
                .inc();
        }
        for p in 0..half {
            gauges
                .get_or_create(&Target {
                    target: format!("t{p}"),
                    kind: "some".into(),
                })
                .set(tick as f64 / (p + 1) as f64);
        }
        buckets[12 + tick % 20] += 1;
        for d in 0..histograms {
            hist.get_or_create(&Port {
                port: format!("/dev/nvidia{d}"),
            })
            .set(&buckets, tick as u64 * 1000);
        }
        counters.remove(&Port {
            port: (tick % half.max(1)).to_string(),
        });
        let written = thread_ns();
        live.tick(tick as i64 * 1000, &store);
        // The collectors' writes are the same in both trees; only the tick is timed.
        if tick >= 10 {
            out.push(thread_ns() - written);
        }
    }
    out
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("series counts"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000, 5000]
    } else {
        sizes
    };
    for series in sizes {
        for with_rules in [false, true] {
            let ticks = (200_000 / series).clamp(20, 300);
            let mut t = run(series, with_rules, ticks);
            t.sort_unstable();
            println!(
                "{series} {} {:.1} {:.1}",
                if with_rules { "default" } else { "none" },
                t[t.len() / 2] as f64 / 1e3,
                t[0] as f64 / 1e3
            );
        }
    }
}
