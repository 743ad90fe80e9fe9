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
//! - **Drift.** An exponential average of the *signed* prediction errors, against its
//!   learned long-run distribution: a slow ramp makes the smoother lag one way.
//! - **Range.** A value beyond everything seen so far (by a margin of the seen range) is
//!   anomalous whatever its residual.
//! - **Shapes.** Prototypes of recent shapes; a shape far from all of them is new.
//! - **Stuck sensor** and **gap**: a metric that rarely repeats a value repeating it many
//!   times, or a silence many times the usual interval.
//!
//! Across metrics, [`crate::relation`] scores broken relations (PCA: T² and SPE).
//!
//! The scorer can use parameters a few events old: they hold only slowly-changing
//! quantities; everything that changes with each event lives in the scorer's own state.
//! The model never hides a score: repeats of one incident are the episode machine's
//! business ([`crate::episode`]).

use std::borrow::Cow;
use std::sync::Arc;

use linfa::ParamGuard;
use serde::{Deserialize, Serialize};

use crate::calibration::{ln_two_sided_tail, student_as_normal};
use crate::names::Named;
use crate::prototypes::Prototypes;
use crate::relation::{
    Evaluation, RelationConfig, RelationContext, RelationParams, RelationTrainer, MAX_COLUMNS,
};
use crate::ring::{Ring, Rings};
use crate::{Cause, MetricScore, ModelError, Observation, Score, Scorer, Trainer};

pub const KIND: &str = "fleetwatch-detector";
pub const FORMAT_VERSION: u32 = 6;

/// Largest step of the drift's level, in error deviations.
const DRIFT_STEP: f64 = 5.0;
/// Readings of a metric before its drift statistics are learned (see `learn_metric`).
const DRIFT_SETTLE_EVENTS: u64 = 100;
pub const INTERVAL_METRIC: &str = "(interval)";
/// The model kind's number in the binary encodings.
const KIND_ID: u8 = 1;
const PARAMS_MAGIC: &[u8; 2] = b"FP";
const STATE_MAGIC: &[u8; 2] = b"FT";
const STATE_VERSION: u16 = 3;
/// Shape prototypes are stored as `i16` in units of this (embeddings lie within ±10.9).
const CENTROID_UNIT: f64 = 1.0 / 3000.0;
/// Prototype units per embedding unit (a multiplication is cheaper than a division).
const UNITS_PER_VALUE: f64 = 3000.0;
/// Dimensions of a shape embedding at most: the values and the time of day.
const MAX_DIMS: usize = 16;

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
    /// Observations per metric before the history-hungry checks (likelihood, drift,
    /// range, shapes) are trusted. Until then a metric is scored by its single prediction
    /// error against a Gaussian, which needs little history to be right.
    pub history_events: u64,
    /// Margin, as a fraction of the seen range, beyond which a new extreme is anomalous.
    pub range_tolerance: f64,
    /// Score of a value beyond the seen range.
    pub range_score: f64,
    /// How a value beyond the range is scored: the probability of its distance from the
    /// long-run mean (Gaussian, in long-run standard deviations) times this. Values
    /// beyond the relaxing range are rare, but in stationary noise they are not rare
    /// enough to alert on by themselves; 0 scores every one as `range_score`.
    pub range_prior: f64,
    /// Observations per metric before the range counts: it must have seen the series'
    /// cycles (a season's trough is not an anomaly because the first peak came first).
    pub range_events: u64,
    /// Per event, the seen extremes relax this fraction of the way towards the mean, so
    /// an old outlier does not mask new ones forever (0: never forget).
    pub range_decay: f64,
    /// Judge a value's excursion beyond its range by the range before the excursion
    /// began, until it returns or its long-run mean has moved there (see `Excursion`).
    pub range_holds: bool,
    /// Judge a fall below the range of a metric whose range lies above zero on its own,
    /// multiplicative scale (how far below the least value in logarithms, as a fraction
    /// of the range's), and the value's improbability under a log-normal. Upward exits,
    /// and values at or below zero, stay additive.
    pub range_log_scale: bool,
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
    /// Prototypes remembered per metric, at most.
    pub shape_centroids: usize,
    /// Prototypes per device, shared by its metrics: what keeps parameters and trainer
    /// state small for devices with many metrics.
    pub shape_budget: usize,
    /// Weight of the time of day in the embedding.
    pub time_of_day_weight: f64,
    /// A shape farther than this many typical radii from every centroid is new (0 turns
    /// novelty off).
    pub shape_vigilance: f64,
    /// Radius of a new centroid, as a fraction of the typical member distance.
    pub new_radius_fraction: f64,
    /// Shape distances have heavier tails than a Gaussian (an autocorrelated series
    /// lingers in rare shapes): their z-scores are divided by this before scoring.
    pub shape_z_scale: f64,
    /// Once a metric has history, its checks average a few errors, which dilutes a
    /// single wild reading; a single prediction error is still anomalous by itself when
    /// its z-score divided by this is improbable as a Gaussian (1.5: from about 7.7
    /// standard deviations; 0 turns the check off).
    pub outlier_z_scale: f64,
    /// Observations per metric before a new shape counts (the memory of shapes must
    /// have seen the series' usual variety first).
    pub novelty_events: u64,
    /// A new shape scores at most the probability of its distance (as for the range)
    /// times this; 0 leaves novelty unbounded.
    pub shape_prior: f64,
    /// A prediction error whose shape (its last values and the time of day) lies within
    /// this many radii of a known prototype is no more anomalous than the shape itself: a
    /// jump that comes at this time every day is a habit, not a fault, as far as the
    /// prototype memory holds its shapes (0 turns this off). Range exits and drifts are
    /// not excused: a familiar shape beyond the range is still beyond it.
    pub familiar_ratio: f64,
    /// Score slow drifts (the signed prediction errors leaning one way).
    pub drift_detection: bool,
    /// Weight of the newest signed error in the drift average, in (0, 1].
    pub drift_alpha: f64,
    /// Bins of a metric's seasonal profile per period (0 turns the seasonal check off).
    pub season_bins: usize,
    /// Profile bins per device: a device keeps profiles only if all its metrics fit
    /// (`metrics × season_bins ≤ season_budget`), which keeps parameters and trainer
    /// state within their budgets for devices with many metrics.
    pub season_budget: usize,
    /// Length of the seasonal period in days (1: daily, 7: weekly).
    pub season_days: u32,
    /// The profile's memory, in periods (each bin is an exponential average over about
    /// this many visits' worth of readings).
    pub season_memory: f64,
    /// Periods of history before the profile counts.
    pub season_periods: f64,
    /// Readings of the lean's calibration (from the profile's first counting period on)
    /// before the profile counts: a young calibration underestimates the lean's tails.
    pub season_events: u64,
    /// Weight of the newest residual from the profile in the seasonal lean, in (0, 1].
    pub season_alpha: f64,
    /// The profile counts only where the residuals from it have at most this fraction of
    /// the value's variance (the series has a season worth the name).
    pub season_unexplained: f64,
    /// Broken relations between metrics.
    pub relation: RelationConfig,
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
            range_prior: 1e-2,
            range_events: 1000,
            range_decay: 0.0001,
            range_holds: true,
            range_log_scale: true,
            stuck_detection: true,
            gap_detection: true,
            gap_min_ratio: 5.0,
            stuck_min_repeats: 5,
            shape_length: 6,
            shape_centroids: 24,
            shape_budget: 32,
            time_of_day_weight: 1.0,
            shape_vigilance: 40.0,
            new_radius_fraction: 0.01,
            shape_z_scale: 2.0,
            outlier_z_scale: 2.0,
            shape_prior: 1e-2,
            novelty_events: 1000,
            familiar_ratio: 4.0,
            drift_detection: true,
            drift_alpha: 0.05,
            season_bins: 168,
            season_budget: 336,
            season_days: 7,
            season_memory: 7.0,
            season_periods: 1.0,
            season_events: 600,
            season_alpha: 0.5,
            season_unexplained: 0.35,
            relation: RelationConfig::default(),
            threshold: 0.65,
        }
    }
}

impl DetectorConfig {
    pub fn validate(self) -> Result<Self, ModelError> {
        self.check()?;
        Ok(self)
    }

    /// [`DetectorConfig::validate`] of a configuration kept where it is.
    pub fn check(&self) -> Result<(), ModelError> {
        for (name, value) in [
            ("predictor_alpha", self.predictor_alpha),
            ("error_alpha", self.error_alpha),
            ("likelihood_alpha", self.likelihood_alpha),
            ("drift_alpha", self.drift_alpha),
            ("season_alpha", self.season_alpha),
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
        if self.shape_length > MAX_DIMS - 2 || self.shape_centroids > 256 {
            return Err(ModelError::InvalidConfig(format!(
                "shape_length must be at most {} and shape_centroids at most 256",
                MAX_DIMS - 2
            )));
        }
        if self.familiar_ratio.is_nan() || self.familiar_ratio < 0.0 {
            return Err(ModelError::InvalidConfig(
                "familiar_ratio must not be negative".into(),
            ));
        }
        if self.outlier_z_scale.is_nan() || self.outlier_z_scale < 0.0 {
            return Err(ModelError::InvalidConfig(
                "outlier_z_scale must not be negative".into(),
            ));
        }
        if self.range_tolerance.is_nan() || self.range_tolerance < 0.0 {
            return Err(ModelError::InvalidConfig(
                "range_tolerance must not be negative".into(),
            ));
        }
        if self.season_bins > 1024
            || self.season_days == 0
            || self.season_memory.is_nan()
            || self.season_memory < 1.0
            || self.season_periods.is_nan()
            || self.season_unexplained.is_nan()
        {
            return Err(ModelError::InvalidConfig(
                "season_bins must be at most 1024, season_days positive, season_memory at least 1"
                    .into(),
            ));
        }
        if self.warmup_events < 2 {
            return Err(ModelError::InvalidConfig(
                "warmup_events must be at least 2".into(),
            ));
        }
        self.relation.check_ref()?;
        Ok(())
    }

    /// Prototypes per metric for a device with `metrics` metrics.
    fn centroid_cap(&self, metrics: usize) -> usize {
        (self.shape_budget / metrics.max(1)).clamp(2, self.shape_centroids.max(2))
    }
}

/// What the scorer needs of one metric (its name beside it, in [`DetectorParams`]'
/// [`Named`]: written before these fields, as a field of its own once was).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricParams {
    /// Standard deviation of the prediction error.
    pub error_std: f64,
    /// Long-run mean and standard deviation of the averaged raw score (log space). The
    /// means of log-space statistics are learned in `f32` (`SmallRunning`), and kept so:
    /// written as `f64`, as they always were.
    #[serde(with = "f32_as_f64")]
    pub average_mean: f32,
    pub average_std: f32,
    /// Long-run mean and standard deviation of the drift average.
    #[serde(with = "f32_as_f64")]
    pub drift_mean: f32,
    pub drift_std: f32,
    /// Range seen so far.
    pub min: f64,
    pub max: f64,
    /// How often the metric repeats its previous value exactly.
    pub repeat_rate: f32,
    /// Observations learned: a `u32` in the trainer (written as the `u64` it was: the
    /// same bytes).
    pub n: u32,
    /// Long-run mean and standard deviation of the value, for normalising shapes.
    pub value_mean: f64,
    pub value_std: f64,
    /// Prototypes of recent shapes in units of 1/3000, each with the typical squared
    /// distance of its members to it (its radius). Written as the prototypes one after
    /// the other, then the radii (the bytes the fields `centroids` and `radii` were; in
    /// JSON one field, `prototypes`).
    pub prototypes: Prototypes<1>,
    /// Long-run distribution of the averaged log distance to the nearest prototype.
    #[serde(with = "f32_as_f64")]
    pub shape_mean: f32,
    pub shape_std: f32,
}

/// Serde of an `f32` written as `f64` (the parameters' format from when these means were
/// kept in `f64`).
mod f32_as_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(f64::from(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        f64::deserialize(d).map(|value| value as f32)
    }
}

/// A metric's seasonal profile, as the scorer needs it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeasonParams {
    /// The usual value per bin of the period, as `offset + unit × q` (`i16::MIN`: a bin
    /// not seen yet); empty while the profile does not count (too young, or the metric
    /// has no season worth the name). `i16` in thousandths of the value's spread: half
    /// the bytes of `f32`, so that two metrics' profiles fit the 2 KB of parameters.
    pub profile: Vec<i16>,
    pub offset: f64,
    pub unit: f32,
    /// Long-run mean and standard deviation of the lean from the profile.
    pub lean_mean: f32,
    pub lean_std: f32,
}

/// A parameter snapshot for one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorParams {
    /// [`KIND`] and [`FORMAT_VERSION`]: nothing in memory (every device keeps
    /// parameters), the name and the number in JSON.
    pub kind: DetectorKind,
    pub format: DetectorFormat,
    /// Shared: the parameters of all devices decoded with one [`ConfigCache`], and all
    /// snapshots of one trainer, hold one copy (320 bytes each otherwise).
    #[serde(with = "shared_config")]
    pub config: Arc<DetectorConfig>,
    /// By name, the names shared with the other devices that have the same ones.
    pub metrics: Named<MetricParams>,
    /// Usual interval between events and how samples go missing, once known.
    pub interval: Option<Cadence>,
    /// Relations between metrics, once fitted.
    pub relation: Option<RelationParams>,
    /// Seasonal profiles, one per metric in the order of `metrics`, or none (the check
    /// is off, or the device has too many metrics for the budget).
    pub seasons: Box<[SeasonParams]>,
}

