//! [`backup_to_sink`]: the local half of a backup of one source root — plan, pipeline, delta —
//! with no network: what [`super::Run`] calls before it talks to the server, and what
//! `keepsake pack` calls with a file sink.
//!
//! The plan (scan merged with the catalog) runs on the calling thread; every new or modified
//! regular file it classifies is submitted to the [`Pipeline`] at once (the submit blocks while
//! too many files are in flight, so the scan never runs far ahead), folders and symlinks that
//! are new or modified and deletions go straight into the [`DeltaBuilder`], and each file's
//! outcome is written to the delta as it arrives. Nothing is collected: the report holds
//! counters and at most `max_listed_failures` failures.
//!
//! What is left to the caller ([`super::Run`]): starting the server job (its source id and
//! parent sequence go into the delta header), uploading what the sink emitted, sending the
//! delta parts, committing, and then applying the commit journal to the catalog with
//! `Catalog::record_commit` and the confirmed blobs with `Catalog::record_server_blobs`.
//!
//! Crash behaviour: nothing here marks a file as backed up. The plan's catalog writes are batched
//! with its checkpoint, and a file's new version counts as committed only when the caller applies
//! the commit journal after the server's commit, so a run killed midway leaves the same files new
//! or modified for the next run; blobs the server already holds are found known and not sent again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_common::delta::DeltaHeader;
use keepsake_common::keys::OrgPublicKeys;
use keepsake_common::mac::EntryMacKey;
use serde::Serialize;

use super::classify::{Classifier, Selection};
use crate::catalog::{Catalog, Priority, SourceId};
use crate::detect::plan::{
    self, Change, PlanError, PlanObserver, PlanOptions, PlanReport, PlanTotals,
};
use crate::detect::scan::{Entry, EntryKind, ScanOptions};
use crate::exclude::Matcher;
use crate::pipeline::{
    BlobSink, DeltaBuildError, DeltaBuilder, DeltaLimits, DeltaOutput, FileError, FileErrorKind,
    FileOutcome, FileTask, Pipeline, PipelineError, PipelineOptions, PipelineStats, SinkError,
};
use crate::relpath::RelPath;

/// Options of [`backup_to_sink`].
#[derive(Clone)]
pub struct BackupOptions {
    /// The pipeline's tunables.
    pub pipeline: PipelineOptions,
    /// The plan's options. `update_catalog` should stay on for a real backup: the catalog rows
    /// it writes are what `record_commit` updates after the commit.
    pub plan: PlanOptions,
    /// The scanner's options.
    pub scan: ScanOptions,
    /// Folder for the delta parts and the commit journal.
    pub delta_dir: PathBuf,
    /// The delta header: the server's source id and the parent sequence of the job.
    pub delta_header: DeltaHeader,
    /// Part size limits.
    pub delta_limits: DeltaLimits,
    /// Write the commit journal (needed to update the catalog after the commit).
    pub journal: bool,
    /// Priority of each file (default: all normal).
    pub priority: Option<Classifier>,
    /// Which new or modified files this run takes (default: all). A deferred file is left
    /// uncommitted in the catalog, so the next run takes it.
    pub select: Selection,
    /// Failures listed in the report (all are counted).
    pub max_listed_failures: usize,
}

