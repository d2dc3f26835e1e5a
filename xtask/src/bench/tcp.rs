//! Probe cost per TCP retransmit and per packet to a listener.
//!
//! Retransmits: a storm (bulk flows through an nft table that drops 10 % of the packets), with
//! the kernel's run-time accounting on; nodewatch's tracepoint programs' ns per run, against a
//! bpftrace script counting the same retransmits per watched port, and the egress program
//! that counts the segments sent, per packet.
//! Listener packets: a loop of connect + accept + close on loopback, ns per connection with
//! nothing attached, with nodewatch watching the port, and with nodewatch watching another
//! port; and the cgroup_skb program's own ns per packet.

use std::{
    fmt::Write,
    io::Read,
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    BpfStats,
    util::{
        CGROUP_SKB, Flows, Loss, Nodewatch, Proc, RAW_TRACEPOINT, TRACEPOINT, env_num, prog_stats,
    },
};

/// (ns, runs) of the retransmit programs, and of the egress program (nodewatch only).
type Runs = ((f64, f64), (f64, f64));

pub fn section(nodewatch: &Path, dir: &Path) -> Result<String> {
    let secs = env_num("NODEWATCH_BENCH_LOAD_SECS", 20) / 2;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## TCP probes: cost per retransmit and per listener packet\n"
    );
    let _stats = BpfStats::enable()?;

    // Retransmits.
    crate::step("bench tcp: retransmit storm with nodewatch");
    let flows = Flows::start(8)?;
    let port = flows.port;
    // nodewatch's retransmit programs are raw tracepoints, bpftrace's plain ones.
    let tracepoints = [TRACEPOINT, RAW_TRACEPOINT];
    let retrans = |pid: u32| -> Result<Runs> {
        let (n0, c0) = prog_stats(pid, &tracepoints);
        let (e0, k0) = prog_stats(pid, &[CGROUP_SKB]);
        let loss = Loss::start(port, 10)?;
        thread::sleep(Duration::from_secs(secs));
        drop(loss);
        let (n1, c1) = prog_stats(pid, &tracepoints);
        let (e1, k1) = prog_stats(pid, &[CGROUP_SKB]);
        Ok(((n1 - n0, c1 - c0), (e1 - e0, k1 - k0)))
    };
    let nw = Nodewatch::start(
        nodewatch,
        dir,
        "tcp",
        &format!(
            "probes:\n  tcp_retransmits: {{ ports: [{port}] }}\n  accept_queue: {{ enabled: false }}\n  gpu_xid: {{ enabled: false }}\n"
        ),
    )?;
    thread::sleep(Duration::from_secs(1));
    let ((nw_ns, nw_cnt), (eg_ns, eg_cnt)) = retrans(nw.proc.pid())?;
    drop(nw);
    crate::step("bench tcp: retransmit storm with bpftrace");
    let script = dir.join("retrans.bt");
    std::fs::write(
        &script,
        format!(
            "tracepoint:tcp:tcp_retransmit_skb /args->err == 0/\n{{\n  @segs[args->sport == {port} || args->dport == {port} ? {port} : 0] = count();\n}}\n"
        ),
    )?;
    let mut bt = Proc(
        Command::new("bpftrace")
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start bpftrace")?,
    );
    let mut buf = [0u8; 64];
    let n = bt.0.stdout.as_mut().unwrap().read(&mut buf)?;
    if !String::from_utf8_lossy(&buf[..n]).contains("Attaching") {
        bail!("bpftrace did not attach");
    }
    thread::sleep(Duration::from_millis(500));
    let ((bt_ns, bt_cnt), _) = retrans(bt.pid())?;
    drop(bt);
    drop(flows);
    let per = |ns: f64, cnt: f64| if cnt > 0.0 { ns / cnt } else { f64::NAN };
    let _ = writeln!(
        out,
        "Retransmits: 8 bulk flows on loopback with 1000-byte segments, nft dropping 10 % of the \
         packets to the port, {secs} s per tool, `kernel.bpf_stats_enabled=1`; the figure is the \
         programs' own run time per run of the `tcp:tcp_retransmit_skb` / `tcp_retransmit_synack` \
         tracepoints (one run per retransmitted skb). The bpftrace script counts retransmits per \
         watched port in a hash map (`@segs[port] = count()`), the nearest equivalent (it counts \
         skbs, nodewatch adds the skb's segment count).\n"
    );
    let _ = writeln!(
        out,
        "| tool | tracepoint runs | ns per retransmit (in kernel) |"
    );
    let _ = writeln!(out, "|---|---:|---:|");
    let _ = writeln!(
        out,
        "| nodewatch `tcp_retransmits` | {nw_cnt:.0} | {:.0} |",
        per(nw_ns, nw_cnt)
    );
    let _ = writeln!(
        out,
        "| bpftrace, count per port | {bt_cnt:.0} | {:.0} |",
        per(bt_ns, bt_cnt)
    );
    let _ = writeln!(
        out,
        "\nSegments sent, the ratio's denominator: the `cgroup_skb` egress program of \
         `tcp_retransmits` runs once for every packet the host sends (data and ACKs, on every \
         port; it reads the socket's ports and cgroup and adds `max(1, gso_segs)` for watched \
         ones). In the same storm it ran {eg_cnt:.0} times, **{:.0} ns per packet sent** (in \
         kernel). bpftrace cannot attach `cgroup_skb` programs, so there is no bpftrace row.",
        per(eg_ns, eg_cnt)
    );
    let _ = writeln!(
        out,
        "\nA retransmit already costs the kernel a timer or a SACK round and a new transmit (micro- \
         seconds); with and without nodewatch the storms' throughput cannot be told apart, so no \
         wall-clock difference is quoted.\n"
    );

    // Listener packets.
    let conns = env_num("NODEWATCH_BENCH_CONNS", 20_000) as usize;
    let l = TcpListener::bind("127.0.0.1:0")?;
    let lport = l.local_addr()?.port();
    let connect_loop = |l: &TcpListener| -> Result<f64> {
        let addr = l.local_addr()?;
        let t = Instant::now();
        for _ in 0..conns {
            let c = TcpStream::connect(addr)?;
            let (s, _) = l.accept()?;
            drop((c, s));
        }
        Ok(t.elapsed().as_nanos() as f64 / conns as f64)
    };
    let other = crate::bench::util::free_addr().port();
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("nothing attached", vec![]),
        ("nodewatch watching the port (`accept_queue`, eBPF)", vec![]),
        ("nodewatch watching another port", vec![]),
    ];
    let mut skb = (0.0, 0.0);
    for pass in 0..3 {
        for (i, row) in rows.iter_mut().enumerate() {
            crate::step(&format!(
                "bench tcp: {conns} connections, {} (pass {})",
                row.0,
                pass + 1
            ));
            let watch = match i {
                0 => None,
                1 => Some(lport),
                _ => Some(other),
            };
            let nw = watch
                .map(|p| {
                    Nodewatch::start(
                        nodewatch,
                        dir,
                        "listen",
                        &format!(
                            "probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ ports: [{p}] }}\n  gpu_xid: {{ enabled: false }}\n"
                        ),
                    )
                })
                .transpose()?;
            let before = nw.as_ref().map(|n| prog_stats(n.proc.pid(), &[CGROUP_SKB]));
            row.1.push(connect_loop(&l)?);
            if let (Some(n), Some(b), 1) = (&nw, before, i) {
                let a = prog_stats(n.proc.pid(), &[CGROUP_SKB]);
                skb = (skb.0 + a.0 - b.0, skb.1 + a.1 - b.1);
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&rows[0].1);
    let _ = writeln!(
        out,
        "Listener packets: {conns} loopback connections (connect, accept, close: a SYN and an ACK \
         reach the listener, the rest the connected sockets) per run, 3 passes in turn, medians. \
         The `cgroup_skb` ingress program runs for every packet delivered to any socket on the \
         host and returns at once for sockets that are not watched listeners. On this shared \
         VM the spread between passes (tens of µs) is far larger than the program's own cost \
         per packet (below), so the wall-clock rows cannot resolve it: read them as no \
         measurable difference.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | ns per connection (median) | passes | vs nothing attached |"
    );
    let _ = writeln!(out, "|---|---:|---|---:|");
    for (name, v) in &rows {
        let m = median(v);
        let passes: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
        let _ = writeln!(
            out,
            "| {name} | {m:.0} | {} | ×{:.3} ({:+.0} ns) |",
            passes.join(" "),
            m / base,
            m - base
        );
    }
    let _ = writeln!(
        out,
        "\nIn kernel (`kernel.bpf_stats_enabled=1`): the cgroup_skb program ran {:.0} times, \
         **{:.0} ns per packet**. bpftrace: n/a — it cannot attach `cgroup_skb` programs, and this \
         kernel has no kprobes for `tcp_conn_request`, so there is no equivalent bpftrace script \
         here.",
        skb.1,
        if skb.1 > 0.0 { skb.0 / skb.1 } else { f64::NAN }
    );
    Ok(out)
}
