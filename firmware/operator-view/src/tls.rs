//! HTTPS for LAN access: the integrator's certificate and key (PEM), rustls with ring.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::server::ViewError;

/// The server side of TLS from PEM files; errors name the file and what is wrong with it.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ViewError> {
    let bad = |path: &Path, why: String| ViewError::Tls {
        path: path.to_path_buf(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad(cert, "no CERTIFICATE block in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad(key, format!("no PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            bad(
                key,
                format!("does not match the certificate or is unusable: {e}"),
            )
        })?;
    Ok(Arc::new(cfg))
}
