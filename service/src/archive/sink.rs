//! Where the archive's files go: a local directory or an S3 bucket, both through the
//! `object_store` crate. A put is whole or absent (a local put writes a staging file and
//! renames it; an S3 PUT is atomic), so a reader never sees half a file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::ArchiveConfig;

/// Where the archive is, parsed from `archive.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "archive.url {url:?}: a file:// URL needs an absolute path"
                ));
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("archive.url {url:?} names no bucket"));
            }
            let prefix = prefix.trim_matches('/').to_owned();
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        Err(format!(
            "archive.url {url:?} must be file:///absolute/dir or s3://bucket[/prefix]"
        ))
    }
}

/// Why a file could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("syncing {path}: {source}")]
    Sync {
        path: String,
        source: std::io::Error,
    },
}

/// The archive's store, with the prefix every file name is under.
#[derive(Clone)]
pub struct Sink {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// For a local directory: its path, to fsync what was put.
    local_root: Option<PathBuf>,
    timeout: Duration,
    /// Set only in tests ([`Sink::in_memory`]): while true, every put fails.
    down: Option<Arc<AtomicBool>>,
}

impl Sink {
    /// The store `config` names. Credentials are handed to the client, never logged.
    pub fn open(config: &ArchiveConfig) -> Result<Self, String> {
        let timeout = Duration::from_millis(config.write_timeout_ms);
        match Location::parse(&config.url)? {
            Location::Local(root) => {
                std::fs::create_dir_all(&root)
                    .map_err(|e| format!("creating {}: {e}", root.display()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                    .map_err(|e| format!("archive directory {}: {e}", root.display()))?;
                Ok(Self {
                    store: Arc::new(store),
                    prefix: String::new(),
                    local_root: Some(root),
                    timeout,
                    down: None,
                })
            }
            Location::S3 { bucket, prefix } => {
                let s3 = &config.s3;
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&s3.region)
                    .with_allow_http(s3.allow_http)
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_timeout(timeout)
                            .with_allow_http(s3.allow_http),
                    );
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                match (&s3.access_key_id, &s3.secret_access_key) {
                    (Some(id), Some(key)) => {
                        builder = builder
                            .with_access_key_id(id.expose())
                            .with_secret_access_key(key.expose());
                    }
                    (None, None) => builder = builder.with_skip_signature(true),
                    _ => {
                        return Err(
                            "archive.s3: set both access_key_id and secret_access_key, or neither"
                                .to_owned(),
                        )
                    }
                }
                let store = builder
                    .build()
                    .map_err(|e| format!("archive S3 client: {e}"))?;
                Ok(Self {
                    store: Arc::new(store),
                    prefix,
                    local_root: None,
                    timeout,
                    down: None,
                })
            }
        }
    }

    /// A store in memory, for tests, with the switch that makes it refuse puts.
    pub fn in_memory() -> (Self, Arc<AtomicBool>) {
        let down = Arc::new(AtomicBool::new(false));
        let sink = Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: String::new(),
            local_root: None,
            timeout: Duration::from_secs(5),
            down: Some(down.clone()),
        };
        (sink, down)
    }

    fn full(&self, name: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Store `bytes` as `name` (relative to the prefix), replacing any file of that name;
    /// returns once the store confirmed it (for a local directory: once the file and its
    /// directory are synced to disk).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), SinkError> {
        if self
            .down
            .as_ref()
            .is_some_and(|down| down.load(Ordering::SeqCst))
        {
            return Err(SinkError::Store(object_store::Error::Generic {
                store: "memory",
                source: "switched off by the test".into(),
            }));
        }
        let path = self.full(name);
        let put = self.store.put(&path, PutPayload::from(bytes));
        tokio::time::timeout(self.timeout, put)
            .await
            .map_err(|_| SinkError::Timeout(self.timeout))??;
        if let Some(root) = &self.local_root {
            let file = root.join(path.as_ref());
            tokio::task::spawn_blocking(move || sync_file_and_dir(&file))
                .await
                .map_err(|e| SinkError::Sync {
                    path: name.to_owned(),
                    source: std::io::Error::other(e),
                })?
                .map_err(|source| SinkError::Sync {
                    path: name.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Every file name (relative to the prefix) under `under`, sorted.
    pub async fn list(&self, under: &str) -> Result<Vec<String>, SinkError> {
        let base = self.full(under);
        let metas: Vec<_> = self.store.list(Some(&base)).try_collect().await?;
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut names: Vec<String> = metas
            .iter()
            .map(|meta| meta.location.as_ref()[strip..].to_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The content of file `name`.
    pub async fn get(&self, name: &str) -> Result<bytes::Bytes, SinkError> {
        let path = self.full(name);
        let read = async { self.store.get(&path).await?.bytes().await };
        Ok(tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| SinkError::Timeout(self.timeout))??)
    }
}

/// fsync a file just renamed into place, and its directory (so the rename survives a
/// power loss too).
fn sync_file_and_dir(file: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(file)?.sync_all()?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why_not() {
        assert_eq!(
            Location::parse("file:///var/archive").unwrap(),
            Location::Local(PathBuf::from("/var/archive"))
        );
        assert_eq!(
            Location::parse("s3://bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert!(Location::parse("file://relative").is_err());
        assert!(Location::parse("s3:///x").is_err());
        assert!(Location::parse("http://x").is_err());
    }

    #[tokio::test]
    async fn a_local_directory_keeps_what_was_put_and_a_put_replaces() {
        let dir = std::env::temp_dir().join(format!("fleetwatch-sink-{}", std::process::id()));
        let config = ArchiveConfig {
            url: format!("file://{}", dir.display()),
            ..ArchiveConfig::default()
        };
        let sink = Sink::open(&config).unwrap();
        sink.put("t/date=2026-01-01/hour=00/a.parquet", b"one".to_vec())
            .await
            .unwrap();
        sink.put("t/date=2026-01-01/hour=00/a.parquet", b"two".to_vec())
            .await
            .unwrap();
        assert_eq!(
            sink.list("t").await.unwrap(),
            ["t/date=2026-01-01/hour=00/a.parquet"]
        );
        assert_eq!(
            &sink
                .get("t/date=2026-01-01/hour=00/a.parquet")
                .await
                .unwrap()[..],
            b"two"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