/// The kind of [`DetectorParams`]: [`KIND`] in JSON, where another kind is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DetectorKind;

impl Serialize for DetectorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(KIND)
    }
}

impl<'de> Deserialize<'de> for DetectorKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let kind = Cow::<str>::deserialize(d)?;
        if kind == KIND {
            Ok(DetectorKind)
        } else {
            Err(serde::de::Error::custom(format!(
                "parameters of kind {kind}, expected {KIND}"
            )))
        }
    }
}

/// The format of [`DetectorParams`]: [`FORMAT_VERSION`] in JSON, where another is
/// refused.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DetectorFormat;

impl Serialize for DetectorFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(FORMAT_VERSION)
    }
}

impl<'de> Deserialize<'de> for DetectorFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let format = u32::deserialize(d)?;
        if format == FORMAT_VERSION {
            Ok(DetectorFormat)
        } else {
            Err(serde::de::Error::custom(format!(
                "parameters of format {format}, expected {FORMAT_VERSION}"
            )))
        }
    }
}

/// The binary body of the parameters after the configuration (kind and version travel
/// in the header, then the configuration).
type ParamsBody = (
    Named<MetricParams>,
    Option<Cadence>,
    Option<RelationParams>,
    Box<[SeasonParams]>,
);

/// Serde of the shared configuration: as the configuration itself.
mod shared_config {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::DetectorConfig;

    pub fn serialize<S: Serializer>(config: &Arc<DetectorConfig>, s: S) -> Result<S::Ok, S::Error> {
        config.as_ref().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<DetectorConfig>, D::Error> {
        DetectorConfig::deserialize(d).map(Arc::new)
    }
}

/// The configurations of parameters decoded before, by their encoding: parameters
/// decoded with one cache ([`DetectorParams::from_bytes_with`]) share one copy of each
/// configuration instead of holding one per device. Holds at most
/// [`ConfigCache::CAPACITY`] configurations, and only those still in use.
#[derive(Debug, Default)]
pub struct ConfigCache {
    known: Vec<(Box<[u8]>, Arc<DetectorConfig>)>,
}

impl ConfigCache {
    pub const CAPACITY: usize = 16;

    /// The configuration `body` begins with (validated; the cache's copy if it has one)
    /// and the rest of `body`. A known encoding at the start of `body` is the whole of its
    /// configuration: decoding reads the same bytes the same way.
    fn take<'a>(&mut self, body: &'a [u8]) -> Result<(Arc<DetectorConfig>, &'a [u8]), ModelError> {
        if let Some((bytes, config)) = self.known.iter().find(|(b, _)| body.starts_with(b)) {
            return Ok((config.clone(), &body[bytes.len()..]));
        }
        let (config, rest) = postcard::take_from_bytes::<DetectorConfig>(body)
            .map_err(|e| ModelError::Decode(e.to_string()))?;
        let config = Arc::new(config.validate()?);
        self.known.retain(|(_, known)| Arc::strong_count(known) > 1);
        if self.known.len() < Self::CAPACITY {
            let encoded = &body[..body.len() - rest.len()];
            self.known.push((encoded.into(), config.clone()));
        }
        Ok((config, rest))
    }
}

/// How a device's events arrive: the usual interval, and how often and how long samples
/// go missing. Gap lengths are heavy-tailed (a device that drops out, drops out for a
/// while), so a gap of `k` missing samples is judged by a Pareto tail,
/// `P = gap_rate · ((1 + k) / 2)^-gap_tail`, not as `k` independent misses: a device that
/// drops samples now and then for a few hours is not alarming each time it does.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cadence {
    /// Usual interval between events (ms).
    pub interval_ms: f64,
    /// Fraction of intervals in which samples went missing.
    pub gap_rate: f32,
    /// Tail index of the gap lengths: 1 / the mean of `ln((1 + k) / 2)` over the gaps
    /// seen, with a prior of a device that never misses (see `GAP_PRIOR_GAPS`).
    pub gap_tail: f32,
}

fn check_header(
    bytes: &[u8],
    magic: &[u8; 2],
    version: u16,
    what: &'static str,
) -> Result<(), ModelError> {
    if bytes.len() < 5 || &bytes[..2] != magic {
        return Err(ModelError::Decode(format!("not fleetwatch {what}")));
    }
    let found_version = u16::from_le_bytes([bytes[3], bytes[4]]);
    if bytes[2] != KIND_ID || found_version != version {
        return Err(ModelError::IncompatibleParams {
            found: format!("kind #{}", bytes[2]),
            found_version: u32::from(found_version),
            expected: KIND,
            expected_version: u32::from(version),
        });
    }
    Ok(())
}

fn header(magic: &[u8; 2], version: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    out.extend_from_slice(magic);
    out.push(KIND_ID);
    out.extend_from_slice(&version.to_le_bytes());
    out
}

impl DetectorParams {
    /// Refuses arrays that do not fit together (parameters come from outside the process:
    /// a scorer must not index out of bounds on them). Other kinds and versions are
    /// refused when read.
    pub fn check(&self) -> Result<(), ModelError> {
        let dims = self.config.shape_length + 2;
        let shapes_fit = (self.metrics.values())
            .iter()
            .all(|m| m.prototypes.is_empty() || m.prototypes.dims() == dims);
        let relation_fits = self.relation.as_ref().is_none_or(|r| {
            r.is_consistent()
                && r.columns
                    .iter()
                    .all(|&c| usize::from(c) < self.metrics.len())
        });
        let seasons_fit = (self.seasons.is_empty() || self.seasons.len() == self.metrics.len())
            && self.seasons.iter().all(|s| s.profile.len() <= 1024);
        if shapes_fit && relation_fits && seasons_fit {
            Ok(())
        } else {
            Err(ModelError::Decode(
                "parameters whose arrays do not fit together".into(),
            ))
        }
    }

    /// Compact binary encoding: `FP`, the kind's number, the format version (u16 LE),
    /// then the body (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        let body = (
            self.config.as_ref(),
            &self.metrics,
            &self.interval,
            &self.relation,
            &self.seasons,
        );
        let out = header(PARAMS_MAGIC, FORMAT_VERSION as u16);
        postcard::to_extend(&body, out).expect("a Vec grows as needed")
    }

    /// Decode [`DetectorParams::to_bytes`]; refuses other kinds and versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        Self::from_bytes_with(bytes, &mut ConfigCache::default())
    }

    /// [`DetectorParams::from_bytes`], sharing the configuration with the parameters
    /// decoded before with `configs` when it is the same (byte for byte).
    pub fn from_bytes_with(bytes: &[u8], configs: &mut ConfigCache) -> Result<Self, ModelError> {
        check_header(bytes, PARAMS_MAGIC, FORMAT_VERSION as u16, "parameters")?;
        // A tuple's encoding is its parts' one after the other: the configuration first.
        let (config, rest) = configs.take(&bytes[5..])?;
        let (metrics, interval, relation, seasons): ParamsBody =
            postcard::from_bytes(rest).map_err(|e| ModelError::Decode(e.to_string()))?;
        let params = Self {
            kind: DetectorKind,
            format: DetectorFormat,
            config,
            metrics,
            interval,
            relation,
            seasons,
        };
        params.check()?;
        Ok(params)
    }

    /// The parameters of `name` and their index; `hint` is where they usually are.
    fn metric(&self, name: &str, hint: usize) -> Option<(usize, &MetricParams)> {
        let index = self.metrics.position(name, hint).ok()?;
        Some((index, &self.metrics[index]))
    }
}

/// Exponentially weighted mean and variance; the first observations get weight 1/n.
/// The variance is kept in `f32` (relative precision 1e-7 is plenty for a spread) and
/// the count in `u32`: 16 bytes instead of 24, six times per metric.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Running {
    pub(crate) mean: f64,
    var: f32,
    n: u32,
}

impl Running {
    pub(crate) fn learn(&mut self, value: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        let weight = alpha.max(1.0 / f64::from(self.n));
        let delta = value - self.mean;
        self.mean += weight * delta;
        let var = f64::from(self.var);
        self.var = (var + weight * (delta * (value - self.mean) - var)) as f32;
    }

    pub(crate) fn std(&self) -> f64 {
        f64::from(self.var).max(0.0).sqrt()
    }

    pub(crate) fn count(&self) -> u64 {
        u64::from(self.n)
    }
}

/// The spread of the prediction errors: a [`Running`] variance centred on zero, not on
/// the errors' mean (so it keeps no mean: 8 bytes, per metric and device). Written as
/// the `Running` it was, whose mean was set back to 0 after every update.
#[derive(Clone, Debug, Default)]
struct ErrorSpread {
    var: f32,
    n: u32,
}

impl ErrorSpread {
    /// [`Running::learn`] from a mean of 0, the same arithmetic.
    fn learn(&mut self, error: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        let weight = alpha.max(1.0 / f64::from(self.n));
        let mean = weight * error;
        let var = f64::from(self.var);
        self.var = (var + weight * (error * (error - mean) - var)) as f32;
    }

    fn std(&self) -> f64 {
        f64::from(self.var).max(0.0).sqrt()
    }
}

impl Serialize for ErrorSpread {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let running = Running {
            mean: 0.0,
            var: self.var,
            n: self.n,
        };
        running.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ErrorSpread {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Running { var, n, .. } = Running::deserialize(d)?;
        Ok(Self { var, n })
    }
}

/// [`Running`] in `f32` for statistics of log-space averages and distances, whose means
/// need no more precision (the scorer's spread floor is far above `f32` rounding): 12
/// bytes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct SmallRunning {
    mean: f32,
    var: f32,
    n: u32,
}

impl SmallRunning {
    fn learn(&mut self, value: f64, alpha: f64) {
        self.n = self.n.saturating_add(1);
        let weight = alpha.max(1.0 / f64::from(self.n));
        let mean = f64::from(self.mean);
        let delta = value - mean;
        let mean = mean + weight * delta;
        let var = f64::from(self.var);
        self.var = (var + weight * (delta * (value - mean) - var)) as f32;
        self.mean = mean as f32;
    }

    fn mean(&self) -> f64 {
        f64::from(self.mean)
    }

    fn std(&self) -> f64 {
        f64::from(self.var).max(0.0).sqrt()
    }

    fn count(&self) -> u64 {
        u64::from(self.n)
    }
}

/// Smallest spread of a log-space statistic: far above the rounding of its `f32` mean.
const MIN_LOG_STD: f64 = 1e-4;

/// Recent context of one metric, kept by trainer and scorer alike. Serialized as it
/// was with a [`crate::ring::Ring`] per history (`recent_raw`, `recent_values`,
/// `recent_shape`), so the trainer's state keeps its format with them in one buffer and
/// the values as steps.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "ContextWire")]
struct Context {
    /// NaN until the first value (NaN rather than `Option`: 8 bytes instead of 16).
    prediction: f64,
    last_value: f64,
    repeats: u32,
    /// The drift's own level (the fast smoother with each step bounded, see `observe`),
    /// as its offset from the prediction: small, so `f32` suffices, and it fits in what
    /// was padding.
    level_offset: f32,
    /// The repeat rate the scorer's parameters had when the current run began (NaN:
    /// none): a run is judged by the behaviour before it, or it would soon make itself
    /// look normal.
    run_start_repeat_rate: f32,
    /// Exponential average of the signed prediction errors (in error deviations).
    drift: f32,
    /// The values before `last_value`, as the steps between them (`STEPS`, see
    /// [`step`]), raw scores (`RAW`) and distances to the nearest prototype (`SHAPE`):
    /// 80 bytes and no allocation at the default configuration, where the rings in one
    /// allocation took 32 bytes, the allocation and its 60 bytes (three separate rings,
    /// before them, 72 bytes and three allocations).
    recent: Rings<3, CONTEXT_INLINE>,
}

/// Values a context keeps without an allocation: its rings at the default configuration
/// (5 steps for a shape of 6 values, 5 raw scores and 5 distances averaged).
const CONTEXT_INLINE: usize = 15;

/// The rings of [`Context::recent`].
const STEPS: usize = 0;
const RAW: usize = 1;
const SHAPE: usize = 2;

/// [`Context`] as the trainer's state holds it.
#[derive(Deserialize)]
#[serde(rename = "Context")]
struct ContextWire {
    prediction: f64,
    last_value: f64,
    repeats: u32,
    level_offset: f32,
    run_start_repeat_rate: f32,
    drift: f32,
    recent_raw: Ring<f32>,
    /// The last values, oldest first; the newest is `last_value`.
    recent_values: Ring<f64>,
    recent_shape: Ring<f32>,
}

impl TryFrom<ContextWire> for Context {
    type Error = &'static str;

