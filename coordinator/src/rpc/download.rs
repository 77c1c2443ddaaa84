//! Downloads of stored objects (job artifacts, uploaded inputs), checked against their record as
//! they stream.
//!
//! The object store can lose or corrupt a file the database still lists. Every download therefore
//! hashes the bytes as it sends them and holds back the last chunk until the size and sha256 agree
//! with the record; a missing object, a short one or one with other bytes ends the stream with the
//! caller's [`OnLost`] answer instead of the last chunk. For a job's input that answer comes after
//! the repair (`store/repair.rs`): the producing job runs again and the caller's job is handed
//! back (ARTIFACT_LOST). Checking as it streams costs no second read of the object.

use crate::artifacts::{ArtifactError, ArtifactStore};
use crate::http::metrics::names as M;
use futures::{Stream, StreamExt};
use lth_proto::v1 as pb;
use sha2::{Digest, Sha256};
use std::pin::Pin;
use tonic::Status;

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

/// What a download answers when the object turns out lost; given what was wrong, for people
/// ("is missing from the object store", "has 12 bytes, recorded 4096", …).
pub type OnLost = Box<dyn FnOnce(String) -> futures::future::BoxFuture<'static, Status> + Send>;

/// An [`OnLost`] from an async closure.
pub fn on_lost<F, Fut>(f: F) -> OnLost
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Status> + Send + 'static,
{
    Box::new(move |problem: String| -> futures::future::BoxFuture<'static, Status> { Box::pin(f(problem)) })
}

/// Download chunk size (well under gRPC's default 4 MiB message limit).
const CHUNK: usize = 1 << 20;

/// The record of a stored object: what its download must deliver.
#[derive(Debug, Clone)]
pub struct Expected {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
}

/// What is wrong with `got` (digest, length) against the record, if anything.
pub fn mismatch(expected: &Expected, sha256: &str, bytes: u64) -> Option<String> {
    if bytes != expected.bytes {
        return Some(format!("has {bytes} bytes in the object store, recorded {}", expected.bytes));
    }
    if !sha256.eq_ignore_ascii_case(&expected.sha256) {
        return Some(format!("does not match its recorded sha256 {} (the object store holds {sha256})", expected.sha256));
    }
    None
}

/// The object at `uri` as download chunks; the first names it and carries its digest and size.
/// A missing, short or altered object ends in `on_lost`'s answer (see the module doc).
pub async fn stream_object(artifacts: &ArtifactStore, uri: &str, expected: Expected, on_lost: OnLost) -> Result<ChunkStream, Status> {
    let source = match artifacts.get_stream(uri).await {
        Ok(s) => s,
        Err(ArtifactError::Store(object_store::Error::NotFound { .. })) => {
            return Err(on_lost("is missing from the object store".to_string()).await);
        }
        Err(e) => return Err(lth_proto::errors::unavailable(e.to_string())),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ArtifactChunk, Status>>(4);
    tokio::spawn(async move {
        let mut source = Box::pin(source);
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut first = true;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        // One full chunk is held back until the next one exists: the last chunk goes out only
        // once the whole object has been checked against its record.
        let mut held: Option<Vec<u8>> = None;
        let chunk = |data: Vec<u8>, first: &mut bool| {
            metrics::counter!(M::ARTIFACT_BYTES, "direction" => "out").increment(data.len() as u64);
            if std::mem::take(first) {
                pb::ArtifactChunk { lease: None, name: expected.name.clone(), data, sha256: expected.sha256.clone(), total_bytes: expected.bytes }
            } else {
                pb::ArtifactChunk { data, ..Default::default() }
            }
        };
        while let Some(part) = source.next().await {
            match part {
                Ok(b) => {
                    hasher.update(&b);
                    total += b.len() as u64;
                    buf.extend_from_slice(&b);
                    while buf.len() >= CHUNK {
                        let rest = buf.split_off(CHUNK);
                        let full = std::mem::replace(&mut buf, rest);
                        if let Some(prev) = held.replace(full) {
                            if tx.send(Ok(chunk(prev, &mut first))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(object_store::Error::NotFound { .. }) => {
                    let _ = tx.send(Err(on_lost("is missing from the object store".to_string()).await)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(lth_proto::errors::unavailable(format!("object store: {e}")))).await;
                    return;
                }
            }
        }
        if let Some(problem) = mismatch(&expected, &hex::encode(hasher.finalize()), total) {
            let _ = tx.send(Err(on_lost(problem).await)).await;
            return;
        }
        if let Some(prev) = held.take() {
            if tx.send(Ok(chunk(prev, &mut first))).await.is_err() {
                return;
            }
        }
        if !buf.is_empty() || first {
            let _ = tx.send(Ok(chunk(buf, &mut first))).await;
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(bytes: u64) -> Expected {
        Expected { name: "weights".into(), sha256: "ab".repeat(32), bytes }
    }

    #[test]
    fn size_then_digest_decide() {
        assert_eq!(mismatch(&expected(10), &"ab".repeat(32), 10), None);
        assert_eq!(mismatch(&expected(10), &"AB".repeat(32), 10), None, "hex case does not matter");
        assert!(mismatch(&expected(10), &"ab".repeat(32), 9).unwrap().contains("has 9 bytes"));
        assert!(mismatch(&expected(10), &"cd".repeat(32), 10).unwrap().contains("does not match its recorded sha256"));
    }

    async fn collect(s: ChunkStream) -> (Vec<u8>, Option<Status>) {
        let mut s = s;
        let mut data = Vec::new();
        while let Some(item) = s.next().await {
            match item {
                Ok(c) => data.extend_from_slice(&c.data),
                Err(e) => return (data, Some(e)),
            }
        }
        (data, None)
    }

    fn lost_answer() -> OnLost {
        on_lost(|problem| async move { Status::not_found(problem) })
    }

    /// Real objects in a local object store: a good one streams whole; one with a flipped byte
    /// sends neither its last chunk nor its bytes' end, but the lost answer; a deleted one is lost.
    #[tokio::test]
    async fn a_download_ends_in_the_lost_answer_unless_the_bytes_match_their_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
        let bytes: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i * 31 % 251) as u8).collect();
        let sha = hex::encode(Sha256::digest(&bytes));
        let body = futures::stream::once(futures::future::ready(Ok::<_, Status>(bytes::Bytes::from(bytes.clone()))));
        let stored = store.put_verified("jobs/1/attempt-1/weights", "weights", &sha, Some(bytes.len() as u64), Box::pin(body)).await.unwrap().unwrap();
        let want = Expected { name: "weights".into(), sha256: sha.clone(), bytes: bytes.len() as u64 };

        let (got, err) = collect(stream_object(&store, &stored.uri, want.clone(), lost_answer()).await.unwrap()).await;
        assert!(err.is_none());
        assert_eq!(got, bytes);

        let path = dir.path().join("jobs/1/attempt-1/weights");
        let mut flipped = bytes.clone();
        flipped[CHUNK * 2 + 3] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let (got, err) = collect(stream_object(&store, &stored.uri, want.clone(), lost_answer()).await.unwrap()).await;
        let err = err.expect("a corrupt object ends in the lost answer");
        assert!(err.message().contains("does not match its recorded sha256"), "{}", err.message());
        assert!(got.len() < bytes.len(), "the last chunk was held back: {} of {} bytes sent", got.len(), bytes.len());

        std::fs::remove_file(&path).unwrap();
        let err = match stream_object(&store, &stored.uri, want, lost_answer()).await {
            Err(e) => e,
            Ok(s) => collect(s).await.1.expect("a deleted object is lost"),
        };
        assert!(err.message().contains("missing from the object store"), "{}", err.message());
    }
}
