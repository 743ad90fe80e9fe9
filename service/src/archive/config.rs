use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::secret::Secret;

/// The archive role: telemetry, scores and alerts as Parquet files in a local directory
/// or an S3 bucket (docs/archive.md). Section `[archive]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Where the files go: `file:///var/lib/fleetwatch/archive` (a local directory, made
    /// if missing) or `s3://bucket/prefix`. Empty (the default): the role archives
    /// nothing and says so at start (`fleetwatch run --roles all` without an archive).
    pub url: String,
    /// A file is closed and uploaded once its rows hold this many bytes of payload, at
    /// most. Also the role's buffer per partition: a file that cannot be uploaded holds
    /// the partition (its lag grows) until the store answers again.
    pub max_file_bytes: usize,
    /// A file that is not full is closed and uploaded this long (ms) after its first row
    /// was taken: no file stays open on a quiet partition.
    pub max_file_age_ms: u64,
    /// An upload not confirmed within this long (ms) counts as failed and is retried.
    pub write_timeout_ms: u64,
    /// The S3 client, for `s3://` URLs.
    pub s3: S3Config,
}

/// The S3 client of the archive. Section `[archive.s3]`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The service's URL, for S3-compatible servers (MinIO, moto, Ceph):
    /// `http://127.0.0.1:9000`. Unset: AWS's endpoint for `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket's region.
    pub region: String,
    /// Access key id; unset (with `access_key_id_file`): no credentials are sent (a
    /// public bucket). Never printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<Secret>,
    /// A file holding the access key id (a mounted Kubernetes secret), instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<PathBuf>,
    /// Secret access key. Never printed; `FLEETWATCH_ARCHIVE__S3__SECRET_ACCESS_KEY` or
    /// `secret_access_key_file` keep it out of the configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<Secret>,
    /// A file holding the secret access key, instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow an `http://` endpoint (test servers); otherwise only HTTPS.
    pub allow_http: bool,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_file_bytes: 64 * 1024 * 1024,
            max_file_age_ms: 60_000,
            write_timeout_ms: 30_000,
            s3: S3Config::default(),
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            access_key_id_file: None,
            secret_access_key: None,
            secret_access_key_file: None,
            allow_http: false,
        }
    }
}

/// Without the credentials' values.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_id_file", &self.access_key_id_file)
            .field("secret_access_key", &self.secret_access_key)
            .field("secret_access_key_file", &self.secret_access_key_file)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl ArchiveConfig {
    /// Refuse settings the role cannot work with.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.max_file_bytes == 0 || self.max_file_age_ms == 0 || self.write_timeout_ms == 0 {
            return Err(
                "archive.max_file_bytes, archive.max_file_age_ms and archive.write_timeout_ms must be positive"
                    .to_owned(),
            );
        }
        if self.url.is_empty() {
            return Ok(());
        }
        super::sink::Location::parse(&self.url).map(|_| ())
    }

    /// Read `archive.s3.*_file` into their settings.
    pub fn read_secret_files(&mut self) -> Result<()> {
        let s3 = &mut self.s3;
        s3.access_key_id = Secret::either(
            s3.access_key_id.as_ref(),
            s3.access_key_id_file.as_deref(),
            "archive.s3.access_key_id",
        )?;
        s3.secret_access_key = Secret::either(
            s3.secret_access_key.as_ref(),
            s3.secret_access_key_file.as_deref(),
            "archive.s3.secret_access_key",
        )?;
        Ok(())
    }
}
