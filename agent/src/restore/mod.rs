//! Restoring a recovery point (or part of it) into a folder.
//!
//! The listing comes from the server page by page and is placed entry by entry, in listing
//! order ([`placement`]): each entry's metadata MAC is verified first (an entry without a valid
//! one is refused and reported, the rest goes on), its path is mapped to a name the target can
//! hold, and on a target that does not tell letter case apart, paths that differ only by case
//! get distinct names. Folders are made as they come; files and named pipes go to worker
//! threads through a bounded channel; symlinks and the later names of hard-link groups are
//! spooled to disk for the final pass ([`links`]). Then folder modes and times are set, deepest
//! first. Memory stays bounded: one page of the listing, the channel, the link-group map and
//! the folder list (both capped).
//!
//! Safety: the target is opened once and everything below it is reached one component at a
//! time without following links ([`target`]); a folder that is a symlink is refused, so the
//! restore writes only inside the target whatever the point or the target folder holds. Modes
//! are masked to 0o777 unless [`RestoreOptions::keep_special_bits`] and running as root. An
//! existing file with different content is never overwritten unless asked: the restored copy
//! is written beside it ([`names::beside_name`]).
//!
//! Blobs are read in batches; a wrong stored copy makes the restore ask for another one, and
//! copies verified here are reported to the server ([`blobs`]). A damaged blob with no intact
//! copy fails that file only.
//!
//! Crash safety: files are written to temporary files, flushed and renamed into place
//! ([`files`]); a rerun skips files already complete (same size and keyed content hash, read
//! back) and removes the temporary leftovers of the interrupted run in the folders it visits.
//!
//! Names that the target operating system cannot hold (on Windows: reserved device names such
//! as `CON` or `COM1`, the characters `<>:"|?*\`, control characters, a trailing dot or space)
//! are mapped to a safe name by [`names::local_rel_path`]; every mapped path is reported
//! ([`RestoreReport::renamed`]), as are the names given to case collisions.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use keepsake_common::api::{FileAtPoint, FileKind};
use keepsake_common::keys::OrgKeys;
use keepsake_common::mac::EntryMacKey;
use serde::Serialize;
use uuid::Uuid;

use crate::client::{ApiClient, ClientError};

pub mod blobs;
pub(crate) mod files;
mod links;
pub mod names;
pub mod placement;
pub(crate) mod target;

pub use blobs::RestoreSource;
pub use names::BESIDE_SUFFIX;
pub use placement::{authenticate, PlaceError, Placed, Placement};
pub use target::{is_temp_name, TEMP_PREFIX, TEMP_SUFFIX};

use links::{Role, Waiting, FIRST_AT_NAME, FIRST_BESIDE, FIRST_FAILED, FIRST_PENDING};
use target::{Cursor, Kind, Target, TargetError};

/// At most this many folders get their mode and time set at the end (the others keep them).
pub const MAX_FOLDERS_FINISHED: usize = 1_000_000;
/// Entries listed per request.
const PAGE: usize = 1000;

/// Errors that stop a restore (file-level problems are in the report).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The server could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The target folder is unusable.
    #[error("{0}")]
    Target(String),
    /// A local scratch file (spool, case table) could not be made.
    #[error("restore scratch files: {0}")]
    Local(String),
}

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The recovery point.
    pub point: Uuid,
    /// Only this path (a file, or a folder and everything under it); empty for all.
    pub prefix: String,
    /// The target folder.
    pub target: PathBuf,
    /// Replace existing files whose content differs (default: restore beside them).
    pub overwrite: bool,
    /// Files restored concurrently.
    pub workers: usize,
    /// Plaintext bytes fetched per request.
    pub batch_bytes: u64,
    /// Which file-name rules the target follows (default: this operating system's).
    pub name_rules: names::NameRules,
    /// Keep set-user-ID, set-group-ID and sticky bits (only when running as root).
    pub keep_special_bits: bool,
    /// Whether the target folds letter case; `None`: probe the target.
    pub case_insensitive: Option<bool>,
}

impl RestoreOptions {
    /// Defaults for `point` into `target`.
    pub fn new(point: Uuid, target: impl Into<PathBuf>) -> RestoreOptions {
        RestoreOptions {
            point,
            prefix: String::new(),
            target: target.into(),
            overwrite: false,
            workers: 4,
            batch_bytes: 32 * 1024 * 1024,
            name_rules: names::NameRules::native(),
            keep_special_bits: false,
            case_insensitive: None,
        }
    }
}