    fn try_from(wire: ContextWire) -> Result<Self, Self::Error> {
        let mut recent = Rings::default();
        recent.restore(RAW, &wire.recent_raw)?;
        recent.restore(SHAPE, &wire.recent_shape)?;
        let values = &wire.recent_values;
        values.check()?;
        if !wire.last_value.is_nan() {
            let capacity = values.capacity().saturating_sub(1);
            for (older, newer) in values.iter().zip(values.iter().skip(1)) {
                recent.push(STEPS, step(newer - older), capacity);
            }
        }
        Ok(Self {
            prediction: wire.prediction,
            last_value: wire.last_value,
            repeats: wire.repeats,
            level_offset: wire.level_offset,
            run_start_repeat_rate: wire.run_start_repeat_rate,
            drift: wire.drift,
            recent,
        })
    }
}

impl Serialize for Context {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("Context", 9)?;
        out.serialize_field("prediction", &self.prediction)?;
        out.serialize_field("last_value", &self.last_value)?;
        out.serialize_field("repeats", &self.repeats)?;
        out.serialize_field("level_offset", &self.level_offset)?;
        out.serialize_field("run_start_repeat_rate", &self.run_start_repeat_rate)?;
        out.serialize_field("drift", &self.drift)?;
        out.serialize_field("recent_raw", &self.recent.wire(RAW))?;
        let mut values: Vec<f64> = self.values_newest_first().collect();
        values.reverse();
        let capacity = if values.is_empty() {
            0
        } else {
            self.recent.capacity(STEPS) + 1
        };
        out.serialize_field("recent_values", &Ring::holding(capacity, values))?;
        out.serialize_field("recent_shape", &self.recent.wire(SHAPE))?;
        out.end()
    }
}

impl Default for Context {
    fn default() -> Self {
        Self {
            prediction: f64::NAN,
            level_offset: 0.0,
            last_value: f64::NAN,
            repeats: 0,
            run_start_repeat_rate: f32::NAN,
            drift: 0.0,
            recent: Rings::default(),
        }
    }
}

/// A step between two successive values as a context keeps it: `f32`, whose rounding is
/// relative to the step, not to the values (a value far from zero that moves little, a
/// position or a meter, keeps its shape), within `f32`'s range. The price: a jump of `J`
/// moves the values before it by about `J / 2^25`, which matters only for a glitch tens
/// of millions of spreads high (the values before it then embed at the ±10 clamp for a
/// few readings, as the glitch itself does).
fn step(delta: f64) -> f32 {
    delta.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
}

/// The embedding of the current event: the last values normalised, and the time of day.
/// Written into `out`; false before the history fills a shape.
fn embed(
    context: &Context,
    tod: TimeOfDay,
    mean: f64,
    std: f64,
    config: &DetectorConfig,
    out: &mut [f64; MAX_DIMS],
) -> bool {
    let length = config.shape_length;
    if length == 0 || context.values_held() < length {
        return false;
    }
    let inverse = 1.0 / std.max(1e-9);
    let normalised = |v: f64| ((v - mean) * inverse).clamp(-10.0, 10.0);
    // Newest first: the last value exactly, then each older one a step back.
    let mut value = context.last_value;
    out[length - 1] = normalised(value);
    let steps = context.recent.iter(STEPS).rev();
    for (slot, step) in out[..length - 1].iter_mut().rev().zip(steps) {
        value -= f64::from(step);
        *slot = normalised(value);
    }
    out[config.shape_length] = config.time_of_day_weight * tod.cos;
    out[config.shape_length + 1] = config.time_of_day_weight * tod.sin;
    true
}

/// The time of day as a point on the unit circle; computed once per event.
#[derive(Clone, Copy, Debug)]
struct TimeOfDay {
    cos: f64,
    sin: f64,
    /// The event's time, for the seasonal profile.
    ts_ms: i64,
}

impl TimeOfDay {
    fn of(ts_ms: i64) -> Self {
        let phase = std::f64::consts::TAU * (ts_ms.rem_euclid(86_400_000) as f64 / 86_400_000.0);
        let (sin, cos) = phase.sin_cos();
        Self { cos, sin, ts_ms }
    }
}

/// The current shape as the context saw it.
struct Shape {
    log_average_distance: f64,
    /// Index of the nearest centroid and the squared distance to it.
    nearest: (usize, f64),
}

/// The nearest prototype and its squared distance. Computed in prototype units (the
/// vector is scaled once rather than every prototype element).
fn nearest<const E: usize>(prototypes: &Prototypes<E>, vector: &[f64]) -> Option<(usize, f64)> {
    let mut scaled = [0.0f64; MAX_DIMS];
    for (s, v) in scaled.iter_mut().zip(vector) {
        *s = v * UNITS_PER_VALUE;
    }
    let scaled = &scaled[..prototypes.dims()];
    prototypes
        .centroids()
        .enumerate()
        .map(|(i, c)| {
            let distance = c
                .iter()
                .zip(scaled)
                .map(|(&a, b)| {
                    let d = f64::from(a) - b;
                    d * d
                })
                .sum::<f64>();
            (i, distance * CENTROID_UNIT * CENTROID_UNIT)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// Natural logarithm in `f32` (about twice as fast as `f64`'s): the log-space averages
/// are compared with spreads of 1e-4 and more, far above `f32` precision.
fn fast_ln(x: f64) -> f64 {
    f64::from((x as f32).ln())
}

impl Context {
    /// How many of the last values the context holds: `last_value`, and one more per
    /// step.
    fn values_held(&self) -> usize {
        if self.last_value.is_nan() {
            0
        } else {
            self.recent.len(STEPS) + 1
        }
    }

    /// The last values, newest first: `last_value` exactly, then each older one a step
    /// back.
    fn values_newest_first(&self) -> impl Iterator<Item = f64> + '_ {
        let older = self
            .recent
            .iter(STEPS)
            .rev()
            .scan(self.last_value, |value, step| {
                *value -= f64::from(step);
                Some(*value)
            });
        std::iter::once(self.last_value)
            .chain(older)
            .take(self.values_held())
    }

    /// At a run's first repeat, remember the repeat rate it is to be judged by: only
    /// metrics that almost never repeat are judged by the rate before the run; for the
    /// others (and runs begun while warming up) the current rate.
    fn note_run_start(&mut self, metric: &MetricParams, config: &DetectorConfig) {
        if self.repeats == 1 {
            let rare = u64::from(metric.n) >= config.warmup_events
                && f64::from(metric.repeat_rate) < RARE_REPEAT_RATE;
            self.run_start_repeat_rate = if rare { metric.repeat_rate } else { f32::NAN };
        } else if self.repeats == 0 {
            self.run_start_repeat_rate = f32::NAN;
        }
    }

    /// How unlikely the current run of repeated values is, once it is long enough to
    /// judge (`None` before, or without stuck detection).
    fn stuck_score(&self, metric: &MetricParams, config: &DetectorConfig) -> Option<f64> {
        if !config.stuck_detection || self.repeats + 1 < config.stuck_min_repeats {
            return None;
        }
        // NaN (no rate from before the run) leaves the current rate.
        let rate = metric.repeat_rate.min(self.run_start_repeat_rate);
        Some(tail_score(
            self.repeats as f64 * f64::from(rate).max(MIN_REPEAT_RATE).ln(),
        ))
    }

    /// The current shape (of the values `observe` took), its nearest centroid and the
    /// averaged log distance to it (none before the history fills a shape or while
    /// there is no centroid).
    fn observe_shape<const E: usize>(
        &mut self,
        tod: TimeOfDay,
        metric: (f64, f64, &Prototypes<E>),
        config: &DetectorConfig,
        vector: &mut [f64; MAX_DIMS],
    ) -> Option<Shape> {
        let (mean, std, prototypes) = metric;
        if !embed(self, tod, mean, std, config, vector) {
            return None;
        }
        let dims = config.shape_length + 2;
        let nearest = nearest(prototypes, &vector[..dims])?;
        (self.recent).push(SHAPE, nearest.1 as f32, config.averaging_window);
        let sum: f64 = self.recent.iter(SHAPE).map(f64::from).sum();
        let average = sum / self.recent.len(SHAPE) as f64;
        Some(Shape {
            log_average_distance: fast_ln(average + 1e-3),
            nearest,
        })
    }

    /// Raw score of `value` against the current prediction, then advance the context.
    /// Returns (raw, prediction, ln of the average of recent raw scores including this
    /// one).
    #[inline(always)]
    fn observe(&mut self, value: f64, error_std: f64, config: &DetectorConfig) -> (f64, f64, f64) {
        let prediction = if self.prediction.is_nan() {
            value
        } else {
            self.prediction
        };
        let scale = error_std.max(1e-12);
        // One division for both the error and the drift's lean.
        let inverse = 1.0 / scale;
        let signed = ((value - prediction) * inverse).clamp(-1e6, 1e6);
        let raw = signed.abs();
        self.prediction = prediction + config.predictor_alpha * (value - prediction);
        // The drift leans on its own level, which a single wild value moves by at most
        // DRIFT_STEP error deviations' worth: otherwise the smoother's slow recovery from
        // a spike leans one way for a dozen readings and looks like a drift. A ramp's
        // small steps move both alike.
        let level = prediction + f64::from(self.level_offset);
        let bound = DRIFT_STEP * scale;
        let leaning = ((value - level) * inverse).clamp(-5.0, 5.0);
        let level = level + config.predictor_alpha * (value - level).clamp(-bound, bound);
        self.level_offset = (level - self.prediction) as f32;
        let drift = f64::from(self.drift);
        self.drift = (drift + config.drift_alpha * (leaning - drift)) as f32;
        self.repeats = if self.last_value == value {
            self.repeats + 1
        } else {
            0
        };
        // Every value counts, also in a scorer whose parameters do not know the metric
        // yet: its shapes begin with the real last values once they do.
        if !self.last_value.is_nan() {
            let capacity = config.shape_length.saturating_sub(1);
            self.recent
                .push(STEPS, step(value - self.last_value), capacity);
        }
        self.last_value = value;
        (self.recent).push(RAW, raw as f32, config.averaging_window);
        let sum: f64 = self.recent.iter(RAW).map(f64::from).sum();
        let average = sum / self.recent.len(RAW) as f64;
        // Averages of heavy-tailed errors are far from Gaussian; their logarithm is close.
        (raw, prediction, fast_ln(average + 1e-3))
    }
}

/// The numbers of a trainer's prototype.
const WEIGHT: usize = 0;
const RADIUS: usize = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct MetricTrainer {
    context: Context,
    error: ErrorSpread,
    average: SmallRunning,
    value: Running,
    shape: SmallRunning,
    drift: SmallRunning,
    /// Prototypes (i16, see `CENTROID_UNIT`), each with its use weight and radius
    /// ([`WEIGHT`], [`RADIUS`]). Written as the two boxed slices they were.
    prototypes: Prototypes<2>,
    typical_distance: SmallRunning,
    min: f64,
    max: f64,
    repeat_rate: f32,
    /// Observations learned (u32: a device sending every second for 136 years).
    n: u32,
}

/// The learning half, one per device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetectorTrainer {
    /// Shared with the service's other trainers of the same model (320 bytes each
    /// otherwise).
    #[serde(skip)]
    config: Arc<DetectorConfig>,
    /// By name, the names shared with the other devices that have the same ones.
    metrics: Named<MetricTrainer>,
    relation: RelationTrainer,
    interval: Running,
    /// Fraction of intervals in which samples went missing.
    gap_rate: f64,
    /// Mean of `ln((1 + k) / 2)` over the gaps seen (`k` samples missing).
    gap_log_length: SmallRunning,
    last_ts: OptionalMs,
    first_ts: OptionalMs,
    /// Seasonal profiles, one per metric in the order of `metrics`, or none (a boxed
    /// slice: the same bytes as the `Vec` it was, 8 less in memory).
    seasons: Box<[SeasonTrainer]>,
    /// Written as the `u64` it was (u32: a device sending every second for 136 years).
    #[serde(with = "count_as_u64")]
    events: u32,
}

/// Serde of a count kept as `u32` and written as the `u64` it was (the same bytes: both
/// are varints in the binary form); a larger one read saturates.
pub(crate) mod count_as_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(count: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::from(*count))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let count = u64::deserialize(d)?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

/// A time in milliseconds, or none (`i64::MIN`, which no clock gives): 8 bytes where an
/// `Option<i64>` takes 16, kept per device by the trainer and the scorer. Written as the
/// `Option<i64>` it was.
#[derive(Clone, Copy, Debug, PartialEq)]
struct OptionalMs(i64);

impl OptionalMs {
    const NONE: Self = Self(i64::MIN);

    fn some(ms: i64) -> Self {
        Self(ms)
    }

    fn get(self) -> Option<i64> {
        (self != Self::NONE).then_some(self.0)
    }

    /// The later of the time held and `ms`.
    fn advance_to(&mut self, ms: i64) {
        self.0 = self.get().map_or(ms, |held| held.max(ms));
    }
}

impl Default for OptionalMs {
    fn default() -> Self {
        Self::NONE
    }
}

impl Serialize for OptionalMs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for OptionalMs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map_or(Self::NONE, Self::some))
    }
}

/// The learning half of a metric's seasonal profile.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct SeasonTrainer {
    /// The usual value per bin (NaN: not visited yet).
    profile: Vec<f32>,
    /// Exponential average of the residuals from the profile, in value deviations.
    lean: f32,
    /// Long-run distribution of the lean.
    lean_stats: SmallRunning,
    /// Squared residuals from the profile, in value variances.
    residual: SmallRunning,
}

