//! TLS for the grid's listeners and clients, with rustls: a listener serves
//! a certificate and key from PEM files; every client (the CLI, nodes
//! talking to the control plane, replicas forwarding to the leader and
//! sending Raft traffic) trusts the system's roots plus the CA certificates
//! in `WASMGRID_CA` (a PEM file), or those a process installs with
//! [`trust`].

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A listener's TLS settings.
pub type ServerTls = Arc<rustls::ServerConfig>;

/// The environment variable naming a PEM file of extra CA certificates.
pub const CA_ENV: &str = "WASMGRID_CA";

static TRUSTED: RwLock<Option<Vec<Vec<u8>>>> = RwLock::new(None);

/// The certificate and key (PEM, concatenated) clients present when a
/// server asks for one.
static IDENTITY: RwLock<Option<Vec<u8>>> = RwLock::new(None);

/// A certificate, key or CA that cannot be used: the message names the
/// file (or setting) and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl From<String> for TlsError {
    fn from(message: String) -> Self {
        TlsError(message)
    }
}

/// Makes every client this process builds present the certificate chain
/// `cert` with its key `key` (PEM files) to servers that ask (mutual TLS).
pub fn identify(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let mut pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    pem.push(b'\n');
    pem.extend(std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?);
    reqwest::Identity::from_pem(&pem).map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    *IDENTITY.write().unwrap_or_else(|p| p.into_inner()) = Some(pem);
    Ok(())
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

/// Makes every client this process builds trust the CA certificates in the
/// PEM file `path` (besides the system's roots).
pub fn trust(path: &Path) -> Result<(), TlsError> {
    let certs = read_certificates(path)?.into_iter().map(|c| c.to_vec()).collect();
    *TRUSTED.write().unwrap_or_else(|p| p.into_inner()) = Some(certs);
    Ok(())
}

/// The extra CA certificates clients trust: installed with [`trust`], else
/// from `WASMGRID_CA`.
fn trusted() -> Result<Vec<Vec<u8>>, TlsError> {
    if let Some(certs) = TRUSTED.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return Ok(certs.clone());
    }
    match std::env::var_os(CA_ENV) {
        Some(path) if !path.is_empty() => Ok(read_certificates(Path::new(&path))
            .map_err(|e| format!("{CA_ENV}: {e}"))?
            .into_iter()
            .map(|c| c.to_vec())
            .collect()),
        _ => Ok(Vec::new()),
    }
}

/// A client builder that trusts the grid's CA: every HTTP client of the
/// grid starts here.
pub fn client_builder() -> Result<reqwest::ClientBuilder, TlsError> {
    // Idle connections go before a server's idle limit (10 s by default) closes them.
    let mut builder = reqwest::Client::builder().use_rustls_tls().pool_idle_timeout(std::time::Duration::from_secs(5));
    for der in trusted()? {
        let cert = reqwest::Certificate::from_der(&der).map_err(|e| format!("a CA certificate: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    if let Some(pem) = IDENTITY.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        builder =
            builder.identity(reqwest::Identity::from_pem(pem).map_err(|e| format!("the client certificate: {e}"))?);
    }
    Ok(builder)
}

/// A listener's TLS settings from a certificate chain and a private key,
/// both PEM files; offers HTTP/2 and HTTP/1.1. With `client_ca`, clients
/// may present a certificate that CA signed (one it did not sign fails the
/// handshake); each request then carries [`ClientCertificate`], and the
/// endpoints that need one check it.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, TlsError> {
    let chain = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certificates(ca)? {
                roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Whether the request's connection presented a client certificate the
/// listener's client CA signed (a request extension on TLS listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate(pub bool);
