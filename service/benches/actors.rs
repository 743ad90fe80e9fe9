//! Memory per live device actor and the time to create them.
//!
//! `cargo bench -p fleetwatch --bench actors [-- COUNT...]` (default 100000 1000000).
//! Each actor holds the twin a device has after its first telemetry message (three
//! metrics). Memory is measured two ways: bytes held on the heap, counted by a wrapping
//! allocator (exact, what the actors and the registry keep), and the process's resident
//! set growth (what the OS sees, including allocator slack).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetwatch::devices::{self, Twin};
use fleetwatch::metrics::Metrics;
use fleetwatch_protocol::{DeviceEventBody, DeviceId, TelemetryPayload};
use tokio_util::sync::CancellationToken;

#[path = "common/counting.rs"]
mod counting;

#[path = "common/registry.rs"]
mod registry;

use counting::{resident_bytes, Counting, HELD};
use registry::offline_registry;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        counts
    };
    for count in counts {
        actix_rt::System::new().block_on(bare_floor(count));
        actix_rt::System::new().block_on(run(count));
    }
}

/// The floor: an actix actor holding nothing (context, mailbox, task, address).
struct Bare;

impl actix::Actor for Bare {
    type Context = actix::Context<Self>;
}

async fn bare_floor(count: usize) {
    let before = HELD.load(Ordering::Relaxed);
    let addresses: Vec<_> = (0..count).map(|_| actix::Actor::start(Bare)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = HELD.load(Ordering::Relaxed) - before;
    println!(
        "{}",
        serde_json::json!({
            "bare_actix_actors": count,
            "heap_bytes_per_actor": (held as f64 / count as f64).round(),
        })
    );
    drop(addresses);
    actix_rt::System::current().stop();
}

async fn run(count: usize) {
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let (registry, rules) = offline_registry(&metrics, &shutdown);

    let before_twins = HELD.load(Ordering::Relaxed);
    let twins: Vec<Twin> = (0..count)
        .map(|n| {
            let mut twin = Twin::new(DeviceId::parse(&format!("sim-{n:07}")).unwrap());
            let telemetry = TelemetryPayload {
                ts: 1_800_000_000_000,
                seq: 1,
                metrics: [("temperature", 21.5), ("humidity", 40.0), ("power", 120.0)]
                    .into_iter()
                    .map(|(name, value)| (name.into(), value))
                    .collect(),
            };
            twin.apply_event(
                &DeviceEventBody::Telemetry(telemetry),
                1_800_000_000_000,
                &rules,
            );
            twin
        })
        .collect();
    let twin_bytes = HELD.load(Ordering::Relaxed) - before_twins;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (held_before, resident_before) = (HELD.load(Ordering::Relaxed), resident_bytes());

    let started = Instant::now();
    for twin in twins {
        registry.start(twin, 0);
    }
    // Started means each actor ran its `started` hook (the gauge counts it).
    while (metrics.device_actors.get() as usize) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let (held_after, resident_after) = (HELD.load(Ordering::Relaxed), resident_bytes());
    // The twins were already on the heap before: what the actors add is the rest, and
    // the twins themselves are part of an actor's cost.
    let per_actor_heap =
        (held_after as f64 - held_before as f64) / count as f64 + twin_bytes as f64 / count as f64;
    let per_actor_rss = (resident_after as f64 - resident_before as f64) / count as f64
        + twin_bytes as f64 / count as f64;
    println!(
        "{}",
        serde_json::json!({
            "actors": count,
            "create_secs": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "actors_per_sec": (count as f64 / elapsed.as_secs_f64()).round(),
            "heap_bytes_per_actor": per_actor_heap.round(),
            "resident_bytes_per_actor": per_actor_rss.round(),
            "twin_heap_bytes": (twin_bytes as f64 / count as f64).round(),
            "arbiters": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "twin_inline_bytes": std::mem::size_of::<Twin>(),
            "actor_inline_bytes": std::mem::size_of::<devices::DeviceActor>(),
        })
    );
    shutdown.cancel();
    actix_rt::System::current().stop();
}
