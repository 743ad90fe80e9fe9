//! `fleetwatch-detector`: the production model.
//!
//! Per metric, the trainer learns what is normal and the scorer keeps the recent context:
//!
//! - **Residual.** A fast exponential smoother predicts the next value; the raw score of an
//!   observation is its prediction error in units of the error's learned standard
//!   deviation.
//! - **Likelihood.** Raw scores are not comparable across series, so they are calibrated the
//!   way Numenta's anomaly likelihood does: the average of the last few raw scores is
//!   compared with the long-run distribution of that average (learned by the trainer), and
//!   the score is the upper-tail surprisal `ln(tail)/ln(1e-10)`, in [0, 1]. A score of 0.5
//!   is a one-in-100,000 event for this series.
//! - **Range.** A value beyond everything seen so far (by a margin of the seen range) is
//!   anomalous whatever its residual.
//! - **Stuck sensor** and **gap**: as in the IoT simulator's failure modes — a metric that
//!   rarely repeats a value repeating it many times, or a silence many times the usual
//!   interval.
//!
//! The scorer can use parameters a few events old: they hold only slowly-changing
//! quantities; everything that changes with each event lives in the scorer's own state.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::calibration::ln_two_sided_tail;
use crate::{Cause, MetricScore, ModelError, Observation, Score, Scorer, Trainer};

pub const KIND: &str = "fleetwatch-detector";
pub const FORMAT_VERSION: u32 = 1;
pub const INTERVAL_METRIC: &str = "(interval)";

/// Settings of the detector. Start from [`DetectorConfig::default`], then
/// [`DetectorConfig::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Weight of the newest value in the fast predictor, in (0, 1].
    pub predictor_alpha: f64,
    /// Weight of the newest error in the error variance, in (0, 1].
    pub error_alpha: f64,
    /// Raw scores averaged before calibration (the "short-term" window).
    pub averaging_window: usize,
    /// Weight of the newest average in its long-run distribution, in (0, 1].
    pub likelihood_alpha: f64,
    /// Observations per metric before it is scored.
    pub warmup_events: u64,
    /// Observations per metric before the history-hungry checks (likelihood, range,
    /// shapes) are trusted. Until then a metric is scored by its single prediction error
    /// against a Gaussian, which needs little history to be right.
    pub history_events: u64,
    /// Margin, as a fraction of the seen range, beyond which a new extreme is anomalous.
    pub range_tolerance: f64,
    /// Score of a value beyond the seen range.
    pub range_score: f64,
    /// Per event, the seen extremes relax this fraction of the way towards the mean, so
    /// an old outlier does not mask new ones forever (0: never forget).
    pub range_decay: f64,
    /// Score stuck sensors (a metric repeating a value far more than it usually does).
    pub stuck_detection: bool,
    /// Score silences far longer than the usual interval between events.
    pub gap_detection: bool,
    /// A silence counts as a gap only from this many usual intervals on.
    pub gap_min_ratio: f64,
    /// A metric counts as stuck only from this many identical readings in a row on.
    pub stuck_min_repeats: u32,
    /// Values in a shape (the recent-behaviour embedding); 0 turns shapes off.
    pub shape_length: usize,
    /// Centroids remembered per metric.
    pub shape_centroids: usize,
    /// Weight of the time of day in the embedding.
    pub time_of_day_weight: f64,
    /// A shape farther than this many typical radii from every centroid is new (0 turns
    /// novelty off).
    pub shape_vigilance: f64,
    /// Radius of a new centroid, as a fraction of the typical member distance.
    pub new_radius_fraction: f64,
    /// After a score reaches the threshold, later scores are held just below it for this
    /// many events: an incident is reported once, at its onset (0 turns it off).
    pub rest_events: u32,
    /// Recommended alert threshold on the score.
    pub threshold: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            predictor_alpha: 0.1,
            error_alpha: 0.02,
            averaging_window: 5,
            likelihood_alpha: 0.001,
            warmup_events: 30,
            history_events: 300,
            range_tolerance: 0.05,
            range_score: 1.0,
            range_decay: 0.0002,
            stuck_detection: true,
            gap_detection: true,
            gap_min_ratio: 5.0,
            stuck_min_repeats: 5,
            shape_length: 6,
            shape_centroids: 24,
            time_of_day_weight: 1.0,
            shape_vigilance: 40.0,
            new_radius_fraction: 0.01,
            rest_events: 75,
            threshold: 0.65,
        }
    }
}

