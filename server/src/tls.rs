//! TLS directly on the server: the certificate chain and private key
//! (PEM files) loaded once at startup into a rustls acceptor (ring provider,
//! HTTP/1.1 by ALPN) that the accept loop wraps each connection in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the server's certificate and key are (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert_chain: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

impl TlsConfig {
    pub fn new(cert_chain: impl Into<PathBuf>, private_key: impl Into<PathBuf>) -> Self {
        Self { cert_chain: cert_chain.into(), private_key: private_key.into() }
    }
}

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or a malformed one.
    #[error("{}: no usable PEM certificate: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    /// The key file holds no PEM private key, or a malformed one.
    #[error("{}: no usable PEM private key: {reason}", path.display())]
    PrivateKey { path: PathBuf, reason: String },
    /// rustls refused the pair (e.g. the key does not match the
    /// certificate, or an unsupported key type).
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Rejected(#[source] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn pem_reason(error: &pem::Error) -> String {
    match error {
        pem::Error::NoItemsFound => "none found".to_owned(),
        other => other.to_string(),
    }
}

/// Loads the certificate chain and key and builds the acceptor.
pub(crate) fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let cert_path = &config.cert_chain;
    let certificate_error =
        |reason: String| TlsError::Certificate { path: cert_path.clone(), reason };
    let cert_pem = read(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| certificate_error(pem_reason(&error)))?;
    if chain.is_empty() {
        return Err(certificate_error("none found".to_owned()));
    }
    let key_path = &config.private_key;
    let key_pem = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::PrivateKey {
        path: key_path.clone(),
        reason: pem_reason(&error),
    })?;
    // ring, not aws-lc-rs: no C toolchain or CMake, and a much shorter
    // build on CI's two cores. rustls 0.23.48 deprecates it for lacking
    // post-quantum key exchange (X25519MLKEM768); classical ECDHE stays.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Rejected)?;
    // The accept loop serves HTTP/1.1 only (WebSocket upgrades need it).
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
