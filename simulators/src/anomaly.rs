//! Anomalies the simulator injects, and their ground truth.

use std::ops::Range;

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::signal::{round_like_a_sensor, DeviceSignal, MetricSignal};

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// One reading far off.
    Spike,
    /// A metric jumps to another level for a while.
    LevelShift,
    /// A slow drift (a failing part, say): a metric walks away from normal by at most 0.1
    /// of its noise's standard deviation per reading until it is 5 to 5.5 of them off,
    /// holds there for a few readings, then snaps back.
    Drift,
    /// A sensor repeats its last reading.
    Stuck,
    /// One metric stops following the others: it reads as at another phase of its cycle,
    /// with noise of its own, inside its normal (5–95%) range; the others are untouched.
    Decorrelation,
    /// The device sends nothing for a while (it keeps counting sequence numbers).
    Dropout,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 6] = [
        Self::Spike,
        Self::LevelShift,
        Self::Drift,
        Self::Stuck,
        Self::Decorrelation,
        Self::Dropout,
    ];
}

/// Ground truth of one injected anomaly: a JSON line of the ground-truth file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Injected {
    pub device: String,
    pub kind: AnomalyKind,
    /// The metric affected; none for a dropout.
    pub metric: Option<String>,
    /// Size in standard deviations of the metric's noise, signed: the offset of a spike or
    /// a level shift; the full offset a drift reaches; for a decorrelation, how far the
    /// level the metric reads at its other phase is from where it should be at the start.
    /// 0 for stuck and dropout.
    pub magnitude_sigmas: f64,
    /// Device time of the first affected reading, ms.
    pub start_ms: i64,
    /// Device time after the last affected reading, ms. For a drift: the end of its hold,
    /// when it snaps back.
    pub end_ms: i64,
    /// Drift only: device time of the first reading at the full offset (the end of the
    /// ramp, the start of the hold). The whole window, `start_ms` to `end_ms`, is the
    /// anomaly: the evaluation counts a detection anywhere in it, early or late in the
    /// ramp, but not on the snap-back (which is the repair, not the fault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_ms: Option<i64>,
}

/// The largest step of a slow drift from one reading to the next, in sigmas.
pub const MAX_DRIFT_STEP_SIGMAS: f64 = 0.1;
/// The full offset a drift reaches, in sigmas: at least 5.
const DRIFT_PEAK_SIGMAS: Range<f64> = 5.0..5.5;
/// Readings a drift stays at its full offset before it snaps back: short, so that a
/// drift fits in a one-minute demo (see `whole_span_ms`).
const DRIFT_HOLD_READINGS: i64 = 5;
/// How far a decorrelated metric's level is moved, in sigmas: more than noise, less than
/// a level shift, so that the broken relation is its main sign.
const DECORRELATION_GAP_SIGMAS: Range<f64> = 3.0..6.0;

/// How an anomaly changes the readings, with what it must remember.
#[derive(Clone, Debug)]
enum Shape {
    /// Add `magnitude_sigmas` (a spike, a level shift).
    Offset,
    Drift(DriftRamp),
    /// Repeat the value first seen (set on the first reading).
    Stuck(Option<f64>),
    Decorrelated(Decorrelated),
    Silence,
}

/// An anomaly in progress on one device.
#[derive(Clone, Debug)]
pub struct ActiveAnomaly {
    pub truth: Injected,
    metric_index: usize,
    shape: Shape,
}

/// What the device does with its current reading.
#[derive(Debug, PartialEq)]
pub enum Effect {
    Publish,
    Silence,
}

fn draw(rng: &mut impl Rng, range: Range<f64>) -> f64 {
    if range.is_empty() {
        range.start
    } else {
        rng.random_range(range)
    }
}

