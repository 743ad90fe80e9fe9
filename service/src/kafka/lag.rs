//! Consumer lag per role, topic and partition: the partition's high watermark minus the
//! consumer's position, refreshed every [`LAG_INTERVAL`]. Measured from outside the
//! consume loop, so the figure keeps growing while a role holds its consumption (the
//! storage role while its store is down).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Offset;
use tokio_util::sync::CancellationToken;

use super::consumer::{ConsumerRole, RoleContext};
use crate::metrics::Metrics;

pub const LAG_INTERVAL: Duration = Duration::from_secs(5);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

type Labels = (String, i32);

/// Keep `fleetwatch_consumer_lag` of `role` current until `stop`; the series of
/// partitions no longer assigned are removed.
pub async fn watch(
    consumer: Arc<StreamConsumer<RoleContext>>,
    role: ConsumerRole,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut shown: HashSet<Labels> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(LAG_INTERVAL) => {}
        }
        let client = consumer.clone();
        let Ok(lags) = tokio::task::spawn_blocking(move || measure(&client)).await else {
            continue;
        };
        let current: HashSet<Labels> = lags.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        for (topic, partition) in shown.difference(&current) {
            let _ = metrics.consumer_lag.remove_label_values(&[
                role.name(),
                topic,
                &partition.to_string(),
            ]);
        }
        for (topic, partition, lag) in lags {
            metrics
                .consumer_lag
                .with_label_values(&[role.name(), &topic, &partition.to_string()])
                .set(lag);
        }
        shown = current;
    }
    for (topic, partition) in shown {
        let _ = metrics.consumer_lag.remove_label_values(&[
            role.name(),
            &topic,
            &partition.to_string(),
        ]);
    }
}

/// (topic, partition, lag) of every assigned partition with a known position. Blocks.
fn measure(consumer: &StreamConsumer<RoleContext>) -> Vec<(String, i32, i64)> {
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    positions
        .elements()
        .iter()
        .filter_map(|element| {
            let Offset::Offset(position) = element.offset() else {
                return None;
            };
            let (_, high) = consumer
                .fetch_watermarks(element.topic(), element.partition(), WATERMARK_TIMEOUT)
                .ok()?;
            Some((
                element.topic().to_owned(),
                element.partition(),
                (high - position).max(0),
            ))
        })
        .collect()
}
