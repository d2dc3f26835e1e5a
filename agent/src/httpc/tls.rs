//! TLS for the outbound client (and the PEM loading the agent's own server shares): rustls on
//! ring, the system's roots plus configured CAs, client certificates, and a plain word for
//! each way a handshake fails.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _};

/// The lowest TLS version offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

/// `tls_config:` of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// CA certificates (PEM) trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM, with its chain) and its key, for servers that ask for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate is checked against, instead of the URL's host.
    pub server_name: Option<String>,
    /// Accept any server certificate (testing only).
    pub insecure_skip_verify: bool,
    pub min_version: MinVersion,
}

impl TlsConfig {
    /// The files this configuration reads.
    pub fn files(&self) -> Vec<&Path> {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect()
    }

    /// The modification times of the files, to notice a rotation.
    pub fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.files()
            .into_iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The crypto provider of every TLS connection: ring (aws-lc-rs, with post-quantum key
/// exchange, would need cmake and a long C build; ring's classical suites are what
/// Prometheus's Go peers offer by default too).
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions from `min` up.
pub fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static FROM_12: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static FROM_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        MinVersion::Tls12 => &FROM_12,
        MinVersion::Tls13 => &FROM_13,
    }
}

/// Every certificate of a PEM file; none is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{}: no PEM private key in it: {e}", path.display()))
}

/// The system's trusted roots, read once.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            tracing::warn!(errors = ?found.errors, "no system CA certificates found; only configured ca_file is trusted");
        }
        found.certs
    })
}

/// The client side of `tls_config`, reading its files now.
pub fn client_config(cfg: &TlsConfig) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(ca) = &cfg.ca_file {
        for c in load_certs(ca)? {
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
    }
    let inner = if cfg.insecure_skip_verify {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| format!("CA certificates: {e}"))?,
        )
    };
    let name = cfg
        .server_name
        .as_deref()
        .map(|n| ServerName::try_from(n.to_string()))
        .transpose()
        .map_err(|e| format!("server_name: {e}"))?;
    let verifier = Verifier {
        inner,
        name,
        algs: provider.signature_verification_algorithms,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(cfg.min_version))
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match (&cfg.cert_file, &cfg.key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c)?, load_key(k)?)
            .map_err(|e| format!("{}: {e}", c.display()))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The web PKI check, against `server_name` when one is configured, or none at all
/// (`insecure_skip_verify`); signatures are always checked.
#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    name: Option<ServerName<'static>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.inner {
            None => Ok(ServerCertVerified::assertion()),
            Some(v) => v.verify_server_cert(
                end_entity,
                intermediates,
                self.name.as_ref().unwrap_or(server_name),
                ocsp_response,
                now,
            ),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A handshake failure in words an operator acts on.
pub fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown certificate authority: the server's certificate is not signed by a trusted CA (tls_config.ca_file)".into(),
            C::Expired | C::ExpiredContext { .. } => "expired certificate: the server's certificate is past its validity".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet (check the clocks)".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => "hostname mismatch: the server's certificate does not name this host (tls_config.server_name)".into(),
            C::Revoked => "revoked certificate".into(),
            other => format!("invalid server certificate: {other:?}"),
        },
        E::AlertReceived(a @ (A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::HandshakeFailure | A::CertificateUnknown | A::AccessDenied)) => format!(
            "the server refused the handshake ({a:?}): it requires a client certificate it trusts (tls_config.cert_file, key_file)"
        ),
        E::AlertReceived(a @ A::ProtocolVersion) => format!(
            "the server refused the handshake ({a:?}): no TLS version in common (tls_config.min_version)"
        ),
        other => other.to_string(),
    }
}
