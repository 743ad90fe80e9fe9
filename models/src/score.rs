use serde::{Deserialize, Serialize};

/// Why a metric (or the event as a whole) looks anomalous.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    /// The value lies `z` standard deviations from what the model expected.
    Deviation { z: f64 },
    /// The value has not changed for `repeats` events although the metric normally varies.
    Stuck { repeats: u32 },
    /// No event arrived for `gap_ms`, about `ratio` times the device's usual interval.
    Gap { gap_ms: i64, ratio: f64 },
    /// The value lies beyond the range seen so far (`min`..`max`) by a clear margin.
    OutOfRange { min: f64, max: f64 },
    /// The recent shape of the metric is unlike the shapes remembered: `ratio` times the
    /// distance that counts as new (0 when it is only unusually far from them).
    NewShape { ratio: f64 },
    /// The metric has drifted away from what the model predicts: its recent errors lean
    /// one way, `z` standard deviations of their usual average.
    Drift { z: f64 },
    /// The metric has left its usual pattern for this time of day (or week): its recent
    /// readings lean one way from the learned seasonal profile, `z` standard deviations of
    /// their usual lean.
    Seasonal { z: f64, usual: f64 },
    /// The relation between metrics broke: the metric is off from the value the other
    /// metrics imply (`expected`), together with `with`; `ratio` is the residual's size
    /// (SPE) against its 99% control limit.
    Relation { with: Vec<String>, ratio: f64 },
    /// The metrics move as they usually do together, but to a combination far from usual
    /// (Hotelling's T², `ratio` times its 99% control limit); the metric carries most of it.
    Joint { ratio: f64 },
}

/// The score of one part of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricScore {
    /// Metric name, or `(interval)` for the time between events.
    pub metric: String,
    pub value: f64,
    pub expected: f64,
    /// In [0, 1].
    pub score: f64,
    pub cause: Cause,
}

/// The score of one event: the largest part score, and the parts ordered by score.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// In [0, 1]; compare with the model's recommended threshold.
    pub value: f64,
    /// False while the model is still warming up for this device: no verdict yet.
    pub ready: bool,
    /// The parts that score at all (0.05 or more), largest first.
    pub contributors: Vec<MetricScore>,
}

impl Score {
    pub(crate) fn from_parts(mut parts: Vec<MetricScore>) -> Self {
        parts.sort_by(|a, b| b.score.total_cmp(&a.score));
        Self {
            value: parts.first().map_or(0.0, |top| top.score),
            ready: true,
            contributors: parts,
        }
    }

    /// One sentence naming what is wrong, for alerts.
    pub fn reason(&self) -> String {
        let Some(top) = self.contributors.first() else {
            return "nothing unusual".to_owned();
        };
        let main = describe(top);
        let others: Vec<&str> = self
            .contributors
            .iter()
            .skip(1)
            .filter(|part| part.score >= top.score * 0.5 && part.score > 0.0)
            .map(|part| part.metric.as_str())
            .collect();
        if others.is_empty() {
            main
        } else {
            format!("{main}; also unusual: {}", others.join(", "))
        }
    }
}

/// The sentence for the metric that contributes most: what it did and how unusual it is.
fn describe(top: &MetricScore) -> String {
    match &top.cause {
        Cause::Deviation { z } => format!(
            "{} = {:.3} is {:.1} standard deviations {} the expected {:.3}",
            top.metric,
            top.value,
            z.abs(),
            if *z >= 0.0 { "above" } else { "below" },
            top.expected
        ),
        Cause::Stuck { repeats } => format!(
            "{} stuck at {:.3} for {repeats} readings although it normally varies",
            top.metric, top.value
        ),
        Cause::Gap { gap_ms, ratio } => format!(
            "no data for {:.1} s, {ratio:.0} times the usual interval",
            *gap_ms as f64 / 1000.0
        ),
        Cause::OutOfRange { min, max } => format!(
            "{} = {:.3} is outside the range seen so far ({min:.3} to {max:.3})",
            top.metric, top.value
        ),
        Cause::NewShape { ratio } if *ratio > 1.0 => format!(
            "{} = {:.3} moves in a way not seen before ({ratio:.1} times farther from \
             every remembered pattern than a new one)",
            top.metric, top.value
        ),
        Cause::NewShape { .. } => format!(
            "{} = {:.3} moves unlike its usual patterns",
            top.metric, top.value
        ),
        Cause::Seasonal { z, usual } => format!(
            "{} = {:.3} is {} its usual {:.3} for this time ({:.1} standard deviations of its usual lean)",
            top.metric,
            top.value,
            if *z >= 0.0 { "above" } else { "below" },
            usual,
            z.abs()
        ),
        Cause::Drift { z } => format!(
            "{} = {:.3} has drifted {} the expected {:.3} ({:.1} standard deviations of its usual drift)",
            top.metric,
            top.value,
            if *z >= 0.0 { "above" } else { "below" },
            top.expected,
            z.abs()
        ),
        Cause::Joint { ratio } => format!(
            "{} = {:.3} (usually {:.3}) takes the metrics together far from their usual \
             combinations ({ratio:.0} times the 99% control limit)",
            top.metric, top.value, top.expected
        ),
        Cause::Relation { with, ratio } => {
            let broken = if with.is_empty() {
                format!("{} no longer follows the other metrics", top.metric)
            } else {
                format!("{} and {} no longer move together", top.metric, with.join(" and "))
            };
            format!(
                "{broken}: {} = {:.3} where the others imply {:.3} \
                 (relation error {ratio:.0} times its 99% control limit)",
                top.metric, top.value, top.expected
            )
        }
    }
}