/// Smallest error standard deviation relative to the value's magnitude, so a constant
/// series stays scorable.
const MIN_RELATIVE_ERROR_STD: f64 = 1e-6;

impl DetectorTrainer {
    /// A fresh trainer; `config` is validated by the caller.
    pub fn new(config: impl Into<Arc<DetectorConfig>>) -> Self {
        Self {
            config: config.into(),
            metrics: Named::default(),
            relation: RelationTrainer::default(),
            interval: Running::default(),
            gap_rate: 0.0,
            gap_log_length: SmallRunning::default(),
            last_ts: OptionalMs::NONE,
            first_ts: OptionalMs::NONE,
            seasons: Box::default(),
            events: 0,
        }
    }

    /// Everything the trainer has learned, for restoring it after a restart or a
    /// rebalance ([`DetectorTrainer::from_state_bytes`]). The configuration is not
    /// included: it is the service's.
    pub fn state_bytes(&self) -> Vec<u8> {
        let out = header(STATE_MAGIC, STATE_VERSION);
        postcard::to_extend(self, out).expect("a Vec grows as needed")
    }

    /// A trainer that continues exactly where the one that wrote `bytes` stopped.
    pub fn from_state_bytes(
        config: impl Into<Arc<DetectorConfig>>,
        bytes: &[u8],
    ) -> Result<Self, ModelError> {
        check_header(bytes, STATE_MAGIC, STATE_VERSION, "trainer state")?;
        let mut trainer: Self =
            postcard::from_bytes(&bytes[5..]).map_err(|e| ModelError::Decode(e.to_string()))?;
        let config = config.into();
        config.check()?;
        trainer.config = config;
        if !trainer.is_consistent() {
            return Err(ModelError::Decode(
                "trainer state whose parts do not fit together".into(),
            ));
        }
        Ok(trainer)
    }

    /// Whether a decoded trainer's parts fit together (its metrics are sorted and unique
    /// once decoded): the relation's columns among them, one seasonal profile per metric
    /// or none, each metric's prototypes whole (fuzz target `model_params`).
    fn is_consistent(&self) -> bool {
        let dims = self.config.shape_length + 2;
        let shapes_fit = (self.metrics.values())
            .iter()
            .all(|m| m.prototypes.is_empty() || m.prototypes.dims() == dims);
        let seasons_fit = self.seasons.is_empty() || self.seasons.len() == self.metrics.len();
        shapes_fit
            && seasons_fit
            && self.metrics.len() <= usize::from(u8::MAX)
            && self.relation.is_consistent(self.metrics.len())
    }

    /// Refit the relation model now (it refits itself every `relation.refit_every`
    /// events; this is for measuring the cost of one refit).
    pub fn refit_relations(&mut self) {
        self.relation.refit(&self.config.relation);
    }

    /// Keep one seasonal profile per metric while the device's metrics fit the budget,
    /// none otherwise (a metric was just inserted at `index`).
    fn season_inserted(&mut self, index: usize) {
        let config = &self.config;
        let fits = config.season_bins > 0
            && self.metrics.len() * config.season_bins <= config.season_budget;
        if !fits {
            self.seasons = Box::default();
        } else if self.seasons.len() + 1 == self.metrics.len() {
            let mut seasons = std::mem::take(&mut self.seasons).into_vec();
            seasons.insert(index, SeasonTrainer::default());
            self.seasons = seasons.into_boxed_slice();
        } else {
            self.seasons = vec![SeasonTrainer::default(); self.metrics.len()].into();
        }
    }

    /// Whether the seasonal profile has seen enough periods to count.
    fn season_ready(&self) -> bool {
        let config = &self.config;
        let period = f64::from(config.season_days) * 86_400_000.0;
        match (self.first_ts.get(), self.last_ts.get()) {
            (Some(first), Some(last)) => {
                config.season_bins > 0 && (last - first) as f64 >= config.season_periods * period
            }
            _ => false,
        }
    }

    /// Where `ts_ms` falls in the seasonal period (none with the check off).
    fn phase(&self, ts_ms: i64) -> Option<Phase> {
        let config = &self.config;
        if config.season_bins == 0 {
            return None;
        }
        let bin_ms = f64::from(config.season_days) * 86_400_000.0 / config.season_bins as f64;
        let interval = if self.interval.count() >= config.warmup_events {
            self.interval.mean.max(1.0)
        } else {
            bin_ms
        };
        let per_visit = (bin_ms / interval).max(1.0);
        let memory = 1.0 / (config.season_memory * per_visit);
        Some(Phase {
            bin: season_bin(ts_ms, config.season_bins, config.season_days),
            alpha: memory
                .max(self.season_mean_weight(ts_ms, bin_ms, interval))
                .clamp(1e-6, 1.0),
            ready: self.season_ready(),
        })
    }

    /// The weight of a plain mean of the readings the bin of `ts_ms` has seen, about:
    /// its visits in the whole periods since the first reading, and this visit so far.
    /// A young bin is the average of its readings, not its first reading remembered for
    /// weeks (with a 7-period memory, the first reading of a bin weighed as much as the
    /// next 84 of a 5-minute series); the exponential memory takes over once the bin
    /// holds more readings than it remembers.
    fn season_mean_weight(&self, ts_ms: i64, bin_ms: f64, interval: f64) -> f64 {
        let Some(first_ts) = self.first_ts.get() else {
            return 1.0;
        };
        let period = bin_ms * self.config.season_bins as f64;
        let since = (ts_ms - first_ts).max(0) as f64;
        let periods = (since / period).floor();
        let into_bin = (ts_ms.rem_euclid(period as i64) as f64) % bin_ms;
        let seen_ms = periods * bin_ms + into_bin.min(since - periods * period);
        1.0 / (seen_ms / interval + 1.0)
    }

    fn learn_interval(&mut self, ts_ms: i64) {
        let config = &self.config;
        if let Some(last_ts) = self.last_ts.get() {
            let interval = (ts_ms - last_ts) as f64;
            let known = self.interval.count() >= config.warmup_events;
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
                // How often a device drops samples is a slow habit: remembered over about
                // 1 / GAP_ALPHA intervals.
                let weight = GAP_ALPHA.max(1.0 / (self.interval.count() as f64));
                let gap = if missed > 0.0 { 1.0 } else { 0.0 };
                self.gap_rate += weight * (gap - self.gap_rate);
                if missed > 0.0 {
                    self.gap_log_length
                        .learn(((1.0 + missed) / 2.0).ln(), GAP_ALPHA);
                }
            }
        }
        self.last_ts.advance_to(ts_ms);
    }

    fn learn_relation(
        &mut self,
        observation: &Observation<'_>,
        seen: Option<&[f64; SEEN_INDEXES]>,
    ) {
        let config = &self.config;
        let mut values = [0.0; MAX_COLUMNS];
        let mut complete = true;
        for (slot, &column) in values.iter_mut().zip(self.relation.columns()) {
            let column = usize::from(column);
            let value = match seen.and_then(|s| s.get(column)) {
                Some(&value) => value,
                None => {
                    let name = &self.metrics.names()[column];
                    observation.metrics.get(name).copied().unwrap_or(f64::NAN)
                }
            };
            *slot = value;
            complete &= !value.is_nan();
        }
        let m = self.relation.columns().len();
        self.relation.update(
            &config.relation,
            config.averaging_window,
            config.likelihood_alpha,
            self.metrics.len(),
            complete.then_some(&values[..m]),
        );
    }
}

/// Where an event falls in the seasonal period, how fast the profile learns there, and
/// whether the profile counts yet.
#[derive(Clone, Copy, Debug)]
struct Phase {
    bin: usize,
    alpha: f64,
    ready: bool,
}

/// The bin of `ts_ms` in a period of `days` days cut into `bins` bins.
fn season_bin(ts_ms: i64, bins: usize, days: u32) -> usize {
    let period = i64::from(days) * 86_400_000;
    let fraction = ts_ms.rem_euclid(period) as f64 / period as f64;
    ((fraction * bins as f64) as usize).min(bins.saturating_sub(1))
}

/// The lean from the seasonal profile after `value`, whose profile value is `usual`.
fn lean_step(lean: f32, value: f64, usual: f64, std: f64, alpha: f64) -> f32 {
    if usual.is_nan() {
        return lean;
    }
    let residual = ((value - usual) / std.max(1e-12)).clamp(-10.0, 10.0);
    let lean = f64::from(lean);
    (lean + alpha * (residual - lean)) as f32
}

/// Learn the seasonal profile at `phase` and advance the lean from it; `value_std` and
/// `n` are the metric's spread and readings.
fn learn_season(
    season: &mut SeasonTrainer,
    value: f64,
    (value_std, n): (f64, u64),
    phase: Phase,
    config: &DetectorConfig,
) {
    if season.profile.len() != config.season_bins {
        season.profile = vec![f32::NAN; config.season_bins];
    }
    let slot = &mut season.profile[phase.bin];
    let usual = f64::from(*slot);
    season.lean = lean_step(season.lean, value, usual, value_std, config.season_alpha);
    *slot = if slot.is_nan() {
        value as f32
    } else {
        (usual + phase.alpha * (value - usual)) as f32
    };
    if phase.ready && n > config.history_events && !usual.is_nan() {
        let residual = ((value - usual) / value_std.max(1e-12)).clamp(-10.0, 10.0);
        season
            .residual
            .learn(residual * residual, config.likelihood_alpha);
        season
            .lean_stats
            .learn(f64::from(season.lean), config.likelihood_alpha);
    }
}

/// Learn one value of one metric.
fn learn_metric(
    metric: &mut MetricTrainer,
    value: f64,
    tod: TimeOfDay,
    cap: usize,
    config: &DetectorConfig,
) {
    metric.n = metric.n.saturating_add(1);
    let error_std = metric
        .error
        .std()
        .max(MIN_RELATIVE_ERROR_STD * value.abs())
        .max(1e-12);
    let had_prediction = metric.context.prediction;
    let (_, _, average) = metric.context.observe(value, error_std, config);
    if !had_prediction.is_nan() {
        let prediction = had_prediction;
        metric.error.learn(value - prediction, config.error_alpha);
    }
    if u64::from(metric.n) > config.averaging_window as u64 {
        metric.average.learn(average, config.likelihood_alpha);
    }
    // The drift average's spread is learned only once the error scale it is measured in
    // has settled: the first readings' errors, in units of a scale still being learned,
    // would inflate it for the next thousand readings and hide real drifts.
    if u64::from(metric.n) > DRIFT_SETTLE_EVENTS {
        metric
            .drift
            .learn(f64::from(metric.context.drift), config.likelihood_alpha);
    }
    learn_shape_of(metric, tod, cap, config);
    metric.value.learn(value, config.error_alpha / 10.0);
    if u64::from(metric.n) > config.warmup_events {
        metric.max -= config.range_decay * (metric.max - metric.value.mean).max(0.0);
        metric.min += config.range_decay * (metric.value.mean - metric.min).max(0.0);
    }
    metric.min = metric.min.min(value);
    metric.max = metric.max.max(value);
    let target = if metric.context.repeats > 0 { 1.0 } else { 0.0 };
    let rate = f64::from(metric.repeat_rate);
    metric.repeat_rate =
        (rate + config.error_alpha.max(1.0 / f64::from(metric.n)) * (target - rate)) as f32;
}

fn learn_shape_of(metric: &mut MetricTrainer, tod: TimeOfDay, cap: usize, config: &DetectorConfig) {
    let (mean, std) = (metric.value.mean, metric.value.std());
    let mut vector = [0.0; MAX_DIMS];
    let shape =
        metric
            .context
            .observe_shape(tod, (mean, std, &metric.prototypes), config, &mut vector);
    if let Some(shape) = shape {
        if u64::from(metric.n) > config.warmup_events {
            metric
                .shape
                .learn(shape.log_average_distance, config.likelihood_alpha);
        }
        learn_shape(metric, &vector, Some(shape.nearest), cap, config);
    } else if metric.prototypes.is_empty()
        && embed(&metric.context, tod, mean, std, config, &mut vector)
    {
        learn_shape(metric, &vector, None, cap, config);
    }
}

fn quantize(v: f64) -> i16 {
    (v * UNITS_PER_VALUE).round().clamp(-32767.0, 32767.0) as i16
}

impl Trainer for DetectorTrainer {
    type Params = DetectorParams;

