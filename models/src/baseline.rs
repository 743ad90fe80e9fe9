//! `ewma-baseline`: per-metric exponentially weighted mean and variance, plus two checks
//! that a mean/variance model misses on its own: sensors stuck at one value, and gaps in
//! the stream.
//!
//! - **Deviation**: `z = (x - mean) / std`, scored by Gaussian surprisal
//!   ([`crate::calibration`]). The trainer does not learn from observations beyond
//!   `freeze_z`, so an anomaly lasting a while does not become the new normal — for at most
//!   `max_frozen_events`, after which a lasting change is accepted and learned.
//! - **Stuck**: the trainer learns how often each metric repeats its previous value; `k`
//!   repeats in a row of a metric that repeats with rate `r` have probability `r^k`,
//!   scored by the same surprisal.
//! - **Gap**: the trainer learns the usual interval between events; a long silence is
//!   scored as a deviation of the interval when the next event arrives.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calibration::{deviation_score, SURPRISAL_AT_ONE};
use crate::{Cause, MetricScore, ModelError, Observation, Score, Scorer, Trainer};

/// Model kind written into every parameter snapshot.
pub const KIND: &str = "ewma-baseline";
/// Format version of [`BaselineParams`].
pub const FORMAT_VERSION: u32 = 1;
/// Name used for the interval between events in contributors.
pub const INTERVAL_METRIC: &str = "(interval)";

/// Configuration of the baseline. Build with [`BaselineConfig::default`], change fields,
/// then [`BaselineConfig::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselineConfig {
    /// Weight of the newest observation in the running mean, in (0, 1]. Larger follows
    /// slow trends such as daily cycles more closely.
    pub mean_alpha: f64,
    /// Weight of the newest observation in the running variance and repeat rate, in (0, 1].
    /// Smaller gives steadier estimates.
    pub var_alpha: f64,
    /// Observations per metric before it is scored at all.
    pub warmup_events: u64,
    /// Deviations beyond this many standard deviations are not learned from.
    pub freeze_z: f64,
    /// Longest run of unlearned observations before a lasting change is accepted.
    pub max_frozen_events: u32,
    /// Smallest standard deviation, relative to |mean|, so constant metrics stay scorable.
    pub min_relative_std: f64,
    /// Smallest standard deviation of the interval between events, relative to its mean.
    pub min_relative_interval_std: f64,
    /// Recommended alert threshold on the score.
    pub threshold: f64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        Self {
            mean_alpha: 0.05,
            var_alpha: 0.02,
            warmup_events: 30,
            freeze_z: 4.0,
            max_frozen_events: 120,
            min_relative_std: 1e-4,
            min_relative_interval_std: 0.25,
            threshold: 0.6,
        }
    }
}

impl BaselineConfig {
    pub fn validate(self) -> Result<Self, ModelError> {
        let unit = |name: &str, value: f64| {
            if value > 0.0 && value <= 1.0 {
                Ok(())
            } else {
                Err(ModelError::InvalidConfig(format!(
                    "{name} must be in (0, 1], got {value}"
                )))
            }
        };
        unit("mean_alpha", self.mean_alpha)?;
        unit("var_alpha", self.var_alpha)?;
        unit("threshold", self.threshold)?;
        unit("min_relative_interval_std", self.min_relative_interval_std)?;
        if self.freeze_z.is_nan() || self.freeze_z <= 0.0 {
            return Err(ModelError::InvalidConfig(format!(
                "freeze_z must be positive, got {}",
                self.freeze_z
            )));
        }
        if self.min_relative_std.is_nan() || self.min_relative_std < 0.0 {
            return Err(ModelError::InvalidConfig(
                "min_relative_std must not be negative".to_owned(),
            ));
        }
        if self.warmup_events < 2 {
            return Err(ModelError::InvalidConfig(
                "warmup_events must be at least 2".to_owned(),
            ));
        }
        Ok(self)
    }
}

