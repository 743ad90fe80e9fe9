//! The feedback loop with the production model: a false-positive verdict on a repeating
//! pattern's alarm makes that pattern alarm at most half as often, while a real fault of
//! another kind on the same device still alarms. Scored event by event as production
//! does (score with the parameters of the readings before, then learn).

use fleetwatch_protocol::MetricValues;
use std::collections::BTreeMap;

use fleetwatch_models::production::{self, Episode, EpisodeRules, Transition};
use fleetwatch_models::{Observation, Scorer, Trainer};
use fleetwatch_protocol::{Damping, DeviceId, Feedback, Verdict};

use super::damp;
use crate::trainer::learn_verdict;

/// Deterministic Gaussian-ish noise (sum of uniforms from an LCG).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        (0..4)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .sum::<f64>()
    }
}

/// Every `PERIOD` readings the plant closes a valve on purpose: pressure dips for a few
/// readings. A moderate, repeating pattern the model keeps flagging.
const PERIOD: u64 = 200;
const DIP: f64 = 2.4;

fn reading(seq: u64, noise: &mut Noise, stuck_flow: bool) -> MetricValues {
    let in_dip = seq % PERIOD < 3 && seq > 1_000;
    let pressure = 10.0 + noise.next() - if in_dip { DIP } else { 0.0 };
    let flow = if stuck_flow { 5.0 } else { 5.0 + noise.next() };
    BTreeMap::from([
        ("pressure".into(), pressure),
        ("flow".into(), flow),
        ("temp".into(), 40.0 + noise.next()),
    ])
}

/// Run readings `from..to`; the episodes they open, with their cause and peak.
struct Run {
    trainer: production::ModelTrainer,
    scorer: production::ModelScorer,
    episode: Episode,
    rules: EpisodeRules,
    noise: Noise,
    damping: Vec<Damping>,
}

impl Run {
    fn readings(&mut self, from: u64, to: u64, stuck_from: Option<u64>) -> Vec<(u64, String, f64)> {
        let mut opened = Vec::new();
        let mut params = self.trainer.snapshot();
        for seq in from..to {
            let metrics = reading(seq, &mut self.noise, stuck_from.is_some_and(|s| seq >= s));
            let observation = Observation {
                ts_ms: 1_700_000_000_000 + seq as i64 * 1000,
                metrics: &metrics,
            };
            let mut score = self.scorer.score(&params, &observation);
            damp(&mut score, &self.damping, observation.ts_ms);
            if let Some(Transition::Opened) = self.episode.observe(&self.rules, &score, seq) {
                let cause = fleetwatch_models::episode::cause_label(&score);
                opened.push((seq, cause, score.value));
            }
            self.trainer.update(&observation);
            if seq % 10 == 0 {
                params = self.trainer.snapshot();
            }
        }
        opened
    }
}

#[test]
fn a_false_positive_verdict_halves_its_patterns_alarms_and_spares_other_faults() {
    let config = production::Config::default();
    let threshold = config.threshold;
    let mut run = Run {
        trainer: production::trainer(&config),
        scorer: production::scorer(),
        episode: Episode::default(),
        rules: EpisodeRules::recommended(threshold),
        noise: Noise(42),
        damping: Vec::new(),
    };
    run.readings(0, 1_000, None);
    let of_pattern = |opened: &[(u64, String, f64)]| -> Vec<(u64, String, f64)> {
        opened
            .iter()
            .filter(|(seq, cause, _)| seq % PERIOD < 10 && cause.starts_with("pressure:"))
            .cloned()
            .collect()
    };
    let before = of_pattern(&run.readings(1_000, 3_000, None));
    let (_, cause, _) = before
        .first()
        .expect("the pattern alarms before any verdict")
        .clone();
    let peak = before.iter().map(|(_, _, peak)| *peak).fold(0.0, f64::max);
    let feedback = Feedback {
        device_id: DeviceId::parse("plant-1").unwrap(),
        alarm_id: "plant-1:1000".into(),
        verdict: Verdict::FalsePositive,
        cause: Some(cause.clone()),
        peak_score: peak,
        at_ms: 1_700_000_000_000 + 3_000 * 1000,
        by: "operator".into(),
    };
    learn_verdict(&mut run.damping, &feedback, threshold);
    let after = of_pattern(&run.readings(3_000, 5_000, None));
    println!(
        "pattern alarms: {} before the verdict, {} after (cause {cause}, peak {peak:.3}, damping {:?})",
        before.len(),
        after.len(),
        run.damping
    );
    assert!(before.len() >= 4, "{before:?}");
    assert!(after.len() * 2 <= before.len(), "{after:?}");
    // A real fault of another kind on the same device: the flow sensor sticks.
    let fault = run.readings(5_000, 5_200, Some(5_050));
    let stuck: Vec<_> = fault
        .iter()
        .filter(|(seq, cause, _)| *seq >= 5_050 && cause.starts_with("flow:"))
        .collect();
    println!("after the verdict, a stuck flow sensor: {stuck:?}");
    assert!(
        !stuck.is_empty(),
        "the stuck sensor raised nothing: {fault:?}"
    );
}