    fn update(&mut self, observation: &Observation<'_>) {
        self.events = self.events.saturating_add(1);
        self.learn_interval(observation.ts_ms);
        if self.first_ts.get().is_none() {
            self.first_ts = OptionalMs::some(observation.ts_ms);
        }
        let tod = TimeOfDay::of(observation.ts_ms);
        // Only devices within the profile budget keep profiles (and need the phase).
        let phase = if self.seasons.is_empty() && !self.metrics.is_empty() {
            None
        } else {
            self.phase(observation.ts_ms)
        };
        // Values by metric index for the relation model; `None` once an insertion has
        // moved the indexes (then it looks them up).
        let mut seen = Some([f64::NAN; SEEN_INDEXES]);
        for (hint, (name, &value)) in observation.metrics.iter().enumerate() {
            let index = match self.metrics.position(name, hint) {
                Ok(i) => i,
                Err(i) => {
                    let fresh = MetricTrainer {
                        min: value,
                        max: value,
                        ..MetricTrainer::default()
                    };
                    self.metrics.insert(i, name, fresh);
                    self.relation.metric_inserted(i);
                    self.season_inserted(i);
                    seen = None;
                    i
                }
            };
            if let Some(slot) = seen.as_mut().and_then(|s| s.get_mut(index)) {
                *slot = value;
            }
            let cap = self.config.centroid_cap(self.metrics.len());
            let metric = &mut self.metrics[index];
            // The spread the scorer's parameters had before this reading.
            let value_std = metric.value.std();
            learn_metric(metric, value, tod, cap, &self.config);
            if let (Some(season), Some(phase)) = (self.seasons.get_mut(index), phase) {
                let stats = (value_std, u64::from(metric.n));
                learn_season(season, value, stats, phase, &self.config);
            }
        }
        self.learn_relation(observation, seen.as_ref());
    }

    fn snapshot(&self) -> DetectorParams {
        let interval = (self.interval.count() >= self.config.warmup_events).then(|| Cadence {
            interval_ms: self.interval.mean,
            gap_rate: self.gap_rate as f32,
            gap_tail: gap_tail(&self.gap_log_length) as f32,
        });
        let season_ready = self.season_ready();
        let relation = self.relation.params().map(|fitted| {
            let mut relation = fitted.clone();
            relation.columns = self.relation.columns().into();
            relation
        });
        DetectorParams {
            kind: DetectorKind,
            format: DetectorFormat,
            config: self.config.clone(),
            metrics: self.metrics.map(metric_params),
            seasons: self
                .seasons
                .iter()
                .zip(self.metrics.values())
                .map(|(season, m)| {
                    let value = (m.value.mean, m.value.std());
                    season_params(season, value, season_ready, &self.config)
                })
                .collect(),
            interval,
            relation,
        }
    }

    fn events(&self) -> u64 {
        u64::from(self.events)
    }
}

/// A profile counts once it is ready and explains the metric's variance well enough.
fn season_params(
    season: &SeasonTrainer,
    (value_mean, value_std): (f64, f64),
    ready: bool,
    config: &DetectorConfig,
) -> SeasonParams {
    let counts = ready
        && season.lean_stats.count() >= config.season_events.max(1)
        && season.residual.mean() <= config.season_unexplained;
    let unit = (value_std / 1000.0).max(1e-12);
    let quantize = |usual: f32| {
        if usual.is_nan() {
            i16::MIN
        } else {
            ((f64::from(usual) - value_mean) / unit)
                .round()
                .clamp(-32767.0, 32767.0) as i16
        }
    };
    SeasonParams {
        profile: if counts {
            season.profile.iter().map(|&u| quantize(u)).collect()
        } else {
            Vec::new()
        },
        offset: value_mean,
        unit: unit as f32,
        lean_mean: season.lean_stats.mean() as f32,
        lean_std: season.lean_stats.std() as f32,
    }
}

fn metric_params(m: &MetricTrainer) -> MetricParams {
    let magnitude = m.max.abs().max(m.min.abs());
    MetricParams {
        error_std: m
            .error
            .std()
            .max(MIN_RELATIVE_ERROR_STD * magnitude)
            .max(1e-12),
        average_mean: m.average.mean,
        average_std: m.average.std() as f32,
        drift_mean: m.drift.mean,
        drift_std: m.drift.std() as f32,
        min: m.min,
        max: m.max,
        repeat_rate: m.repeat_rate,
        n: m.n,
        value_mean: m.value.mean,
        value_std: m.value.std(),
        prototypes: m.prototypes.keeping([RADIUS]),
        shape_mean: m.shape.mean,
        shape_std: m.shape.std() as f32,
    }
}

/// Online k-means with novelty: a shape far from every centroid (beyond `vigilance`
/// typical radii, or simply far while there is room) becomes a centroid of its own,
/// replacing the least used one when memory is full; otherwise the nearest centroid
/// moves towards it, ever slower but never below a floor, so the memory keeps adapting.
fn learn_shape(
    metric: &mut MetricTrainer,
    vector: &[f64; MAX_DIMS],
    nearest: Option<(usize, f64)>,
    cap: usize,
    config: &DetectorConfig,
) {
    let dims = config.shape_length + 2;
    let vector = &vector[..dims];
    let Some((index, distance)) = nearest else {
        add_prototype(&mut metric.prototypes, vector, 1.0);
        return;
    };
    // Before any member distance was learned, one unit of normalised squared distance.
    let typical = if metric.typical_distance.count() == 0 {
        1.0
    } else {
        metric.typical_distance.mean().max(1e-6)
    };
    let prototypes = &mut metric.prototypes;
    let count = prototypes.len();
    let novel = config.shape_vigilance > 0.0
        && u64::from(metric.n) > config.warmup_events
        && distance
            > config.shape_vigilance * f64::from(prototypes.number(index, RADIUS)).max(typical);
    if novel || (count < cap && distance > 0.5) {
        let radius = (typical * config.new_radius_fraction) as f32;
        if count < cap {
            add_prototype(prototypes, vector, radius);
        } else {
            let least = (0..count)
                .min_by(|&a, &b| {
                    let weight = |index| prototypes.number(index, WEIGHT);
                    weight(a).total_cmp(&weight(b))
                })
                .unwrap_or(0);
            for (c, &v) in prototypes.centroid_mut(least).iter_mut().zip(vector) {
                *c = quantize(v);
            }
            prototypes.set_number(least, WEIGHT, 1.0);
            prototypes.set_number(least, RADIUS, radius);
        }
        return;
    }
    metric.typical_distance.learn(distance, config.error_alpha);
    let weight = prototypes.number(index, WEIGHT) + 1.0;
    prototypes.set_number(index, WEIGHT, weight);
    let rate = (1.0 / f64::from(weight)).max(0.01);
    let radius = prototypes.number(index, RADIUS);
    let radius = radius + (rate * (distance - f64::from(radius))) as f32;
    prototypes.set_number(index, RADIUS, radius);
    for (c, v) in prototypes.centroid_mut(index).iter_mut().zip(vector) {
        let current = f64::from(*c) * CENTROID_UNIT;
        *c = quantize(current + rate * (v - current));
    }
    // Slowly forget, so rarely used centroids are the ones replaced.
    prototypes.update_numbers(WEIGHT, |weight| weight * 0.999);
}

/// A new prototype, of use weight 1.
fn add_prototype(prototypes: &mut Prototypes<2>, vector: &[f64], radius: f32) {
    prototypes.push(vector.iter().map(|&v| quantize(v)), [1.0, radius]);
}

/// Everything the per-metric score looks at for one event.
struct Reading<'a> {
    value: f64,
    prediction: f64,
    raw: f64,
    /// ln of the average of recent raw scores.
    average: f64,
    drift: f64,
    shape: Option<&'a Shape>,
    /// The seasonal lean's z-score and the profile's value now, once the profile counts.
    season: Option<(f64, f64)>,
    /// The range the value is judged by (see [`Excursion`]).
    range: (f64, f64),
    /// Readings in a row, before this one, beyond that range by more than its tolerance.
    beyond_run: u32,
}

/// A value's excursion beyond its range, judged by the range *before it began*, as a
/// stuck run is judged by the repeat rate before it: the trainer's range follows every
/// new extreme, so a fault that drives a value steadily into new territory would make
/// each reading only a slight new extreme. The excursion ends when the value returns
/// inside that range, or when the value's long-run mean has itself moved beyond it (the
/// new level has become the usual one). The scorer's own context.
///
/// Boxed, and only while there is one: excursions are rare, and the box is 8 bytes where
/// its state is 24, per metric and device.
#[derive(Clone, Debug, Default)]
struct Excursion(Option<Box<ExcursionState>>);

#[derive(Clone, Debug, Default, PartialEq)]
struct ExcursionState {
    /// The range when the excursion began; `None` while the value is inside its range.
    held: Option<(f64, f64)>,
    /// Readings in a row beyond the range by more than its tolerance.
    beyond_run: u32,
}

impl Excursion {
    fn held(&self) -> Option<(f64, f64)> {
        self.0.as_ref().and_then(|state| state.held)
    }

    fn beyond_run(&self) -> u32 {
        self.0.as_ref().map_or(0, |state| state.beyond_run)
    }

    fn hold(&mut self, range: Option<(f64, f64)>) {
        self.change(|state| state.held = range);
    }

    fn set_beyond_run(&mut self, run: u32) {
        self.change(|state| state.beyond_run = run);
    }

    /// Change the state, keeping a box only while it is not the default (and allocating
    /// none for a change that leaves it so: most readings are no excursion).
    fn change(&mut self, change: impl FnOnce(&mut ExcursionState)) {
        let none = ExcursionState::default();
        match &mut self.0 {
            Some(state) => {
                change(state);
                if **state == none {
                    self.0 = None;
                }
            }
            None => {
                let mut state = ExcursionState::default();
                change(&mut state);
                if state != none {
                    self.0 = Some(Box::new(state));
                }
            }
        }
    }

    /// The range to judge `value` by, advancing the excursion.
    fn range(&mut self, metric: &MetricParams, config: &DetectorConfig, value: f64) -> (f64, f64) {
        let current = (metric.min, metric.max);
        if !config.range_holds || u64::from(metric.n) < config.range_events {
            self.hold(None);
            return current;
        }
        if let Some((min, max)) = self.held() {
            let back = value >= min && value <= max;
            let settled = metric.value_mean < min || metric.value_mean > max;
            if back || settled {
                self.hold(None);
            }
        } else if value > metric.max || value < metric.min {
            self.hold(Some(current));
        }
        self.held().unwrap_or(current)
    }
}

/// Whether the current shape lies close to a prototype (once shapes count at all).
fn familiar(metric: &MetricParams, config: &DetectorConfig, shape: &Shape) -> bool {
    if config.familiar_ratio <= 0.0 || u64::from(metric.n) < config.novelty_events {
        return false;
    }
    let (index, distance) = shape.nearest;
    let radius = metric
        .prototypes
        .get_number(index, 0)
        .map_or(1.0, f64::from);
    distance <= config.familiar_ratio * radius.max(1e-6)
}

/// The score of a metric with enough history: the likelihood of its recent prediction
/// errors and shapes, its drift, and whether it left its range.
fn history_score(
    metric: &MetricParams,
    config: &DetectorConfig,
    r: &Reading<'_>,
) -> (f64, Cause, bool) {
    let z = (r.average - f64::from(metric.average_mean))
        / f64::from(metric.average_std).max(MIN_LOG_STD);
    let mut score = upper_score(z);
    let mut cause = Cause::Deviation {
        z: r.raw * (r.value - r.prediction).signum(),
    };
    let (min, max) = r.range;
    // Beyond the range as the range check means it, by more than its tolerance: the
    // extremes relax, so a value a hair beyond them (a square wave's daily switch back
    // to the level it held yesterday) is not beyond every value seen.
    let margin = config.range_tolerance * (max - min);
    let beyond_range = r.value > max + margin || r.value < min - margin;
    if config.outlier_z_scale > 0.0 && beyond_range {
        let outlier = tail_score(ln_two_sided_tail(r.raw / config.outlier_z_scale));
        if outlier > score {
            score = outlier;
        }
    }
    if let Some(shape) = r.shape {
        shape_score(metric, config, shape, &mut score, &mut cause);
    }
    if config.drift_detection {
        // A floor on the spread: a series learned as perfectly regular must not call
        // every tiny lean a drift.
        let z = (r.drift - f64::from(metric.drift_mean)) / f64::from(metric.drift_std).max(0.05);
        let drift = two_sided_score(z);
        if drift > score {
            score = drift;
            cause = Cause::Drift { z };
        }
    }
    if let Some((z, usual)) = r.season {
        let seasonal = two_sided_score(z);
        if seasonal > score {
            score = seasonal;
            cause = Cause::Seasonal { z, usual };
        }
    }
    let ranged = range_score(metric, config, r.value, r.range, r.beyond_run);
    if ranged > score {
        score = ranged;
        cause = Cause::OutOfRange { min, max };
    }
    (score, cause, ranged > 0.0)
}

/// Raise `score` (and name the `cause`) where the metric's recent shape is unlikely or
/// new; lower it where a familiar shape explains the deviation.
fn shape_score(
    metric: &MetricParams,
    config: &DetectorConfig,
    shape: &Shape,
    score: &mut f64,
    cause: &mut Cause,
) {
    let z = (shape.log_average_distance - f64::from(metric.shape_mean))
        / f64::from(metric.shape_std).max(MIN_LOG_STD)
        / config.shape_z_scale.max(1e-9);
    let likely = upper_score(z);
    if familiar(metric, config, shape) {
        // The deviation is explained by a shape seen before at this time of day.
        *score = score.min(likely);
    }
    if likely > *score {
        *score = likely;
        *cause = Cause::NewShape { ratio: 0.0 };
    }
    if config.shape_vigilance > 0.0 && u64::from(metric.n) >= config.novelty_events {
        let (index, distance) = shape.nearest;
        let radius = (metric.prototypes.get_number(index, 0))
            .map_or(1.0, f64::from)
            .max(1e-6);
        let ratio = distance / (config.shape_vigilance * radius);
        let mut novel = 0.5 + 0.5 * (1.0 - 1.0 / ratio);
        if ratio > 1.0 && novel > *score && config.shape_prior > 0.0 {
            novel = novel.min(tail_score(ln_upper_tail(z) + config.shape_prior.ln()));
        }
        if ratio > 1.0 && novel > *score {
            *score = novel;
            *cause = Cause::NewShape { ratio };
        }
    }
}

