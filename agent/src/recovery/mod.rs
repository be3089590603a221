//! Recovery requests: restores asked for centrally (by a person, on the server) and executed by
//! the target machine, the only place where the data can be decrypted.
//!
//! One claimed job ([`execute`]) goes through these steps, each logged to the server
//! (`recovery_logs`), with one entry per problem:
//!
//! 1. **claimed** — what is restored, from which point, into which folder.
//! 2. **space_check** — before anything is written: the sizes of the files to restore (the
//!    point's listing under the job's path prefixes, less files already complete in the target)
//!    against the free space of the target's file system ([`free_space`]). Not enough: the job
//!    fails with a clear error and nothing is written, not even the target folder.
//! 3. **restore** — each path prefix with [`crate::restore`] into the target folder: never
//!    outside it, existing different files kept (the restored copy goes beside them) unless the
//!    job says `overwrite`, names the target OS cannot hold mapped to safe names (reported). A
//!    reporter thread posts progress about every second, with an estimated completion time;
//!    failed reports never stop the restore.
//! 4. **validate** — every restored file re-read from disk and its keyed content hash compared
//!    with the point's ([`validate`]); mismatches, missing and extra files are counted.
//! 5. **finish** — the outcome, with the validation. The server marks the job completed only if
//!    the restore succeeded and the validation passed.
//!
//! A restore drill ([`drill`]) does the same on a sample of recent files in a scratch folder and
//! reports the result (`POST /v1/recovery-drills`). [`daemon_tick`] is what the daemon does with
//! recovery requests on each policy refresh.

use std::collections::{BinaryHeap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keepsake_common::api::{
    AgentPolicy, ClaimRecoveryRequest, FileAtPoint, FileKind, RecoveryDrillReport, RecoveryFinish,
    RecoveryJobInfo, RecoveryLogEntry, RecoveryProgressReport, RecoveryType, ValidationReport,
};
use keepsake_common::ids::ChunkIdKey;
use keepsake_common::keys::OrgKeys;
use keepsake_common::mac::EntryMacKey;
use keepsake_common::path::wire_path_bytes;
use serde::Serialize;
use uuid::Uuid;

use crate::client::{ApiClient, ClientError, RetryPolicy};
use crate::home::Home;
use crate::restore::names::{beside_path, local_rel_path, os_bytes, NameRules};
use crate::restore::target::{file_meta, Dir, Kind, Target};
use crate::restore::{
    self, PlaceError, Placement, RenamedPath, RestoreFailure, RestoreOptions, RestoreProgress,
    RestoreReport, RestoreSource, BESIDE_SUFFIX,
};

/// Test hook: when set to a number, [`free_space`] reports that many free bytes instead of
/// asking the file system (the space check is otherwise impossible to exercise without filling
/// a disk). Read nowhere else.
pub const TEST_FREE_BYTES_ENV: &str = "KEEPSAKE_TEST_FREE_BYTES";
/// Milliseconds between progress reports (default 1000); tests lower it to watch progress.
pub const PROGRESS_INTERVAL_ENV: &str = "KEEPSAKE_RECOVERY_PROGRESS_MS";
/// How long a claim holds without a progress report.
pub const DEFAULT_LEASE_SECONDS: u32 = 300;
/// At most this many problems are listed in a validation's details (all are counted).
pub const MAX_PROBLEMS_LISTED: usize = 200;
/// At most this many per-file failures are logged to the server one by one.
const MAX_FAILURES_LOGGED: usize = 50;
/// Files sampled by a drill unless told otherwise.
pub const DEFAULT_DRILL_FILES: usize = 20;

/// Progress reports and log entries: a few quick tries, so that a server outage delays the
/// restore by seconds, not minutes (the finish report keeps the client's full retry policy).
const AUX_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(200),
    max_delay: Duration::from_secs(2),
    give_up_after: Duration::from_secs(10),
};

/// Errors that stop a recovery step before it has a result.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The restore could not run.
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    /// A local file or folder problem.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        #[source]
        source: io::Error,
    },
    /// Anything else, explained.
    #[error("{0}")]
    Other(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> RecoveryError + '_ {
    move |source| RecoveryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// -------------------------------------------------------------------------------------------
// Listing, prefixes, space
// -------------------------------------------------------------------------------------------

/// The job's path prefixes without duplicates or prefixes inside others (`a` covers `a/b`);
/// `[""]` (everything) when empty or when one of them is empty.
pub fn normalize_prefixes(prefixes: &[String]) -> Vec<String> {
    let mut ps: Vec<String> = prefixes
        .iter()
        .map(|p| p.trim_matches('/').to_string())
        .collect();
    if ps.is_empty() || ps.iter().any(String::is_empty) {
        return vec![String::new()];
    }
    ps.sort();
    ps.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in ps {
        let covered = out
            .iter()
            .any(|q| p == *q || (p.starts_with(q.as_str()) && p.as_bytes()[q.len()] == b'/'));
        if !covered {
            out.push(p);
        }
    }
    out
}

/// Calls `each` for every entry of `point` under `prefixes` (page by page: bounded memory).
pub fn for_each_entry(
    client: &ApiClient,
    point: Uuid,
    prefixes: &[String],
    chunks: bool,
    mut each: impl FnMut(FileAtPoint) -> Result<(), RecoveryError>,
) -> Result<(), RecoveryError> {
    for prefix in prefixes {
        let mut after: Option<String> = None;
        loop {
            let (files, more) = client.files_page(point, prefix, after.as_deref(), 1000, chunks)?;
            after = files.last().map(|f| f.path.clone());
            for f in files {
                each(f)?;
            }
            if !more || after.is_none() {
                break;
            }
        }
    }
    Ok(())
}

/// What a restore of some prefixes of a point involves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestorePlan {
    /// Files and symlinks.
    pub files: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// Folders.
    pub dirs: u64,
    /// Bytes still to write: files not already complete (same size) in the target.
    pub bytes_needed: u64,
}

