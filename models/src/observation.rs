use std::collections::BTreeMap;

/// One telemetry event as the models see it: the device's timestamp and its metrics.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// Device clock in milliseconds. Used for gaps between events, never for ordering.
    pub ts_ms: i64,
    pub metrics: &'a BTreeMap<String, f64>,
}
