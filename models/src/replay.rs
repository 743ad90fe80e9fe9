//! Running a trainer and a lagging scorer over a series, exactly as production pairs
//! them: the scorer scores each event with the parameters most recently published, and
//! the trainer publishes every `publish_every` events. The event is scored before the
//! trainer learns it: a scorer never sees parameters that already know the event.

use std::collections::BTreeMap;

use crate::{Observation, Score, Scorer, Trainer};

/// Score every observation in order; returns one score per observation.
pub fn replay<T, S>(
    mut trainer: T,
    mut scorer: S,
    publish_every: u32,
    observations: impl IntoIterator<Item = (i64, BTreeMap<String, f64>)>,
) -> Vec<Score>
where
    T: Trainer,
    S: Scorer<Params = T::Params>,
{
    let publish_every = publish_every.max(1);
    let mut params = trainer.snapshot();
    let mut since_publish = 0;
    observations
        .into_iter()
        .map(|(ts_ms, metrics)| {
            let observation = Observation {
                ts_ms,
                metrics: &metrics,
            };
            let score = scorer.score(&params, &observation);
            trainer.update(&observation);
            since_publish += 1;
            if since_publish >= publish_every {
                params = trainer.snapshot();
                since_publish = 0;
            }
            score
        })
        .collect()
}
