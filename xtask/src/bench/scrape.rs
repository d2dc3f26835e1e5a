//! `/metrics` latency with at least 1 000 series: nodewatch given enough TCP heartbeats (each
//! target adds its series) to pass 1 000, scraped over a new connection each time; node_exporter
//! scraped the same way in the same run.

use std::{
    fmt::Write,
    net::{SocketAddr, TcpListener},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::util::{Nodewatch, env_num, http_get, node_exporter, pct, series_count};

fn latencies(addr: SocketAddr, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        http_get(addr, "/metrics")?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
        thread::sleep(Duration::from_millis(5));
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

pub fn section(nodewatch: &Path, dir: &Path) -> Result<String> {
    let n = env_num("NODEWATCH_BENCH_SCRAPES", 1000) as usize;
    // A listener that accepts every heartbeat connection (the kernel completes them).
    let target = TcpListener::bind("127.0.0.1:0")?;
    let taddr = target.local_addr()?;
    thread::spawn(move || for _c in target.incoming() {});
    crate::step("bench scrape: counting the default series");
    let base = {
        let nw = Nodewatch::start(nodewatch, dir, "scrape0", "")?;
        thread::sleep(Duration::from_secs(2));
        series_count(&nw.metrics()?)
    };
    // Each TCP heartbeat exports up and latency, and a line of nodewatch_alerts per rule
    // does not change: two series per target.
    let targets = (1000usize.saturating_sub(base)).div_ceil(2) + 10;
    let mut cfg = String::from("heartbeats:\n");
    for i in 0..targets {
        let _ = writeln!(cfg, "  - {{ name: t{i}, tcp: \"{taddr}\", interval: 5s }}");
    }
    let nw = Nodewatch::start(nodewatch, dir, "scrape", &cfg)?;
    thread::sleep(Duration::from_secs(7));
    let series = series_count(&nw.metrics()?);
    crate::step(&format!("bench scrape: {n} scrapes of {series} series"));
    let ours = latencies(nw.addr, n)?;
    let bytes = nw.metrics()?.len();
    drop(nw);
    let (ne, ne_addr) = node_exporter()?;
    let ne_text = http_get(ne_addr, "/metrics")?;
    let ne_series = series_count(&ne_text);
    crate::step(&format!("bench scrape: {n} scrapes of node_exporter"));
    let theirs = latencies(ne_addr, n)?;
    drop(ne);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Scrape latency\n\n{n} sequential `GET /metrics`, each on a new loopback connection \
         (5 ms apart), timed from connect to the last byte. nodewatch carries its default series \
         ({base}) plus {targets} TCP heartbeats to reach at least 1 000 series; node_exporter \
         (default collectors) is scraped the same way in the same run.\n"
    );
    let _ = writeln!(
        out,
        "| exporter | series | bytes | p50 ms | p99 ms | max ms |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let _ = writeln!(
        out,
        "| nodewatch | {series} | {bytes} | {:.2} | {:.2} | {:.2} |",
        pct(&ours, 50.0),
        pct(&ours, 99.0),
        pct(&ours, 100.0)
    );
    let _ = writeln!(
        out,
        "| node_exporter | {ne_series} | {} | {:.2} | {:.2} | {:.2} |",
        ne_text.len(),
        pct(&theirs, 50.0),
        pct(&theirs, 99.0),
        pct(&theirs, 100.0)
    );
    let p99 = pct(&ours, 99.0);
    let _ = writeln!(
        out,
        "\nTarget p99 ≤ 10 ms with 1 000 series: **{}** ({p99:.2} ms with {series} series).",
        super::footprint::met(p99 <= 10.0 && series >= 1000)
    );
    Ok(out)
}
