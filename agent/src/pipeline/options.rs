//! The pipeline's tunables ([`PipelineOptions`]), its errors and its counters
//! ([`PipelineStats`], [`StageTimes`]). Plain data.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use keepsake_common::compress::{CompressPolicy, DEFAULT_POLICY};
use keepsake_common::crypto::CryptoError;
use keepsake_common::keys::KeyError;
use serde::Serialize;

use super::SinkError;

/// Which kind of pipeline thread is starting (for [`PipelineOptions::on_thread_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// Reads, chunks and hashes files.
    Reader,
    /// Seals chunks and emits blobs.
    Sealer,
}

/// A hook run at the start of every pipeline thread.
pub type ThreadHook = Arc<dyn Fn(ThreadRole) + Send + Sync>;

/// Tunables of a [`Pipeline`].
#[derive(Clone)]
pub struct PipelineOptions {
    /// Reader threads (0: one per CPU).
    pub readers: usize,
    /// Sealer threads (0: one per CPU).
    pub sealers: usize,
    /// Most plaintext bytes of chunks queued for or being sealed (and until the sink took the
    /// blob).
    pub memory_budget: usize,
    /// Most chunks waiting for a sealer (bounds the per-chunk overhead of tiny files).
    pub max_queued_chunks: usize,
    /// Most files submitted whose outcome has not been delivered yet.
    pub max_outstanding_files: usize,
    /// Attempts per file before it is reported as [`FileErrorKind::Changing`].
    pub max_attempts: u32,
    /// Wait before the first retry of a file that changed; doubled for each further one.
    pub retry_backoff: Duration,
    /// A file whose ctime (or past mtime) is less than this before the start of its read is
    /// read again once it has passed (timestamps are coarse: a clock tick on Linux file
    /// systems, 2 s on FAT). Zero disables the check.
    pub racy_window: Duration,
    /// `fstat` a big file again every this many bytes read, to abandon it early if it changes.
    pub restat_every: u64,
    /// Blob IDs sealed recently that are remembered to avoid sealing a chunk twice in a run
    /// when the sink does not know it yet.
    pub dedup_window: usize,
    /// Compression decision.
    pub compress: CompressPolicy,
    /// Set to `true` to stop: files not done are reported as aborted and `finish` returns
    /// [`PipelineError::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Run at the start of each pipeline thread (e.g. to lower its CPU or I/O priority).
    pub on_thread_start: Option<ThreadHook>,
}

impl std::fmt::Debug for PipelineOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineOptions")
            .field("readers", &self.readers)
            .field("sealers", &self.sealers)
            .field("memory_budget", &self.memory_budget)
            .field("max_queued_chunks", &self.max_queued_chunks)
            .field("max_outstanding_files", &self.max_outstanding_files)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("racy_window", &self.racy_window)
            .field("restat_every", &self.restat_every)
            .field("dedup_window", &self.dedup_window)
            .finish_non_exhaustive()
    }
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            readers: 0,
            sealers: 0,
            memory_budget: 32 * 1024 * 1024,
            max_queued_chunks: 1024,
            max_outstanding_files: 1024,
            max_attempts: 4,
            retry_backoff: Duration::from_millis(200),
            racy_window: Duration::from_secs(2),
            restat_every: 256 * 1024 * 1024,
            dedup_window: 1 << 16,
            compress: DEFAULT_POLICY,
            cancel: None,
            on_thread_start: None,
        }
    }
}

pub(super) fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Errors that stop the whole pipeline (per-file problems are [`FileError`]s).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The keys cannot seal (no current recipient).
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// Sealing failed.
    #[error("sealing a blob failed: {0}")]
    Seal(#[from] CryptoError),
    /// The sink refused a blob.
    #[error("the blob sink failed: {0}")]
    Sink(#[from] SinkError),
    /// Reading a stream given to [`Pipeline::chunk_stream`] failed.
    #[error("reading the stream failed: {0}")]
    Stream(std::io::Error),
    /// Threads could not be started.
    #[error("cannot start a pipeline thread: {0}")]
    Spawn(std::io::Error),
    /// Cancelled through [`PipelineOptions::cancel`] or [`Pipeline::abort`].
    #[error("the backup was cancelled")]
    Cancelled,
    /// A pipeline thread panicked (a bug).
    #[error("a pipeline thread failed: {0}")]
    Panicked(String),
}

/// Counters of a run (a snapshot; see [`Pipeline::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PipelineStats {
    /// Files read completely.
    pub files_done: u64,
    /// Files not backed up.
    pub files_failed: u64,
    /// Attempts repeated because a file changed while being read.
    pub retries: u64,
    /// Bytes read from files and streams (all attempts).
    pub bytes_read: u64,
    /// Chunks produced (all attempts).
    pub chunks: u64,
    /// Chunks the sink already knew (not sealed).
    pub chunks_known: u64,
    /// Chunks sealed earlier in this run (not sealed again).
    pub chunks_deduped: u64,
    /// Blobs sealed and handed to the sink.
    pub blobs_emitted: u64,
    /// Of which compressed.
    pub blobs_compressed: u64,
    /// Plaintext bytes of the blobs emitted.
    pub plain_bytes_emitted: u64,
    /// Ciphertext bytes emitted ("new bytes").
    pub cipher_bytes_emitted: u64,
    /// Highest plaintext bytes queued for or being sealed at once.
    pub peak_queued_bytes: u64,
    /// Time per stage, summed over threads.
    pub stages: StageTimes,
}

/// Time spent per stage, summed over all threads (nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageTimes {
    /// In `read` calls (I/O or page-cache copies).
    pub read_ns: u64,
    /// Cutting chunks (FastCDC or pages), opening and `stat`ing files.
    pub chunk_ns: u64,
    /// Content hash and blob IDs.
    pub hash_ns: u64,
    /// Readers waiting for room in the memory budget (the sealers are the bottleneck).
    pub budget_wait_ns: u64,
    /// Compressing, encrypting and hashing ciphertext.
    pub seal_ns: u64,
    /// In `BlobSink::emit` (writing, or waiting for an upload).
    pub emit_ns: u64,
}
