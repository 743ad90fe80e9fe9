//! `fleetsim`: drive a fleet of simulated devices against an MQTT broker, optionally
//! listening to fleetwatch's alerts to measure detection and latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fleetwatch_sim::{
    evaluate, run_fleet, AlarmReviewer, AlertListener, FleetStats, ReviewerConfig, SimConfig,
};
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
    /// Resume the alert listener from this cursor (the `cursor` a previous run printed):
    /// every alarm event since then arrives first, then the live ones.
    #[arg(long, requires = "alerts_url")]
    alerts_cursor: Option<String>,
    /// fleetwatch's REST address (e.g. http://127.0.0.1:8080): when given, the alarms the
    /// listener receives are acknowledged with a verdict, `false_positive` for those that
    /// match no injected anomaly, `true_positive` for the others.
    #[arg(long, requires = "alerts_url")]
    review_url: Option<String>,
    /// Bearer token for the REST calls (the WebSocket takes `?access_token=` in its URL).
    #[arg(long, env = "FLEETSIM_TOKEN")]
    token: Option<String>,
    /// Seconds after its creation an alarm that has not cleared is reviewed.
    #[arg(long, default_value_t = 10)]
    review_after_secs: u64,
}

/// The listener and the reviewer of a run, when asked for.
async fn listen(
    cli: &Cli,
    stats: &Arc<FleetStats>,
) -> anyhow::Result<(Option<AlertListener>, Option<AlarmReviewer>)> {
    let Some(url) = &cli.alerts_url else {
        return Ok((None, None));
    };
    let listener =
        AlertListener::connect_resuming(url, &cli.sim.id_prefix, cli.alerts_cursor.as_deref())
            .await?;
    let reviewer = cli.review_url.as_ref().map(|http_url| {
        let config = ReviewerConfig {
            http_url: http_url.clone(),
            token: cli.token.clone(),
            review_after_ms: cli.review_after_secs as i64 * 1000,
            grace_ms: 5_000,
        };
        AlarmReviewer::start(config, listener.alarm_feed(), stats.clone())
    });
    Ok((Some(listener), reviewer))
}

/// The evaluation, the verdicts given and the cursor to resume from, as one JSON line.
async fn report(
    injected: &[fleetwatch_sim::Injected],
    listener: AlertListener,
    reviewer: Option<AlarmReviewer>,
) -> anyhow::Result<()> {
    let evaluation = evaluate(injected, &listener.alerts(), 5_000);
    let mut line = serde_json::to_value(&evaluation)?;
    if let Some(reviewer) = reviewer {
        let reviews = reviewer.finish().await;
        let false_positives = reviews
            .iter()
            .filter(|r| r.verdict == fleetwatch_protocol::Verdict::FalsePositive)
            .count();
        line["alarms_reviewed"] = reviews.len().into();
        line["alarms_false_positive"] = false_positives.into();
        line["acknowledgements_refused"] =
            reviews.iter().filter(|r| r.status != 200).count().into();
    }
    line["cursor"] = listener.alarm_log().cursor.into();
    println!("{line}");
    Ok(())
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
    let stats = Arc::new(FleetStats::default());
    let (listener, reviewer) = listen(&cli, &stats).await?;
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        });
    }
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
        report(&injected, listener, reviewer).await?;
    }
    Ok(())
}