/// What a scorer needs of one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricParams {
    pub mean: f64,
    pub std: f64,
    /// How often the metric repeats its previous value exactly, in [0, 1].
    pub repeat_rate: f64,
    /// Observations learned from.
    pub n: u64,
}

/// A parameter snapshot of the baseline for one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaselineParams {
    pub kind: String,
    pub format: u32,
    pub warmup_events: u64,
    pub metrics: BTreeMap<String, MetricParams>,
    /// Usual interval between events (ms) and its standard deviation, once known.
    pub interval: Option<(f64, f64)>,
}

impl BaselineParams {
    /// Refuse parameters of another model kind or format.
    pub fn check(&self) -> Result<(), ModelError> {
        if self.kind == KIND && self.format == FORMAT_VERSION {
            Ok(())
        } else {
            Err(ModelError::IncompatibleParams {
                found: self.kind.clone(),
                found_version: self.format,
                expected: KIND,
                expected_version: FORMAT_VERSION,
            })
        }
    }
}

#[derive(Clone, Debug, Default)]
struct RunningStats {
    mean: f64,
    var: f64,
    n: u64,
}

impl RunningStats {
    /// Exponentially weighted update; the first observations get weight 1/n so the
    /// estimate does not start biased towards zero.
    fn learn(&mut self, value: f64, mean_alpha: f64, var_alpha: f64) {
        self.n += 1;
        let warm = 1.0 / self.n as f64;
        let delta = value - self.mean;
        self.mean += mean_alpha.max(warm) * delta;
        self.var += var_alpha.max(warm) * (delta * (value - self.mean) - self.var);
    }
}

#[derive(Clone, Debug, Default)]
struct MetricTrainer {
    stats: RunningStats,
    repeat_rate: f64,
    last_value: Option<f64>,
    repeats: u32,
    frozen: u32,
}

/// The learning half of the baseline, one per device.
#[derive(Clone, Debug)]
pub struct BaselineTrainer {
    config: BaselineConfig,
    metrics: BTreeMap<String, MetricTrainer>,
    interval: RunningStats,
    last_ts: Option<i64>,
    events: u64,
}

impl BaselineTrainer {
    pub fn new(config: BaselineConfig) -> Self {
        Self {
            config,
            metrics: BTreeMap::new(),
            interval: RunningStats::default(),
            last_ts: None,
            events: 0,
        }
    }

    fn std_of(&self, stats: &RunningStats) -> f64 {
        stats
            .var
            .max(0.0)
            .sqrt()
            .max(self.config.min_relative_std * stats.mean.abs())
            .max(1e-12)
    }
}

impl Trainer for BaselineTrainer {
    type Params = BaselineParams;

    fn update(&mut self, observation: &Observation<'_>) {
        self.events += 1;
        let config = self.config.clone();
        if let Some(last_ts) = self.last_ts {
            let interval = observation.ts_ms - last_ts;
            // Silences are anomalies to score, not intervals to learn.
            let is_gap = self.interval.n >= config.warmup_events
                && interval as f64 > self.interval.mean * 3.0;
            if interval > 0 && !is_gap {
                self.interval
                    .learn(interval as f64, config.var_alpha, config.var_alpha);
            }
        }
        self.last_ts = Some(
            self.last_ts
                .map_or(observation.ts_ms, |t| t.max(observation.ts_ms)),
        );

        for (name, &value) in observation.metrics {
            let std = self
                .metrics
                .get(name)
                .map(|metric| self.std_of(&metric.stats));
            let metric = self.metrics.entry(name.clone()).or_default();

            let repeated = metric.last_value == Some(value);
            metric.repeats = if repeated { metric.repeats + 1 } else { 0 };
            metric.last_value = Some(value);
            // A long run of repeats may be a stuck sensor: do not learn it as normal.
            if metric.repeats <= 3 {
                let target = if repeated { 1.0 } else { 0.0 };
                metric.repeat_rate += config.var_alpha * (target - metric.repeat_rate);
            }

            let warm = metric.stats.n >= config.warmup_events;
            let z = std.map_or(0.0, |std| (value - metric.stats.mean) / std);
            if warm && z.abs() > config.freeze_z && metric.frozen < config.max_frozen_events {
                metric.frozen += 1;
                continue;
            }
            metric.frozen = 0;
            metric
                .stats
                .learn(value, config.mean_alpha, config.var_alpha);
        }
    }

