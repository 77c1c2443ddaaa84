//! Moving artifacts (θk rewind points, trained weights, checkpoints) between the worker and the
//! coordinator's object store, and caching the inputs locally.
//!
//! Uploads and downloads are chunked gRPC streams carrying the whole file's sha256; every download
//! is verified before it becomes visible (written to a temporary name, renamed into place), so a
//! cut connection or a corrupt store never feeds a job a bad file. The cache is content-addressed
//! (`<cache>/sha256/<hex>`): the same θk serves every trial of a seed without another download.
//! Cached files are re-verified on every use and the cache is bounded (LRU); see `ArtifactCache`.

use super::rpc::Client;
use anyhow::Context;
use futures::StreamExt;
use lth_proto::v1::{ArtifactChunk, ArtifactRef, DownloadArtifactRequest, DownloadInputRequest, JobLease};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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

/// Local content-addressed store of downloaded artifacts (`<root>/sha256/<hex>`).
///
/// Nothing in it is trusted by name: every use re-hashes the file, and an entry whose bytes no
/// longer match its name (a flipped bit on disk, a truncated copy, someone editing the folder) is
/// evicted and downloaded again. The cost is small next to a job that trains for minutes: a
/// ResNet-18 θk is 45 MB, which `sha256sum` hashed in 0.15 s of CPU on the 2-core dev machine
/// under load (the sha2 crate uses the SHA-NI instructions where the CPU has them).
///
/// The folder is bounded: after each download the least recently used entries (by mtime, which
/// every use refreshes) go until the total is under `max_bytes`. Entries in use by a running job
/// are pinned (`CachedArtifact` holds the pin) and never evicted, so a job's inputs cannot vanish
/// between its prepare phase and the moment its process opens them.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    root: PathBuf,
    max_bytes: Option<u64>,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

/// A verified cache entry, pinned against eviction while this value lives.
#[derive(Debug)]
pub struct CachedArtifact {
    pub path: PathBuf,
    _pin: Pin,
}

#[derive(Debug)]
struct Pin {
    sha: String,
    pins: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pins.get_mut(&self.sha) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.sha);
            }
        }
    }
}

/// What a cache lookup found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Present, and its bytes hash to its name.
    Verified,
    /// Not in the cache.
    Missing,
    /// Present but corrupt: it was removed (the actual digest is given).
    Evicted { actual: String },
}

