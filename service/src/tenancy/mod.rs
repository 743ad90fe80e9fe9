//! Tenants: which tenant each device belongs to, known to every instance.
//!
//! The twin owner (devices role) is the one writer of a device's assignment: it writes
//! the twin's `tenant` to `iot.device-state` and a [`fleetwatch_protocol::DirectoryEntry`]
//! to `iot.device-directory`. Every instance reads the directory whole, so REST can check
//! a caller's tenant and list a tenant's fleet anywhere, and ingest stamps each event with
//! its tenant so scorer and alerts route without looking anything up.

mod config;
mod directory;

pub use config::{ProvisioningRule, TenancyConfig};
pub use directory::{Directory, DirectoryHandler, Page};

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::kafka::{consume, ConsumerRole, KafkaConfig, RoleConsumer, StartAt};
use crate::metrics::Metrics;

/// Start reading the directory from its beginning; the returned directory says when it
/// has caught up with the topic's end at start.
pub async fn start_directory(
    kafka: &KafkaConfig,
    tenancy: &TenancyConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<(&'static str, Result<()>)>,
) -> Result<Arc<Directory>> {
    let directory = Arc::new(Directory::new(
        tenancy.provisioning.clone(),
        metrics.clone(),
    ));
    let topic = kafka.topics().device_directory();
    let consumer = RoleConsumer::read_whole_topic(
        kafka,
        ConsumerRole::Directory,
        &topic,
        StartAt::Earliest,
        metrics,
    )
    .await?;
    let end_offsets = consumer.end_offsets(&topic).await?;
    let handler = DirectoryHandler::new(directory.clone(), end_offsets);
    tasks.spawn(async move { ("directory", consume(consumer, handler, shutdown).await) });
    Ok(directory)
}