    fn snapshot(&self) -> BaselineParams {
        let interval = (self.interval.n >= self.config.warmup_events).then(|| {
            let mean = self.interval.mean;
            let std = self
                .interval
                .var
                .max(0.0)
                .sqrt()
                .max(self.config.min_relative_interval_std * mean);
            (mean, std)
        });
        BaselineParams {
            kind: KIND.to_owned(),
            format: FORMAT_VERSION,
            warmup_events: self.config.warmup_events,
            metrics: self
                .metrics
                .iter()
                .map(|(name, metric)| {
                    (
                        name.clone(),
                        MetricParams {
                            mean: metric.stats.mean,
                            std: self.std_of(&metric.stats),
                            repeat_rate: metric.repeat_rate,
                            n: metric.stats.n,
                        },
                    )
                })
                .collect(),
            interval,
        }
    }

    fn events(&self) -> u64 {
        self.events
    }
}

/// The scoring half of the baseline, one per device: remembers only the last value of
/// each metric (for stuck sensors) and the last timestamp (for gaps).
#[derive(Clone, Debug, Default)]
pub struct BaselineScorer {
    last_ts: Option<i64>,
    last_values: BTreeMap<String, (f64, u32)>,
}

/// Repeat rates below this are treated as this, so that a metric never seen repeating
/// still needs a few repeats before it looks stuck.
const MIN_REPEAT_RATE: f64 = 0.01;

impl Scorer for BaselineScorer {
    type Params = BaselineParams;

