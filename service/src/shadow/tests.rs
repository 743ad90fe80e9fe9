use fleetwatch_protocol::{DeviceId, ModelEvent, ModelEventBody, ShadowScope, TenantId};
use serde_json::json;

use super::{ModelRegistry, Registry, RegistryError};

fn event(body: ModelEventBody) -> ModelEvent {
    ModelEvent {
        at_ms: 1_000,
        by: "ops".into(),
        body,
    }
}

fn created(id: &str) -> ModelEventBody {
    ModelEventBody::Created {
        model_id: id.into(),
        config: json!({"trainer": {"model": {"threshold": 0.7}}}),
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn device(id: &str) -> DeviceId {
    DeviceId::parse(id).unwrap()
}

fn ids(registry: &Registry, device_id: &str, tenant: Option<&TenantId>) -> Vec<String> {
    (registry.models_for(&device(device_id), tenant).into_iter())
        .map(|c| c.model_id.clone())
        .collect()
}

#[test]
fn a_candidate_is_created_shadowed_promoted_and_rolled_back() {
    let mut registry = Registry::default();
    assert!(registry.apply(&event(created("cand-1"))));
    assert_eq!(registry.get("cand-1").unwrap().config.threshold, 0.7);
    assert!(
        ids(&registry, "d1", None).is_empty(),
        "idle: trained nowhere"
    );
    let acme = tenant("acme");
    let shadow = ModelEventBody::ShadowStarted {
        model_id: "cand-1".into(),
        scope: ShadowScope {
            tenant: Some(acme.clone()),
            sample_percent: None,
        },
    };
    assert!(registry.apply(&event(shadow)));
    assert_eq!(ids(&registry, "d1", Some(&acme)), ["cand-1"]);
    assert!(
        ids(&registry, "d1", None).is_empty(),
        "another tenant's device"
    );
    assert_eq!(registry.promoted_for(Some(&acme)), "production");
    let promote = |tenant: Option<TenantId>| {
        event(ModelEventBody::Promoted {
            model_id: "cand-1".into(),
            tenant,
        })
    };
    assert!(registry.apply(&promote(Some(acme.clone()))));
    assert_eq!(registry.promoted_for(Some(&acme)), "cand-1");
    assert_eq!(registry.promoted_for(None), "production");
    assert!(registry.apply(&promote(None)));
    assert_eq!(registry.promoted_for(Some(&tenant("other"))), "cand-1");
    let rollback = |tenant: Option<TenantId>| event(ModelEventBody::RolledBack { tenant });
    assert!(registry.apply(&rollback(None)));
    assert_eq!(registry.promoted_for(None), "production");
    assert_eq!(
        registry.promoted_for(Some(&acme)),
        "cand-1",
        "its own promotion stays"
    );
    assert!(registry.apply(&rollback(Some(acme.clone()))));
    assert_eq!(registry.promoted_for(Some(&acme)), "production");
    assert!(
        !registry.apply(&rollback(None)),
        "nothing left to roll back"
    );
    let described = registry.describe();
    assert_eq!(described["candidates"][0]["state"], "shadow");
    assert_eq!(described["journal"].as_array().unwrap().len(), 6);
}

#[test]
fn refused_changes_change_nothing() {
    let mut registry = Registry::default();
    let bad_config = ModelEventBody::Created {
        model_id: "cand-1".into(),
        config: json!({"trainer": {"model": {"threshold": -1.0}}}),
    };
    assert!(matches!(
        registry.check(&bad_config),
        Err(RegistryError::BadRequest(_))
    ));
    assert!(!registry.apply(&event(bad_config)));
    assert!(!registry.apply(&event(created("production"))));
    assert!(!registry.apply(&event(created("Bad Id"))));
    assert!(registry.apply(&event(created("cand-1"))));
    assert!(!registry.apply(&event(created("cand-1"))), "exists");
    let unknown = ModelEventBody::Promoted {
        model_id: "nope".into(),
        tenant: None,
    };
    assert_eq!(
        registry.check(&unknown),
        Err(RegistryError::NotFound("nope".into()))
    );
    let sample = ModelEventBody::ShadowStarted {
        model_id: "cand-1".into(),
        scope: ShadowScope {
            tenant: None,
            sample_percent: Some(0),
        },
    };
    assert!(!registry.apply(&event(sample)));
    let stop = ModelEventBody::ShadowStopped {
        model_id: "cand-1".into(),
    };
    assert!(!registry.apply(&event(stop)), "not in shadow");
    assert_eq!(registry.describe()["journal"].as_array().unwrap().len(), 1);
}

#[test]
fn the_replaced_model_stays_trained_for_a_rollback() {
    let mut registry = Registry::default();
    for id in ["a", "b"] {
        registry.apply(&event(created(id)));
        registry.apply(&event(ModelEventBody::Promoted {
            model_id: id.into(),
            tenant: None,
        }));
    }
    assert_eq!(registry.promoted_for(None), "b");
    assert_eq!(ids(&registry, "d1", None), ["a", "b"]);
    assert_eq!(registry.active().len(), 2);
}

#[test]
fn a_record_is_applied_once_and_loading_ends_at_the_log_end() {
    let registry = ModelRegistry::default();
    registry.loading.start([(0, 2)].into());
    assert!(!registry.loading.is_loaded());
    assert!(registry.apply_at(0, &event(created("a"))));
    assert!(
        !registry.apply_at(0, &event(created("b"))),
        "offset already applied"
    );
    registry.loading.reached(Some((0, 1)));
    assert!(registry.loading.is_loaded());
    assert_eq!(registry.read(|r| r.created()), 1);
}
