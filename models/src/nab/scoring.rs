//! NAB scoring, as specified in `shared/nab/SCORING.md` (numenta/NAB @ ea702d7): window
//! weights, the exhaustive threshold sweep over the pooled corpus, and normalisation.

/// One scoring profile's weights (`config/profiles.json`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

pub const PROFILES: [Profile; 3] = [
    Profile {
        name: "standard",
        tp: 1.0,
        fp: 0.11,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FP_rate",
        tp: 1.0,
        fp: 0.22,
        fn_: 1.0,
    },
    Profile {
        name: "reward_low_FN_rate",
        tp: 1.0,
        fp: 0.11,
        fn_: 2.0,
    },
];

/// Rows before this are not scored: min(⌊0.15·n⌋, 750).
pub fn probation_rows(n_rows: usize) -> usize {
    ((0.15 * n_rows as f64).floor() as usize).min(750)
}

/// S(y) = 2σ(−5y) − 1 for y ≤ 3, −1 beyond.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// A file's labels as row indices: inclusive `[start, end]` windows in file order.
#[derive(Clone, Debug, PartialEq)]
pub struct FileLabels {
    pub n_rows: usize,
    pub windows: Vec<(usize, usize)>,
}

/// Where a row stands for scoring.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowKind {
    /// In the probationary period: not scored.
    Probation,
    /// Inside window `index`; `weight` if it is the window's earliest detection.
    Window { index: usize, weight: f64 },
    /// Outside every window; `weight` (≤ 0) if detected.
    Outside { weight: f64 },
}

impl FileLabels {
    /// Every row's kind under `profile`.
    pub fn row_kinds(&self, profile: &Profile) -> Vec<RowKind> {
        let probation = probation_rows(self.n_rows);
        let max_tp = scaled_sigmoid(-1.0);
        let mut kinds = Vec::with_capacity(self.n_rows);
        let mut next_window = 0;
        let mut last_ended: Option<(usize, usize)> = None;
        for row in 0..self.n_rows {
            while next_window < self.windows.len() && self.windows[next_window].1 < row {
                last_ended = Some(self.windows[next_window]);
                next_window += 1;
            }
            let inside = self
                .windows
                .get(next_window)
                .filter(|(start, end)| (*start..=*end).contains(&row));
            let kind = if row < probation {
                RowKind::Probation
            } else if let Some(&(start, end)) = inside {
                let width = (end - start + 1) as f64;
                let y = -((end - row + 1) as f64) / width;
                RowKind::Window {
                    index: next_window,
                    weight: profile.tp * scaled_sigmoid(y) / max_tp,
                }
            } else {
                let weight = match last_ended {
                    None => -profile.fp,
                    Some((start, end)) => {
                        let width = (end - start + 1) as f64;
                        profile.fp * scaled_sigmoid((row - end) as f64 / (width - 1.0))
                    }
                };
                RowKind::Outside { weight }
            };
            kinds.push(kind);
        }
        kinds
    }
}

/// Raw NAB score of one file at threshold `theta`.
pub fn raw_file_score(labels: &FileLabels, scores: &[f64], profile: &Profile, theta: f64) -> f64 {
    let mut best: Vec<Option<f64>> = vec![None; labels.windows.len()];
    let mut raw = 0.0;
    for (kind, &score) in labels.row_kinds(profile).iter().zip(scores) {
        if score < theta {
            continue;
        }
        match *kind {
            RowKind::Probation => {}
            RowKind::Window { index, weight } => {
                best[index] = Some(best[index].map_or(weight, |b: f64| b.max(weight)))
            }
            RowKind::Outside { weight } => raw += weight,
        }
    }
    raw + best.iter().map(|b| b.unwrap_or(-profile.fn_)).sum::<f64>()
}

/// The threshold with the highest pooled raw score over all files (ties: the higher
/// threshold), and that score. Candidates: 1.1 (no detection) and every distinct score.
pub fn optimize_threshold(files: &[(&FileLabels, &[f64])], profile: &Profile) -> (f64, f64) {
    struct Row {
        score: f64,
        window: Option<usize>,
        weight: f64,
    }
    let mut rows = Vec::new();
    let mut window_count = 0;
    for (labels, scores) in files {
        for (kind, &score) in labels.row_kinds(profile).iter().zip(scores.iter()) {
            match *kind {
                RowKind::Probation => {}
                RowKind::Window { index, weight } => rows.push(Row {
                    score,
                    window: Some(window_count + index),
                    weight,
                }),
                RowKind::Outside { weight } => rows.push(Row {
                    score,
                    window: None,
                    weight,
                }),
            }
        }
        window_count += labels.windows.len();
    }
    rows.sort_by(|a, b| b.score.total_cmp(&a.score));

    let mut best_in_window: Vec<Option<f64>> = vec![None; window_count];
    let mut raw = -profile.fn_ * window_count as f64;
    let (mut best_theta, mut best_raw) = (1.1, raw);
    let mut i = 0;
    while i < rows.len() {
        let theta = rows[i].score;
        while i < rows.len() && rows[i].score == theta {
            let row = &rows[i];
            match row.window {
                None => raw += row.weight,
                Some(w) => {
                    let old = best_in_window[w].unwrap_or(-profile.fn_);
                    let new = best_in_window[w].map_or(row.weight, |b| b.max(row.weight));
                    best_in_window[w] = Some(new);
                    raw += new - old;
                }
            }
            i += 1;
        }
        if raw > best_raw {
            best_raw = raw;
            best_theta = theta;
        }
    }
    (best_theta, best_raw)
}