    fn score(&mut self, params: &BaselineParams, observation: &Observation<'_>) -> Score {
        let mut parts = Vec::with_capacity(observation.metrics.len() + 1);

        if let (Some(last_ts), Some((mean, std))) = (self.last_ts, params.interval) {
            let gap_ms = observation.ts_ms - last_ts;
            let z = (gap_ms as f64 - mean) / std;
            if z > 0.0 {
                parts.push(MetricScore {
                    metric: INTERVAL_METRIC.to_owned(),
                    value: gap_ms as f64,
                    expected: mean,
                    score: deviation_score(z),
                    cause: Cause::Gap {
                        gap_ms,
                        ratio: gap_ms as f64 / mean.max(1.0),
                    },
                });
            }
        }
        self.last_ts = Some(
            self.last_ts
                .map_or(observation.ts_ms, |t| t.max(observation.ts_ms)),
        );

        for (name, &value) in observation.metrics {
            let repeats = match self.last_values.get_mut(name) {
                Some((last, repeats)) if *last == value => {
                    *repeats += 1;
                    *repeats
                }
                Some(entry) => {
                    *entry = (value, 0);
                    0
                }
                None => {
                    self.last_values.insert(name.clone(), (value, 0));
                    0
                }
            };
            let Some(metric) = params.metrics.get(name) else {
                continue;
            };
            if metric.n < params.warmup_events {
                continue;
            }
            let z = (value - metric.mean) / metric.std;
            let deviation = deviation_score(z);
            let stuck_surprisal =
                -(repeats as f64) * metric.repeat_rate.max(MIN_REPEAT_RATE).log10();
            let stuck = (stuck_surprisal / SURPRISAL_AT_ONE).clamp(0.0, 1.0);
            let (score, cause) = if stuck > deviation {
                (
                    stuck,
                    Cause::Stuck {
                        repeats: repeats + 1,
                    },
                )
            } else {
                (deviation, Cause::Deviation { z })
            };
            parts.push(MetricScore {
                metric: name.clone(),
                value,
                expected: metric.mean,
                score,
                cause,
            });
        }

        let mut score = Score::from_parts(parts);
        score.ready = params
            .metrics
            .values()
            .any(|metric| metric.n >= params.warmup_events);
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-noise in [-1, 1] without pulling a RNG into the crate.
    fn noise(i: u64) -> f64 {
        let x = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        2.0 * x - 1.0
    }

    fn metrics(value: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("temp".to_owned(), value)])
    }

    struct Rig {
        trainer: BaselineTrainer,
        scorer: BaselineScorer,
        ts: i64,
    }

    impl Rig {
        fn new() -> Self {
            Self {
                trainer: BaselineTrainer::new(BaselineConfig::default().validate().unwrap()),
                scorer: BaselineScorer::default(),
                ts: 1_700_000_000_000,
            }
        }

        /// Train and score one event, scoring with the snapshot taken before training
        /// (as a lagging scorer would).
        fn step(&mut self, value: f64, advance_ms: i64) -> Score {
            self.ts += advance_ms;
            let values = metrics(value);
            let observation = Observation {
                ts_ms: self.ts,
                metrics: &values,
            };
            let params = self.trainer.snapshot();
            let score = self.scorer.score(&params, &observation);
            self.trainer.update(&observation);
            score
        }
    }

    #[test]
    fn validates_configuration() {
        let bad = BaselineConfig {
            mean_alpha: 0.0,
            ..BaselineConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn quiet_on_noise_and_loud_on_a_spike() {
        let mut rig = Rig::new();
        let threshold = BaselineConfig::default().threshold;
        for i in 0..2_000 {
            let score = rig.step(20.0 + noise(i), 1000);
            assert!(score.value < threshold, "false alarm at {i}: {score:?}");
        }
        let spike = rig.step(35.0, 1000);
        assert!(spike.value >= threshold, "{spike:?}");
        assert!(spike.reason().contains("temp"), "{}", spike.reason());
    }

    #[test]
    fn a_level_shift_stays_anomalous_until_it_ends() {
        let mut rig = Rig::new();
        let threshold = BaselineConfig::default().threshold;
        for i in 0..500 {
            rig.step(20.0 + noise(i), 1000);
        }
        for i in 500..530 {
            let score = rig.step(30.0 + noise(i), 1000);
            assert!(score.value >= threshold, "event {i} {score:?}");
        }
        for i in 530..560 {
            let score = rig.step(20.0 + noise(i), 1000);
            assert!(score.value < threshold, "event {i} {score:?}");
        }
    }

    #[test]
    fn notices_a_stuck_sensor_and_a_gap() {
        let mut rig = Rig::new();
        let threshold = BaselineConfig::default().threshold;
        for i in 0..300 {
            rig.step(20.0 + noise(i), 1000);
        }
        let stuck: Vec<f64> = (0..10).map(|_| rig.step(20.3, 1000).value).collect();
        assert!(stuck[1] < threshold, "{stuck:?}");
        assert!(stuck[9] >= threshold, "{stuck:?}");

        for i in 400..450 {
            rig.step(20.0 + noise(i), 1000);
        }
        let after_gap = rig.step(20.0, 20_000);
        assert!(after_gap.value >= threshold, "{after_gap:?}");
        assert!(matches!(after_gap.contributors[0].cause, Cause::Gap { .. }));
    }

    #[test]
    fn not_ready_while_warming_up() {
        let mut rig = Rig::new();
        assert!(!rig.step(1.0, 1000).ready);
    }

    #[test]
    fn params_round_trip_and_refuse_other_kinds() {
        let mut rig = Rig::new();
        for i in 0..100 {
            rig.step(20.0 + noise(i), 1000);
        }
        let params = rig.trainer.snapshot();
        let json = serde_json::to_string(&params).unwrap();
        let back: BaselineParams = serde_json::from_str(&json).unwrap();
        assert_eq!(back, params);
        assert!(back.check().is_ok());
        let other = BaselineParams {
            kind: "other".into(),
            ..back
        };
        assert!(other.check().is_err());
    }
}
