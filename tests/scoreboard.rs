//! The fault-injection scoreboard: each fault is produced for real against an agent running
//! the embedded default rules at the default 1 s interval, and timed from the injection to
//! (1) the metric moving, (2) the default rule firing, (3) the webhook arriving, (4) a real
//! HAProxy taking the server out (only for rules with a `health` label). A fault that is not
//! detected fails the test. Each row is printed as `SCOREBOARD {json}`; `cargo xtask bench`
//! collects them into BENCHMARKS.md.

mod common;

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    Netns, NftTable, TempDir,
    fuse::{FUSEPY, FUSEPY_CHECK, SlowFs, raw_slow_ioctl},
    have_root, have_tool, have_tool_by, sample,
    scoreboard::{Rig, measure},
    wait_for,
};

/// Probes the other faults would disturb are off in each rig: the Xid test writes to the
/// host's kernel log, the disk test mounts a full file system.
const QUIET_XID: &str = "  gpu_xid: { enabled: false }\n";
const NO_RESOURCES: &str = "resources: { enabled: false }\n";

#[test]
fn retransmit_storm_on_a_watched_port() {
    if !have_root("scoreboard retransmits") || !have_tool("scoreboard retransmits", "nft") {
        return;
    }
    // 1000-byte segments (the SYN-ACK advertises that MSS), as on a real link: a lost
    // 64 KiB skb is retransmitted as many segments, which the kernel and the agent count.
    let l = common::mss_listener();
    let port = l.local_addr().unwrap().port();
    let dir = TempDir::new("sb-retrans");
    let rig = Rig::start(
        &dir,
        &format!(
            "probes:\n  tcp_retransmits: {{ ports: [{port}] }}\n  accept_queue: {{ enabled: false }}\n{QUIET_XID}{NO_RESOURCES}"
        ),
    );
    // Eight connections sending as fast as they can; the server reads and discards.
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.set_write_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
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
    thread::sleep(Duration::from_millis(2500));
    let series = format!("nodewatch_tcp_retransmits_total{{port=\"{port}\"}}");
    let before = rig.agent.sample(&series).unwrap_or(0.0);
    // 10 % of the packets toward the port are lost on the way from now on (dropped on
    // arrival: a drop on output is a local send failure, which TCP sends again as new data,
    // not a retransmit).
    let loss = NftTable::create(
        "nodewatch_sb_retrans",
        &format!(
            "chain in {{\n type filter hook input priority 0;\n tcp dport {port} numgen random mod 100 < 10 drop\n}}"
        ),
    );
    let injected = Instant::now();
    let row = measure(
        &rig,
        "retransmit storm on a watched port (10 % loss)",
        "NodewatchTcpRetransmitStorm",
        injected,
        Duration::from_secs(40),
        Some("DRAIN"),
        |m| sample(m, &series).is_some_and(|v| v > before),
    );
    drop(loss);
    stop.store(true, Ordering::SeqCst);
    threads.into_iter().for_each(|t| t.join().unwrap());
    row.report();
    row.assert_detected(&rig);
}

fn listener(backlog: i32) -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen() again on a listening socket only changes its backlog.
    let rc = unsafe { libc::listen(l.as_raw_fd(), backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    l
}

#[test]
fn accept_queue_overflow() {
    if !have_root("scoreboard accept queue") {
        return;
    }
    // In a namespace of its own, so the host's listeners cannot be confused with the test's.
    let ns = Netns::create("sb_aq");
    ns.run(|| {
        let l = listener(1);
        let port = l.local_addr().unwrap().port();
        let dir = TempDir::new("sb-accept");
        let rig = Rig::start(
            &dir,
            &format!(
                "probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ ports: [{port}] }}\n{QUIET_XID}{NO_RESOURCES}"
            ),
        );
        let series = format!("nodewatch_tcp_listen_overflows_total{{port=\"{port}\"}}");
        wait_for(Duration::from_secs(5), || {
            rig.agent.sample(&series)
        }).expect("timed out: overflow series");
        // Two ticks at zero, so `increase` has a baseline.
        thread::sleep(Duration::from_millis(2100));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let keep: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap())
            .collect();
        let injected = Instant::now();
        let dropped = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
        assert!(dropped.is_err(), "the third connection should not get in");
        let row = measure(
            &rig,
            "accept-queue overflow",
            "NodewatchListenOverflow",
            injected,
            Duration::from_secs(15),
            Some("DRAIN"),
            |m| sample(m, &series).is_some_and(|v| v > 0.0),
        );
        drop((keep, l));
        row.report();
        row.assert_detected(&rig);
    });
}

#[test]
fn hung_gpu_ioctl() {
    if !have_root("scoreboard gpu") || !have_tool_by("scoreboard gpu", FUSEPY, FUSEPY_CHECK) {
        return;
    }
    let dir = TempDir::new("sb-gpu");
    let fs = SlowFs::new(&dir, "mnt");
    let gpu = fs.mnt.join("gpu0").display().to_string();
    let rig = Rig::start(
        &dir,
        &format!(
            "probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n{QUIET_XID}  gpu_ioctl: {{ devices: [\"{gpu}\"], stall_threshold: 1s }}\n{NO_RESOURCES}"
        ),
    );
    let gauge = format!("nodewatch_gpu_ioctl_inflight_stalled{{device=\"{gpu}\"}}");
    wait_for(Duration::from_secs(5), || {
        (rig.agent.sample(&gauge) == Some(0.0)).then_some(())
    })
    .expect("timed out: device watched");
    let file = fs.open("gpu0");
    let injected = Instant::now();
    // The call stays in the driver for 30 s, or until the fixture is unmounted.
    let caller = thread::spawn(move || raw_slow_ioctl(file.as_raw_fd(), 30_000));
    let row = measure(
        &rig,
        "hung GPU ioctl (stall threshold 1 s)",
        "NodewatchGpuIoctlHung",
        injected,
        Duration::from_secs(28),
        Some("DOWN"),
        |m| sample(m, &gauge).is_some_and(|v| v > 0.0),
    );
    row.report();
    row.assert_detected(&rig);
    drop(rig);
    drop(fs);
    let _ = caller.join();
}