/// What `ArtifactCache::evict` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Eviction {
    pub removed: Vec<String>,
    pub freed_bytes: u64,
    pub kept_bytes: u64,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ArtifactCache {
    /// A cache in `root`, bounded to `max_bytes` (None: unbounded). Partial downloads left by an
    /// earlier run (a daemon killed mid-download) are removed once an hour old; younger ones may
    /// belong to another daemon sharing the folder.
    pub fn new(root: PathBuf, max_bytes: Option<u64>) -> std::io::Result<Self> {
        std::fs::create_dir_all(root.join("sha256"))?;
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            for e in entries.flatten() {
                if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < stale) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(ArtifactCache { root, max_bytes, pins: Arc::default() })
    }

    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    fn pin(&self, sha: &str) -> Pin {
        *self.pins.lock().unwrap_or_else(|e| e.into_inner()).entry(sha.to_string()).or_insert(0) += 1;
        Pin { sha: sha.to_string(), pins: self.pins.clone() }
    }

    fn is_pinned(&self, sha: &str) -> bool {
        self.pins.lock().unwrap_or_else(|e| e.into_inner()).contains_key(sha)
    }

    /// Checks the entry `sha` against its name (blocking: call from a blocking thread). A
    /// verified entry's mtime is refreshed (it is the LRU clock); a corrupt one is removed.
    pub fn lookup(&self, sha: &str) -> std::io::Result<Lookup> {
        let path = self.path_for(sha);
        let actual = match sha256_file(&path) {
            Ok((actual, _)) => actual,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            Err(e) => return Err(e),
        };
        if actual.eq_ignore_ascii_case(sha) {
            if let Ok(f) = std::fs::File::options().write(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
            Ok(Lookup::Verified)
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            Ok(Lookup::Evicted { actual })
        }
    }

    /// Removes least recently used, unpinned entries until the cache holds at most `max_bytes`.
    pub fn evict(&self, max_bytes: u64) -> std::io::Result<Eviction> {
        let mut entries = Vec::new();
        for e in std::fs::read_dir(self.root.join("sha256"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            entries.push((meta.modified().unwrap_or(std::time::UNIX_EPOCH), name, meta.len()));
        }
        let mut total: u64 = entries.iter().map(|e| e.2).sum();
        entries.sort();
        let mut out = Eviction::default();
        for (_, name, len) in entries {
            if total <= max_bytes {
                break;
            }
            if self.is_pinned(&name) {
                continue;
            }
            match std::fs::remove_file(self.path_for(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            total -= len;
            out.freed_bytes += len;
            out.removed.push(name);
        }
        out.kept_bytes = total;
        Ok(out)
    }

    /// The cached, verified file for `artifact`, downloading (and verifying) it first if needed.
    /// `lease` is the job that needs it: named in the download, so that the coordinator repairs a
    /// file it finds lost (ARTIFACT_LOST). The returned value pins the entry against eviction
    /// until it is dropped.
    pub async fn fetch(&self, client: &mut Client, artifact: &ArtifactRef, lease: Option<JobLease>) -> Result<CachedArtifact, TransferError> {
        let source = Source::Artifact { job_id: artifact.job_id, name: artifact.name.clone(), lease };
        self.fetch_from(client, &source, &artifact.sha256).await
    }

    /// The cached, verified file of an uploaded input (a model or dataset sent with lthctl),
    /// downloaded by its digest when missing or corrupt. Pinned while the value lives.
    pub async fn fetch_input(&self, client: &mut Client, sha256: &str) -> Result<CachedArtifact, TransferError> {
        self.fetch_from(client, &Source::Input { sha256: sha256.to_ascii_lowercase() }, sha256).await
    }

    async fn fetch_from(&self, client: &mut Client, source: &Source, sha256: &str) -> Result<CachedArtifact, TransferError> {
        let sha = sha256.to_ascii_lowercase();
        let label = source.label();
        if is_sha256_hex(&sha) {
            let pin = self.pin(&sha);
            let this = self.clone();
            let s = sha.clone();
            let found = tokio::task::spawn_blocking(move || this.lookup(&s))
                .await
                .map_err(|e| TransferError::Local(e.into()))?
                .map_err(|e| TransferError::Local(anyhow::Error::new(e).context("cannot read the artifact cache")))?;
            match found {
                Lookup::Verified => {
                    match source {
                        Source::Input { .. } => tracing::info!(sha256 = %sha, "input cache hit (sha256 verified): not downloaded again"),
                        Source::Artifact { .. } => tracing::debug!(what = %label, "artifact cache hit (sha256 verified)"),
                    }
                    metrics::counter!(super::metrics::names::CACHE_HITS).increment(1);
                    return Ok(CachedArtifact { path: self.path_for(&sha), _pin: pin });
                }
                Lookup::Evicted { actual } => tracing::warn!(
                    what = %label,
                    expected = %sha,
                    actual = %actual,
                    "a cached artifact no longer matches its sha256 (corrupted on disk); evicted it and downloading it again"
                ),
                Lookup::Missing => {}
            }
        }
        let tmp_dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&tmp_dir).await.map_err(|e| TransferError::Local(e.into()))?;
        let tmp_name = match source {
            Source::Artifact { job_id, name, .. } => format!("{job_id}-{name}"),
            Source::Input { sha256 } => format!("input-{sha256}"),
        };
        let tmp = tmp_dir.join(format!("{tmp_name}-{}", unique_suffix()));
        let expected = (!sha.is_empty()).then_some(sha.as_str());
        let got = download_source(client, source, expected, &tmp).await;
        let (digest, bytes) = match got {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        metrics::counter!(super::metrics::names::CACHE_MISSES).increment(1);
        metrics::counter!(super::metrics::names::CACHE_DOWNLOADED).increment(bytes);
        let pin = self.pin(&digest);
        let path = self.path_for(&digest);
        tokio::fs::rename(&tmp, &path).await.map_err(|e| TransferError::Local(e.into()))?;
        if let Source::Input { .. } = source {
            tracing::info!(sha256 = %digest, "input downloaded and verified (sha256)");
        }
        if let Some(max) = self.max_bytes {
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.evict(max)).await {
                Ok(Ok(ev)) if !ev.removed.is_empty() => tracing::info!(
                    removed = ev.removed.len(),
                    freed_bytes = ev.freed_bytes,
                    kept_bytes = ev.kept_bytes,
                    max_bytes = max,
                    "artifact cache over its size limit: least recently used entries removed"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "artifact cache eviction failed"),
                Err(e) => tracing::warn!(error = %e, "artifact cache eviction failed"),
            }
        }
        Ok(CachedArtifact { path, _pin: pin })
    }
}

// ---------------------------------------------------------------------------------------------
// Uploaded inputs (models and datasets sent with `lthctl`), by sha256
// ---------------------------------------------------------------------------------------------

/// Where a download comes from: a job's artifact, or an uploaded input by its digest.
#[derive(Debug, Clone)]
pub enum Source {
    /// `lease`: the job that downloads it (see [`ArtifactCache::fetch`]).
    Artifact { job_id: i64, name: String, lease: Option<JobLease> },
    Input { sha256: String },
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::Artifact { job_id, name, .. } => format!("artifact {name:?} of job {job_id}"),
            Source::Input { sha256 } => format!("upload sha256:{sha256}"),
        }
    }
}

impl ArtifactCache {
    /// The folder an uploaded ImageFolder tar (cached under `sha256`) unpacks to, unpacking it
    /// the first time: `<cache>/unpacked/<sha256>/`. The unpacking goes to a temporary folder
    /// renamed into place, so a folder that exists is complete. Blocking: call from a blocking
    /// thread. Returns the folder and whether it was already there.
    pub fn unpacked(&self, sha256: &str, tar: &Path) -> anyhow::Result<(PathBuf, bool)> {
        let dest = self.root.join("unpacked").join(sha256);
        if dest.is_dir() {
            return Ok((dest, true));
        }
        std::fs::create_dir_all(self.root.join("unpacked"))?;
        let tmp = self.root.join("unpacked").join(format!(".{sha256}-{}", unique_suffix()));
        let result = (|| -> anyhow::Result<u64> {
            let mut f = std::io::BufReader::new(std::fs::File::open(tar)?);
            Ok(lth_sweep::pack::unpack_tar(&mut f, &tmp)?)
        })();
        let files = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.context(format!("cannot unpack the uploaded ImageFolder sha256:{sha256}")));
            }
        };
        match std::fs::rename(&tmp, &dest) {
            Ok(()) => {}
            // Another job unpacked the same tar meanwhile: theirs is as good.
            Err(_) if dest.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Ok((dest, true));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot move the unpacked ImageFolder into {}", dest.display()))),
        }
        tracing::info!(sha256, files, dir = %dest.display(), "uploaded ImageFolder unpacked");
        Ok((dest, false))
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
    lease: Option<JobLease>,
    expected: Option<&str>,
    dest: &Path,
) -> Result<(String, u64), TransferError> {
    download_source(client, &Source::Artifact { job_id, name: name.to_string(), lease }, expected, dest).await
}

