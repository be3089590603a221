//! Where sealed blobs go: the [`BlobSink`] interface and three sinks.
//!
//! * [`MemorySink`] keeps every blob in memory (tests, small tools);
//! * [`DiscardSink`] counts and drops them (benchmarks);
//! * [`FramedFileSink`] writes them as framed blob streams (`keepsake_common::framing`, the
//!   body of a pack upload) into files of a target size in a folder: the offline
//!   `keepsake pack` output, and the reference for a network sink that batches blobs into
//!   pack-sized uploads.
//!
//! On a crash: the memory and discard sinks lose what they held (they are for tests and
//! benchmarks); the file sink's finished files were flushed (`fsync`, unless disabled) before
//! they were reported, and the file being written is left incomplete, with its name reported
//! nowhere: a reader of the output trusts only the files a finished run listed.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use keepsake_common::crypto::SealedBlob;
use keepsake_common::framing::{FrameWriter, FramingError, FRAME_HEADER_LEN, STREAM_HEADER_LEN};
use keepsake_common::ids::BlobId;
use serde::Serialize;

/// Why a sink refused a blob. Any sink error stops the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The blob stream could not be written.
    #[error("blob stream: {0}")]
    Framing(#[from] FramingError),
    /// The sink no longer accepts blobs (closed, or its uploader failed).
    #[error("the blob sink is closed: {0}")]
    Closed(String),
    /// Anything else (for sinks written elsewhere, e.g. the upload sink).
    #[error("{0}")]
    Other(String),
}

/// Receives the sealed blobs of a backup.
///
/// The pipeline calls [`BlobSink::known`] from its reader threads before sealing a chunk and
/// [`BlobSink::emit`] from its sealer threads, concurrently: implementations are `Send + Sync`
/// and do their own locking.
///
/// Contract:
///
/// * `known(id)` answers whether the blob need not be sent: the server holds it (for the sync
///   client: the catalog's server-blob cache at the current GC epoch) **or it was emitted
///   earlier in this run**. A `true` skips the chunk entirely (no sealing, no emission), so it
///   must only be said of blobs that will be on the server when the delta is committed. A
///   `false` for a blob already emitted only costs a duplicate: the pipeline also remembers the
///   last blobs it sealed (`PipelineOptions::dedup_window`) and never seals one twice within
///   that window.
/// * `emit(blob)` may block (backpressure: e.g. while a full pack uploads); the pipeline's
///   memory stays bounded because its readers wait for the sealers. An error stops the whole
///   pipeline and is returned by `Pipeline::finish`.
/// * A `FileResult` may be delivered before all its blobs have been emitted (they are sealed by
///   other threads): call [`BlobSink::flush`] — `crate::backup::backup_to_sink` does — before committing a delta
///   that references them.
pub trait BlobSink: Send + Sync {
    /// Whether the blob is already on the server or was emitted in this run.
    fn known(&self, id: &BlobId) -> bool;
    /// Takes a sealed blob (may block for backpressure).
    fn emit(&self, blob: SealedBlob) -> Result<(), SinkError>;
    /// Writes out whatever is buffered (end of a run).
    fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps every emitted blob in memory; `known` answers from a preset set and the emitted blobs.
#[derive(Debug, Default)]
pub struct MemorySink {
    known: Mutex<HashSet<BlobId>>,
    blobs: Mutex<Vec<SealedBlob>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// A sink that reports `ids` as already on the server.
    pub fn with_known(ids: impl IntoIterator<Item = BlobId>) -> MemorySink {
        let s = MemorySink::default();
        lock(&s.known).extend(ids);
        s
    }

    /// Reports `id` as known from now on.
    pub fn mark_known(&self, id: BlobId) {
        lock(&self.known).insert(id);
    }

    /// The blobs emitted so far (clones), in emission order.
    pub fn blobs(&self) -> Vec<SealedBlob> {
        lock(&self.blobs).clone()
    }

    /// Takes the blobs emitted so far.
    pub fn take_blobs(&self) -> Vec<SealedBlob> {
        std::mem::take(&mut *lock(&self.blobs))
    }

    /// Number of blobs emitted so far.
    pub fn len(&self) -> usize {
        lock(&self.blobs).len()
    }

