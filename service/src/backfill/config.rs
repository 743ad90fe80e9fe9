use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::scorer::ScorerConfig;
use crate::trainer::TrainerConfig;

/// Where the backfill reads history from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SourceChoice {
    /// Kafka for every offset it still holds; the archive only for the offsets Kafka no
    /// longer has (below each partition's low watermark). The default.
    Auto,
    /// Kafka only: what retention removed is missing (the report counts partitions whose
    /// low watermark is above 0 in `source.kafka_trimmed_partitions`).
    Kafka,
    /// The archive for every offset it holds (up to each partition's last archived
    /// offset in the range's hours), Kafka for the rest: spares the brokers. Trusts the
    /// archive to have no hole before its last file (the archive role's guarantee).
    ArchiveFirst,
}

/// One backfill run (`fleetwatch backfill`): a record-time range, a candidate model and
/// where the report goes. The baseline is the production configuration, `[trainer]` and
/// `[scorer]` of the service's own configuration (`--config`), whose `[kafka]` and
/// `[archive]` sections also say where history is.
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillConfig {
    /// Start of the range (inclusive), ms since the epoch, by record time: the Kafka
    /// timestamp ingest gave the reading (the archive's `ingest_ms`), never the device's
    /// clock.
    pub from_ms: i64,
    /// End of the range (exclusive), ms since the epoch, by record time.
    pub to_ms: i64,
    /// The first this many ms of the range train the models but count in no figure:
    /// alerts opened in it and verdicts on alarms opened in it are left out.
    pub warmup_ms: i64,
    /// Where history is read from.
    pub source: SourceChoice,
    /// Only devices whose id starts with this (empty: every device).
    pub device_prefix: String,
    /// The candidate model (the `--candidate` file).
    pub candidate: ModelRun,
    /// Where the JSON report is written.
    pub report: PathBuf,
}

/// A model configuration to replay: written like the service's own `[trainer]` and
/// `[scorer]` sections (a candidate file can copy them from the production configuration
/// and change what it tries). Settings that only matter live (`trainer.publish_every_ms`,
/// checkpoints, `scorer.publish_scores`) are read and ignored: a backfill publishes
/// parameters by event count only, so that it is deterministic.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelRun {
    /// The trainer: `publish_every_events` and the model (`[trainer.model]`).
    pub trainer: TrainerConfig,
    /// The episode rules: `threshold`, `clear_after_events`, `clear_ratio`,
    /// `escalate_ratio`.
    pub scorer: ScorerConfig,
}

impl ModelRun {
    /// A candidate file's content.
    pub fn parse(text: &str) -> Result<Self, String> {
        let run: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        run.check()?;
        Ok(run)
    }

    /// Refuse a model or episode rules the production code would refuse.
    pub fn check(&self) -> Result<(), String> {
        self.trainer
            .model
            .clone()
            .validate()
            .map_err(|e| e.to_string())?;
        self.rules().map(|_| ())
    }

    /// The episode rules of this configuration.
    pub fn rules(&self) -> Result<fleetwatch_models::production::EpisodeRules, String> {
        self.scorer
            .rules(self.trainer.model.threshold)
            .check()
            .map_err(|e| e.to_string())
    }
}

impl BackfillConfig {
    /// Refuse a range the backfill cannot read.
    pub fn check(&self) -> Result<(), String> {
        if self.from_ms >= self.to_ms {
            return Err(format!(
                "the range is empty: from ({}) must be before to ({})",
                self.from_ms, self.to_ms
            ));
        }
        if self.warmup_ms < 0 || self.warmup_ms >= self.to_ms - self.from_ms {
            return Err(format!(
                "the warm-up ({} ms) must be at least 0 and shorter than the range ({} ms)",
                self.warmup_ms,
                self.to_ms - self.from_ms
            ));
        }
        self.candidate.check()
    }

    /// Where the figures start: the end of the warm-up.
    pub fn counted_from_ms(&self) -> i64 {
        self.from_ms + self.warmup_ms
    }
}
