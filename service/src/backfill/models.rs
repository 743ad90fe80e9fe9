//! Running one model configuration over the range: per device, the production trainer
//! and scorer paired as in production (`fleetwatch_models::replay::replay`: parameters
//! published every `publish_every_events` events, each event scored before the trainer
//! learns it) and the production episode machine over the scores.

use std::collections::BTreeMap;

use fleetwatch_models::production;
use fleetwatch_models::replay::{episodes, replay};
use fleetwatch_protocol::SequenceTracker;
use serde::Serialize;

use super::config::ModelRun;
use super::source::Reading;

/// One alert episode of a device, by its readings' sequence numbers and record times.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub opened_seq: u64,
    /// The reading that closed it; `None`: still open at the end of the range.
    pub closed_seq: Option<u64>,
    pub opened_ms: i64,
    pub closed_ms: Option<i64>,
    /// The highest score while it was open.
    pub peak: f64,
}

impl Alert {
    /// Sequence numbers it covers: from its opening to its closing reading (to the end
    /// of the range when still open).
    pub fn span(&self) -> (u64, u64) {
        (self.opened_seq, self.closed_seq.unwrap_or(u64::MAX))
    }
}

/// Each device's readings without the duplicates the scorer role drops (a sequence
/// number already seen, within the tracker's window).
pub fn deduplicate(devices: &mut BTreeMap<String, Vec<Reading>>) -> u64 {
    let mut dropped = 0;
    for readings in devices.values_mut() {
        let mut tracker = SequenceTracker::default();
        let before = readings.len();
        readings.retain(|r| tracker.accept(r.seq));
        dropped += (before - readings.len()) as u64;
    }
    dropped
}

/// The alerts of one device under `run`. `rules` are `run`'s checked episode rules.
pub fn device_alerts(
    run: &ModelRun,
    rules: &production::EpisodeRules,
    readings: &[Reading],
) -> Vec<Alert> {
    let scores = replay(
        production::trainer(&run.trainer.model),
        production::scorer(),
        run.trainer.publish_every_events,
        readings.iter().map(|r| (r.ts, &r.metrics)),
    );
    episodes(&scores, rules)
        .into_iter()
        .map(|span| {
            let end = span.closed.unwrap_or(scores.len());
            let peak = scores[span.opened..end]
                .iter()
                .filter(|s| s.ready)
                .map(|s| s.value)
                .fold(0.0, f64::max);
            Alert {
                opened_seq: readings[span.opened].seq,
                closed_seq: span.closed.map(|i| readings[i].seq),
                opened_ms: readings[span.opened].record_ms,
                closed_ms: span.closed.map(|i| readings[i].record_ms),
                peak,
            }
        })
        .collect()
}

/// Each thread's devices and their alerts.
type Part = Vec<(String, Vec<Alert>)>;

/// The alerts of every device under `run`, devices split over `threads` threads.
pub fn all_alerts(
    run: &ModelRun,
    devices: &BTreeMap<String, Vec<Reading>>,
    threads: usize,
    done: &(dyn Fn(u64) + Sync),
) -> Result<BTreeMap<String, Vec<Alert>>, String> {
    let rules = run.rules()?;
    let names: Vec<&String> = devices.keys().collect();
    let chunk = names.len().div_ceil(threads.max(1)).max(1);
    let parts: Option<Vec<Part>> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&name| {
                            let readings = &devices[name];
                            let alerts = device_alerts(run, &rules, readings);
                            done(readings.len() as u64);
                            (name.clone(), alerts)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    let parts = parts.ok_or("a model thread panicked")?;
    Ok(parts.into_iter().flatten().collect())
}
