//! The whole configuration: one section per component, each documented field by field in
//! its own `config.rs`. Sources, later ones winning: defaults, the TOML file, then
//! environment variables named `FLEETWATCH_<SECTION>__<FIELD>` (double underscore between
//! levels), e.g. `FLEETWATCH_KAFKA__BROKERS=kafka:9092` or
//! `FLEETWATCH_TRAINER__MODEL__PREDICTOR_ALPHA=0.2`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::alerts::AlertsConfig;
use crate::archive::ArchiveConfig;
use crate::auth::AuthConfig;
use crate::credentials::CredentialsConfig;
use crate::devices::DevicesConfig;
use crate::error::{Error, Result};
use crate::http::HttpConfig;
use crate::ingest::IngestConfig;
use crate::jobs::JobsConfig;
use crate::kafka::KafkaConfig;
use crate::mqtt::MqttConfig;
use crate::rules::RulesConfig;
use crate::schedules::SchedulesConfig;
use crate::scorer::ScorerConfig;
use crate::secret::Secret;
use crate::shadow::ShadowConfig;
use crate::storage::StorageConfig;
use crate::tenancy::TenancyConfig;
use crate::tls::TlsConfig;
use crate::trainer::TrainerConfig;
use crate::webhooks::WebhooksConfig;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub mqtt: MqttConfig,
    pub ingest: IngestConfig,
    pub devices: DevicesConfig,
    pub trainer: TrainerConfig,
    pub scorer: ScorerConfig,
    pub alerts: AlertsConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub tenancy: TenancyConfig,
    pub storage: StorageConfig,
    pub archive: ArchiveConfig,
    pub credentials: CredentialsConfig,
    pub webhooks: WebhooksConfig,
    pub jobs: JobsConfig,
    pub schedules: SchedulesConfig,
    pub rules: RulesConfig,
    pub shadow: ShadowConfig,
}

const ENV_PREFIX: &str = "FLEETWATCH_";

impl Settings {
    /// Defaults, then `file` if given, then the `FLEETWATCH_*` variables in `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                text.parse::<toml::Table>().map_err(|e| {
                    Error::Config(format!("{}: {}", path.display(), quiet(&text, &e)))
                })?
            }
            None => toml::Table::new(),
        };
        for (name, raw) in env {
            let Some(path) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Variables of the CLI itself (FLEETWATCH_CONFIG, FLEETWATCH_ROLES) have no
            // double underscore and are not settings.
            if !path.contains("__") {
                continue;
            }
            let keys: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            set_path(&mut tree, &keys, parse_env_value(&raw))
                .map_err(|e| Error::Config(format!("{name}: {e}")))?;
        }
        let mut settings: Settings = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.to_string()))?;
        settings.read_secret_files()?;
        settings.validate()
    }

    /// Read the `*_file` secrets into their settings (`mqtt.password_file`,
    /// `credentials.admin_password_file`, `kafka.property_files`,
    /// `webhooks.endpoints[].secret_file`); `auth.hs256_secret_file`
    /// is read by the authenticator.
    fn read_secret_files(&mut self) -> Result<()> {
        let mqtt = &mut self.mqtt;
        mqtt.password = Secret::either(
            mqtt.password.as_ref(),
            mqtt.password_file.as_deref(),
            "mqtt.password",
        )?;
        let credentials = &mut self.credentials;
        credentials.admin_password = Secret::either(
            credentials.admin_password.as_ref(),
            credentials.admin_password_file.as_deref(),
            "credentials.admin_password",
        )?;
        self.webhooks.read_secret_files()?;
        self.archive.read_secret_files()?;
        let kafka = &mut self.kafka;
        for (key, path) in &kafka.property_files {
            if kafka.properties.contains_key(key) {
                return Err(Error::Config(format!(
                    "kafka property {key:?} is in both kafka.properties and kafka.property_files; keep one"
                )));
            }
            let value = Secret::from_file(path)?;
            kafka.properties.insert(key.clone(), value.expose());
        }
        Ok(())
    }

    fn validate(self) -> Result<Self> {
        self.trainer
            .model
            .clone()
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        if self.kafka.partitions < 1 {
            return Err(Error::Config("kafka.partitions must be at least 1".into()));
        }
        if self.ingest.max_payload_bytes as u64 >= self.mqtt.max_packet_bytes as u64 {
            return Err(Error::Config(
                "ingest.max_payload_bytes must be below mqtt.max_packet_bytes, or oversized payloads are dropped by the broker instead of dead-lettered".into(),
            ));
        }
        if self.ingest.max_inflight == 0
            || self.alerts.client_queue == 0
            || self.devices.mailbox_capacity == 0
        {
            return Err(Error::Config(
                "ingest.max_inflight, alerts.client_queue and devices.mailbox_capacity must be positive".into(),
            ));
        }
        let twin = &self.devices.twin;
        if self.devices.downlink_queue == 0
            || twin.resend_after_ms == 0
            || twin.max_pending_commands == 0
            || twin.offline_after_ms == 0
            || self.devices.passivate_after_ms == 0
            || self.http.max_pending_requests == 0
            || self.http.request_timeout_ms == 0
        {
            return Err(Error::Config(
                "devices.downlink_queue, devices.passivate_after_ms, devices.twin.resend_after_ms, devices.twin.offline_after_ms, devices.twin.max_pending_commands, http.max_pending_requests and http.request_timeout_ms must be positive".into(),
            ));
        }
        if twin.max_resend_after_ms < twin.resend_after_ms {
            return Err(Error::Config(
                "devices.twin.max_resend_after_ms must be at least devices.twin.resend_after_ms"
                    .into(),
            ));
        }
        if self.http.default_command_ttl_ms == 0
            || self.http.default_command_ttl_ms > self.http.max_command_ttl_ms
        {
            return Err(Error::Config(
                "http.default_command_ttl_ms must be positive and at most http.max_command_ttl_ms"
                    .into(),
            ));
        }
        self.scorer
            .rules(self.trainer.model.threshold)
            .check()
            .map_err(|e| Error::Config(format!("scorer: {e}")))?;
        self.storage.check().map_err(Error::Config)?;
        self.archive.check().map_err(Error::Config)?;
        self.webhooks.check().map_err(Error::Config)?;
        if self.trainer.checkpoint_every_publications == 0 {
            return Err(Error::Config(
                "trainer.checkpoint_every_publications must be at least 1".into(),
            ));
        }
        Ok(self)
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("settings serialize")
    }
}

