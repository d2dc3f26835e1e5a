//! The probes' own cost per event against an empty program on the same hook, in the same run.
//!
//! `bpf_empty.c` attaches two-instruction programs to `sys_enter_ioctl`, `sys_exit_ioctl` and
//! the cgroup v2 root's `cgroup_skb` egress and ingress, beside nodewatch's programs, with the
//! kernel's run-time accounting on. Every event then runs both, and each phase below reads
//! both programs' run time over the same events: the difference is what nodewatch's program
//! adds to the floor any program on that hook pays (the accounting's own clock reads
//! included, in both). Phases: small request/response packets on loopback on a port nobody
//! watches and on a watched port; `ioctl(TCGETS)` on `/dev/null` with another device watched
//! (a driver nodewatch does not know, then one it knows, whose command types it tests first),
//! with `/dev/null` itself watched, and with bpftrace timing the same calls.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    BpfStats,
    util::{Nodewatch, Proc, TRACEPOINT, env_num, prog_stats},
};

const EMPTY_C: &str = include_str!("../bpf_empty.c");

/// (run_time_ns, run_cnt) per program name.
type Stats = Vec<(String, f64, f64)>;

/// The empty programs, with a pipe to ask for their run time.
struct Empty {
    _proc: Proc,
    ask: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Empty {
    fn start(bin: &Path, cgroup: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg(cgroup)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start bpf_empty")?;
        let ask = child.stdin.take().context("bpf_empty stdin")?;
        let mut answers = BufReader::new(child.stdout.take().context("bpf_empty stdout")?);
        let mut line = String::new();
        answers.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("bpf_empty did not attach its programs");
        }
        Ok(Self {
            _proc: Proc(child),
            ask,
            answers,
        })
    }

    fn stats(&mut self) -> Result<Stats> {
        writeln!(self.ask, "stats")?;
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            if self.answers.read_line(&mut line)? == 0 {
                bail!("bpf_empty exited");
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["end"] => return Ok(out),
                [name, ns, cnt] => out.push((format!("empty {name}"), ns.parse()?, cnt.parse()?)),
                _ => bail!("bpf_empty said {line:?}"),
            }
        }
    }
}

/// The run time of the programs process `pid` holds, by name (from bpftool).
fn named_stats(pid: u32) -> Result<Stats> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(info) = std::fs::read_to_string(e?.path()) else {
            continue;
        };
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    let out = Command::new("bpftool")
        .args(["--json", "prog", "show"])
        .output()
        .context("bpftool prog show")?;
    let all: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut stats = Vec::new();
    for p in all.as_array().into_iter().flatten() {
        let id = p["id"].as_u64().unwrap_or(0);
        if ids.contains(&id) {
            stats.push((
                p["name"].as_str().unwrap_or("?").to_string(),
                p["run_time_ns"].as_f64().unwrap_or(0.0),
                p["run_cnt"].as_f64().unwrap_or(0.0),
            ));
        }
    }
    Ok(stats)
}

/// (ns, runs) of `name` between two readings.
fn delta(before: &Stats, after: &Stats, name: &str) -> (f64, f64) {
    let get = |s: &Stats| {
        s.iter()
            .filter(|(n, _, _)| n == name)
            .fold((0.0, 0.0), |(a, b), (_, ns, c)| (a + ns, b + c))
    };
    let (a, b) = (get(before), get(after));
    (b.0 - a.0, b.1 - a.1)
}

/// `n` one-byte requests and answers over one loopback connection to `port` (TCP_NODELAY):
/// about four packets each way per round trip counting the ACKs, all on that port.
fn ping_pong(port: u16, n: usize) -> Result<()> {
    let l = TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("bind {port}"))?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_nodelay(true)?;
    let mut b = [0u8; 1];
    for _ in 0..n {
        c.write_all(b"x")?;
        c.read_exact(&mut b)?;
    }
    drop(c);
    server.join().expect("echo thread")?;
    Ok(())
}