/// Lists what restoring `prefixes` of `point` into `target` involves (nothing is written).
pub fn plan_restore(
    client: &ApiClient,
    point: Uuid,
    prefixes: &[String],
    target: &Path,
    rules: NameRules,
) -> Result<RestorePlan, RecoveryError> {
    let mut plan = RestorePlan::default();
    let target_exists = target.is_dir();
    for_each_entry(client, point, prefixes, false, |f| {
        match f.kind {
            FileKind::Directory => plan.dirs += 1,
            FileKind::Symlink | FileKind::Fifo => plan.files += 1,
            FileKind::File => {
                plan.files += 1;
                plan.bytes += f.size;
                let present = target_exists
                    && local_rel_path(&f.path, f.raw_path.as_deref(), rules)
                        .ok()
                        .and_then(|(rel, _)| fs::symlink_metadata(target.join(rel)).ok())
                        .is_some_and(|m| m.is_file() && m.len() == f.size);
                if !present {
                    plan.bytes_needed += f.size;
                }
            }
        }
        Ok(())
    })?;
    Ok(plan)
}

/// Free bytes for an unprivileged user on the file system that holds `path` (or, when it does
/// not exist yet, its nearest existing parent). [`TEST_FREE_BYTES_ENV`] overrides it.
pub fn free_space(path: &Path) -> io::Result<u64> {
    if let Some(v) = std::env::var(TEST_FREE_BYTES_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Ok(v);
    }
    let mut p = path;
    loop {
        if p.exists() {
            return fs4::available_space(p);
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return fs4::available_space(Path::new(".")),
        }
    }
}

/// The outcome of a space check.
#[derive(Debug, Clone, Serialize)]
pub struct SpaceCheck {
    /// Bytes the restore will write.
    pub needed: u64,
    /// Headroom kept on top (file-system overhead: blocks, folders).
    pub margin: u64,
    /// Free bytes on the target's file system.
    pub free: u64,
    /// Whether it fits.
    pub ok: bool,
}

/// Whether `needed` bytes (plus a margin of 1 % and 1 MiB) fit on `target`'s file system.
pub fn check_space(target: &Path, needed: u64) -> io::Result<SpaceCheck> {
    let free = free_space(target)?;
    let margin = needed / 100 + 1024 * 1024;
    Ok(SpaceCheck {
        needed,
        margin,
        free,
        ok: needed.saturating_add(margin) <= free,
    })
}

// -------------------------------------------------------------------------------------------
// Validation
// -------------------------------------------------------------------------------------------

/// Counters of a running validation.
#[derive(Debug, Default)]
pub struct ValidateProgress {
    /// Entries checked.
    pub files: AtomicU64,
    /// Bytes re-read.
    pub bytes: AtomicU64,
}

