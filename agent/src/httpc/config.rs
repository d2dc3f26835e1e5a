//! `http_config`: how a notifier, a heartbeat or a scrape target is reached, with Prometheus's
//! keys and meanings (basic auth, authorization, TLS, proxy, redirects). Every file named is
//! read while the configuration is checked, so a missing or unreadable one is reported with
//! its location like any other mistake.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, de};

use super::tls;
pub use super::tls::{MinVersion, TlsConfig};
use crate::yaml::{Spanned, located};

/// A secret given in the file itself or read from a file at each use.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("<secret>"),
            Secret::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl Secret {
    /// The secret now: a file is read again at each call (rotation), trailing newline dropped.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Secret::Inline(s) => Ok(s.clone()),
            Secret::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("reading {}: {e}", p.display())),
        }
    }
}

/// `basic_auth: { username, password | password_file }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

/// `authorization: { type, credentials | credentials_file }`: header `Authorization: <type>
/// <credentials>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub kind: String,
    pub credentials: Secret,
}

/// A validated `http_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub basic_auth: Option<BasicAuth>,
    pub authorization: Option<Authorization>,
    pub tls_config: TlsConfig,
    pub proxy_url: Option<String>,
    pub proxy_from_environment: bool,
    pub no_proxy: Option<String>,
    pub follow_redirects: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            basic_auth: None,
            authorization: None,
            tls_config: TlsConfig::default(),
            proxy_url: None,
            proxy_from_environment: false,
            no_proxy: None,
            follow_redirects: true,
        }
    }
}