/// A health endpoint on loopback that answers `200 ok`, until told to hang or to die.
struct Service {
    addr: SocketAddr,
    hang: Arc<AtomicBool>,
    dead: Arc<AtomicBool>,
}

impl Service {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hang = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let (h, d) = (Arc::clone(&hang), Arc::clone(&dead));
        thread::spawn(move || {
            let mut held = Vec::new();
            for conn in l.incoming() {
                if d.load(Ordering::SeqCst) {
                    return; // drops the listener: connections are refused
                }
                let Ok(mut conn) = conn else { continue };
                if h.load(Ordering::SeqCst) {
                    held.push(conn);
                    continue;
                }
                let mut buf = [0u8; 1024];
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Self { addr, hang, dead }
    }

    fn die(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn heartbeat(fault: &'static str, hang: bool) {
    let svc = Service::start();
    let dir = TempDir::new(if hang { "sb-hb-hang" } else { "sb-hb-dead" });
    let rig = Rig::start(
        &dir,
        &format!(
            "probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n{QUIET_XID}{NO_RESOURCES}heartbeats:\n  - {{ name: inference, url: \"http://{}/health\", interval: 1s, timeout: 500ms }}\n",
            svc.addr
        ),
    );
    let up = "nodewatch_heartbeat_up{target=\"inference\"}";
    wait_for(Duration::from_secs(5), || {
        (rig.agent.sample(up) == Some(1.0)).then_some(())
    })
    .expect("timed out: heartbeat up");
    let injected = Instant::now();
    if hang {
        svc.hang.store(true, Ordering::SeqCst);
    } else {
        svc.die();
    }
    let row = measure(
        &rig,
        fault,
        "NodewatchHeartbeatDown",
        injected,
        Duration::from_secs(15),
        Some("DOWN"),
        |m| sample(m, up) == Some(0.0),
    );
    row.report();
    row.assert_detected(&rig);
    svc.die();
}

#[test]
fn heartbeat_target_dies() {
    heartbeat("heartbeat target dies (connection refused)", false);
}

#[test]
fn heartbeat_target_hangs() {
    heartbeat("heartbeat target hangs (accepts, never answers)", true);
}

#[test]
fn xid_line_in_the_kernel_log() {
    if !have_root("scoreboard xid") {
        return;
    }
    let dir = TempDir::new("sb-xid");
    let rig = Rig::start(
        &dir,
        &format!(
            "probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n{NO_RESOURCES}"
        ),
    );
    // The series of the line's bus id, whatever NVML says of it (nothing, here).
    let series = "nodewatch_gpu_xid_errors_total{code=\"79\",pci=\"0000:3b:00\"";
    thread::sleep(Duration::from_millis(1500));
    let injected = Instant::now();
    let mut kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .expect("open /dev/kmsg");
    kmsg.write_all(
        b"<4>NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=scoreboard, GPU has fallen off the bus.\n",
    )
    .unwrap();
    let row = measure(
        &rig,
        "Xid 79 line in the kernel log",
        "NodewatchGpuXidReboot",
        injected,
        Duration::from_secs(15),
        Some("DOWN"),
        |m| {
            m.lines()
                .filter(|l| l.starts_with(series))
                .any(|l| l.rsplit_once(' ').is_some_and(|(_, v)| v != "0"))
        },
    );
    row.report();
    row.assert_detected(&rig);
}

/// A 16 MiB ext4 image, loop-mounted; unmounted on drop.
struct LoopFs(PathBuf);

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn filling_disk() {
    if !have_root("scoreboard disk") || !have_tool("scoreboard disk", "mkfs.ext4") {
        return;
    }
    let dir = TempDir::new("sb-disk");
    let img = dir.0.join("disk.img");
    let mnt = dir.0.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    File::create(&img).unwrap().set_len(16 << 20).unwrap();
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        "mkfs.ext4",
        &["-q".as_ref(), "-F".as_ref(), img.as_os_str()],
    );
    run(
        "mount",
        &[
            "-o".as_ref(),
            "loop".as_ref(),
            img.as_os_str(),
            mnt.as_os_str(),
        ],
    );
    let _fs = LoopFs(mnt.clone());
    let m = mnt.display().to_string();
    let rig = Rig::start(
        &dir,
        &format!(
            "probes:\n  tcp_retransmits: {{ enabled: false }}\n  accept_queue: {{ enabled: false }}\n{QUIET_XID}resources:\n  disk: {{ include_mounts: [\"{m}\"] }}\n"
        ),
    );
    let series = format!("nodewatch_disk_used_ratio{{mount=\"{m}\"}}");
    wait_for(Duration::from_secs(5), || rig.agent.sample(&series)).expect("timed out: disk series");
    let injected = Instant::now();
    // Root may write into the reserved blocks too: write until the file system is full.
    let mut f = File::create(mnt.join("fill")).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    let row = measure(
        &rig,
        "filling disk (16 MiB ext4 on a loop device, written full)",
        "NodewatchDiskFull",
        injected,
        Duration::from_secs(75),
        None,
        |m| sample(m, &series).is_some_and(|v| v > 0.98),
    );
    row.report();
    row.assert_detected(&rig);
    drop(f);
}
