//! Client TLS for `tcps:`: trust anchors from a CA file or a directory of CA
//! files (PEM), the server name taken from the destination.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;

use super::TransportError;

/// Loads every certificate of `path` (a PEM file, or a directory whose regular
/// files are PEM files) into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let bad = |reason: String| TransportError::TlsCa {
        path: path.to_path_buf(),
        reason,
    };
    let mut files = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| bad(e.to_string()))?;
        for e in entries {
            let p = e.map_err(|e| bad(e.to_string()))?.path();
            if p.is_file() {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut roots = RootCertStore::empty();
    for f in &files {
        let data = std::fs::read(f).map_err(|e| bad(format!("{}: {e}", f.display())))?;
        for cert in CertificateDer::pem_slice_iter(&data) {
            let cert = cert.map_err(|e| bad(format!("{}: {e}", f.display())))?;
            roots
                .add(cert)
                .map_err(|e| bad(format!("{}: {e}", f.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(bad("no CA certificate found".into()));
    }
    Ok(roots)
}

/// A client configuration that trusts exactly the CAs of `ca_path`.
pub fn client_config(ca_path: &Path) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let roots = load_roots(ca_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::TlsCa {
            path: ca_path.to_path_buf(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the server certificate must match: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TransportError> {
    ServerName::try_from(host.to_string()).map_err(|e| TransportError::BadDestination {
        destination: host.to_string(),
        reason: format!("not a valid TLS server name: {e}"),
    })
}

/// Classifies a failed TLS handshake: certificate problems are verification failures.
pub fn handshake_error(peer: &str, err: std::io::Error) -> TransportError {
    let verification = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .map(|e| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
        .unwrap_or(false);
    if verification {
        TransportError::TlsVerification {
            peer: peer.to_string(),
            reason: err.to_string(),
        }
    } else {
        TransportError::Tls {
            peer: peer.to_string(),
            reason: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_ca_files_are_reported_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = load_roots(&missing).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = load_roots(&empty).unwrap_err();
        assert!(e.to_string().contains("no CA certificate"), "{e}");
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("localhost").is_ok());
        assert!(server_name("bad name!").is_err());
    }
}