impl DetectorConfig {
    pub fn validate(self) -> Result<Self, ModelError> {
        for (name, value) in [
            ("predictor_alpha", self.predictor_alpha),
            ("error_alpha", self.error_alpha),
            ("likelihood_alpha", self.likelihood_alpha),
            ("threshold", self.threshold),
            ("range_score", self.range_score.max(f64::MIN_POSITIVE)),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                return Err(ModelError::InvalidConfig(format!(
                    "{name} must be in (0, 1], got {value}"
                )));
            }
        }
        if self.averaging_window == 0 || self.averaging_window > 100 {
            return Err(ModelError::InvalidConfig(
                "averaging_window must be in 1..=100".into(),
            ));
        }
        if self.range_tolerance.is_nan() || self.range_tolerance < 0.0 {
            return Err(ModelError::InvalidConfig(
                "range_tolerance must not be negative".into(),
            ));
        }
        if self.warmup_events < 2 {
            return Err(ModelError::InvalidConfig(
                "warmup_events must be at least 2".into(),
            ));
        }
        Ok(self)
    }
}

/// What the scorer needs of one metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricParams {
    /// Standard deviation of the prediction error.
    pub error_std: f64,
    /// Long-run mean and standard deviation of the averaged raw score.
    pub average_mean: f64,
    pub average_std: f64,
    /// Range seen so far.
    pub min: f64,
    pub max: f64,
    /// How often the metric repeats its previous value exactly.
    pub repeat_rate: f64,
    pub n: u64,
    /// Long-run mean and standard deviation of the value, for normalising shapes.
    pub value_mean: f64,
    pub value_std: f64,
    /// Centroids of recent shapes, and the long-run distribution of the averaged log
    /// distance to the nearest one.
    pub centroids: Vec<Vec<f64>>,
    /// Typical squared distance of a centroid's members to it.
    pub radii: Vec<f64>,
    pub shape_mean: f64,
    pub shape_std: f64,
}

/// A parameter snapshot for one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorParams {
    pub kind: String,
    pub format: u32,
    pub config: DetectorConfig,
    pub metrics: BTreeMap<String, MetricParams>,
    /// Usual interval between events (ms) and the fraction of samples that go missing,
    /// once known.
    pub interval: Option<(f64, f64)>,
}

impl DetectorParams {
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

/// Exponentially weighted mean and variance; the first observations get weight 1/n.
#[derive(Clone, Debug, Default)]
struct Running {
    mean: f64,
    var: f64,
    n: u64,
}

impl Running {
    fn learn(&mut self, value: f64, alpha: f64) {
        self.n += 1;
        let weight = alpha.max(1.0 / self.n as f64);
        let delta = value - self.mean;
        self.mean += weight * delta;
        self.var += weight * (delta * (value - self.mean) - self.var);
    }

