//! A job's target, resolved once when the job is created, across the whole fleet and
//! within the caller's tenant (an operator may name several tenants): device ids, a
//! device-id prefix, and/or a selector on the twins' reported fields.

use fleetwatch_protocol::{DeviceId, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fleet::FleetView;
use crate::auth::Caller;
use crate::tenancy::Directory;

/// `target` of `POST /jobs`: `device_ids` alone, or `prefix` and/or `selector`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `reported.<path> == <value>` or `!=`, clauses joined by `AND`; values are JSON
    /// (`"2.1"`, `3`, `true`, `null`) or a bare word taken as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Operators only: reach the devices of these tenants only (without it an operator's
    /// job reaches every tenant's devices). A tenant's job is its own tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
}

/// The tenants a job may reach: `None` for every device (an operator's job without
/// `tenants`), else these.
pub fn scope(target: &Target, caller: &Caller) -> Result<Option<Vec<TenantId>>, String> {
    let Some(named) = &target.tenants else {
        return Ok(caller.tenant.clone().map(|own| vec![own]));
    };
    let mut tenants = Vec::with_capacity(named.len());
    for raw in named {
        let tenant = TenantId::parse(raw).map_err(|e| format!("target.tenants: {e}"))?;
        if !caller.sees(Some(&tenant)) {
            return Err("target.tenants: a tenant's job reaches its own devices only".into());
        }
        if !tenants.contains(&tenant) {
            tenants.push(tenant);
        }
    }
    if tenants.is_empty() {
        return Err("target.tenants is empty".into());
    }
    Ok(Some(tenants))
}

/// Whether a device of `tenant` is within a job's `scope`.
pub fn in_scope(scope: Option<&[TenantId]>, tenant: Option<&TenantId>) -> bool {
    scope.is_none_or(|tenants| tenant.is_some_and(|t| tenants.contains(t)))
}

/// One clause of a selector.
#[derive(Clone, Debug, PartialEq)]
pub struct Clause {
    /// Keys below `reported`.
    pub path: Vec<String>,
    pub equal: bool,
    pub value: Value,
}

/// Parse `reported.a.b == "x" AND reported.c != 3`.
pub fn parse_selector(text: &str) -> Result<Vec<Clause>, String> {
    let mut clauses = Vec::new();
    for raw in split_and(text) {
        let raw = raw.trim();
        let (left, equal, right) = if let Some((l, r)) = raw.split_once("!=") {
            (l, false, r)
        } else if let Some((l, r)) = raw.split_once("==") {
            (l, true, r)
        } else {
            return Err(format!(
                "clause {raw:?}: use <field> == <value> or <field> != <value>"
            ));
        };
        let path: Vec<String> = left.trim().split('.').map(str::to_owned).collect();
        if path.len() < 2 || path[0] != "reported" || path.iter().any(String::is_empty) {
            return Err(format!(
                "clause {raw:?}: the field must be reported.<key>[.<key>…] (the twins' reported state)"
            ));
        }
        let right = right.trim();
        if right.is_empty() {
            return Err(format!("clause {raw:?} has no value"));
        }
        let value = serde_json::from_str(right).unwrap_or_else(|_| Value::String(right.to_owned()));
        clauses.push(Clause {
            path: path[1..].to_vec(),
            equal,
            value,
        });
    }
    if clauses.is_empty() {
        return Err("the selector is empty".into());
    }
    Ok(clauses)
}

/// Split on the word AND (any case) outside quotes.
fn split_and(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let words: Vec<&str> = text.split(' ').collect();
    for word in words {
        quoted ^= word.matches('"').count() % 2 == 1;
        if !quoted && word.eq_ignore_ascii_case("and") {
            parts.push(String::new());
        } else {
            let last = parts.last_mut().expect("one part at least");
            last.push(' ');
            last.push_str(word);
        }
    }
    parts
}

/// Whether `reported` satisfies every clause (a missing field is `null`).
pub fn matches(clauses: &[Clause], reported: &fleetwatch_protocol::JsonObject) -> bool {
    clauses.iter().all(|clause| {
        let mut at = reported.get(&clause.path[0]);
        for key in &clause.path[1..] {
            at = at.and_then(|v| v.get(key));
        }
        let found = at.unwrap_or(&Value::Null);
        (found == &clause.value) == clause.equal
    })
}

