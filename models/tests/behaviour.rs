//! What the production model does on seeded synthetic series: faults marked whole, broken
//! relations found and named, slow drifts found, seasons and stationary noise left alone,
//! and a trainer restored from its state bytes continuing exactly.

use fleetwatch_models::MetricValues;

use fleetwatch_models::episode::{Episode, EpisodeRules, Transition};
use fleetwatch_models::production::{self, Config, ModelTrainer};
use fleetwatch_models::replay::replay;
use fleetwatch_models::synthetic::{series, Process, Rng};
use fleetwatch_models::{Cause, Score, Trainer};

const T0: i64 = 1_700_000_000_000;

/// Rows of named columns, one second apart.
fn rows(columns: &[(&str, Vec<f64>)]) -> Vec<(i64, MetricValues)> {
    let n = columns[0].1.len();
    (0..n)
        .map(|i| {
            let metrics = columns
                .iter()
                .map(|(name, values)| ((*name).into(), values[i]))
                .collect();
            (T0 + i as i64 * 1000, metrics)
        })
        .collect()
}

fn run(config: &Config, data: Vec<(i64, MetricValues)>) -> Vec<Score> {
    replay(
        production::trainer(config),
        production::scorer(),
        production::DEFAULT_PUBLISH_EVERY,
        data,
    )
}

/// Rows where an episode opens, under the production rules.
fn openings(scores: &[Score], threshold: f64) -> Vec<usize> {
    let rules = EpisodeRules::recommended(threshold);
    let mut episode = Episode::default();
    (0..scores.len())
        .filter(|&i| episode.observe(&rules, &scores[i], i as u64) == Some(Transition::Opened))
        .collect()
}

#[cfg(feature = "cli")]
#[test]
fn a_large_shift_right_after_a_noise_alert_is_marked_whole() {
    use fleetwatch_models::replay::{replay_table, TableOptions};
    let mut rng = Rng::new(7);
    let noise: Vec<Vec<f64>> = (0..3)
        .map(|_| series(&mut rng, Process::Gaussian, 0.0, 1.0, 3_000))
        .collect();
    let table = |pressure: &[f64], flow: &[f64]| {
        let mut text = String::from("time,temperature,pressure,flow\n");
        for i in 0..3_000 {
            let t = 1_700_000_000 + i;
            text.push_str(&format!(
                "{t},{},{},{}\n",
                noise[0][i], pressure[i], flow[i]
            ));
        }
        text
    };
    let options = TableOptions {
        timestamp_column: "time".into(),
        metrics: vec![],
        separator: b',',
        publish_every: production::DEFAULT_PUBLISH_EVERY,
        threshold: Config::default().threshold,
    };
    let marked = |text: String| {
        let mut out = Vec::new();
        replay_table(text.as_bytes(), &mut out, &options).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .skip(1)
            .map(|line| line.split(',').nth(5) == Some("true"))
            .collect::<Vec<bool>>()
    };
    // Whatever the noise alone flags (after warm-up), the shift starts 19 rows later.
    let flagged = marked(table(&noise[1], &noise[2]));
    let start = (600..2_800).find(|&i| flagged[i]).map_or(1_500, |i| i + 19);
    let mut pressure = noise[1].clone();
    for value in &mut pressure[start..start + 40] {
        *value += 75.0;
    }
    let marks = marked(table(&pressure, &noise[2]));
    let missed: Vec<usize> = (start..start + 40).filter(|&i| !marks[i]).collect();
    assert!(
        missed.is_empty(),
        "shift at {start}: rows not marked {missed:?}"
    );

    // And with an alert for sure 19 rows before: a 10 σ spike of flow opens an episode,
    // the shift of pressure escalates it (another metric), and is marked whole.
    let mut flow = noise[2].clone();
    flow[1_481] += 10.0;
    let mut pressure = noise[1].clone();
    for value in &mut pressure[1_500..1_540] {
        *value += 75.0;
    }
    let marks = marked(table(&pressure, &flow));
    assert!(marks[1_481], "the spike opens an episode");
    let missed: Vec<usize> = (1_500..1_540).filter(|&i| !marks[i]).collect();
    assert!(missed.is_empty(), "rows not marked {missed:?}");
    let data = rows(&[
        ("temperature", noise[0].clone()),
        ("pressure", pressure),
        ("flow", flow),
    ]);
    let scores = run(&Config::default(), data);
    let rules = production::episode_rules(&Config::default());
    let mut episode = Episode::default();
    let transitions: Vec<(usize, Transition)> = (1_470..1_545)
        .filter_map(|i| {
            episode
                .observe(&rules, &scores[i], i as u64)
                .map(|t| (i, t))
        })
        .collect();
    assert_eq!(
        transitions,
        [(1_481, Transition::Opened), (1_500, Transition::Escalated)],
        "{}",
        scores[1_500].reason()
    );
}

