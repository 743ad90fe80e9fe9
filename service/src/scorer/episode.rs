//! The per-device alert state machine: one alert when an anomaly episode starts, one when
//! it ends, never a duplicate.
//!
//! ```text
//!   Normal --score >= threshold--> Active   (emit Raised)
//!   Active --N calm events in a row--> Normal (emit Cleared)
//! ```
//! A calm event scores below `clear_ratio × threshold`; anything else in an episode resets
//! the count, so a flapping score stays one episode.

use fleetwatch_protocol::AlertState;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpisodeRules {
    pub threshold: f64,
    pub clear_below: f64,
    pub clear_after_events: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Episode {
    open: bool,
    /// Sequence number of the event that raised the open (or last) episode.
    opened_at_seq: u64,
    calm_events: u32,
}

impl Episode {
    /// Feed one event's score; returns the transition it causes, if any.
    pub fn observe(&mut self, rules: &EpisodeRules, score: f64, seq: u64) -> Option<AlertState> {
        match self.open {
            false if score >= rules.threshold => {
                self.open = true;
                self.opened_at_seq = seq;
                self.calm_events = 0;
                Some(AlertState::Raised)
            }
            false => None,
            true if score < rules.clear_below => {
                self.calm_events += 1;
                if self.calm_events >= rules.clear_after_events {
                    self.open = false;
                    Some(AlertState::Cleared)
                } else {
                    None
                }
            }
            true => {
                self.calm_events = 0;
                None
            }
        }
    }

    /// The sequence number that opened the current (or just-closed) episode: with the
    /// device id, the episode's identity.
    pub fn opened_at(&self) -> u64 {
        self.opened_at_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: EpisodeRules = EpisodeRules {
        threshold: 0.6,
        clear_below: 0.3,
        clear_after_events: 3,
    };

    fn run(scores: &[f64]) -> Vec<(usize, AlertState)> {
        let mut episode = Episode::default();
        scores
            .iter()
            .enumerate()
            .filter_map(|(i, &score)| episode.observe(&RULES, score, i as u64).map(|t| (i, t)))
            .collect()
    }

    #[test]
    fn one_raise_and_one_clear_per_episode() {
        let transitions = run(&[0.1, 0.7, 0.9, 0.2, 0.7, 0.1, 0.1, 0.1, 0.1]);
        assert_eq!(
            transitions,
            vec![(1, AlertState::Raised), (7, AlertState::Cleared)]
        );
    }

    #[test]
    fn hovering_near_the_threshold_is_one_episode() {
        let transitions = run(&[0.61, 0.59, 0.61, 0.5, 0.62, 0.45, 0.6]);
        assert_eq!(transitions, vec![(0, AlertState::Raised)]);
    }

    #[test]
    fn a_new_episode_after_a_clear_raises_again() {
        let transitions = run(&[0.9, 0.0, 0.0, 0.0, 0.8]);
        assert_eq!(
            transitions,
            vec![
                (0, AlertState::Raised),
                (3, AlertState::Cleared),
                (4, AlertState::Raised)
            ]
        );
    }
}