/// 100 · (raw − null) / (perfect − null), with null = −A_FN·windows (a detector that never
/// fires) and perfect = A_TP·windows.
pub fn normalize(raw: f64, profile: &Profile, windows: usize) -> f64 {
    let null = -profile.fn_ * windows as f64;
    let perfect = profile.tp * windows as f64;
    100.0 * (raw - null) / (perfect - null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDARD: Profile = PROFILES[0];

    #[test]
    fn sigmoid_constants_from_the_spec() {
        assert!((scaled_sigmoid(-1.0) - 0.986_614_298_151_430_5).abs() < 1e-15);
        assert!((scaled_sigmoid(-0.5) - 0.848_283_639_957_513_1).abs() < 1e-15);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert!((scaled_sigmoid(3.0) + 0.999_999_39).abs() < 1e-8);
        assert_eq!(scaled_sigmoid(3.0001), -1.0);
    }

    #[test]
    fn probation_is_fifteen_percent_capped_at_750() {
        assert_eq!(probation_rows(4032), 604);
        assert_eq!(probation_rows(10320), 750);
    }

    fn labels() -> FileLabels {
        // 1000 rows: probation 150; one window [400, 419].
        FileLabels {
            n_rows: 1000,
            windows: vec![(400, 419)],
        }
    }

    #[test]
    fn earliest_detection_in_a_window_scores_full_weight() {
        let mut scores = vec![0.0; 1000];
        scores[400] = 1.0;
        scores[410] = 1.0; // later detections in the same window add nothing
        assert!((raw_file_score(&labels(), &scores, &STANDARD, 0.5) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn misses_and_false_positives_cost_what_the_profile_says() {
        let mut scores = vec![0.0; 1000];
        assert_eq!(raw_file_score(&labels(), &scores, &STANDARD, 0.5), -1.0);
        scores[200] = 1.0; // before any window: −A_FP
        scores[100] = 1.0; // probation: nothing
        assert!((raw_file_score(&labels(), &scores, &STANDARD, 0.5) + 1.11).abs() < 1e-12);
        // right after the window the penalty is near zero; far after, the full −A_FP
        let kinds = labels().row_kinds(&STANDARD);
        let RowKind::Outside { weight: near } = kinds[420] else {
            panic!()
        };
        let RowKind::Outside { weight: far } = kinds[900] else {
            panic!()
        };
        assert!(near > -0.02 && near < 0.0, "{near}");
        assert_eq!(far, -0.11);
    }

    #[test]
    fn the_sweep_finds_the_best_threshold() {
        let mut scores = vec![0.1; 1000];
        scores[405] = 0.9; // a detection in the window
        scores[700] = 0.8; // a false positive below it
        let files = [(&labels(), scores.as_slice())];
        let (theta, raw) = optimize_threshold(&files, &STANDARD);
        assert_eq!(theta, 0.9);
        assert!((raw - raw_file_score(&labels(), &scores, &STANDARD, 0.9)).abs() < 1e-12);
    }

    /// The published scoreboard: each detector's summed raw score (the `Totals` row of its
    /// results CSV) normalises to its number in `final_results.json`.
    #[test]
    fn normalisation_reproduces_the_published_scoreboard() {
        let nab = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/nab/results");
        let Ok(final_results) = std::fs::read_to_string(nab.join("final_results.json")) else {
            panic!("shared/nab is missing beside the repository");
        };
        let published: serde_json::Value = serde_json::from_str(&final_results).unwrap();
        let mut checked = 0;
        for (detector, profiles) in published.as_object().unwrap() {
            for profile in PROFILES {
                let file = nab
                    .join(detector)
                    .join(format!("{detector}_{}_scores.csv", profile.name));
                let Ok(text) = std::fs::read_to_string(file) else {
                    continue;
                };
                let Some(totals) = text.lines().find(|line| line.starts_with("Totals")) else {
                    continue;
                };
                let raw: f64 = totals.split(',').nth(4).unwrap().parse().unwrap();
                let expected = profiles[profile.name].as_f64().unwrap();
                let got = normalize(raw, &profile, 116);
                // Some stored Totals are known to be stale (see shared/nab/README.md).
                if (got - expected).abs() < 1e-6 {
                    checked += 1;
                }
            }
        }
        assert!(checked >= 40, "only {checked} published scores reproduced");
    }
}
