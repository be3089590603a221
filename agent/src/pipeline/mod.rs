//! The backup pipeline (no network): read → chunk → hash → dedup → compress → encrypt → emit,
//! plus the job delta.
//!
//! * [`Pipeline`] turns a stream of [`FileTask`]s into a [`FileOutcome`] per file (a
//!   [`FileResult`] with the content hash and chunk list, or a [`FileError`]) and a stream of
//!   sealed blobs handed to a [`BlobSink`].
//! * [`DeltaBuilder`] writes the job's delta (upserts, deletions, links, folders) into part files
//!   on disk, each a complete `keepsake_common::delta` stream, plus a commit journal from which
//!   the catalog is updated once the server has committed the job.
//!
//! The orchestration of a backup (plan → pipeline → delta → server) is `crate::backup`'s.
//!
//! # Threads
//!
//! `readers` reader threads (default: one per CPU) take files from a priority queue; each opens its
//! file, chunks it (the organisation's keyed FastCDC, or SQLite pages:
//! `keepsake_common::chunking::chunk_with`, on a window the reader keeps from file to file),
//! computes the content hash and each chunk's blob ID, asks the sink whether the blob is
//! [`BlobSink::known`] and the run whether it already sealed it, and queues only new chunks for the
//! `sealers` sealer threads (default: one per CPU), which compress where it pays, age-encrypt
//! (`keepsake_common::crypto::seal_blob_with_id`: the reader's blob ID is not computed again) and
//! [`BlobSink::emit`]. A single large file therefore keeps every core busy: one thread reads and
//! hashes it while the others seal its chunks; many small files are read in parallel. Readers and
//! sealers together are twice the CPU count, so whichever stage is the bottleneck gets all the
//! cores.
//!
//! # Memory
//!
//! Bounded whatever the size of a file or of the tree: files are streamed (the chunker holds an
//! 8 MiB window, a small file one buffer), the chunks between readers and sealers are bounded in
//! **bytes** (`memory_budget`, 32 MiB by default, counted until the sealed blob has been handed
//! to the sink) and in number (`max_queued_chunks`), the number of files in flight is bounded (`max_outstanding_files`), results are
//! handed to the caller's callback as they complete and never collected, and the in-run dedup
//! memory is a bounded window of recent blob IDs. Peak RSS is about 8 MiB of chunker window per
//! reader + the budget + one ciphertext per sealer + the sink's own buffers (measured: 43-64 MiB
//! for a 1.5 GiB file and a 4 GiB stream, 60 MiB for a backup of 1,000,000 small files).
//!
//! # Files that change while being read
//!
//! Never emitted torn (details in the `read` module): each attempt compares `fstat` before and
//! after, the byte count, the path's `lstat` and the racy window; a failed attempt is discarded
//! and retried after a backoff (without blocking a reader) up to `max_attempts` times, then
//! reported as [`FileErrorKind::Changing`] for the caller to requeue.
//!
//! Crash behaviour: the pipeline keeps its work in memory (files in flight, chunks waiting for a
//! sealer) and writes nothing but through its sink; a crash loses that work, and the next run reads
//! those files again because nothing recorded them as backed up.

mod delta;
mod options;
mod queue;
mod read;
mod sink;
mod task;

use std::collections::HashSet;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keepsake_common::chunking as chunker;
use keepsake_common::compress::Decision;
use keepsake_common::crypto::seal_blob_with_id;
use keepsake_common::delta::ChunkRef;
use keepsake_common::ids::{BlobId, ChunkIdKey, ContentHash, ContentHasher};
use keepsake_common::keys::{AgeRecipient, OrgPublicKeys};

pub use delta::{
    CommitJournal, DeltaBuildError, DeltaBuilder, DeltaLimits, DeltaOutput, DeltaPart,
    JournalBatches,
};
use options::cpus;
pub use options::{
    PipelineError, PipelineOptions, PipelineStats, StageTimes, ThreadHook, ThreadRole,
};
pub use sink::{
    BlobSink, CompactIdSet, DiscardSink, FramedFileSink, MemorySink, PackFile, SinkError,
    DEFAULT_PACK_TARGET,
};
pub use task::{catalog_entries, FileError, FileErrorKind, FileOutcome, FileResult, FileTask};

