//! Every input a fuzz target crashed on (`fuzz-crashes/`, named after the target), run
//! again as the target runs it: each must now be decoded or refused without a panic.
//! docs/reliability.md: a crash found by fuzzing becomes a file here.

use fleetwatch_models::MetricValues;
use std::path::PathBuf;

use fleetwatch_models::production::{self, ModelTrainer, Params};
use fleetwatch_models::{Observation, Scorer, Trainer};

fn crashes(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-crashes");
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_name()?.to_str()?.to_owned();
            name.starts_with(&format!("{target}-"))
                .then(|| (name, std::fs::read(&path).unwrap()))
        })
        .collect();
    found.sort();
    found
}

/// What fuzz target `model_params` does with an input, without its round-trip asserts.
#[test]
fn model_params_crashes_are_fixed() {
    let found = crashes("model_params");
    assert!(!found.is_empty());
    let metrics: MetricValues = [("temp", 21.5), ("pressure", 101.3), ("vibration", 0.02)]
        .into_iter()
        .map(|(name, value)| (name.into(), value))
        .collect();
    let observation = Observation {
        ts_ms: 1_700_000_000_000,
        metrics: &metrics,
    };
    for (name, bytes) in found {
        if let Ok(params) = Params::from_bytes(&bytes) {
            // Panicked before the fix (relation.rs: `chunks_exact(0)`).
            let score = production::scorer().score(&params, &observation);
            assert!(
                (0.0..=1.0).contains(&score.value) || !score.ready,
                "{name}: {score:?}"
            );
        }
        let config = production::Config::default();
        // A trainer state whose relation named a metric past the last one panicked in
        // `learn_relation` before restoring checked it (`DetectorTrainer::is_consistent`).
        if let Ok(mut trainer) = ModelTrainer::from_state_bytes(config, &bytes) {
            trainer.update(&observation);
            let _ = trainer.snapshot();
        }
    }
}
