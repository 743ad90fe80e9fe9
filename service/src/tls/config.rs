use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// TLS on the service's own listeners (REST and the alerts WebSocket), for deployments
/// without a TLS-terminating ingress. Section `[tls]`; both files or neither.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}
