//! The benches' simulated readings: 8 metrics, each a sine plus deterministic noise.

use std::collections::BTreeMap;

use fleetwatch_protocol::TelemetryPayload;

pub const METRICS: [&str; 8] = [
    "temperature",
    "humidity",
    "power",
    "voltage",
    "current",
    "pressure",
    "vibration",
    "rpm",
];
/// Device clock of reading 0; readings are `INTERVAL_MS` apart.
pub const T0_MS: i64 = 1_800_000_000_000;
pub const INTERVAL_MS: i64 = 10_000;

/// Deterministic noise in [-1, 1): a 64-bit LCG (Knuth's MMIX constants).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn noise(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

/// Reading `seq` of device `n`: each metric a sine (its own period, phase and level) plus
/// noise; `spike` lifts the first two metrics far out of their range.
pub fn telemetry(n: usize, seq: u64, noise: &mut Lcg, spike: bool) -> TelemetryPayload {
    let metrics = METRICS
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let level = 10.0 * (m + 1) as f64 + (n % 7) as f64;
            let period = 60.0 + 30.0 * m as f64;
            let phase = (seq as f64 + n as f64) * std::f64::consts::TAU / period;
            let mut value = level + 2.0 * phase.sin() + 0.3 * noise.noise();
            if spike && m < 2 {
                value += 50.0;
            }
            ((*name).into(), value)
        })
        .collect::<BTreeMap<_, _>>();
    TelemetryPayload {
        ts: T0_MS + seq as i64 * INTERVAL_MS,
        seq,
        metrics,
    }
}
