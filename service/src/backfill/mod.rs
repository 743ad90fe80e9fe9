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
pub mod stream;

use std::collections::{BTreeMap, HashMap, HashSet};
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
    let pairs = devices.keys().map(|device| {
        let b = base.remove(device).unwrap_or_default();
        let c = candidate.remove(device).unwrap_or_default();
        (device.clone(), (b, c))
    });
    Ok(compared(config, pairs.collect::<Vec<_>>()))
}

/// What a run read and decided, by either way of replaying.
struct Outcome {
    source: source::SourceCounts,
    events: u64,
    duplicates: u64,
    devices: usize,
    per_device: BTreeMap<String, report::DeviceComparison>,
    verdicts: report::Verdicts,
}

/// The alerts of each device counted (not opened in the warm-up), compared.
fn compared(
    config: &BackfillConfig,
    alerts: impl IntoIterator<Item = (String, (Vec<models::Alert>, Vec<models::Alert>))>,
) -> BTreeMap<String, report::DeviceComparison> {
    let counted = |alerts: Vec<models::Alert>| -> Vec<models::Alert> {
        (alerts.into_iter())
            .filter(|a| a.opened_ms >= config.counted_from_ms())
            .collect()
    };
    let mut per_device = BTreeMap::new();
    for (device, (b, c)) in alerts {
        let (b, c) = (counted(b), counted(c));
        if !b.is_empty() || !c.is_empty() {
            per_device.insert(device, report::compare(b, c));
        }
    }
    per_device
}

/// Read and replay at once (module [`stream`]); `None` when some device's readings did
/// not come in Kafka order (then only [`in_memory`] decides as the scorer would).
async fn streamed(
    settings: &Settings,
    (archive, config, baseline): (Option<&Sink>, &BackfillConfig, &ModelRun),
    verdicts: &report::VerdictsById,
    progress: &ProgressBar,
) -> Result<Option<Outcome>, BackfillError> {
    let mut wanted_times: HashMap<String, HashSet<u64>> = HashMap::new();
    for (device, first, _, _) in verdicts.values() {
        wanted_times
            .entry(device.clone())
            .or_default()
            .insert(*first);
    }
    let rules = |run: &ModelRun| run.rules().map_err(BackfillError::Config);
    let plan = stream::Plan {
        baseline: (baseline.clone(), rules(baseline)?),
        candidate: (config.candidate.clone(), rules(&config.candidate)?),
        wanted_times,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (dispatch, replay) = stream::start(plan, threads);
    progress.set_message("replaying");
    let read = source::read(&settings.kafka, archive, config, progress, Some(dispatch)).await;
    let (mut history, replayed) = match read {
        Ok(mut history) => {
            let dispatch = history.stream.take();
            let replayed = replay.finish(dispatch).await;
            (history, replayed.map_err(BackfillError::Replay)?)
        }
        Err(error) => {
            let _ = replay.finish(None).await;
            return Err(error);
        }
    };
    if replayed.out_of_order > 0 {
        tracing::warn!(
            devices = replayed.out_of_order,
            "readings of a device came out of Kafka order (in several partitions): replaying the range again in memory"
        );
        return Ok(None);
    }
    history.counts.reader_waits = replayed.reader_waits;
    let devices = replayed.alerts.len();
    let per_device = compared(config, replayed.alerts);
    let times = &replayed.times;
    let opened_ms = |device: &str, seq: u64| times.get(&(device.to_owned(), seq)).copied();
    let counted_from = config.counted_from_ms();
    Ok(Some(Outcome {
        source: history.counts,
        events: replayed.events,
        duplicates: replayed.duplicates,
        devices,
        verdicts: report::score_verdicts(verdicts, &opened_ms, &per_device, counted_from),
        per_device,
    }))
}

/// Read the whole range, then replay it (module [`models`]): holds the range in memory.
async fn in_memory(
    settings: &Settings,
    (archive, config, baseline): (Option<&Sink>, &BackfillConfig, &ModelRun),
    verdicts: &report::VerdictsById,
    progress: &ProgressBar,
) -> Result<Outcome, BackfillError> {
    progress.set_message("reading");
    let mut history = source::read(&settings.kafka, archive, config, progress, None).await?;
    let duplicates = models::deduplicate(&mut history.devices);
    // The replay is CPU work on threads of its own; the runtime's threads stay free.
    let (replay_config, bar, baseline) = (config.clone(), progress.clone(), baseline.clone());
    let (per_device, history) = tokio::task::spawn_blocking(move || {
        let per_device = replay_both(&replay_config, &baseline, &history.devices, &bar);
        (per_device, history)
    })
    .await
    .map_err(|e| BackfillError::Replay(format!("the replay task failed: {e}")))?;
    let per_device = per_device?;
    let times = report::reading_times(&history.devices);
    let opened_ms = |device: &str, seq: u64| times.get(&(device, seq)).copied();
    let counted_from = config.counted_from_ms();
    Ok(Outcome {
        verdicts: report::score_verdicts(verdicts, &opened_ms, &per_device, counted_from),
        events: history.devices.values().map(|r| r.len() as u64).sum(),
        devices: history.devices.len(),
        duplicates,
        per_device,
        source: history.counts,
    })
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
    // Verdicts first: the replay notes the record time of the readings they are about.
    let events = alarm_events(&settings.kafka, archive.as_ref(), config.from_ms).await?;
    let verdicts = report::latest_verdicts(&events);
    let what = (archive.as_ref(), config, &baseline);
    let outcome = match streamed(settings, what, &verdicts, progress).await? {
        Some(outcome) => outcome,
        None => in_memory(settings, what, &verdicts, progress).await?,
    };
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let mut report = Report {
        from_ms: config.from_ms,
        to_ms: config.to_ms,
        counted_from_ms: config.counted_from_ms(),
        source: outcome.source,
        events: outcome.events,
        duplicates: outcome.duplicates,
        devices: outcome.devices,
        seconds,
        events_per_second: outcome.events as f64 / seconds.max(1e-9),
        baseline: report::Totals::default(),
        candidate: report::Totals::default(),
        matched: 0,
        new: 0,
        vanished: 0,
        verdicts: outcome.verdicts,
        per_device: outcome.per_device,
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