impl ActiveAnomaly {
    /// Choose where, how long and how strong, starting at `start_ms` (a reading's time;
    /// readings come every `interval_ms`).
    pub fn plan(
        rng: &mut impl Rng,
        kind: AnomalyKind,
        device: &str,
        signal: &DeviceSignal,
        start_ms: i64,
        interval_ms: u64,
    ) -> Self {
        let metric_index = rng.random_range(0..signal.metrics.len());
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        // (duration in seconds, magnitude in sigmas), both as ranges to draw from.
        let (seconds, sigmas) = match kind {
            AnomalyKind::Spike => (0.0..0.0, 10.0..16.0),
            AnomalyKind::LevelShift => (8.0..20.0, 7.0..10.0),
            AnomalyKind::Drift => (0.0..0.0, DRIFT_PEAK_SIGMAS),
            AnomalyKind::Stuck => (10.0..20.0, 0.0..0.0),
            AnomalyKind::Decorrelation => (10.0..20.0, DECORRELATION_GAP_SIGMAS),
            AnomalyKind::Dropout => (8.0..20.0, 0.0..0.0),
        };
        let duration_ms = ((draw(rng, seconds) * 1000.0) as i64).max(interval_ms as i64);
        let magnitude = sign * draw(rng, sigmas);
        let mut truth = Injected {
            device: device.to_owned(),
            kind,
            metric: (kind != AnomalyKind::Dropout)
                .then(|| signal.metrics[metric_index].name.to_owned()),
            magnitude_sigmas: magnitude,
            start_ms,
            end_ms: start_ms + duration_ms,
            peak_ms: None,
        };
        let shape = match kind {
            AnomalyKind::Spike | AnomalyKind::LevelShift => Shape::Offset,
            AnomalyKind::Drift => {
                let ramp = DriftRamp::new(magnitude, start_ms, interval_ms);
                truth.peak_ms = Some(start_ms + (ramp.ramp_readings - 1) * interval_ms as i64);
                truth.end_ms =
                    start_ms + (ramp.ramp_readings + DRIFT_HOLD_READINGS) * interval_ms as i64;
                Shape::Drift(ramp)
            }
            AnomalyKind::Stuck => Shape::Stuck(None),
            AnomalyKind::Decorrelation => {
                let metric = &signal.metrics[metric_index];
                let now = metric.base + metric.amplitude * signal.cycle(start_ms);
                let decorrelated = Decorrelated::new(metric, now, magnitude);
                truth.magnitude_sigmas = (decorrelated.level - now) / metric.sigma;
                Shape::Decorrelated(decorrelated)
            }
            AnomalyKind::Dropout => Shape::Silence,
        };
        Self {
            truth,
            metric_index,
            shape,
        }
    }

    /// The time, before the devices stop, that an anomaly of `kind` needs to be what its
    /// ground truth says; `None` for kinds that show from their first reading. A drift
    /// needs its whole ramp (at least 50 readings) and its hold, plus a reading of slack
    /// for when its first reading falls.
    pub fn whole_span_ms(kind: AnomalyKind, interval_ms: u64) -> Option<i64> {
        let longest_ramp = (DRIFT_PEAK_SIGMAS.end / MAX_DRIFT_STEP_SIGMAS).ceil() as i64;
        (kind == AnomalyKind::Drift)
            .then(|| (longest_ramp + DRIFT_HOLD_READINGS + 1) * interval_ms as i64)
    }

    pub fn is_over(&self, t_ms: i64) -> bool {
        t_ms >= self.truth.end_ms
    }

    /// Change this reading as the anomaly demands. `previous` are the readings last sent;
    /// `rng` draws a decorrelated metric's own noise.
    pub fn apply(
        &mut self,
        t_ms: i64,
        values: &mut [f64],
        signal: &DeviceSignal,
        previous: &[f64],
        rng: &mut impl Rng,
    ) -> Effect {
        let i = self.metric_index;
        let sigma = signal.metrics[i].sigma;
        match &mut self.shape {
            Shape::Offset => values[i] += self.truth.magnitude_sigmas * sigma,
            Shape::Drift(ramp) => values[i] += ramp.offset_sigmas(t_ms) * sigma,
            Shape::Stuck(value) => values[i] = *value.get_or_insert(previous[i]),
            Shape::Decorrelated(decorrelated) => values[i] = decorrelated.reading(rng),
            Shape::Silence => return Effect::Silence,
        }
        Effect::Publish
    }
}

