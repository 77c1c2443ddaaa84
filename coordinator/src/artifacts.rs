//! Artifact files (rewind points, trained weights, checkpoints) and uploaded inputs (models,
//! datasets, under `inputs/sha256/<hex>`) in an object store.
//!
//! Workers never see the store: they stream files through the coordinator, which checks the lease
//! and the sha256 before recording a file, so a stale attempt or a corrupted transfer never
//! becomes an input of a later job. A local directory is the default; `s3://bucket/prefix` (with
//! the usual AWS_* environment variables) selects an S3-compatible store.

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// How stored files are named in the database (`file:///dir/...` or `s3://bucket/...`).
    base_uri: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact store {0}: {1}")]
    Open(String, String),
    #[error("artifact {name}: sha256 mismatch: declared {declared}, received {actual}; the upload was discarded, send it again")]
    Digest { name: String, declared: String, actual: String },
    #[error("artifact {name}: declared {declared} bytes, received {actual}; the upload was discarded, send it again")]
    Size { name: String, declared: u64, actual: u64 },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// What a finished upload wrote.
#[derive(Debug, Clone)]
pub struct Stored {
    pub uri: String,
    pub key: String,
    pub sha256: String,
    pub bytes: u64,
}

impl ArtifactStore {
    /// `location` is a directory (created when missing) or a URL such as `s3://bucket/prefix`.
    pub fn open(location: &str) -> Result<ArtifactStore, ArtifactError> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let url = url::Url::parse(location).map_err(|e| ArtifactError::Open(location.into(), e.to_string()))?;
            let bucket = url.host_str().unwrap_or_default().to_string();
            let store = AmazonS3Builder::from_env()
                .with_url(location)
                .build()
                .map_err(|e| ArtifactError::Open(location.into(), format!("{e} (set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for MinIO, AWS_ENDPOINT)")))?;
            let prefix = Path::from(url.path().trim_matches('/'));
            let _ = rest;
            return Ok(ArtifactStore { store: Arc::new(store), prefix, base_uri: format!("s3://{bucket}") });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(ArtifactError::Open(
                location.into(),
                "unsupported URL scheme: use a local directory or s3://bucket/prefix".into(),
            ));
        }
        let dir = location.strip_prefix("file://").unwrap_or(location);
        std::fs::create_dir_all(dir)
            .map_err(|e| ArtifactError::Open(dir.into(), format!("cannot create the directory: {e}")))?;
        let abs = std::fs::canonicalize(dir).map_err(|e| ArtifactError::Open(dir.into(), e.to_string()))?;
        let store = LocalFileSystem::new_with_prefix(&abs).map_err(|e| ArtifactError::Open(dir.into(), e.to_string()))?;
        Ok(ArtifactStore { store: Arc::new(store), prefix: Path::default(), base_uri: format!("file://{}", abs.display()) })
    }

    fn full(&self, key: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix.as_ref()))
        }
    }

    /// The object key of one upload of an attempt's file: each upload its own object, so a
    /// stale attempt never overwrites a current one, and an upload never overwrites the file
    /// already recorded under its name. An attempt uploads a checkpoint every few epochs; with
    /// one key for all of them, one still in flight when the job died replaced the recorded
    /// checkpoint's bytes (or, refused, deleted them), and the retry had to start over. The
    /// record returns the object it replaced ([`crate::store::Recorded`]), which is then deleted.
    pub fn key_for(job_id: i64, attempt: i32, name: &str, upload: &str) -> String {
        format!("jobs/{job_id}/attempt-{attempt}/{name}.{upload}")
    }

    /// Streams `chunks` into `key`, hashing as it goes. The object is deleted again when the size
    /// or digest disagrees with what the sender declared.
    pub async fn put_verified<S>(
        &self,
        key: &str,
        name: &str,
        declared_sha256: &str,
        declared_bytes: Option<u64>,
        mut chunks: S,
    ) -> Result<Result<Stored, ArtifactError>, tonic::Status>
    where
        S: futures::Stream<Item = Result<Bytes, tonic::Status>> + Unpin,
    {
        let path = self.full(key);
        let upload = self.store.put_multipart(&path).await.map_err(|e| lth_proto::errors::unavailable(format!("object store: {e}")))?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(status) => {
                    let _ = writer.abort().await;
                    return Err(status);
                }
            };
            hasher.update(&chunk);
            bytes += chunk.len() as u64;
            writer.write(&chunk);
        }
        writer.finish().await.map_err(|e| lth_proto::errors::unavailable(format!("object store: {e}")))?;
        let actual = hex::encode(hasher.finalize());
        if let Some(declared) = declared_bytes.filter(|d| *d != bytes) {
            let _ = self.store.delete(&path).await;
            return Ok(Err(ArtifactError::Size { name: name.into(), declared, actual: bytes }));
        }
        if !actual.eq_ignore_ascii_case(declared_sha256) {
            let _ = self.store.delete(&path).await;
            return Ok(Err(ArtifactError::Digest { name: name.into(), declared: declared_sha256.into(), actual }));
        }
        Ok(Ok(Stored { uri: format!("{}/{}", self.base_uri, path.as_ref()), key: key.into(), sha256: actual, bytes }))
    }

    /// The object named by a stored `uri` as a stream of chunks.
    pub async fn get_stream(
        &self,
        uri: &str,
    ) -> Result<impl futures::Stream<Item = Result<Bytes, object_store::Error>> + Send + use<>, ArtifactError> {
        let path = self.path_of_uri(uri);
        let got = self.store.get(&path).await?;
        Ok(got.into_stream())
    }

    /// Moves the object at stored `uri` to `key` (replacing what is there: callers move only
    /// verified bytes onto their content address) and returns its new uri.
    pub async fn rename(&self, uri: &str, key: &str) -> Result<String, ArtifactError> {
        let to = self.full(key);
        self.store.rename(&self.path_of_uri(uri), &to).await?;
        Ok(format!("{}/{}", self.base_uri, to.as_ref()))
    }

    pub async fn delete_uri(&self, uri: &str) {
        let _ = self.store.delete(&self.path_of_uri(uri)).await;
    }

    fn path_of_uri(&self, uri: &str) -> Path {
        let rel = uri.strip_prefix(&self.base_uri).unwrap_or(uri).trim_start_matches('/');
        Path::from(rel)
    }
}