fn path_key(rel: &Path) -> u128 {
    let h = blake3::hash(&os_bytes(rel.as_os_str()));
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

/// Where the restore writes a copy beside a different local file (the one naming rule both
/// use).
fn beside(rel: &Path) -> PathBuf {
    beside_path(rel)
}

enum Check {
    Ok(u64),
    Missing(String),
    Mismatch(String),
}

/// Re-reads `name` in `dir` (never following a symlink) and compares size and keyed content
/// hash.
fn check_file(
    dir: &Dir,
    name: &OsStr,
    f: &FileAtPoint,
    key: &ChunkIdKey,
    progress: &ValidateProgress,
) -> Check {
    let meta = match dir.stat(name) {
        Ok(Some(m)) => m,
        Ok(None) => return Check::Missing("not found".into()),
        Err(e) => return Check::Missing(e.to_string()),
    };
    if meta.kind != Kind::File {
        return Check::Mismatch("not a regular file".into());
    }
    if meta.size != f.size {
        return Check::Mismatch(format!("{} bytes instead of {}", meta.size, f.size));
    }
    let Some(expected) = f.content_hash else {
        return Check::Mismatch("the point has no content hash for it".into());
    };
    let mut file = match open_nofollow(dir, name) {
        Ok(f) => f,
        Err(e) => return Check::Mismatch(format!("cannot read: {e}")),
    };
    let counted = |n| {
        progress.bytes.fetch_add(n, Ordering::Relaxed);
    };
    let (total, hash) = match crate::restore::files::content_hash_of(&mut file, key, counted) {
        Ok(x) => x,
        Err(e) => return Check::Mismatch(format!("read failed: {e}")),
    };
    if total != f.size {
        return Check::Mismatch(format!("read {total} bytes instead of {}", f.size));
    }
    if hash != expected {
        return Check::Mismatch("content differs from the backup (content hash)".into());
    }
    Check::Ok(total)
}

/// Opens `name` in `dir` for reading: a symlink is refused, a named pipe does not block, and
/// what was opened must be a regular file.
fn open_nofollow(dir: &Dir, name: &OsStr) -> io::Result<fs::File> {
    let file = dir.open_read(name)?;
    if file_meta(&file)?.kind != Kind::File {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// The folders of the target, reached without following links; the last one is kept open.
struct Walker {
    target: Option<Target>,
    last: Option<(PathBuf, Dir)>,
}

impl Walker {
    /// The folder of `rel` and its name, or why not.
    fn parent_of<'a>(&mut self, rel: &'a Path) -> Result<(&Dir, &'a OsStr), Check> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(Check::Missing("not a file path".into()));
        };
        if !matches!(&self.last, Some((p, _)) if p == parent) {
            self.last = None;
            let dir = self.folder(parent, rel)?;
            self.last = Some((parent.to_path_buf(), dir));
        }
        match &self.last {
            Some((_, d)) => Ok((d, name)),
            None => Err(Check::Missing("not found".into())),
        }
    }

    /// The folder `rel` itself.
    fn folder(&self, rel: &Path, entry: &Path) -> Result<Dir, Check> {
        let Some(t) = &self.target else {
            return Err(Check::Missing("the target folder does not exist".into()));
        };
        t.folder(rel, None, entry, &mut 0).map_err(|e| {
            if e.is_not_found() {
                Check::Missing(e.to_string())
            } else {
                Check::Mismatch(e.to_string())
            }
        })
    }
}

struct Problems {
    list: Vec<serde_json::Value>,
    total: u64,
}

impl Problems {
    fn add(&mut self, path: &str, problem: &str, detail: &str) {
        self.total += 1;
        if self.list.len() < MAX_PROBLEMS_LISTED {
            self.list.push(serde_json::json!({
                "path": path, "problem": problem, "detail": detail,
            }));
        }
    }

    fn count(&mut self, report: &mut ValidationReport, path: &str, c: Check) {
        match c {
            Check::Ok(n) => report.bytes_checked += n,
            Check::Missing(m) => {
                report.missing += 1;
                self.add(path, "missing", &m);
            }
            Check::Mismatch(m) => {
                report.mismatches += 1;
                self.add(path, "mismatch", &m);
            }
        }
    }
}

/// Checks a restored tree: every entry of `point` under `prefixes` must be in `target` where
/// the restore put it, with the point's size and keyed content hash (re-read from disk,
/// streamed), symlinks with their target, named pipes as pipes, folders as folders. Files in the
/// target under the prefixes that the point does not have are counted as `extra` (they do not
/// fail the validation). Memory: 16 bytes per expected path for the extra check, plus one read
/// buffer. The target's letter-case handling is probed (see [`validate_from`]).
pub fn validate(
    client: &ApiClient,
    key: &ChunkIdKey,
    point: Uuid,
    prefixes: &[String],
    target: &Path,
    rules: NameRules,
    progress: &ValidateProgress,
) -> Result<ValidationReport, RecoveryError> {
    validate_from(client, key, point, prefixes, target, rules, None, progress)
}

/// [`validate`] with the listing read from `source`, and the target's letter-case handling
/// given (`case_insensitive`; `None`: probed). Where the restore put each entry is found by
/// replaying its placement ([`Placement`]) over the same listing, prefix by prefix and in the
/// same order: safe names under `rules`, names given to case collisions, copies beside a
/// different local file. Entries whose metadata MAC does not verify were refused by the restore
/// and count as missing. Folders are reached without following links: a symlink in a parent is
/// a mismatch, never followed.
#[allow(clippy::too_many_arguments)]
pub fn validate_from(
    source: &dyn RestoreSource,
    key: &ChunkIdKey,
    point: Uuid,
    prefixes: &[String],
    target: &Path,
    rules: NameRules,
    case_insensitive: Option<bool>,
    progress: &ValidateProgress,
) -> Result<ValidationReport, RecoveryError> {
    let prefixes = normalize_prefixes(prefixes);
    let opened = match Target::open(target, false) {
        Ok(t) => Some(t),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(RecoveryError::Other(e.to_string())),
    };
    let root = match &opened {
        Some(_) => Some(fs::canonicalize(target).map_err(io_at(target))?),
        None => None,
    };
    let case_insensitive = match (case_insensitive, &opened) {
        (Some(v), _) => v,
        (None, Some(t)) => t.probe_case_insensitive().unwrap_or(false),
        (None, None) => false,
    };
    let mut walker = Walker {
        target: opened,
        last: None,
    };
    let mut report = ValidationReport::default();
    let mut problems = Problems {
        list: Vec::new(),
        total: 0,
    };
    let mut expected: HashSet<u128> = HashSet::new();
    let mut found_beside = 0u64;
    for prefix in &prefixes {
        // A fresh placement per prefix, as the restore makes one per prefix.
        let mut placement = Placement::new(rules, case_insensitive, EntryMacKey::derive(key))
            .map_err(|e| RecoveryError::Other(e.to_string()))?;
        let mut after: Option<String> = None;
        loop {
            let (files, more) = source.files_page(point, prefix, after.as_deref(), 1000, false)?;
            after = files.last().map(|f| f.path.clone());
            for f in files {
                let rel = match placement.place(&f) {
                    Ok(p) => p.rel,
                    Err(e) => {
                        report.missing += 1;
                        let detail = match e {
                            PlaceError::Refused { .. } => e.to_string(),
                            e => format!("cannot be restored here: {e}"),
                        };
                        problems.add(&f.path, "missing", &detail);
                        continue;
                    }
                };
                expected.insert(path_key(&rel));
                if f.kind != FileKind::Directory {
                    report.files_checked += 1;
                    progress.files.fetch_add(1, Ordering::Relaxed);
                }
                let check = match f.kind {
                    FileKind::Directory => match walker.folder(&rel, &rel) {
                        Ok(_) => Check::Ok(0),
                        Err(c) => c,
                    },
                    FileKind::Symlink => check_symlink(&mut walker, &rel, &f),
                    FileKind::Fifo | FileKind::File => {
                        let alt = beside(&rel);
                        expected.insert(path_key(&alt));
                        match walker.parent_of(&rel) {
                            Err(c) => c,
                            Ok((dir, name)) => {
                                let alt_name = alt.file_name().unwrap_or_default().to_os_string();
                                let (first, second) = if f.kind == FileKind::Fifo {
                                    (check_fifo(dir, name), check_fifo(dir, &alt_name))
                                } else {
                                    match check_file(dir, name, &f, key, progress) {
                                        Check::Ok(n) => {
                                            (Check::Ok(n), Check::Missing(String::new()))
                                        }
                                        first => {
                                            (first, check_file(dir, &alt_name, &f, key, progress))
                                        }
                                    }
                                };
                                match (first, second) {
                                    (Check::Ok(n), _) => Check::Ok(n),
                                    // The restore keeps a different local entry and writes beside it.
                                    (_, Check::Ok(n)) => {
                                        found_beside += 1;
                                        Check::Ok(n)
                                    }
                                    (_, Check::Mismatch(m)) => {
                                        Check::Mismatch(format!("{BESIDE_SUFFIX} copy: {m}"))
                                    }
                                    (first, _) => first,
                                }
                            }
                        }
                    }
                };
                problems.count(&mut report, &f.path, check);
            }
            if !more || after.is_none() {
                break;
            }
        }
    }
    // Extra: files (and symlinks) in the target under the prefixes that the point lacks.
    if let Some(root) = &root {
        for prefix in &prefixes {
            let start = if prefix.is_empty() {
                root.clone()
            } else {
                let Ok((rel, _)) = local_rel_path(prefix, None, rules) else {
                    continue;
                };
                // Never walk through a symlinked parent.
                let parent = rel.parent().unwrap_or(Path::new(""));
                if walker.folder(parent, &rel).is_err() {
                    continue;
                }
                root.join(rel)
            };
            if fs::symlink_metadata(&start).is_err() {
                continue;
            }
            let walk = walkdir::WalkDir::new(&start)
                .follow_links(false)
                .follow_root_links(false);
            for e in walk {
                let Ok(e) = e else { continue };
                if e.file_type().is_dir() {
                    continue;
                }
                let Ok(rel) = e.path().strip_prefix(root) else {
                    continue;
                };
                if !expected.contains(&path_key(rel)) {
                    report.extra += 1;
                    problems.add(
                        &rel.to_string_lossy(),
                        "extra",
                        "in the target but not in the recovery point",
                    );
                }
            }
        }
    }
    report.details = Some(serde_json::json!({
        "problems": problems.list,
        "problems_total": problems.total,
        "restored_beside": found_beside,
    }));
    Ok(report)
}

fn check_fifo(dir: &Dir, name: &OsStr) -> Check {
    match dir.stat(name) {
        Ok(Some(m)) if m.kind == Kind::Fifo => Check::Ok(0),
        Ok(Some(_)) => Check::Mismatch("not a named pipe".into()),
        Ok(None) => Check::Missing("not found".into()),
        Err(e) => Check::Missing(e.to_string()),
    }
}

fn check_symlink(walker: &mut Walker, rel: &Path, f: &FileAtPoint) -> Check {
    let want = f
        .symlink_target
        .as_deref()
        .map(wire_path_bytes)
        .unwrap_or_default();
    let (dir, name) = match walker.parent_of(rel) {
        Ok(x) => x,
        Err(c) => return c,
    };
    match dir.stat(name) {
        Ok(Some(m)) if m.kind == Kind::Symlink => match dir.readlink(name) {
            Ok(t) if t == want => Check::Ok(0),
            Ok(t) => Check::Mismatch(format!(
                "symlink to {} instead of {}",
                String::from_utf8_lossy(&t),
                String::from_utf8_lossy(&want)
            )),
            Err(e) => Check::Mismatch(format!("cannot read the link: {e}")),
        },
        Ok(Some(_)) => Check::Mismatch("not a symlink".into()),
        Ok(None) => Check::Missing("not found".into()),
        Err(e) => Check::Missing(e.to_string()),
    }
}

// -------------------------------------------------------------------------------------------
// Executing a job
// -------------------------------------------------------------------------------------------

/// Tunables of a job's execution.
#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    /// Files restored concurrently.
    pub workers: usize,
    /// Time between progress reports.
    pub progress_interval: Duration,
    /// File-name rules of the target (default: this OS's).
    pub name_rules: NameRules,
}