impl HttpConfig {
    /// The `Authorization` header value, with the secret read now.
    pub fn authorization_header(&self) -> Result<Option<String>, String> {
        use base64::Engine as _;
        if let Some(b) = &self.basic_auth {
            let password = b.password.read()?;
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", b.username));
            return Ok(Some(format!("Basic {token}")));
        }
        if let Some(a) = &self.authorization {
            let credentials = a.credentials.read()?;
            return Ok(Some(format!("{} {credentials}", a.kind)));
        }
        Ok(None)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    /// The user name.
    username: Spanned<String>,
    /// The password, in the config file.
    password: Option<Spanned<String>>,
    /// A file holding the password, read at each request.
    password_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    /// The scheme. Default `Bearer`.
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    /// The credentials, in the config file.
    credentials: Option<Spanned<String>>,
    /// A file holding the credentials, read at each request.
    credentials_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    /// CA certificates (PEM) trusted besides the system's roots.
    ca_file: Option<Spanned<String>>,
    /// Client certificate (PEM) for servers that require one; with `key_file`.
    cert_file: Option<Spanned<String>>,
    /// The client certificate's private key (PEM).
    key_file: Option<Spanned<String>>,
    /// The name the server certificate must hold, instead of the URL's host.
    server_name: Option<String>,
    /// Do not check the server's certificate. Default `false`.
    #[serde(default)]
    insecure_skip_verify: bool,
    /// `TLS12` (default) or `TLS13`.
    min_version: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpConfig {
    basic_auth: Option<RawBasicAuth>,
    authorization: Option<RawAuthorization>,
    tls_config: Option<RawTls>,
    /// An HTTP proxy (`http://proxy:3128`); HTTPS goes through it with CONNECT.
    proxy_url: Option<Spanned<String>>,
    /// Use the proxy that `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` name. Default `false`.
    #[serde(default)]
    proxy_from_environment: bool,
    /// Hosts, domains and networks reached without `proxy_url` (comma-separated).
    no_proxy: Option<String>,
    /// Follow 3xx redirects. Default `true`.
    follow_redirects: Option<bool>,
}

/// A file that must be readable now; its path as given.
fn readable<E: de::Error>(at: &Spanned<String>, key: &str) -> Result<PathBuf, E> {
    let path = PathBuf::from(&at.value);
    match std::fs::File::open(&path) {
        Ok(_) => Ok(path),
        Err(e) => Err(located(at, format!("{key} {}: {e}", at.value))),
    }
}

fn secret<E: de::Error>(
    inline: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    names: (&str, &str),
    missing_at: &Spanned<String>,
) -> Result<Secret, E> {
    match (inline, file) {
        (Some(_), Some(f)) => Err(located(
            &f,
            format!("at most one of {} and {} may be set", names.0, names.1),
        )),
        (Some(s), None) => Ok(Secret::Inline(s.value)),
        (None, Some(f)) => Ok(Secret::File(readable(&f, names.1)?)),
        (None, None) => Err(located(
            missing_at,
            format!("{} or {} is required", names.0, names.1),
        )),
    }
}

fn validate_tls<E: de::Error>(r: RawTls) -> Result<TlsConfig, E> {
    let ca_file = r
        .ca_file
        .as_ref()
        .map(|f| {
            let p = readable(f, "ca_file")?;
            tls::load_certs(&p).map_err(|m| located(f, m))?;
            Ok::<_, E>(p)
        })
        .transpose()?;
    let (cert_file, key_file) = match (&r.cert_file, &r.key_file) {
        (None, None) => (None, None),
        (Some(c), None) => return Err(located(c, "cert_file needs key_file")),
        (None, Some(k)) => return Err(located(k, "key_file needs cert_file")),
        (Some(c), Some(k)) => {
            let cp = readable(c, "cert_file")?;
            let kp = readable(k, "key_file")?;
            tls::load_certs(&cp).map_err(|m| located(c, m))?;
            tls::load_key(&kp).map_err(|m| located(k, m))?;
            (Some(cp), Some(kp))
        }
    };
    let min_version = match &r.min_version {
        None => MinVersion::Tls12,
        Some(v) => match v.value.as_str() {
            "TLS12" => MinVersion::Tls12,
            "TLS13" => MinVersion::Tls13,
            "TLS10" | "TLS11" => {
                return Err(located(
                    v,
                    format!(
                        "min_version {}: TLS 1.0 and 1.1 are not offered; use TLS12 or TLS13",
                        v.value
                    ),
                ));
            }
            other => {
                return Err(located(
                    v,
                    format!("unknown min_version `{other}`: use TLS12 or TLS13"),
                ));
            }
        },
    };
    if let Some(name) = &r.server_name
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        let at = r.ca_file.as_ref().or(r.min_version.as_ref());
        let msg = format!("server_name `{name}` is not a DNS name or IP address");
        return Err(match at {
            Some(at) => located(at, msg),
            None => E::custom(msg),
        });
    }
    Ok(TlsConfig {
        ca_file,
        cert_file,
        key_file,
        server_name: r.server_name,
        insecure_skip_verify: r.insecure_skip_verify,
        min_version,
    })
}

impl<'de> Deserialize<'de> for HttpConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = RawHttpConfig::deserialize(d)?;
        let basic_auth = r
            .basic_auth
            .map(|b| {
                let password = secret(
                    b.password,
                    b.password_file,
                    ("password", "password_file"),
                    &b.username,
                )?;
                Ok::<_, D::Error>(BasicAuth {
                    username: b.username.value,
                    password,
                })
            })
            .transpose()?;
        let authorization = match r.authorization {
            None => None,
            Some(a) => {
                let kind = a
                    .kind
                    .as_ref()
                    .map_or_else(|| "Bearer".to_string(), |k| k.value.clone());
                if let Some(k) = &a.kind
                    && k.value.eq_ignore_ascii_case("basic")
                {
                    return Err(located(
                        k,
                        "authorization type cannot be Basic: use basic_auth",
                    ));
                }
                let anchor = a
                    .credentials_file
                    .clone()
                    .or_else(|| a.credentials.clone())
                    .or_else(|| a.kind.clone());
                let Some(at) = anchor else {
                    return Err(de::Error::custom(
                        "authorization: credentials or credentials_file is required",
                    ));
                };
                let credentials = secret(
                    a.credentials,
                    a.credentials_file,
                    ("credentials", "credentials_file"),
                    &at,
                )?;
                if basic_auth.is_some() {
                    return Err(located(
                        &at,
                        "at most one of basic_auth and authorization may be set",
                    ));
                }
                Some(Authorization { kind, credentials })
            }
        };
        let tls_config = r
            .tls_config
            .map(validate_tls)
            .transpose()?
            .unwrap_or_default();
        let proxy_url = match &r.proxy_url {
            None => None,
            Some(p) => {
                let ok = reqwest::Url::parse(&p.value)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                if !ok {
                    return Err(located(
                        p,
                        format!("proxy_url `{}` must be http://host:port", p.value),
                    ));
                }
                if r.proxy_from_environment {
                    return Err(located(
                        p,
                        "proxy_url and proxy_from_environment cannot both be set",
                    ));
                }
                Some(p.value.clone())
            }
        };
        if r.no_proxy.is_some() && proxy_url.is_none() {
            return Err(de::Error::custom(
                "no_proxy applies to proxy_url, which is not set",
            ));
        }
        Ok(Self {
            basic_auth,
            authorization,
            tls_config,
            proxy_url,
            proxy_from_environment: r.proxy_from_environment,
            no_proxy: r.no_proxy,
            follow_redirects: r.follow_redirects.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HttpConfig, String> {
        crate::yaml::parse::<HttpConfig>("h.yaml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_missing_file_is_a_located_error() {
        let e =
            parse("basic_auth:\n  username: u\n  password_file: /nonexistent/pw\n").unwrap_err();
        assert!(e.starts_with("h.yaml:3:18:"), "{e}");
        assert!(e.contains("password_file /nonexistent/pw"), "{e}");
        let e = parse("tls_config:\n  ca_file: /nonexistent/ca.pem\n").unwrap_err();
        assert!(e.starts_with("h.yaml:2:12:"), "{e}");
    }

    #[test]
    fn conflicting_keys_are_refused() {
        let e =
            parse("basic_auth: { username: u, password: p }\nauthorization: { credentials: t }\n")
                .unwrap_err();
        assert!(
            e.contains("at most one of basic_auth and authorization"),
            "{e}"
        );
        let e = parse("tls_config: { cert_file: /etc/hostname }\n").unwrap_err();
        assert!(e.contains("cert_file needs key_file"), "{e}");
        let e = parse("tls_config: { min_version: TLS10 }\n").unwrap_err();
        assert!(e.contains("TLS12 or TLS13"), "{e}");
        let e = parse("authorization: { type: Basic, credentials: x }\n").unwrap_err();
        assert!(e.contains("use basic_auth"), "{e}");
        let e = parse("no_proxy: localhost\n").unwrap_err();
        assert!(e.contains("proxy_url"), "{e}");
    }

    #[test]
    fn credentials_files_are_read_at_each_use() {
        let dir = std::env::temp_dir().join(format!("nodewatch-httpc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "one\n").unwrap();
        let c = parse(&format!(
            "authorization:\n  credentials_file: {}\n",
            f.display()
        ))
        .unwrap();
        assert_eq!(c.authorization_header().unwrap().unwrap(), "Bearer one");
        std::fs::write(&f, "two\n").unwrap();
        assert_eq!(c.authorization_header().unwrap().unwrap(), "Bearer two");
        let b = parse("basic_auth: { username: al, password: 'pw' }\n").unwrap();
        assert_eq!(b.authorization_header().unwrap().unwrap(), "Basic YWw6cHc=");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