/// A TOML syntax error without the offending line: that line may hold a secret.
fn quiet(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", error.message())
        }
        None => error.message().to_owned(),
    }
}

/// Environment values are TOML scalars when they parse as one (numbers, booleans, quoted
/// strings, arrays), else plain strings.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("value = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(
    table: &mut toml::Table,
    keys: &[String],
    value: toml::Value,
) -> std::result::Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty name")?;
    let mut current = table;
    for key in parents {
        current = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("{key} is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let settings = Settings::load(None, env(&[])).unwrap();
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn env_overrides_the_file() {
        let dir = std::env::temp_dir().join(format!("fw-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("fleetwatch.toml");
        std::fs::write(&file, "[kafka]\nbrokers = \"file:9092\"\npartitions = 3\n").unwrap();
        let settings = Settings::load(
            Some(&file),
            env(&[
                ("FLEETWATCH_KAFKA__BROKERS", "env:9092"),
                ("FLEETWATCH_TRAINER__MODEL__PREDICTOR_ALPHA", "0.3"),
                ("FLEETWATCH_CONFIG", "ignored"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.kafka.brokers, "env:9092");
        assert_eq!(settings.kafka.partitions, 3);
        assert_eq!(settings.trainer.model.predictor_alpha, 0.3);
    }

    #[test]
    fn webhook_endpoints_come_from_the_environment_and_their_secrets_never_show() {
        let secret = "a-webhook-signing-secret-0123";
        let endpoints = format!(
            "[{{name = \"pager\", tenant = \"acme\", url = \"https://hooks.example/a\", secret = \"{secret}\"}}]"
        );
        let settings =
            Settings::load(None, env(&[("FLEETWATCH_WEBHOOKS__ENDPOINTS", &endpoints)])).unwrap();
        let endpoint = &settings.webhooks.endpoints[0];
        assert_eq!(endpoint.tenant.as_str(), "acme");
        assert_eq!(endpoint.secret.as_ref().unwrap().expose(), secret);
        let printed = format!("{}{settings:?}", settings.to_toml());
        assert!(!printed.contains(secret) && printed.contains("***"));
        let short = endpoints.replace(secret, "short-secret");
        let error = Settings::load(None, env(&[("FLEETWATCH_WEBHOOKS__ENDPOINTS", &short)]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("at least 16 bytes") && !error.contains("short-secret"),
            "{error}"
        );
        let unsigned = "[{name = \"pager\", tenant = \"acme\", url = \"https://hooks.example/a\"}]";
        let error = Settings::load(None, env(&[("FLEETWATCH_WEBHOOKS__ENDPOINTS", unsigned)]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("needs a secret"), "{error}");
    }

    #[test]
    fn unknown_and_invalid_settings_are_clear_errors() {
        let unknown = Settings::load(None, env(&[("FLEETWATCH_KAFKA__BROKER", "x")])).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `broker`"),
            "{unknown}"
        );
        let wrong_type =
            Settings::load(None, env(&[("FLEETWATCH_KAFKA__PARTITIONS", "many")])).unwrap_err();
        assert!(
            wrong_type.to_string().contains("partitions"),
            "{wrong_type}"
        );
        let invalid = Settings::load(
            None,
            env(&[("FLEETWATCH_TRAINER__MODEL__PREDICTOR_ALPHA", "2")]),
        )
        .unwrap_err();
        assert!(invalid.to_string().contains("predictor_alpha"), "{invalid}");
        let ttl = Settings::load(
            None,
            env(&[("FLEETWATCH_HTTP__DEFAULT_COMMAND_TTL_MS", "999999999999")]),
        )
        .unwrap_err();
        assert!(ttl.to_string().contains("default_command_ttl_ms"), "{ttl}");
        let nested = Settings::load(
            None,
            env(&[("FLEETWATCH_DEVICES__TWIN__RESEND_AFTER_MS", "250")]),
        )
        .unwrap();
        assert_eq!(nested.devices.twin.resend_after_ms, 250);
    }
}