impl Default for ExecuteOptions {
    fn default() -> Self {
        let ms = std::env::var(PROGRESS_INTERVAL_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1000)
            .clamp(10, 60_000);
        ExecuteOptions {
            workers: 4,
            progress_interval: Duration::from_millis(ms),
            name_rules: NameRules::native(),
        }
    }
}

/// Phases of a job, for displays.
pub mod phase {
    /// Listing and checking space.
    pub const PLANNING: u8 = 0;
    /// Writing files.
    pub const RESTORING: u8 = 1;
    /// Re-reading them.
    pub const VERIFYING: u8 = 2;
    /// Finished.
    pub const DONE: u8 = 3;
}

/// Live counters of one job (shared with a progress display).
#[derive(Debug, Default)]
pub struct JobProgress {
    /// One of [`phase`].
    pub phase: AtomicU8,
    /// Files and symlinks to restore.
    pub files_total: AtomicU64,
    /// Bytes to restore.
    pub bytes_total: AtomicU64,
    /// The restore's counters.
    pub restore: RestoreProgress,
    /// The validation's counters.
    pub validate: ValidateProgress,
}

impl JobProgress {
    /// Files done so far (at most the total).
    pub fn files_done(&self) -> u64 {
        let total = self.files_total.load(Ordering::Relaxed);
        self.restore.files.load(Ordering::Relaxed).min(total)
    }

    /// Bytes done so far, written or found complete (at most the total).
    pub fn bytes_done(&self) -> u64 {
        let total = self.bytes_total.load(Ordering::Relaxed);
        (self.restore.bytes.load(Ordering::Relaxed)
            + self.restore.bytes_skipped.load(Ordering::Relaxed))
        .min(total)
    }
}

/// What executing one job did.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryOutcome {
    /// The job.
    pub job_id: Uuid,
    /// Its type.
    pub recovery_type: RecoveryType,
    /// Emergency job.
    pub is_emergency: bool,
    /// The point restored.
    pub recovery_point_id: Option<Uuid>,
    /// The target folder.
    pub target_directory: Option<String>,
    /// The prefixes restored (`[""]`: everything).
    pub prefixes: Vec<String>,
    /// `completed` or `failed` (as reported to the server).
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Files and symlinks in the point under the prefixes.
    pub files_total: u64,
    /// Their bytes.
    pub bytes_total: u64,
    /// Files restored (written, or already complete).
    pub files_recovered: u64,
    /// Their bytes.
    pub bytes_recovered: u64,
    /// Files written beside an existing different file.
    pub files_beside: u64,
    /// The space check, when it ran.
    pub space: Option<SpaceCheck>,
    /// Files that could not be restored (the first few hundred).
    pub failures: Vec<RestoreFailure>,
    /// Paths restored under a safe name.
    pub renamed: Vec<RenamedPath>,
    /// How many.
    pub renamed_count: u64,
    /// The validation, when it ran.
    pub validation: Option<ValidationReport>,
    /// Whether the server took the finish report (else the job's lease runs out and it is
    /// claimed again).
    pub finish_reported: bool,
    /// Duration in milliseconds.
    pub elapsed_ms: u64,
}

impl RecoveryOutcome {
    /// Restored and validated.
    pub fn succeeded(&self) -> bool {
        self.status == "completed"
    }
}

/// Posts log entries; failures are logged locally and never stop the job.
struct Journal<'a> {
    client: &'a ApiClient,
    job: Uuid,
}

impl Journal<'_> {
    fn log(&self, step: &str, level: &str, message: String, details: Option<serde_json::Value>) {
        match level {
            "error" | "critical" => tracing::error!(job = %self.job, step, "{message}"),
            "warning" => tracing::warn!(job = %self.job, step, "{message}"),
            _ => tracing::info!(job = %self.job, step, "{message}"),
        }
        let entry = RecoveryLogEntry {
            step: step.to_string(),
            level: level.to_string(),
            message,
            details,
        };
        if let Err(e) = self.client.recovery_log(self.job, &entry) {
            tracing::warn!(job = %self.job, error = %e, "recovery log entry not sent");
        }
    }
}

