//! Secrets in the configuration: passwords, tokens, keys and SASL credentials. One type
//! for all of them, so every printout (`fleetwatch config`, `Debug`, logs, errors) shows
//! `***` instead; and `*_file` settings that read a secret from a file, as Kubernetes
//! mounts them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What every secret prints as.
pub const REDACTED: &str = "***";

/// A secret that never shows: `Debug`, `Display`-free, and serialized as `***`.
/// Deserialized from any scalar (an all-digit password set through the environment is a
/// TOML integer), and a wrong type's error never quotes the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Scalar).map(Self)
    }
}

/// Any scalar as a string; errors name the type, never the value.
struct Scalar;

impl<'de> serde::de::Visitor<'de> for Scalar {
    type Value = String;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<String, E> {
        Ok(value.to_owned())
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<String, E> {
        Ok(value.to_string())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(serde::de::Error::custom("expected a string, found a table"))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(serde::de::Error::custom(
            "expected a string, found an array",
        ))
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself: only where it is handed to a client library or checked.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Read a secret from `path`, dropping a trailing newline. The error names the file,
    /// never its content.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(Self(text.trim_end_matches(['\n', '\r']).to_owned()))
    }

    /// The secret from `value` or from `file` (not both): `name` is the setting, for the
    /// error.
    pub fn either(value: Option<&Secret>, file: Option<&Path>, name: &str) -> Result<Option<Self>> {
        match (value, file) {
            (Some(_), Some(_)) => Err(Error::Config(format!(
                "{name} and {name}_file are both set; keep one"
            ))),
            (Some(value), None) => Ok(Some(value.clone())),
            (None, Some(path)) => Self::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// Free-form client properties (librdkafka's), whose secret ones are redacted when
/// printed: a key naming a password, a secret, a token or a private key. Values may be
/// any scalar (`"linger.ms" = 5`).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Properties(BTreeMap<String, Secretly>);

/// A property value, deserialized like a [`Secret`] (any scalar, never quoted in errors).
#[derive(Clone, PartialEq, Eq)]
struct Secretly(String);

impl<'de> Deserialize<'de> for Secretly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Scalar).map(Self)
    }
}

impl Properties {
    /// Whether a property's value is a secret, by its name.
    pub fn is_secret(key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "token",
            "key.pem",
            "oauthbearer.config",
            "jaas",
        ]
        .iter()
        .any(|word| key.contains(word))
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), Secretly(value.into()));
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.0.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every property with its real value, for the client library.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(key, value)| (key.as_str(), value.0.as_str()))
    }

    fn shown(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(key, value)| {
                let shown = if Self::is_secret(key) {
                    REDACTED
                } else {
                    value.0.as_str()
                };
                (key.as_str(), shown)
            })
            .collect()
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(key, value)| (key.into(), Secretly(value.into())))
                .collect(),
        )
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.shown()).finish()
    }
}

impl Serialize for Properties {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.shown().serialize(serializer)
    }
}

/// librdkafka's configuration errors quote the value (`Invalid value "…" for
/// configuration property "sasl.password"`): for a secret property, put `***` in its
/// place, in the description as well.
pub fn redact_kafka_error(error: rdkafka::error::KafkaError) -> rdkafka::error::KafkaError {
    use rdkafka::error::KafkaError;
    match error {
        KafkaError::ClientConfig(code, description, key, value) if Properties::is_secret(&key) => {
            let description = if value.is_empty() {
                description
            } else {
                description.replace(&value, REDACTED)
            };
            KafkaError::ClientConfig(code, description, key, REDACTED.to_owned())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_as_stars() {
        let secret = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"***\"");
        assert_eq!(secret.expose(), "hunter2-hunter2");
    }

    #[test]
    fn secret_properties_are_redacted_and_others_shown() {
        let properties: Properties = [
            ("security.protocol", "sasl_ssl"),
            ("sasl.username", "fleet"),
            ("sasl.password", "pw-1"),
            ("ssl.key.password", "pw-2"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
            ("sasl.oauthbearer.client.secret", "pw-3"),
        ]
        .into_iter()
        .collect();
        let printed = format!("{properties:?} {}", toml::to_string(&properties).unwrap());
        for secret in ["pw-1", "pw-2", "pw-3", "PRIVATE KEY"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(
            printed.contains("sasl_ssl") && printed.contains("fleet"),
            "{printed}"
        );
        assert_eq!(properties.get("sasl.password"), Some("pw-1"));
    }

    #[test]
    fn any_scalar_is_a_secret_and_errors_never_quote_it() {
        #[derive(Deserialize)]
        struct Holder {
            secret: Secret,
            properties: Properties,
        }
        let holder: Holder =
            toml::from_str("secret = 271828\n[properties]\n\"sasl.password\" = 314159\n").unwrap();
        assert_eq!(holder.secret.expose(), "271828");
        assert_eq!(holder.properties.get("sasl.password"), Some("314159"));
        let error = toml::from_str::<Holder>("secret = [\"a-secret-in-a-list\"]\n[properties]\n")
            .err()
            .unwrap();
        assert!(
            !error.message().contains("a-secret-in-a-list"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn kafka_clients_accept_tls_and_sasl_properties() {
        use rdkafka::consumer::BaseConsumer;
        let mut config = crate::kafka::KafkaConfig::default();
        for (key, value) in [
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "fleetwatch"),
            ("sasl.password", "pw"),
        ] {
            config.properties.insert(key, value);
        }
        // Built without TLS, librdkafka refuses `sasl_ssl` here ("not supported by this
        // build"); creating a client does not connect.
        let created = config.client_config().create::<BaseConsumer>();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn kafka_configuration_errors_do_not_quote_secrets() {
        use rdkafka::consumer::BaseConsumer;
        let mut config = crate::kafka::KafkaConfig::default();
        // OIDC needs libcurl, not built in: librdkafka refuses the property, quoting it.
        config
            .properties
            .insert("sasl.oauthbearer.client.secret", "s3cr3t-value");
        let error = config
            .client_config()
            .create::<BaseConsumer>()
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("s3cr3t-value"),
            "librdkafka changed: {error}"
        );
        let error = crate::error::Error::kafka("creating", error).to_string();
        assert!(
            !error.contains("s3cr3t-value") && error.contains("***"),
            "{error}"
        );
    }

    #[test]
    fn a_secret_comes_from_a_value_or_a_file_not_both() {
        let dir = std::env::temp_dir().join(format!("fw-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let value = Secret::new("from-value");
        let read = Secret::either(None, Some(&file), "x.password").unwrap();
        assert_eq!(read.unwrap().expose(), "from-file");
        let both = Secret::either(Some(&value), Some(&file), "x.password").unwrap_err();
        assert!(both.to_string().contains("x.password_file"), "{both}");
        let missing = Secret::either(None, Some(&dir.join("nope")), "x.password").unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
