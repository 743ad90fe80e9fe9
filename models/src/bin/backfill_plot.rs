//! Draw a backfill report (`fleetwatch backfill --report FILE`) as a timeline: one row per
//! device with an alert, the baseline's alerts in the upper half of the row (blue), the
//! candidate's in the lower half (orange), the warm-up shaded grey. Kept out of the
//! service so that its dependency tree stays free of plotting.
//!
//! `cargo run --release -p fleetwatch-models --bin backfill_plot -- --report REPORT.json --out timeline.png`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Draw a fleetwatch backfill report as a timeline of alerts per device")]
struct Cli {
    /// The JSON report of `fleetwatch backfill`.
    #[arg(long)]
    report: PathBuf,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// At most this many devices (those with the most alerts first).
    #[arg(long, default_value_t = 40)]
    devices: usize,
}

/// A device's row: its id, the baseline's and the candidate's alert spans.
type Row = (String, Vec<(i64, i64)>, Vec<(i64, i64)>);

/// (opened, closed) record times of one configuration's alerts; an open alert reaches
/// the end of the range.
fn spans(alerts: &Value, to_ms: i64) -> Vec<(i64, i64)> {
    alerts
        .as_array()
        .map(|alerts| {
            alerts
                .iter()
                .filter_map(|a| {
                    Some((
                        a["opened_ms"].as_i64()?,
                        a["closed_ms"].as_i64().unwrap_or(to_ms),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.report)
        .with_context(|| format!("reading {}", cli.report.display()))?;
    let report: Value = serde_json::from_str(&text).context("the report is not JSON")?;
    let (from, to, counted) = (
        report["from_ms"].as_i64().context("no from_ms")?,
        report["to_ms"].as_i64().context("no to_ms")?,
        report["counted_from_ms"]
            .as_i64()
            .context("no counted_from_ms")?,
    );
    let mut rows: Vec<Row> = report["per_device"]
        .as_object()
        .context("no per_device")?
        .iter()
        .map(|(device, c)| {
            (
                device.clone(),
                spans(&c["baseline"], to),
                spans(&c["candidate"], to),
            )
        })
        .collect();
    rows.sort_by_key(|(device, b, c)| (std::cmp::Reverse(b.len() + c.len()), device.clone()));
    rows.truncate(cli.devices.max(1));
    let height = 40 + 24 * rows.len() as u32;
    let root = BitMapBackend::new(&cli.out, (1200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = rows.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .build_cartesian_2d(from..to, 0.0..n.max(1.0))?;
    chart.draw_series(std::iter::once(Rectangle::new(
        [(from, 0.0), (counted, n.max(1.0))],
        RGBColor(225, 225, 225).filled(),
    )))?;
    let blue = RGBColor(40, 90, 200);
    let orange = RGBColor(230, 130, 20);
    for (i, (_, baseline, candidate)) in rows.iter().enumerate() {
        let y = n - i as f64 - 1.0;
        chart.draw_series(baseline.iter().map(|&(a, b)| {
            Rectangle::new([(a, y + 0.52), (b.max(a + 1), y + 0.92)], blue.filled())
        }))?;
        chart.draw_series(candidate.iter().map(|&(a, b)| {
            Rectangle::new([(a, y + 0.08), (b.max(a + 1), y + 0.48)], orange.filled())
        }))?;
        chart.draw_series(std::iter::once(PathElement::new(
            [(from, y), (to, y)],
            RGBColor(200, 200, 200),
        )))?;
    }
    root.present()?;
    println!(
        "{} devices drawn to {} (baseline blue, candidate orange, warm-up grey)",
        rows.len(),
        cli.out.display()
    );
    Ok(())
}
