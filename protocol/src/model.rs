//! Model ids and the model registry's events (docs/shadow.md).
//!
//! Every device may have parameters of several models on `iot.model-params`: the
//! production model (id [`PRODUCTION_MODEL`]) and candidates an operator created. A
//! record's key is [`params_key`]: the bare device id for the production model (so
//! records written before model ids existed are the production model's, and compact
//! with its new ones), `{device}/{model}` for any other (`/` never occurs in a device
//! id). Every record of a device, whatever its model, goes to the device's telemetry
//! partition (an explicit partition, never the default partitioner on the key).

use serde::{Deserialize, Serialize};

use crate::{DeviceId, TenantId};

/// The model every device has, trained with the service's `[trainer.model]`.
pub const PRODUCTION_MODEL: &str = "production";

/// A model's id as the roles keep it per device: production's, which every device has,
/// with no allocation; another's, its text. 16 bytes (a `String` is 24).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelId(Option<Box<str>>);

impl ModelId {
    pub fn new(id: impl Into<String> + AsRef<str>) -> Self {
        if id.as_ref() == PRODUCTION_MODEL {
            Self::production()
        } else {
            Self(Some(id.into().into_boxed_str()))
        }
    }

    pub fn production() -> Self {
        Self(None)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or(PRODUCTION_MODEL)
    }
}

impl std::ops::Deref for ModelId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for ModelId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ModelId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest model id.
pub const MAX_MODEL_ID_LEN: usize = 32;

/// Whether `id` is a usable model id: 1 to 32 of `a-z 0-9 _ -`.
pub fn check_model_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_MODEL_ID_LEN {
        return Err(format!("a model id has 1 to {MAX_MODEL_ID_LEN} characters"));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')))
    {
        Some(bad) => Err(format!("a model id may not contain {bad:?}")),
        None => Ok(()),
    }
}

/// The key of a device's parameters (and trainer checkpoints) of `model`.
pub fn params_key(device_id: &DeviceId, model: &str) -> String {
    if model == PRODUCTION_MODEL {
        device_id.to_string()
    } else {
        format!("{device_id}/{model}")
    }
}

/// The (device, model) of a parameters key; a bare device id is the production model's.
pub fn parse_params_key(key: &str) -> Option<(DeviceId, String)> {
    match key.split_once('/') {
        Some((device, model)) if check_model_id(model).is_ok() => {
            Some((DeviceId::parse(device).ok()?, model.to_owned()))
        }
        Some(_) => None,
        None => Some((DeviceId::parse(key).ok()?, PRODUCTION_MODEL.to_owned())),
    }
}

/// Which devices a candidate's shadow covers: the fleet, one tenant, and in either a
/// sample (a stable share of the devices, by a hash of their id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowScope {
    /// Only this tenant's devices; none: every tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<TenantId>,
    /// Only this percentage of them (1 to 100); none: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<u8>,
}

impl ShadowScope {
    /// Whether the scope takes `device_id` of `tenant`.
    pub fn covers(&self, device_id: &DeviceId, tenant: Option<&TenantId>) -> bool {
        if self.tenant.is_some() && self.tenant.as_ref() != tenant {
            return false;
        }
        self.sample_percent
            .is_none_or(|percent| sample_bucket(device_id) < u32::from(percent))
    }
}

/// A device's bucket in 0..100, stable across processes and releases (FNV-1a).
pub fn sample_bucket(device_id: &DeviceId) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in device_id.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % 100
}

/// One change of the model registry on `iot.models` (key: `registry`, so one partition
/// holds them all in order; kept for ever: the log is the registry and its journal).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEvent {
    pub at_ms: i64,
    /// Who made the change (the operator's token subject).
    pub by: String,
    #[serde(flatten)]
    pub body: ModelEventBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelEventBody {
    /// A candidate, with its model configuration (the backfill's candidate file as
    /// JSON: `trainer` and `scorer` sections).
    Created {
        model_id: String,
        config: serde_json::Value,
    },
    /// Train and score the candidate in shadow for `scope` (replacing any earlier scope).
    ShadowStarted {
        model_id: String,
        scope: ShadowScope,
    },
    ShadowStopped {
        model_id: String,
    },
    /// `model_id`'s alerts reach customers, for one tenant or (none) the fleet.
    Promoted {
        model_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<TenantId>,
    },
    /// The model promoted before the current one decides again, for one tenant or the
    /// fleet.
    RolledBack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<TenantId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_is_one_id_however_made() {
        assert_eq!(ModelId::new(PRODUCTION_MODEL), ModelId::production());
        assert_eq!(ModelId::new("production".to_owned()).as_str(), "production");
        assert_eq!(ModelId::new("cand-1"), "cand-1");
        assert_ne!(ModelId::new("cand-1"), ModelId::production());
        assert_eq!(std::mem::size_of::<ModelId>(), 16);
    }

    #[test]
    fn keys_name_device_and_model() {
        let device = DeviceId::parse("pump-7").unwrap();
        assert_eq!(params_key(&device, PRODUCTION_MODEL), "pump-7");
        assert_eq!(params_key(&device, "cand-1"), "pump-7/cand-1");
        for model in [PRODUCTION_MODEL, "cand-1"] {
            let key = params_key(&device, model);
            assert_eq!(parse_params_key(&key), Some((device.clone(), model.into())));
        }
        assert_eq!(parse_params_key("pump-7/Bad!"), None);
        assert!(check_model_id("").is_err() && check_model_id("a/b").is_err());
    }

    #[test]
    fn a_sample_is_stable_and_about_its_size() {
        let scope = ShadowScope {
            tenant: None,
            sample_percent: Some(20),
        };
        let taken = (0..1000)
            .filter(|i| scope.covers(&DeviceId::parse(&format!("dev-{i}")).unwrap(), None))
            .count();
        assert!((150..250).contains(&taken), "{taken}");
        let acme = TenantId::parse("acme").unwrap();
        let tenant_scope = ShadowScope {
            tenant: Some(acme.clone()),
            sample_percent: None,
        };
        let device = DeviceId::parse("d").unwrap();
        assert!(tenant_scope.covers(&device, Some(&acme)));
        assert!(!tenant_scope.covers(&device, None));
    }
}
