//! A fake exporter for scrape tests: an HTTP server on loopback serving a metrics body the
//! test rewrites (a model server's queue rising, a sudden flood of series), and stopping as a
//! dying process does (its port refuses connections).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

#[derive(Default)]
struct Shared {
    body: Mutex<String>,
    stop: AtomicBool,
}

/// The server; stopped on drop.
pub struct MetricsServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `body` as Prometheus text on a free loopback port.
    pub fn start(body: &str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        *shared.body.lock().unwrap() = body.to_string();
        let s = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let s = Arc::clone(&s);
                        thread::spawn(move || answer(c, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            // The listener closes here: the port refuses from now on.
        });
        Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The URL of its metrics.
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Serves `body` from the next request on.
    pub fn set(&self, body: String) {
        *self.shared.body.lock().unwrap() = body;
    }

    /// Stops answering and closes the port, as a process that died.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            a.join().unwrap();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn answer(mut c: TcpStream, s: &Shared) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = Vec::new();
    let mut buf = [0u8; 2048];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let body = s.body.lock().unwrap().clone();
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(head.as_bytes());
    let _ = c.write_all(body.as_bytes());
}

/// A vLLM server's `/metrics` as Python's prometheus_client writes it, with `waiting` requests
/// in the queue.
pub fn vllm(waiting: u32) -> String {
    let m = "model_name=\"meta-llama/Llama-3.1-8B-Instruct\"";
    format!(
        "# HELP vllm:num_requests_running Number of requests currently running on GPU.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{{m}}} 8.0\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{{m}}} {waiting}.0\n\
         # HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:gpu_cache_usage_perc gauge\n\
         vllm:gpu_cache_usage_perc{{{m}}} 0.42\n\
         # HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n\
         # TYPE vllm:time_to_first_token_seconds histogram\n\
         vllm:time_to_first_token_seconds_bucket{{le=\"0.1\",{m}}} 90.0\n\
         vllm:time_to_first_token_seconds_bucket{{le=\"1.0\",{m}}} 100.0\n\
         vllm:time_to_first_token_seconds_bucket{{le=\"+Inf\",{m}}} 100.0\n\
         vllm:time_to_first_token_seconds_count{{{m}}} 100.0\n\
         vllm:time_to_first_token_seconds_sum{{{m}}} 7.5\n\
         # HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
         # TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{{m}}} 123456.0\n"
    )
}
