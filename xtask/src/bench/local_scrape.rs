//! Local scrape's cost: the tick's time per 1 000 scraped series (a fake exporter serving N
//! gauges, scraped every second, against the same agent with no target), and the agent's
//! memory with Debian's node_exporter and a model server exposing vLLM's names scraped every
//! second. `NODEWATCH_BENCH_ONLY=local_scrape cargo xtask bench` runs it alone.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    tick::run_ns,
    util::{Nodewatch, env_num, node_exporter, rss_mib, sum},
};

/// An exporter on loopback serving one fixed body; stops on drop.
struct Exporter {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Exporter {
    fn start(body: String) -> Result<Self> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let body = Arc::new(body);
        thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((mut c, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let body = Arc::clone(&body);
                thread::spawn(move || {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf);
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(body.as_bytes());
                });
            }
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// `n` gauges of one family, as a model server with many label sets writes them.
fn gauges(n: usize) -> String {
    let mut s = String::from("# HELP bench_series A gauge.\n# TYPE bench_series gauge\n");
    for i in 0..n {
        let _ = writeln!(s, "bench_series{{model_name=\"m\",shard=\"{i}\"}} {i}");
    }
    s
}

/// A vLLM server's metrics (prometheus_client's text, a few dozen series).
fn vllm() -> String {
    let m = "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"";
    let mut s = String::new();
    for (name, v) in [
        ("vllm:num_requests_running", 8.0),
        ("vllm:num_requests_waiting", 3.0),
        ("vllm:gpu_cache_usage_perc", 0.42),
    ] {
        let _ = write!(
            s,
            "# HELP {name} x\n# TYPE {name} gauge\n{name}{{{m}}} {v}\n"
        );
    }
    for h in [
        "vllm:time_to_first_token_seconds",
        "vllm:time_per_output_token_seconds",
        "vllm:e2e_request_latency_seconds",
    ] {
        let _ = writeln!(s, "# HELP {h} x\n# TYPE {h} histogram");
        for (i, le) in [
            "0.01", "0.05", "0.1", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf",
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(s, "{h}_bucket{{le=\"{le}\",{m}}} {}.0", (i + 1) * 10);
        }
        let _ = writeln!(s, "{h}_count{{{m}}} 90.0\n{h}_sum{{{m}}} 42.5");
    }
    s
}

/// Mean of a gauge's samples over the texts (all label sets summed per text).
fn mean(texts: &[String], metric: &str) -> f64 {
    texts.iter().map(|t| sum(t, metric)).sum::<f64>() / texts.len().max(1) as f64
}

/// Per-tick figures of one agent over `secs`: CPU per second (all threads), the tick's own
/// time (collectors and rules, from its gauges) and the rules' history size.
struct Run {
    cpu_ms_per_s: f64,
    tick_us: f64,
    scrape_collect_us: f64,
    series: f64,
    rss: f64,
}

fn run(nodewatch: &Path, dir: &Path, name: &str, config: &str, secs: u64) -> Result<Run> {
    let a = Nodewatch::start(nodewatch, dir, name, config)?;
    thread::sleep(Duration::from_secs(3));
    let c0 = run_ns(a.proc.pid())?;
    let t0 = Instant::now();
    let mut texts = Vec::new();
    let mut rss: f64 = 0.0;
    while t0.elapsed() < Duration::from_secs(secs) {
        thread::sleep(Duration::from_secs(1));
        texts.push(a.metrics()?);
        rss = rss.max(rss_mib(a.proc.pid())?);
    }
    let cpu = (run_ns(a.proc.pid())? - c0) / 1e9;
    Ok(Run {
        cpu_ms_per_s: cpu / t0.elapsed().as_secs_f64() * 1e3,
        tick_us: (mean(&texts, "nodewatch_collector_duration_seconds")
            + mean(&texts, "nodewatch_rule_evaluation_duration_seconds"))
            * 1e6,
        scrape_collect_us: texts
            .iter()
            .map(|t| {
                t.lines()
                    .find(|l| {
                        l.starts_with("nodewatch_collector_duration_seconds{collector=\"scrape\"}")
                    })
                    .and_then(|l| l.rsplit_once(' '))
                    .and_then(|(_, v)| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .sum::<f64>()
            / texts.len().max(1) as f64
            * 1e6,
        series: mean(&texts, "nodewatch_rule_history_series"),
        rss,
    })
}

pub fn section(nodewatch: &Path, dir: &Path) -> Result<String> {
    let secs = env_num("NODEWATCH_BENCH_LOCAL_SCRAPE_SECS", 30);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Local scrape\n\nRelease build, embedded defaults plus `scrape:` targets scraped every \
         second (the agent's interval). **Tick cost per 1 000 scraped series**: a fake exporter on \
         loopback serves N gauges; the same agent runs {secs} s with no target and with N = 1 000, \
         5 000 and 10 000. `tick` is the mean wall time of one tick's steps (every collector's \
         `nodewatch_collector_duration_seconds`, the scrape collector's included, plus \
         `nodewatch_rule_evaluation_duration_seconds`, which includes handing the samples to \
         the rules' history); `CPU` is every thread of the agent (`schedstat`), so it also \
         counts the fetch and the parse on the scrape thread, and the extra tick each completed \
         scrape asks for. Reproduce: `NODEWATCH_BENCH_ONLY=local_scrape \
         NODEWATCH_BENCH_LOCAL_SCRAPE_SECS={secs} cargo xtask bench`.\n"
    );
    let _ = writeln!(
        out,
        "| scraped series | history series | tick (µs) | of it, the scrape collector (µs) | CPU (ms per s) | peak RSS MiB |\n|---:|---:|---:|---:|---:|---:|"
    );
    let mut base: Option<(f64, f64)> = None;
    let mut per_k = Vec::new();
    for n in [0usize, 1_000, 5_000, 10_000] {
        crate::step(&format!("bench local_scrape: {n} series, {secs} s"));
        let exporter = Exporter::start(gauges(n))?;
        let cfg = if n == 0 {
            String::new()
        } else {
            format!(
                "scrape:\n  - {{ job: bench, url: \"http://{}/metrics\" }}\n",
                exporter.addr
            )
        };
        let r = run(nodewatch, dir, &format!("local-scrape-{n}"), &cfg, secs)?;
        let _ = writeln!(
            out,
            "| {n} | {:.0} | {:.0} | {:.0} | {:.2} | {:.1} |",
            r.series, r.tick_us, r.scrape_collect_us, r.cpu_ms_per_s, r.rss
        );
        match base {
            None => base = Some((r.tick_us, r.cpu_ms_per_s)),
            Some((t0, c0)) => per_k.push((
                n,
                (r.tick_us - t0) / n as f64 * 1000.0,
                (r.cpu_ms_per_s - c0) / n as f64 * 1000.0,
            )),
        }
    }
    let _ = writeln!(
        out,
        "\nPer 1 000 scraped series, above the agent with no target: {}.\n",
        per_k
            .iter()
            .map(|(n, t, c)| format!("at {n}: tick +{t:.0} µs, CPU +{c:.2} ms per s"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    crate::step(&format!(
        "bench local_scrape: node_exporter and a vLLM server every second, {secs} s"
    ));
    let (_ne, ne_addr) = node_exporter()?;
    let model = Exporter::start(vllm())?;
    let alone = run(nodewatch, dir, "local-scrape-none", "", secs)?;
    let both = run(
        nodewatch,
        dir,
        "local-scrape-both",
        &format!(
            "scrape:\n  - {{ job: node, url: \"http://{ne_addr}/metrics\" }}\n  - {{ job: vllm, url: \"http://{}/metrics\" }}\n",
            model.addr
        ),
        secs,
    )?;
    let _ = writeln!(
        out,
        "**Memory with real targets**: Debian's node_exporter (default collectors) and a fake \
         vLLM server (its gauges and three histograms, as prometheus_client writes them), both \
         scraped every second for {secs} s, next to the same agent scraping nothing, run one after \
         the other.\n\n| agent | history series | peak RSS MiB | CPU (ms per s) | tick (µs) |\n|---|---:|---:|---:|---:|\n\
         | no scrape target | {:.0} | {:.1} | {:.2} | {:.0} |\n| node_exporter + vLLM every 1 s | {:.0} | {:.1} | {:.2} | {:.0} |",
        alone.series,
        alone.rss,
        alone.cpu_ms_per_s,
        alone.tick_us,
        both.series,
        both.rss,
        both.cpu_ms_per_s,
        both.tick_us
    );
    Ok(out)
}
