//! Realistic device signals: a daily cycle, correlated noise across metrics, and a
//! per-device baseline.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// One metric of a device: `base + amplitude × cycle + sigma × noise`, where the noise
/// mixes a component shared by all of the device's metrics (with weight `shared`) and one
/// of its own, so metrics are correlated as real ones are (hot rooms draw more power).
#[derive(Clone, Debug)]
pub struct MetricSignal {
    pub name: &'static str,
    pub base: f64,
    pub amplitude: f64,
    pub sigma: f64,
    /// Correlation with the device's shared noise, in [-1, 1].
    pub shared: f64,
}

impl MetricSignal {
    pub fn value(&self, cycle: f64, shared_noise: f64, own_noise: f64) -> f64 {
        let own_weight = (1.0 - self.shared * self.shared).sqrt();
        self.base
            + self.amplitude * cycle
            + self.sigma * (self.shared * shared_noise + own_weight * own_noise)
    }
}

/// A device's signal model.
#[derive(Clone, Debug)]
pub struct DeviceSignal {
    pub metrics: Vec<MetricSignal>,
    /// Phase of the daily cycle, radians.
    pub phase: f64,
    pub day_secs: f64,
}

impl DeviceSignal {
    /// A device like a room sensor with a meter: temperature, humidity, power.
    pub fn random(rng: &mut impl Rng, day_secs: f64) -> Self {
        let temperature_base = rng.random_range(18.0..24.0);
        Self {
            metrics: vec![
                MetricSignal {
                    name: "temperature",
                    base: temperature_base,
                    amplitude: 3.0,
                    sigma: 0.3,
                    shared: 0.7,
                },
                MetricSignal {
                    name: "humidity",
                    base: rng.random_range(40.0..60.0),
                    amplitude: -8.0,
                    sigma: 1.0,
                    shared: -0.6,
                },
                MetricSignal {
                    name: "power",
                    base: rng.random_range(80.0..160.0),
                    amplitude: 25.0,
                    sigma: 2.0,
                    shared: 0.8,
                },
            ],
            phase: rng.random_range(0.0..std::f64::consts::TAU),
            day_secs,
        }
    }

    /// Readings at `t_ms`, rounded to the precision a real sensor reports.
    pub fn sample(&self, t_ms: i64, rng: &mut impl Rng) -> Vec<f64> {
        let cycle =
            (std::f64::consts::TAU * (t_ms as f64 / 1000.0) / self.day_secs + self.phase).sin();
        let shared: f64 = StandardNormal.sample(rng);
        self.metrics
            .iter()
            .map(|metric| {
                let own: f64 = StandardNormal.sample(rng);
                (metric.value(cycle, shared, own) * 1000.0).round() / 1000.0
            })
            .collect()
    }
}