/// x1 and x2 follow one cycle; x3 is independent. From `break_at` on, x2 follows the
/// mirrored cycle (the same values, the other way): each metric stays inside its range.
fn related(break_at: usize, n: usize) -> Vec<(i64, MetricValues)> {
    let mut rng = Rng::new(11);
    let cycle = |i: usize| (std::f64::consts::TAU * i as f64 / 200.0).sin();
    let x1 = (0..n)
        .map(|i| 10.0 + 2.0 * cycle(i) + 0.05 * rng.gaussian())
        .collect();
    let x2 = (0..n)
        .map(|i| {
            let c = if i >= break_at { -cycle(i) } else { cycle(i) };
            5.0 + c + 0.03 * rng.gaussian()
        })
        .collect();
    let x3 = (0..n).map(|_| 1.0 + 0.1 * rng.gaussian()).collect();
    rows(&[("x1", x1), ("x2", x2), ("x3", x3)])
}

#[test]
fn a_relation_break_inside_the_ranges_is_found_and_named() {
    // The break starts at a zero crossing of the cycle: no jump in x2.
    let (break_at, n) = (3_000, 3_100);
    let config = Config::default();
    let threshold = config.threshold;
    let univariate = Config {
        relation: fleetwatch_models::relation::RelationConfig {
            enabled: false,
            ..config.relation.clone()
        },
        ..config.clone()
    };
    let alone = run(&univariate, related(break_at, n));
    assert!(
        openings(&alone, threshold).is_empty(),
        "the per-metric checks alone flag it: {:?}",
        openings(&alone, threshold)
    );
    let both = run(&config, related(break_at, n));
    let opened = openings(&both, threshold);
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(opened[0] >= break_at, "{opened:?}");
    let score = &both[opened[0]];
    let Cause::Relation { with, .. } = &score.contributors[0].cause else {
        panic!("{score:?}");
    };
    let mut named = vec![score.contributors[0].metric.clone()];
    named.extend(with.iter().cloned());
    named.sort();
    assert_eq!(named, ["x1", "x2"], "{}", score.reason());
    assert!(
        score.reason().contains("no longer move together"),
        "{}",
        score.reason()
    );
    eprintln!(
        "relation break found after {} readings: {}",
        opened[0] - break_at,
        score.reason()
    );
}

#[test]
fn a_relation_break_on_a_young_device_is_found() {
    // Devices in the demo live a few hundred readings: the relation model is ready from
    // about the 100th.
    let (break_at, n) = (200, 300);
    let config = Config::default();
    let scores = run(&config, related(break_at, n));
    let opened = openings(&scores, config.threshold);
    assert!(
        opened.iter().all(|&i| i >= break_at),
        "false alert before the break: {opened:?}"
    );
    let found = opened
        .iter()
        .find(|&&i| matches!(scores[i].contributors[0].cause, Cause::Relation { .. }));
    assert!(found.is_some(), "{opened:?}");
}

fn one_metric(values: Vec<f64>) -> Vec<(i64, MetricValues)> {
    rows(&[("level", values)])
}