/// A row: the event, nodewatch's ns per event, the empty programs' ns per event, the events.
struct Row {
    event: String,
    ours: f64,
    floor: f64,
    events: f64,
    target: &'static str,
}

pub fn section(nodewatch: &Path, dir: &Path, looper: &Path, null_kdev: u32) -> Result<String> {
    let src = dir.join("bpf_empty.c");
    std::fs::write(&src, EMPTY_C)?;
    let bin = dir.join("bpf_empty");
    crate::sh(
        "cc",
        [
            "-O2".as_ref(),
            "-o".as_ref(),
            bin.as_os_str(),
            src.as_os_str(),
        ],
    )?;
    let cgroup = Path::new("/sys/fs/cgroup/unified");
    let cgroup = if cgroup.exists() {
        cgroup
    } else {
        Path::new("/sys/fs/cgroup")
    };
    let packets = env_num("NODEWATCH_BENCH_PACKETS", 20000) as usize;
    let calls = env_num("NODEWATCH_BENCH_FLOOR_CALLS", 500000).to_string();
    let _stats = BpfStats::enable()?;
    let mut empty = Empty::start(&bin, cgroup)?;
    let mut rows = Vec::new();
    let watched = super::util::free_addr().port();
    let unwatched = super::util::free_addr().port();

    // Packets and an unknown driver's device: one agent.
    {
        let nw = Nodewatch::start(
            nodewatch,
            dir,
            "floor-tcp",
            &format!(
                "probes:\n  tcp_retransmits: {{ ports: [{watched}] }}\n  accept_queue: {{ ports: [{watched}] }}\n  gpu_ioctl: {{ devices: [/dev/ptmx] }}\n"
            ),
        )?;
        thread::sleep(Duration::from_secs(1));
        for (what, port, target) in [
            ("no watched port", unwatched, "≤ floor + 20 ns"),
            ("a watched port", watched, "≤ floor + 80 ns"),
        ] {
            crate::step(&format!("bench floor: packets on {what}"));
            // As a service that has been serving for more than a tick: the agent has given
            // the port's slot to the service's cgroup.
            ping_pong(port, 100)?;
            thread::sleep(Duration::from_millis(1500));
            let (a, ea) = (named_stats(nw.proc.pid())?, empty.stats()?);
            ping_pong(port, packets)?;
            let (b, eb) = (named_stats(nw.proc.pid())?, empty.stats()?);
            for (hook, prog, floor) in [
                ("sent", "tcp_segments_sent", "empty cgroup_skb_egress"),
                ("received", "accept_queue", "empty cgroup_skb_ingress"),
            ] {
                let (ns, n) = delta(&a, &b, prog);
                let (fns, fnn) = delta(&ea, &eb, floor);
                rows.push(Row {
                    event: format!("packet {hook} on {what} (`{prog}`, cgroup_skb)"),
                    ours: ns / n.max(1.0),
                    floor: fns / fnn.max(1.0),
                    events: n,
                    target,
                });
            }
        }
        crate::step("bench floor: ioctls, another device watched (driver not known)");
        rows.push(ioctl_row(
            &mut empty,
            nw.proc.pid(),
            looper,
            &calls,
            "ioctl on a device nobody watches (`/dev/ptmx` watched; its driver's command types not known: every call walks to its inode)",
            "—",
        )?);
    }
    // A known driver: /proc/devices (through proc_root) names /dev/ptmx's major as NVIDIA's.
    {
        let proc = dir.join("floor-proc");
        std::fs::create_dir_all(proc.join("sys/kernel"))?;
        let devices: String = std::fs::read_to_string("/proc/devices")?
            .lines()
            .map(|l| match l.trim().split_once(' ') {
                Some(("5", _)) => "  5 nvidia-frontend\n".to_string(),
                _ => format!("{l}\n"),
            })
            .collect();
        std::fs::write(proc.join("devices"), devices)?;
        std::fs::copy("/proc/sys/kernel/pid_max", proc.join("sys/kernel/pid_max"))?;
        let nw = Nodewatch::start(
            nodewatch,
            dir,
            "floor-known",
            &format!(
                "proc_root: {}\nprobes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n  gpu_ioctl: {{ devices: [/dev/ptmx] }}\n",
                proc.display()
            ),
        )?;
        thread::sleep(Duration::from_secs(1));
        crate::step("bench floor: ioctls, a known driver's device watched");
        rows.push(ioctl_row(
            &mut empty,
            nw.proc.pid(),
            looper,
            &calls,
            "ioctl on a device nobody watches (the watched device's driver known: NVIDIA's, types `'F'`, `'m'`; TCGETS is `'T'`)",
            "≤ floor + 20 ns",
        )?);
    }
    {
        let nw = Nodewatch::start(
            nodewatch,
            dir,
            "floor-watched",
            "probes:\n  tcp_retransmits: { enabled: false }\n  accept_queue: { enabled: false }\n  gpu_ioctl: { devices: [/dev/null] }\n",
        )?;
        thread::sleep(Duration::from_secs(1));
        crate::step("bench floor: ioctls on the watched device");
        rows.push(ioctl_row(
            &mut empty,
            nw.proc.pid(),
            looper,
            &calls,
            "ioctl on a watched device (`/dev/null` watched: every call timed)",
            "≤ ⅓ of bpftrace's",
        )?);
    }
    {
        let script = dir.join("floor.bt");
        std::fs::write(&script, super::timing_bt(null_kdev))?;
        let mut child = Command::new("bpftrace")
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start bpftrace")?;
        let mut buf = [0u8; 64];
        let n = child.stdout.as_mut().context("stdout")?.read(&mut buf)?;
        let bt = Proc(child);
        if !String::from_utf8_lossy(&buf[..n]).contains("Attaching") {
            bail!("bpftrace did not attach");
        }
        thread::sleep(Duration::from_millis(500));
        crate::step("bench floor: ioctls timed by bpftrace");
        let (ea, a) = (empty.stats()?, prog_stats(bt.pid(), &[TRACEPOINT]));
        run(looper, &calls)?;
        let (eb, b) = (empty.stats()?, prog_stats(bt.pid(), &[TRACEPOINT]));
        let (e1, n) = delta(&ea, &eb, "empty sys_enter_ioctl");
        let (e2, _) = delta(&ea, &eb, "empty sys_exit_ioctl");
        rows.push(Row {
            event: "ioctl on a watched device, bpftrace doing the same timing (`timing_bt`)".into(),
            ours: (b.0 - a.0) / n.max(1.0),
            floor: (e1 + e2) / n.max(1.0),
            events: n,
            target: "—",
        });
    }
    Ok(markdown(&rows))
}