/// The score of a value beyond the seen range (0 inside it, or before the range counts).
/// Two pieces of evidence, combined as independent: how improbable the value is under
/// the long-run distribution, and how far it lies beyond the range in units of the
/// prediction error's spread. Noise leaves a relaxed range by a fraction of its spread;
/// a fault jumps out of it by many, or stays out (`beyond_run`: readings in a row
/// beyond it before this one, see [`SUSTAINED_EXIT_READINGS`]).
fn range_score(
    metric: &MetricParams,
    config: &DetectorConfig,
    value: f64,
    (min, max): (f64, f64),
    beyond_run: u32,
) -> f64 {
    let excess = (value - max).max(min - value);
    if max <= min || excess <= 0.0 || u64::from(metric.n) < config.range_events {
        return 0.0;
    }
    // A positive quantity (a count, a rate, a duration) falling below its range is
    // judged on its own, multiplicative scale: a fall to a hundredth of its least value
    // is far beyond its range however small the fall is next to its peaks. (Upward
    // exits stay additive: on that scale the spikes of positive series look small.)
    let multiplicative = config.range_log_scale
        && min > 0.0
        && value > 0.0
        && value < min
        && metric.value_mean > 0.0
        && metric.value_mean < ZERO_BOUND_SPREADS * metric.value_std;
    let (fraction, ln_value_tail) = if multiplicative {
        let fraction = (min / value).ln() / (max / min).ln();
        (fraction, ln_lognormal_tail(metric, value))
    } else {
        let z = (value - metric.value_mean) / metric.value_std.max(1e-12);
        (excess / (max - min), ln_two_sided_tail(z))
    };
    if fraction <= config.range_tolerance {
        return 0.0;
    }
    // Graded, so that the threshold can tell a slight new extreme from a wild one.
    let beyond = (fraction - config.range_tolerance).min(1.0);
    let ranged = config.range_score * (0.9 + 0.1 * beyond);
    // Noise leaves the range for a reading or a few; a value that stays beyond it is
    // not noise, however slight each reading's exit (a machine running cold for hours).
    // On the additive scale only: the extremes relax additively, which on the log scale
    // near zero is a large step (a cycle's broad trough would stay "beyond" its relaxed
    // least value every period).
    let sustained = !multiplicative && beyond_run + 1 >= SUSTAINED_EXIT_READINGS;
    if config.range_prior <= 0.0 || sustained {
        return ranged;
    }
    let spreads = excess / metric.error_std.max(1e-12);
    let ln_p = ln_fisher2(ln_value_tail, ln_upper_tail(spreads));
    ranged.min(tail_score(ln_p + config.range_prior.ln()))
}

/// Readings in a row beyond the range by more than its tolerance from which a range exit
/// is scored by how far beyond the range it lies alone, without the probability bound
/// (`range_prior`): stationary noise leaves the slowly relaxing range now and then, for
/// a reading or a few; it does not stay out.
const SUSTAINED_EXIT_READINGS: u32 = 15;

/// A positive metric is bounded by zero in a way that matters, and so judged on its own
/// scale below its range, only while its long-run mean lies within this many spreads of
/// zero: farther, it is as symmetric as a Gaussian (a moment-matched log-normal would
/// make its falls of plain noise look improbable).
const ZERO_BOUND_SPREADS: f64 = 3.0;

/// ln of the two-sided tail probability of `value` under the log-normal with the
/// metric's long-run mean and spread (moment-matched: `σ² = ln(1 + (std/mean)²)`,
/// `μ = ln(mean) − σ²/2`); a value at or below zero lies beyond any probability (the
/// range check does not ask: it judges those additively).
fn ln_lognormal_tail(metric: &MetricParams, value: f64) -> f64 {
    const LN_NOTHING: f64 = -1e3;
    if value <= 0.0 {
        return LN_NOTHING;
    }
    let relative = metric.value_std / metric.value_mean;
    let var = relative.mul_add(relative, 1.0).ln().max(1e-12);
    let mu = metric.value_mean.ln() - 0.5 * var;
    ln_two_sided_tail((value.ln() - mu) / var.sqrt()).max(LN_NOTHING)
}

/// Fisher's combination of two independent p-values, in log space: the probability that
/// two uniform p-values have a product at most `p1 p2`, which is `p1 p2 (1 - ln(p1 p2))`.
fn ln_fisher2(ln_p1: f64, ln_p2: f64) -> f64 {
    let ln_product = ln_p1 + ln_p2;
    ln_product + (1.0 - ln_product).ln()
}

/// The scoring half, one per device.
#[derive(Clone, Debug, Default)]
pub struct DetectorScorer {
    last_ts: OptionalMs,
    /// By name, the names shared with the other devices that have the same ones.
    contexts: Named<(Context, Excursion)>,
    relation: RelationContext,
    /// The seasonal lean per metric (in the order of the parameters' metrics; NaN while
    /// its profile does not count).
    leans: Box<[f32]>,
}

/// Score of an upper-tail probability: ln(p)/ln(1e-10), in [0, 1].
pub(crate) fn tail_score(ln_tail: f64) -> f64 {
    const LN_FLOOR: f64 = -23.025_850_929_940_457; // ln(1e-10)
    (ln_tail.max(LN_FLOOR) / LN_FLOOR).clamp(0.0, 1.0)
}

/// Below this z-score a tail scores under 0.05: not worth a logarithm per metric and
/// event (the score is reported as 0).
const NEGLIGIBLE_Z: f64 = 1.5;

/// [`tail_score`] of both tails beyond `z`, 0 for negligible ones.
fn two_sided_score(z: f64) -> f64 {
    if z.abs() < NEGLIGIBLE_Z {
        0.0
    } else {
        tail_score(ln_two_sided_tail(z))
    }
}

/// [`tail_score`] of the upper tail beyond `z`, 0 for negligible ones.
fn upper_score(z: f64) -> f64 {
    if z < NEGLIGIBLE_Z {
        0.0
    } else {
        tail_score(ln_upper_tail(z))
    }
}