    /// True when nothing was emitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BlobSink for MemorySink {
    fn known(&self, id: &BlobId) -> bool {
        lock(&self.known).contains(id)
    }

    fn emit(&self, blob: SealedBlob) -> Result<(), SinkError> {
        lock(&self.known).insert(blob.id);
        lock(&self.blobs).push(blob);
        Ok(())
    }
}

/// Counts and drops every blob; knows nothing (benchmarks).
#[derive(Debug, Default)]
pub struct DiscardSink {
    blobs: AtomicU64,
    bytes: AtomicU64,
}

impl DiscardSink {
    /// A new sink.
    pub fn new() -> DiscardSink {
        DiscardSink::default()
    }

    /// Blobs received.
    pub fn blobs(&self) -> u64 {
        self.blobs.load(Ordering::Relaxed)
    }

    /// Ciphertext bytes received.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl BlobSink for DiscardSink {
    fn known(&self, _id: &BlobId) -> bool {
        false
    }

    fn emit(&self, blob: SealedBlob) -> Result<(), SinkError> {
        self.blobs.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(blob.ciphertext.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// A set of blob IDs at 16 bytes per ID: a hash set of recent IDs, merged now and then into a
/// sorted vector. IDs are keyed BLAKE3 outputs (uniformly random), so their first 128 bits
/// identify them: two distinct IDs sharing them would take about 2^64 blobs.
#[derive(Debug, Default)]
pub struct CompactIdSet {
    recent: HashSet<u128>,
    sorted: Vec<u128>,
}

const RECENT_MAX: usize = 1 << 16;

fn prefix(id: &BlobId) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&id.0[..16]);
    u128::from_le_bytes(b)
}

impl CompactIdSet {
    /// Whether `id` was inserted.
    pub fn contains(&self, id: &BlobId) -> bool {
        let p = prefix(id);
        self.recent.contains(&p) || self.sorted.binary_search(&p).is_ok()
    }

    /// Inserts `id`; false if it was present.
    pub fn insert(&mut self, id: &BlobId) -> bool {
        if self.contains(id) {
            return false;
        }
        self.recent.insert(prefix(id));
        if self.recent.len() >= RECENT_MAX {
            let mut add: Vec<u128> = self.recent.drain().collect();
            add.sort_unstable();
            // Merge in place from the back, so the sorted vector is never held twice.
            let n = self.sorted.len();
            self.sorted.resize(n + add.len(), 0);
            let (mut i, mut j, mut k) = (n, add.len(), n + add.len());
            while j > 0 {
                k -= 1;
                if i > 0 && self.sorted[i - 1] > add[j - 1] {
                    self.sorted[k] = self.sorted[i - 1];
                    i -= 1;
                } else {
                    self.sorted[k] = add[j - 1];
                    j -= 1;
                }
            }
            self.recent.shrink_to(RECENT_MAX);
        }
        true
    }

