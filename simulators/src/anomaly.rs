//! Anomalies the simulator injects, and their ground truth.

use rand::Rng;
use serde::{Deserialize, Serialize};

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
    /// A metric walks away from normal, then snaps back (a failing part, say).
    Drift,
    /// A sensor repeats its last reading.
    Stuck,
    /// The device sends nothing for a while (it keeps counting sequence numbers).
    Dropout,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 5] = [
        Self::Spike,
        Self::LevelShift,
        Self::Drift,
        Self::Stuck,
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
    /// Size in standard deviations of the metric's noise (signed); 0 where meaningless.
    pub magnitude_sigmas: f64,
    /// Device time of the first affected reading, ms.
    pub start_ms: i64,
    /// Device time after the last affected reading, ms.
    pub end_ms: i64,
}

/// An anomaly in progress on one device.
#[derive(Clone, Debug)]
pub struct ActiveAnomaly {
    pub truth: Injected,
    metric_index: usize,
    stuck_value: Option<f64>,
}

/// What the device does with its current reading.
#[derive(Debug, PartialEq)]
pub enum Effect {
    Publish,
    Silence,
}

impl ActiveAnomaly {
    /// Choose where, how long and how strong, starting at `start_ms`.
    pub fn plan(
        rng: &mut impl Rng,
        kind: AnomalyKind,
        device: &str,
        metric_names: &[&str],
        start_ms: i64,
        interval_ms: u64,
    ) -> Self {
        let metric_index = rng.random_range(0..metric_names.len());
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        // (duration in seconds, magnitude in sigmas), both as ranges to draw from.
        let (seconds, sigmas) = match kind {
            AnomalyKind::Spike => (0.0..0.0, 10.0..16.0),
            AnomalyKind::LevelShift => (8.0..20.0, 7.0..10.0),
            AnomalyKind::Drift => (10.0..20.0, 12.0..18.0),
            AnomalyKind::Stuck => (10.0..20.0, 0.0..0.0),
            AnomalyKind::Dropout => (8.0..20.0, 0.0..0.0),
        };
        let draw = |rng: &mut dyn rand::RngCore, range: std::ops::Range<f64>| {
            if range.is_empty() {
                range.start
            } else {
                rng.random_range(range)
            }
        };
        let duration_ms = ((draw(rng, seconds) * 1000.0) as i64).max(interval_ms as i64);
        let magnitude = sign * draw(rng, sigmas);
        Self {
            truth: Injected {
                device: device.to_owned(),
                kind,
                metric: (kind != AnomalyKind::Dropout)
                    .then(|| metric_names[metric_index].to_owned()),
                magnitude_sigmas: magnitude,
                start_ms,
                end_ms: start_ms + duration_ms,
            },
            metric_index,
            stuck_value: None,
        }
    }

    pub fn is_over(&self, t_ms: i64) -> bool {
        t_ms >= self.truth.end_ms
    }

    /// Change this reading as the anomaly demands. `previous` are the readings last sent.
    pub fn apply(
        &mut self,
        t_ms: i64,
        values: &mut [f64],
        sigmas: &[f64],
        previous: &[f64],
    ) -> Effect {
        let i = self.metric_index;
        let truth = &self.truth;
        match truth.kind {
            AnomalyKind::Spike | AnomalyKind::LevelShift => {
                values[i] += truth.magnitude_sigmas * sigmas[i]
            }
            AnomalyKind::Drift => {
                let progress =
                    (t_ms - truth.start_ms) as f64 / (truth.end_ms - truth.start_ms) as f64;
                values[i] += progress.clamp(0.0, 1.0) * truth.magnitude_sigmas * sigmas[i];
            }
            AnomalyKind::Stuck => values[i] = *self.stuck_value.get_or_insert(previous[i]),
            AnomalyKind::Dropout => return Effect::Silence,
        }
        Effect::Publish
    }
}
