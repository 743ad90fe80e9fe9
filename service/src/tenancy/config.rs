use serde::{Deserialize, Serialize};

/// Tenants. Section `[tenancy]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenancyConfig {
    /// For fleets that self-register: a device first seen with no assignment joins the
    /// tenant of the first rule whose prefix starts its id. An operator's assignment
    /// (`PUT /devices/{id}/tenant`) always wins over the rules.
    pub provisioning: Vec<ProvisioningRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningRule {
    /// Device ids starting with this (non-empty) prefix.
    pub prefix: String,
    /// The tenant they join.
    pub tenant: fleetwatch_protocol::TenantId,
}
