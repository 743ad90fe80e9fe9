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
