//! The aggregator's QUIC server identity: an operator's certificate, or a
//! self-signed one generated once and kept in the data directory.
//!
//! Collectors trust the generated certificate as their root, so it must stay
//! the same across restarts: it is written once (temp file, fsync, rename)
//! and reused after. Certificate checks are never disabled anywhere.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::ServerTlsConfig;
use tracing::info;

use crate::{Config, TlsFiles};

pub(crate) const CERT_FILE_NAME: &str = "quic-cert.pem";
pub(crate) const KEY_FILE_NAME: &str = "quic-key.pem";

/// Names every generated certificate carries, so a collector on the same
/// host can connect by any of them.
const NAMES_DEFAULT: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why the QUIC identity could not be loaded or made. Like [`crate::Error`],
/// messages leave out their source.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("tls_cert and tls_key must be given together")]
    Incomplete,
    #[error("read {}", path.display())]
    Read { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("{} holds no certificate", path.display())]
    Empty { path: PathBuf },
    #[error("generate self-signed certificate")]
    Generate(#[from] rcgen::Error),
    #[error("make {} absolute", path.display())]
    Absolute { path: PathBuf, source: io::Error },
    #[error("write {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} and {} are not a usable certificate and key", cert_path.display(), key_path.display())]
    Unusable { cert_path: PathBuf, key_path: PathBuf, source: rustls::Error },
}

/// A loaded server identity.
pub(crate) struct Identity {
    /// Absolute path of the PEM certificate (chain) collectors must trust.
    pub(crate) cert_path: PathBuf,
    pub(crate) cert_chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

/// Loads the configured certificate, else the one in the data directory,
/// generating that one first if it is missing.
pub(crate) fn load_or_generate(config: &Config) -> Result<Identity, CertError> {
    let (cert_path, key_path) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert_path), Some(key_path)) => (cert_path.clone(), key_path.clone()),
        (None, None) => {
            let cert_path = config.data_dir.join(CERT_FILE_NAME);
            let key_path = config.data_dir.join(KEY_FILE_NAME);
            // Both or neither: a lone file is the trace of an interrupted
            // first start, and a fresh pair replaces it.
            if !(cert_path.exists() && key_path.exists()) {
                generate(&cert_path, &key_path, &config.tls_names)?;
            }
            (cert_path, key_path)
        }
        _ => return Err(CertError::Incomplete),
    };
    let cert_path =
        std::path::absolute(&cert_path).map_err(|source| CertError::Absolute { path: cert_path, source })?;
    load(cert_path, &key_path)
}

pub(crate) fn load(cert_path: PathBuf, key_path: &Path) -> Result<Identity, CertError> {
    let (cert_pem, key_pem) = (read(&cert_path)?, read(key_path)?);
    let (cert_chain, key) = parse(&cert_path, &cert_pem, key_path, &key_pem)?;
    Ok(Identity { cert_path, cert_chain, key })
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Read { path: path.to_owned(), source: pem::Error::Io(source) })
}

/// The certificate chain in `cert_pem` (at least one) and the key in
/// `key_pem`, read from the paths named in errors.
fn parse(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    let cert_chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Read { path: cert_path.to_owned(), source })?;
    if cert_chain.is_empty() {
        return Err(CertError::Empty { path: cert_path.to_owned() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|source| CertError::Read { path: key_path.to_owned(), source })?;
    Ok((cert_chain, key))
}

/// Loads the certificate chain and key that Flight and Flight SQL serve
/// TLS with, and checks that rustls accepts the pair (the key matches the
/// certificate, of a kind rustls signs with) so a bad pair stops the start
/// instead of failing every handshake. Each file is read once, so what is
/// checked is what is served.
pub(crate) fn flight_tls(files: &TlsFiles) -> Result<ServerTlsConfig, CertError> {
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let (cert_chain, key) = parse(&files.cert, &cert_pem, &files.key, &key_pem)?;
    // The provider is named, not taken from the process default, so this
    // check never depends on which provider another crate installed.
    rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(cert_chain, key))
        .map_err(|source| CertError::Unusable { cert_path: files.cert.clone(), key_path: files.key.clone(), source })?;
    Ok(ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)))
}

fn generate(cert_path: &Path, key_path: &Path, tls_names: &[String]) -> Result<(), CertError> {
    let mut names: Vec<String> = NAMES_DEFAULT.iter().map(|&name| name.to_owned()).collect();
    for name in tls_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let certified = rcgen::generate_simple_self_signed(names.clone())?;
    // The key first: a crash between the two writes leaves no certificate,
    // so the next start generates a new pair instead of loading a mismatch.
    write_atomic(key_path, certified.signing_key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(cert_path, certified.cert.pem().as_bytes(), 0o644)?;
    info!(cert = %cert_path.display(), names = ?names, "Generated a self-signed QUIC certificate.");
    Ok(())
}

/// Writes `bytes` to a temp file created with `mode`, syncs it and renames
/// it over `path`, so readers see the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let error = |source| CertError::Write { path: path.to_owned(), source };
    let mut temp_path = path.as_os_str().to_owned();
    temp_path.push(".tmp");
    let temp_path = PathBuf::from(temp_path);
    // A stale temp file may carry a wider mode; `create_new` below then
    // guarantees the key is never readable by others, even for a moment.
    match fs::remove_file(&temp_path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => return Err(error(source)),
        _ => {}
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp_path).map_err(error)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(error)?;
    fs::rename(&temp_path, path).map_err(error)?;
    // Makes the rename itself durable.
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(error)
}

#[cfg(test)]
mod tests;
