//! Restoring a recovery point (or part of it) into a folder.
//!
//! The file list comes from the server page by page; worker threads restore files in parallel.
//! Each file's blobs are fetched in batches as one framed stream and handled one blob at a time:
//! the ciphertext hash is checked, the blob decrypted, its plaintext checked against the blob ID,
//! and appended to a temporary file next to the destination. The whole file's content hash is
//! checked before the temporary file is renamed into place and its mode and mtime are set. A
//! damaged or missing blob fails that file only.
//!
//! Safety: every path is validated (relative, no `.`/`..`, no NUL or backslash) and joined
//! under the target component by component; a parent that is a symlink, or anything that would
//! land outside the target, is refused. An existing file with different content is never
//! overwritten unless asked: the restored copy is written beside it. A rerun of an interrupted
//! restore skips files already complete (same size and mtime).
//!
//! Names that the target operating system cannot hold (on Windows: reserved device names such as
//! `CON` or `COM1`, the characters `<>:"|?*\`, control characters, a trailing dot or space) are
//! mapped to a safe name by [`names::local_rel_path`]; every mapped path is reported
//! ([`RestoreReport::renamed`]). On Unix every name the wire format allows is valid as is.

use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keepsake_common::api::{FileAtPoint, FileKind};
use keepsake_common::framing::{Frame, FRAME_HEADER_LEN, STREAM_HEADER_LEN};
use keepsake_common::ids::{BlobId, CipherHash, ContentHash};
use keepsake_common::keys::OrgKeys;
use serde::Serialize;
use uuid::Uuid;

use crate::client::{ApiClient, ClientError};

/// Suffix of temporary files while a file is being restored.
pub const PARTIAL_SUFFIX: &str = ".keepsake-partial";
/// Suffix of a restored copy written beside an existing, different file.
pub const BESIDE_SUFFIX: &str = ".restored";

/// Errors that stop a restore (file-level problems are in the report).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The server could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The target folder is unusable.
    #[error("{0}")]
    Target(String),
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
        }
    }
}

/// A file that could not be restored.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreFailure {
    /// Its path in the recovery point.
    pub path: String,
    /// Why.
    pub error: String,
}

/// A path restored under another name because the target cannot hold the original one.
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
    /// Files written.
    pub files_restored: u64,
    /// Files already complete from an earlier run.
    pub files_skipped: u64,
    /// Bytes of the files already complete.
    pub bytes_skipped: u64,
    /// Files written beside an existing different file.
    pub files_beside: u64,
    /// Folders created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files that failed.
    pub failures: Vec<RestoreFailure>,
    /// Paths restored under a safe name (the first [`MAX_RENAMED_LISTED`]).
    pub renamed: Vec<RenamedPath>,
    /// How many paths were restored under a safe name.
    pub renamed_count: u64,
    /// Duration.
    pub elapsed: Duration,
    /// Time until the first byte was written.
    pub time_to_first_byte: Option<Duration>,
}

/// Counters shared with a progress display.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Files finished.
    pub files: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Bytes of files found already complete (not written again).
    pub bytes_skipped: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
enum FileFail {
    #[error("{0}")]
    Msg(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Joins `rel` (relative, validated) under `root`, creating missing folders and refusing any
/// parent that is not a real folder (a symlink could point outside the target).
pub fn safe_join(root: &Path, rel: &Path, create_parents: bool) -> Result<PathBuf, String> {
    let mut out = root.to_path_buf();
    let comps: Vec<Component<'_>> = rel.components().collect();
    if comps.is_empty() {
        return Err("empty path".into());
    }
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(name) = c else {
            return Err(format!(
                "refusing path {}: not a plain relative path",
                rel.display()
            ));
        };
        out.push(name);
        if i + 1 == comps.len() {
            break;
        }
        match fs::symlink_metadata(&out) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "refusing {}: its parent {} is a symlink",
                    rel.display(),
                    out.display()
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "refusing {}: {} is not a folder",
                    rel.display(),
                    out.display()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create_parents => {
                fs::create_dir(&out).or_else(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists && out.is_dir() {
                        Ok(())
                    } else {
                        Err(format!("cannot create {}: {e}", out.display()))
                    }
                })?;
            }
            Err(e) => return Err(format!("{}: {e}", out.display())),
        }
    }
    if !out.starts_with(root) {
        return Err(format!("refusing {}: outside the target", rel.display()));
    }
    Ok(out)
}

