use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// How fleetwatch reaches the MQTT broker. Section `[mqtt]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (MQTT v5 over TCP, or over TLS when `tls` is on).
    pub port: u16,
    /// Client id prefix; the role and an instance id are appended. The id must be stable
    /// across restarts of one instance so its persistent session (and the messages queued
    /// in it while it was away) is picked up again.
    pub client_id_prefix: String,
    /// Instance id used in client ids. Defaults to the host name (the pod name in
    /// Kubernetes).
    pub instance_id: Option<String>,
    /// Keep-alive interval in seconds.
    pub keep_alive_secs: u64,
    /// Ask the broker to keep the session (subscriptions and unacknowledged messages)
    /// across disconnects, so nothing is lost while the service restarts. Only the demo
    /// turns it off (see docs/architecture.md).
    pub persistent_session: bool,
    /// How long the broker keeps a disconnected session and its queued messages (s).
    pub session_expiry_secs: u32,
    /// Largest MQTT packet the service accepts. The broker drops larger packets for us
    /// (MQTT v5 Maximum Packet Size); keep it above `ingest.max_payload_bytes` so that
    /// oversized payloads reach ingest and are dead-lettered with a reason.
    pub max_packet_bytes: u32,
    /// User name the service connects with (ingest and downlink).
    pub username: Option<String>,
    /// Its password; prefer `password_file` or `FLEETWATCH_MQTT__PASSWORD` to a config
    /// file. Prints as `***`.
    pub password: Option<Secret>,
    /// A file holding the password (trailing newline dropped), read at start.
    pub password_file: Option<PathBuf>,
    /// Speak MQTT over TLS (rustls; the broker's TLS port is usually 8883). The broker's
    /// certificate must name `host` (a DNS name or an IP address).
    pub tls: bool,
    /// PEM CA certificates that verify the broker; without it, the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub client_key_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            client_id_prefix: "fleetwatch".to_owned(),
            instance_id: None,
            keep_alive_secs: 30,
            persistent_session: true,
            session_expiry_secs: 3600,
            max_packet_bytes: 1024 * 1024,
            username: None,
            password: None,
            password_file: None,
            tls: false,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}
