//! TLS for the HTTP listener: rustls with the ring provider, TLS 1.2 and
//! 1.3 only (rustls implements nothing older, so TLS 1.0 and 1.1 clients are
//! refused in the handshake), and ALPN for HTTP/2 and HTTP/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("reading the private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("tls setup: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the acceptor from PEM files: the certificate chain (leaf first)
/// and its private key.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let certificates = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Certificates { path: cert_path.display().to_string(), reason: error.to_string() })?;
    if certificates.is_empty() {
        let reason = "no certificate in file".to_owned();
        return Err(TlsError::Certificates { path: cert_path.display().to_string(), reason });
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|error| TlsError::Key { path: key_path.display().to_string(), reason: error.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
