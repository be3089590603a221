//! Storage destinations: where packs live. One abstraction over the `object_store` crate for
//! local folders and S3-compatible services.
//!
//! Writes are atomic: a pack becomes visible under its final key only when it is complete (the
//! local backend writes to a temporary file and renames it; S3 completes a multipart upload).
//! Local writes are fsynced (file and directory) before they count as stored.
//!
//! Crash behaviour: a crash mid-write leaves at most a temporary file (local) or an unfinished
//! multipart upload (S3), never a partial pack under its final key; a pack stored but not yet
//! indexed by the caller is unreferenced, and nothing removes such packs yet.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};

/// Part size for streamed writes. S3 requires at least 5 MiB per part except the last.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded concurrently per streamed write (bounds memory to about PART_SIZE x this).
const PART_CONCURRENCY: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("invalid destination configuration: {0}")]
    Config(String),
    #[error("storage error: {0}")]
    Store(String),
}

impl From<object_store::Error> for DestinationError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => DestinationError::NotFound(path),
            other => DestinationError::Store(scrub(&other.to_string())),
        }
    }
}

/// Removes anything that looks like a credential from an error text before it reaches logs or
/// clients (signatures and keys appear in some S3 error bodies).
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_inclusive(|c: char| c.is_whitespace() || c == '&' || c == '?') {
        let lower = word.to_ascii_lowercase();
        if lower.contains("signature=")
            || lower.contains("credential=")
            || lower.contains("secret")
            || lower.contains("x-amz-security-token")
        {
            out.push_str("[redacted] ");
        } else {
            out.push_str(word);
        }
    }
    out
}

/// A secret string: never printed, never serialised back to API clients.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `backup_destinations.connection_config`: how to reach a destination.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DestinationConfig {
    /// The storage the server itself is configured with (its settings and secrets stay in the
    /// server's configuration, never in the database).
    ServerDefault,
    /// A folder on the server's filesystem (local disk, NAS mount, removable offsite disk).
    Local { path: PathBuf },
    /// An S3-compatible bucket.
    S3 {
        bucket: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access_key_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_access_key: Option<Secret>,
        /// Key prefix inside the bucket.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        /// Allow plain HTTP endpoints (a local S3 server).
        #[serde(default)]
        allow_http: bool,
        /// Virtual-hosted style (`bucket.host`) instead of path style.
        #[serde(default)]
        virtual_hosted: bool,
    },
}

impl DestinationConfig {
    /// The configuration as it may be shown to users and logs: secrets removed.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let Some(obj) = v.as_object_mut() {
            if obj.contains_key("secret_access_key") {
                obj.insert("secret_access_key".into(), "***".into());
            }
        }
        v
    }
}

/// An opened destination.
#[derive(Clone)]
pub struct Destination {
    name: String,
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjPath>,
    kind: &'static str,
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Destination {
    /// Opens a destination. A local folder is created when missing.
    pub fn open(name: &str, config: &DestinationConfig) -> Result<Destination, DestinationError> {
        match config {
            DestinationConfig::ServerDefault => Err(DestinationError::Config(
                "the server-default destination is resolved by the server, not opened directly"
                    .into(),
            )),
            DestinationConfig::Local { path } => {
                std::fs::create_dir_all(path).map_err(|e| {
                    DestinationError::Config(format!("cannot create {}: {e}", path.display()))
                })?;
                let store = LocalFileSystem::new_with_prefix(path)
                    .map_err(DestinationError::from)?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                Ok(Destination {
                    name: name.to_string(),
                    store: Arc::new(store),
                    prefix: None,
                    kind: "local",
                })
            }
            DestinationConfig::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                prefix,
                allow_http,
                virtual_hosted,
            } => {
                if bucket.is_empty() {
                    return Err(DestinationError::Config("bucket is empty".into()));
                }
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region.clone().unwrap_or_else(|| "us-east-1".into()))
                    .with_allow_http(*allow_http)
                    .with_virtual_hosted_style_request(*virtual_hosted);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                if let Some(k) = access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(s) = secret_access_key {
                    b = b.with_secret_access_key(s.expose());
                }
                let store = b
                    .build()
                    .map_err(|e| DestinationError::Config(scrub(&e.to_string())))?;
                Ok(Destination {
                    name: name.to_string(),
                    store: Arc::new(store),
                    prefix: prefix
                        .as_deref()
                        .filter(|p| !p.trim_matches('/').is_empty())
                        .map(ObjPath::from),
                    kind: "s3",
                })
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn path(&self, key: &str) -> ObjPath {
        match &self.prefix {
            Some(p) => ObjPath::from(key)
                .parts()
                .fold(p.clone(), |acc, part| acc.join(part)),
            None => ObjPath::from(key),
        }
    }

    /// Stores a small object in one atomic write.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), DestinationError> {
        self.store.put(&self.path(key), data.into()).await?;
        Ok(())
    }

    /// Starts a streamed, atomic write of `key`.
    pub async fn writer(&self, key: &str) -> Result<ObjectWriter, DestinationError> {
        let upload = self.store.put_multipart(&self.path(key)).await?;
        Ok(ObjectWriter {
            inner: WriteMultipart::new_with_chunk_size(upload, PART_SIZE),
            written: 0,
        })
    }

    /// Reads a byte range.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, DestinationError> {
        Ok(self.store.get_range(&self.path(key), range).await?)
    }