/// A slow drift's offset: a linear ramp of `ramp_readings` equal steps of at most
/// `MAX_DRIFT_STEP_SIGMAS` to `peak` sigmas, then a hold at `peak`.
#[derive(Clone, Debug)]
struct DriftRamp {
    /// Signed, in sigmas.
    peak: f64,
    /// Size of one step, in sigmas (positive).
    step: f64,
    ramp_readings: i64,
    start_ms: i64,
    interval_ms: i64,
    /// The offset given to the last reading, in sigmas (positive).
    reached: f64,
}

impl DriftRamp {
    fn new(peak: f64, start_ms: i64, interval_ms: u64) -> Self {
        // The fewest readings whose equal steps stay within the limit (the small
        // subtraction keeps 5.0 / 0.1 from becoming 51 readings by rounding).
        let ramp_readings = (peak.abs() / MAX_DRIFT_STEP_SIGMAS - 1e-9).ceil().max(1.0) as i64;
        Self {
            peak,
            step: peak.abs() / ramp_readings as f64,
            ramp_readings,
            start_ms,
            interval_ms: interval_ms.max(1) as i64,
            reached: 0.0,
        }
    }

    /// Offset of the reading at `t_ms`. It follows the ramp by the reading's time, but
    /// never moves by more than a step from the reading before: a device that missed
    /// readings (an overloaded simulator skips ticks) catches up step by step during the
    /// hold instead of jumping.
    fn offset_sigmas(&mut self, t_ms: i64) -> f64 {
        let index = (t_ms - self.start_ms).max(0) / self.interval_ms;
        let planned = ((index + 1) as f64 * self.step).min(self.peak.abs());
        self.reached = planned.min(self.reached + self.step);
        self.reached * self.peak.signum()
    }
}

/// A metric that stopped following the others: it reads `level` (its cycle's value at
/// another phase) plus noise of its own, no longer shared with the other metrics.
#[derive(Clone, Debug)]
struct Decorrelated {
    level: f64,
    sigma: f64,
    /// The noise is cut at this many sigmas, which keeps every reading inside the
    /// metric's normal range.
    noise_cap: f64,
}

impl Decorrelated {
    /// Move the metric from `now` (its cycle's value at the start) by about `gap_sigmas`
    /// to the level of another phase, inside its normal range with room for the noise.
    /// Where the range has no room in the direction drawn, the other direction is taken;
    /// where neither has, the move is as large as the range allows.
    fn new(metric: &MetricSignal, now: f64, gap_sigmas: f64) -> Self {
        let (low, high) = metric.normal_range();
        // Room for the noise at each end of the range; the range's middle (`base`, the
        // distribution is symmetric) always remains.
        let margin = (2.0 * metric.sigma).min((high - low) / 4.0);
        // Levels the cycle actually takes at some phase, with room for the noise.
        let lowest = (low + margin).max(metric.base - metric.amplitude.abs());
        let highest = (high - margin).min(metric.base + metric.amplitude.abs());
        let gap = gap_sigmas * metric.sigma;
        let drawn = (now + gap).clamp(lowest, highest);
        let opposite = (now - gap).clamp(lowest, highest);
        let level = if (drawn - now).abs() >= (opposite - now).abs() {
            drawn
        } else {
            opposite
        };
        Self {
            level,
            sigma: metric.sigma,
            noise_cap: 0.95 * margin / metric.sigma,
        }
    }