/// The devices of `target` within `scope` (see [`scope`]), in id order (`device_ids`
/// keep their order); `Err` says why the target is unusable.
pub fn resolve(
    target: &Target,
    scope: Option<&[TenantId]>,
    directory: &Directory,
    fleet: &FleetView,
) -> Result<Vec<DeviceId>, String> {
    if let Some(ids) = &target.device_ids {
        if target.prefix.is_some() || target.selector.is_some() {
            return Err("target: device_ids cannot be combined with prefix or selector".into());
        }
        let mut devices: Vec<DeviceId> = Vec::with_capacity(ids.len());
        for raw in ids {
            let id = DeviceId::parse(raw).map_err(|e| e.to_string())?;
            if !directory.knows(&id) || !in_scope(scope, directory.tenant_of(&id).as_ref()) {
                return Err(crate::auth::no_such_device(&id));
            }
            if !devices.contains(&id) {
                devices.push(id);
            }
        }
        return Ok(devices);
    }
    let clauses = target.selector.as_deref().map(parse_selector).transpose()?;
    if target.prefix.is_none() && clauses.is_none() {
        return Err("target: give device_ids, a prefix or a selector".into());
    }
    let prefix = target.prefix.as_deref().unwrap_or_default();
    let mut devices = Vec::new();
    match scope {
        None => devices = all_pages(directory, None, prefix),
        Some(tenants) => {
            for tenant in tenants {
                devices.extend(all_pages(directory, Some(tenant), prefix));
            }
            devices.sort();
        }
    }
    if let Some(clauses) = clauses {
        if !fleet.is_loaded() {
            return Err("the fleet's twins are still being read; retry shortly".into());
        }
        devices.retain(|id| {
            fleet.with(id, |view| {
                view.is_some_and(|v| matches(&clauses, &v.reported))
            })
        });
    }
    Ok(devices)
}

/// Devices a continuous job's target matches now that it does not have yet (at most
/// `room`, in id order).
pub fn matched_since(
    spec: &fleetwatch_protocol::JobSpec,
    directory: &Directory,
    fleet: &FleetView,
    room: usize,
) -> Vec<DeviceId> {
    let Ok(target) = serde_json::from_value::<Target>(spec.target.clone()) else {
        return Vec::new();
    };
    let scope = match &spec.tenant {
        Some(own) => Some(vec![own.clone()]),
        None if spec.tenants.is_empty() => None,
        None => Some(spec.tenants.clone()),
    };
    let Ok(matched) = resolve(&target, scope.as_deref(), directory, fleet) else {
        return Vec::new();
    };
    let known: std::collections::HashSet<&DeviceId> = spec.devices.iter().collect();
    (matched.into_iter())
        .filter(|d| !known.contains(d))
        .take(room)
        .collect()
}

/// Every device of `tenant` (every device for `None`) starting with `prefix`, in id order.
fn all_pages(directory: &Directory, tenant: Option<&TenantId>, prefix: &str) -> Vec<DeviceId> {
    let mut devices = Vec::new();
    let mut after = None;
    loop {
        let page = directory.page(tenant, prefix, after.as_ref(), 10_000);
        devices.extend(page.devices.into_iter().map(|(id, _)| id));
        match page.next {
            Some(next) => after = Some(next),
            None => return devices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_parse_and_match_equality_and_inequality() {
        let clauses =
            parse_selector(r#"reported.firmware != "2.1" AND reported.hw.rev == 3"#).unwrap();
        assert_eq!(clauses.len(), 2);
        let reported = |v: Value| v.as_object().unwrap().clone();
        assert!(matches(
            &clauses,
            &reported(json!({"firmware": "1.4", "hw": {"rev": 3}}))
        ));
        assert!(!matches(
            &clauses,
            &reported(json!({"firmware": "2.1", "hw": {"rev": 3}}))
        ));
        assert!(!matches(&clauses, &reported(json!({"firmware": "1.4"}))));
        let missing = parse_selector("reported.firmware != 2.1").unwrap();
        assert!(matches(&missing, &reported(json!({}))));
        let word = parse_selector("reported.site == north and reported.x == \"a and b\"").unwrap();
        assert_eq!(word[0].value, json!("north"));
        assert_eq!(word[1].value, json!("a and b"));
        for bad in [
            "",
            "firmware == 1",
            "reported.firmware > 2",
            "reported. == 1",
            "reported.a ==",
        ] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn operators_may_name_tenants_and_a_tenant_only_its_own() {
        let operator = Caller::anonymous_operator();
        let acme_id = TenantId::parse("acme").unwrap();
        let acme = Caller {
            tenant: Some(acme_id.clone()),
            ..Caller::anonymous_operator()
        };
        let named = |tenants: &[&str]| Target {
            prefix: Some("d".into()),
            tenants: Some(tenants.iter().map(|t| t.to_string()).collect()),
            ..Target::default()
        };
        let both = scope(&named(&["acme", "globex", "acme"]), &operator)
            .unwrap()
            .unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(scope(&Target::default(), &operator).unwrap(), None);
        assert_eq!(
            scope(&Target::default(), &acme).unwrap(),
            Some(vec![acme_id.clone()])
        );
        assert_eq!(
            scope(&named(&["acme"]), &acme).unwrap(),
            Some(vec![acme_id.clone()])
        );
        assert!(scope(&named(&["globex"]), &acme).is_err());
        assert!(scope(&named(&[]), &operator).is_err());
        assert!(scope(&named(&["not a tenant!"]), &operator).is_err());
        assert!(in_scope(Some(&both), Some(&acme_id)) && !in_scope(Some(&both), None));
        assert!(in_scope(None, None));
    }
}
