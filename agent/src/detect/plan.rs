//! The planner: one scan merged with the catalog into "what changed since the last committed
//! state" — new, modified, unchanged, deleted — the input of the backup pipeline.
//!
//! The scanner yields catalog keys in strictly increasing byte order and the catalog is read in
//! the same order a page at a time, so the comparison is a single merge pass: no per-file query,
//! no whole-tree map in memory. A catalog row the walk passes without seeing is deleted — unless
//! it lies under a path the scanner could not read (then it is *unverified*, never deleted).
//!
//! With `update_catalog`, changes are written in batches, each batch in one transaction with the
//! scan's checkpoint (the last key handled) and running counters. Unchanged files cost no write.
//! Rows not seen are parked in `scan_missing` and become deletions only when the scan
//! completes. A run that was killed is resumed from its checkpoint by the next run.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::catalog::{
    Catalog, CatalogError, FileState, FileWrite, JobStatus, QueueReason, ScanBatch, ScanCompletion,
    ScanRow, ScanSession, SourceId,
};
use crate::detect::scan::{
    probe_readable, Entry, EntryKind, IssueKind, ScanError, ScanEvent, ScanIssue, ScanOptions,
    ScanStats, Scanner, SkippedEntry,
};
use crate::exclude::Matcher;
use crate::relpath::RelPath;

/// Counts and bytes of one change class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Entries of any kind.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Folders.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Named pipes.
    #[serde(default)]
    pub fifos: u64,
    /// Bytes of the regular files.
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, kind: EntryKind, size: u64) {
        self.entries += 1;
        match kind {
            EntryKind::File => {
                self.files += 1;
                self.bytes += size;
            }
            EntryKind::Dir => self.dirs += 1,
            EntryKind::Symlink => self.symlinks += 1,
            EntryKind::Fifo => self.fifos += 1,
        }
    }
}

/// The plan's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanTotals {
    /// Never committed.
    pub new: Tally,
    /// Committed, but the metadata differs (or a change is already pending).
    pub modified: Tally,
    /// Same metadata as the committed version.
    pub unchanged: Tally,
    /// Committed, and not seen by this (completed) scan.
    pub deleted: Tally,
    /// In the catalog under a path that could not be read: state unknown, kept as it was.
    pub unverified: Tally,
    /// Catalog rows never committed that are gone (nothing to delete on the server).
    pub dropped: u64,
    /// The scanner's counters.
    pub scan: ScanStats,
}

/// The class of one path in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Never committed.
    New,
    /// Differs from the committed version.
    Modified,
    /// Same as the committed version.
    Unchanged,
    /// Gone.
    Deleted,
    /// Unknown (under an unreadable path).
    Unverified,
}

/// Receives the plan as it is built.
pub trait PlanObserver {
    /// Called for every path classified.
    fn on_change(&mut self, _change: Change, _rel: &RelPath, _kind: EntryKind, _size: u64) {}
    /// Called right after `on_change` for every entry the walk saw (not for deleted or
    /// unverified rows), with its full metadata: what the backup pipeline needs to read it.
    fn on_entry(&mut self, _change: Change, _entry: &Entry) {}
    /// Called every few thousand events.
    fn on_progress(&mut self, _totals: &PlanTotals) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoObserver;
impl PlanObserver for NoObserver {}

/// Planner options.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Record the scan in the catalog (new/changed rows, queue, deletions at completion).
    pub update_catalog: bool,
    /// Open each new or modified file once to report unreadable files.
    pub probe_readable: bool,
    /// Label for a source created by this run.
    pub label: Option<String>,
    /// Write a batch when it holds this many changes…
    pub flush_rows: usize,
    /// …or when this long has passed since the last one.
    pub flush_interval: Duration,
    /// Catalog rows read per page.
    pub page_size: usize,
    /// Keep at most this many issues and skipped entries in the report (all are counted).
    pub max_listed: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            update_catalog: false,
            probe_readable: true,
            label: None,
            flush_rows: 5000,
            flush_interval: Duration::from_millis(500),
            page_size: 2048,
            max_listed: 1000,
        }
    }
}

/// Which scan recorded this plan.
#[derive(Debug, Clone, Serialize)]
pub struct ScanInfo {
    /// Scan id.
    pub scan_id: i64,
    /// Generation.
    pub generation: i64,
    /// Whether this run continued an interrupted scan.
    pub resumed: bool,
    /// What completing it changed.
    pub completion: ScanCompletion,
}

