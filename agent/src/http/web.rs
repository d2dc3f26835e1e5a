//! The agent's own server behind TLS and basic auth, configured by a web-config file in
//! exporter-toolkit's format (the file node_exporter and Alertmanager read with
//! `--web.config.file`):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: /etc/nodewatch/tls.crt
//!   key_file: /etc/nodewatch/tls.key
//!   client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert
//!   client_ca_file: /etc/nodewatch/clients-ca.pem
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...   # bcrypt
//! ```
//!
//! With users, every request but `GET /healthz` (which load balancers poll) needs one of them.
//! The certificate and key are read again when they change (at the next connection).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Deserializer, de};
use sha2::Digest as _;
use tokio_rustls::TlsAcceptor;

use crate::{
    httpc::tls::{self, MinVersion},
    yaml::{self, Spanned, located},
};

/// How client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

/// `tls_server_config:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: MinVersion,
}

/// A validated web-config file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebConfig {
    pub tls: Option<TlsServerConfig>,
    /// User name → bcrypt hash.
    pub users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsServer {
    /// The server's certificate (PEM, with its chain).
    cert_file: Spanned<String>,
    /// Its private key (PEM).
    key_file: Spanned<String>,
    /// `NoClientCert` (default), `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert`.
    client_auth_type: Option<Spanned<String>>,
    /// CA certificates that sign the accepted client certificates.
    client_ca_file: Option<Spanned<String>>,
    /// `TLS12` (default) or `TLS13`.
    min_version: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTlsServer>,
    basic_auth_users: Option<BTreeMap<String, Spanned<String>>>,
}

fn file<E: de::Error>(at: &Spanned<String>, key: &str) -> Result<PathBuf, E> {
    std::fs::File::open(&at.value)
        .map(|_| PathBuf::from(&at.value))
        .map_err(|e| located(at, format!("{key} {}: {e}", at.value)))
}

impl<'de> Deserialize<'de> for WebConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawWebConfig::deserialize(d)?;
        let tls = match r.tls_server_config {
            None => None,
            Some(t) => {
                let cert_file = file(&t.cert_file, "cert_file")?;
                let key_file = file(&t.key_file, "key_file")?;
                tls::load_certs(&cert_file).map_err(|m| located(&t.cert_file, m))?;
                tls::load_key(&key_file).map_err(|m| located(&t.key_file, m))?;
                let client_auth = match t.client_auth_type.as_ref().map(|s| s.value.as_str()) {
                    None | Some("NoClientCert") => ClientAuth::NoClientCert,
                    Some("VerifyClientCertIfGiven") => ClientAuth::VerifyClientCertIfGiven,
                    Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerifyClientCert,
                    Some(other) => {
                        return Err(located(
                            t.client_auth_type.as_ref().expect("matched Some"),
                            format!(
                                "client_auth_type `{other}` is not supported: use NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                            ),
                        ));
                    }
                };
                let client_ca_file = t
                    .client_ca_file
                    .as_ref()
                    .map(|f| {
                        let p = file(f, "client_ca_file")?;
                        tls::load_certs(&p).map_err(|m| located(f, m))?;
                        Ok::<_, D::Error>(p)
                    })
                    .transpose()?;
                match (client_auth, &t.client_ca_file) {
                    (ClientAuth::NoClientCert, Some(f)) => {
                        return Err(located(
                            f,
                            "client_ca_file needs client_auth_type VerifyClientCertIfGiven or RequireAndVerifyClientCert",
                        ));
                    }
                    (ClientAuth::NoClientCert, None) | (_, Some(_)) => {}
                    (_, None) => {
                        return Err(located(
                            t.client_auth_type.as_ref().expect("not the default"),
                            "verifying client certificates needs client_ca_file",
                        ));
                    }
                }
                let min_version = match t.min_version.as_ref().map(|v| v.value.as_str()) {
                    None | Some("TLS12") => MinVersion::Tls12,
                    Some("TLS13") => MinVersion::Tls13,
                    Some(other) => {
                        return Err(located(
                            t.min_version.as_ref().expect("matched Some"),
                            format!("min_version `{other}`: use TLS12 or TLS13"),
                        ));
                    }
                };
                let cfg = TlsServerConfig {
                    cert_file,
                    key_file,
                    client_auth,
                    client_ca_file,
                    min_version,
                };
                server_config(&cfg).map_err(|m| located(&t.cert_file, m))?;
                Some(cfg)
            }
        };
        let mut users = BTreeMap::new();
        for (name, hash) in r.basic_auth_users.unwrap_or_default() {
            if hash.value.parse::<bcrypt::HashParts>().is_err() {
                return Err(located(
                    &hash,
                    format!("basic_auth_users: the password of `{name}` is not a bcrypt hash"),
                ));
            }
            users.insert(name, hash.value);
        }
        Ok(Self { tls, users })
    }
}