    /// One reading: the level plus noise drawn for this metric alone, cut at the cap.
    fn reading(&self, rng: &mut impl Rng) -> f64 {
        let noise = (0..64)
            .map(|_| StandardNormal.sample(rng))
            .find(|z: &f64| z.abs() <= self.noise_cap)
            .unwrap_or(0.0);
        round_like_a_sensor(self.level + self.sigma * noise)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const INTERVAL_MS: u64 = 500;

    fn device(seed: u64) -> (StdRng, DeviceSignal) {
        let mut rng = StdRng::seed_from_u64(seed);
        let signal = DeviceSignal::random(&mut rng, 86_400.0);
        (rng, signal)
    }

    /// Every reading of a drift until it is over, as offsets from the clean signal.
    fn drift_offsets(anomaly: &mut ActiveAnomaly, signal: &DeviceSignal) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(0);
        let i = anomaly.metric_index;
        let (start, end) = (anomaly.truth.start_ms, anomaly.truth.end_ms);
        (start..end)
            .step_by(INTERVAL_MS as usize)
            .map(|t| {
                let previous = vec![0.0; signal.metrics.len()];
                let mut values = previous.clone();
                anomaly.apply(t, &mut values, signal, &previous, &mut rng);
                values[i] / signal.metrics[i].sigma
            })
            .collect()
    }

    #[test]
    fn a_drift_steps_at_most_a_tenth_of_sigma_and_reaches_five() {
        for seed in 0..50 {
            let (mut rng, signal) = device(seed);
            let start = 1_000_000;
            let mut drift = ActiveAnomaly::plan(
                &mut rng,
                AnomalyKind::Drift,
                "d",
                &signal,
                start,
                INTERVAL_MS,
            );
            let offsets = drift_offsets(&mut drift, &signal);
            // From the last normal reading (offset 0) to the end of the hold.
            let mut before = 0.0;
            for offset in &offsets {
                let step: f64 = offset - before;
                assert!(step.abs() <= MAX_DRIFT_STEP_SIGMAS + 1e-12, "{offsets:?}");
                before = *offset;
            }
            let truth = &drift.truth;
            let peak = offsets.iter().fold(0.0_f64, |m, o| m.max(o.abs()));
            assert!(peak >= 5.0 && (peak - truth.magnitude_sigmas.abs()).abs() < 1e-9);
            assert!(offsets.len() >= 50, "ramp readings: {}", offsets.len());
            // The window covers the drift from its first step; the hold starts at the peak.
            assert!(offsets[0].abs() > 0.0);
            let peak_index = ((truth.peak_ms.unwrap() - start) / INTERVAL_MS as i64) as usize;
            assert!((offsets[peak_index].abs() - peak).abs() < 1e-9);
            assert!(offsets[peak_index - 1].abs() < peak);
            assert!(offsets[peak_index..]
                .iter()
                .all(|o| (o.abs() - peak).abs() < 1e-9));
            let span = ActiveAnomaly::whole_span_ms(AnomalyKind::Drift, INTERVAL_MS).unwrap();
            assert!(truth.end_ms - truth.start_ms <= span);
        }
    }

    #[test]
    fn a_drift_that_missed_readings_still_steps_at_most_a_tenth_of_sigma() {
        let mut ramp = DriftRamp::new(-5.0, 0, 1000);
        assert_eq!(ramp.ramp_readings, 50);
        let mut before = 0.0;
        // Every third reading is missing.
        for t in (0..60_000).filter(|t| t % 3000 != 2000).step_by(1000) {
            let offset = ramp.offset_sigmas(t);
            assert!((offset - before).abs() <= MAX_DRIFT_STEP_SIGMAS + 1e-12);
            before = offset;
        }
        assert!(
            (before + 5.0).abs() < 1e-9,
            "caught up during the hold: {before}"
        );
    }

    /// `readings` readings of a device with a decorrelation from the first one on (its
    /// end ignored): the decorrelated metric's index, and per reading [clean, published].
    fn decorrelated_run(seed: u64, readings: i64) -> (DeviceSignal, usize, Vec<[Vec<f64>; 2]>) {
        let (mut rng, signal) = device(seed);
        let start = 3_600_000 * seed as i64;
        let mut anomaly = ActiveAnomaly::plan(
            &mut rng,
            AnomalyKind::Decorrelation,
            "d",
            &signal,
            start,
            INTERVAL_MS,
        );
        let runs = (0..readings)
            .map(|k| {
                let t = start + k * INTERVAL_MS as i64;
                let clean = signal.sample(t, &mut rng);
                let mut values = clean.clone();
                let effect = anomaly.apply(t, &mut values, &signal, &clean, &mut rng);
                assert_eq!(effect, Effect::Publish);
                [clean, values]
            })
            .collect();
        (signal, anomaly.metric_index, runs)
    }

