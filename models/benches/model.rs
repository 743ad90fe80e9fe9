//! Cost per event of the production model: one trainer update (refits included), one
//! score from a parameter snapshot, and one refit of the relation model, for devices with
//! 1, 8 and 32 metrics; and the sizes that matter per device: the parameters' binary
//! encoding, the trainer's state bytes, and the trainer's live heap (counted by a
//! counting allocator, not estimated).
//!
//! `cargo bench -p fleetwatch-models --bench model`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use fleetwatch_models::production::{self, Config, ModelTrainer};
use fleetwatch_models::synthetic::related_readings;
use fleetwatch_models::{MetricValues, Observation, Scorer, Trainer};

/// Live heap bytes of this process.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Metrics that share a daily-like cycle in pairs, with noise: relations to learn.
fn series(metrics: usize, events: usize) -> Vec<(i64, MetricValues)> {
    related_readings(metrics, events, 1000, 100.0 * std::f64::consts::PI)
}

fn trained(config: &Config, data: &[(i64, MetricValues)]) -> ModelTrainer {
    let mut trainer = production::trainer(config);
    for (ts, values) in data {
        trainer.update(&Observation {
            ts_ms: *ts,
            metrics: values,
        });
    }
    trainer
}

fn sizes(metrics: usize, config: &Config, data: &[(i64, MetricValues)]) {
    let before = LIVE.load(Ordering::Relaxed);
    let trainer = trained(config, data);
    let heap = LIVE.load(Ordering::Relaxed) - before;
    let inline = std::mem::size_of::<ModelTrainer>();
    let params = trainer.snapshot();
    println!(
        "{metrics} metrics: params {} bytes binary ({} as JSON); trainer state {} bytes; \
         trainer heap {heap} bytes + {inline} inline (of which the configuration {config}); \
         seasonal profiles counting {counting}",
        params.to_bytes().len(),
        serde_json::to_vec(&params).map_or(0, |j| j.len()),
        trainer.state_bytes().len(),
        config = std::mem::size_of::<Config>(),
        counting = params
            .seasons
            .iter()
            .filter(|s| !s.profile.is_empty())
            .count(),
    );
}

fn model(c: &mut Criterion) {
    let config = Config::default();
    // The seasonal profiles' largest case: devices within the profile budget (1 and 2
    // metrics), hourly readings of a weekly cycle, once the profiles count.
    for metrics in [1, 2] {
        print!("hourly, weekly cycle, seasonal profiles kept: ");
        sizes(
            metrics,
            &config,
            &related_readings(metrics, 3_000, 3_600_000, 168.0),
        );
    }
    for metrics in [1, 8, 32] {
        let data = series(metrics, 3_000);
        sizes(metrics, &config, &data[..2_000]);
        let trainer = trained(&config, &data[..2_000]);
        let params = trainer.snapshot();

        // Updates over 1,000 events in a row, so that the refits (every
        // `relation.refit_every` events) are amortised as in production.
        c.bench_function(&format!("update_1000/{metrics}_metrics"), |b| {
            b.iter_batched_ref(
                || trainer.clone(),
                |trainer| {
                    for (ts, values) in &data[2_000..] {
                        trainer.update(black_box(&Observation {
                            ts_ms: *ts,
                            metrics: values,
                        }));
                    }
                },
                criterion::BatchSize::LargeInput,
            )
        });

        c.bench_function(&format!("refit/{metrics}_metrics"), |b| {
            b.iter_batched_ref(
                || trainer.clone(),
                |trainer| trainer.refit_relations(),
                criterion::BatchSize::LargeInput,
            )
        });

        let mut scorer = production::scorer();
        for (ts, values) in &data[..2_000] {
            scorer.score(
                &params,
                &Observation {
                    ts_ms: *ts,
                    metrics: values,
                },
            );
        }
        let mut next = 2_000;
        c.bench_function(&format!("score/{metrics}_metrics"), |b| {
            b.iter(|| {
                let (ts, values) = &data[next];
                next = if next + 1 < data.len() {
                    next + 1
                } else {
                    2_000
                };
                black_box(scorer.score(
                    black_box(&params),
                    &Observation {
                        ts_ms: *ts,
                        metrics: values,
                    },
                ))
            })
        });
    }
}

criterion_group!(benches, model);
criterion_main!(benches);