impl BackupOptions {
    /// Defaults, writing the delta into `delta_dir` with `header`.
    pub fn new(delta_dir: &Path, header: DeltaHeader) -> BackupOptions {
        BackupOptions {
            pipeline: PipelineOptions::default(),
            plan: PlanOptions {
                update_catalog: true,
                // The pipeline opens every file anyway and reports what it cannot read.
                probe_readable: false,
                ..PlanOptions::default()
            },
            scan: ScanOptions::default(),
            delta_dir: delta_dir.to_path_buf(),
            delta_header: header,
            delta_limits: DeltaLimits::default(),
            journal: true,
            priority: None,
            select: Selection::default(),
            max_listed_failures: 1000,
        }
    }
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("pipeline", &self.pipeline)
            .field("plan", &self.plan)
            .field("delta_dir", &self.delta_dir)
            .field("delta_header", &self.delta_header)
            .field("delta_limits", &self.delta_limits)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// Follows a backup as it runs (progress display, logs).
pub trait BackupObserver {
    /// The plan's counters, every few thousand paths.
    fn on_plan_progress(&mut self, _totals: &PlanTotals) {}
    /// A file finished (backed up or not).
    fn on_file(&mut self, _outcome: &FileOutcome) {}
    /// A delta entry could not be written (its path is not representable, …).
    fn on_entry_error(&mut self, _error: &DeltaBuildError) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoBackupObserver;
impl BackupObserver for NoBackupObserver {}

/// Errors that stop a backup (file-level problems are in the report).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The plan failed (root not readable, catalog error).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The pipeline stopped (sink failure, cancellation).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Writing the delta failed.
    #[error(transparent)]
    Delta(#[from] DeltaBuildError),
    /// Flushing the sink failed.
    #[error("the blob sink failed: {0}")]
    Sink(#[from] SinkError),
}

/// What one backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The catalog's source id (to record the commit against).
    pub source_id: Option<SourceId>,
    /// The plan (scan counters, changes, scan issues).
    pub plan: PlanReport,
    /// Files read completely and put in the delta.
    pub files_backed_up: u64,
    /// Their total size.
    pub bytes_backed_up: u64,
    /// Files not backed up (unreadable, vanished, changing, …).
    pub files_failed: u64,
    /// Failures per kind.
    pub failed_by_kind: BTreeMap<String, u64>,
    /// The first failures.
    pub failures: Vec<FileError>,
    /// Entries that could not be written to the delta (counted in `files_failed` for files).
    pub entry_errors: u64,
    /// New or modified files left for a later run by `BackupOptions::select`.
    pub files_deferred: u64,
    /// The pipeline's counters (bytes read, blobs emitted, new bytes, stage times).
    pub pipeline: PipelineStats,
    /// Reader and sealer threads.
    pub threads: (usize, usize),
    /// The delta parts and the commit journal.
    pub delta: DeltaOutput,
    /// Wall time.
    pub elapsed: Duration,
    /// CPU time of the process during the backup (user + system), when known.
    pub cpu: Option<Duration>,
}

impl BackupReport {
    /// Bytes read per second of wall time.
    pub fn read_rate(&self) -> f64 {
        self.pipeline.bytes_read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// User + system CPU time of this process.
pub fn process_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage fills the zeroed struct we pass.
        let r = unsafe {
            let mut r: libc::rusage = std::mem::zeroed();
            if libc::getrusage(libc::RUSAGE_SELF, &mut r) != 0 {
                return None;
            }
            r
        };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        Some(tv(r.ru_utime) + tv(r.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

struct Collector<'a> {
    delta: DeltaBuilder,
    observer: &'a mut dyn BackupObserver,
    max_listed: usize,
    files_backed_up: u64,
    bytes_backed_up: u64,
    files_failed: u64,
    failed_by_kind: BTreeMap<String, u64>,
    failures: Vec<FileError>,
    entry_errors: u64,
    fatal: Option<BackupError>,
}

impl Collector<'_> {
    fn failure(&mut self, e: FileError) {
        self.files_failed += 1;
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *self.failed_by_kind.entry(kind).or_default() += 1;
        if self.failures.len() < self.max_listed {
            self.failures.push(e);
        }
    }

    fn delta_result(&mut self, r: Result<(), DeltaBuildError>) -> bool {
        match r {
            Ok(()) => true,
            Err(e) if e.is_entry_error() => {
                tracing::warn!("{e}");
                self.entry_errors += 1;
                self.observer.on_entry_error(&e);
                false
            }
            Err(e) => {
                if self.fatal.is_none() {
                    self.fatal = Some(BackupError::Delta(e));
                }
                false
            }
        }
    }

    fn outcome(&mut self, o: FileOutcome) {
        self.observer.on_file(&o);
        match o {
            FileOutcome::Done(r) => {
                if self.fatal.is_some() {
                    return;
                }
                let res = self.delta.add_file(&r);
                if self.delta_result(res) {
                    self.files_backed_up += 1;
                    self.bytes_backed_up += r.size;
                } else {
                    self.failure(FileError {
                        rel: r.rel.clone(),
                        kind: FileErrorKind::Io,
                        message: "its name cannot be recorded in the delta".into(),
                        os_error: None,
                        attempts: r.attempts,
                    });
                }
            }
            FileOutcome::Failed(e) => self.failure(e),
        }
    }
}

struct Feeder<'a, 'b> {
    root: &'a Path,
    pipeline: &'a mut Pipeline,
    collector: &'a mut Collector<'b>,
    priority: Option<&'a Classifier>,
    select: &'a Selection,
    deferred: u64,
}

impl PlanObserver for Feeder<'_, '_> {
    fn on_change(&mut self, change: Change, rel: &RelPath, kind: EntryKind, _size: u64) {
        if change == Change::Deleted && self.collector.fatal.is_none() {
            let r = self.collector.delta.add_deletion(rel, kind);
            self.collector.delta_result(r);
        }
    }

    fn on_entry(&mut self, change: Change, e: &Entry) {
        if !matches!(change, Change::New | Change::Modified) || self.collector.fatal.is_some() {
            return;
        }
        match e.kind {
            EntryKind::File if !self.select.takes(e) => {
                self.deferred += 1;
            }
            EntryKind::File => {
                let prio = self
                    .priority
                    .as_ref()
                    .map(|c| c.classify(&e.rel))
                    .unwrap_or(Priority::Normal);
                let task = FileTask::from_entry(self.root, e, prio);
                let collector = &mut *self.collector;
                if let Err(err) = self.pipeline.submit(task, &mut |o| collector.outcome(o)) {
                    if self.collector.fatal.is_none() {
                        self.collector.fatal = Some(BackupError::Pipeline(err));
                    }
                }
            }
            EntryKind::Dir | EntryKind::Symlink | EntryKind::Fifo => {
                let r = self.collector.delta.add_scanned(e);
                self.collector.delta_result(r);
            }
        }
    }

    fn on_progress(&mut self, totals: &PlanTotals) {
        self.collector.observer.on_plan_progress(totals);
        let collector = &mut *self.collector;
        self.pipeline.poll(&mut |o| collector.outcome(o));
    }
}

/// Backs up `root` into `sink` and a delta on disk: plan against `catalog`, read and seal every
/// new or modified file, write the delta (see the module docs). `root` identifies the source
/// in the catalog: pass it canonicalised. The sink is flushed before this returns. With
/// `opts.plan.update_catalog` the caller holds the catalog's writer lock
/// (`catalog::WriterLock`), as `keepsake scan --update-catalog` does.
pub fn backup_to_sink(
    catalog: &mut Catalog,
    root: &Path,
    matcher: Arc<Matcher>,
    keys: &OrgPublicKeys,
    sink: Arc<dyn BlobSink>,
    opts: &BackupOptions,
    observer: &mut dyn BackupObserver,
) -> Result<BackupReport, BackupError> {
    let started = Instant::now();
    let cpu0 = process_cpu_time();
    let delta = DeltaBuilder::new(
        &opts.delta_dir,
        opts.delta_header.clone(),
        opts.delta_limits,
        opts.journal,
        EntryMacKey::derive(&keys.chunk_id_key),
    )?;
    let mut pipeline = Pipeline::start(keys, sink.clone(), opts.pipeline.clone())?;
    let threads = pipeline.threads();
    let mut collector = Collector {
        delta,
        observer,
        max_listed: opts.max_listed_failures,
        files_backed_up: 0,
        bytes_backed_up: 0,
        files_failed: 0,
        failed_by_kind: BTreeMap::new(),
        failures: Vec::new(),
        entry_errors: 0,
        fatal: None,
    };
    let (plan_result, files_deferred) = {
        let mut feeder = Feeder {
            root,
            pipeline: &mut pipeline,
            collector: &mut collector,
            priority: opts.priority.as_ref(),
            select: &opts.select,
            deferred: 0,
        };
        let r = plan::run(
            catalog,
            root,
            matcher,
            opts.scan.clone(),
            &opts.plan,
            &mut feeder,
        );
        (r, feeder.deferred)
    };
    if plan_result.is_err() || collector.fatal.is_some() {
        pipeline.abort();
    }
    let finished = pipeline.finish(&mut |o| collector.outcome(o));
    let plan = plan_result?;
    if let Some(e) = collector.fatal.take() {
        return Err(e);
    }
    let stats = finished?;
    sink.flush()?;
    let delta = collector.delta.finish()?;
    let cpu = match (cpu0, process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok(BackupReport {
        source_id: plan.source_id,
        plan,
        files_backed_up: collector.files_backed_up,
        bytes_backed_up: collector.bytes_backed_up,
        files_failed: collector.files_failed,
        failed_by_kind: collector.failed_by_kind,
        failures: collector.failures,
        entry_errors: collector.entry_errors,
        files_deferred,
        pipeline: stats,
        threads,
        delta,
        elapsed: started.elapsed(),
        cpu,
    })
}