/// The result of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// The source root.
    pub root: String,
    /// The catalog's source id, if the source is known.
    pub source_id: Option<SourceId>,
    /// Counters (for a resumed scan, of the whole scan).
    pub totals: PlanTotals,
    /// Issues of this run (at most `max_listed`; `totals.scan.issues` counts all).
    pub issues: Vec<ScanIssue>,
    /// Skipped entries of this run (at most `max_listed`).
    pub skipped: Vec<SkippedEntry>,
    /// Whether the catalog was updated.
    pub catalog_updated: bool,
    /// The recorded scan, when the catalog was updated.
    pub scan: Option<ScanInfo>,
    /// Wall time of this run.
    pub elapsed_ms: u64,
}

impl PlanReport {
    /// Whether any path had an error.
    pub fn has_issues(&self) -> bool {
        self.totals.scan.issues > 0
    }
}

/// Planner errors (path-level problems are issues in the report, not errors).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The scan could not start.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Rows of the catalog in key order, a page at a time.
struct Cursor {
    source: Option<SourceId>,
    buf: VecDeque<ScanRow>,
    after: Vec<u8>,
    done: bool,
    page: usize,
}

impl Cursor {
    fn peek(&mut self, cat: &Catalog) -> Result<Option<&ScanRow>, CatalogError> {
        if self.buf.is_empty() && !self.done {
            match self.source {
                None => self.done = true,
                Some(src) => {
                    let rows = cat.scan_rows_after(src, &self.after, self.page)?;
                    if rows.len() < self.page {
                        self.done = true;
                    }
                    if let Some(last) = rows.last() {
                        self.after = last.key.clone();
                    }
                    self.buf.extend(rows);
                }
            }
        }
        Ok(self.buf.front())
    }
}

struct Planner<'a> {
    catalog: &'a mut Catalog,
    root: &'a Path,
    opts: &'a PlanOptions,
    observer: &'a mut dyn PlanObserver,
    session: Option<ScanSession>,
    cursor: Cursor,
    totals: PlanTotals,
    base_stats: ScanStats,
    probe_issues: u64,
    hidden: Vec<Vec<u8>>,
    batch: ScanBatch,
    last_key: Option<Vec<u8>>,
    unsaved_progress: bool,
    last_flush: Instant,
    issues: Vec<ScanIssue>,
    skipped: Vec<SkippedEntry>,
}

