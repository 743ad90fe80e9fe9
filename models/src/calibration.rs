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

/// The standard normal z-score whose tail is that of `t` under a Student t with `dof`
/// degrees of freedom (Wallace's approximation, close far into the tails). A spread
/// learned from a few dozen readings is itself uncertain, so a young metric's error has
/// to lie further out to be as improbable: at 29 degrees of freedom 6.6 spreads are as
/// rare as 5.1 of a Gaussian, at 299 about 5.2.
pub fn student_as_normal(t: f64, dof: f64) -> f64 {
    let z = (dof * (t * t / dof).ln_1p()).sqrt() * (8.0 * dof + 1.0) / (8.0 * dof + 3.0);
    z.copysign(t)
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

    #[test]
    fn a_student_t_maps_to_the_normal_of_the_same_tail() {
        // P(|T_29| > 2.045) = 0.05, P(|T_5| > 4.032) = 0.01: the normal's 1.96 and 2.576.
        assert!((student_as_normal(2.045, 29.0) - 1.96).abs() < 0.01);
        assert!((student_as_normal(-4.032, 5.0) + 2.576).abs() < 0.02);
        // Many degrees of freedom: the normal itself; few: far from it.
        assert!((student_as_normal(5.0, 1e6) - 5.0).abs() < 1e-3);
        assert!(student_as_normal(6.5, 29.0) < 5.1 && student_as_normal(6.7, 29.0) > 5.1);
    }
}