/// One phase of `ioctl_loop` on /dev/null: nodewatch's two ioctl programs per call against
/// the two empty ones.
fn ioctl_row(
    empty: &mut Empty,
    pid: u32,
    looper: &Path,
    calls: &str,
    event: &str,
    target: &'static str,
) -> Result<Row> {
    // As a GPU process that has been calling its device for more than a tick: the agent has
    // seen the (device, cgroup) pair and given it its histogram slot. (A pair's calls in
    // its first tick are counted in the per-CPU hash, at a hash lookup more.)
    run(looper, "1000")?;
    thread::sleep(Duration::from_millis(1500));
    let (a, ea) = (named_stats(pid)?, empty.stats()?);
    run(looper, calls)?;
    let (b, eb) = (named_stats(pid)?, empty.stats()?);
    // Whichever entry program the agent loaded (the cheapest this kernel takes).
    let enter = [
        "gpu_ioctl_enter_cast",
        "gpu_ioctl_enter",
        "gpu_ioctl_enter_compat",
    ]
    .into_iter()
    .map(|name| delta(&a, &b, name))
    .find(|&(_, n)| n > 0.0)
    .unwrap_or((0.0, 0.0));
    let (n1, n) = enter;
    let (n2, _) = delta(&a, &b, "gpu_ioctl_exit");
    let (e1, en) = delta(&ea, &eb, "empty sys_enter_ioctl");
    let (e2, _) = delta(&ea, &eb, "empty sys_exit_ioctl");
    if n == 0.0 {
        bail!("nodewatch's ioctl programs did not run ({event})");
    }
    Ok(Row {
        event: event.into(),
        ours: (n1 + n2) / n,
        floor: (e1 + e2) / en.max(1.0),
        events: n,
        target,
    })
}