impl WebConfig {
    /// Reads and checks a web-config file; problems carry the file's line and column.
    pub fn load(path: &Path) -> Result<Self, yaml::Error> {
        let name = path.display().to_string();
        let text = yaml::read_trusted(path)?;
        yaml::parse(&name, &text)
    }
}

/// The rustls server side of `tls_server_config`, reading its files now.
fn server_config(cfg: &TlsServerConfig) -> Result<rustls::ServerConfig, String> {
    let provider = tls::provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(tls::versions(cfg.min_version))
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (&cfg.client_ca_file, cfg.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::NoClientCert => {
            let mut roots = rustls::RootCertStore::empty();
            for c in tls::load_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if auth == ClientAuth::VerifyClientCertIfGiven {
                v = v.allow_unauthenticated();
            }
            builder
                .with_client_cert_verifier(v.build().map_err(|e| format!("client_ca_file: {e}"))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(
            tls::load_certs(&cfg.cert_file)?,
            tls::load_key(&cfg.key_file)?,
        )
        .map_err(|e| format!("cert_file and key_file: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS side of the server: an acceptor, made again when the certificate, key or client CA
/// file changes.
pub struct TlsServer {
    cfg: TlsServerConfig,
    current: Mutex<(Vec<Option<SystemTime>>, TlsAcceptor)>,
}

impl TlsServer {
    pub fn new(cfg: TlsServerConfig) -> Result<Self, String> {
        let stamps = stamps(&cfg);
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&cfg)?));
        Ok(Self {
            cfg,
            current: Mutex::new((stamps, acceptor)),
        })
    }

    /// The acceptor for the next connection; a changed file that does not load is logged and
    /// the last good one kept.
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamps(&self.cfg);
        if now != cur.0 {
            cur.0 = now;
            match server_config(&self.cfg) {
                Ok(c) => {
                    tracing::info!(cert_file = %self.cfg.cert_file.display(), "TLS certificate reloaded");
                    cur.1 = TlsAcceptor::from(Arc::new(c));
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS files changed but do not load; the previous certificate stays");
                }
            }
        }
        cur.1.clone()
    }
}

fn stamps(cfg: &TlsServerConfig) -> Vec<Option<SystemTime>> {
    [
        Some(&cfg.cert_file),
        Some(&cfg.key_file),
        cfg.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

/// Marks a request that came with the credentials of a basic-auth user.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated;

/// The basic-auth users, with the credentials already checked (bcrypt is slow on purpose;
/// Prometheus scrapes every few seconds).
pub struct Users {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

impl Users {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        Self {
            users,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Whether `Authorization: Basic ...` names a user with the right password.
    async fn check(&self, value: Option<&HeaderValue>) -> bool {
        use base64::Engine as _;
        let Some(b64) = value
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(raw) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let key: [u8; 32] = sha2::Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return true;
        }
        let (password, hash) = (password.to_string(), hash.clone());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if ok {
            let mut v = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            // A bound on what wrong-then-right guesses can grow it to.
            if v.len() > 1024 {
                v.clear();
            }
            v.insert(key);
        }
        ok
    }
}

/// `app` with every request but `GET /healthz` asking for a user's credentials.
pub fn with_basic_auth(app: Router, users: Arc<Users>) -> Router {
    app.layer(middleware::from_fn_with_state(users, require_user))
}

async fn require_user(State(users): State<Arc<Users>>, mut req: Request, next: Next) -> Response {
    if req.method() == Method::GET && req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    if users.check(req.headers().get(header::AUTHORIZATION)).await {
        req.extensions_mut().insert(Authenticated);
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"nodewatch\"")],
        "Unauthorized\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, String> {
        yaml::parse::<WebConfig>("web.yml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn mistakes_are_located() {
        let e = parse("basic_auth_users:\n  al: plaintext\n").unwrap_err();
        assert!(e.starts_with("web.yml:2:7:"), "{e}");
        assert!(e.contains("not a bcrypt hash"), "{e}");
        let e = parse(
            "tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n",
        )
        .unwrap_err();
        assert!(e.starts_with("web.yml:2:14:"), "{e}");
        let e = parse("tls_server_configs: {}\n").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn users_need_their_password() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let users = Users::new(BTreeMap::from([("al".to_string(), hash)]));
        let header = |s: &str| {
            use base64::Engine as _;
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ))
            .unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(users.check(Some(&header("al:right"))).await);
            // Again, from the cache of checked credentials.
            assert!(users.check(Some(&header("al:right"))).await);
            assert!(!users.check(Some(&header("al:wrong"))).await);
            assert!(!users.check(Some(&header("bob:right"))).await);
            assert!(!users.check(None).await);
        });
    }
}