    fn std(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }
}

/// Recent context of one metric, kept by trainer and scorer alike.
#[derive(Clone, Debug, Default)]
struct Context {
    prediction: Option<f64>,
    last_value: Option<f64>,
    repeats: u32,
    /// The repeat rate the scorer's parameters had when the current run began: a run is
    /// judged by the behaviour before it, or it would soon make itself look normal.
    run_start_repeat_rate: Option<f64>,
    recent_raw: VecDeque<f64>,
    recent_values: VecDeque<f64>,
    recent_shape: VecDeque<f64>,
}

/// The embedding of the current event: the last values normalised, and the time of day.
fn embed(
    values: &VecDeque<f64>,
    ts_ms: i64,
    mean: f64,
    std: f64,
    config: &DetectorConfig,
) -> Option<Vec<f64>> {
    if config.shape_length == 0 || values.len() < config.shape_length {
        return None;
    }
    let std = std.max(1e-9);
    let mut vector: Vec<f64> = values
        .iter()
        .map(|v| ((v - mean) / std).clamp(-10.0, 10.0))
        .collect();
    let phase = std::f64::consts::TAU * (ts_ms.rem_euclid(86_400_000) as f64 / 86_400_000.0);
    vector.push(config.time_of_day_weight * phase.cos());
    vector.push(config.time_of_day_weight * phase.sin());
    Some(vector)
}

/// The current shape as the context saw it.
struct Shape {
    log_average_distance: f64,
    vector: Vec<f64>,
    /// Index of the nearest centroid and the squared distance to it.
    nearest: (usize, f64),
}

fn nearest(centroids: &[Vec<f64>], vector: &[f64]) -> Option<(usize, f64)> {
    centroids
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                i,
                c.iter()
                    .zip(vector)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>(),
            )
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

impl Context {
    /// Remember `value` for shapes; returns the current shape, its nearest centroid and
    /// the averaged log distance to it (none before the history fills a shape or while
    /// there is no centroid).
    fn observe_shape(
        &mut self,
        value: f64,
        ts_ms: i64,
        mean: f64,
        std: f64,
        centroids: &[Vec<f64>],
        config: &DetectorConfig,
    ) -> Option<Shape> {
        push_limited(&mut self.recent_values, value, config.shape_length);
        let vector = embed(&self.recent_values, ts_ms, mean, std, config)?;
        let nearest = nearest(centroids, &vector)?;
        push_limited(&mut self.recent_shape, nearest.1, config.averaging_window);
        let average = self.recent_shape.iter().sum::<f64>() / self.recent_shape.len() as f64;
        Some(Shape {
            log_average_distance: (average + 1e-3).ln(),
            vector,
            nearest,
        })
    }
}

fn push_limited(queue: &mut VecDeque<f64>, value: f64, limit: usize) {
    if queue.len() == limit {
        queue.pop_front();
    }
    queue.push_back(value);
}

impl Context {
    /// Raw score of `value` against the current prediction, then advance the context.
    /// Returns (raw, prediction, average of recent raw scores including this one).
    fn observe(&mut self, value: f64, error_std: f64, config: &DetectorConfig) -> (f64, f64, f64) {
        let prediction = self.prediction.unwrap_or(value);
        let raw = ((value - prediction).abs() / error_std.max(1e-12)).min(1e6);
        self.prediction = Some(prediction + config.predictor_alpha * (value - prediction));
        self.repeats = if self.last_value == Some(value) {
            self.repeats + 1
        } else {
            0
        };
        self.last_value = Some(value);
        if self.recent_raw.len() == config.averaging_window {
            self.recent_raw.pop_front();
        }
        self.recent_raw.push_back(raw);
        let average = self.recent_raw.iter().sum::<f64>() / self.recent_raw.len() as f64;
        // Averages of heavy-tailed errors are far from Gaussian; their logarithm is close.
        (raw, prediction, (average + 1e-3).ln())
    }
}

#[derive(Clone, Debug, Default)]
struct MetricTrainer {
    context: Context,
    error: Running,
    average: Running,
    value: Running,
    shape: Running,
    centroids: Vec<Vec<f64>>,
    centroid_weights: Vec<f64>,
    radii: Vec<f64>,
    typical_distance: Running,

    min: f64,
    max: f64,
    repeat_rate: f64,
    n: u64,
}

/// The learning half, one per device.
#[derive(Clone, Debug)]
pub struct DetectorTrainer {
    config: DetectorConfig,
    metrics: BTreeMap<String, MetricTrainer>,
    interval: Running,
    /// Fraction of expected samples that did not arrive.
    missing_rate: f64,
    last_ts: Option<i64>,
    events: u64,
}

impl DetectorTrainer {
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            metrics: BTreeMap::new(),
            interval: Running::default(),
            missing_rate: 0.0,
            last_ts: None,
            events: 0,
        }
    }
}

/// Smallest error standard deviation relative to the value's magnitude, so a constant
/// series stays scorable.
const MIN_RELATIVE_ERROR_STD: f64 = 1e-6;

impl Trainer for DetectorTrainer {
    type Params = DetectorParams;