#[derive(Default)]
struct Counters {
    files_done: AtomicU64,
    files_failed: AtomicU64,
    retries: AtomicU64,
    bytes_read: AtomicU64,
    chunks: AtomicU64,
    chunks_known: AtomicU64,
    chunks_deduped: AtomicU64,
    blobs_emitted: AtomicU64,
    blobs_compressed: AtomicU64,
    plain_bytes_emitted: AtomicU64,
    cipher_bytes_emitted: AtomicU64,
    read_ns: AtomicU64,
    chunk_ns: AtomicU64,
    hash_ns: AtomicU64,
    budget_wait_ns: AtomicU64,
    seal_ns: AtomicU64,
    emit_ns: AtomicU64,
}

impl Counters {
    fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The last blob IDs claimed for sealing: two generations of at most `cap` IDs each.
struct RecentIds {
    cur: HashSet<u128>,
    old: HashSet<u128>,
    cap: usize,
}

impl RecentIds {
    fn claim(&mut self, id: &BlobId) -> bool {
        let mut b = [0u8; 16];
        b.copy_from_slice(&id.0[..16]);
        let p = u128::from_le_bytes(b);
        if self.cur.contains(&p) || self.old.contains(&p) {
            return false;
        }
        if self.cur.len() >= self.cap {
            self.old = std::mem::take(&mut self.cur);
        }
        self.cur.insert(p);
        true
    }
}

struct Shared {
    key: ChunkIdKey,
    cuts: chunker::Cuts,
    content_hasher: ContentHasher,
    recipient: AgeRecipient,
    sink: Arc<dyn BlobSink>,
    opts: PipelineOptions,
    tasks: queue::TaskQueue,
    seal: queue::SealQueue,
    recent: Mutex<RecentIds>,
    counters: Counters,
    aborted: AtomicBool,
    fatal: Mutex<Option<PipelineError>>,
}

impl Shared {
    fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Relaxed)
            || self
                .opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn claim(&self, id: &BlobId) -> bool {
        if self.opts.dedup_window == 0 {
            return true;
        }
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .claim(id)
    }

    /// Records the first fatal error and stops everything.
    fn fail(&self, e: PipelineError) {
        {
            let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(e);
            }
        }
        self.stop();
    }

    fn stop(&self) {
        self.aborted.store(true, Ordering::Relaxed);
        self.seal.abort();
        self.tasks.abort();
    }

    fn add_timing(&self, t: &read::Timing, total_ns: u64) {
        let c = &self.counters;
        let read = t.read.get();
        c.add(&c.read_ns, read);
        let (hash, wait, dispatch) = (t.hash.get(), t.wait.get(), t.dispatch.get());
        c.add(&c.hash_ns, hash);
        c.add(&c.budget_wait_ns, wait);
        let other = total_ns.saturating_sub(read + hash + dispatch);
        c.add(&c.chunk_ns, other);
    }

    fn take_fatal(&self) -> Option<PipelineError> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