    /// Reads several ranges of one object; adjacent ranges are coalesced into fewer requests.
    pub async fn get_ranges(
        &self,
        key: &str,
        ranges: &[Range<u64>],
    ) -> Result<Vec<Bytes>, DestinationError> {
        Ok(self.store.get_ranges(&self.path(key), ranges).await?)
    }

    /// Streams a whole object.
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<Bytes, DestinationError>>,
        DestinationError,
    > {
        let r = self.store.get(&self.path(key)).await?;
        Ok(r.into_stream()
            .map(|c| c.map_err(DestinationError::from))
            .boxed())
    }

    /// Size of an object, or `NotFound`.
    pub async fn size(&self, key: &str) -> Result<u64, DestinationError> {
        Ok(self.store.head(&self.path(key)).await?.size)
    }

    pub async fn delete(&self, key: &str) -> Result<(), DestinationError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keys (relative to the destination) and sizes under `prefix`, streamed.
    pub fn list(
        &self,
        prefix: &str,
    ) -> futures::stream::BoxStream<'static, Result<(String, u64), DestinationError>> {
        let full = self.path(prefix);
        let strip = self.prefix.as_ref().map(|p| p.parts().count()).unwrap_or(0);
        self.store
            .list(Some(&full))
            .map(move |r| {
                r.map(|m| {
                    let key: Vec<String> = m
                        .location
                        .parts()
                        .skip(strip)
                        .map(|p| p.as_ref().to_string())
                        .collect();
                    (key.join("/"), m.size)
                })
                .map_err(DestinationError::from)
            })
            .boxed()
    }

    /// Writes, reads back and deletes a small probe object; returns the round-trip time.
    pub async fn health_check(&self) -> Result<Duration, DestinationError> {
        let start = Instant::now();
        let key = format!("health/{}", uuid::Uuid::new_v4());
        let body = Bytes::from_static(b"keepsake health probe");
        self.put(&key, body.clone()).await?;
        let back = self.get_range(&key, 0..body.len() as u64).await?;
        self.delete(&key).await?;
        if back != body {
            return Err(DestinationError::Store(
                "health probe read back different bytes".into(),
            ));
        }
        Ok(start.elapsed())
    }
}

/// A streamed write. Nothing is visible under the key until [`ObjectWriter::finish`] succeeds;
/// [`ObjectWriter::abort`] (or dropping it) leaves nothing behind under the key.
pub struct ObjectWriter {
    inner: WriteMultipart,
    written: u64,
}

impl ObjectWriter {
    /// Appends bytes, waiting when too many parts are in flight (bounded memory).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), DestinationError> {
        self.inner.wait_for_capacity(PART_CONCURRENCY).await?;
        self.inner.write(data);
        self.written += data.len() as u64;
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Completes the write: the object appears atomically under its key (durably for local).
    pub async fn finish(self) -> Result<u64, DestinationError> {
        let n = self.written;
        self.inner.finish().await?;
        Ok(n)
    }

    /// Abandons the write.
    pub async fn abort(self) -> Result<(), DestinationError> {
        self.inner.abort().await?;
        Ok(())
    }
}
