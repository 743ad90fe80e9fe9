//! Score any delimited telemetry file with the production model, one row at a time.
//!
//! `cargo run --release -p fleetwatch-models --bin replay -- --input FILE.csv --timestamp COLUMN
//!  [--metrics a,b,c] [--separator ';'] [--publish-every N] --out scored.csv`

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fleetwatch_models::production::{Config, DEFAULT_PUBLISH_EVERY};
use fleetwatch_models::replay::{replay_table, TableOptions};

#[derive(Parser)]
#[command(about = "Score a telemetry CSV with fleetwatch's production anomaly model")]
struct Cli {
    /// The delimited file to score; the first row is the header.
    #[arg(long)]
    input: PathBuf,
    /// Name of the timestamp column (epoch seconds or ms, or YYYY-MM-DD HH:MM:SS).
    #[arg(long)]
    timestamp: String,
    /// Metric columns (comma-separated); default: every other column.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Field separator, one character.
    #[arg(long, default_value = ",")]
    separator: String,
    /// The scorer sees parameters published every this many rows, as in production.
    #[arg(long, default_value_t = DEFAULT_PUBLISH_EVERY)]
    publish_every: u32,
    /// Threshold at which an episode opens (`is_anomaly` marks every row of an episode);
    /// default: the model's recommended one.
    #[arg(long)]
    threshold: Option<f64>,
    /// Where to write the scored file.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let separator = match cli.separator.as_bytes() {
        [byte] => *byte,
        _ if cli.separator == "\\t" => b'\t',
        _ => bail!("--separator must be one character, got {:?}", cli.separator),
    };
    let input =
        File::open(&cli.input).with_context(|| format!("opening {}", cli.input.display()))?;
    let output =
        File::create(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let options = TableOptions {
        timestamp_column: cli.timestamp,
        metrics: cli.metrics,
        separator,
        publish_every: cli.publish_every,
        threshold: cli.threshold.unwrap_or(Config::default().threshold),
    };
    let summary = replay_table(BufReader::new(input), BufWriter::new(output), &options)
        .with_context(|| format!("scoring {}", cli.input.display()))?;
    println!(
        "scored {} rows, {} anomalous in {} episodes, written to {}",
        summary.rows,
        summary.anomalies,
        summary.episodes,
        cli.out.display()
    );
    Ok(())
}
