use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Devices' MQTT credentials, applied to Mosquitto's dynamic security plugin.
/// Section `[credentials]`.
///
/// When enabled, `POST /devices/{id}/credentials` creates the device's broker client and
/// its role (publish only under its own `devices/{id}/…` topics, subscribe only to its own
/// commands and desired state) and `DELETE` removes both, which disconnects the device.
/// The broker is the one in `[mqtt]`, reached with the same TLS settings but with the
/// administrator's account below. Off by default: deployments that manage the broker's
/// users themselves use the static ACL in docs/architecture.md instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialsConfig {
    /// Serve the credential endpoints (they answer 404 when off).
    pub enabled: bool,
    /// The dynamic security administrator (`mosquitto_ctrl dynsec init FILE ADMIN`).
    pub admin_username: String,
    /// Its password. Prints as `***`; prefer `admin_password_file` or
    /// `FLEETWATCH_CREDENTIALS__ADMIN_PASSWORD`.
    pub admin_password: Option<Secret>,
    /// A file holding the administrator's password, read at start.
    pub admin_password_file: Option<PathBuf>,
    /// The plugin's control topic; answers come on `{control_topic}/response`.
    pub control_topic: String,
    /// How long one change may take: connecting, the broker's answer (ms).
    pub timeout_ms: u64,
    /// Changes applied at once; further requests wait for a slot up to `timeout_ms`, then
    /// get 503.
    pub max_concurrent: usize,
    /// Length of generated device passwords (letters and digits, ~5.95 bits each).
    pub password_length: usize,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            admin_username: "admin".to_owned(),
            admin_password: None,
            admin_password_file: None,
            control_topic: "$CONTROL/dynamic-security/v1".to_owned(),
            timeout_ms: 10_000,
            max_concurrent: 4,
            password_length: 32,
        }
    }
}
