//! TLS for the listeners: one rustls configuration (ring as its crypto provider) shared
//! by the REST server and the alerts WebSocket.

mod config;

pub use config::TlsConfig;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// The server configuration, or `None` when TLS is off.
pub fn server_config(config: &TlsConfig) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let (cert_file, key_file) = match (&config.cert_file, &config.key_file) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(Error::Config(
                "tls.cert_file and tls.key_file go together: set both or neither".into(),
            ))
        }
    };
    let bad = |path: &std::path::Path, e: &dyn std::fmt::Display| {
        Error::Config(format!("tls: {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| bad(cert_file, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert_file, &e))?;
    if certs.is_empty() {
        return Err(bad(cert_file, &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| bad(key_file, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert_file, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(cert_file, &e))?;
    Ok(Some(Arc::new(server)))
}