/// ln P(Z > z) for a standard normal Z.
pub(crate) fn ln_upper_tail(z: f64) -> f64 {
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
const MIN_GAP_RATE: f64 = 0.01;
/// Weight of the newest interval in the gap statistics.
const GAP_ALPHA: f64 = 0.005;
/// The prior of the gap lengths: as if this many gaps of mean log-length
/// `GAP_PRIOR_LOG_LENGTH` had been seen (tail index 15). A device that never missed a
/// sample scores a first gap of 5 intervals (4 missing) at 0.8, as when each missing
/// sample counted separately at the 1% floor; a few real gaps outweigh the prior.
const GAP_PRIOR_GAPS: f64 = 20.0;
const GAP_PRIOR_LOG_LENGTH: f64 = 1.0 / 15.0;

/// Tail index of the gap lengths seen, shrunk towards the prior.
fn gap_tail(log_length: &SmallRunning) -> f64 {
    let seen = (log_length.count() as f64).min(1.0 / GAP_ALPHA);
    let mean = (GAP_PRIOR_GAPS * GAP_PRIOR_LOG_LENGTH + seen * log_length.mean())
        / (GAP_PRIOR_GAPS + seen);
    1.0 / mean.max(1e-3)
}
/// Parts scoring below this are left out of the contributors (the event's score is then
/// the largest remaining part, or 0): they name nothing worth reading, and leaving them
/// out saves an allocation per metric and event.
const MIN_CONTRIBUTION: f64 = 0.05;
/// Values of the first this many metrics (by parameter index) are collected while
/// scoring, for the relation part; others are looked up.
const SEEN_INDEXES: usize = 32;
/// Smallest spread of the relation scores' calibration (log space).
const MIN_RELATION_STD: f64 = 0.1;

impl DetectorScorer {
    fn gap_part(&mut self, params: &DetectorParams, ts_ms: i64) -> Option<MetricScore> {
        let config = &params.config;
        let interval = params.interval.filter(|_| config.gap_detection);
        let previous = self.last_ts.get();
        self.last_ts.advance_to(ts_ms);
        let (last_ts, cadence) = (previous?, interval?);
        let mean = cadence.interval_ms;
        let gap_ms = ts_ms - last_ts;
        let missed = (gap_ms as f64 / mean - 1.0).round();
        if (gap_ms as f64) < config.gap_min_ratio * mean {
            return None;
        }
        // A gap at all, then one at least this long (Pareto tail).
        let ln_p = f64::from(cadence.gap_rate).max(MIN_GAP_RATE).ln()
            - f64::from(cadence.gap_tail) * ((1.0 + missed) / 2.0).ln();
        Some(MetricScore {
            metric: INTERVAL_METRIC.to_owned(),
            value: gap_ms as f64,
            expected: mean,
            score: tail_score(ln_p),
            cause: Cause::Gap {
                gap_ms,
                ratio: gap_ms as f64 / mean.max(1.0),
            },
        })
    }

    /// The context of `name`; `hint` is where it usually is (the metrics of a device
    /// come in the same sorted order every event), which saves the search.
    fn context(&mut self, name: &str, hint: usize) -> (&mut Context, &mut Excursion) {
        let index = match self.contexts.position(name, hint) {
            Ok(i) => i,
            Err(i) => {
                let fresh = (Context::default(), Excursion::default());
                self.contexts.insert(i, name, fresh);
                i
            }
        };
        let (context, excursion) = &mut self.contexts[index];
        (context, excursion)
    }

    /// Advance the seasonal lean of `name`; its z-score against the learned lean and the
    /// profile's value now, once the profile counts.
    fn season_reading(
        &mut self,
        params: &DetectorParams,
        name: &str,
        (value, hint): (f64, usize),
        ts_ms: i64,
    ) -> Option<(f64, f64)> {
        if params.seasons.is_empty() {
            return None;
        }
        let (index, metric) = params.metric(name, hint)?;
        let season = params.seasons.get(index)?;
        if season.profile.is_empty() {
            // The profile does not count (now): the lean stops following it, and starts
            // afresh from its usual value when it counts again, not from where it stood
            // when it stopped (hours or days ago).
            if let Some(lean) = self.leans.get_mut(index) {
                *lean = f32::NAN;
            }
            return None;
        }
        let config = &params.config;
        let bin = season_bin(ts_ms, season.profile.len(), config.season_days);
        let usual = match season.profile[bin] {
            i16::MIN => f64::NAN,
            q => season.offset + f64::from(season.unit) * f64::from(q),
        };
        let lean = self.leans.get_mut(index)?;
        if lean.is_nan() {
            *lean = season.lean_mean;
        }
        *lean = lean_step(*lean, value, usual, metric.value_std, config.season_alpha);
        let z =
            (f64::from(*lean) - f64::from(season.lean_mean)) / f64::from(season.lean_std).max(0.05);
        (!usual.is_nan()).then_some((z, usual))
    }

    /// The part of one metric, or none while it warms up.
    /// `reading` is the metric's name, value and position in the observation; `seen`
    /// collects the values by parameter index for the relation part.
    fn metric_part(
        &mut self,
        params: &DetectorParams,
        reading: (&str, f64, usize),
        tod: TimeOfDay,
        seen: &mut [f64; SEEN_INDEXES],
    ) -> Option<MetricScore> {
        let (name, value, hint) = reading;
        let config = &params.config;
        let season = self.season_reading(params, name, (value, hint), tod.ts_ms);
        let (context, excursion) = self.context(name, hint);
        let Some((index, metric)) = params.metric(name, hint) else {
            context.observe(value, 1.0, config);
            return None;
        };
        if let Some(slot) = seen.get_mut(index) {
            *slot = value;
        }
        let (raw, prediction, average) = context.observe(value, metric.error_std, config);
        context.note_run_start(metric, config);
        let mut vector = [0.0; MAX_DIMS];
        let shape = context.observe_shape(
            tod,
            (metric.value_mean, metric.value_std, &metric.prototypes),
            config,
            &mut vector,
        );
        if u64::from(metric.n) < config.warmup_events {
            return None;
        }
        let reading = Reading {
            value,
            prediction,
            raw,
            average,
            drift: f64::from(context.drift),
            shape: shape.as_ref(),
            season,
            range: excursion.range(metric, config, value),
            beyond_run: excursion.beyond_run(),
        };
        let (mut score, mut cause, beyond) = if u64::from(metric.n) < config.history_events {
            let dof = metric.n.saturating_sub(1).max(1) as f64;
            (
                tail_score(ln_two_sided_tail(student_as_normal(raw, dof))),
                Cause::Deviation {
                    z: raw * (value - prediction).signum(),
                },
                false,
            )
        } else {
            history_score(metric, config, &reading)
        };
        excursion.set_beyond_run(if beyond {
            excursion.beyond_run().saturating_add(1)
        } else {
            0
        });
        if let Some(stuck) = context.stuck_score(metric, config).filter(|s| *s > score) {
            score = stuck;
            cause = Cause::Stuck {
                repeats: context.repeats + 1,
            };
        }
        if score < MIN_CONTRIBUTION {
            return None;
        }
        Some(MetricScore {
            metric: name.to_owned(),
            value,
            expected: prediction,
            score,
            cause,
        })
    }

    /// The part of the relations between metrics: the larger of the calibrated T² and
    /// SPE scores, attributed to the metrics that carry it.
    fn relation_part(
        &mut self,
        params: &DetectorParams,
        observation: &Observation<'_>,
        seen: &[f64; SEEN_INDEXES],
    ) -> Option<MetricScore> {
        let relation = params
            .relation
            .as_ref()
            .filter(|_| params.config.relation.enabled)?;
        let m = relation.columns.len();
        // Cheap enough to check every event, for parameters that skipped `check`.
        if m != relation.mean().len() || !relation.is_consistent() {
            return None;
        }
        let mut values = [0.0; MAX_COLUMNS];
        for (slot, &column) in values.iter_mut().zip(&relation.columns) {
            let column = usize::from(column);
            *slot = match seen.get(column) {
                Some(&value) => value,
                None => *observation
                    .metrics
                    .get(params.metrics.names().get(column)?)?,
            };
            if slot.is_nan() {
                return None;
            }
        }
        let eval = relation.evaluate(&values[..m]);
        let reading = self
            .relation
            .observe(relation, &eval, params.config.averaging_window);
        if !relation.ready {
            return None;
        }
        let calibrated = |current: bool, x: f64, (mean, std): (f32, f32)| {
            if current {
                upper_score((x - f64::from(mean)) / f64::from(std).max(MIN_RELATION_STD))
            } else {
                0.0
            }
        };
        let scores = (
            calibrated(reading.t2_current, reading.t2, relation.t2_calibration),
            calibrated(reading.spe_current, reading.spe, relation.spe_calibration),
        );
        if scores.0.max(scores.1) < MIN_CONTRIBUTION {
            return None;
        }
        attribute(params, relation, &eval, &values[..m], scores)
    }
}

/// The relation part, named after the metric that carries it: for SPE the largest share
/// of the residual (with the others close to it), for T² the largest share of T².
fn attribute(
    params: &DetectorParams,
    relation: &RelationParams,
    eval: &Evaluation,
    values: &[f64],
    (t2_score, spe_score): (f64, f64),
) -> Option<MetricScore> {
    let m = values.len();
    let name = |j: usize| params.metrics.names()[usize::from(relation.columns[j])].to_owned();
    if spe_score >= t2_score {
        let share = |j: usize| eval.residual[j] * eval.residual[j];
        let top = (0..m).max_by(|&a, &b| share(a).total_cmp(&share(b)))?;
        let with = (0..m)
            .filter(|&j| j != top && share(j) >= 0.5 * share(top))
            .take(2)
            .map(name)
            .collect();
        Some(MetricScore {
            metric: name(top),
            value: values[top],
            expected: relation.expected(eval, top),
            score: spe_score,
            cause: Cause::Relation {
                with,
                ratio: eval.spe / f64::from(relation.spe_limit).max(1e-9),
            },
        })
    } else {
        let top = (0..m).max_by(|&a, &b| eval.t2_share[a].total_cmp(&eval.t2_share[b]))?;
        Some(MetricScore {
            metric: name(top),
            value: values[top],
            expected: f64::from(relation.mean()[top]),
            score: t2_score,
            cause: Cause::Joint {
                ratio: eval.t2 / f64::from(relation.t2_limit).max(1e-9),
            },
        })
    }
}

impl Scorer for DetectorScorer {
    type Params = DetectorParams;

    fn score(&mut self, params: &DetectorParams, observation: &Observation<'_>) -> Score {
        // No allocation unless a part scores: most events contribute nothing.
        let mut parts = Vec::new();
        parts.extend(self.gap_part(params, observation.ts_ms));
        if self.leans.len() != params.seasons.len() {
            // New parameters with another set of metrics: the leans start afresh.
            self.leans = vec![f32::NAN; params.seasons.len()].into();
        }
        let tod = TimeOfDay::of(observation.ts_ms);
        let mut seen = [f64::NAN; SEEN_INDEXES];
        for (hint, (name, &value)) in observation.metrics.iter().enumerate() {
            parts.extend(self.metric_part(params, (name, value, hint), tod, &mut seen));
        }
        parts.extend(self.relation_part(params, observation, &seen));
        let mut score = Score::from_parts(parts);
        score.ready = (params.metrics.values())
            .iter()
            .any(|m| u64::from(m.n) >= params.config.warmup_events);
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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
            Self::with(DetectorConfig::default())
        }

        fn with(config: DetectorConfig) -> Self {
            let trainer = DetectorTrainer::new(config.validate().unwrap());
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
            let metrics = BTreeMap::from([("temp".into(), value)]);
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
        rig.warm(1_200);
        assert!(rig.step(30.0, 1000).value >= THRESHOLD);
    }

    #[test]
    fn notices_a_stuck_sensor_and_a_gap() {
        let mut rig = Rig::new();
        rig.warm(1_000);
        let stuck: Vec<Score> = (0..15).map(|_| rig.step(20.3, 1000)).collect();
        assert!(stuck[..2].iter().all(|s| s.value < THRESHOLD), "{stuck:?}");
        // Scores are never held: once noticed, every later stuck reading scores high.
        let onset = stuck
            .iter()
            .position(|s| s.value >= THRESHOLD)
            .expect("stuck sensor noticed");
        assert!(
            matches!(stuck[onset].contributors[0].cause, Cause::Stuck { .. }),
            "{stuck:?}"
        );
        assert!(stuck[onset..].iter().all(|s| s.value >= THRESHOLD));

        let mut rig = Rig::new();
        rig.warm(1_000);
        let after_gap = rig.step(20.0, 20_000);
        assert!(after_gap.value >= THRESHOLD, "{after_gap:?}");
        assert!(matches!(after_gap.contributors[0].cause, Cause::Gap { .. }));
    }

    #[test]
    fn a_device_that_often_drops_samples_is_not_alarmed_by_its_usual_gaps() {
        // Every 20th interval loses 1–6 samples; a gap of 7 missing is then ordinary.
        let mut rig = Rig::new();
        for i in 0..2_000u64 {
            let advance = if i % 20 == 19 {
                1000 * (2 + (i / 20) % 6) as i64
            } else {
                1000
            };
            rig.step(20.0 + noise(i), advance);
        }
        let gap = rig.step(20.0, 8_000);
        assert!(gap.value < THRESHOLD, "{gap:?}");
        // On a device that never missed a sample the same gap alerts (the test above has
        // one of 19 missing; 7 suffice).
        let mut rig = Rig::new();
        rig.warm(2_000);
        let gap = rig.step(20.0, 8_000);
        assert!(gap.value >= THRESHOLD, "{gap:?}");
        // Dropouts of the simulator's size (10 s at 10 readings a second: 100 missing)
        // alert, the second too: one earlier dropout does not make a habit.
        for i in 0..500 {
            rig.step(20.0 + noise(i), 1000);
        }
        let first = rig.step(20.0, 101_000);
        assert!(first.value >= THRESHOLD, "{first:?}");
        for i in 0..500 {
            rig.step(20.0 + noise(i), 1000);
        }
        let second = rig.step(20.0, 101_000);
        assert!(second.value >= THRESHOLD, "{second:?}");
    }

    /// A prototype at the origin of radius 1 (of the default 8 values).
    fn one_prototype() -> Prototypes<1> {
        let mut prototypes = Prototypes::default();
        prototypes.push([0; 8].into_iter(), [1.0]);
        prototypes
    }

    #[test]
    fn a_deviation_in_a_familiar_shape_is_no_more_anomalous_than_the_shape() {
        let metric = MetricParams {
            error_std: 1.0,
            average_mean: 0.0,
            average_std: 0.2,
            drift_mean: 0.0,
            drift_std: 1.0,
            min: -100.0,
            max: 100.0,
            repeat_rate: 0.0,
            n: 5_000,
            value_mean: 0.0,
            value_std: 10.0,
            prototypes: one_prototype(),
            shape_mean: 0.0,
            shape_std: 1.0,
        };
        let config = DetectorConfig::default();
        // Prediction errors averaging 8 deviations, in a shape at squared distance
        // `distance` from a prototype of radius 1 (the shape itself usual).
        let score = |distance: f64| {
            let shape = Shape {
                log_average_distance: 0.0,
                nearest: (0, distance),
            };
            let reading = Reading {
                value: 8.0,
                prediction: 0.0,
                raw: 8.0,
                average: 8f64.ln(),
                drift: 0.0,
                shape: Some(&shape),
                season: None,
                range: (metric.min, metric.max),
                beyond_run: 0,
            };
            history_score(&metric, &config, &reading).0
        };
        assert!(score(10.0) >= THRESHOLD, "{}", score(10.0));
        assert!(score(2.0) < 0.05, "{}", score(2.0));
    }

    /// Half-hourly readings of a daily cycle (amplitude 20, noise ±2) for four weeks,
    /// then a day on which the cycle is missing (the series stays at its mean, well
    /// inside its range). Returns the largest score of the normal weeks and, for the
    /// missing day, the largest score and its cause.
    fn missing_day(config: DetectorConfig) -> (f64, f64, Option<Cause>) {
        let mut rig = Rig::with(config);
        let half_hour = 1_800_000;
        let day = 48;
        let cycle = |i: u64| 100.0 + 20.0 * (std::f64::consts::TAU * i as f64 / 48.0).sin();
        let mut normal: f64 = 0.0;
        for i in 0..28 * day {
            normal = normal.max(rig.step(cycle(i) + 2.0 * noise(i), half_hour).value);
        }
        let (mut peak, mut cause) = (0.0, None);
        for i in 28 * day..29 * day {
            let score = rig.step(100.0 + 2.0 * noise(i), half_hour);
            if score.value > peak {
                peak = score.value;
                cause = score.contributors.first().map(|p| p.cause.clone());
            }
        }
        (normal, peak, cause)
    }

    #[test]
    fn a_day_whose_pattern_is_missing_is_found_by_the_seasonal_profile() {
        let (normal, peak, cause) = missing_day(DetectorConfig::default());
        assert!(normal < THRESHOLD, "the cycle itself alarmed: {normal}");
        assert!(peak >= THRESHOLD, "{peak} {cause:?}");
        assert!(matches!(cause, Some(Cause::Seasonal { .. })), "{cause:?}");
        let without = DetectorConfig {
            season_bins: 0,
            ..DetectorConfig::default()
        };
        let (normal, peak, cause) = missing_day(without);
        assert!(normal < THRESHOLD, "{normal}");
        assert!(peak < THRESHOLD, "{peak} {cause:?}");
    }

    #[test]
    fn a_device_with_too_many_metrics_for_the_budget_keeps_no_profiles() {
        let mut trainer = DetectorTrainer::new(DetectorConfig::default());
        for (i, metrics) in [1usize, 2, 3].into_iter().enumerate() {
            let values: crate::MetricValues = (0..metrics)
                .map(|m| (format!("m{m}").into(), 1.0))
                .collect();
            trainer.update(&Observation {
                ts_ms: i as i64 * 1000,
                metrics: &values,
            });
            let expected = if metrics * 168 <= 336 { metrics } else { 0 };
            assert_eq!(trainer.snapshot().seasons.len(), expected);
        }
    }

    /// The score of the range part of an event (0 when it does not contribute).
    fn range_part(score: &Score) -> f64 {
        score
            .contributors
            .iter()
            .filter(|part| matches!(part.cause, Cause::OutOfRange { .. }))
            .map(|part| part.score)
            .fold(0.0, f64::max)
    }

    /// A cycle between -10 and 10 for 3,150 readings (ending at its trough), then a slow
    /// fall of 0.05 per reading for 200 readings: each reading only a slight new
    /// extreme. The largest range part during the fall (the range additive, so that only
    /// the excursion's rule differs).
    fn slow_fall(config: DetectorConfig) -> f64 {
        let mut rig = Rig::with(DetectorConfig {
            range_log_scale: false,
            ..config
        });
        let cycle = |i: u64| 10.0 * (std::f64::consts::TAU * i as f64 / 200.0).sin();
        for i in 0..3_150 {
            rig.step(cycle(i) + 0.3 * noise(i), 1000);
        }
        (1..=200u64)
            .map(|k| rig.step(-10.0 - 0.05 * k as f64 + 0.3 * noise(10_000 + k), 1000))
            .map(|score| range_part(&score))
            .fold(0.0, f64::max)
    }

    #[test]
    fn an_excursion_is_judged_by_the_range_before_it_began() {
        let held = slow_fall(DetectorConfig::default());
        let followed = slow_fall(DetectorConfig {
            range_holds: false,
            ..DetectorConfig::default()
        });
        assert!(held >= THRESHOLD, "held range: {held}");
        assert!(followed < THRESHOLD, "range following the fall: {followed}");
    }

    /// A positive metric cycling multiplicatively between about 13.5 and 740, then one
    /// reading of 1: the range part of that reading.
    fn fall_towards_zero(config: DetectorConfig) -> f64 {
        let mut rig = Rig::with(config);
        let cycle = |i: u64| 100.0 * (2.0 * (std::f64::consts::TAU * i as f64 / 200.0).sin()).exp();
        for i in 0..3_000 {
            let score = rig.step(cycle(i) * (1.0 + 0.01 * noise(i)), 1000);
            assert!(score.value < THRESHOLD, "false alarm at {i}: {score:?}");
        }
        range_part(&rig.step(1.0, 1000))
    }

    #[test]
    fn a_positive_metric_falling_towards_zero_is_beyond_its_range() {
        let multiplicative = fall_towards_zero(DetectorConfig::default());
        let additive = fall_towards_zero(DetectorConfig {
            range_log_scale: false,
            ..DetectorConfig::default()
        });
        assert!(
            multiplicative >= THRESHOLD,
            "multiplicative: {multiplicative}"
        );
        assert!(additive < THRESHOLD, "additive: {additive}");
    }

    /// A square wave, 20 for 180 readings and 80 for 108, every 5 minutes (a device
    /// switching on a daily schedule). The extremes relax towards the mean between the
    /// switches, so each switch lands a hair beyond them.
    fn square_wave(i: u64) -> f64 {
        if i % 288 < 180 {
            20.0
        } else {
            80.0
        }
    }

    #[test]
    fn a_daily_switch_to_a_level_seen_before_is_not_a_wild_outlier() {
        let mut rig = Rig::new();
        let five_minutes = 300_000;
        for i in 0..2 * 288 {
            rig.step(square_wave(i), five_minutes);
        }
        // From the third day on the switches are a habit: before the outlier check
        // asked for the range check's tolerance, each one scored 1 (a 16-error-spread
        // jump "beyond every value seen": beyond the relaxed extremes by a hair).
        let mut peak: f64 = 0.0;
        for i in 2 * 288..6 * 288 {
            peak = peak.max(rig.step(square_wave(i), five_minutes).value);
        }
        assert!(peak < THRESHOLD, "a switch alarmed: {peak}");
        // A reading far beyond the levels it switches between still alarms.
        let spike = rig.step(200.0, five_minutes);
        assert!(spike.value >= THRESHOLD, "{spike:?}");
    }

    #[test]
    fn the_seasonal_lean_starts_afresh_when_the_profile_counts_again() {
        let mut rig = Rig::new();
        let half_hour = 1_800_000;
        let cycle = |i: u64| 100.0 + 20.0 * (std::f64::consts::TAU * i as f64 / 48.0).sin();
        for i in 0..28 * 48 {
            rig.step(cycle(i) + 2.0 * noise(i), half_hour);
        }
        let counting = rig.params.clone();
        assert!(!counting.seasons[0].profile.is_empty());
        // The same parameters with the profile not counting (as when its residuals
        // cross `season_unexplained` for a while).
        let mut quiet = counting.clone();
        quiet.seasons[0].profile = Vec::new();
        let mut ts = rig.ts;
        let mut score = |params: &DetectorParams, value: f64| {
            ts += half_hour;
            let metrics = BTreeMap::from([("temp".into(), value)]);
            let observation = Observation {
                ts_ms: ts,
                metrics: &metrics,
            };
            rig.scorer.score(params, &observation)
        };
        let start = 28 * 48;
        // Far off the profile for a few readings: the lean leans far.
        for i in start..start + 4 {
            score(&counting, cycle(i) + 60.0);
        }
        // A day back on the cycle while the profile does not count, then it counts
        // again: the lean starts from its usual value, not from where it stood a day ago.
        for i in start + 4..start + 52 {
            score(&quiet, cycle(i) + 2.0 * noise(i));
        }
        let i = start + 52;
        let again = score(&counting, cycle(i) + 2.0 * noise(i));
        assert!(again.value < THRESHOLD, "{again:?}");
    }

    #[test]
    fn a_young_seasonal_bin_is_the_mean_of_its_readings() {
        let mut trainer = DetectorTrainer::new(DetectorConfig::default());
        let five_minutes = 300_000;
        // On an hour's boundary (the weekly profile's bins are hours).
        let mut ts = 1_699_999_200_000;
        let mut learn = |value: f64| {
            let metrics = BTreeMap::from([("temp".into(), value)]);
            trainer.update(&Observation {
                ts_ms: ts,
                metrics: &metrics,
            });
            ts += five_minutes;
        };
        // A day at 50 (the cadence is learned), then an hour the profile has not seen:
        // 0, 1, …, 11.
        for _ in 0..288 {
            learn(50.0);
        }
        for k in 0..12 {
            learn(f64::from(k));
        }
        let bin = season_bin(ts - five_minutes, 168, 7);
        let usual = f64::from(trainer.seasons[0].profile[bin]);
        // The mean, 5.5; the first reading remembered with a 7-week memory gave 0.7.
        assert!((usual - 5.5).abs() < 1e-3, "{usual}");
    }

    /// A cycle between -10 and 10 for 3,150 readings (ending at its trough), then
    /// `readings` readings held 8% of the range below its least value (slightly beyond
    /// the 5% tolerance, two value spreads from the mean), then back on the cycle. The
    /// range part of each reading of the exit.
    fn held_below(readings: u64) -> Vec<f64> {
        let mut rig = Rig::new();
        let cycle = |i: u64| 10.0 * (std::f64::consts::TAU * i as f64 / 200.0).sin();
        for i in 0..3_150 {
            rig.step(cycle(i) + 0.3 * noise(i), 1000);
        }
        (0..readings)
            .map(|k| rig.step(-11.6 + 0.05 * noise(10_000 + k), 1000))
            .map(|score| range_part(&score))
            .collect()
    }

    #[test]
    fn a_value_that_stays_beyond_its_range_is_not_noise() {
        let parts = held_below(40);
        let brief = SUSTAINED_EXIT_READINGS as usize - 1;
        // Each reading alone is a slight exit, as noise makes now and then.
        let first = parts[..brief].iter().copied().fold(0.0, f64::max);
        assert!(first > 0.0 && first < THRESHOLD, "{parts:?}");
        // Staying out is not: from the 15th reading in a row on it scores as far beyond
        // the range as it lies (0.9 + 0.1 × 3%).
        assert!(parts[brief..].iter().all(|&p| p >= 0.9), "{parts:?}");
    }

    /// The last values are kept as `f32` steps from the exact last value: a value far
    /// from zero that moves little (a position, a pressure, a meter) keeps its shape, which
    /// `f32` values would round away (48.8566 is 4e-6 from its nearest `f32`).
    #[test]
    fn a_context_keeps_small_moves_of_a_value_far_from_zero() {
        let config = DetectorConfig::default();
        let mut context = Context::default();
        let values: Vec<f64> = (0..10)
            .map(|i| 48.856_6 + 1e-7 * f64::from(i * i))
            .collect();
        for &value in &values {
            context.observe(value, 1.0, &config);
        }
        let held: Vec<f64> = context.values_newest_first().collect();
        assert_eq!(held.len(), config.shape_length);
        assert_eq!(held[0], values[9]);
        for (got, want) in held.iter().zip(values.iter().rev()) {
            assert!((got - want).abs() < 1e-12, "{got} for {want}");
        }
        // The same values through the trainer's state.
        let bytes = postcard::to_allocvec(&context).unwrap();
        let restored: Context = postcard::from_bytes(&bytes).unwrap();
        let again: Vec<f64> = restored.values_newest_first().collect();
        assert_eq!(again.len(), held.len());
        for (got, want) in again.iter().zip(&held) {
            assert!((got - want).abs() < 1e-12, "{got} for {want}");
        }
    }

    #[test]
    fn a_single_spike_leaves_no_drift_behind() {
        let mut rig = Rig::new();
        rig.warm(2_000);
        rig.step(60.0, 1000);
        for i in 0..40 {
            let score = rig.step(20.0 + noise(i), 1000);
            let drift = score
                .contributors
                .iter()
                .any(|c| matches!(c.cause, Cause::Drift { .. }) && c.score >= THRESHOLD);
            assert!(!drift, "{i} readings after the spike: {score:?}");
        }
    }

    #[test]
    fn fisher_combines_two_p_values() {
        // P(U1 U2 <= 0.01) = 0.01 (1 - ln 0.01) = 0.056.
        let p = ln_fisher2(0.1f64.ln(), 0.1f64.ln()).exp();
        assert!((p - 0.056_052).abs() < 1e-5, "{p}");
        assert!(ln_fisher2(0.0, 0.0).abs() < 1e-12);
    }

    #[test]
    fn a_constant_metric_is_not_stuck() {
        let mut rig = Rig::new();
        for i in 0..500 {
            let score = rig.step(5.0, 1000);
            assert!(score.value < THRESHOLD, "{i}: {score:?}");
        }
    }

    #[test]
    fn not_ready_while_warming_up() {
        let mut rig = Rig::new();
        assert!(!rig.step(1.0, 1000).ready);
    }

    #[test]
    fn parameters_decoded_with_one_cache_share_their_configuration() {
        let mut rig = Rig::new();
        rig.warm(100);
        let params = rig.trainer.snapshot();
        let bytes = params.to_bytes();
        let mut configs = ConfigCache::default();
        let first = DetectorParams::from_bytes_with(&bytes, &mut configs).unwrap();
        let second = DetectorParams::from_bytes_with(&bytes, &mut configs).unwrap();
        assert_eq!((&first, &second), (&params, &params));
        assert!(Arc::ptr_eq(&first.config, &second.config));
        // Another configuration is its own, and decodes as without the cache.
        let other = DetectorParams {
            config: Arc::new(DetectorConfig {
                threshold: 0.7,
                ..DetectorConfig::default()
            }),
            ..params.clone()
        };
        let third = DetectorParams::from_bytes_with(&other.to_bytes(), &mut configs).unwrap();
        assert_eq!(third, other);
        assert!(!Arc::ptr_eq(&first.config, &third.config));
        // A known configuration followed by too little is refused all the same.
        assert!(DetectorParams::from_bytes_with(&bytes[..bytes.len() / 2], &mut configs).is_err());
        // Configurations nobody holds any more are forgotten when another is added.
        drop((first, second, third));
        let fourth = DetectorConfig {
            threshold: 0.8,
            ..DetectorConfig::default()
        };
        let fourth = DetectorParams {
            config: Arc::new(fourth),
            ..params
        };
        DetectorParams::from_bytes_with(&fourth.to_bytes(), &mut configs).unwrap();
        assert_eq!(configs.known.len(), 1);
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
        let bytes = params.to_bytes();
        assert_eq!(DetectorParams::from_bytes(&bytes).unwrap(), params);
        let mut other_version = bytes.clone();
        other_version[3] = 99;
        assert!(matches!(
            DetectorParams::from_bytes(&other_version),
            Err(ModelError::IncompatibleParams { .. })
        ));
        assert!(DetectorParams::from_bytes(&bytes[..bytes.len() / 2]).is_err());
        // Arrays that do not fit together are refused, not indexed out of bounds.
        let mut broken = params.clone();
        let mut longer = Prototypes::default();
        longer.push([1; 9].into_iter(), [1.0]);
        broken.metrics.values_mut()[0].prototypes = longer;
        assert!(broken.check().is_err());
        assert!(DetectorParams::from_bytes(&broken.to_bytes()).is_err());
        assert!(DetectorParams::from_bytes(b"{}").is_err());
        let other_kind = json.replace(KIND, "other");
        assert_ne!(other_kind, json);
        let error = serde_json::from_str::<DetectorParams>(&other_kind).unwrap_err();
        assert!(
            error.to_string().contains("parameters of kind other"),
            "{error}"
        );
        let format = format!("\"format\":{FORMAT_VERSION}");
        let other_format = json.replacen(&format, "\"format\":999", 1);
        assert_ne!(other_format, json);
        let error = serde_json::from_str::<DetectorParams>(&other_format).unwrap_err();
        assert!(
            error.to_string().contains("parameters of format 999"),
            "{error}"
        );
    }

    #[test]
    fn seasonal_profiles_round_trip_and_must_fit_the_metrics() {
        // Hourly readings of a weekly cycle: the profile counts after a week and 600
        // readings of calibration.
        let mut rig = Rig::new();
        for i in 0..1_500u64 {
            let week = (std::f64::consts::TAU * i as f64 / 168.0).sin();
            rig.step(100.0 + 10.0 * week + noise(i), 3_600_000);
        }
        let params = rig.trainer.snapshot();
        assert_eq!(params.seasons.len(), 1);
        let season = &params.seasons[0];
        assert_eq!(season.profile.len(), 168);
        // The profile holds the cycle: its peak bin near 110, its trough near 90.
        let usual = |q: i16| season.offset + f64::from(season.unit) * f64::from(q);
        let peak = season
            .profile
            .iter()
            .map(|&q| usual(q))
            .fold(f64::MIN, f64::max);
        assert!((peak - 110.0).abs() < 2.0, "{peak}");
        assert_eq!(
            DetectorParams::from_bytes(&params.to_bytes()).unwrap(),
            params
        );
        let mut broken = params.clone();
        let mut seasons = broken.seasons.to_vec();
        seasons.push(SeasonParams::default());
        broken.seasons = seasons.into();
        assert!(broken.check().is_err());
        assert!(DetectorParams::from_bytes(&broken.to_bytes()).is_err());
    }
}
