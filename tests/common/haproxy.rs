//! A real HAProxy (Debian's package) with one backend server whose `agent-check` points at
//! nodewatch; its state is read from the runtime API (`show stat`).

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{TempDir, free_port, wait_for};

pub struct Haproxy {
    child: Child,
    socket: PathBuf,
    /// Keeps the backend's port open so HAProxy's own TCP check passes.
    _backend: TcpListener,
}

impl Haproxy {
    /// Starts HAProxy with server `node` (weight 100) checked every 100 ms, its agent at
    /// `agent_port`. The weight is explicit because an agent's `N%` scales the configured
    /// weight, rounded down: the default weight 1 at 50 % would be 0.
    pub fn start(dir: &TempDir, agent_port: u16) -> Self {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend_port = backend.local_addr().unwrap().port();
        let socket = dir.0.join("haproxy.sock");
        let cfg = format!(
            "global\n  stats socket {} mode 600 level admin\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
             frontend fe\n  bind 127.0.0.1:{}\n  default_backend be\n\
             backend be\n  server node 127.0.0.1:{backend_port} weight 100 check inter 100ms rise 1 fall 1 \
             agent-check agent-addr 127.0.0.1 agent-port {agent_port} agent-inter 100ms\n",
            socket.display(),
            free_port(),
        );
        let file = dir.write("haproxy.cfg", &cfg);
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("haproxy.log")).unwrap())
            .spawn()
            .expect("haproxy (cargo xtask setup installs Debian's package)");
        let h = Self {
            child,
            socket,
            _backend: backend,
        };
        wait_for(Duration::from_secs(10), || h.try_status())
            .expect("HAProxy runtime API never answered");
        h
    }

    /// Columns of the server's row in `show stat`.
    fn try_columns(&self, names: &[&str]) -> Option<Vec<String>> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let header: Vec<&str> = out
            .lines()
            .next()?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with("be,node,"))?
            .split(',')
            .collect();
        names
            .iter()
            .map(|n| Some(row.get(header.iter().position(|h| h == n)?)?.to_string()))
            .collect()
    }

    fn try_status(&self) -> Option<String> {
        Some(self.try_columns(&["status"])?.remove(0))
    }

    /// The server's status column: `UP`, `DRAIN (agent)`, `DOWN (agent)`, ...
    pub fn status(&self) -> String {
        self.try_status().expect("show stat")
    }

    /// The server's status, effective weight and user weight (`show stat`'s `status`,
    /// `weight` and `uweight`), e.g. `("UP", 50, 50)`.
    pub fn state(&self) -> (String, u32, u32) {
        let c = self
            .try_columns(&["status", "weight", "uweight"])
            .expect("show stat: status, weight, uweight");
        let n = |v: &str| v.parse().unwrap_or_else(|_| panic!("weight {v:?}"));
        (c[0].clone(), n(&c[1]), n(&c[2]))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
