//! The per-device episode state machine: one incident, one episode. Pure, so that the
//! service's scorer role, the replay CLI and the NAB harness all decide alerts alike.
//!
//! ```text
//!   Closed --score >= threshold---------------------------------------> Open  (Opened)
//!   Open   --score >= escalate_ratio × last reported, or a new metric--> Open  (Escalated)
//!   Open   --clear_after_events calm events in a row------------------> Closed (Closed)
//! ```
//! A calm event scores below `clear_below`; any other event of an open episode resets the
//! calm count, so a flapping score stays one episode. The model never hides a score: an
//! open episode still reports a *bigger* fault (a clear margin above the last reported
//! score) or a *different* one (a metric not yet reported in this episode).

use crate::{Cause, ModelError, Score};

/// When episodes open, escalate and close. Build with [`EpisodeRules::recommended`] or
/// by hand, then [`EpisodeRules::check`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpisodeRules {
    /// A score at or above this opens an episode.
    pub threshold: f64,
    /// Scores below this are calm.
    pub clear_below: f64,
    /// An open episode closes after this many calm events in a row.
    pub clear_after_events: u32,
    /// An open episode escalates when a score reaches this multiple of its peak (> 1).
    pub escalate_ratio: f64,
}

/// Most distinct causes remembered per episode; later new causes still escalate on a
/// bigger score. Keeps the state bounded.
const MAX_CAUSES: usize = 8;

impl EpisodeRules {
    /// The production rules for a threshold: calm below half of it for 30 events in a
    /// row, escalate at 1.2 × the last reported score.
    pub fn recommended(threshold: f64) -> Self {
        Self {
            threshold,
            clear_below: 0.5 * threshold,
            clear_after_events: 30,
            escalate_ratio: 1.2,
        }
    }

    pub fn check(self) -> Result<Self, ModelError> {
        let valid = self.threshold > 0.0
            && self.clear_below >= 0.0
            && self.clear_below <= self.threshold
            && self.clear_after_events >= 1
            && self.escalate_ratio > 1.0;
        if valid {
            Ok(self)
        } else {
            Err(ModelError::InvalidConfig(format!(
                "episode rules need threshold > 0, 0 <= clear_below <= threshold, \
                 clear_after_events >= 1 and escalate_ratio > 1, got {self:?}"
            )))
        }
    }
}

/// What an event did to the episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Opened,
    /// A bigger or a different fault while open: the new peak and reason are the score's.
    Escalated,
    Closed,
}

/// The identity of a cause, `metric:kind` (e.g. `pressure:relation`): what makes a
/// fault "different" for escalation. Empty when the score has no contributor.
pub fn cause_label(score: &Score) -> String {
    let Some(top) = score.contributors.first() else {
        return String::new();
    };
    format!("{}:{}", top.metric, kind_label(&top.cause))
}

/// The name of a cause's kind, as [`cause_label`] writes it.
pub fn kind_label(cause: &Cause) -> &'static str {
    match cause {
        Cause::Deviation { .. } => "deviation",
        Cause::Stuck { .. } => "stuck",
        Cause::Gap { .. } => "gap",
        Cause::OutOfRange { .. } => "range",
        Cause::NewShape { .. } => "shape",
        Cause::Drift { .. } => "drift",
        Cause::Seasonal { .. } => "seasonal",
        Cause::Relation { .. } => "relation",
        Cause::Joint { .. } => "joint",
    }
}

/// The metric of a [`cause_label`]. An episode escalates when *another metric* breaks:
/// the same metric seen by another check as the fault goes on (a jump, then a drift,
/// then a broken relation) is the same incident.
fn metric_of(label: &str) -> &str {
    label.rsplit_once(':').map_or(label, |(metric, _)| metric)
}

/// One device's episode.
#[derive(Clone, Debug, Default)]
pub struct Episode {
    open: bool,
    /// Sequence number of the event that opened the current (or last) episode.
    opened_at_seq: u64,
    peak: f64,
    /// The score last reported (opened or escalated): escalation is measured from it.
    reported: f64,
    calm_events: u32,
    /// A boxed slice, grown by one (rebuilt: causes come seldom): every device keeps its
    /// last episode's.
    causes: Box<[String]>,
}

impl Episode {
    /// Feed one event's score; returns the transition it causes, if any. A score that is
    /// not ready counts as 0.
    pub fn observe(&mut self, rules: &EpisodeRules, score: &Score, seq: u64) -> Option<Transition> {
        let value = if score.ready { score.value } else { 0.0 };
        // The label is only needed for scores that can open or escalate.
        let label = if value >= rules.threshold {
            cause_label(score)
        } else {
            String::new()
        };
        self.observe_labelled(rules, value, &label, seq)
    }

