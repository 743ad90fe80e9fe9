use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize, Serializer};

/// Longest device id accepted anywhere.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A validated device id: 1 to 64 characters from `[A-Za-z0-9_.:-]`.
///
/// The alphabet keeps ids safe inside MQTT topic levels (no `/`, `+`, `#`), Kafka keys,
/// URL paths and metric labels without escaping. Held as a `CompactString` (24 bytes):
/// ids up to 24 bytes are stored inline, so parsing or cloning one (several times per
/// reading, in every role) takes no heap allocation, and an id kept per device costs 24
/// bytes where a `Box<str>` cost 16 plus a heap block of at least 16. Longer ids (a UUID
/// is 36) cost 8 bytes more than in a box.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "CompactString")]
pub struct DeviceId(CompactString);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is {0} characters long, the limit is {MAX_DEVICE_ID_LEN}")]
    TooLong(usize),
    #[error("device id contains {0:?}; allowed are letters, digits and _ . : -")]
    BadCharacter(char),
}

impl DeviceId {
    pub fn parse(candidate: &str) -> Result<Self, DeviceIdError> {
        check(candidate)?;
        Ok(Self(candidate.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(candidate: &str) -> Result<(), DeviceIdError> {
    if candidate.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    if candidate.len() > MAX_DEVICE_ID_LEN {
        return Err(DeviceIdError::TooLong(candidate.len()));
    }
    if let Some(bad) = candidate
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(DeviceIdError::BadCharacter(bad));
    }
    Ok(())
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

/// What serde decodes: a short id straight from the input, without a `String` first.
impl TryFrom<CompactString> for DeviceId {
    type Error = DeviceIdError;
    fn try_from(value: CompactString) -> Result<Self, Self::Error> {
        check(&value)?;
        Ok(Self(value))
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0.into_string()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(DeviceId::parse("pump-17_a.b:c").is_ok());
    }

    #[test]
    fn rejects_empty_long_and_topic_characters() {
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        assert_eq!(
            DeviceId::parse(&"x".repeat(65)),
            Err(DeviceIdError::TooLong(65))
        );
        for bad in ["a/b", "a+b", "a#b", "a b", "é"] {
            assert!(DeviceId::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<DeviceId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<DeviceId>("\"not/ok\"").is_err());
    }
}