    fn update(&mut self, observation: &Observation<'_>) {
        self.events += 1;
        let config = &self.config;
        if let Some(last_ts) = self.last_ts {
            let interval = (observation.ts_ms - last_ts) as f64;
            let known = self.interval.n >= config.warmup_events;
            // Intervals of about the usual length teach the usual length; longer ones teach
            // how often samples go missing.
            let missed = if known {
                (interval / self.interval.mean - 1.0).round().max(0.0)
            } else {
                0.0
            };
            if interval > 0.0 && missed == 0.0 {
                self.interval.learn(interval, config.error_alpha);
            }
            if known {
                let weight = config.error_alpha.max(1.0 / (self.interval.n as f64));
                self.missing_rate += weight * (missed / (1.0 + missed) - self.missing_rate);
            }
        }
        self.last_ts = Some(
            self.last_ts
                .map_or(observation.ts_ms, |t| t.max(observation.ts_ms)),
        );

        for (name, &value) in observation.metrics {
            // Look up before inserting: `entry` would allocate a key on every event.
            if !self.metrics.contains_key(name) {
                let fresh = MetricTrainer {
                    min: value,
                    max: value,
                    ..MetricTrainer::default()
                };
                self.metrics.insert(name.clone(), fresh);
            }
            let metric = self.metrics.get_mut(name).expect("inserted above");
            metric.n += 1;
            let error_std = metric
                .error
                .std()
                .max(MIN_RELATIVE_ERROR_STD * value.abs())
                .max(1e-12);
            let had_prediction = metric.context.prediction;
            let (_, _, average) = metric.context.observe(value, error_std, config);
            if let Some(prediction) = had_prediction {
                metric.error.learn(value - prediction, config.error_alpha);
                // The error variance is centred on zero, not on its mean.
                metric.error.mean = 0.0;
            }
            if metric.n > config.averaging_window as u64 {
                metric.average.learn(average, config.likelihood_alpha);
            }
            let (mean, std) = (metric.value.mean, metric.value.std());
            if let Some(shape) = metric.context.observe_shape(
                value,
                observation.ts_ms,
                mean,
                std,
                &metric.centroids,
                config,
            ) {
                if metric.n > config.warmup_events {
                    metric
                        .shape
                        .learn(shape.log_average_distance, config.likelihood_alpha);
                }
                learn_shape(metric, shape.vector, Some(shape.nearest), config);
            } else if metric.centroids.is_empty() {
                if let Some(vector) = embed(
                    &metric.context.recent_values,
                    observation.ts_ms,
                    mean,
                    std,
                    config,
                ) {
                    learn_shape(metric, vector, None, config);
                }
            }
            metric.value.learn(value, config.error_alpha / 10.0);
            if metric.n > config.warmup_events {
                metric.max -= config.range_decay * (metric.max - metric.value.mean).max(0.0);
                metric.min += config.range_decay * (metric.value.mean - metric.min).max(0.0);
            }
            metric.min = metric.min.min(value);
            metric.max = metric.max.max(value);
            let target = if metric.context.repeats > 0 { 1.0 } else { 0.0 };
            metric.repeat_rate +=
                config.error_alpha.max(1.0 / metric.n as f64) * (target - metric.repeat_rate);
        }
    }

