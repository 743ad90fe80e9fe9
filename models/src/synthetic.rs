//! Seeded synthetic series for tests, benchmarks and the false-alarm measurement: a tiny
//! PRNG (SplitMix64) with Gaussian draws, so results are reproducible without a RNG crate.

/// SplitMix64: small, fast, and good enough for test data.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A stationary process of unit noise standard deviation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Process {
    /// Independent Gaussian noise.
    Gaussian,
    /// AR(1) with this coefficient, scaled to unit marginal standard deviation.
    Ar1(f64),
}

/// One metric's values: `process`, plus a seasonal sine of `amplitude` (in noise
/// standard deviations) and `period` readings when `amplitude > 0`.
pub fn series(rng: &mut Rng, process: Process, amplitude: f64, period: f64, n: usize) -> Vec<f64> {
    let mut state = 0.0;
    (0..n)
        .map(|i| {
            let noise = match process {
                Process::Gaussian => rng.gaussian(),
                Process::Ar1(phi) => {
                    state = phi * state + (1.0 - phi * phi).sqrt() * rng.gaussian();
                    state
                }
            };
            let season = if amplitude > 0.0 {
                amplitude * (std::f64::consts::TAU * i as f64 / period).sin()
            } else {
                0.0
            };
            100.0 + season + noise
        })
        .collect()
}

/// Readings of `metrics` metrics that share a cycle of `period` readings in pairs (even
/// metrics rise with it, odd ones fall), with Gaussian noise of 0.5, `interval_ms` apart:
/// relations for the model to learn. Seed 42, so every caller gets the same series: the
/// model's criterion bench and the load harness's machine reference time the same work.
pub fn related_readings(
    metrics: usize,
    events: usize,
    interval_ms: i64,
    period: f64,
) -> Vec<(i64, crate::MetricValues)> {
    let mut rng = Rng::new(42);
    (0..events)
        .map(|i| {
            let cycle = (std::f64::consts::TAU * i as f64 / period).sin();
            let values = (0..metrics)
                .map(|m| {
                    let weight = if m % 2 == 0 { 3.0 } else { -2.0 };
                    let value = 20.0 + m as f64 + weight * cycle + rng.gaussian() * 0.5;
                    (format!("metric_{m:02}").into(), value)
                })
                .collect();
            (1_700_000_000_000 + i as i64 * interval_ms, values)
        })
        .collect()
}