/// Posts progress reports, one at a time and never going backwards.
struct Reporter<'a> {
    client: &'a ApiClient,
    job: Uuid,
    progress: &'a JobProgress,
    restore_started: Mutex<Option<Instant>>,
    verify_started: Mutex<Option<Instant>>,
    last: Mutex<(u64, u64)>,
}

impl Reporter<'_> {
    fn enter(&self, ph: u8) {
        let slot = if ph == phase::VERIFYING {
            &self.verify_started
        } else {
            &self.restore_started
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.progress.phase.store(ph, Ordering::Relaxed);
    }

    fn estimate(&self, now: Instant) -> Option<DateTime<Utc>> {
        let p = self.progress;
        let verifying = p.phase.load(Ordering::Relaxed) >= phase::VERIFYING;
        let since = if verifying {
            &self.verify_started
        } else {
            &self.restore_started
        };
        let since = (*since.lock().unwrap_or_else(|e| e.into_inner()))?;
        let total = p.bytes_total.load(Ordering::Relaxed);
        let done = if verifying {
            p.validate.bytes.load(Ordering::Relaxed)
        } else {
            p.bytes_done()
        };
        let elapsed = now.duration_since(since).as_secs_f64();
        if done == 0 || elapsed <= 0.0 || done >= total {
            return None;
        }
        let rate = done as f64 / elapsed;
        let remaining = (total - done) as f64 / rate;
        let d = chrono::Duration::milliseconds((remaining * 1000.0).min(1e12) as i64);
        Some(Utc::now() + d)
    }

    fn post(&self) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.progress;
        let files = p.files_done().max(last.0);
        let bytes = p.bytes_done().max(last.1);
        let status = if p.phase.load(Ordering::Relaxed) >= phase::VERIFYING {
            "verifying"
        } else {
            "running"
        };
        let report = RecoveryProgressReport {
            status: status.to_string(),
            files_total: p.files_total.load(Ordering::Relaxed),
            bytes_total: p.bytes_total.load(Ordering::Relaxed),
            files_recovered: files,
            bytes_recovered: bytes,
            estimated_completion: self.estimate(Instant::now()),
        };
        match self.client.recovery_progress(self.job, &report) {
            Ok(()) => *last = (files, bytes),
            Err(e) => tracing::debug!(job = %self.job, error = %e, "progress report not sent"),
        }
    }
}

fn summarize_failures(failures: &[RestoreFailure]) -> String {
    match failures.first() {
        Some(f) => format!(
            "{} file(s) could not be restored (first: {}: {})",
            failures.len(),
            f.path,
            f.error
        ),
        None => String::new(),
    }
}

/// Executes one claimed job (see the module documentation) and reports its end to the server.
/// Never fails: every problem ends up in the outcome, the job's log and its finish report.
pub fn execute(
    client: &ApiClient,
    keys: &OrgKeys,
    job: &RecoveryJobInfo,
    opts: &ExecuteOptions,
    progress: &JobProgress,
) -> RecoveryOutcome {
    let started = Instant::now();
    let aux = client.clone_with_retry(AUX_RETRY);
    let journal = Journal {
        client: &aux,
        job: job.id,
    };
    let prefixes = normalize_prefixes(&job.path_prefixes);
    let mut out = RecoveryOutcome {
        job_id: job.id,
        recovery_type: job.recovery_type,
        is_emergency: job.is_emergency,
        recovery_point_id: job.recovery_point_id,
        target_directory: job.target_directory.clone(),
        prefixes: prefixes.clone(),
        status: "failed".into(),
        error: None,
        files_total: 0,
        bytes_total: 0,
        files_recovered: 0,
        bytes_recovered: 0,
        files_beside: 0,
        space: None,
        failures: Vec::new(),
        renamed: Vec::new(),
        renamed_count: 0,
        validation: None,
        finish_reported: false,
        elapsed_ms: 0,
    };
    // Progress about every `progress_interval` from the claim on (each report extends the
    // lease), in its own thread so that a slow or absent server never holds up the work.
    let reporter = Reporter {
        client: &aux,
        job: job.id,
        progress,
        restore_started: Mutex::new(None),
        verify_started: Mutex::new(None),
        last: Mutex::new((0, 0)),
    };
    let stop = AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                reporter.post();
                let until = Instant::now() + opts.progress_interval;
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20).min(opts.progress_interval));
                }
            }
        });
        let r = run_job(
            client, &journal, &reporter, keys, job, opts, progress, &prefixes, &mut out,
        );
        stop.store(true, Ordering::Relaxed);
        r
    });
    progress.phase.store(phase::DONE, Ordering::Relaxed);
    let validation_passed = out.validation.as_ref().is_some_and(|v| v.passed());
    let restore_ok = result.is_ok() && out.failures.is_empty();
    let mut error = match &result {
        Err(e) => Some(e.clone()),
        Ok(()) if !out.failures.is_empty() => Some(summarize_failures(&out.failures)),
        Ok(()) => None,
    };
    if error.is_none() {
        if let Some(v) = out.validation.as_ref().filter(|v| !v.passed()) {
            error = Some(format!(
                "validation failed: {} file(s) differ from the backup, {} missing",
                v.mismatches, v.missing
            ));
        }
    }
    out.status = if restore_ok && validation_passed {
        "completed".into()
    } else {
        "failed".into()
    };
    out.error = error.clone();
    journal.log(
        "finish",
        if out.succeeded() { "info" } else { "error" },
        match &error {
            None => format!(
                "recovery completed: {} file(s), {} restored and validated",
                out.files_recovered,
                crate::units::format_bytes(out.bytes_recovered)
            ),
            Some(e) => format!("recovery failed: {e}"),
        },
        None,
    );
    let finish = RecoveryFinish {
        restore_ok,
        error,
        files_recovered: out.files_recovered,
        bytes_recovered: out.bytes_recovered,
        validation: out.validation.clone(),
    };
    match client.recovery_finish(job.id, &finish) {
        Ok(()) => out.finish_reported = true,
        Err(e) => {
            tracing::error!(job = %job.id, error = %e, "the finish report did not reach the server; the job will be claimed again when its lease runs out");
        }
    }
    out.elapsed_ms = started.elapsed().as_millis() as u64;
    out
}