    fn snapshot(&self) -> DetectorParams {
        let interval = (self.interval.n >= self.config.warmup_events)
            .then_some((self.interval.mean, self.missing_rate));
        DetectorParams {
            kind: KIND.to_owned(),
            format: FORMAT_VERSION,
            config: self.config.clone(),
            metrics: self
                .metrics
                .iter()
                .map(|(name, m)| {
                    let magnitude = m.max.abs().max(m.min.abs());
                    (
                        name.clone(),
                        MetricParams {
                            error_std: m
                                .error
                                .std()
                                .max(MIN_RELATIVE_ERROR_STD * magnitude)
                                .max(1e-12),
                            average_mean: m.average.mean,
                            average_std: m.average.std(),
                            min: m.min,
                            max: m.max,
                            repeat_rate: m.repeat_rate,
                            n: m.n,
                            value_mean: m.value.mean,
                            value_std: m.value.std(),
                            centroids: m.centroids.clone(),
                            radii: m.radii.clone(),
                            shape_mean: m.shape.mean,
                            shape_std: m.shape.std(),
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

/// Online k-means with novelty: a shape far from every centroid (beyond `vigilance`
/// typical radii, or simply far while there is room) becomes a centroid of its own,
/// replacing the least used one when memory is full; otherwise the nearest centroid
/// moves towards it, ever slower but never below a floor, so the memory keeps adapting.
fn learn_shape(
    metric: &mut MetricTrainer,
    vector: Vec<f64>,
    nearest: Option<(usize, f64)>,
    config: &DetectorConfig,
) {
    let Some((index, distance)) = nearest else {
        metric.centroids.push(vector);
        metric.centroid_weights.push(1.0);
        metric.radii.push(1.0);
        return;
    };
    // Before any member distance was learned, one unit of normalised squared distance.
    let typical = if metric.typical_distance.n == 0 {
        1.0
    } else {
        metric.typical_distance.mean.max(1e-6)
    };
    let novel = config.shape_vigilance > 0.0
        && metric.n > config.warmup_events
        && distance > config.shape_vigilance * metric.radii[index].max(typical);
    if novel || (metric.centroids.len() < config.shape_centroids && distance > 0.5) {
        if metric.centroids.len() < config.shape_centroids {
            metric.centroids.push(vector);
            metric.centroid_weights.push(1.0);
            metric.radii.push(typical * config.new_radius_fraction);
        } else {
            let least = (0..metric.centroids.len())
                .min_by(|&a, &b| metric.centroid_weights[a].total_cmp(&metric.centroid_weights[b]))
                .expect("not empty");
            metric.centroids[least] = vector;
            metric.centroid_weights[least] = 1.0;
            metric.radii[least] = typical * config.new_radius_fraction;
        }
        return;
    }
    metric.typical_distance.learn(distance, config.error_alpha);
    metric.centroid_weights[index] += 1.0;
    let rate = (1.0 / metric.centroid_weights[index]).max(0.01);
    metric.radii[index] += rate * (distance - metric.radii[index]);
    for (c, v) in metric.centroids[index].iter_mut().zip(&vector) {
        *c += rate * (v - *c);
    }
    // Slowly forget, so rarely used centroids are the ones replaced.
    for weight in &mut metric.centroid_weights {
        *weight *= 0.999;
    }
}

/// The score of a metric with enough history: the likelihood of its recent prediction
/// errors and shapes, and whether it left its range.
fn history_score(
    metric: &MetricParams,
    config: &DetectorConfig,
    value: f64,
    prediction: f64,
    raw: f64,
    average: f64,
    shape: Option<&Shape>,
) -> (f64, Cause) {
    let z = (average - metric.average_mean) / metric.average_std.max(1e-9);
    let mut score = tail_score(ln_upper_tail(z));
    if let Some(shape) = shape {
        let z = (shape.log_average_distance - metric.shape_mean) / metric.shape_std.max(1e-9);
        score = score.max(tail_score(ln_upper_tail(z)));
        if config.shape_vigilance > 0.0 {
            let (index, distance) = shape.nearest;
            let radius = metric.radii.get(index).copied().unwrap_or(1.0).max(1e-6);
            let ratio = distance / (config.shape_vigilance * radius);
            if ratio > 1.0 {
                score = score.max(0.5 + 0.5 * (1.0 - 1.0 / ratio));
            }
        }
    }
    let range = metric.max - metric.min;
    let excess = (value - metric.max).max(metric.min - value);
    if range > 0.0 && excess > config.range_tolerance * range {
        // Graded, so that the threshold can tell a slight new extreme from a wild one.
        let beyond = (excess / range - config.range_tolerance).min(1.0);
        score = score.max(config.range_score * (0.9 + 0.1 * beyond));
    }
    (
        score,
        Cause::Deviation {
            z: raw * (value - prediction).signum(),
        },
    )
}

/// The scoring half, one per device.
#[derive(Clone, Debug, Default)]
pub struct DetectorScorer {
    last_ts: Option<i64>,
    contexts: BTreeMap<String, Context>,
    /// Events left in the current rest period.
    resting: u32,
}

/// Score of an upper-tail probability: ln(p)/ln(1e-10), in [0, 1].
fn tail_score(ln_tail: f64) -> f64 {
    const LN_FLOOR: f64 = -23.025_850_929_940_457; // ln(1e-10)
    (ln_tail.max(LN_FLOOR) / LN_FLOOR).clamp(0.0, 1.0)
}

/// ln P(Z > z) for a standard normal Z.
fn ln_upper_tail(z: f64) -> f64 {
    if z <= 0.0 {
        // At most ln(1) = 0; the mirror keeps it smooth.
        (1.0 - 0.5 * ln_two_sided_tail(z).exp()).ln()
    } else {
        ln_two_sided_tail(z) - std::f64::consts::LN_2
    }
}

const MIN_REPEAT_RATE: f64 = 0.01;
/// Below this repeat rate a metric counts as one that (almost) never repeats.
const RARE_REPEAT_RATE: f64 = 0.02;
const MIN_MISSING_RATE: f64 = 0.01;

impl Scorer for DetectorScorer {
    type Params = DetectorParams;

    fn score(&mut self, params: &DetectorParams, observation: &Observation<'_>) -> Score {
        let config = &params.config;
        let mut parts = Vec::with_capacity(observation.metrics.len() + 1);
        let interval = params.interval.filter(|_| config.gap_detection);
        if let (Some(last_ts), Some((mean, missing_rate))) = (self.last_ts, interval) {
            let gap_ms = observation.ts_ms - last_ts;
            let missed = (gap_ms as f64 / mean - 1.0).round();
            if gap_ms as f64 >= config.gap_min_ratio * mean {
                // `missed` samples in a row, each missing with the learned rate.
                parts.push(MetricScore {
                    metric: INTERVAL_METRIC.to_owned(),
                    value: gap_ms as f64,
                    expected: mean,
                    score: tail_score(missed * missing_rate.max(MIN_MISSING_RATE).ln()),
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
            if !self.contexts.contains_key(name) {
                self.contexts.insert(name.clone(), Context::default());
            }
            let context = self.contexts.get_mut(name).expect("inserted above");
            let Some(metric) = params.metrics.get(name) else {
                context.observe(value, 1.0, config);
                continue;
            };
            let (raw, prediction, average) = context.observe(value, metric.error_std, config);
            if context.repeats == 1 {
                // Only metrics that almost never repeat are judged by the rate before the
                // run; for the others (and runs begun while warming up) the current rate.
                context.run_start_repeat_rate = (metric.n >= config.warmup_events
                    && metric.repeat_rate < RARE_REPEAT_RATE)
                    .then_some(metric.repeat_rate);
            } else if context.repeats == 0 {
                context.run_start_repeat_rate = None;
            }
            let shape = context.observe_shape(
                value,
                observation.ts_ms,
                metric.value_mean,
                metric.value_std,
                &metric.centroids,
                config,
            );
            if metric.n < config.warmup_events {
                continue;
            }
            let (mut score, mut cause) = if metric.n < config.history_events {
                (
                    tail_score(ln_two_sided_tail(raw)),
                    Cause::Deviation {
                        z: raw * (value - prediction).signum(),
                    },
                )
            } else {
                self::history_score(
                    metric,
                    config,
                    value,
                    prediction,
                    raw,
                    average,
                    shape.as_ref(),
                )
            };
            let repeats = context.repeats;
            let rate = context
                .run_start_repeat_rate
                .map_or(metric.repeat_rate, |r| r.min(metric.repeat_rate));
            let stuck = tail_score(repeats as f64 * rate.max(MIN_REPEAT_RATE).ln());
            if config.stuck_detection && repeats + 1 >= config.stuck_min_repeats && stuck > score {
                score = stuck;
                cause = Cause::Stuck {
                    repeats: repeats + 1,
                };
            }
            parts.push(MetricScore {
                metric: name.clone(),
                value,
                expected: prediction,
                score,
                cause,
            });
        }
        let mut score = Score::from_parts(parts);
        score.ready = params.metrics.values().any(|m| m.n >= config.warmup_events);
        if self.resting > 0 {
            self.resting -= 1;
            score.value = score.value.min(config.threshold * 0.99);
        } else if score.ready && score.value >= config.threshold {
            self.resting = config.rest_events;
        }
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

    struct Rig {
        trainer: DetectorTrainer,
        scorer: DetectorScorer,
        params: DetectorParams,
        ts: i64,
        events: u64,
    }

    impl Rig {
        fn new() -> Self {
            let trainer = DetectorTrainer::new(DetectorConfig::default().validate().unwrap());
            let params = trainer.snapshot();
            Self {
                trainer,
                scorer: DetectorScorer::default(),
                params,
                ts: 1_700_000_000_000,
                events: 0,
            }
        }

        /// Score, then train, publishing every 10 events: the production pairing.
        fn step(&mut self, value: f64, advance_ms: i64) -> Score {
            self.ts += advance_ms;
            let metrics = BTreeMap::from([("temp".to_owned(), value)]);
            let observation = Observation {
                ts_ms: self.ts,
                metrics: &metrics,
            };
            let score = self.scorer.score(&self.params, &observation);
            self.trainer.update(&observation);
            self.events += 1;
            if self.events.is_multiple_of(10) {
                self.params = self.trainer.snapshot();
            }
            score
        }

        fn warm(&mut self, events: u64) {
            for i in 0..events {
                let score = self.step(20.0 + noise(i), 1000);
                assert!(score.value < THRESHOLD, "false alarm at {i}: {score:?}");
            }
        }
    }

    const THRESHOLD: f64 = 0.65;

    #[test]
    fn validates_configuration() {
        assert!(DetectorConfig {
            predictor_alpha: 0.0,
            ..DetectorConfig::default()
        }
        .validate()
        .is_err());
        assert!(DetectorConfig {
            averaging_window: 0,
            ..DetectorConfig::default()
        }
        .validate()
        .is_err());
        assert_eq!(DetectorConfig::default().threshold, THRESHOLD);
    }

    #[test]
    fn quiet_on_noise_and_loud_on_a_spike() {
        let mut rig = Rig::new();
        rig.warm(2_000);
        let spike = rig.step(35.0, 1000);
        assert!(spike.value >= THRESHOLD, "{spike:?}");
        assert!(spike.reason().contains("temp"), "{}", spike.reason());
    }

    #[test]
    fn a_level_shift_is_noticed_at_once() {
        let mut rig = Rig::new();
        rig.warm(500);
        assert!(rig.step(30.0, 1000).value >= THRESHOLD);
    }

    #[test]
    fn notices_a_stuck_sensor_and_a_gap() {
        let mut rig = Rig::new();
        rig.warm(1_000);
        let stuck: Vec<Score> = (0..15).map(|_| rig.step(20.3, 1000)).collect();
        assert!(stuck[..2].iter().all(|s| s.value < THRESHOLD), "{stuck:?}");
        // Reported once, at onset; the rest period then holds it below the threshold.
        let onset = stuck
            .iter()
            .position(|s| s.value >= THRESHOLD)
            .expect("stuck sensor noticed");
        assert!(
            matches!(stuck[onset].contributors[0].cause, Cause::Stuck { .. }),
            "{stuck:?}"
        );
        assert!(stuck[onset + 1..].iter().all(|s| s.value < THRESHOLD));

        let mut rig = Rig::new();
        rig.warm(1_000);
        let after_gap = rig.step(20.0, 20_000);
        assert!(after_gap.value >= THRESHOLD, "{after_gap:?}");
        assert!(matches!(after_gap.contributors[0].cause, Cause::Gap { .. }));
    }

    #[test]
    fn a_constant_metric_is_not_stuck() {
        let mut rig = Rig::new();
        for _ in 0..500 {
            assert!(rig.step(5.0, 1000).value < THRESHOLD);
        }
    }

    #[test]
    fn not_ready_while_warming_up() {
        let mut rig = Rig::new();
        assert!(!rig.step(1.0, 1000).ready);
    }

    #[test]
    fn params_round_trip_and_refuse_other_kinds() {
        let mut rig = Rig::new();
        rig.warm(100);
        let params = rig.trainer.snapshot();
        let json = serde_json::to_string(&params).unwrap();
        let back: DetectorParams = serde_json::from_str(&json).unwrap();
        assert_eq!(back, params);
        assert!(back.check().is_ok());
        assert!(DetectorParams {
            kind: "other".into(),
            ..back
        }
        .check()
        .is_err());
    }
}