    /// [`Episode::observe`] for a score already reduced to its value and
    /// [`cause_label`] (what the NAB harness and replay files keep per row).
    pub fn observe_labelled(
        &mut self,
        rules: &EpisodeRules,
        value: f64,
        label: &str,
        seq: u64,
    ) -> Option<Transition> {
        if !self.open {
            if value < rules.threshold {
                return None;
            }
            self.open = true;
            self.opened_at_seq = seq;
            self.peak = value;
            self.reported = value;
            self.calm_events = 0;
            self.causes = Box::default();
            if !label.is_empty() {
                self.add_cause(metric_of(label));
            }
            return Some(Transition::Opened);
        }
        if value < rules.clear_below {
            self.calm_events += 1;
            if self.calm_events >= rules.clear_after_events {
                self.open = false;
                return Some(Transition::Closed);
            }
            return None;
        }
        self.calm_events = 0;
        if value < rules.threshold {
            return None;
        }
        self.peak = self.peak.max(value);
        let bigger = value >= rules.escalate_ratio * self.reported;
        let metric = metric_of(label);
        let new_cause = !metric.is_empty() && !self.causes.iter().any(|c| c == metric);
        if new_cause && self.causes.len() < MAX_CAUSES {
            self.add_cause(metric);
        }
        if !(bigger || new_cause) {
            return None;
        }
        self.reported = self.reported.max(value);
        Some(Transition::Escalated)
    }

    fn add_cause(&mut self, metric: &str) {
        let causes = std::mem::take(&mut self.causes).into_vec();
        let added = causes.into_iter().chain([metric.to_owned()]);
        self.causes = added.collect();
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// End the open episode from outside the scores (another model took over the
    /// device's alerts): true when one was open. Its identity ([`Episode::opened_at`])
    /// stays, for the closing alert.
    pub fn close(&mut self) -> bool {
        std::mem::replace(&mut self.open, false)
    }

    /// The sequence number that opened the current (or just-closed) episode: with the
    /// device id, the episode's identity.
    pub fn opened_at(&self) -> u64 {
        self.opened_at_seq
    }

    /// The highest score of the current (or just-closed) episode.
    pub fn peak(&self) -> f64 {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MetricScore;

    const RULES: EpisodeRules = EpisodeRules {
        threshold: 0.6,
        clear_below: 0.3,
        clear_after_events: 3,
        escalate_ratio: 1.2,
    };

    fn score(value: f64, metric: &str) -> Score {
        Score {
            value,
            ready: true,
            contributors: vec![MetricScore {
                metric: metric.into(),
                value: 0.0,
                expected: 0.0,
                score: value,
                cause: Cause::Deviation { z: 1.0 },
            }],
        }
    }

    fn run(scores: &[(f64, &str)]) -> Vec<(usize, Transition)> {
        let mut episode = Episode::default();
        scores
            .iter()
            .enumerate()
            .filter_map(|(i, &(v, m))| {
                episode
                    .observe(&RULES, &score(v, m), i as u64)
                    .map(|t| (i, t))
            })
            .collect()
    }

    fn same(values: &[f64]) -> Vec<(f64, &'static str)> {
        values.iter().map(|&v| (v, "a")).collect()
    }

    #[test]
    fn one_open_and_one_close_per_episode() {
        let transitions = run(&same(&[0.1, 0.7, 0.65, 0.2, 0.7, 0.1, 0.1, 0.1, 0.1]));
        assert_eq!(
            transitions,
            vec![(1, Transition::Opened), (7, Transition::Closed)]
        );
    }

    #[test]
    fn hovering_near_the_threshold_is_one_episode() {
        let transitions = run(&same(&[0.61, 0.59, 0.61, 0.5, 0.62, 0.45, 0.6]));
        assert_eq!(transitions, vec![(0, Transition::Opened)]);
    }

    #[test]
    fn a_new_episode_after_a_close_opens_again() {
        let transitions = run(&same(&[0.9, 0.0, 0.0, 0.0, 0.8]));
        assert_eq!(
            transitions,
            vec![
                (0, Transition::Opened),
                (3, Transition::Closed),
                (4, Transition::Opened)
            ]
        );
    }

    #[test]
    fn a_bigger_fault_escalates_by_a_clear_margin_only() {
        // 0.65 opens; 0.75 is < 1.2 × 0.65 = 0.78; 0.8 escalates; 0.9 < 1.2 × 0.8 does not.
        let transitions = run(&same(&[0.65, 0.75, 0.8, 0.9]));
        assert_eq!(
            transitions,
            vec![(0, Transition::Opened), (2, Transition::Escalated)]
        );
    }

    #[test]
    fn a_different_metric_escalates_once() {
        let mut episode = Episode::default();
        let transitions: Vec<_> = [(0.7, "a"), (0.7, "b"), (0.7, "a"), (0.7, "b")]
            .iter()
            .enumerate()
            .filter_map(|(i, &(v, m))| episode.observe(&RULES, &score(v, m), i as u64))
            .collect();
        assert_eq!(transitions, vec![Transition::Opened, Transition::Escalated]);
        assert_eq!(episode.opened_at(), 0);
        assert_eq!(episode.peak(), 0.7);
    }

    #[test]
    fn the_same_metric_seen_by_another_check_is_the_same_incident() {
        let mut episode = Episode::default();
        let opened = episode.observe_labelled(&RULES, 0.7, "a:range", 0);
        let later = episode.observe_labelled(&RULES, 0.7, "a:drift", 1);
        let other = episode.observe_labelled(&RULES, 0.7, "b:relation", 2);
        assert_eq!(
            (opened, later, other),
            (Some(Transition::Opened), None, Some(Transition::Escalated))
        );
    }

    #[test]
    fn rules_are_checked() {
        assert!(EpisodeRules::recommended(0.65).check().is_ok());
        assert!(EpisodeRules {
            escalate_ratio: 1.0,
            ..RULES
        }
        .check()
        .is_err());
        assert!(EpisodeRules {
            clear_below: 0.9,
            ..RULES
        }
        .check()
        .is_err());
    }
}