/// Scans `root` with `matcher`'s rules and compares it with the catalog (see the module docs).
/// `root` identifies the source in the catalog: pass it canonicalised.
pub fn run(
    catalog: &mut Catalog,
    root: &Path,
    matcher: Arc<Matcher>,
    scan_opts: ScanOptions,
    opts: &PlanOptions,
    observer: &mut dyn PlanObserver,
) -> Result<PlanReport, PlanError> {
    let started = Instant::now();
    let mut scanner = Scanner::new(root, matcher, scan_opts)?;
    let (source, session) = if opts.update_catalog {
        let s = catalog.ensure_source(root, opts.label.as_deref())?;
        let session = catalog.begin_scan(s.id)?;
        (Some(s.id), Some(session))
    } else {
        (catalog.source_by_root(root)?.map(|s| s.id), None)
    };
    let mut totals = PlanTotals::default();
    let mut start_key = Vec::new();
    if let Some(sess) = session.as_ref().filter(|s| s.resumed) {
        if let Some(saved) = &sess.saved_counters {
            match serde_json::from_str::<PlanTotals>(saved) {
                Ok(t) => totals = t,
                Err(e) => tracing::warn!("cannot read the interrupted scan's counters: {e}"),
            }
        }
        if let Some(k) = &sess.resume_after {
            scanner.set_resume_after(k.clone());
            start_key = k.clone();
        }
        tracing::info!(
            scan = sess.scan_id,
            after = %String::from_utf8_lossy(&start_key),
            "resuming an interrupted scan"
        );
    }
    let base_stats = std::mem::take(&mut totals.scan);
    let mut p = Planner {
        catalog,
        root,
        opts,
        observer,
        session,
        cursor: Cursor {
            source,
            buf: VecDeque::new(),
            after: start_key,
            done: false,
            page: opts.page_size.max(1),
        },
        totals,
        base_stats,
        probe_issues: 0,
        hidden: Vec::new(),
        batch: ScanBatch::default(),
        last_key: None,
        unsaved_progress: false,
        last_flush: Instant::now(),
        issues: Vec::new(),
        skipped: Vec::new(),
    };
    let mut events: u64 = 0;
    while let Some(ev) = scanner.next() {
        p.handle(ev)?;
        events += 1;
        if events % 4096 == 0 {
            p.sync_stats(scanner.stats());
            p.observer.on_progress(&p.totals);
        }
        if p.should_flush() {
            p.sync_stats(scanner.stats());
            p.flush()?;
        }
    }
    // Whatever the walk did not reach is gone (or hidden by an error).
    while let Some(r) = p.pop_row_if(|_| true)? {
        p.missing(r);
    }
    p.sync_stats(scanner.stats());
    p.observer.on_progress(&p.totals);
    let mut scan_info = None;
    if p.session.is_some() {
        p.flush()?;
        if let Some(sess) = p.session.take() {
            let counters = serde_json::to_string(&p.totals).unwrap_or_default();
            let status = if p.totals.scan.issues > 0 {
                JobStatus::CompletedWithErrors
            } else {
                JobStatus::Completed
            };
            let completion = p.catalog.complete_scan(&sess, &counters, status)?;
            scan_info = Some(ScanInfo {
                scan_id: sess.scan_id,
                generation: sess.generation,
                resumed: sess.resumed,
                completion,
            });
        }
    }
    Ok(PlanReport {
        root: root.display().to_string(),
        source_id: source,
        totals: p.totals,
        issues: p.issues,
        skipped: p.skipped,
        catalog_updated: scan_info.is_some(),
        scan: scan_info,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Compares a catalog key with the key of `rel` (plus `/` for a folder) without building it.
fn key_cmp(key: &[u8], rel: &[u8], is_dir: bool) -> Ordering {
    if !is_dir {
        return key.cmp(rel);
    }
    match key.get(..rel.len()).map(|p| p.cmp(rel)) {
        Some(Ordering::Equal) => key[rel.len()..].cmp(b"/".as_slice()),
        Some(o) => o,
        None => key.cmp(rel),
    }
}

impl Planner<'_> {
    fn sync_stats(&mut self, current: &ScanStats) {
        let mut s = self.base_stats.clone();
        s.merge(current);
        s.issues += self.probe_issues;
        self.totals.scan = s;
    }

    /// Pops the next catalog row if `pred` holds for it.
    fn pop_row_if(
        &mut self,
        pred: impl Fn(&ScanRow) -> bool,
    ) -> Result<Option<ScanRow>, CatalogError> {
        match self.cursor.peek(self.catalog)? {
            Some(r) if pred(r) => Ok(self.cursor.buf.pop_front()),
            _ => Ok(None),
        }
    }

    /// Every row before `pos` was not seen.
    fn consume_before(&mut self, pos: &[u8]) -> Result<(), CatalogError> {
        while let Some(r) = self.pop_row_if(|r| r.key.as_slice() < pos)? {
            self.missing(r);
        }
        Ok(())
    }

    fn is_hidden(&self, key: &[u8]) -> bool {
        self.hidden.iter().any(|h| {
            h.is_empty()
                || key == h.as_slice()
                || (key.starts_with(h) && key.get(h.len()) == Some(&b'/'))
        })
    }

    fn missing(&mut self, r: ScanRow) {
        // Every row up to this one is now handled: the checkpoint may move past it (no walk
        // entry lies between the last one and this row, or the row would not be missing).
        if self.last_key.as_ref().is_none_or(|k| *k < r.key) {
            self.last_key = Some(r.key.clone());
            self.unsaved_progress = true;
        }
        let rel = r.rel();
        if self.is_hidden(&r.key) {
            self.totals.unverified.add(r.kind, r.size);
            self.observer
                .on_change(Change::Unverified, &rel, r.kind, r.size);
            return;
        }
        if r.has_committed_version() {
            self.totals.deleted.add(r.kind, r.size);
            self.observer
                .on_change(Change::Deleted, &rel, r.kind, r.size);
        } else {
            self.totals.dropped += 1;
        }
        if self.session.is_some() {
            self.batch.missing.push(r.key);
        }
    }

    fn handle(&mut self, ev: ScanEvent) -> Result<(), CatalogError> {
        match ev {
            ScanEvent::Entry(e) => {
                let is_dir = e.kind == EntryKind::Dir;
                let rel = e.rel.as_bytes();
                while let Some(r) =
                    self.pop_row_if(|r| key_cmp(&r.key, rel, is_dir) == Ordering::Less)?
                {
                    self.missing(r);
                }
                let row = self.pop_row_if(|r| key_cmp(&r.key, rel, is_dir) == Ordering::Equal)?;
                let last = self.last_key.get_or_insert_with(Vec::new);
                last.clear();
                last.extend_from_slice(rel);
                if is_dir {
                    last.push(b'/');
                }
                self.unsaved_progress = true;
                self.classify(e, row);
            }
            ScanEvent::Issue(issue) => {
                if issue.kind.hides_entries() {
                    let pos = issue.rel.as_bytes().to_vec();
                    self.consume_before(&pos)?;
                    // Forget hidden regions the merge has passed entirely.
                    if let Some(front) = self.cursor.buf.front().map(|r| r.key.clone()) {
                        self.hidden
                            .retain(|h| front.starts_with(h) || front.as_slice() < h.as_slice());
                    }
                    self.hidden.push(pos);
                }
                self.note_issue(issue);
            }
            ScanEvent::Skipped(s) => {
                if self.skipped.len() < self.opts.max_listed {
                    self.skipped.push(s);
                }
            }
            ScanEvent::Excluded(_) => {}
        }
        Ok(())
    }

    fn note_issue(&mut self, issue: ScanIssue) {
        if self.issues.len() < self.opts.max_listed {
            self.issues.push(issue);
        }
    }

    fn classify(&mut self, e: Entry, row: Option<ScanRow>) {
        let (change, write, revive) = match &row {
            None => (Change::New, Some(QueueReason::New), false),
            Some(r) if r.same_metadata(&e) => match r.state {
                FileState::Committed => (Change::Unchanged, None, false),
                FileState::Deleted => (Change::Unchanged, None, true),
                // A change already recorded and not yet committed: nothing new to write.
                _ if r.has_committed_version() => (Change::Modified, None, false),
                _ => (Change::New, None, false),
            },
            Some(r) if r.has_committed_version() => {
                (Change::Modified, Some(QueueReason::Modified), false)
            }
            Some(_) => (Change::New, Some(QueueReason::New), false),
        };
        let tally = match change {
            Change::New => &mut self.totals.new,
            Change::Modified => &mut self.totals.modified,
            _ => &mut self.totals.unchanged,
        };
        tally.add(e.kind, e.size);
        self.observer.on_change(change, &e.rel, e.kind, e.size);
        self.observer.on_entry(change, &e);
        if self.opts.probe_readable && e.kind == EntryKind::File && change != Change::Unchanged {
            if let Err(err) = probe_readable(&e.rel.under(self.root)) {
                self.probe_issues += 1;
                self.note_issue(ScanIssue {
                    rel: e.rel.clone(),
                    kind: IssueKind::Unreadable,
                    message: err.to_string(),
                    os_error: err.raw_os_error(),
                });
            }
        }
        if self.session.is_some() {
            if revive {
                self.batch.revived.push(e.key());
            }
            if let Some(reason) = write {
                self.batch.writes.push(FileWrite { entry: e, reason });
            }
        }
    }

    fn should_flush(&self) -> bool {
        if self.session.is_none() {
            return false;
        }
        let pending = self.batch.writes.len() + self.batch.missing.len() + self.batch.revived.len();
        pending >= self.opts.flush_rows
            || ((pending > 0 || self.unsaved_progress)
                && self.last_flush.elapsed() >= self.opts.flush_interval)
    }

    fn flush(&mut self) -> Result<(), CatalogError> {
        let Some(sess) = &self.session else {
            return Ok(());
        };
        let mut batch = std::mem::take(&mut self.batch);
        batch.checkpoint = self.last_key.clone();
        batch.counters = serde_json::to_string(&self.totals).unwrap_or_default();
        self.catalog.apply_scan_batch(sess, &batch)?;
        self.unsaved_progress = false;
        self.last_flush = Instant::now();
        Ok(())
    }
}
