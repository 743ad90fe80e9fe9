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

    /// The metric's normal range: the 5th and 95th percentiles of its values over a whole
    /// cycle, the cycle and the noise together (what a model that has seen every phase
    /// would call usual). `sigma` must be positive.
    pub fn normal_range(&self) -> (f64, f64) {
        (self.quantile(0.05), self.quantile(0.95))
    }

    /// Quantile `p` of `base + amplitude × sin(θ) + sigma × N(0, 1)` with θ uniform: the
    /// distribution function is averaged over evenly spaced phases and solved by
    /// bisection. About 40,000 evaluations of the normal distribution function: cheap
    /// next to an anomaly, too dear for every reading.
    fn quantile(&self, p: f64) -> f64 {
        const PHASES: usize = 720;
        let cdf = |x: f64| {
            let total: f64 = (0..PHASES)
                .map(|k| {
                    let theta = std::f64::consts::TAU * (k as f64 + 0.5) / PHASES as f64;
                    normal_cdf((x - self.base - self.amplitude * theta.sin()) / self.sigma)
                })
                .sum();
            total / PHASES as f64
        };
        let reach = self.amplitude.abs() + 10.0 * self.sigma;
        let (mut low, mut high) = (self.base - reach, self.base + reach);
        for _ in 0..55 {
            let middle = 0.5 * (low + high);
            if cdf(middle) < p {
                low = middle;
            } else {
                high = middle;
            }
        }
        0.5 * (low + high)
    }
}

/// The standard normal distribution function, by Abramowitz and Stegun's 7.1.26
/// approximation of erf (absolute error below 1.5e-7: far below what a quantile of a
/// simulated signal needs).
fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
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

    /// Where the daily cycle stands at `t_ms`, in [-1, 1].
    pub fn cycle(&self, t_ms: i64) -> f64 {
        (std::f64::consts::TAU * (t_ms as f64 / 1000.0) / self.day_secs + self.phase).sin()
    }

    /// Readings at `t_ms`, rounded to the precision a real sensor reports.
    pub fn sample(&self, t_ms: i64, rng: &mut impl Rng) -> Vec<f64> {
        let cycle = self.cycle(t_ms);
        let shared: f64 = StandardNormal.sample(rng);
        self.metrics
            .iter()
            .map(|metric| {
                let own: f64 = StandardNormal.sample(rng);
                round_like_a_sensor(metric.value(cycle, shared, own))
            })
            .collect()
    }
}

/// The precision a real sensor reports: three decimals.
pub fn round_like_a_sensor(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn normal_cdf_matches_known_values() {
        for (z, expected) in [(0.0, 0.5), (1.0, 0.841_344_7), (-1.644_853_6, 0.05)] {
            assert!((normal_cdf(z) - expected).abs() < 1e-6, "{z}");
        }
    }

    /// The computed range agrees with the 5th and 95th percentiles of readings drawn at
    /// random times over whole cycles.
    #[test]
    fn normal_range_is_the_5_to_95_percentile_range_of_the_readings() {
        let mut rng = StdRng::seed_from_u64(3);
        let device = DeviceSignal::random(&mut rng, 600.0);
        let mut columns = vec![Vec::new(); device.metrics.len()];
        for _ in 0..40_000 {
            let t_ms = rng.random_range(0..600_000);
            for (column, value) in columns.iter_mut().zip(device.sample(t_ms, &mut rng)) {
                column.push(value);
            }
        }
        for (metric, column) in device.metrics.iter().zip(&mut columns) {
            column.sort_by(f64::total_cmp);
            let empirical = (column[column.len() / 20], column[column.len() * 19 / 20]);
            let (low, high) = metric.normal_range();
            assert!(
                (low - empirical.0).abs() < 0.1 * metric.sigma
                    && (high - empirical.1).abs() < 0.1 * metric.sigma,
                "{}: computed {:?}, drawn {:?}",
                metric.name,
                (low, high),
                empirical
            );
        }
    }
}