#[test]
fn slow_ramps_are_found() {
    let config = Config::default();
    for (seed, step) in [(1, 0.1), (2, 0.05)] {
        let mut rng = Rng::new(seed);
        let mut values = series(&mut rng, Process::Gaussian, 0.0, 1.0, 3_000);
        // The ramp reaches 6 noise deviations, then holds for 50 readings.
        let steps = (6.0 / step) as usize;
        let ramp_start = values.len();
        for i in 1..=steps + 50 {
            values.push(100.0 + step * i.min(steps) as f64 + rng.gaussian());
        }
        let scores = run(&config, one_metric(values));
        let opened = openings(&scores, config.threshold);
        assert!(
            opened.iter().all(|&i| i >= ramp_start),
            "step {step}: false alert before the ramp at {opened:?}"
        );
        let first = opened.first().copied();
        assert!(first.is_some(), "step {step}: ramp not found");
        eprintln!(
            "ramp step {step}: found after {} readings ({:.1} deviations)",
            first.unwrap_or(0) - ramp_start,
            step * (first.unwrap_or(0) - ramp_start) as f64
        );
    }
}

#[test]
fn a_seasonal_cycle_raises_no_alert() {
    let config = Config::default();
    for (seed, process) in [(5, Process::Gaussian), (6, Process::Ar1(0.9))] {
        let mut rng = Rng::new(seed);
        let values = series(&mut rng, process, 3.0, 600.0, 6_000);
        let scores = run(&config, one_metric(values));
        let opened = openings(&scores, config.threshold);
        let reasons: Vec<String> = opened.iter().map(|&i| scores[i].reason()).collect();
        assert!(
            opened.is_empty(),
            "{process:?}: alerts at {opened:?}: {reasons:?}"
        );
    }
}

/// Alerts (episode openings) per 10,000 readings per metric on stationary data. The full
/// measurement (≥ 300,000 readings per kind) is `cargo run --release -p
/// fleetwatch-models --example false_alarms`; this is its smoke test.
#[test]
fn stationary_noise_rarely_alerts() {
    let config = Config::default();
    let mut alerts = 0;
    let mut readings = 0;
    for (seed, process, amplitude) in [
        (21, Process::Gaussian, 0.0),
        (22, Process::Ar1(0.9), 0.0),
        (23, Process::Gaussian, 3.0),
        (24, Process::Ar1(0.9), 3.0),
    ] {
        let mut rng = Rng::new(seed);
        let columns: Vec<(&str, Vec<f64>)> = ["a", "b", "c"]
            .into_iter()
            .map(|name| (name, series(&mut rng, process, amplitude, 600.0, 5_000)))
            .collect();
        let scores = run(&config, rows(&columns));
        alerts += openings(&scores, config.threshold).len();
        readings += 3 * scores.len();
    }
    let rate = alerts as f64 / readings as f64 * 10_000.0;
    assert!(rate <= 1.0, "{alerts} alerts in {readings} readings");
}

#[test]
fn a_restored_trainer_continues_exactly() {
    let config = Config::default();
    let data = related(100_000, 1_500);
    let mut whole = production::trainer(&config);
    let mut first = production::trainer(&config);
    let observe = |trainer: &mut ModelTrainer, (ts, metrics): &(i64, MetricValues)| {
        trainer.update(&fleetwatch_models::Observation {
            ts_ms: *ts,
            metrics,
        })
    };
    for row in &data[..700] {
        observe(&mut whole, row);
        observe(&mut first, row);
    }
    let bytes = first.state_bytes();
    let mut restored = ModelTrainer::from_state_bytes(config.clone(), &bytes).unwrap();
    for row in &data[700..] {
        observe(&mut whole, row);
        observe(&mut restored, row);
    }
    assert_eq!(restored.snapshot(), whole.snapshot());
    assert_eq!(restored.events(), 1_500);
    assert!(ModelTrainer::from_state_bytes(config.clone(), &bytes[..bytes.len() / 2]).is_err());
    assert!(ModelTrainer::from_state_bytes(config, b"FP\x01\x02\x00").is_err());
}