/// The steps up to the validation; `Err` is the job's error message.
#[allow(clippy::too_many_arguments)]
fn run_job(
    client: &ApiClient,
    journal: &Journal<'_>,
    reporter: &Reporter<'_>,
    keys: &OrgKeys,
    job: &RecoveryJobInfo,
    opts: &ExecuteOptions,
    progress: &JobProgress,
    prefixes: &[String],
    out: &mut RecoveryOutcome,
) -> Result<(), String> {
    let what = if prefixes == [String::new()] {
        "everything".to_string()
    } else {
        prefixes.join(", ")
    };
    let Some(point) = job.recovery_point_id else {
        let msg = "the server resolved no recovery point for this job".to_string();
        journal.log("claimed", "error", msg.clone(), None);
        return Err(msg);
    };
    let target_str = job.target_directory.clone().unwrap_or_default();
    let target = PathBuf::from(&target_str);
    journal.log(
        "claimed",
        if job.is_emergency { "warning" } else { "info" },
        format!(
            "{}{:?} claimed: restoring {what} of recovery point {point} into {target_str}{}",
            if job.is_emergency { "EMERGENCY " } else { "" },
            job.recovery_type,
            if job.overwrite {
                " (overwriting different local files)"
            } else {
                " (different local files are kept; restored copies go beside them)"
            },
        ),
        Some(serde_json::json!({
            "agent_version": env!("CARGO_PKG_VERSION"),
            "attempt": job.attempts,
        })),
    );
    if target_str.is_empty() || !target.is_absolute() {
        let msg = format!("the target folder {target_str:?} is not an absolute path");
        journal.log("claimed", "error", msg.clone(), None);
        return Err(msg);
    }

    // Space, before anything is written.
    let plan = plan_restore(client, point, prefixes, &target, opts.name_rules).map_err(|e| {
        let msg = format!("cannot list the recovery point: {e}");
        journal.log("space_check", "error", msg.clone(), None);
        msg
    })?;
    progress.files_total.store(plan.files, Ordering::Relaxed);
    progress.bytes_total.store(plan.bytes, Ordering::Relaxed);
    out.files_total = plan.files;
    out.bytes_total = plan.bytes;
    if plan.files == 0 && plan.dirs == 0 {
        let msg = format!("the recovery point has nothing under {what}");
        journal.log("space_check", "error", msg.clone(), None);
        return Err(msg);
    }
    let space = check_space(&target, plan.bytes_needed).map_err(|e| {
        let msg = format!("cannot measure the free space for {target_str}: {e}");
        journal.log("space_check", "error", msg.clone(), None);
        msg
    })?;
    let details = serde_json::to_value(&space).ok();
    out.space = Some(space.clone());
    if !space.ok {
        let msg = format!(
            "not enough free space for {target_str}: {} needed (plus {} headroom), {} free; nothing was written",
            crate::units::format_bytes(space.needed),
            crate::units::format_bytes(space.margin),
            crate::units::format_bytes(space.free)
        );
        journal.log("space_check", "error", msg.clone(), details);
        return Err(msg);
    }
    journal.log(
        "space_check",
        "info",
        format!(
            "{} file(s), {} to restore ({} still to write); {} free",
            plan.files,
            crate::units::format_bytes(plan.bytes),
            crate::units::format_bytes(space.needed),
            crate::units::format_bytes(space.free)
        ),
        details,
    );

    // Restore, then validate.
    reporter.enter(phase::RESTORING);
    let mut total = RestoreReport::default();
    let outcome = restore_all(
        client, keys, job, opts, progress, prefixes, point, &target, journal, &mut total,
    )
    .and_then(|()| {
        // The restore's last report, then the validation.
        reporter.post();
        reporter.enter(phase::VERIFYING);
        reporter.post();
        journal.log(
            "validate",
            "info",
            "re-reading every restored file and comparing it with the backup".into(),
            None,
        );
        validate(
            client,
            &keys.chunk_id_key,
            point,
            prefixes,
            &target,
            opts.name_rules,
            &progress.validate,
        )
        .map_err(|e| {
            let msg = format!("validation could not run: {e}");
            journal.log("validate", "error", msg.clone(), None);
            msg
        })
    });
    out.files_recovered = total.files_restored + total.files_skipped + total.symlinks + total.fifos;
    out.bytes_recovered = total.bytes + total.bytes_skipped;
    out.files_beside = total.files_beside;
    out.renamed = total.renamed.clone();
    out.renamed_count = total.renamed_count;
    out.failures = total.failures.iter().take(500).cloned().collect();
    let v = outcome?;
    let level = if v.passed() { "info" } else { "error" };
    journal.log(
        "validate",
        level,
        format!(
            "{}: {} file(s), {} re-read; {} mismatched, {} missing, {} extra",
            if v.passed() {
                "validation passed"
            } else {
                "validation FAILED"
            },
            v.files_checked,
            crate::units::format_bytes(v.bytes_checked),
            v.mismatches,
            v.missing,
            v.extra
        ),
        v.details.clone(),
    );
    out.validation = Some(v);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn restore_all(
    client: &ApiClient,
    keys: &OrgKeys,
    job: &RecoveryJobInfo,
    opts: &ExecuteOptions,
    progress: &JobProgress,
    prefixes: &[String],
    point: Uuid,
    target: &Path,
    journal: &Journal<'_>,
    total: &mut RestoreReport,
) -> Result<(), String> {
    for prefix in prefixes {
        let mut ro = RestoreOptions::new(point, target);
        ro.prefix = prefix.clone();
        ro.overwrite = job.overwrite;
        ro.workers = opts.workers.max(1);
        ro.name_rules = opts.name_rules;
        journal.log(
            "restore",
            "info",
            format!(
                "restoring {}",
                if prefix.is_empty() {
                    "everything"
                } else {
                    prefix
                }
            ),
            None,
        );
        let r = restore::restore(client, keys, &ro, &progress.restore).map_err(|e| {
            let msg = format!("restore failed: {e}");
            journal.log("restore", "error", msg.clone(), None);
            msg
        })?;
        for (i, f) in r.failures.iter().enumerate() {
            if i == MAX_FAILURES_LOGGED {
                journal.log(
                    "restore",
                    "error",
                    format!(
                        "... and {} more file(s) could not be restored",
                        r.failures.len() - MAX_FAILURES_LOGGED
                    ),
                    None,
                );
                break;
            }
            journal.log(
                "restore",
                "error",
                format!("{}: {}", f.path, f.error),
                Some(serde_json::json!({"path": f.path})),
            );
        }
        if r.renamed_count > 0 {
            journal.log(
                "restore",
                "warning",
                format!(
                    "{} path(s) have names this system cannot hold and were restored under safe names",
                    r.renamed_count
                ),
                serde_json::to_value(&r.renamed).ok(),
            );
        }
        if r.files_beside > 0 {
            journal.log(
                "restore",
                "warning",
                format!(
                    "{} file(s) differed from existing local files, which were kept; the restored copies are beside them ({BESIDE_SUFFIX})",
                    r.files_beside
                ),
                None,
            );
        }
        journal.log(
            "restore",
            if r.failures.is_empty() { "info" } else { "error" },
            format!(
                "{}: {} file(s) written ({}), {} already complete, {} folder(s), {} link(s), {} failed, in {:.1} s",
                if prefix.is_empty() { "everything" } else { prefix },
                r.files_restored,
                crate::units::format_bytes(r.bytes),
                r.files_skipped,
                r.dirs,
                r.symlinks,
                r.failures.len(),
                r.elapsed.as_secs_f64()
            ),
            None,
        );
        merge(total, r);
    }
    Ok(())
}

fn merge(total: &mut RestoreReport, r: RestoreReport) {
    total.files_restored += r.files_restored;
    total.files_skipped += r.files_skipped;
    total.bytes_skipped += r.bytes_skipped;
    total.files_beside += r.files_beside;
    total.dirs += r.dirs;
    total.symlinks += r.symlinks;
    total.fifos += r.fifos;
    total.hard_links += r.hard_links;
    total.hard_links_copied += r.hard_links_copied;
    total.refused += r.refused;
    total.copies_rejected += r.copies_rejected;
    total.copies_adopted += r.copies_adopted;
    total.leftovers_removed += r.leftovers_removed;
    total.case_insensitive |= r.case_insensitive;
    total.bytes += r.bytes;
    total.elapsed += r.elapsed;
    if total.time_to_first_byte.is_none() {
        total.time_to_first_byte = r.time_to_first_byte;
    }
    total.renamed_count += r.renamed_count;
    let room = restore::MAX_RENAMED_LISTED.saturating_sub(total.renamed.len());
    total.renamed.extend(r.renamed.into_iter().take(room));
    let room = 10_000usize.saturating_sub(total.failures.len());
    total.failures.extend(r.failures.into_iter().take(room));
}

/// Claims the next job for this machine (`None`: nothing to do).
pub fn claim(
    client: &ApiClient,
    can_decrypt: bool,
) -> Result<Option<RecoveryJobInfo>, ClientError> {
    client.claim_recovery(&ClaimRecoveryRequest {
        can_decrypt,
        lease_seconds: DEFAULT_LEASE_SECONDS,
    })
}

/// The daemon's part, on each policy refresh: with an unsealed key kept in the home *and* the
/// organisation's `agents_keep_unsealed_key`, claim and execute every job for this machine
/// (the server hands out emergency jobs first), until none is left or `stop` is set; otherwise
/// only tell the server that jobs wait for the key to be unlocked here (`can_decrypt: false`).
/// Returns the outcomes of the jobs executed.
pub fn daemon_tick(
    home: &Home,
    client: &ApiClient,
    policy: &AgentPolicy,
    stop: &AtomicBool,
) -> Vec<RecoveryOutcome> {
    let keys = if policy.agents_keep_unsealed_key {
        match home.stored_secret_keys() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kept key; recovery requests wait");
                None
            }
        }
    } else {
        None
    };
    let Some(keys) = keys else {
        if let Err(e) = claim(client, false) {
            tracing::debug!(error = %e, "recovery requests not checked");
        }
        return Vec::new();
    };
    let mut done = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match claim(client, true) {
            Ok(Some(job)) => {
                tracing::info!(job = %job.id, emergency = job.is_emergency, "executing a recovery request");
                let out = execute(
                    client,
                    &keys,
                    &job,
                    &ExecuteOptions::default(),
                    &JobProgress::default(),
                );
                tracing::info!(job = %job.id, status = %out.status, error = ?out.error, "recovery request finished");
                let reported = out.finish_reported;
                done.push(out);
                if !reported {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "recovery requests not checked");
                break;
            }
        }
    }
    done
}

