//! The NAB harness: runs the production trainer/scorer pair over every file of the
//! Numenta Anomaly Benchmark, one record at a time, and scores what the product alerts on:
//! a detection is a row where the episode machine opens or escalates an episode, at one
//! threshold per profile for all files (from a fixed grid). Also reports each profile
//! with leave-one-category-out thresholds.
//!
//! `cargo run --release -p fleetwatch-models --bin nab -- --data ../shared/nab --out DIR`

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use fleetwatch_models::episode::{cause_label, EpisodeRules};
use fleetwatch_models::nab::episodes::{
    best_threshold, detections, leave_one_category_out, raw_table, threshold_grid, Row, ScoredFile,
};
use fleetwatch_models::nab::{self, normalize, raw_file_score, FileLabels, PROFILES};
use fleetwatch_models::production::{self, DEFAULT_PUBLISH_EVERY};
use fleetwatch_models::replay::replay;
use plotters::prelude::*;

#[derive(Parser)]
#[command(about = "Score the production model on the Numenta Anomaly Benchmark")]
struct Cli {
    /// NAB folder with data/ and labels/combined_windows.json.
    #[arg(long)]
    data: PathBuf,
    /// Where to write per-file CSVs, plots and scores.json.
    #[arg(long)]
    out: PathBuf,
    /// The scorer sees parameters published every this many records.
    #[arg(long, default_value_t = DEFAULT_PUBLISH_EVERY)]
    publish_every: u32,
    /// Model configuration (JSON) instead of the production default, for experiments.
    /// Reported results use the default.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Skip the PNG plots.
    #[arg(long)]
    no_plots: bool,
}

struct NabFile {
    key: String,
    raw_timestamps: Vec<String>,
    timestamps: Vec<i64>,
    values: Vec<f64>,
    labels: FileLabels,
}

fn load(data: &Path) -> Result<Vec<NabFile>> {
    let windows_path = data.join("labels/combined_windows.json");
    let windows: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(
        &fs::read_to_string(&windows_path)
            .with_context(|| format!("reading {}", windows_path.display()))?,
    )?;
    let mut files = Vec::new();
    for (key, file_windows) in windows {
        let path = data.join("data").join(&key);
        let mut reader =
            csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
        let (mut raw_timestamps, mut timestamps, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (row, record) in reader.records().enumerate() {
            let record = record.with_context(|| format!("{key} row {}", row + 2))?;
            let ts = nab::parse_timestamp_ms(&record[0]).with_context(|| {
                format!("{key} row {}: bad timestamp {:?}", row + 2, &record[0])
            })?;
            let value: f64 = record[1]
                .trim()
                .parse()
                .with_context(|| format!("{key} row {}: bad value {:?}", row + 2, &record[1]))?;
            raw_timestamps.push(record[0].to_owned());
            timestamps.push(ts);
            values.push(value);
        }
        let parsed: Vec<(i64, i64)> = file_windows
            .iter()
            .map(|(start, end)| {
                Ok((
                    nab::parse_timestamp_ms(start).context("bad window start")?,
                    nab::parse_timestamp_ms(end).context("bad window end")?,
                ))
            })
            .collect::<Result<_>>()?;
        let rows = nab::windows_to_rows(&timestamps, &parsed)
            .map_err(anyhow::Error::msg)
            .with_context(|| key.clone())?;
        let n_rows = values.len();
        files.push(NabFile {
            key,
            raw_timestamps,
            timestamps,
            values,
            labels: FileLabels {
                n_rows,
                windows: rows,
            },
        });
    }
    if files.is_empty() {
        bail!("no files listed in {}", windows_path.display());
    }
    Ok(files)
}

/// Each file is a fresh device: a new trainer and scorer, one record at a time. Scores
/// are rounded as written to the per-row CSVs, so an independent scorer reading them
/// sees exactly what was scored.
fn score_file(file: &NabFile, config: &production::Config, publish_every: u32) -> Vec<Row> {
    let observations = file
        .timestamps
        .iter()
        .zip(&file.values)
        .map(|(&ts, &value)| (ts, BTreeMap::from([("value".into(), value)])));
    replay(
        production::trainer(config),
        production::scorer(),
        publish_every,
        observations,
    )
    .into_iter()
    .map(|score| {
        let value = if score.ready { score.value } else { 0.0 };
        Row {
            score: format!("{value:.9}").parse().unwrap_or(0.0),
            cause: if score.ready {
                cause_label(&score)
            } else {
                String::new()
            },
        }
    })
    .collect()
}

fn plot(path: &Path, file: &NabFile, rows: &[Row], threshold: f64) -> Result<()> {
    let scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
    let found = detections(rows, threshold);
    let root = BitMapBackend::new(path, (1200, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let n = file.values.len();
    let (lo, hi) = file
        .values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let pad = ((hi - lo) * 0.05).max(1e-9);
    let mut chart = ChartBuilder::on(&top)
        .margin(5)
        .build_cartesian_2d(0..n, (lo - pad)..(hi + pad))?;
    for &(start, end) in &file.labels.windows {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(start, lo - pad), (end, hi + pad)],
            RGBColor(255, 200, 200).filled(),
        )))?;
    }
    chart.draw_series(LineSeries::new(
        file.values.iter().enumerate().map(|(i, &v)| (i, v)),
        &BLUE,
    ))?;
    chart.draw_series(
        scores
            .iter()
            .enumerate()
            .filter(|(i, _)| found[*i] == 1.0)
            .map(|(i, _)| Circle::new((i, file.values[i]), 3, RED.filled())),
    )?;
    let mut lower = ChartBuilder::on(&bottom)
        .margin(5)
        .build_cartesian_2d(0..n, 0.0..1.0)?;
    lower.draw_series(LineSeries::new(
        scores.iter().enumerate().map(|(i, &s)| (i, s)),
        &BLACK,
    ))?;
    lower.draw_series(LineSeries::new([(0, threshold), (n, threshold)], &RED))?;
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let files = load(&cli.data)?;
    let config = match &cli.model {
        Some(path) => {
            serde_json::from_str::<production::Config>(&fs::read_to_string(path)?)?.validate()?
        }
        None => production::Config::default(),
    };
    let config = &config;
    let scores = score_all(&files, config, cli.publish_every);
    write_rows(&cli.out, &files, &scores)?;
    let (report, summary_lines, standard_threshold) = score_profiles(&cli.out, &files, &scores)?;
    let windows: usize = files.iter().map(|f| f.labels.windows.len()).sum();
    let summary = serde_json::json!({
        "model": fleetwatch_models::detector::KIND,
        "publish_every": cli.publish_every,
        "files": files.len(),
        "windows": windows,
        "detection": "rows where an episode opens or escalates (production episode rules)",
        "profiles": report,
    });
    fs::write(
        cli.out.join("scores.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;

    if !cli.no_plots {
        for (file, rows) in files.iter().zip(&scores) {
            plot(
                &cli.out.join(&file.key).with_extension("png"),
                file,
                rows,
                standard_threshold,
            )
            .with_context(|| format!("plotting {}", file.key))?;
        }
    }
    let mut summary_lines = summary_lines;
    summary_lines.push(format!(
        "wrote {} (per-file CSVs{}, files.csv, scores.json)",
        cli.out.display(),
        if cli.no_plots { "" } else { ", plots" }
    ));
    // A closed stdout is the reader's choice, not an error of the run.
    let _ = writeln!(std::io::stdout(), "{}", summary_lines.join("\n"));
    Ok(())
}

/// Files are independent: score them on every core.
fn score_all(files: &[NabFile], config: &production::Config, publish_every: u32) -> Vec<Vec<Row>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut scores: Vec<Vec<Row>> = vec![Vec::new(); files.len()];
    std::thread::scope(|scope| {
        let chunk = files.len().div_ceil(threads);
        for (files, out) in files.chunks(chunk).zip(scores.chunks_mut(chunk)) {
            scope.spawn(move || {
                for (file, out) in files.iter().zip(out) {
                    *out = score_file(file, config, publish_every);
                }
            });
        }
    });
    scores
}