fn set_times_and_mode(path: &Path, f: &FileAtPoint) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = f.mode {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if let Some(ns) = f.mtime_ns {
        let t = filetime::FileTime::from_unix_time(
            ns.div_euclid(1_000_000_000),
            ns.rem_euclid(1_000_000_000) as u32,
        );
        filetime::set_file_mtime(path, t)?;
    }
    Ok(())
}

fn same_mtime(meta: &fs::Metadata, f: &FileAtPoint) -> bool {
    let Some(ns) = f.mtime_ns else {
        return false;
    };
    let t = filetime::FileTime::from_last_modification_time(meta);
    // The server keeps microseconds.
    let have = t.unix_seconds() as i128 * 1_000_000_000 + i128::from(t.nanoseconds());
    (have / 1000) == (i128::from(ns) / 1000)
}

struct Shared<'a> {
    client: &'a ApiClient,
    keys: &'a OrgKeys,
    opts: &'a RestoreOptions,
    root: PathBuf,
    report: Mutex<RestoreReport>,
    progress: &'a RestoreProgress,
    started: Instant,
}

/// Restores a recovery point (see the module documentation).
pub fn restore(
    client: &ApiClient,
    keys: &OrgKeys,
    opts: &RestoreOptions,
    progress: &RestoreProgress,
) -> Result<RestoreReport, RestoreError> {
    let started = Instant::now();
    fs::create_dir_all(&opts.target)
        .map_err(|e| RestoreError::Target(format!("{}: {e}", opts.target.display())))?;
    let root = fs::canonicalize(&opts.target)
        .map_err(|e| RestoreError::Target(format!("{}: {e}", opts.target.display())))?;
    let shared = Shared {
        client,
        keys,
        opts,
        root,
        report: Mutex::new(RestoreReport::default()),
        progress,
        started,
    };
    let workers = opts.workers.clamp(1, 32);
    let (tx, rx) = mpsc::sync_channel::<FileAtPoint>(workers * 4);
    let rx = Mutex::new(rx);
    let mut dirs: Vec<FileAtPoint> = Vec::new();
    let listing: Result<(), RestoreError> = std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok(f) = next else { break };
                shared.restore_entry(&f);
            });
        }
        let mut after: Option<String> = None;
        let result = loop {
            let page = client.files_page(opts.point, &opts.prefix, after.as_deref(), 1000, true);
            let (files, more) = match page {
                Ok(p) => p,
                Err(e) => break Err(RestoreError::Client(e)),
            };
            after = files.last().map(|f| f.path.clone());
            for f in files {
                if f.kind == FileKind::Directory {
                    shared.make_dir(&f);
                    // Folder times are set last (writing inside a folder changes its mtime).
                    if dirs.len() < 1_000_000 {
                        dirs.push(f);
                    }
                } else if tx.send(f).is_err() {
                    break;
                }
            }
            if !more {
                break Ok(());
            }
        };
        drop(tx);
        result
    });
    listing?;
    for d in dirs.iter().rev() {
        if let Ok((p, _)) = names::local_rel_path(&d.path, d.raw_path.as_deref(), opts.name_rules) {
            if let Ok(full) = safe_join(&shared.root, &p, false) {
                let _ = set_times_and_mode(&full, d);
            }
        }
    }
    let mut report = shared
        .report
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    report.elapsed = started.elapsed();
    Ok(report)
}

