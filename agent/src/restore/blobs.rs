//! Reading a file's content from the server: its blobs are fetched in batches as framed
//! streams and handled one at a time: decrypted and checked against their keyed blob ID
//! ([`OrgKeys::open_blob`], which also checks the ciphertext against the frame's cipher hash).
//!
//! A copy that fails (wrong ciphertext, or a plaintext that is not the blob's) is not the end:
//! its cipher hash is remembered and the rest of the batch, from that blob on, is asked again
//! avoiding it (`read_blobs_avoiding`); the server sends another copy, or answers 404
//! `blobs_missing` when none is left, and then the file fails with "no intact copy of blob X".
//! Attempts per file are bounded ([`MAX_WRONG_COPIES`]).
//!
//! Copies that opened correctly were verified by this machine: they are reported to the server
//! (`blobs/adopt`, batches of up to [`ADOPT_BATCH`]) so that its next backup need not upload
//! them again. Adoption is best effort: errors are logged, never fatal. Nothing is kept across a
//! crash (a rerun reads and adopts again).

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use keepsake_common::api::{BlobCopy, FileAtPoint, MAX_READ_BLOBS};
use keepsake_common::framing::{
    Frame, FrameHeader, StreamHeader, FRAME_HEADER_LEN, STREAM_HEADER_LEN,
};
use keepsake_common::ids::{BlobId, CipherHash};
use keepsake_common::keys::OrgKeys;
use uuid::Uuid;

use super::FileFail;
use crate::client::{ApiClient, ClientError};

/// Wrong copies tolerated while restoring one file before it fails.
pub const MAX_WRONG_COPIES: usize = 8;
/// Verified copies reported to the server per request.
pub const ADOPT_BATCH: usize = 1000;

/// Where a restore reads the listing and the blobs: the server ([`ApiClient`]); tests use an
/// in-memory one.
pub trait RestoreSource: Sync {
    /// One page of the point's listing under `prefix` (entries after `after`), and whether
    /// another page follows.
    fn files_page(
        &self,
        point: Uuid,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        chunks: bool,
    ) -> Result<(Vec<FileAtPoint>, bool), ClientError>;

    /// A framed stream of the blobs `ids`, in order, with copies other than `avoid`.
    fn read_blobs(
        &self,
        ids: &[BlobId],
        avoid: &[CipherHash],
    ) -> Result<Box<dyn Read + '_>, ClientError>;

    /// Reports copies this machine verified; returns how many were newly adopted.
    fn adopt(&self, copies: &[BlobCopy]) -> Result<u64, ClientError>;
}

impl RestoreSource for ApiClient {
    fn files_page(
        &self,
        point: Uuid,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        chunks: bool,
    ) -> Result<(Vec<FileAtPoint>, bool), ClientError> {
        ApiClient::files_page(self, point, prefix, after, limit, chunks)
    }

    fn read_blobs(
        &self,
        ids: &[BlobId],
        avoid: &[CipherHash],
    ) -> Result<Box<dyn Read + '_>, ClientError> {
        Ok(Box::new(self.read_blobs_avoiding(ids, avoid)?))
    }

    fn adopt(&self, copies: &[BlobCopy]) -> Result<u64, ClientError> {
        ApiClient::adopt(self, copies)
    }
}

/// Collects verified copies and reports them in batches.
pub(crate) struct Adopter {
    pending: Mutex<Vec<BlobCopy>>,
    /// Copies the server newly adopted.
    pub adopted: AtomicU64,
    /// Wrong copies met.
    pub rejected: AtomicU64,
}

