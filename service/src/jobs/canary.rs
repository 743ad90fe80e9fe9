//! The canary criterion: do updated devices alarm more than the others?
//!
//! Alarms are counted as Poisson processes per device-time. Updated devices (their
//! execution succeeded at `t_i`) contribute their alarms created after `t_i` and the
//! exposure `now - t_i`; every other target contributes its alarms created after `t0`
//! (the job's first success) and the exposure `now - t0`. With counts `A_u`, `A_o` and
//! exposures `E_u`, `E_o`:
//!
//! - the rate ratio is `(A_u / E_u) / (A_o / E_o)`, with `A_o` taken as 0.5 when the
//!   others had no alarm (so the ratio stays finite and errs towards not aborting);
//! - the test is the conditional (exact) binomial test of two Poisson rates: given
//!   `K = A_u + A_o` alarms in all, under the null hypothesis of equal rates `A_u` is
//!   Binomial(`K`, `p0 = E_u / (E_u + E_o)`); the one-sided p-value is
//!   `P(X >= A_u)`. A small p-value says the updated devices alarm at a higher rate
//!   than chance would give.
//!
//! The job aborts when at least `min_updated` devices are updated, the ratio is at least
//! `ratio` and the p-value below `p_value`.

use fleetwatch_protocol::{Canary, CanaryFigures, ExecutionState};

use super::fleet::FleetView;
use super::state::JobState;

const HOUR_MS: f64 = 3_600_000.0;

/// The canary figures of `job` now.
pub fn evaluate(job: &JobState, fleet: &FleetView, canary: &Canary, now_ms: i64) -> CanaryFigures {
    let t0 = job.first_success_ms.unwrap_or(now_ms);
    let (mut updated, mut others) = (0u32, 0u32);
    let (mut a_u, mut a_o) = (0u64, 0u64);
    let (mut e_u, mut e_o) = (0f64, 0f64);
    fleet.with_all(|devices| {
        for device in &job.spec.devices {
            let alarms_after = |since: i64| {
                devices.get(device).map_or(0, |view| {
                    view.alarms
                        .iter()
                        .filter(|(_, at)| *at > since && *at <= now_ms)
                        .count() as u64
                })
            };
            match job.executions.get(device) {
                Some(e) if e.state == ExecutionState::Succeeded => {
                    updated += 1;
                    a_u += alarms_after(e.changed_ms);
                    e_u += (now_ms - e.changed_ms).max(0) as f64;
                }
                _ => {
                    others += 1;
                    a_o += alarms_after(t0);
                    e_o += (now_ms - t0).max(0) as f64;
                }
            }
        }
    });
    figures(canary, [updated, others], [a_u, a_o], [e_u, e_o])
}

/// The ratio, the test and the decision from the counts and exposures (ms).
pub fn figures(
    canary: &Canary,
    devices: [u32; 2],
    alarms: [u64; 2],
    exposure_ms: [f64; 2],
) -> CanaryFigures {
    let [a_u, a_o] = alarms;
    let [e_u, e_o] = exposure_ms;
    let rate_ratio = (e_u > 0.0 && e_o > 0.0 && a_u > 0).then(|| {
        let others = if a_o == 0 { 0.5 } else { a_o as f64 };
        (a_u as f64 / e_u) / (others / e_o)
    });
    let p_value = if e_u > 0.0 && e_o > 0.0 {
        binomial_upper_tail(a_u + a_o, a_u, e_u / (e_u + e_o))
    } else {
        1.0
    };
    let abort = devices[0] >= canary.min_updated
        && rate_ratio.is_some_and(|r| r >= canary.ratio)
        && p_value < canary.p_value;
    CanaryFigures {
        updated_devices: devices[0],
        other_devices: devices[1],
        updated_alarms: a_u,
        updated_device_hours: e_u / HOUR_MS,
        other_alarms: a_o,
        other_device_hours: e_o / HOUR_MS,
        rate_ratio,
        p_value,
        abort,
    }
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`, summed in log space.
pub fn binomial_upper_tail(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (ln_p, ln_q) = (p.ln(), (1.0 - p).ln());
    // ln C(n, i), built up from ln C(n, 0) = 0.
    let mut ln_choose = 0.0;
    let mut tail = 0.0;
    for i in 0..=n {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        if i >= k {
            tail += (ln_choose + i as f64 * ln_p + (n - i) as f64 * ln_q).exp();
        }
    }
    tail.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: Canary = Canary {
        min_updated: 2,
        ratio: 3.0,
        p_value: 0.01,
    };

    #[test]
    fn the_tail_matches_hand_computed_values() {
        // n = 6, p = 0.05: P(X >= 4) = 15·p^4·q^2 + 6·p^5·q + p^6.
        let (p, q) = (0.05f64, 0.95f64);
        let exact = 15.0 * p.powi(4) * q.powi(2) + 6.0 * p.powi(5) * q + p.powi(6);
        assert!((binomial_upper_tail(6, 4, 0.05) - exact).abs() < 1e-12);
        assert!((binomial_upper_tail(10, 0, 0.3) - 1.0).abs() < 1e-12);
        assert!((binomial_upper_tail(1, 1, 0.5) - 0.5).abs() < 1e-12);
        // Symmetry: P(X >= 6) of Binomial(10, 0.5) = 386/1024.
        assert!((binomial_upper_tail(10, 6, 0.5) - 386.0 / 1024.0).abs() < 1e-12);
    }

    #[test]
    fn aborts_only_when_the_ratio_and_the_test_both_say_so() {
        let hour = HOUR_MS;
        // 2 updated devices, 8 alarms in 2 device-hours; 38 others, 4 alarms in 38.
        let bad = figures(&CANARY, [2, 38], [8, 4], [2.0 * hour, 38.0 * hour]);
        assert!(bad.abort, "{bad:?}");
        assert!(bad.rate_ratio.unwrap() > 30.0 && bad.p_value < 1e-6);
        // The same rates: no abort.
        let same = figures(&CANARY, [2, 38], [1, 19], [2.0 * hour, 38.0 * hour]);
        assert!(!same.abort && same.p_value > 0.3, "{same:?}");
        // A high ratio on too little evidence: not significant.
        let thin = figures(&CANARY, [2, 38], [1, 0], [2.0 * hour, 38.0 * hour]);
        assert!(thin.rate_ratio.unwrap() >= 3.0 && thin.p_value > 0.01 && !thin.abort);
        // Too few updated devices.
        let few = figures(&CANARY, [1, 39], [8, 4], [1.0 * hour, 39.0 * hour]);
        assert!(!few.abort);
    }
}
