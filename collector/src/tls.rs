//! TLS for the HTTP listener: rustls with the ring provider, TLS 1.2 and
//! 1.3 only (rustls implements nothing older, so TLS 1.0 and 1.1 clients are
//! refused in the handshake), and ALPN for HTTP/2 and HTTP/1.1.
//!
//! The certificate can be replaced while the collector runs
//! ([`Tls::reload`], on SIGHUP): each handshake takes the pair in use at
//! that moment, so connections already open keep theirs and new ones get
//! the new pair. A pair that does not load (a missing file, a key of
//! another certificate) is refused and the old one stays.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("reading the private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the key in {key_path} does not belong to the certificate in {cert_path}: {reason}")]
    Pair { cert_path: String, key_path: String, reason: String },
    #[error("tls setup: {0}")]
    Config(#[from] rustls::Error),
}

/// The HTTP listener's TLS: the acceptor every worker shares and the
/// certificate it presents.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    certificate: Arc<Certificate>,
}

// === impl Tls ===

impl Tls {
    /// Loads the PEM certificate chain (leaf first) and its private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Tls, TlsError> {
        let certificate = Arc::new(Certificate { current: RwLock::new(Arc::new(certified_key(cert_path, key_path)?)) });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), certificate })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the pair again and presents it to every later handshake.
    pub fn reload(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        let certified = Arc::new(certified_key(cert_path, key_path)?);
        *self.certificate.current.write().unwrap_or_else(PoisonError::into_inner) = certified;
        Ok(())
    }
}

/// Checks that a certificate chain and key load and belong together,
/// without serving them (`--check-config`).
pub fn check(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    certified_key(cert_path, key_path).map(drop)
}

/// The pair in use; a swap only replaces the pointer.
#[derive(Debug)]
struct Certificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Poisoned only by a panic during a pointer swap, which cannot leave
        // a torn value.
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

fn certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let certificates = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Certificates { path: cert_path.display().to_string(), reason: error.to_string() })?;
    if certificates.is_empty() {
        let reason = "no certificate in file".to_owned();
        return Err(TlsError::Certificates { path: cert_path.display().to_string(), reason });
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|error| TlsError::Key { path: key_path.display().to_string(), reason: error.to_string() })?;
    CertifiedKey::from_der(certificates, key, &rustls::crypto::ring::default_provider()).map_err(|error| {
        TlsError::Pair {
            cert_path: cert_path.display().to_string(),
            key_path: key_path.display().to_string(),
            reason: error.to_string(),
        }
    })
}
