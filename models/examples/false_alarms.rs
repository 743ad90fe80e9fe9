//! False alerts of the production model on stationary data: episode openings per 10,000
//! readings per metric, over seeded Gaussian noise and AR(1) (coefficient 0.9), each with
//! and without a seasonal cycle (amplitude 3 noise deviations, period 600 readings).
//!
//! `cargo run --release -p fleetwatch-models --example false_alarms [-- READINGS METRICS]`
//! (defaults: 100,000 readings of 3 metrics per kind, so 300,000 metric-readings each).
//! A third argument names a model configuration (JSON) to measure instead of the default
//! (`-` for the default); a fourth, a number of devices per kind (default 1), each a
//! fresh trainer and scorer with READINGS readings: short-lived devices, as in the demo.
//! A fifth, the seconds between readings (default 1), and a sixth, the period of the
//! cycle in readings (default 600): `-- 100000 3 - 1 3600 168` is hourly readings with a
//! weekly cycle, which the seasonal profile (weekly, hourly bins) learns and judges.

use fleetwatch_models::MetricValues;
use std::collections::BTreeMap;

use fleetwatch_models::episode::{cause_label, Episode, EpisodeRules, Transition};
use fleetwatch_models::production::{self, Config};
use fleetwatch_models::replay::replay;
use fleetwatch_models::synthetic::{series, Process, Rng};

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let readings = args.next().and_then(Result::ok).unwrap_or(100_000);
    let metrics = args.next().and_then(Result::ok).unwrap_or(3);
    let config = match std::env::args().nth(3).filter(|a| a != "-") {
        Some(path) => {
            let text = std::fs::read_to_string(&path).expect("readable configuration");
            serde_json::from_str::<Config>(&text).expect("a model configuration")
        }
        None => Config::default(),
    };
    let rules = production::episode_rules(&config);
    let devices: usize = std::env::args()
        .nth(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let interval_ms: i64 = std::env::args()
        .nth(5)
        .and_then(|a| a.parse::<i64>().ok())
        .map_or(1000, |s| s * 1000);
    let period: f64 = std::env::args()
        .nth(6)
        .and_then(|a| a.parse().ok())
        .unwrap_or(600.0);
    let kinds = [
        ("gaussian", Process::Gaussian, 0.0),
        ("ar1_0.9", Process::Ar1(0.9), 0.0),
        ("gaussian+season", Process::Gaussian, 3.0),
        ("ar1_0.9+season", Process::Ar1(0.9), 3.0),
    ];
    for (seed, (name, process, amplitude)) in kinds.into_iter().enumerate() {
        let mut rng = Rng::new(1_000 + seed as u64);
        let mut causes: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..devices {
            let kind = (process, amplitude);
            let shape = (readings, metrics, interval_ms, period);
            for label in device_alerts(&config, &rules, &mut rng, kind, shape) {
                *causes.entry(label).or_default() += 1;
            }
        }
        let alerts: usize = causes.values().sum();
        let per_metric = (devices * readings * metrics) as f64;
        println!(
            "{name:<16} {alerts:>4} alerts in {devices} x {readings} readings x {metrics} \
             metrics: {:.3} per 10,000 readings per metric  {causes:?}",
            alerts as f64 / per_metric * 10_000.0
        );
    }
}

/// The causes of the episodes one fresh device opens over its readings.
fn device_alerts(
    config: &Config,
    rules: &EpisodeRules,
    rng: &mut Rng,
    (process, amplitude): (Process, f64),
    (readings, metrics, interval_ms, period): (usize, usize, i64, f64),
) -> Vec<String> {
    let columns: Vec<Vec<f64>> = (0..metrics)
        .map(|_| series(rng, process, amplitude, period, readings))
        .collect();
    let data = (0..readings).map(|i| {
        let values: MetricValues = columns
            .iter()
            .enumerate()
            .map(|(m, c)| (format!("m{m}").into(), c[i]))
            .collect();
        (1_700_000_000_000 + i as i64 * interval_ms, values)
    });
    let scores = replay(
        production::trainer(config),
        production::scorer(),
        production::DEFAULT_PUBLISH_EVERY,
        data,
    );
    let mut episode = Episode::default();
    scores
        .iter()
        .enumerate()
        .filter(|(i, score)| episode.observe(rules, score, *i as u64) == Some(Transition::Opened))
        .map(|(_, score)| cause_label(score))
        .collect()
}
