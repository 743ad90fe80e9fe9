//! `fleetwatch backfill`: replay a record-time range of `iot.telemetry` through a
//! candidate model and through the production configuration (the baseline), with the
//! production trainer and scorer code at full speed and deterministically (parameters
//! published by event count), and report how the candidate would have done
//! (docs/backfill.md).
//!
//! History comes from Kafka and, for what Kafka no longer holds, from the archive
//! ([`source`]); the two configurations replay the same readings ([`models`]); the
//! report matches their alerts per device and scores both on the verdicts operators
//! gave on alarms in the range, read from `iot.alarms` ([`report`]). Verdicts only
//! score: neither configuration learns from them.

pub mod cli;
mod config;
pub mod models;
pub mod report;
pub mod source;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Instant;

use fleetwatch_protocol::AlarmEvent;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

pub use config::{BackfillConfig, ModelRun, SourceChoice};
pub use report::Report;

use crate::archive::Sink;
use crate::kafka::{self, KafkaConfig, RangeRecord};
use crate::settings::Settings;

/// Why a backfill failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("invalid backfill: {0}")]
    Config(String),
    #[error("reading Kafka: {0}")]
    Kafka(String),
    #[error("reading the archive: {0}")]
    Archive(String),
    #[error("replaying: {0}")]
    Replay(String),
}

impl BackfillError {
    fn archive(error: impl std::fmt::Display) -> Self {
        Self::Archive(error.to_string())
    }
}

