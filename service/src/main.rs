//! The `fleetwatch` binary: the CLI edge. Errors become anyhow reports here and nowhere
//! else.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fleetwatch::app::{self, Roles};
use fleetwatch::demo::{self, DemoOptions};
use fleetwatch::settings::Settings;
use fleetwatch::Shutdown;

/// glibc's malloc and free took about a sixth of the service's CPU at 10,000 readings/s;
/// mimalloc's thread-local free lists take less (docs/benchmarks.md, "Load").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The demo's process also holds its broker and Kafka cluster, whose buffers per
/// connection are sized for the worst case and mostly never written. mimalloc asks for
/// transparent huge pages, and the kernel zeroes a whole 2 MiB page on the first touch of
/// any of it: the demo held 412 MB where it needs 145, and zeroing pages took a quarter of
/// the CPU while its 300 devices connected, which is when its first command is answered.
/// `run` keeps them: with its fleet's state spread over the heap, a 10,000-device load
/// fell further behind without (docs/benchmarks.md, "Transparent huge pages off in the demo").
fn without_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes no pointer; it sets one flag on this process.
    // On a kernel without it the call fails and huge pages stay: nothing else changes.
    #[cfg(target_os = "linux")]
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[derive(Parser)]
#[command(
    name = "fleetwatch",
    version,
    about = "Actor-based IoT telemetry and anomaly detection"
)]
struct Cli {
    /// Log format: `text` or `json`. Log level from RUST_LOG (default info).
    #[arg(
        long,
        env = "FLEETWATCH_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run roles against real brokers (Kafka, MQTT), as in production.
    Run {
        /// TOML configuration file; FLEETWATCH_<SECTION>__<FIELD> variables override it.
        #[arg(long, env = "FLEETWATCH_CONFIG")]
        config: Option<PathBuf>,
        /// `all`, or a comma-separated list of roles (`fleetwatch roles` lists them).
        #[arg(long, env = "FLEETWATCH_ROLES", default_value = "all")]
        roles: Roles,
    },
    /// Everything in one process with no outside service: embedded MQTT broker,
    /// in-process Kafka cluster, the simulator and the live page.
    Demo(DemoOptions),
    /// Print the effective configuration (defaults, file, environment) as TOML.
    Config {
        #[arg(long, env = "FLEETWATCH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print every Kafka topic with its partitions, compaction and retention, one JSON
    /// object a line, for deployment tooling.
    Topics {
        #[arg(long, env = "FLEETWATCH_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Mint a token signed with the configured HS256 secret (`auth.hs256_secret` or
    /// `auth.hs256_secret_file`): for development and tests, not a replacement for an
    /// identity provider.
    Token {
        #[arg(long, env = "FLEETWATCH_CONFIG")]
        config: Option<PathBuf>,
        /// The tenant whose user the token is for; without it, an operator's token.
        #[arg(long)]
        tenant: Option<String>,
        /// The token's subject (`sub`).
        #[arg(long, default_value = "fleetwatch-cli")]
        subject: String,
        /// Space-separated scopes (`read`, `command`); all when absent.
        #[arg(long)]
        scope: Option<String>,
        /// Lifetime in seconds (default: auth.minted_ttl_secs).
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    /// Replay a record-time range of telemetry through a candidate model and the
    /// production one, and report how the candidate would have done (docs/backfill.md).
    Backfill(fleetwatch::backfill::cli::BackfillArgs),
    /// Print every role with the topics it consumes and produces, as a Markdown table.
    Roles {
        #[arg(long, env = "FLEETWATCH_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// One JSON line per topic.
fn print_topics(settings: &Settings) {
    for spec in settings.kafka.topics().all() {
        println!(
            "{}",
            serde_json::json!({
                "name": spec.name,
                "partitions": settings.kafka.partitions,
                "replication": settings.kafka.replication,
                "compacted": spec.compacted,
                "co_partitioned": spec.co_partitioned,
                "retention_ms": spec.retention_ms,
            })
        );
    }
}

fn mint_token(
    settings: &Settings,
    tenant: Option<&str>,
    subject: &str,
    scope: Option<String>,
    ttl_secs: Option<u64>,
) -> anyhow::Result<String> {
    let auth = &settings.auth;
    let secret = auth.hs256_secret()?.with_context(|| {
        "no HS256 secret configured (auth.hs256_secret or auth.hs256_secret_file); tokens of an identity provider come from it"
    })?;
    let mut claims = fleetwatch::auth::claims_for(auth, subject, tenant);
    claims.scope = scope;
    if let Some(ttl) = ttl_secs {
        claims.exp = claims.iat.unwrap_or_default() + ttl as i64;
    }
    Ok(fleetwatch::auth::mint(&claims, secret.expose())?)
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            // The embedded broker (demo) logs every client disconnect as an error.
            "info,rumqttd=warn,rumqttd::router::routing=off,rumqttd::server::broker=off,librdkafka=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("unknown log format {other:?}; use text or json"),
    }
    Ok(())
}

fn load_settings(config: Option<&PathBuf>) -> anyhow::Result<Settings> {
    Settings::load(config.map(PathBuf::as_path), std::env::vars()).context("loading configuration")
}

/// Cancel `shutdown` on SIGTERM or Ctrl-C.
fn cancel_on_signals(shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
        }
        shutdown.cancel();
    });
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo(_)) {
        without_transparent_huge_pages();
    }
    init_logging(&cli.log_format)?;
    // An actix System for the device actors, over a multi-threaded tokio runtime for the
    // Kafka and MQTT loops.
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    });
    let outcome = system.block_on(async move {
        match cli.command {
            Command::Config { config } => {
                print!("{}", load_settings(config.as_ref())?.to_toml());
                Ok(())
            }
            Command::Topics { config } => {
                print_topics(&load_settings(config.as_ref())?);
                Ok(())
            }
            Command::Roles { config } => {
                let settings = load_settings(config.as_ref())?;
                print!("{}", app::markdown_table(&settings.kafka.topics()));
                Ok(())
            }
            Command::Token {
                config,
                tenant,
                subject,
                scope,
                ttl_secs,
            } => {
                let settings = load_settings(config.as_ref())?;
                println!(
                    "{}",
                    mint_token(&settings, tenant.as_deref(), &subject, scope, ttl_secs)?
                );
                Ok(())
            }
            Command::Run { config, roles } => {
                let settings = load_settings(config.as_ref())?;
                let shutdown = Shutdown::new();
                cancel_on_signals(shutdown.clone());
                let running = app::start(&settings, roles, shutdown).await?;
                // One machine-readable line with the bound addresses (ports may be 0 in
                // the configuration); logs go to stderr.
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "started",
                        "http": running.http_addr.to_string(),
                        "ws": running.ws_addr.map(|addr| addr.to_string()),
                    })
                );
                running.wait().await?;
                Ok(())
            }
            Command::Backfill(args) => {
                let settings = load_settings(args.config.as_ref())?;
                fleetwatch::backfill::command(&args, &settings).await?;
                Ok(())
            }
            Command::Demo(options) => {
                let shutdown = Shutdown::new();
                cancel_on_signals(shutdown.clone());
                let summary = demo::run(options, shutdown).await?;
                println!("{}", serde_json::to_string(&summary)?);
                Ok(())
            }
        }
    });
    actix_rt::System::current().stop();
    outcome
}