/// An entry that could not be restored.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreFailure {
    /// Its path in the recovery point.
    pub path: String,
    /// Why.
    pub error: String,
}

/// A path restored under another name: the target cannot hold the original one, or another
/// entry differing only by letter case took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenamedPath {
    /// The path in the recovery point.
    pub original: String,
    /// Where it was restored, relative to the target.
    pub restored_as: String,
}

/// At most this many renamed paths are listed in a report (all are counted).
pub const MAX_RENAMED_LISTED: usize = 1000;

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    /// Regular files written (hard links included).
    pub files_restored: u64,
    /// Files already complete from an earlier run.
    pub files_skipped: u64,
    /// Bytes of the files already complete.
    pub bytes_skipped: u64,
    /// Files (and pipes) written beside an existing different one.
    pub files_beside: u64,
    /// Folders created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Named pipes created.
    pub fifos: u64,
    /// Files restored as hard links of another restored file (counted in `files_restored`).
    pub hard_links: u64,
    /// Files of a hard-link group restored as copies (first one failed, too many groups, or no
    /// links possible on the target).
    pub hard_links_copied: u64,
    /// Entries refused because their metadata MAC is missing or does not verify.
    pub refused: u64,
    /// Stored blob copies found wrong (another copy was asked for).
    pub copies_rejected: u64,
    /// Verified copies the server newly adopted for this machine.
    pub copies_adopted: u64,
    /// Temporary leftovers of an interrupted run removed.
    pub leftovers_removed: u64,
    /// Whether the target was treated as case-insensitive.
    pub case_insensitive: bool,
    /// Bytes written.
    pub bytes: u64,
    /// Entries that failed.
    pub failures: Vec<RestoreFailure>,
    /// Paths restored under another name (the first [`MAX_RENAMED_LISTED`]).
    pub renamed: Vec<RenamedPath>,
    /// How many paths were restored under another name.
    pub renamed_count: u64,
    /// Duration.
    pub elapsed: Duration,
    /// Time until the first byte was written.
    pub time_to_first_byte: Option<Duration>,
}

/// Counters shared with a progress display.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Entries finished (everything but folders).
    pub files: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Bytes of files found already complete (not written again).
    pub bytes_skipped: AtomicU64,
}

/// Why one entry failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileFail {
    #[error("{0}")]
    Msg(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// A file or pipe for a worker.
struct Job {
    f: FileAtPoint,
    rel: PathBuf,
    /// The first of a hard-link group: its state goes there.
    first: Option<u32>,
}

/// A folder whose mode and time are set at the end.
struct FolderToFinish {
    rel: PathBuf,
    mode: u32,
    mtime_ns: Option<i64>,
}

/// What every worker shares.
pub(crate) struct Shared<'a> {
    source: &'a dyn RestoreSource,
    keys: &'a OrgKeys,
    opts: &'a RestoreOptions,
    report: Mutex<RestoreReport>,
    progress: &'a RestoreProgress,
    started: Instant,
    first_byte: AtomicBool,
    adopter: blobs::Adopter,
    keep_special: bool,
    firsts: Mutex<Vec<u8>>,
}

