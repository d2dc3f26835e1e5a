//! What the benchmark sections share: processes stopped on drop, a tiny HTTP client, reading a
//! process's CPU time and RSS, and the kernel's per-program run time.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A child process, stopped with SIGINT (then SIGKILL) on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
}

/// A running nodewatch (release build) with `config` (plus a scratch spool_dir).
pub struct Nodewatch {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Nodewatch {
    pub fn start(bin: &Path, dir: &Path, name: &str, config: &str) -> Result<Self> {
        let spool = dir.join(format!("{name}-spool"));
        let _ = std::fs::remove_dir_all(&spool);
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, format!("{config}spool_dir: {}\n", spool.display()))?;
        let addr = free_addr();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .args(["--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
            .spawn()
            .context("start nodewatch")?;
        let nw = Self {
            proc: Proc(child),
            addr,
        };
        wait_http(addr, "/metrics", Duration::from_secs(30))
            .with_context(|| format!("nodewatch ({name}) never answered"))?;
        Ok(nw)
    }

    pub fn metrics(&self) -> Result<String> {
        http_get(self.addr, "/metrics")
    }
}

/// Debian's node_exporter with its default collectors.
pub fn node_exporter() -> Result<(Proc, SocketAddr)> {
    let addr = free_addr();
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start prometheus-node-exporter (cargo xtask setup installs it)")?;
    let p = Proc(child);
    wait_http(addr, "/metrics", Duration::from_secs(20)).context("node_exporter never answered")?;
    Ok((p, addr))
}

pub fn wait_http(addr: SocketAddr, path: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while http_get(addr, path).is_err() {
        if Instant::now() > deadline {
            bail!("nothing answers on {addr}{path}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// GET over a new connection; the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 2") && !head.starts_with("HTTP/1.0 2") {
        bail!("{}", head.lines().next().unwrap_or(""));
    }
    // node_exporter answers chunked; the caller only counts lines and reads samples.
    Ok(body.to_string())
}

/// The sum of every sample of `metric` (any labels) in Prometheus text.
pub fn sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sample lines (series) in Prometheus text.
pub fn series_count(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system, every thread) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, s): (f64, f64) = (f[11].parse()?, f[12].parse()?);
    Ok((u + s) / clk_tck())
}

/// Resident memory in MiB.
pub fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

/// What one process used over a window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Share of one core, 0..1 per core.
    pub cpu: f64,
    pub rss_max: f64,
}

/// Watches `pids` for `secs`, scraping each of `scrape` every 15 s as a Prometheus would,
/// and runs `during` every second (load checks). One Usage per pid.
pub fn watch(pids: &[u32], secs: u64, scrape: &[SocketAddr]) -> Result<Vec<Usage>> {
    let start_cpu: Vec<f64> = pids
        .iter()
        .map(|&p| cpu_seconds(p))
        .collect::<Result<_>>()?;
    let mut rss = vec![0.0f64; pids.len()];
    let t0 = Instant::now();
    let mut next_scrape = t0;
    while t0.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_scrape {
            for a in scrape {
                let _ = http_get(*a, "/metrics");
            }
            next_scrape += Duration::from_secs(15);
        }
        for (i, &p) in pids.iter().enumerate() {
            rss[i] = rss[i].max(rss_mib(p)?);
        }
        thread::sleep(Duration::from_secs(1));
    }
    let wall = t0.elapsed().as_secs_f64();
    pids.iter()
        .enumerate()
        .map(|(i, &p)| {
            Ok(Usage {
                cpu: (cpu_seconds(p)? - start_cpu[i]) / wall,
                rss_max: rss[i],
            })
        })
        .collect()
}

/// The kernel's numbers of the BPF program types nodewatch loads.
pub const TRACEPOINT: u32 = 5;
pub const CGROUP_SKB: u32 = 8;
pub const RAW_TRACEPOINT: u32 = 17;
/// Every type: [`prog_stats`] with this sums all the programs.
pub const ANY_TYPE: &[u32] = &[];

/// (run_time_ns, run_cnt) summed over the BPF programs of the types in `prog_types` (all of
/// them when empty) that process `pid` holds.
pub fn prog_stats(pid: u32, prog_types: &[u32]) -> (f64, f64) {
    let (mut ns, mut cnt) = (0.0, 0.0);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0.0, 0.0);
    };
    for info in fds.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()) {
        let ty = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_type:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        let Some(ty) = ty else { continue };
        if !prog_types.is_empty() && !prog_types.contains(&ty) {
            continue;
        }
        for l in info.lines() {
            let field = |name: &str| l.strip_prefix(name)?.trim().parse::<f64>().ok();
            ns += field("run_time_ns:").unwrap_or(0.0);
            cnt += field("run_cnt:").unwrap_or(0.0);
        }
    }
    (ns, cnt)
}

/// Runs `nft -f -` with `script`.
pub fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("nft")?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    if !child.wait()?.success() {
        bail!("nft failed:\n{script}");
    }
    Ok(())
}

/// An nft table dropping `percent` % of the packets sent to `port`; deleted on drop.
pub struct Loss(String);

impl Loss {
    pub fn start(port: u16, percent: u32) -> Result<Self> {
        let name = format!("nodewatch_bench_{}", std::process::id());
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &name])
            .stderr(Stdio::null())
            .status();
        nft(&format!(
            "table inet {name} {{\n chain out {{\n  type filter hook output priority 0;\n  tcp dport {port} numgen random mod 100 < {percent} drop\n }}\n}}\n"
        ))?;
        Ok(Self(name))
    }
}

impl Drop for Loss {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.0])
            .status();
    }
}

/// Bulk TCP flows to a loopback listener with 1000-byte segments; they stop on drop.
pub struct Flows {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Flows {
    pub fn start(n: usize) -> Result<Self> {
        use std::{
            os::fd::AsRawFd,
            sync::{Arc, atomic::AtomicBool, atomic::Ordering},
        };
        let l = TcpListener::bind("127.0.0.1:0")?;
        let mss: libc::c_int = 1000;
        // SAFETY: setting an int option on a valid socket.
        unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_MAXSEG,
                (&raw const mss).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let port = l.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..n {
            let mut c = TcpStream::connect(l.local_addr()?)?;
            let (mut s, _) = l.accept()?;
            c.set_write_timeout(Some(Duration::from_millis(300)))?;
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            let st = Arc::clone(&stop);
            threads.push(thread::spawn(move || {
                let buf = [7u8; 64 * 1024];
                while !st.load(Ordering::SeqCst) {
                    let _ = c.write(&buf);
                }
            }));
            let st = Arc::clone(&stop);
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while !st.load(Ordering::SeqCst) {
                    let _ = s.read(&mut buf);
                }
            }));
        }
        Ok(Self {
            port,
            stop,
            threads,
        })
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Percentile (0..=100) of sorted values.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// An environment variable as a number, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until the file at `log` contains `needle`.
pub fn wait_log(log: &Path, needle: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log)?.contains(needle) {
        if Instant::now() > deadline {
            bail!(
                "`{needle}` never in {}:\n{}",
                log.display(),
                std::fs::read_to_string(log)?
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
