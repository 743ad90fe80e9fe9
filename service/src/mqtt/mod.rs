//! MQTT plumbing shared by the roles that talk to devices.

mod config;
mod publisher;
pub mod tls;

use std::time::Duration;

pub use config::MqttConfig;
pub use publisher::{MqttPublisher, Published};
use rumqttc::v5::MqttOptions;

use crate::error::Result;

impl MqttConfig {
    /// The instance id: configured, else the host name, else the process id.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| format!("pid{}", std::process::id()))
        })
    }

    /// MQTT v5 options for one role of this instance, with a persistent session, over
    /// TLS when configured and with the service's credentials.
    pub fn v5_options(&self, role: &str) -> Result<MqttOptions> {
        let client_id = format!("{}-{role}-{}", self.client_id_prefix, self.instance_id());
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        options.set_transport(tls::transport(self)?);
        options
            .set_keep_alive(Duration::from_secs(self.keep_alive_secs))
            .set_clean_start(!self.persistent_session)
            .set_session_expiry_interval(
                self.persistent_session.then_some(self.session_expiry_secs),
            )
            .set_max_packet_size(Some(self.max_packet_bytes));
        // `password_file` was read into `password` when the settings were loaded.
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            options.set_credentials(user, password.expose());
        }
        Ok(options)
    }
}
