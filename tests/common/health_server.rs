//! A local service for heartbeat tests: an HTTP server on loopback that the test slows down,
//! breaks, hangs, fails for a few requests, stops and restarts on the same port, and that
//! notes when each connection and request came.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// How the server answers a request.
#[derive(Clone, Debug)]
pub enum Mode {
    Ok {
        delay: Duration,
        body: &'static str,
    },
    Status(u16),
    /// Accept, read the request, never answer.
    Hang,
}

impl Mode {
    /// 200 `ok` at once.
    pub fn ok() -> Self {
        Mode::Ok {
            delay: Duration::ZERO,
            body: "ok",
        }
    }
}

/// What the server shares with its threads.
#[derive(Default)]
struct Shared {
    mode: Mutex<Option<Mode>>,
    /// Modes for the next requests, one each, before `mode` applies again.
    glitches: Mutex<VecDeque<Mode>>,
    stop: AtomicBool,
    accepts: Mutex<Vec<Instant>>,
    requests: Mutex<Vec<Instant>>,
}

/// An HTTP server on loopback whose behaviour the test switches.
pub struct Server {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// A server on a free loopback port, answering 200 `ok`.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// A server on `addr` (a restart binds the port it had), answering 200 `ok`.
    pub fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        *shared.mode.lock().unwrap() = Some(Mode::ok());
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return; // drops the listener: connections are refused from now on
                    }
                    shared.accepts.lock().unwrap().push(Instant::now());
                    let Ok(conn) = conn else { continue };
                    let shared = Arc::clone(&shared);
                    thread::spawn(move || serve(conn, &shared));
                }
            })
        };
        Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = Some(mode);
    }

    /// The next requests get these modes, one each; then the set mode again.
    pub fn glitch(&self, modes: impl IntoIterator<Item = Mode>) {
        self.shared.glitches.lock().unwrap().extend(modes);
    }

    /// When each connection was accepted.
    pub fn accepts(&self) -> Vec<Instant> {
        self.shared.accepts.lock().unwrap().clone()
    }

    /// When each HTTP request had been read.
    pub fn requests(&self) -> Vec<Instant> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits until a connection is accepted after `after`; its time.
    pub fn next_accept(&self, after: Instant, within: Duration) -> Instant {
        super::wait_for(within, || self.accepts().into_iter().find(|t| *t > after))
            .expect("no connection came")
    }

    /// Stops accepting: the port refuses connections afterwards.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            a.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut conn: TcpStream, shared: &Shared) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    shared.requests.lock().unwrap().push(Instant::now());
    let glitch = shared.glitches.lock().unwrap().pop_front();
    let mode = glitch.unwrap_or_else(|| shared.mode.lock().unwrap().clone().unwrap());
    let (status, body) = match mode {
        Mode::Ok { delay, body } => {
            thread::sleep(delay);
            (200, body)
        }
        Mode::Status(s) => (s, "broken"),
        Mode::Hang => {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
            return;
        }
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
