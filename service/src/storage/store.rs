//! Where points go: a server speaking the InfluxDB v2 write API, through the influxdb2
//! crate, or memory (unit tests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use influxdb2::api::write::TimestampPrecision;
use parking_lot::Mutex;

use super::points::Point;
use super::StorageConfig;

/// Why a write did not land; every one is retried.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("store refused or failed the write: {0}")]
    Request(#[from] influxdb2::RequestError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("store down (test)")]
    Down,
}

#[derive(Clone)]
pub enum Store {
    Influx {
        client: influxdb2::Client,
        bucket: String,
        timeout: Duration,
    },
    /// Unit tests: confirmed points land in `points`; while `down` is set, writes fail.
    Memory {
        points: Arc<Mutex<Vec<Point>>>,
        down: Arc<AtomicBool>,
    },
}

impl Store {
    /// A client of `config.url`; the URL must have passed [`StorageConfig::check`].
    pub fn influx(config: &StorageConfig) -> Result<Self, String> {
        let builder = influxdb2::ClientBuilder::new(
            &config.url,
            &config.org,
            config.token.as_ref().map_or("", |token| token.expose()),
        );
        let builder = if config.gzip {
            builder.gzip(true)
        } else {
            builder
        };
        let client = builder
            .build()
            .map_err(|e| format!("storage client: {e}"))?;
        Ok(Self::Influx {
            client,
            bucket: config.bucket.clone(),
            timeout: Duration::from_millis(config.write_timeout_ms),
        })
    }

    pub fn memory() -> Self {
        Self::Memory {
            points: Arc::default(),
            down: Arc::default(),
        }
    }

    /// Write `points` (possibly none: a probe of the store); `Ok` once the store
    /// confirmed them.
    pub async fn write(&self, points: &[Point]) -> Result<(), WriteError> {
        match self {
            Self::Influx {
                client,
                bucket,
                timeout,
            } => {
                // Points without a finite field were left out when batched.
                let body: Vec<_> = points
                    .iter()
                    .filter_map(|point| point.to_data_point().ok())
                    .collect();
                let write = client.write_with_precision(
                    bucket,
                    futures::stream::iter(body),
                    TimestampPrecision::Milliseconds,
                );
                tokio::time::timeout(*timeout, write)
                    .await
                    .map_err(|_| WriteError::Timeout(*timeout))?
                    .map_err(WriteError::from)
            }
            Self::Memory {
                points: stored,
                down,
            } => {
                if down.load(Ordering::Relaxed) {
                    return Err(WriteError::Down);
                }
                stored.lock().extend_from_slice(points);
                Ok(())
            }
        }
    }
}