// -------------------------------------------------------------------------------------------
// Drills
// -------------------------------------------------------------------------------------------

/// What a restore drill did.
#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    /// The point sampled (this machine's newest).
    pub recovery_point_id: Uuid,
    /// Its source folder.
    pub root_path: String,
    /// The sampled paths.
    pub files: Vec<String>,
    /// Files restored.
    pub files_restored: u64,
    /// Their bytes.
    pub bytes_restored: u64,
    /// The validation.
    pub validation: ValidationReport,
    /// Restore problems.
    pub error: Option<String>,
    /// Restored and validated.
    pub passed: bool,
    /// Whether the server recorded the drill.
    pub reported: bool,
    /// Duration in milliseconds.
    pub elapsed_ms: u64,
}

/// Restores the `files` most recently modified files of this machine's newest recovery point
/// into a new folder under `scratch_parent`, validates them, reports the drill to the server and
/// deletes the folder.
pub fn drill(
    client: &ApiClient,
    keys: &OrgKeys,
    agent_id: Uuid,
    scratch_parent: &Path,
    files: usize,
) -> Result<DrillOutcome, RecoveryError> {
    let started_at = Utc::now();
    let started = Instant::now();
    let point = client
        .points(None, Some(agent_id))?
        .into_iter()
        .next()
        .ok_or_else(|| RecoveryError::Other("this machine has no recovery point yet".into()))?;
    // The newest files by modification time (a bounded heap over the streamed listing).
    let want = files.max(1);
    let mut heap: BinaryHeap<std::cmp::Reverse<(i64, String)>> = BinaryHeap::new();
    for_each_entry(client, point.id, &[String::new()], false, |f| {
        if f.kind == FileKind::File {
            heap.push(std::cmp::Reverse((f.mtime_ns.unwrap_or(0), f.path)));
            if heap.len() > want {
                heap.pop();
            }
        }
        Ok(())
    })?;
    let mut sample: Vec<String> = heap.into_iter().map(|r| r.0 .1).collect();
    sample.sort();
    if sample.is_empty() {
        return Err(RecoveryError::Other(format!(
            "recovery point {} has no file to restore",
            point.id
        )));
    }
    fs::create_dir_all(scratch_parent).map_err(io_at(scratch_parent))?;
    let scratch = scratch_parent.join(format!("drill-{}", Uuid::new_v4().simple()));
    let result = drill_in(client, keys, point.id, &sample, &scratch);
    if let Err(e) = fs::remove_dir_all(&scratch) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %scratch.display(), error = %e, "cannot remove the drill's scratch folder");
        }
    }
    let (total, validation) = result?;
    let error = (!total.failures.is_empty()).then(|| summarize_failures(&total.failures));
    let report = RecoveryDrillReport {
        recovery_point_id: point.id,
        started_at,
        files_restored: total.files_restored + total.files_skipped,
        bytes_restored: total.bytes + total.bytes_skipped,
        validation: validation.clone(),
        error: error.clone(),
    };
    let reported = match client.recovery_drill(&report) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "the drill's result did not reach the server");
            false
        }
    };
    Ok(DrillOutcome {
        recovery_point_id: point.id,
        root_path: point.root_path,
        files: sample,
        files_restored: report.files_restored,
        bytes_restored: report.bytes_restored,
        passed: error.is_none() && validation.passed(),
        validation,
        error,
        reported,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

fn drill_in(
    client: &ApiClient,
    keys: &OrgKeys,
    point: Uuid,
    sample: &[String],
    scratch: &Path,
) -> Result<(RestoreReport, ValidationReport), RecoveryError> {
    let progress = RestoreProgress::default();
    let mut total = RestoreReport::default();
    for path in sample {
        let mut ro = RestoreOptions::new(point, scratch);
        ro.prefix = path.clone();
        ro.workers = 1;
        let r = restore::restore(client, keys, &ro, &progress)?;
        merge(&mut total, r);
    }
    let v = validate(
        client,
        &keys.chunk_id_key,
        point,
        sample,
        scratch,
        NameRules::native(),
        &ValidateProgress::default(),
    )?;
    Ok((total, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(normalize_prefixes(&[]), v(&[""]));
        assert_eq!(normalize_prefixes(&v(&["a", ""])), v(&[""]));
        assert_eq!(normalize_prefixes(&v(&["/a/", "a"])), v(&["a"]));
        assert_eq!(
            normalize_prefixes(&v(&["a/b", "a", "ab", "a.txt", "c/d"])),
            v(&["a", "a.txt", "ab", "c/d"])
        );
        assert_eq!(normalize_prefixes(&v(&["a/b/c", "a/b"])), v(&["a/b"]));
    }

    #[test]
    fn free_space_of_a_missing_folder_is_its_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("not/yet/there");
        if std::env::var_os(TEST_FREE_BYTES_ENV).is_none() {
            let free = free_space(&deep).unwrap();
            assert!(free > 0);
            assert!(!deep.exists(), "measuring creates nothing");
            let c = check_space(&deep, free.saturating_mul(2)).unwrap();
            assert!(!c.ok);
            let c = check_space(&deep, 0).unwrap();
            assert_eq!(c.ok, free >= 1024 * 1024);
        }
    }

    #[test]
    fn beside_names() {
        assert_eq!(
            beside(Path::new("a/b.jpg")),
            PathBuf::from("a/b.jpg.restored")
        );
        assert_ne!(path_key(Path::new("a/b")), path_key(Path::new("a/c")));
    }

    #[test]
    fn check_file_compares_size_and_keyed_hash() {
        let dir = tempfile::tempdir().unwrap();
        let key = ChunkIdKey([7u8; 32]);
        let data = b"wedding photo bytes".repeat(1000);
        let p = dir.path().join("f");
        fs::write(&p, &data).unwrap();
        let f = FileAtPoint {
            path: "f".into(),
            raw_path: None,
            kind: FileKind::File,
            size: data.len() as u64,
            mtime_ns: None,
            mode: None,
            symlink_target: None,
            content_hash: Some(keepsake_common::ids::ContentHash::of(&key, &data)),
            chunks: Vec::new(),
            link: None,
            mac: None,
        };
        let prog = ValidateProgress::default();
        let t = Target::open(dir.path(), false).unwrap();
        let root = t.root();
        let name = OsStr::new("f");
        assert!(
            matches!(check_file(root, name, &f, &key, &prog), Check::Ok(n) if n == data.len() as u64)
        );
        let mut bad = data.clone();
        bad[5] ^= 1;
        fs::write(&p, &bad).unwrap();
        assert!(matches!(
            check_file(root, name, &f, &key, &prog),
            Check::Mismatch(_)
        ));
        // Another key gives another hash: the hash is keyed.
        fs::write(&p, &data).unwrap();
        let other = ChunkIdKey([8u8; 32]);
        assert!(matches!(
            check_file(root, name, &f, &other, &prog),
            Check::Mismatch(_)
        ));
        fs::write(&p, b"short").unwrap();
        assert!(
            matches!(check_file(root, name, &f, &key, &prog), Check::Mismatch(m) if m.contains("bytes"))
        );
        fs::remove_file(&p).unwrap();
        assert!(matches!(
            check_file(root, name, &f, &key, &prog),
            Check::Missing(_)
        ));
        #[cfg(unix)]
        {
            let real = dir.path().join("real");
            fs::write(&real, &data).unwrap();
            std::os::unix::fs::symlink(&real, &p).unwrap();
            assert!(
                matches!(check_file(root, name, &f, &key, &prog), Check::Mismatch(_)),
                "a symlink is not the restored file"
            );
        }
    }
}
