//! The binary records of `iot.model-params` and `iot.trainer-state`: the envelope
//! (protocol crate), the scorer's parameters and the trainer's state (models crate), each
//! then used as the service uses it (a scorer scores with the parameters, a restored
//! trainer learns and checkpoints again).
#![no_main]

use fleetwatch_models::production::{self, ModelTrainer, Params};
use fleetwatch_models::{MetricValues, Observation, Scorer, Trainer};
use fleetwatch_protocol::ParamsEnvelope;
use libfuzzer_sys::fuzz_target;

fn observation_metrics() -> MetricValues {
    [("temp", 21.5), ("pressure", 101.3), ("vibration", 0.02)]
        .into_iter()
        .map(|(name, value)| (name.into(), value))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = ParamsEnvelope::decode(data) {
        // Encoding what was decoded is stable (compared as bytes: a factor may be NaN).
        let once = envelope.encode();
        let again = ParamsEnvelope::decode(&once).expect("an encoded envelope decodes");
        assert_eq!(again.encode(), once);
    }
    let metrics = observation_metrics();
    let observation = Observation {
        ts_ms: 1_700_000_000_000,
        metrics: &metrics,
    };
    if let Ok(params) = Params::from_bytes(data) {
        let mut scorer = production::scorer();
        let _ = scorer.score(&params, &observation);
        let _ = Params::from_bytes(&params.to_bytes()).expect("encoded parameters decode");
    }
    let config = production::Config::default();
    if let Ok(mut trainer) = ModelTrainer::from_state_bytes(config.clone(), data) {
        let state = trainer.state_bytes();
        ModelTrainer::from_state_bytes(config, &state).expect("a checkpoint decodes");
        trainer.update(&observation);
        let _ = trainer.snapshot();
    }
});
