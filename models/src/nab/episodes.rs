//! NAB scored the way the product alerts: a detection is a row where the episode machine
//! opens or escalates an episode, under one threshold per profile for all files (chosen
//! from a fixed grid, since every threshold needs its own run of the episode machine).

use crate::episode::{Episode, EpisodeRules, Transition};

use super::scoring::{raw_file_score, FileLabels, Profile};

/// Candidate thresholds: 0.300, 0.305, …, 1.000.
pub fn threshold_grid() -> Vec<f64> {
    (0..=140).map(|i| 0.3 + 0.005 * f64::from(i)).collect()
}

/// One row as the harness keeps it: the (ready-adjusted) score and its cause label.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub score: f64,
    pub cause: String,
}

/// 1.0 where an episode opens or escalates at `threshold` (production episode rules),
/// else 0.0: the indicator that NAB's scoring counts as detections.
pub fn detections(rows: &[Row], threshold: f64) -> Vec<f64> {
    detections_with(rows, &EpisodeRules::recommended(threshold))
}

/// [`detections`] under any episode rules (for experiments).
pub fn detections_with(rows: &[Row], rules: &EpisodeRules) -> Vec<f64> {
    let mut episode = Episode::default();
    rows.iter()
        .enumerate()
        .map(|(seq, row)| {
            match episode.observe_labelled(rules, row.score, &row.cause, seq as u64) {
                Some(Transition::Opened | Transition::Escalated) => 1.0,
                _ => 0.0,
            }
        })
        .collect()
}

/// A file for scoring: its labels, rows and category (the folder of its key).
pub struct ScoredFile<'a> {
    pub category: &'a str,
    pub labels: &'a FileLabels,
    pub rows: &'a [Row],
}

/// Raw scores of every file at every grid threshold: `raw[t][f]`.
pub fn raw_table(
    files: &[ScoredFile<'_>],
    profile: &Profile,
    grid: &[f64],
    rules: impl Fn(f64) -> EpisodeRules,
) -> Vec<Vec<f64>> {
    grid.iter()
        .map(|&theta| {
            let rules = rules(theta);
            files
                .iter()
                .map(|f| raw_file_score(f.labels, &detections_with(f.rows, &rules), profile, 0.5))
                .collect()
        })
        .collect()
}

/// The grid index with the best summed raw score over the files `keep` selects (ties:
/// the higher threshold), and that sum.
pub fn best_threshold(raw: &[Vec<f64>], keep: impl Fn(usize) -> bool) -> (usize, f64) {
    let mut best = (0, f64::NEG_INFINITY);
    for (t, per_file) in raw.iter().enumerate() {
        let sum: f64 = per_file
            .iter()
            .enumerate()
            .filter(|(f, _)| keep(*f))
            .map(|(_, r)| r)
            .sum();
        if sum >= best.1 {
            best = (t, sum);
        }
    }
    best
}

/// Leave one category out: each category is scored at the threshold chosen on all the
/// other categories; returns the summed raw score and, per category, the threshold index.
pub fn leave_one_category_out(
    files: &[ScoredFile<'_>],
    raw: &[Vec<f64>],
) -> (f64, Vec<(String, usize)>) {
    let mut categories: Vec<&str> = files.iter().map(|f| f.category).collect();
    categories.sort_unstable();
    categories.dedup();
    let mut total = 0.0;
    let mut chosen = Vec::new();
    for category in categories {
        let (t, _) = best_threshold(raw, |f| files[f].category != category);
        total += files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.category == category)
            .map(|(i, _)| raw[t][i])
            .sum::<f64>();
        chosen.push((category.to_owned(), t));
    }
    (total, chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(scores: &[f64]) -> Vec<Row> {
        scores
            .iter()
            .map(|&score| Row {
                score,
                cause: "value:deviation".into(),
            })
            .collect()
    }

    #[test]
    fn detections_are_episode_openings_and_escalations() {
        // Opens at 1, escalates at 3 (0.9 >= 1.2 × 0.7), closes after 30 calm rows, opens
        // again at 34.
        let mut scores = vec![0.0, 0.7, 0.7, 0.9];
        scores.extend([0.0; 30]);
        scores.push(0.8);
        let found = detections(&rows(&scores), 0.65);
        let at: Vec<usize> = (0..found.len()).filter(|&i| found[i] == 1.0).collect();
        assert_eq!(at, vec![1, 3, 34]);
    }

    #[test]
    fn the_grid_and_the_choice() {
        let grid = threshold_grid();
        assert_eq!(grid.len(), 141);
        assert!((grid[140] - 1.0).abs() < 1e-12);
        let raw = vec![vec![1.0, -1.0], vec![0.5, 0.5], vec![0.0, 0.9]];
        assert_eq!(best_threshold(&raw, |_| true), (1, 1.0));
        assert_eq!(best_threshold(&raw, |f| f == 1), (2, 0.9));
    }
}
