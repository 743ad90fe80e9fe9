//! Gaussian tail probabilities in log space, accurate far into the tail.

/// Natural log of the two-sided tail probability P(|N(0,1)| > z), accurate far into the
/// tail (no underflow), from the erfc approximation of Numerical Recipes (relative error
/// below 1.2e-7).
pub fn ln_two_sided_tail(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t.ln() + poly
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_known_tail_probabilities() {
        // P(|Z| > 1.96) = 0.05, P(|Z| > 3) = 0.0027, P(|Z| > 6) = 1.97e-9
        assert!((ln_two_sided_tail(1.96).exp() - 0.05).abs() < 1e-4);
        assert!((ln_two_sided_tail(3.0).exp() - 0.0027).abs() < 1e-5);
        assert!((ln_two_sided_tail(6.0).exp() / 1.973e-9 - 1.0).abs() < 1e-3);
    }
}