/// Downloads `source` to `dest`, checking its sha256 against `expected` (if given) and against
/// the digest the coordinator announces. Returns the digest and length.
pub async fn download_source(client: &mut Client, source: &Source, expected: Option<&str>, dest: &Path) -> Result<(String, u64), TransferError> {
    let what = source.label();
    let mut stream = match source {
        Source::Artifact { job_id, name, lease } => {
            client.download_artifact(DownloadArtifactRequest { job_id: *job_id, name: name.clone(), lease: *lease }).await?.into_inner()
        }
        Source::Input { sha256 } => client.download_input(DownloadInputRequest { sha256: sha256.clone() }).await?.into_inner(),
    };
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
                "{what}: sha256 mismatch (expected {want}, received {digest}, {total} bytes); \
                 the download was discarded and will be retried with the job"
            )));
        }
    }
    if let Some(len) = announced_len {
        if len != total {
            return Err(TransferError::Local(anyhow::anyhow!("{what}: received {total} bytes, the coordinator announced {len}")));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// Writes `bytes` into the cache under their sha256, with the given age (LRU clock).
    fn put(cache: &ArtifactCache, bytes: &[u8], age_s: u64) -> String {
        let sha = hex::encode(Sha256::digest(bytes));
        let path = cache.path_for(&sha);
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(age_s)).unwrap();
        sha
    }

    #[test]
    fn a_corrupted_entry_is_evicted_and_a_good_one_verified() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), None).unwrap();
        let good = put(&cache, b"theta_k weights", 100);
        let bad = put(&cache, b"trained weights", 100);
        // One flipped low bit, same length: what a bad disk or a stray write does.
        let mut bytes = std::fs::read(cache.path_for(&bad)).unwrap();
        bytes[3] ^= 1;
        std::fs::write(cache.path_for(&bad), &bytes).unwrap();

        assert_eq!(cache.lookup(&good).unwrap(), Lookup::Verified);
        let age = SystemTime::now().duration_since(std::fs::metadata(cache.path_for(&good)).unwrap().modified().unwrap()).unwrap();
        assert!(age < Duration::from_secs(10), "a verified use refreshes the LRU clock (age {age:?})");
        match cache.lookup(&bad).unwrap() {
            Lookup::Evicted { actual } => assert_eq!(actual, hex::encode(Sha256::digest(&bytes))),
            other => panic!("corrupt entry not evicted: {other:?}"),
        }
        assert!(!cache.path_for(&bad).exists(), "the corrupt file is gone");
        assert_eq!(cache.lookup(&bad).unwrap(), Lookup::Missing);
    }

    #[test]
    fn eviction_removes_least_recently_used_unpinned_entries_down_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), Some(250)).unwrap();
        let oldest = put(&cache, &[1u8; 100], 400);
        let old_pinned = put(&cache, &[2u8; 100], 300);
        let middle = put(&cache, &[3u8; 100], 200);
        let newest = put(&cache, &[4u8; 100], 100);
        let pin = cache.pin(&old_pinned);

        let ev = cache.evict(250).unwrap();
        // 400 bytes → at most 250: the two oldest unpinned go; the pinned one stays though older.
        assert_eq!(ev.removed, vec![oldest.clone(), middle.clone()]);
        assert_eq!((ev.freed_bytes, ev.kept_bytes), (200, 200));
        assert!(cache.path_for(&old_pinned).exists() && cache.path_for(&newest).exists());

        drop(pin);
        let ev = cache.evict(150).unwrap();
        assert_eq!(ev.removed, vec![old_pinned], "unpinned now, and the oldest");
        assert_eq!(cache.evict(150).unwrap(), Eviction { removed: vec![], freed_bytes: 0, kept_bytes: 100 });
    }

    #[test]
    fn pins_count_per_holder() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().to_path_buf(), None).unwrap();
        let sha = put(&cache, b"x", 0);
        let (a, b) = (cache.pin(&sha), cache.pin(&sha));
        drop(a);
        assert!(cache.is_pinned(&sha), "still pinned by the second job");
        drop(b);
        assert!(!cache.is_pinned(&sha));
    }

    #[test]
    fn stale_partial_downloads_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let (stale, fresh) = (dir.path().join("tmp/7-weights-1-0"), dir.path().join("tmp/8-weights-2-0"));
        std::fs::write(&stale, b"half a file").unwrap();
        std::fs::write(&fresh, b"a download in flight").unwrap();
        let f = std::fs::File::options().write(true).open(&stale).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(7200)).unwrap();
        ArtifactCache::new(dir.path().to_path_buf(), None).unwrap();
        assert!(!stale.exists(), "an hour-old partial download is removed");
        assert!(fresh.exists(), "a fresh one may be another daemon's download in flight");
    }
}
