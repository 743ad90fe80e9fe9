//! The `fleetwatch backfill` command's arguments, turned into a [`BackfillConfig`].

use std::path::PathBuf;

use super::config::{BackfillConfig, ModelRun, SourceChoice};

/// `fleetwatch backfill --from … --to … --candidate FILE`.
#[derive(Clone, Debug, clap::Args)]
pub struct BackfillArgs {
    /// The service's configuration: `[kafka]` and `[archive]` say where history is,
    /// `[trainer]` and `[scorer]` are the baseline.
    #[arg(long, env = "FLEETWATCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Start of the range, by record time (inclusive): RFC 3339
    /// (`2026-11-24T06:00:00Z`) or ms since the epoch.
    #[arg(long)]
    pub from: String,
    /// End of the range, by record time (exclusive), as `--from`.
    #[arg(long)]
    pub to: String,
    /// The candidate: a TOML file with `[trainer]` (and `[trainer.model]`) and
    /// `[scorer]` sections, as in the service's configuration. Without it the candidate
    /// is the production configuration itself (a check that the backfill agrees with
    /// itself).
    #[arg(long)]
    pub candidate: Option<PathBuf>,
    /// Warm-up at the start of the range, excluded from every figure: `90s`, `30m`,
    /// `6h`, `1d` or ms.
    #[arg(long, default_value = "1h")]
    pub warmup: String,
    /// Where history is read from.
    #[arg(long, value_enum, default_value = "auto")]
    pub source: SourceChoice,
    /// Only devices whose id starts with this.
    #[arg(long, default_value = "")]
    pub device_prefix: String,
    /// Where the JSON report goes.
    #[arg(long, default_value = "backfill-report.json")]
    pub report: PathBuf,
}

/// A time: RFC 3339 or ms since the epoch.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{text:?} is neither RFC 3339 nor ms since the epoch: {e}"))
}

/// A duration: a number with `ms`, `s`, `m`, `h` or `d`, or plain ms.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 30m, 6h, 1d)"))?;
    let unit_ms = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    number
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("{text:?} is too long"))
}

impl BackfillArgs {
    /// The run these arguments describe; the candidate file is read here.
    pub fn to_config(&self, production: &ModelRun) -> Result<BackfillConfig, String> {
        let candidate = match &self.candidate {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                ModelRun::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => production.clone(),
        };
        let config = BackfillConfig {
            from_ms: parse_time(&self.from)?,
            to_ms: parse_time(&self.to)?,
            warmup_ms: parse_duration_ms(&self.warmup)?,
            source: self.source,
            device_prefix: self.device_prefix.clone(),
            candidate,
            report: self.report.clone(),
        };
        config.check()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_parse_or_say_why_not() {
        assert_eq!(parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert!(parse_duration_ms("5 weeks").is_err());
        assert!(parse_duration_ms("h").is_err());
    }

    #[test]
    fn a_candidate_file_is_checked() {
        let run = ModelRun::parse(
            "[trainer]\npublish_every_events = 5\n[trainer.model]\nthreshold = 0.7\n",
        )
        .unwrap();
        assert_eq!(run.trainer.publish_every_events, 5);
        assert_eq!(run.rules().unwrap().threshold, 0.7);
        assert!(ModelRun::parse("[trainer.model]\nthreshold = -1\n").is_err());
        assert!(ModelRun::parse("[trainer]\nnonsense = 1\n").is_err());
    }

    #[test]
    fn an_empty_range_or_a_warmup_as_long_as_it_is_refused() {
        let args = BackfillArgs {
            config: None,
            from: "2000".into(),
            to: "1000".into(),
            candidate: None,
            warmup: "0".into(),
            source: SourceChoice::Auto,
            device_prefix: String::new(),
            report: "r.json".into(),
        };
        assert!(args.to_config(&ModelRun::default()).is_err());
        let args = BackfillArgs {
            from: "0".into(),
            warmup: "1s".into(),
            ..args
        };
        assert!(args.to_config(&ModelRun::default()).is_err());
    }
}