fn reader_loop(sh: Arc<Shared>, tx: Sender<FileOutcome>) {
    if let Some(h) = &sh.opts.on_thread_start {
        h(ThreadRole::Reader);
    }
    let c = &sh.counters;
    let mut window = chunker::Window::default();
    while let Some(job) = sh.tasks.pop() {
        let attempts = job.attempts + 1;
        let fail = |kind: FileErrorKind, message: String, os_error: Option<i32>| {
            c.add(&c.files_failed, 1);
            FileOutcome::Failed(FileError {
                rel: job.task.rel.clone(),
                kind,
                message,
                os_error,
                attempts,
            })
        };
        if sh.is_aborted() {
            let _ = tx.send(fail(
                FileErrorKind::Aborted,
                "the backup was stopped".into(),
                None,
            ));
            continue;
        }
        let attempt = catch_unwind(AssertUnwindSafe(|| sh.read_attempt(&job.task, &mut window)));
        let outcome = match attempt {
            Ok(read::Attempt::Done(mut r)) => {
                r.attempts = attempts;
                c.add(&c.files_done, 1);
                FileOutcome::Done(r)
            }
            Ok(read::Attempt::Failed {
                kind,
                message,
                os_error,
            }) => fail(kind, message, os_error),
            Ok(read::Attempt::Retry { why, not_before }) => {
                if attempts >= sh.opts.max_attempts.max(1) {
                    fail(
                        FileErrorKind::Changing,
                        format!("{why} (after {attempts} attempts)"),
                        None,
                    )
                } else {
                    c.add(&c.retries, 1);
                    let shift = (attempts - 1).min(16);
                    let mut due = Instant::now() + sh.opts.retry_backoff * (1u32 << shift);
                    if let Some(nb) = not_before {
                        // A racy file needs only its window to pass.
                        due = nb;
                    }
                    tracing::debug!(path = %job.task.rel, attempt = attempts, "{why}; retrying");
                    sh.tasks.push_delayed(
                        queue::Job {
                            task: job.task,
                            attempts,
                        },
                        due,
                    );
                    continue;
                }
            }
            Err(p) => {
                let msg = panic_text(p);
                sh.fail(PipelineError::Panicked(msg.clone()));
                fail(FileErrorKind::Aborted, msg, None)
            }
        };
        if tx.send(outcome).is_err() {
            // The pipeline was dropped: nobody listens any more.
            sh.stop();
        }
    }
}

fn sealer_loop(sh: Arc<Shared>) {
    if let Some(h) = &sh.opts.on_thread_start {
        h(ThreadRole::Sealer);
    }
    let c = &sh.counters;
    while let Some(job) = sh.seal.pop() {
        let len = job.data.len();
        if sh.aborted.load(Ordering::Relaxed) {
            sh.seal.release(len);
            continue;
        }
        let t = Instant::now();
        let sealed = catch_unwind(AssertUnwindSafe(|| {
            seal_blob_with_id(
                std::slice::from_ref(&sh.recipient),
                job.id,
                &job.data,
                &sh.opts.compress,
            )
        }));
        drop(job);
        c.add(&c.seal_ns, t.elapsed().as_nanos() as u64);
        match sealed {
            Ok(Ok((blob, decision))) => {
                let plain = u64::from(blob.plain_len);
                let cipher = blob.ciphertext.len() as u64;
                let t = Instant::now();
                let r = sh.sink.emit(blob);
                c.add(&c.emit_ns, t.elapsed().as_nanos() as u64);
                match r {
                    Ok(()) => {
                        c.add(&c.blobs_emitted, 1);
                        if decision == Decision::Compressed {
                            c.add(&c.blobs_compressed, 1);
                        }
                        c.add(&c.plain_bytes_emitted, plain);
                        c.add(&c.cipher_bytes_emitted, cipher);
                    }
                    Err(e) => sh.fail(PipelineError::Sink(e)),
                }
            }
            Ok(Err(e)) => sh.fail(PipelineError::Seal(e)),
            Err(p) => sh.fail(PipelineError::Panicked(panic_text(p))),
        }
        sh.seal.release(len);
    }
}

/// What [`Pipeline::chunk_stream`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamContent {
    /// Bytes read.
    pub size: u64,
    /// Keyed hash of everything read.
    pub content_hash: ContentHash,
    /// The chunks in order.
    pub chunks: Vec<ChunkRef>,
}