impl Adopter {
    pub fn new() -> Adopter {
        Adopter {
            pending: Mutex::new(Vec::new()),
            adopted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Notes a verified copy; sends a batch when one is full.
    pub fn record(&self, source: &dyn RestoreSource, copy: BlobCopy) {
        let full = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.push(copy);
            if p.len() >= ADOPT_BATCH {
                std::mem::take(&mut *p)
            } else {
                Vec::new()
            }
        };
        if !full.is_empty() {
            self.send(source, full);
        }
    }

    /// Sends what is left.
    pub fn flush(&self, source: &dyn RestoreSource) {
        let rest = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !rest.is_empty() {
            self.send(source, rest);
        }
    }

    fn send(&self, source: &dyn RestoreSource, mut copies: Vec<BlobCopy>) {
        copies.sort_by_key(|c| (c.id, c.cipher_hash));
        copies.dedup();
        match source.adopt(&copies) {
            Ok(n) => {
                self.adopted.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(copies = copies.len(), error = %e, "verified copies not reported to the server")
            }
        }
    }
}

/// What reading one stream ended with.
enum Stream {
    /// Every blob asked for was read and handled.
    Done,
    /// The blob at this index (of the request) was a wrong copy with this cipher hash.
    Wrong(usize, CipherHash, String),
}

/// Reads a framed blob stream of `ids` (in order), calling `each` with every blob's header and
/// verified plaintext. Stops at the first copy that does not open.
fn read_stream<R: Read + ?Sized>(
    r: &mut R,
    ids: &[BlobId],
    keys: &OrgKeys,
    mut each: impl FnMut(&FrameHeader, &[u8]) -> Result<(), FileFail>,
) -> Result<Stream, FileFail> {
    let mut head = [0u8; STREAM_HEADER_LEN];
    r.read_exact(&mut head)?;
    StreamHeader::decode(&head).map_err(|e| FileFail::Msg(format!("blob stream: {e}")))?;
    let mut buf = Vec::new();
    let mut k = 0;
    loop {
        let mut fb = [0u8; FRAME_HEADER_LEN];
        r.read_exact(&mut fb)?;
        match Frame::decode(&fb).map_err(|e| FileFail::Msg(format!("blob stream: {e}")))? {
            Frame::Blob(h) => {
                if k >= ids.len() || h.blob_id != ids[k] {
                    return Err(FileFail::Msg("the server sent blobs out of order".into()));
                }
                buf.resize(h.cipher_len as usize, 0);
                r.read_exact(&mut buf)?;
                match keys.open_blob(&h.blob_id, &buf, Some(&h.cipher_hash)) {
                    Ok(plain) => each(&h, &plain)?,
                    Err(e) => return Ok(Stream::Wrong(k, h.cipher_hash, e.to_string())),
                }
                k += 1;
            }
            Frame::End(_) => break,
        }
    }
    if k != ids.len() {
        return Err(FileFail::Msg(format!(
            "the server sent {k} of {} blobs",
            ids.len()
        )));
    }
    Ok(Stream::Done)
}

fn is_blobs_missing(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 404, code: Some(c), .. } if c == "blobs_missing")
}

/// Streams the plaintext of `f` (its chunks, in order) to `sink`, batch by batch of at most
/// `batch_bytes`, falling back to other copies of a blob whose copy is wrong.
pub(crate) fn fetch_file(
    source: &dyn RestoreSource,
    keys: &OrgKeys,
    adopter: &Adopter,
    f: &FileAtPoint,
    batch_bytes: u64,
    mut sink: impl FnMut(&[u8]) -> Result<(), FileFail>,
) -> Result<(), FileFail> {
    let mut avoid: Vec<CipherHash> = Vec::new();
    let mut wrong = 0usize;
    let mut i = 0;
    while i < f.chunks.len() {
        let mut j = i;
        let mut bytes = 0u64;
        while j < f.chunks.len()
            && (j == i || bytes + u64::from(f.chunks[j].len) <= batch_bytes)
            && j - i < MAX_READ_BLOBS
        {
            bytes += u64::from(f.chunks[j].len);
            j += 1;
        }
        let ids: Vec<BlobId> = f.chunks[i..j].iter().map(|c| c.id).collect();
        let mut from = 0;
        let mut last_wrong: Option<BlobId> = None;
        while from < ids.len() {
            let want = &ids[from..];
            let mut stream = match source.read_blobs(want, &avoid) {
                Ok(s) => s,
                Err(e) if is_blobs_missing(&e) => {
                    return Err(FileFail::Msg(match last_wrong {
                        Some(id) => format!("no intact copy of blob {id}"),
                        None => format!("blob missing on the server: {e}"),
                    }))
                }
                Err(e) => return Err(e.into()),
            };
            let mut done = 0;
            let outcome = read_stream(&mut stream, want, keys, |h, plain| {
                adopter.record(
                    source,
                    BlobCopy {
                        id: h.blob_id,
                        cipher_hash: h.cipher_hash,
                    },
                );
                done += 1;
                sink(plain)
            })?;
            match outcome {
                Stream::Done => from = ids.len(),
                Stream::Wrong(k, cipher_hash, why) => {
                    let id = want[k];
                    adopter.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(path = %f.path, blob = %id, error = %why, "a stored copy of a blob is wrong; asking for another");
                    wrong += 1;
                    if wrong > MAX_WRONG_COPIES {
                        return Err(FileFail::Msg(format!(
                            "no intact copy of blob {id} ({wrong} wrong copies met)"
                        )));
                    }
                    if !avoid.contains(&cipher_hash) {
                        avoid.push(cipher_hash);
                    }
                    last_wrong = Some(id);
                    from += done;
                }
            }
        }
        i = j;
    }
    Ok(())
}