    /// Number of IDs.
    pub fn len(&self) -> usize {
        self.recent.len() + self.sorted.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One file written by [`FramedFileSink`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackFile {
    /// Its path.
    pub path: PathBuf,
    /// Blob frames in it.
    pub blobs: u64,
    /// Its size in bytes (stream header, frames and trailer).
    pub bytes: u64,
}

/// Default target size of a pack file (32 MiB).
pub const DEFAULT_PACK_TARGET: u64 = 32 * 1024 * 1024;

struct CountingFile {
    inner: BufWriter<File>,
    written: u64,
}

impl Write for CountingFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct OpenPack {
    path: PathBuf,
    writer: FrameWriter<CountingFile>,
    /// Bytes written so far: stream header and frames.
    bytes: u64,
}

#[derive(Default)]
struct FramedState {
    open: Option<OpenPack>,
    next_index: u64,
    done: Vec<PackFile>,
}

/// Writes blobs as framed blob streams into `pack-NNNNNN.ksblobs` files of about a target size
/// (a file is closed before a blob would take it past the target; a single larger blob gets a
/// file of its own). Each file is a complete stream — header, frames, trailer — exactly the body
/// of a pack upload, readable with `keepsake_common::framing::FrameReader`.
///
/// `known` answers for the blobs written by this sink (16 bytes of memory per blob, see
/// [`CompactIdSet`]). Files are never overwritten: a name that exists is an error.
pub struct FramedFileSink {
    dir: PathBuf,
    target: u64,
    sync: bool,
    state: Mutex<FramedState>,
    ids: Mutex<CompactIdSet>,
}

impl FramedFileSink {
    /// A sink writing into `dir` (created if needed) files of about `target` bytes.
    pub fn new(dir: &Path, target: u64) -> io::Result<FramedFileSink> {
        fs::create_dir_all(dir)?;
        Ok(FramedFileSink {
            dir: dir.to_path_buf(),
            target: target.max((STREAM_HEADER_LEN + 2 * FRAME_HEADER_LEN) as u64),
            sync: false,
            state: Mutex::new(FramedState::default()),
            ids: Mutex::new(CompactIdSet::default()),
        })
    }

    /// Also `fsync` every finished file (off by default).
    pub fn with_fsync(mut self, sync: bool) -> FramedFileSink {
        self.sync = sync;
        self
    }

    /// The folder written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Files finished so far (all of them after [`BlobSink::flush`]).
    pub fn files(&self) -> Vec<PackFile> {
        lock(&self.state).done.clone()
    }

    /// Blobs written so far.
    pub fn blob_count(&self) -> u64 {
        let s = lock(&self.state);
        s.done.iter().map(|f| f.blobs).sum::<u64>()
            + s.open.as_ref().map(|o| o.writer.count()).unwrap_or(0)
    }

    fn finish_open(&self, s: &mut FramedState) -> Result<(), SinkError> {
        if let Some(open) = s.open.take() {
            let blobs = open.writer.count();
            let mut w = open.writer.finish()?;
            w.flush()?;
            let bytes = w.written;
            let file = w.inner.into_inner().map_err(|e| e.into_error())?;
            if self.sync {
                file.sync_all()?;
            }
            s.done.push(PackFile {
                path: open.path,
                blobs,
                bytes,
            });
        }
        Ok(())
    }
}

impl BlobSink for FramedFileSink {
    fn known(&self, id: &BlobId) -> bool {
        lock(&self.ids).contains(id)
    }

    fn emit(&self, blob: SealedBlob) -> Result<(), SinkError> {
        if !lock(&self.ids).insert(&blob.id) {
            // Emitted before (e.g. by another pipeline sharing this sink): once is enough.
            return Ok(());
        }
        let mut s = lock(&self.state);
        let frame = (FRAME_HEADER_LEN + blob.ciphertext.len()) as u64;
        let full = s.open.as_ref().is_some_and(|o| {
            o.writer.count() > 0 && o.bytes + frame + FRAME_HEADER_LEN as u64 > self.target
        });
        if full {
            self.finish_open(&mut s)?;
        }
        if s.open.is_none() {
            let path = self.dir.join(format!("pack-{:06}.ksblobs", s.next_index));
            s.next_index += 1;
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            let counting = CountingFile {
                inner: BufWriter::with_capacity(256 * 1024, file),
                written: 0,
            };
            s.open = Some(OpenPack {
                path,
                writer: FrameWriter::new(counting)?,
                bytes: STREAM_HEADER_LEN as u64,
            });
        }
        if let Some(open) = s.open.as_mut() {
            open.writer.write_blob(&blob)?;
            open.bytes += frame;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), SinkError> {
        let mut s = lock(&self.state);
        self.finish_open(&mut s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_set_merges() {
        let mut s = CompactIdSet::default();
        let id = |i: u32| {
            let h = blake3::hash(&i.to_le_bytes());
            BlobId(*h.as_bytes())
        };
        for i in 0..(RECENT_MAX as u32 * 2 + 10) {
            assert!(s.insert(&id(i)));
        }
        assert_eq!(s.len(), RECENT_MAX * 2 + 10);
        assert!(s.sorted.windows(2).all(|w| w[0] < w[1]));
        for i in (0..(RECENT_MAX as u32 * 2 + 10)).step_by(997) {
            assert!(s.contains(&id(i)));
            assert!(!s.insert(&id(i)));
        }
        assert!(!s.contains(&id(u32::MAX)));
    }
}