impl Shared<'_> {
    fn fail(&self, path: &str, error: String) {
        tracing::error!(path, error, "restore failed for this file");
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.failures.push(RestoreFailure {
            path: path.to_string(),
            error,
        });
    }

    fn bump(&self, f: impl FnOnce(&mut RestoreReport)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
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

    /// The path of `f` relative to the target (mapped to a safe name where needed, and reported).
    fn local_rel(&self, f: &FileAtPoint) -> Result<PathBuf, String> {
        let (rel, renamed) =
            names::local_rel_path(&f.path, f.raw_path.as_deref(), self.opts.name_rules)?;
        if renamed {
            let shown = rel.to_string_lossy().replace('\\', "/");
            tracing::warn!(path = %f.path, restored_as = %shown, "name not valid here: restored under a safe name");
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
        Ok(rel)
    }

    fn make_dir(&self, f: &FileAtPoint) {
        let result = self
            .local_rel(f)
            .and_then(|rel| safe_join(&self.root, &rel, true))
            .and_then(|full| match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => Ok(false),
                Ok(_) => Err(format!("{} exists and is not a folder", full.display())),
                Err(_) => fs::create_dir(&full)
                    .map(|_| true)
                    .map_err(|e| format!("{}: {e}", full.display())),
            });
        match result {
            Ok(true) => self.bump(|r| r.dirs += 1),
            Ok(false) => {}
            Err(e) => self.fail(&f.path, e),
        }
    }

    fn restore_entry(&self, f: &FileAtPoint) {
        let result = (|| -> Result<(), FileFail> {
            let rel = self.local_rel(f).map_err(FileFail::Msg)?;
            let full = safe_join(&self.root, &rel, true).map_err(FileFail::Msg)?;
            match f.kind {
                FileKind::Symlink => self.restore_symlink(f, &full),
                FileKind::File => self.restore_file(f, &full),
                FileKind::Directory => Ok(()),
            }
        })();
        if let Err(e) = result {
            self.fail(&f.path, e.to_string());
        }
        self.progress.files.fetch_add(1, Ordering::Relaxed);
    }

    fn restore_symlink(&self, f: &FileAtPoint, full: &Path) -> Result<(), FileFail> {
        let target = f
            .symlink_target
            .as_deref()
            .ok_or_else(|| FileFail::Msg("symlink without a target".into()))?;
        match fs::symlink_metadata(full) {
            Ok(m) if m.file_type().is_symlink() => {
                if fs::read_link(full)?.as_os_str() == target {
                    return Ok(());
                }
                if !self.opts.overwrite {
                    return Err(FileFail::Msg(format!(
                        "{} exists with another target (use --overwrite)",
                        full.display()
                    )));
                }
                fs::remove_file(full)?;
            }
            Ok(_) => {
                return Err(FileFail::Msg(format!(
                    "{} exists and is not a symlink",
                    full.display()
                )))
            }
            Err(_) => {}
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(target, full)?;
        #[cfg(not(unix))]
        return Err(FileFail::Msg("symlinks are restored on Unix only".into()));
        #[cfg(unix)]
        {
            self.bump(|r| r.symlinks += 1);
            Ok(())
        }
    }

    fn restore_file(&self, f: &FileAtPoint, full: &Path) -> Result<(), FileFail> {
        let mut dest = full.to_path_buf();
        let mut beside = false;
        if let Ok(meta) = fs::symlink_metadata(full) {
            if meta.is_file() && meta.len() == f.size && same_mtime(&meta, f) {
                self.skipped(f);
                return Ok(());
            }
            if meta.is_dir() || meta.file_type().is_symlink() || !self.opts.overwrite {
                let mut name = full.file_name().unwrap_or_default().to_os_string();
                name.push(BESIDE_SUFFIX);
                dest = full.with_file_name(name);
                beside = true;
                if let Ok(m) = fs::symlink_metadata(&dest) {
                    if m.is_file() && m.len() == f.size && same_mtime(&m, f) {
                        self.skipped(f);
                        return Ok(());
                    }
                }
            }
        }
        let mut tmp_name = dest.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(PARTIAL_SUFFIX);
        let tmp = dest.with_file_name(tmp_name);
        let written = self.write_content(f, &tmp);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        set_times_and_mode(&tmp, f)?;
        fs::rename(&tmp, &dest)?;
        self.bump(|r| {
            r.files_restored += 1;
            r.bytes += f.size;
            if beside {
                r.files_beside += 1;
            }
        });
        Ok(())
    }

    fn write_content(&self, f: &FileAtPoint, tmp: &Path) -> Result<(), FileFail> {
        let expected = f
            .content_hash
            .ok_or_else(|| FileFail::Msg("no content hash in the listing".into()))?;
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        let mut out = BufWriter::with_capacity(1024 * 1024, out);
        let mut hasher = self.keys.chunk_id_key.content_hasher();
        let mut total: u64 = 0;
        let mut i = 0;
        while i < f.chunks.len() {
            let mut j = i;
            let mut batch_bytes = 0u64;
            while j < f.chunks.len()
                && (j == i || batch_bytes + u64::from(f.chunks[j].len) <= self.opts.batch_bytes)
                && j - i < keepsake_common::api::MAX_READ_BLOBS
            {
                batch_bytes += u64::from(f.chunks[j].len);
                j += 1;
            }
            let ids: Vec<BlobId> = f.chunks[i..j].iter().map(|c| c.id).collect();
            let mut stream = self.client.read_blobs(&ids)?;
            read_stream(&mut stream, &ids, |id, ciphertext, cipher_hash| {
                let plain = self
                    .keys
                    .open_blob(id, ciphertext, Some(cipher_hash))
                    .map_err(|e| FileFail::Msg(format!("blob {id}: {e}")))?;
                hasher.update(&plain);
                out.write_all(&plain)?;
                total += plain.len() as u64;
                if total > 0 {
                    let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
                    if r.time_to_first_byte.is_none() {
                        r.time_to_first_byte = Some(self.started.elapsed());
                    }
                }
                self.progress
                    .bytes
                    .fetch_add(plain.len() as u64, Ordering::Relaxed);
                Ok(())
            })?;
            i = j;
        }
        out.flush()?;
        drop(out);
        if total != f.size {
            return Err(FileFail::Msg(format!(
                "restored {total} bytes but the file has {}",
                f.size
            )));
        }
        let got: ContentHash = hasher.finalize();
        if got != expected {
            return Err(FileFail::Msg(
                "the restored content does not match the file's content hash".into(),
            ));
        }
        Ok(())
    }
}

/// Reads a framed blob stream, calling `each` for every blob in order. Checks that the stream
/// holds exactly `ids`, in order.
fn read_stream<R: Read>(
    r: &mut R,
    ids: &[BlobId],
    mut each: impl FnMut(&BlobId, &[u8], &CipherHash) -> Result<(), FileFail>,
) -> Result<(), FileFail> {
    let mut head = [0u8; STREAM_HEADER_LEN];
    r.read_exact(&mut head)?;
    keepsake_common::framing::StreamHeader::decode(&head)
        .map_err(|e| FileFail::Msg(format!("blob stream: {e}")))?;
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
                each(&h.blob_id, &buf, &h.cipher_hash)?;
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
    Ok(())
}

/// File names the target operating system can hold, and the safe names given to those it cannot.
///
/// The rules are plain data ([`NameRules`]), independent of the machine the code runs on, so the
/// Windows rules are tested everywhere; a restore uses [`NameRules::native`].
pub mod names {
    use std::path::PathBuf;

    use keepsake_common::path::{validate_wire_pair, wire_path_bytes, wire_to_os_path};

    /// Which file-name rules apply.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum NameRules {
        /// Any name without '/' and NUL (Linux, macOS, BSD; NAS file systems).
        Unix,
        /// Windows (NTFS, exFAT as Windows mounts them): no reserved device names, none of
        /// `<>:"|?*\` or control characters, no trailing dot or space.
        Windows,
    }

    impl NameRules {
        /// The rules of the operating system this runs on.
        pub fn native() -> NameRules {
            if cfg!(windows) {
                NameRules::Windows
            } else {
                NameRules::Unix
            }
        }
    }

    /// Device names Windows reserves in every folder, with or without an extension.
    const WINDOWS_RESERVED: &[&str] = &[
        "CON",
        "PRN",
        "AUX",
        "NUL",
        "COM1",
        "COM2",
        "COM3",
        "COM4",
        "COM5",
        "COM6",
        "COM7",
        "COM8",
        "COM9",
        "COM\u{b9}",
        "COM\u{b2}",
        "COM\u{b3}",
        "LPT1",
        "LPT2",
        "LPT3",
        "LPT4",
        "LPT5",
        "LPT6",
        "LPT7",
        "LPT8",
        "LPT9",
        "LPT\u{b9}",
        "LPT\u{b2}",
        "LPT\u{b3}",
    ];

    /// Characters Windows refuses in a name (besides control characters).
    const WINDOWS_FORBIDDEN: &[char] = &['<', '>', ':', '"', '|', '?', '*', '\\', '/'];

    fn forbidden_char(c: char, rules: NameRules) -> bool {
        match rules {
            NameRules::Unix => c == '/' || c == '\0',
            NameRules::Windows => (c as u32) < 0x20 || WINDOWS_FORBIDDEN.contains(&c),
        }
    }

    fn windows_reserved(name: &str) -> bool {
        // "CON", "con.txt", "Con .jpg" and "CON.tar.gz" all name the console device.
        let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
        WINDOWS_RESERVED
            .iter()
            .any(|r| r.eq_ignore_ascii_case(stem))
    }

    /// Why `name` cannot be a file name under `rules`; `None` when it can.
    pub fn name_problem(name: &str, rules: NameRules) -> Option<&'static str> {
        if name.is_empty() || name == "." || name == ".." {
            return Some("is empty or a '.'/'..' component");
        }
        if name.chars().any(|c| forbidden_char(c, rules)) {
            return Some(match rules {
                NameRules::Unix => "contains '/' or NUL",
                NameRules::Windows => {
                    "contains a character Windows does not allow (<>:\"|?*\\ or a control character)"
                }
            });
        }
        if rules == NameRules::Windows {
            if name.ends_with('.') || name.ends_with(' ') {
                return Some("ends with a dot or a space (Windows drops them)");
            }
            if windows_reserved(name) {
                return Some(
                    "is a device name Windows reserves (CON, PRN, AUX, NUL, COM1-9, LPT1-9)",
                );
            }
        }
        None
    }

    /// The safe form of `shown` (a name as displayed), tagged with a short hash of the original
    /// bytes so that different originals never end up under one name: forbidden characters
    /// become '_', trailing dots and spaces become '_', and `~` plus six hex digits go before the
    /// extension (`Anna?.jpg` → `Anna_~1f2e3d.jpg`, `CON.txt` → `CON~a1b2c3.txt`), so the file
    /// still opens with its application.
    fn tagged(shown: &str, original: &[u8], rules: NameRules) -> String {
        let mut out: String = shown
            .chars()
            .map(|c| if forbidden_char(c, rules) { '_' } else { c })
            .collect();
        let keep = out.trim_end_matches(['.', ' ']).len();
        let dropped = out.len() - keep;
        out.truncate(keep);
        out.extend(std::iter::repeat_n('_', dropped));
        if out.is_empty() {
            out.push('_');
        }
        let tag = blake3::hash(original).to_hex();
        let tag = &tag.as_str()[..6];
        let at = |dot: Option<usize>| match dot {
            Some(dot) if dot > 0 && dot + 1 < out.len() => {
                format!("{}~{tag}{}", &out[..dot], &out[dot..])
            }
            _ => format!("{out}~{tag}"),
        };
        let safe = at(out.rfind('.'));
        if rules == NameRules::Windows && windows_reserved(&safe) {
            // `nul.tar.gz`: Windows reads the name up to the first dot.
            return at(out.find('.'));
        }
        safe
    }

    /// A name valid under `rules` for `name`; `None` when `name` is valid as it is. Pure: the
    /// same name always maps to the same safe name, and the safe name is itself valid.
    pub fn safe_name(name: &str, rules: NameRules) -> Option<String> {
        name_problem(name, rules)?;
        Some(tagged(name, name.as_bytes(), rules))
    }

    /// Where a wire path (`path`, with its exact bytes `raw` for non-UTF-8 names) is restored,
    /// relative to the target, under `rules`; `true` when some component had to be renamed.
    pub fn local_rel_path(
        path: &str,
        raw: Option<&[u8]>,
        rules: NameRules,
    ) -> Result<(PathBuf, bool), String> {
        match rules {
            // Every name the wire format allows (no NUL, no '/' inside a name, no '.'/'..') is
            // valid on Unix, byte for byte.
            NameRules::Unix => wire_to_os_path(path, raw)
                .map(|p| (p, false))
                .map_err(|e| e.to_string()),
            NameRules::Windows => {
                validate_wire_pair(path, raw).map_err(|e| e.to_string())?;
                let mut out = PathBuf::new();
                let mut renamed = false;
                for comp in path.split('/') {
                    let bytes = wire_path_bytes(comp);
                    let name = match std::str::from_utf8(&bytes) {
                        Ok(name) => match safe_name(name, rules) {
                            Some(safe) => {
                                renamed = true;
                                safe
                            }
                            None => name.to_string(),
                        },
                        // Windows names are Unicode: a non-UTF-8 name is shown with U+FFFD and
                        // tagged with its original bytes.
                        Err(_) => {
                            renamed = true;
                            tagged(&String::from_utf8_lossy(&bytes), &bytes, rules)
                        }
                    };
                    out.push(name);
                }
                Ok((out, renamed))
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use NameRules::{Unix, Windows};

        #[test]
        fn windows_reserved_device_names() {
            for n in [
                "CON",
                "con",
                "Con.txt",
                "PRN",
                "AUX.jpg",
                "NUL",
                "nul.tar.gz",
                "COM1",
                "com9.log",
                "LPT1",
                "lpt9",
                "CON .txt",
                "COM\u{b9}",
            ] {
                assert!(name_problem(n, Windows).is_some(), "{n}");
                let safe = safe_name(n, Windows).unwrap();
                assert!(name_problem(&safe, Windows).is_none(), "{n} -> {safe}");
            }
            for n in [
                "CONSOLE.txt",
                "COM10",
                "LPT0",
                "icon.png",
                "NULL",
                "AUXILIARY",
                "com",
            ] {
                assert_eq!(name_problem(n, Windows), None, "{n}");
                assert_eq!(safe_name(n, Windows), None, "{n}");
            }
            let s = safe_name("CON.txt", Windows).unwrap();
            assert!(s.starts_with("CON~") && s.ends_with(".txt"), "{s}");
        }

        #[test]
        fn windows_forbidden_characters_and_trailing_dots() {
            for n in [
                "a<b",
                "a>b",
                "Anna: ceremony",
                "say \"yes\"",
                "a|b",
                "what?.jpg",
                "star*.CR3",
                "back\\slash",
                "tab\there",
                "bell\u{7}",
                "ends.",
                "ends ",
                "dots...",
            ] {
                let safe = safe_name(n, Windows).unwrap_or_else(|| panic!("{n} must be mapped"));
                assert!(name_problem(&safe, Windows).is_none(), "{n} -> {safe}");
                assert!(
                    !safe.contains(['<', '>', ':', '"', '|', '?', '*', '\\', '\t']),
                    "{safe}"
                );
                assert!(!safe.ends_with('.') && !safe.ends_with(' '), "{safe}");
                // Deterministic.
                assert_eq!(safe_name(n, Windows).unwrap(), safe);
            }
            let s = safe_name("what?.jpg", Windows).unwrap();
            assert!(s.starts_with("what_~") && s.ends_with(".jpg"), "{s}");
            assert_eq!(s.len(), "what_~123456.jpg".len());
            // Different originals never share a safe name, even when '_' replaced different
            // characters.
            assert_ne!(
                safe_name("a?b", Windows).unwrap(),
                safe_name("a*b", Windows).unwrap()
            );
            // Names that are fine stay as they are (Unicode included).
            for n in [
                "IMG_0001.CR3",
                ".keepsakeignore",
                "Café Ceremony",
                "a_b",
                "x.y.z",
                "日本",
            ] {
                assert_eq!(safe_name(n, Windows), None, "{n}");
            }
        }

        #[test]
        fn unix_accepts_every_wire_name() {
            for n in [
                "CON",
                "nul.txt",
                "what?.jpg",
                "Anna: ceremony",
                "ends.",
                "ends ",
                "a|b",
                "tab\there",
            ] {
                assert_eq!(name_problem(n, Unix), None, "{n}");
                assert_eq!(safe_name(n, Unix), None, "{n}");
            }
            assert!(name_problem("a/b", Unix).is_some());
            assert!(name_problem("a\0b", Unix).is_some());
            assert_eq!(safe_name("a/b", Unix).unwrap().find('/'), None);
        }

        #[test]
        fn local_paths_map_each_component() {
            let (p, renamed) = local_rel_path("Weddings/CON/aux.txt", None, Windows).unwrap();
            assert!(renamed);
            let comps: Vec<String> = p.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            assert_eq!(comps.len(), 3);
            assert_eq!(comps[0], "Weddings");
            assert!(comps[1].starts_with("CON~"), "{comps:?}");
            assert!(comps[2].starts_with("aux~") && comps[2].ends_with(".txt"));
            let (p, renamed) = local_rel_path("DCIM/IMG_0001.CR3", None, Windows).unwrap();
            assert!(!renamed);
            assert_eq!(p, PathBuf::from("DCIM").join("IMG_0001.CR3"));
            // A non-UTF-8 name (shown with an escape, exact bytes in raw) gets a tagged name.
            let (shown, raw) = keepsake_common::path::bytes_to_wire(b"Caf\xe9");
            assert!(raw);
            let (p, renamed) = local_rel_path(&shown, Some(b"Caf\xe9"), Windows).unwrap();
            assert!(renamed);
            let name = p.to_string_lossy().into_owned();
            assert!(name.starts_with("Caf\u{fffd}~"), "{name}");
            let (p2, _) = local_rel_path(
                &keepsake_common::path::bytes_to_wire(b"Caf\xe8").0,
                Some(b"Caf\xe8"),
                Windows,
            )
            .unwrap();
            assert_ne!(p, p2);
            // Traversal is refused whatever the rules.
            for rules in [Unix, Windows] {
                assert!(local_rel_path("../x", None, rules).is_err());
                assert!(local_rel_path("a/../../x", None, rules).is_err());
            }
            // Unix keeps names byte for byte.
            let (p, renamed) = local_rel_path("Weddings/CON/what?.jpg", None, Unix).unwrap();
            assert!(!renamed);
            assert_eq!(p, PathBuf::from("Weddings/CON/what?.jpg"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_join_stays_inside_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let ok = safe_join(&root, Path::new("a/b/c.txt"), true).unwrap();
        assert_eq!(ok, root.join("a/b/c.txt"));
        assert!(root.join("a/b").is_dir());
        for bad in ["../x", "a/../../x", "/etc/passwd", "./a"] {
            assert!(safe_join(&root, Path::new(bad), true).is_err(), "{bad}");
        }
        assert!(!root.parent().unwrap().join("x").exists());
    }

    #[cfg(unix)]
    #[test]
    fn safe_join_refuses_a_symlinked_parent() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("evil")).unwrap();
        let err = safe_join(&root, Path::new("evil/payload.txt"), true).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
        // A file where a folder is expected is refused too.
        fs::write(root.join("file"), b"x").unwrap();
        assert!(safe_join(&root, Path::new("file/x"), true).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
