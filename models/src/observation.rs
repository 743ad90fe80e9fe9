use std::collections::BTreeMap;

/// A metric's name. Names up to 24 bytes (every name the fleets we know send) are stored
/// inline: the roles that decode each reading build its map without a heap allocation per
/// name (docs/benchmarks.md, "names without a heap allocation per reading").
pub type MetricName = compact_str::CompactString;

/// A reading's values: metric name → value, in name order.
pub type MetricValues = BTreeMap<MetricName, f64>;

/// One telemetry event as the models see it: the device's timestamp and its metrics.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Device clock in milliseconds. Used for gaps between events, never for ordering.
    pub ts_ms: i64,
    pub metrics: &'a MetricValues,
}
