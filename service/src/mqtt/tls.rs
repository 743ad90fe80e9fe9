//! TLS for the service's MQTT connections (ingest, downlink, broker administration):
//! rustls with ring, the broker verified against `mqtt.ca_file` (else the system's
//! roots), an optional client certificate for mutual TLS.

use std::path::Path;
use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::MqttConfig;
use crate::error::{Error, Result};

fn bad(path: &Path, error: &dyn std::fmt::Display) -> Error {
    Error::Config(format!("mqtt TLS: {}: {error}", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, &e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, &e))?;
    if certs.is_empty() {
        return Err(bad(path, &"no certificate in the file"));
    }
    Ok(certs)
}

fn roots(config: &MqttConfig) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| bad(path, &e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(Error::Config(
                    "mqtt.tls is on without mqtt.ca_file and the system has no CA certificates"
                        .into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// The rustls client configuration, or `None` when `mqtt.tls` is off.
pub fn client_config(config: &MqttConfig) -> Result<Option<Arc<rustls::ClientConfig>>> {
    if !config.tls {
        if config.ca_file.is_some() || config.client_cert_file.is_some() {
            return Err(Error::Config(
                "mqtt.ca_file or mqtt.client_cert_file is set but mqtt.tls is off".into(),
            ));
        }
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("mqtt TLS: {e}")))?
        .with_root_certificates(roots(config)?);
    let client = match (&config.client_cert_file, &config.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(cert, &e))?
        }
        _ => {
            return Err(Error::Config(
                "mqtt.client_cert_file and mqtt.client_key_file go together".into(),
            ))
        }
    };
    Ok(Some(Arc::new(client)))
}

/// The transport for `config`: TCP, or TLS with the configuration above.
pub fn transport(config: &MqttConfig) -> Result<Transport> {
    Ok(match client_config(config)? {
        Some(tls) => Transport::tls_with_config(TlsConfiguration::Rustls(tls)),
        None => Transport::tcp(),
    })
}
