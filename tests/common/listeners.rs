//! Listeners that never accept, connection attempts against them, and what `ss` shows of
//! them: the accept-queue tests' tools. `ss` and the sockets follow the calling thread's
//! network namespace.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::Duration,
};

/// A loopback listener with backlog `backlog` whose connections are never accepted.
pub fn listener(port: u16, backlog: i32) -> TcpListener {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind listener");
    // SAFETY: listen() again on a listening socket only changes its backlog.
    let rc = unsafe { libc::listen(l.as_raw_fd(), backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    l
}

/// `attempts` connection attempts in a row, each given up after 100 ms (before the client
/// would resend its SYN). Returns the connections that got through, still open, and how many
/// were refused — each refused attempt is one SYN the full queue dropped.
pub fn knock(port: u16, attempts: usize) -> (Vec<TcpStream>, u64) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..attempts {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => open.push(s),
            Err(_) => refused += 1,
        }
    }
    (open, refused)
}

/// Recv-Q and Send-Q of the listener on `port`, as `ss -ltn` shows them.
pub fn ss_queue(port: u16) -> (f64, f64) {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("ss shows no listener on {port}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[1].parse().unwrap(), f[2].parse().unwrap())
}
