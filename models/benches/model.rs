//! Cost per event of the production model: one trainer update, and one score from a
//! parameter snapshot, for devices with 1, 8 and 32 metrics.
//!
//! `cargo bench -p fleetwatch-models --bench model`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use fleetwatch_models::production::{self, Config};
use fleetwatch_models::{Observation, Scorer, Trainer};

fn series(metrics: usize, events: usize) -> Vec<(i64, BTreeMap<String, f64>)> {
    (0..events)
        .map(|i| {
            let values = (0..metrics)
                .map(|m| {
                    let noise = ((i * 7919 + m * 104_729) % 1000) as f64 / 1000.0;
                    (
                        format!("metric_{m:02}"),
                        20.0 + (i as f64 / 50.0).sin() * 3.0 + noise,
                    )
                })
                .collect();
            (1_700_000_000_000 + i as i64 * 1000, values)
        })
        .collect()
}

fn model(c: &mut Criterion) {
    for metrics in [1, 8, 32] {
        let data = series(metrics, 2_000);
        let config = Config::default();
        let mut trainer = production::trainer(&config);
        for (ts, values) in &data[..1_000] {
            trainer.update(&Observation {
                ts_ms: *ts,
                metrics: values,
            });
        }
        let params = trainer.snapshot();
        let size = serde_json::to_vec(&params).unwrap().len();
        println!("params with {metrics} metrics: {size} bytes as JSON");

        let mut next = 1_000;
        c.bench_function(&format!("update/{metrics}_metrics"), |b| {
            b.iter_batched_ref(
                || trainer.clone(),
                |trainer| {
                    let (ts, values) = &data[next];
                    next = if next + 1 < data.len() {
                        next + 1
                    } else {
                        1_000
                    };
                    trainer.update(black_box(&Observation {
                        ts_ms: *ts,
                        metrics: values,
                    }));
                },
                BatchSize::LargeInput,
            )
        });

        let mut scorer = production::scorer();
        for (ts, values) in &data[..1_000] {
            scorer.score(
                &params,
                &Observation {
                    ts_ms: *ts,
                    metrics: values,
                },
            );
        }
        let mut next = 1_000;
        c.bench_function(&format!("score/{metrics}_metrics"), |b| {
            b.iter(|| {
                let (ts, values) = &data[next];
                next = if next + 1 < data.len() {
                    next + 1
                } else {
                    1_000
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
