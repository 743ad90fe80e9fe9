//! A static check of dashboards/: every dashboard is valid JSON with a unique uid, names
//! only provisioned data sources, has a target in every panel, and uses only variables it
//! defines (or Grafana's built-ins). Needs no server.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use fleetwatch_e2e::tsdb::{dashboard_files, dashboard_queries};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// The uids of the provisioned data sources (`uid:` lines of the provisioning YAML).
fn provisioned_uids() -> HashSet<String> {
    let text =
        std::fs::read_to_string(dir().join("provisioning/datasources/fleetwatch.yaml")).unwrap();
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("uid:"))
        .map(|uid| uid.trim().to_owned())
        .collect()
}

/// `$name`, `${name}` and `[[name]]` references in `text`.
fn references(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

const BUILT_IN: [&str; 4] = ["__rate_interval", "__interval", "__range", "__all"];

#[test]
fn dashboards_are_valid_and_resolve_everything() {
    let files = dashboard_files(&dir());
    assert_eq!(files.len(), 3, "{files:?}");
    let provisioned = provisioned_uids();
    assert_eq!(provisioned.len(), 2, "{provisioned:?}");
    let mut uids = HashSet::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let dashboard: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let uid = dashboard["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{path:?}: no uid"));
        assert!(
            uids.insert(uid.to_owned()),
            "{path:?}: uid {uid} used twice"
        );
        let defined: HashSet<String> = (dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten())
        .map(|variable| variable["name"].as_str().unwrap().to_owned())
        .collect();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let source = variable["datasource"]["uid"].as_str().unwrap_or_default();
            assert!(
                provisioned.contains(source),
                "{path:?}: variable with data source {source:?}"
            );
        }
        let mut panel_ids = HashSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(
                panel_ids.insert(panel["id"].as_i64().unwrap()),
                "{path:?}: panel id twice"
            );
            if panel["type"] == "row" {
                continue;
            }
            let targets = panel["targets"].as_array().map_or(0, Vec::len);
            assert!(targets > 0, "{path:?}: panel {title:?} has no target");
            let source = panel["datasource"]["uid"].as_str().unwrap_or_default();
            assert!(
                provisioned.contains(source),
                "{path:?}: panel {title:?} data source {source:?}"
            );
        }
        for name in references(&text) {
            assert!(
                defined.contains(&name) || BUILT_IN.contains(&name.as_str()),
                "{path:?}: variable ${name} is not defined"
            );
        }
    }
    for query in dashboard_queries(&dir()) {
        assert!(
            provisioned.contains(&query.datasource),
            "{query:?}: data source not provisioned"
        );
        assert!(!query.expr.trim().is_empty(), "{query:?}: empty query");
        assert!(
            !query.expr.contains("vector("),
            "{query:?}: constant fallback"
        );
    }
}

/// Every `fleetwatch_…` metric an alerting rule names is one the service registers (a
/// misspelt name would make its alert silently never fire).
#[test]
fn alerting_rules_name_only_metrics_the_service_exports() {
    let rules = std::fs::read_to_string(dir().join("alerts.yml")).unwrap();
    let registered = std::fs::read_to_string(dir().join("../service/src/metrics.rs")).unwrap();
    let mut named = BTreeSet::new();
    let mut rest = rules.as_str();
    while let Some(at) = rest.find("fleetwatch_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        named.insert(name);
    }
    assert!(named.len() >= 10, "{named:?}");
    let unknown: Vec<&String> = named
        .iter()
        .filter(|name| !registered.contains(&format!("\"{name}\"")))
        .collect();
    assert!(
        unknown.is_empty(),
        "not registered by the service: {unknown:?}"
    );
}
