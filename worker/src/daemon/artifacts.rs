//! Moving artifacts (θk rewind points, trained weights, checkpoints) between the worker and the
//! coordinator's object store, and caching the inputs locally.
//!
//! Uploads and downloads are chunked gRPC streams carrying the whole file's sha256; every download
//! is verified before it becomes visible (written to a temporary name, renamed into place), so a
//! cut connection or a corrupt store never feeds a job a bad file. The cache is content-addressed
//! (`<cache>/sha256/<hex>`): the same θk serves every trial of a seed without another download.

use super::rpc::Client;
use anyhow::{bail, Context};
use futures::StreamExt;
use lth_proto::v1::{ArtifactChunk, ArtifactRef, DownloadArtifactRequest, JobLease};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;

const CHUNK_BYTES: usize = 1 << 20;

/// Why a transfer failed: the RPC (classify it with `rpc::classify`) or the bytes themselves.
#[derive(Debug)]
pub enum TransferError {
    Rpc(Status),
    Local(anyhow::Error),
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::Rpc(s) => write!(f, "coordinator answered {:?}: {}", s.code(), s.message()),
            TransferError::Local(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<Status> for TransferError {
    fn from(s: Status) -> Self {
        TransferError::Rpc(s)
    }
}

/// sha256 (hex) and length of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Local content-addressed store of downloaded artifacts.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    root: PathBuf,
}

impl ArtifactCache {
    pub fn new(root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("sha256"))?;
        Ok(ArtifactCache { root })
    }

    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    /// The cached file for `artifact`, downloading (and verifying) it first if needed.
    pub async fn fetch(&self, client: &mut Client, artifact: &ArtifactRef) -> Result<PathBuf, TransferError> {
        let sha = artifact.sha256.to_ascii_lowercase();
        if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            let path = self.path_for(&sha);
            if path.exists() {
                tracing::debug!(job = artifact.job_id, name = %artifact.name, "artifact cache hit");
                return Ok(path);
            }
        }
        let tmp_dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(|e| TransferError::Local(e.into()))?;
        let tmp = tmp_dir.join(format!("{}-{}-{}", artifact.job_id, artifact.name, unique_suffix()));
        let expected = (!sha.is_empty()).then_some(sha.as_str());
        let got = download_to(client, artifact.job_id, &artifact.name, expected, &tmp).await;
        let (digest, _) = match got {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let path = self.path_for(&digest);
        tokio::fs::rename(&tmp, &path).await.map_err(|e| TransferError::Local(e.into()))?;
        Ok(path)
    }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Downloads artifact `(job_id, name)` to `dest`, checking its sha256 against `expected` (if
/// given) and against the digest the coordinator announces. Returns the digest and length.
pub async fn download_to(
    client: &mut Client,
    job_id: i64,
    name: &str,
    expected: Option<&str>,
    dest: &Path,
) -> Result<(String, u64), TransferError> {
    let mut stream = client
        .download_artifact(DownloadArtifactRequest { job_id, name: name.to_string() })
        .await?
        .into_inner();
    let mut file = tokio::fs::File::create(dest)
        .await
        .with_context(|| format!("cannot create {}", dest.display()))
        .map_err(TransferError::Local)?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut announced: Option<String> = None;
    let mut announced_len: Option<u64> = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if !chunk.sha256.is_empty() && announced.is_none() {
            announced = Some(chunk.sha256.to_ascii_lowercase());
        }
        if chunk.total_bytes > 0 && announced_len.is_none() {
            announced_len = Some(chunk.total_bytes);
        }
        hasher.update(&chunk.data);
        total += chunk.data.len() as u64;
        file.write_all(&chunk.data).await.map_err(|e| TransferError::Local(e.into()))?;
    }
    file.sync_all().await.map_err(|e| TransferError::Local(e.into()))?;
    drop(file);
    let digest = hex::encode(hasher.finalize());
    for want in expected.into_iter().chain(announced.as_deref()) {
        if want != digest {
            return Err(TransferError::Local(anyhow::anyhow!(
                "artifact {name:?} of job {job_id}: sha256 mismatch (expected {want}, received {digest}, {total} bytes); \
                 the download was discarded and will be retried with the job"
            )));
        }
    }
    if let Some(len) = announced_len {
        if len != total {
            return Err(TransferError::Local(anyhow::anyhow!(
                "artifact {name:?} of job {job_id}: received {total} bytes, the coordinator announced {len}"
            )));
        }
    }
    Ok((digest, total))
}

/// Uploads `path` as artifact `name` of the leased job. The file must not change meanwhile
/// (callers upload a hard-linked snapshot or a finished output).
pub async fn upload(client: &mut Client, lease: JobLease, name: &str, path: &Path) -> Result<ArtifactRef, TransferError> {
    let (sha, len) = {
        let p = path.to_path_buf();
        tokio::task::spawn_blocking(move || sha256_file(&p))
            .await
            .map_err(|e| TransferError::Local(e.into()))?
            .with_context(|| format!("cannot read {} for upload", path.display()))
            .map_err(TransferError::Local)?
    };
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))
        .map_err(TransferError::Local)?;
    let first = ArtifactChunk { lease: Some(lease), name: name.to_string(), data: Vec::new().into(), sha256: sha.clone(), total_bytes: len };
    // The stream reads the file lazily; a read error ends it early and the server's length/digest
    // check rejects the upload.
    let chunks = futures::stream::unfold((file, Some(first), false), |(mut file, header, done)| async move {
        if done {
            return None;
        }
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => {
                    tracing::error!(error = %e, "reading an artifact for upload failed");
                    return None;
                }
            }
        }
        buf.truncate(filled);
        let last = filled < CHUNK_BYTES;
        let chunk = match header {
            Some(mut h) => {
                h.data = buf.into();
                h
            }
            None if filled == 0 => return None,
            None => ArtifactChunk { data: buf.into(), ..Default::default() },
        };
        Some((chunk, (file, None, last)))
    });
    let response = client.upload_artifact(chunks).await?.into_inner();
    let artifact = response.artifact.ok_or_else(|| {
        TransferError::Local(anyhow::anyhow!("coordinator accepted upload of {name:?} but returned no artifact reference"))
    })?;
    if !artifact.sha256.is_empty() && !artifact.sha256.eq_ignore_ascii_case(&sha) {
        return Err(TransferError::Local(anyhow::anyhow!(
            "coordinator stored {name:?} with sha256 {} but the file has {sha}",
            artifact.sha256
        )));
    }
    Ok(artifact)
}

/// Validates a file that should be an artifact we can hand to the engine (exists, non-empty).
pub fn check_nonempty(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{} is missing", path.display()))?;
    if meta.len() == 0 {
        bail!("{} is empty", path.display());
    }
    Ok(())
}