/// The production configuration of `settings`: the baseline.
pub fn baseline(settings: &Settings) -> ModelRun {
    ModelRun {
        trainer: settings.trainer.clone(),
        scorer: settings.scorer.clone(),
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg:<10} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Every alarm event on `iot.alarms` from the range's start on: from the archive for what
/// Kafka no longer holds (when there is one), then from Kafka, up to its end now.
async fn alarm_events(
    kafka_config: &KafkaConfig,
    archive: Option<&Sink>,
    from_ms: i64,
) -> Result<Vec<AlarmEvent>, BackfillError> {
    let topic = kafka_config.topics().alarms();
    let marks = kafka::watermarks(kafka_config, &topic)
        .await
        .map_err(|e| BackfillError::Kafka(e.to_string()))?;
    let mut payloads = match archive {
        // Verdicts come after their alarm: any time from the range's start to now.
        Some(sink) => {
            let now = fleetwatch_protocol::now_ms().max(from_ms + 1);
            source::archived_payloads(sink, &topic, (from_ms, now + 1), &marks).await?
        }
        None => Vec::new(),
    };
    let from = marks.iter().map(|m| (m.partition, m.low)).collect();
    let until = marks.iter().map(|m| (m.partition, m.high)).collect();
    let (sender, mut records) = mpsc::channel::<RangeRecord>(1_024);
    let reading = kafka::read_range(kafka_config, &topic, from, until, sender);
    let taking = async {
        while let Some(record) = records.recv().await {
            payloads.push(record.payload);
        }
    };
    let (read, ()) = tokio::join!(reading, taking);
    read.map_err(|e| BackfillError::Kafka(e.to_string()))?;
    // Not every record is an alarm event (tombstones); those are not verdicts.
    Ok((payloads.iter())
        .filter_map(|payload| serde_json::from_slice::<AlarmEvent>(payload).ok())
        .collect())
}

/// Both configurations' alerts of every device, without those opened in the warm-up.
fn replay_both(
    config: &BackfillConfig,
    baseline: &ModelRun,
    devices: &BTreeMap<String, Vec<source::Reading>>,
    progress: &ProgressBar,
) -> Result<BTreeMap<String, report::DeviceComparison>, BackfillError> {
    let events: u64 = devices.values().map(|r| r.len() as u64).sum();
    progress.set_message("replaying");
    progress.set_length(2 * events);
    progress.set_position(0);
    let done = |n: u64| progress.inc(n);
    // The two configurations run side by side, each over half the threads.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2));
    let (base, candidate) = std::thread::scope(|scope| {
        let base = scope.spawn(|| models::all_alerts(baseline, devices, threads, &done));
        let candidate = models::all_alerts(&config.candidate, devices, threads, &done);
        (base.join(), candidate)
    });
    let base = base.map_err(|_| BackfillError::Replay("the baseline's thread panicked".into()))?;
    let (mut base, mut candidate) = (
        base.map_err(BackfillError::Replay)?,
        candidate.map_err(BackfillError::Replay)?,
    );
    let counted = |alerts: Vec<models::Alert>| -> Vec<models::Alert> {
        (alerts.into_iter())
            .filter(|a| a.opened_ms >= config.counted_from_ms())
            .collect()
    };
    let mut per_device = BTreeMap::new();
    for device in devices.keys() {
        let b = counted(base.remove(device).unwrap_or_default());
        let c = counted(candidate.remove(device).unwrap_or_default());
        if !b.is_empty() || !c.is_empty() {
            per_device.insert(device.clone(), report::compare(b, c));
        }
    }
    Ok(per_device)
}

/// Run a backfill with `settings`' Kafka, archive and production configuration.
pub async fn run(
    settings: &Settings,
    config: &BackfillConfig,
    progress: &ProgressBar,
) -> Result<Report, BackfillError> {
    config.check().map_err(BackfillError::Config)?;
    let baseline = baseline(settings);
    baseline
        .check()
        .map_err(|e| BackfillError::Config(format!("the production configuration: {e}")))?;
    let started = Instant::now();
    let archive = if settings.archive.url.is_empty() || config.source == SourceChoice::Kafka {
        None
    } else {
        Some(Sink::open(&settings.archive).map_err(BackfillError::Archive)?)
    };
    progress.set_message("reading");
    let mut history = source::read(&settings.kafka, archive.as_ref(), config, progress).await?;
    let duplicates = models::deduplicate(&mut history.devices);
    let events = alarm_events(&settings.kafka, archive.as_ref(), config.from_ms).await?;
    let verdicts = report::latest_verdicts(&events);
    // The replay is CPU work on threads of its own; the runtime's threads stay free.
    let (replay_config, bar) = (config.clone(), progress.clone());
    let (per_device, devices) = tokio::task::spawn_blocking(move || {
        let per_device = replay_both(&replay_config, &baseline, &history.devices, &bar);
        (per_device, history)
    })
    .await
    .map_err(|e| BackfillError::Replay(format!("the replay task failed: {e}")))?;
    let (per_device, history) = (per_device?, devices);
    let devices = &history.devices;
    let verdicts =
        report::score_verdicts(&verdicts, devices, &per_device, config.counted_from_ms());
    let events: u64 = devices.values().map(|r| r.len() as u64).sum();
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let mut report = Report {
        from_ms: config.from_ms,
        to_ms: config.to_ms,
        counted_from_ms: config.counted_from_ms(),
        source: history.counts.clone(),
        events,
        duplicates,
        devices: devices.len(),
        seconds,
        events_per_second: events as f64 / seconds.max(1e-9),
        baseline: report::Totals::default(),
        candidate: report::Totals::default(),
        matched: 0,
        new: 0,
        vanished: 0,
        verdicts,
        per_device,
    };
    report.count();
    Ok(report)
}

/// The command: run, write the JSON report, print the table.
pub async fn command(
    args: &cli::BackfillArgs,
    settings: &Settings,
) -> Result<Report, BackfillError> {
    let config = args
        .to_config(&baseline(settings))
        .map_err(BackfillError::Config)?;
    let progress = progress_bar();
    let report = run(settings, &config, &progress).await?;
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| BackfillError::Config(format!("encoding the report: {e}")))?;
    std::fs::write(&config.report, json)
        .map_err(|e| BackfillError::Config(format!("writing {}: {e}", config.report.display())))?;
    print!("{}", report.table());
    println!("report: {}", config.report.display());
    Ok(report)
}