fn write_rows(out: &Path, files: &[NabFile], scores: &[Vec<Row>]) -> Result<()> {
    for (file, rows) in files.iter().zip(scores) {
        let path = out.join(&file.key);
        fs::create_dir_all(path.parent().context("a file key has a folder")?)?;
        let mut writer = csv::Writer::from_path(&path)?;
        writer.write_record(["timestamp", "value", "anomaly_score", "cause"])?;
        for ((ts, value), row) in file.raw_timestamps.iter().zip(&file.values).zip(rows) {
            writer.write_record([
                ts.clone(),
                value.to_string(),
                format!("{:.9}", row.score),
                row.cause.clone(),
            ])?;
        }
        writer.flush()?;
    }
    Ok(())
}

type ProfileReport = (serde_json::Map<String, serde_json::Value>, Vec<String>, f64);

/// Every profile at its best grid threshold, and with leave-one-category-out thresholds;
/// writes files.csv. Returns the report, the summary lines and the standard threshold.
fn score_profiles(out: &Path, files: &[NabFile], scores: &[Vec<Row>]) -> Result<ProfileReport> {
    let windows: usize = files.iter().map(|f| f.labels.windows.len()).sum();
    let scored: Vec<ScoredFile<'_>> = files
        .iter()
        .zip(scores)
        .map(|(f, rows)| ScoredFile {
            category: f.key.split('/').next().unwrap_or(""),
            labels: &f.labels,
            rows,
        })
        .collect();
    let grid = threshold_grid();
    let mut report = serde_json::Map::new();
    let mut per_file = csv::Writer::from_path(out.join("files.csv"))?;
    per_file.write_record(["profile", "file", "threshold", "raw_score"])?;
    let mut standard_threshold = 0.5;
    // Printed only once every file is written: a reader that goes away (`| head`) must
    // not cut the outputs short.
    let mut summary_lines = Vec::new();
    for profile in PROFILES {
        let raw = raw_table(&scored, &profile, &grid, EpisodeRules::recommended);
        let (best, raw_sum) = best_threshold(&raw, |_| true);
        let threshold = grid[best];
        let score = normalize(raw_sum, &profile, windows);
        let (loco_raw, loco_choice) = leave_one_category_out(&scored, &raw);
        let loco = normalize(loco_raw, &profile, windows);
        if profile.name == "standard" {
            standard_threshold = threshold;
        }
        summary_lines.push(format!(
            "{:<20} score {score:7.2}  threshold {threshold:.3}  raw {raw_sum:.3}  \
             leave-one-category-out {loco:7.2}",
            profile.name
        ));
        for (file, rows) in files.iter().zip(scores) {
            let raw = raw_file_score(&file.labels, &detections(rows, threshold), &profile, 0.5);
            per_file.write_record([
                profile.name,
                &file.key,
                &threshold.to_string(),
                &format!("{raw:.6}"),
            ])?;
        }
        let loco_thresholds: serde_json::Map<String, serde_json::Value> = loco_choice
            .into_iter()
            .map(|(category, t)| (category, serde_json::json!(grid[t])))
            .collect();
        report.insert(
            profile.name.to_owned(),
            serde_json::json!({
                "score": score,
                "threshold": threshold,
                "raw": raw_sum,
                "leave_one_category_out": { "score": loco, "thresholds": loco_thresholds },
            }),
        );
    }
    per_file.flush()?;
    Ok((report, summary_lines, standard_threshold))
}