fn run(looper: &Path, calls: &str) -> Result<()> {
    let out = Command::new(looper)
        .args(["/dev/null", calls, "1"])
        .output()
        .context("run ioctl_loop")?;
    if !out.status.success() {
        bail!("ioctl_loop: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn markdown(rows: &[Row]) -> String {
    let mut md = String::from(FLOOR_METHOD);
    md.push_str("| event | runs | nodewatch, ns per event | empty program(s), same hook, same run | nodewatch's own cost | target |\n|---|---:|---:|---:|---:|---|\n");
    let bpftrace = rows
        .iter()
        .find(|r| r.event.contains("bpftrace"))
        .map(|r| r.ours - r.floor);
    for r in rows {
        let own = r.ours - r.floor;
        let met = match r.target {
            "≤ floor + 20 ns" => Some(own <= 20.0),
            "≤ floor + 80 ns" => Some(own <= 80.0),
            "≤ ⅓ of bpftrace's" => bpftrace.map(|b| own <= b / 3.0),
            _ => None,
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.1} | {:.1} | {:+.1} ns | {}{} |",
            r.event,
            r.events,
            r.ours,
            r.floor,
            own,
            r.target,
            match met {
                Some(true) => ": **met**",
                Some(false) => ": **missed**",
                None => "",
            }
        );
    }
    if let (Some(b), Some(w)) = (
        bpftrace,
        rows.iter()
            .find(|r| r.event.starts_with("ioctl on a watched device (")),
    ) {
        let _ = writeln!(
            md,
            "\nWatched ioctl: nodewatch adds {:.1} ns to the floor, bpftrace doing the same timing {:.1} ns (×{:.2} of bpftrace's).",
            w.ours - w.floor,
            b,
            (w.ours - w.floor) / b
        );
    }
    md
}

const FLOOR_METHOD: &str = "
## The probes against an empty program on the same hook

Reproduce: `NODEWATCH_BENCH_ONLY=floor cargo xtask bench` (as root). `xtask/src/bpf_empty.c`
attaches two-instruction programs (`r0 = 0` or `1`; `exit`) to `syscalls:sys_enter_ioctl`,
`sys_exit_ioctl` and the cgroup v2 root's `cgroup_skb` egress and ingress, beside nodewatch's
own, with `kernel.bpf_stats_enabled=1`. Each phase reads both programs' run time over the same
events, so the difference is nodewatch's own cost above the floor every program on that hook
pays (the accounting's clock reads are in both), whatever else loads this shared VM. Packets:
one-byte requests and answers on one loopback connection (`TCP_NODELAY`; both directions'
data and ACKs), after a first 100 and a tick (so the agent has given the watched port's
slot to the serving cgroup; until then, and for a port's other cgroups, each watched packet
costs a hash lookup more); the port is watched by both TCP probes or by neither. Ioctls:
`ioctl(TCGETS)` on `/dev/null` from `xtask/src/ioctl_loop.c`, per call both programs
(entry and exit) against both empty ones, after a first 1 000 calls and a tick (as a GPU
process that has been calling its device for more than a second: the agent has given the
(device, cgroup) pair its histogram slot; in a pair's first tick each call costs one hash
lookup more, about +20 to +30 ns). The agent runs the embedded defaults with only the
watched ports or devices set (and, for the known driver, `proc_root` pointing at a copy of
`/proc/devices` that names `/dev/ptmx`'s major as NVIDIA's `nvidia-frontend`, as on a GPU
node: the entry program then lets only NVIDIA's command types reach the fd walk).

";
