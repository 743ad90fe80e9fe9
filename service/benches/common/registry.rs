//! The devices role's registry as the benchmarks start it: the real actors, with a
//! producer and a downlink pointed at ports where nothing listens, so a benchmark writes
//! and publishes nothing.

use std::sync::Arc;

use fleetwatch::devices::{self, Changelog, DeviceRegistry, TwinRules};
use fleetwatch::kafka::{KafkaConfig, PartitionReader, Producer};
use fleetwatch::metrics::Metrics;
use fleetwatch::mqtt::{MqttConfig, MqttPublisher};
use fleetwatch::tenancy::Directory;
use tokio_util::sync::CancellationToken;

/// The registry with the default devices configuration, and its twin rules. Cancel
/// `shutdown` to stop the downlink.
pub fn offline_registry(
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> (DeviceRegistry, TwinRules) {
    let kafka = KafkaConfig {
        brokers: "127.0.0.1:1".into(),
        ..KafkaConfig::default()
    };
    let mqtt = MqttConfig {
        port: 1,
        ..MqttConfig::default()
    };
    let producer = Producer::new(&kafka, metrics.clone()).expect("producer");
    let reader = PartitionReader::new(&kafka, "bench".into(), "bench", producer.clone(), "bench")
        .expect("changelog reader");
    // Nothing is written here: one client serves both lanes.
    let changelog = Arc::new(Changelog::new(
        producer.clone(),
        producer,
        reader,
        devices::SideTopics::of(&Default::default()),
        metrics.clone(),
    ));
    let downlink = MqttPublisher::start(&mqtt, "bench", 16, metrics.clone(), shutdown.clone())
        .expect("downlink options");
    let config = devices::DevicesConfig::default();
    let rules = config.twin.clone();
    let directory = Arc::new(Directory::loaded(Vec::new(), metrics.clone()));
    let registry = devices::registry(config, changelog, downlink, directory, metrics.clone());
    (registry, rules)
}
