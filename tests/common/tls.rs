//! TLS peers for tests: a private CA made with the openssl CLI at test time, curl as an
//! independent HTTPS client, an HTTPS receiver (Python's `ssl`, optionally requiring a client
//! certificate), tinyproxy as an HTTP CONNECT proxy, and nodewatch started with a web config.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{TempDir, free_port, wait_for};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private certificate authority in `dir`.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

impl Pki {
    /// A new CA named `name` (its files are `<name>-ca.crt`, `<name>-ca.key`).
    pub fn new(dir: &TempDir, name: &str) -> Self {
        let ca = dir.0.join(format!("{name}-ca.crt"));
        let ca_key = dir.0.join(format!("{name}-ca.key"));
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN=nodewatch test CA {name}"))
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca));
        Self {
            dir: dir.0.clone(),
            ca,
            ca_key,
        }
    }

    /// A certificate for `cn`, valid for localhost and 127.0.0.1, for servers and clients:
    /// `(cert, key)`.
    pub fn issue(&self, cn: &str) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{cn}.key"));
        let csr = self.dir.join(format!("{cn}.csr"));
        let crt = self.dir.join(format!("{cn}.crt"));
        let ext = self.dir.join(format!("{cn}.ext"));
        std::fs::write(
            &ext,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj"])
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca)
            .arg("-CAkey")
            .arg(&self.ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&crt));
        (crt, key)
    }
}

/// `curl` over HTTPS trusting `ca`: (status, body). `user` is `name:password` for basic auth.
pub fn curl(url: &str, ca: &Path, user: Option<&str>) -> Option<(u16, String)> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}"]);
    if let Some(u) = user {
        c.args(["-u", u]);
    }
    let out = c
        .arg(url)
        .output()
        .expect("curl (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const HTTPS_SERVER: &str = r#"
import http.server, json, ssl, sys, threading
port, cert, key, ca, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    def record(self, body):
        peer = self.connection.getpeercert() or {}
        cn = [v for rdn in peer.get("subject", ()) for (k, v) in rdn if k == "commonName"]
        with lock, open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body, "client_cn": cn[0] if cn else None}) + "\n")
    def do_GET(self):
        self.record("")
        self.send_response(200); self.send_header("content-length", "3"); self.end_headers()
        self.wfile.write(b"ok\n")
    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.record(self.rfile.read(n).decode())
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
if ca != "-":
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// An HTTPS server (Python's `ssl`) answering GET with `ok` and POST with 200, recording each
/// request (and the client certificate's CN) as a JSON line.
pub struct HttpsServer {
    pub addr: SocketAddr,
    log: PathBuf,
    _proc: Proc,
}

impl HttpsServer {
    /// Serves with `cert`/`key`; with `client_ca`, only clients with a certificate it signed
    /// get through the handshake.
    pub fn start(
        dir: &TempDir,
        tag: &str,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Self {
        let script = dir.write("https_server.py", HTTPS_SERVER);
        let port = free_port();
        let log = dir.0.join(format!("{tag}-requests.jsonl"));
        let child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(cert)
            .arg(key)
            .arg(client_ca.map_or_else(|| PathBuf::from("-"), Path::to_path_buf))
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join(format!("{tag}-server.log"))).unwrap())
            .spawn()
            .expect("python3");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).ok().map(drop)
        })
        .expect("the HTTPS server listens");
        Self {
            addr,
            log,
            _proc: Proc(child),
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// tinyproxy on a loopback port, logging every connection.
pub struct Tinyproxy {
    pub addr: SocketAddr,
    log: PathBuf,
    _proc: Proc,
}

impl Tinyproxy {
    pub fn start(dir: &TempDir) -> Self {
        let port = free_port();
        let conf = dir.write(
            "tinyproxy.conf",
            &format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nUser nobody\nGroup nogroup\nLogLevel Connect\nMaxClients 20\n"
            ),
        );
        let log = dir.0.join("tinyproxy.log");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (cargo xtask setup installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).ok().map(drop)
        })
        .expect("tinyproxy listens");
        Self {
            addr,
            log,
            _proc: Proc(child),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// nodewatch started with a web config (TLS, basic auth), ready once `/healthz` answers over
/// HTTPS.
pub struct TlsAgent {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl TlsAgent {
    pub fn start(dir: &TempDir, config: &str, web_config: &Path, ca: &Path) -> Self {
        Self::start_wrapped(dir, config, web_config, ca, &[])
    }

    /// As [`TlsAgent::start`], run through `wrapper` (e.g. `setpriv` with the unit's
    /// capabilities).
    pub fn start_wrapped(
        dir: &TempDir,
        config: &str,
        web_config: &Path,
        ca: &Path,
        wrapper: &[&str],
    ) -> Self {
        let (child, addr, log) = super::spawn_agent(
            dir,
            config,
            wrapper,
            &["--web.config.file".as_ref(), web_config.as_os_str()],
            "info",
            "agent.log",
        );
        let mut agent = Self {
            proc: Proc(child),
            addr,
            log,
        };
        wait_for(Duration::from_secs(30), || {
            if let Some(s) = agent.proc.0.try_wait().unwrap() {
                panic!("nodewatch exited ({s}):\n{}", agent.log_text());
            }
            curl(&agent.url("/healthz"), ca, None).map(drop)
        })
        .unwrap_or_else(|| panic!("nodewatch never answered over TLS:\n{}", agent.log_text()));
        agent
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
