//! A webhook receiver for tests: records every request, and answers as told (200, another
//! status, or never).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

/// How the receiver answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    Status(u16),
    /// Reads the request and never answers (the connection stays open).
    Hang,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub head: String,
    pub body: String,
    /// When the whole request had arrived.
    pub at: std::time::Instant,
}

impl Request {
    /// The request body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A receiver on a loopback port, serving until the test ends.
pub struct Receiver {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Request>>>,
    answer: Arc<Mutex<Answer>>,
}

impl Receiver {
    pub fn start(answer: Answer) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let (reqs, ans) = (Arc::clone(&requests), Arc::clone(&answer));
        thread::spawn(move || {
            for stream in l.incoming().flatten() {
                let (reqs, ans) = (Arc::clone(&reqs), Arc::clone(&ans));
                thread::spawn(move || serve(stream, &reqs, &ans));
            }
        });
        Self {
            addr,
            requests,
            answer,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    /// Every alert of every payload received, in order: (alert name, status, startsAt).
    pub fn alerts(&self) -> Vec<(String, String, String)> {
        self.requests()
            .iter()
            .flat_map(|r| r.json()["alerts"].as_array().cloned().unwrap_or_default())
            .map(|a| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&a["labels"]["alertname"]),
                    s(&a["status"]),
                    s(&a["startsAt"]),
                )
            })
            .collect()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// `(alertname, status)` of every webhook payload received, in order.
    pub fn notifications(&self) -> Vec<(String, String)> {
        self.requests()
            .iter()
            .flat_map(|r| {
                let v = r.json();
                v["alerts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|a| {
                        (
                            a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                            a["status"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn serve(mut s: TcpStream, reqs: &Mutex<Vec<Request>>, answer: &Mutex<Answer>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let len: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
        buf.drain(..end + 4 + len);
        let a = *answer.lock().unwrap();
        reqs.lock().unwrap().push(Request {
            head,
            body,
            at: std::time::Instant::now(),
        });
        match a {
            Answer::Hang => {
                thread::sleep(Duration::from_secs(3600));
                return;
            }
            Answer::Status(code) => {
                let reply = format!(
                    "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
                );
                let _ = s.write_all(reply.as_bytes());
                return;
            }
        }
    }
}