/// Restores a recovery point from the server (see the module documentation).
pub fn restore(
    client: &ApiClient,
    keys: &OrgKeys,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreReport, RestoreError> {
    restore_from(client, keys, opts, progress)
}

/// Restores a recovery point read from `source` (the server, or a stand-in in tests).
pub fn restore_from(
    source: &dyn RestoreSource,
    keys: &OrgKeys,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    let target =
        Target::open(&opts.target, true).map_err(|e| RestoreError::Target(e.to_string()))?;
    let case_insensitive = match opts.case_insensitive {
        Some(v) => v,
        None => target.probe_case_insensitive().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot tell whether the target folds letter case; assuming it does not");
            false
        }),
    };
    let mut placement = Placement::new(
        opts.name_rules,
        case_insensitive,
        EntryMacKey::derive(&keys.chunk_id_key),
    )
    .map_err(|e| RestoreError::Local(e.to_string()))?;
    let mut waiting = Waiting::new().map_err(|e| RestoreError::Local(e.to_string()))?;
    let sh = Shared {
        source,
        keys,
        opts,
        report: Mutex::new(RestoreReport {
            case_insensitive,
            ..RestoreReport::default()
        }),
        progress,
        started,
        first_byte: AtomicBool::new(false),
        adopter: blobs::Adopter::new(),
        keep_special: opts.keep_special_bits && target::is_root(),
        firsts: Mutex::new(Vec::new()),
    };
    let workers = opts.workers.clamp(1, 32);
    let (tx, rx) = mpsc::sync_channel::<Job>(workers * 4);
    let rx = Mutex::new(rx);
    let mut folders: Vec<FolderToFinish> = Vec::new();
    let mut created_dirs = 0u64;
    let listing: Result<(), RestoreError> = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut cur = Cursor::new(&target);
                loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(job) = next else { break };
                    sh.run(&mut cur, job);
                }
                sh.bump(|r| r.dirs += cur.created);
            });
        }
        let mut cur = Cursor::new(&target);
        let mut after: Option<String> = None;
        let result = loop {
            let page = source.files_page(opts.point, &opts.prefix, after.as_deref(), PAGE, true);
            let (files, more) = match page {
                Ok(p) => p,
                Err(e) => break Err(RestoreError::Client(e)),
            };
            after = files.last().map(|f| f.path.clone());
            for f in files {
                let Some(rel) = sh.place(&mut placement, &f) else {
                    continue;
                };
                match f.kind {
                    FileKind::Directory => {
                        if sh.make_dir(&mut cur, &f, &rel) {
                            if folders.len() < MAX_FOLDERS_FINISHED {
                                folders.push(FolderToFinish {
                                    rel,
                                    mode: sh.mode_of(&f, 0o755),
                                    mtime_ns: f.mtime_ns,
                                });
                            } else if folders.len() == MAX_FOLDERS_FINISHED {
                                tracing::warn!(
                                    "too many folders: later ones keep their current mode and time"
                                );
                            }
                        }
                    }
                    FileKind::Symlink => {
                        if let Err(e) = waiting.symlink(&f, &rel) {
                            sh.finished(&f.path, Err(e.into()));
                        }
                    }
                    FileKind::File | FileKind::Fifo => {
                        let first = if f.kind == FileKind::File && f.link.is_some() {
                            match waiting.file(&sh, &f, &rel) {
                                Ok(Role::First(id)) => Some(id),
                                Ok(Role::Later) => continue,
                                Ok(Role::Untracked) => {
                                    sh.bump(|r| r.hard_links_copied += 1);
                                    None
                                }
                                Err(e) => {
                                    sh.finished(&f.path, Err(e.into()));
                                    continue;
                                }
                            }
                        } else {
                            None
                        };
                        if tx.send(Job { f, rel, first }).is_err() {
                            break;
                        }
                    }
                }
            }
            if !more || after.is_none() {
                break Ok(());
            }
        };
        created_dirs += cur.created;
        drop(tx);
        result
    });
    if let Err(e) = listing {
        sh.adopter.flush(source);
        return Err(e);
    }
    {
        // The final pass: later names of link groups, symlinks, then folders (deepest first).
        let mut cur = Cursor::new(&target);
        waiting.finish(&sh, &mut cur);
        created_dirs += cur.created;
    }
    for d in folders.iter().rev() {
        let mut created = 0;
        let done = target
            .folder(&d.rel, None, &d.rel, &mut created)
            .map_err(|e| e.to_string())
            .and_then(|dir| {
                dir.set_mode_times(Some(d.mode), d.mtime_ns)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = done {
            tracing::warn!(folder = %d.rel.display(), error = %e, "cannot set a folder's mode and time");
        }
    }
    sh.adopter.flush(source);
    if let Err(e) = target.root().sync_fs() {
        tracing::warn!(error = %e, "cannot flush the target to disk");
    }
    let mut report = sh.report.into_inner().unwrap_or_else(|p| p.into_inner());
    report.dirs += created_dirs;
    report.copies_adopted = sh.adopter.adopted.load(Ordering::Relaxed);
    report.copies_rejected = sh.adopter.rejected.load(Ordering::Relaxed);
    report.leftovers_removed = target.temps_removed();
    report.elapsed = started.elapsed();
    Ok(report)
}

impl Shared<'_> {
    fn fail(&self, path: &str, error: String) {
        tracing::error!(path, error, "restore failed for this entry");
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.failures.push(RestoreFailure {
            path: path.to_string(),
            error,
        });
    }

    fn bump(&self, f: impl FnOnce(&mut RestoreReport)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// An entry (not a folder) is done, well or not.
    fn finished(&self, path: &str, result: Result<(), FileFail>) {
        if let Err(e) = result {
            self.fail(path, e.to_string());
        }
        self.progress.files.fetch_add(1, Ordering::Relaxed);
    }

    fn skipped(&self, f: &FileAtPoint) {
        self.progress
            .bytes_skipped
            .fetch_add(f.size, Ordering::Relaxed);
        self.bump(|r| {
            r.files_skipped += 1;
            r.bytes_skipped += f.size;
        });
    }

    /// `n` bytes of content were written.
    fn wrote(&self, n: u64) {
        self.progress.bytes.fetch_add(n, Ordering::Relaxed);
        if n > 0 && !self.first_byte.swap(true, Ordering::Relaxed) {
            let at = self.started.elapsed();
            self.bump(|r| r.time_to_first_byte = Some(at));
        }
    }

    /// The permission bits to give `f` (`default` when the point has none).
    fn mode_of(&self, f: &FileAtPoint, default: u32) -> u32 {
        effective_mode(f.mode, default, self.keep_special)
    }

    fn new_first(&self) -> u32 {
        let mut v = self.firsts.lock().unwrap_or_else(|p| p.into_inner());
        v.push(FIRST_PENDING);
        (v.len() - 1) as u32
    }

    fn set_first(&self, id: u32, state: u8) {
        let mut v = self.firsts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = v.get_mut(id as usize) {
            *s = state;
        }
    }

    fn first_state(&self, id: u32) -> u8 {
        let v = self.firsts.lock().unwrap_or_else(|p| p.into_inner());
        v.get(id as usize).copied().unwrap_or(FIRST_FAILED)
    }

    /// Where `f` goes; `None` (reported) when it is refused or has no place.
    fn place(&self, placement: &mut Placement, f: &FileAtPoint) -> Option<PathBuf> {
        match placement.place(f) {
            Ok(p) => {
                if p.renamed {
                    let shown = p.rel.to_string_lossy().replace('\\', "/");
                    tracing::warn!(path = %f.path, restored_as = %shown, "restored under another name");
                    self.bump(|r| {
                        r.renamed_count += 1;
                        if r.renamed.len() < MAX_RENAMED_LISTED {
                            r.renamed.push(RenamedPath {
                                original: f.path.clone(),
                                restored_as: shown,
                            });
                        }
                    });
                }
                Some(p.rel)
            }
            Err(e) => {
                if matches!(e, PlaceError::Refused { .. }) {
                    self.bump(|r| r.refused += 1);
                }
                if f.kind == FileKind::Directory {
                    self.fail(&f.path, e.to_string());
                } else {
                    self.finished(&f.path, Err(FileFail::Msg(e.to_string())));
                }
                None
            }
        }
    }

    /// Makes the folder `rel` (or accepts an existing one); `false` when it is not there.
    fn make_dir(&self, cur: &mut Cursor<'_>, f: &FileAtPoint, rel: &Path) -> bool {
        let result = (|| -> Result<bool, FileFail> {
            let (parent, name) = files::split(rel)?;
            let dir = cur.folder(parent, true, rel)?;
            if dir.mkdir(name, 0o700)? {
                return Ok(true);
            }
            match dir.stat(name)? {
                Some(m) if m.kind == Kind::Dir => Ok(false),
                Some(m) if m.kind == Kind::Symlink => Err(FileFail::Msg(format!(
                    "refusing {}: it is a symlink",
                    rel.display()
                ))),
                _ => Err(FileFail::Msg(format!(
                    "{} exists and is not a folder",
                    rel.display()
                ))),
            }
        })();
        match result {
            Ok(created) => {
                if created {
                    self.bump(|r| r.dirs += 1);
                }
                true
            }
            Err(e) => {
                self.fail(&f.path, e.to_string());
                false
            }
        }
    }

    fn run(&self, cur: &mut Cursor<'_>, job: Job) {
        let result = match job.f.kind {
            FileKind::File => files::restore_file(self, cur, &job.f, &job.rel),
            FileKind::Fifo => files::restore_fifo(self, cur, &job.f, &job.rel),
            _ => Err(FileFail::Msg("not a file".into())),
        };
        if let Some(id) = job.first {
            let state = match &result {
                Ok(d) if d.beside() => FIRST_BESIDE,
                Ok(_) => FIRST_AT_NAME,
                Err(_) => FIRST_FAILED,
            };
            self.set_first(id, state);
        }
        self.finished(&job.f.path, result.map(|_| ()));
    }
}

/// The permission bits restored for a recorded `mode` (`default` when none): masked to 0o777
/// unless special bits are kept (asked for, and running as root).
pub fn effective_mode(mode: Option<u32>, default: u32, keep_special: bool) -> u32 {
    let m = mode.map_or(default, |m| m & 0o7777);
    if keep_special {
        m
    } else {
        m & 0o777
    }
}

#[cfg(test)]
mod tests;