    #[test]
    fn a_decorrelated_metric_stays_in_its_normal_range_and_the_others_are_untouched() {
        for seed in 0..40 {
            let (signal, i, runs) = decorrelated_run(seed, 200);
            let (low, high) = signal.metrics[i].normal_range();
            for [clean, values] in &runs {
                assert!(
                    (low..=high).contains(&values[i]),
                    "{} of {low}..{high}",
                    values[i]
                );
                for j in (0..values.len()).filter(|&j| j != i) {
                    assert_eq!(values[j], clean[j]);
                }
            }
        }
    }

    fn correlation(pairs: &[(f64, f64)]) -> f64 {
        let n = pairs.len() as f64;
        let (mx, my) = pairs
            .iter()
            .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for (x, y) in pairs {
            sxy += (x - mx) * (y - my);
            sxx += (x - mx) * (x - mx);
            syy += (y - my) * (y - my);
        }
        sxy / (sxx * syy).sqrt()
    }

    #[test]
    fn a_decorrelated_metric_stops_following_the_others_and_moves_its_level() {
        let (signal, i, runs) = decorrelated_run(5, 3000);
        let other = (i + 1) % signal.metrics.len();
        let column = |which: usize, metric: usize| -> Vec<(f64, f64)> {
            runs.iter()
                .map(|run| (run[which][metric], run[which][other]))
                .collect()
        };
        let before = correlation(&column(0, i));
        let after = correlation(&column(1, i));
        assert!(before.abs() > 0.3, "the metrics were related: {before}");
        assert!(after.abs() < 0.1, "and no longer are: {after}");
        let mean = |which: usize| runs.iter().map(|r| r[which][i]).sum::<f64>() / 3000.0;
        let gap = (mean(1) - mean(0)) / signal.metrics[i].sigma;
        assert!(gap.abs() >= 2.5, "its level moved {gap} sigmas");
    }

    #[test]
    fn the_decorrelated_level_takes_the_other_direction_when_the_range_ends() {
        let metric = MetricSignal {
            name: "m",
            base: 0.0,
            amplitude: 10.0,
            sigma: 1.0,
            shared: 0.5,
        };
        // At the top of its cycle a metric can only move down.
        let decorrelated = Decorrelated::new(&metric, 10.0, 4.0);
        assert!(
            (decorrelated.level - 6.0).abs() < 1e-9,
            "{}",
            decorrelated.level
        );
        // With no cycle there is no other phase: the level stays, only the noise is its own.
        let flat = MetricSignal {
            amplitude: 0.0,
            ..metric
        };
        assert_eq!(Decorrelated::new(&flat, 0.0, 4.0).level, 0.0);
    }

    #[test]
    fn ground_truth_lines_name_the_new_kinds() {
        let (mut rng, signal) = device(1);
        let drift = ActiveAnomaly::plan(&mut rng, AnomalyKind::Drift, "d", &signal, 0, 1000);
        let line = serde_json::to_string(&drift.truth).unwrap();
        assert!(line.contains(r#""kind":"drift""#) && line.contains(r#""peak_ms":"#));
        let kind: AnomalyKind = serde_json::from_str(r#""decorrelation""#).unwrap();
        assert_eq!(kind, AnomalyKind::Decorrelation);
        let spike = ActiveAnomaly::plan(&mut rng, AnomalyKind::Spike, "d", &signal, 0, 1000);
        let line = serde_json::to_string(&spike.truth).unwrap();
        assert!(!line.contains("peak_ms"), "{line}");
        assert_eq!(
            serde_json::from_str::<Injected>(&line).unwrap(),
            spike.truth
        );
    }
}
