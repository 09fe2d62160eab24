//! `wss://`: the rustls configuration the client connects with (ring
//! provider), trusting the platform's root certificates (read with
//! rustls-native-certs: the operating system's store, so a private CA
//! installed there is trusted too) plus any the builder was given.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tracing::{debug, warn};

use crate::error::Error;

/// A root certificate to trust for `wss://` in addition to (or instead of)
/// the platform's, e.g. a private CA's or a self-signed server's; see
/// [`ClientBuilder::add_root_certificate`](crate::ClientBuilder::add_root_certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate(CertificateDer<'static>);

impl Certificate {
    /// A certificate in DER form. Checked when the client connects.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Self {
        Self(CertificateDer::from(der.into()))
    }

    /// The first certificate of a PEM document.
    pub fn from_pem(pem: &[u8]) -> Result<Self, Error> {
        CertificateDer::from_pem_slice(pem)
            .map(Self)
            .map_err(|error| Error::Tls(format!("no PEM certificate: {error}")))
    }

    /// Every certificate of a PEM bundle (at least one).
    pub fn from_pem_bundle(pem: &[u8]) -> Result<Vec<Self>, Error> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .map(|parsed| parsed.map(Self))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Error::Tls(format!("bad PEM certificate bundle: {error}")))?;
        if certificates.is_empty() {
            return Err(Error::Tls("no certificate in the PEM bundle".into()));
        }
        Ok(certificates)
    }
}

/// The rustls configuration for `wss://`: the platform's roots (unless
/// `platform_roots` is false) and `extra`.
pub(crate) fn client_config(
    extra: &[Certificate],
    platform_roots: bool,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    if platform_roots {
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            warn!(errors = ?native.errors, "some platform root certificates could not be read");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        debug!(added, ignored, "platform root certificates");
    }
    for Certificate(der) in extra {
        roots
            .add(der.clone())
            .map_err(|error| Error::Tls(format!("unusable root certificate: {error}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(
            "no trusted root certificate: the platform has none and none was added".into(),
        ));
    }
    // ring, as on the server: no C toolchain, a shorter build. rustls
    // 0.23.48 deprecates it for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