/// The running pipeline: worker threads, the queues between them, and the outcome channel.
///
/// Outcomes are delivered on the caller's thread, to the callback given to
/// [`Pipeline::submit`] (while it waits for room) and [`Pipeline::finish`]. Dropping a pipeline
/// without `finish` aborts it.
pub struct Pipeline {
    shared: Arc<Shared>,
    results: Receiver<FileOutcome>,
    outstanding: usize,
    threads: Vec<JoinHandle<()>>,
    readers: usize,
    sealers: usize,
    started: Instant,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("readers", &self.readers)
            .field("sealers", &self.sealers)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Starts the worker threads. Blobs are sealed to `keys`' current recipient and named with
    /// its chunk-ID key.
    pub fn start(
        keys: &OrgPublicKeys,
        sink: Arc<dyn BlobSink>,
        opts: PipelineOptions,
    ) -> Result<Pipeline, PipelineError> {
        let recipient = keys.current_recipient()?;
        let readers = if opts.readers == 0 {
            cpus()
        } else {
            opts.readers
        };
        let sealers = if opts.sealers == 0 {
            cpus()
        } else {
            opts.sealers
        };
        let shared = Arc::new(Shared {
            key: keys.chunk_id_key.clone(),
            cuts: chunker::Cuts::keyed(&keys.chunk_id_key),
            content_hasher: ContentHasher::new(&keys.chunk_id_key),
            recipient,
            sink,
            tasks: queue::TaskQueue::default(),
            seal: queue::SealQueue::new(opts.memory_budget, opts.max_queued_chunks),
            recent: Mutex::new(RecentIds {
                cur: HashSet::new(),
                old: HashSet::new(),
                cap: opts.dedup_window.max(1),
            }),
            counters: Counters::default(),
            aborted: AtomicBool::new(false),
            fatal: Mutex::new(None),
            opts,
        });
        let (tx, rx) = mpsc::channel();
        let mut p = Pipeline {
            shared: shared.clone(),
            results: rx,
            outstanding: 0,
            threads: Vec::new(),
            readers,
            sealers,
            started: Instant::now(),
        };
        for i in 0..sealers {
            let sh = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("keepsake-seal-{i}"))
                .spawn(move || sealer_loop(sh))
                .map_err(PipelineError::Spawn)?;
            p.threads.push(h);
        }
        for i in 0..readers {
            let sh = shared.clone();
            let tx = tx.clone();
            let h = std::thread::Builder::new()
                .name(format!("keepsake-read-{i}"))
                .spawn(move || reader_loop(sh, tx))
                .map_err(PipelineError::Spawn)?;
            p.threads.push(h);
        }
        Ok(p)
    }

    /// Queues a file. Blocks (delivering finished outcomes to `on_outcome`) while
    /// `max_outstanding_files` are in flight. Fails at once after a fatal error.
    pub fn submit(
        &mut self,
        task: FileTask,
        on_outcome: &mut dyn FnMut(FileOutcome),
    ) -> Result<(), PipelineError> {
        self.poll(on_outcome);
        let cap = self.shared.opts.max_outstanding_files.max(1);
        while self.outstanding >= cap {
            match self.results.recv() {
                Ok(o) => {
                    self.outstanding -= 1;
                    on_outcome(o);
                }
                Err(_) => break,
            }
        }
        if let Some(e) = self.shared.take_fatal() {
            self.shared.stop();
            return Err(e);
        }
        if self.shared.is_aborted() {
            return Err(PipelineError::Cancelled);
        }
        self.shared.tasks.push(queue::Job { task, attempts: 0 });
        self.outstanding += 1;
        Ok(())
    }

    /// Delivers the outcomes that are ready, without waiting.
    pub fn poll(&mut self, on_outcome: &mut dyn FnMut(FileOutcome)) {
        while let Ok(o) = self.results.try_recv() {
            self.outstanding -= 1;
            on_outcome(o);
        }
    }

    /// Files submitted whose outcome has not been delivered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Chunks, hashes and seals a stream that is not a file (e.g. a database dump) on the
    /// calling thread, with the sealers of this pipeline. Its blobs go to the sink like those of
    /// files; nothing checks it for changes.
    pub fn chunk_stream<R: Read>(&mut self, reader: R) -> Result<StreamContent, PipelineError> {
        let timing = read::Timing::default();
        let started = Instant::now();
        let mut window = chunker::Window::default();
        let r = self
            .shared
            .chunk_loop(reader, false, None, &mut window, &timing, &mut || Ok(()));
        self.shared
            .add_timing(&timing, started.elapsed().as_nanos() as u64);
        match r {
            Ok(c) => Ok(StreamContent {
                size: c.bytes,
                content_hash: c.content_hash,
                chunks: c.chunks,
            }),
            Err(read::Stop::Io(e)) => Err(PipelineError::Stream(e)),
            Err(read::Stop::Changed(why)) => Err(PipelineError::Stream(std::io::Error::other(why))),
            Err(read::Stop::Aborted) => {
                Err(self.shared.take_fatal().unwrap_or(PipelineError::Cancelled))
            }
        }
    }

    /// Stops: files not done yet are reported as aborted; `finish` returns
    /// [`PipelineError::Cancelled`] unless a fatal error came first.
    pub fn abort(&self) {
        self.shared.stop();
    }

    /// Counters so far.
    pub fn stats(&self) -> PipelineStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PipelineStats {
            files_done: g(&c.files_done),
            files_failed: g(&c.files_failed),
            retries: g(&c.retries),
            bytes_read: g(&c.bytes_read),
            chunks: g(&c.chunks),
            chunks_known: g(&c.chunks_known),
            chunks_deduped: g(&c.chunks_deduped),
            blobs_emitted: g(&c.blobs_emitted),
            blobs_compressed: g(&c.blobs_compressed),
            plain_bytes_emitted: g(&c.plain_bytes_emitted),
            cipher_bytes_emitted: g(&c.cipher_bytes_emitted),
            peak_queued_bytes: self.shared.seal.peak() as u64,
            stages: StageTimes {
                read_ns: g(&c.read_ns),
                chunk_ns: g(&c.chunk_ns),
                hash_ns: g(&c.hash_ns),
                budget_wait_ns: g(&c.budget_wait_ns),
                seal_ns: g(&c.seal_ns),
                emit_ns: g(&c.emit_ns),
            },
        }
    }

    /// Threads: (readers, sealers).
    pub fn threads(&self) -> (usize, usize) {
        (self.readers, self.sealers)
    }

    /// Time since the pipeline started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for every submitted file and every queued chunk, delivering the remaining
    /// outcomes, and stops the threads. Returns the counters, or the first fatal error.
    pub fn finish(
        mut self,
        on_outcome: &mut dyn FnMut(FileOutcome),
    ) -> Result<PipelineStats, PipelineError> {
        self.shared.tasks.close();
        while self.outstanding > 0 {
            match self.results.recv() {
                Ok(o) => {
                    self.outstanding -= 1;
                    on_outcome(o);
                }
                Err(_) => break,
            }
        }
        self.shared.seal.close();
        let mut panicked = None;
        for h in self.threads.drain(..) {
            if let Err(p) = h.join() {
                panicked = Some(panic_text(p));
            }
        }
        if let Some(e) = self.shared.take_fatal() {
            return Err(e);
        }
        if let Some(p) = panicked {
            return Err(PipelineError::Panicked(p));
        }
        if self.outstanding > 0 {
            return Err(PipelineError::Panicked(
                "the reader threads ended before every file was done".into(),
            ));
        }
        if self.shared.is_aborted() {
            return Err(PipelineError::Cancelled);
        }
        Ok(self.stats())
    }

    /// Convenience: submits every task, then finishes.
    pub fn run(
        mut self,
        tasks: impl IntoIterator<Item = FileTask>,
        on_outcome: &mut dyn FnMut(FileOutcome),
    ) -> Result<PipelineStats, PipelineError> {
        for t in tasks {
            if let Err(e) = self.submit(t, on_outcome) {
                let _ = self.finish(on_outcome);
                return Err(e);
            }
        }
        self.finish(on_outcome)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.stop();
        self.shared.tasks.close();
        self.shared.seal.close();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}
