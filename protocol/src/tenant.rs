use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Serialize, Serializer};

use crate::DeviceId;

/// Longest tenant id accepted anywhere.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// A validated tenant id: 1 to 64 characters from `[A-Za-z0-9_.-]`, like a device id
/// without `:` (it appears in token claims, URLs and metric labels). Held as a
/// `CompactString`: ids up to 24 bytes inline, so ingest stamping a reading and each role
/// decoding one take no heap allocation for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "CompactString")]
pub struct TenantId(CompactString);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantIdError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is {0} characters long, the limit is {MAX_TENANT_ID_LEN}")]
    TooLong(usize),
    #[error("tenant id contains {0:?}; allowed are letters, digits and _ . -")]
    BadCharacter(char),
}

impl TenantId {
    pub fn parse(candidate: &str) -> Result<Self, TenantIdError> {
        check(candidate)?;
        Ok(Self(candidate.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(candidate: &str) -> Result<(), TenantIdError> {
    if candidate.is_empty() {
        return Err(TenantIdError::Empty);
    }
    if candidate.len() > MAX_TENANT_ID_LEN {
        return Err(TenantIdError::TooLong(candidate.len()));
    }
    if let Some(bad) = candidate
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(TenantIdError::BadCharacter(bad));
    }
    Ok(())
}

impl TryFrom<String> for TenantId {
    type Error = TenantIdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

/// What serde decodes: a short id straight from the input, without a `String` first.
impl TryFrom<CompactString> for TenantId {
    type Error = TenantIdError;
    fn try_from(value: CompactString) -> Result<Self, Self::Error> {
        check(&value)?;
        Ok(Self(value))
    }
}

impl Serialize for TenantId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl From<TenantId> for String {
    fn from(id: TenantId) -> Self {
        id.0.into_string()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One device on `iot.device-directory` (compacted; key: device id; a tombstone when the
/// device is decommissioned). Written by the device's twin owner when the twin is created
/// and whenever its tenant changes; every instance reads the whole topic, so any instance
/// can check a caller's tenant, list a tenant's fleet and stamp events with their tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub device_id: DeviceId,
    /// `None`: the device belongs to no tenant (visible to operators only).
    #[serde(default)]
    pub tenant: Option<TenantId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_validated() {
        assert!(TenantId::parse("acme-01").is_ok());
        assert_eq!(TenantId::parse(""), Err(TenantIdError::Empty));
        assert_eq!(
            TenantId::parse("a:b"),
            Err(TenantIdError::BadCharacter(':'))
        );
        assert!(matches!(
            TenantId::parse(&"x".repeat(65)),
            Err(TenantIdError::TooLong(65))
        ));
        let entry: DirectoryEntry =
            serde_json::from_str(r#"{"device_id":"d1","tenant":"acme"}"#).unwrap();
        assert_eq!(entry.tenant.unwrap().as_str(), "acme");
        assert!(
            serde_json::from_str::<DirectoryEntry>(r#"{"device_id":"d1","tenant":"a/b"}"#).is_err()
        );
    }
}
