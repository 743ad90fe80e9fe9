//! `fleetsim`: drive a fleet of simulated devices against an MQTT broker, optionally
//! listening to fleetwatch's alerts to measure detection and latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fleetwatch_sim::{evaluate, run_fleet, AlertListener, FleetStats, SimConfig};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fleetsim",
    version,
    about = "Simulated IoT devices for fleetwatch"
)]
struct Cli {
    #[command(flatten)]
    sim: SimConfig,
    /// fleetwatch's alerts WebSocket (e.g. ws://127.0.0.1:8081/): when given, alerts are
    /// matched against the injected anomalies and a JSON evaluation is printed at the end.
    #[arg(long)]
    alerts_url: Option<String>,
    /// Seconds to keep listening for alerts after the devices stop.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let listener = match &cli.alerts_url {
        Some(url) => Some(AlertListener::connect(url, &cli.sim.id_prefix).await?),
        None => None,
    };
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        });
    }
    let stats = Arc::new(FleetStats::default());
    let progress = ProgressBar::new_spinner();
    progress.set_style(ProgressStyle::with_template(
        "{spinner} {elapsed_precise} {msg}",
    )?);
    let ticker = {
        let (stats, progress) = (stats.clone(), progress.clone());
        let devices = cli.sim.devices;
        tokio::spawn(async move {
            loop {
                progress.set_message(format!(
                    "connected {}/{devices}  {}",
                    stats.connected.load(Ordering::Relaxed),
                    stats.summary()
                ));
                progress.tick();
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let injected = run_fleet(cli.sim.clone(), stats.clone(), shutdown).await?;
    ticker.abort();
    let done = format!("done: {}", stats.summary());
    if progress.is_hidden() {
        // Not a terminal (a script or CI log): the summary still belongs in the output.
        eprintln!("{done}");
    } else {
        progress.finish_with_message(done);
    }
    if let Some(listener) = listener {
        tokio::time::sleep(Duration::from_secs(cli.drain_secs)).await;
        let evaluation = evaluate(&injected, &listener.alerts(), 5_000);
        println!("{}", serde_json::to_string(&evaluation)?);
    }
    Ok(())
}
