//! The scanner: walks one source root, applies the exclusion matcher and yields what it finds.
//!
//! * Streaming: [`Scanner`] is an iterator of [`ScanEvent`]s; it holds only the stack of open
//!   folders (and the listing of the folder being read, which is sorted), never the tree.
//! * Order: within a folder, entries are sorted by name bytes, with a folder sorting as if its
//!   name ended in `/`. The sequence of [`catalog_key`]s the scanner yields is then strictly
//!   increasing in byte order — the order SQLite sorts BLOBs in — so the planner can merge the
//!   walk with the catalog in one pass without a lookup per file.
//! * Pruning: an excluded folder (pattern or marker file) is not descended into.
//! * Symlinks are recorded with their target and not followed (unless configured).
//! * Named pipes are recorded (restore recreates them) and never opened; sockets and devices are
//!   reported as skipped, with the reason, and never opened.
//! * Other file systems are not entered unless configured (mount points are reported).
//! * Errors (unreadable folder, failed `lstat`, unreadable file when probing) are events with
//!   the path and the OS error; they are never fatal.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use walkdir::{DirEntry, WalkDir};

use crate::exclude::{DirRules, MatchedRule, Matcher};
use crate::relpath::{os_bytes, RelPath};

/// What kind of entry the catalog records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Folder.
    Dir,
    /// Symbolic link (recorded with its target, not followed).
    Symlink,
    /// Named pipe (recorded with its mode; it has no content and is never opened).
    Fifo,
}

impl EntryKind {
    /// Stable integer code used in the catalog.
    pub fn code(self) -> i64 {
        match self {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
            EntryKind::Fifo => 3,
        }
    }

    /// Inverse of [`EntryKind::code`].
    pub fn from_code(code: i64) -> Option<EntryKind> {
        match code {
            0 => Some(EntryKind::File),
            1 => Some(EntryKind::Dir),
            2 => Some(EntryKind::Symlink),
            3 => Some(EntryKind::Fifo),
            _ => None,
        }
    }
}

/// The catalog key of a path: its bytes, plus a trailing `/` for a folder. Keys of everything
/// the scanner yields increase strictly in byte order.
pub fn catalog_key(rel: &RelPath, is_dir: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(rel.as_bytes().len() + 1);
    k.extend_from_slice(rel.as_bytes());
    if is_dir {
        k.push(b'/');
    }
    k
}

/// One file, folder or symlink the scanner saw, with the metadata used to detect changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the source root (raw bytes).
    pub rel: RelPath,
    /// File, folder or symlink.
    pub kind: EntryKind,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time (Unix `ctime`), nanoseconds since the epoch; 0 where unknown.
    pub ctime_ns: i64,
    /// Inode number (0 where the platform has none).
    pub inode: u64,
    /// Device number.
    pub device: u64,
    /// Number of names of the inode (hard links); 1 where the platform has none.
    pub nlink: u64,
    /// Unix mode bits including the file type.
    pub mode: u32,
    /// A symlink's target, raw bytes.
    pub symlink_target: Option<Vec<u8>>,
}

impl Entry {
    /// The catalog key (see [`catalog_key`]).
    pub fn key(&self) -> Vec<u8> {
        catalog_key(&self.rel, self.kind == EntryKind::Dir)
    }
}

/// A path left out by an exclusion rule.
#[derive(Debug, Clone, Serialize)]
pub struct ExcludedEntry {
    /// Relative path.
    #[serde(rename = "path")]
    pub rel: RelPath,
    /// Whether it is a folder (whose content was not walked).
    pub is_dir: bool,
    /// Size of a file (0 for folders: their content is not walked).
    pub size: u64,
    /// The rule that excluded it.
    pub rule: MatchedRule,
}

/// Why an entry was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Named pipe (recorded as an entry, not skipped, unless symlinks are followed into one).
    Fifo,
    /// Unix socket.
    Socket,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Another kind the platform reports.
    Other,
    /// A folder on another file system (not entered unless configured).
    MountPoint,
}

impl SkipReason {
    /// Why such an entry is not backed up, in words.
    pub fn explain(self) -> &'static str {
        match self {
            SkipReason::Fifo => "a named pipe reached through a followed symlink: not opened",
            SkipReason::Socket => {
                "a Unix socket: it exists only while a program runs and holds no data"
            }
            SkipReason::CharDevice => {
                "a character device: a window on hardware, not a file to keep"
            }
            SkipReason::BlockDevice => {
                "a block device: a whole disk or partition, not a file to keep"
            }
            SkipReason::Other => "a kind of file this system reports but Keepsake cannot keep",
            SkipReason::MountPoint => {
                "another file system mounted here (not entered unless configured)"
            }
        }
    }
}

/// An entry that is neither backed up nor excluded by a rule.
#[derive(Debug, Clone, Serialize)]
pub struct SkippedEntry {
    /// Relative path.
    #[serde(rename = "path")]
    pub rel: RelPath,
    /// Why.
    pub reason: SkipReason,
    /// The reason in words.
    pub detail: &'static str,
}

/// What went wrong with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// A folder could not be listed (its content is unknown).
    ReadDir,
    /// `lstat` failed.
    Stat,
    /// A symlink's target could not be read.
    ReadLink,
    /// The file cannot be opened for reading (found by probing).
    Unreadable,
    /// The entry changed type between listing and `lstat`.
    ChangedDuringScan,
    /// An ignore file or marker could not be read, or has an invalid pattern.
    Rules,
}

impl IssueKind {
    /// Whether the issue leaves the state of the path (and, for a folder, its subtree)
    /// unknown, so the catalog must not treat what it had there as deleted.
    pub fn hides_entries(self) -> bool {
        matches!(
            self,
            IssueKind::ReadDir
                | IssueKind::Stat
                | IssueKind::ReadLink
                | IssueKind::ChangedDuringScan
        )
    }
}

/// A non-fatal scan error.
#[derive(Debug, Clone, Serialize)]
pub struct ScanIssue {
    /// The path concerned.
    #[serde(rename = "path")]
    pub rel: RelPath,
    /// What failed.
    pub kind: IssueKind,
    /// The error text (including the OS error).
    pub message: String,
    /// The raw OS error number, if any.
    pub os_error: Option<i32>,
}

impl ScanIssue {
    fn from_io(rel: RelPath, kind: IssueKind, e: &io::Error) -> ScanIssue {
        ScanIssue {
            rel,
            kind,
            message: e.to_string(),
            os_error: e.raw_os_error(),
        }
    }
}

/// One thing the scanner reports.
#[derive(Debug, Clone)]
pub enum ScanEvent {
    /// A file, folder or symlink to back up.
    Entry(Entry),
    /// Left out by a rule.
    Excluded(ExcludedEntry),
    /// A special file or mount point, not backed up.
    Skipped(SkippedEntry),
    /// An error (never fatal).
    Issue(ScanIssue),
}

/// Count and bytes for one exclusion rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTally {
    /// Entries excluded (a folder counts once; its content is not walked).
    pub count: u64,
    /// Bytes of excluded files.
    pub bytes: u64,
}

/// Scan counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Regular files yielded.
    pub files: u64,
    /// Folders yielded (not counting the root).
    pub dirs: u64,
    /// Symlinks yielded.
    pub symlinks: u64,
    /// Named pipes yielded.
    #[serde(default)]
    pub fifos: u64,
    /// Bytes of the regular files yielded.
    pub bytes: u64,
    /// Entries excluded by rules.
    pub excluded: u64,
    /// Bytes of excluded files.
    pub excluded_bytes: u64,
    /// Exclusions per rule ([`MatchedRule::label`]).
    pub excluded_by_rule: BTreeMap<String, RuleTally>,
    /// Special files and mount points skipped.
    pub skipped: u64,
    /// Errors.
    pub issues: u64,
}

impl ScanStats {
    /// Adds `other` into `self` (used to continue a resumed scan's counters).
    pub fn merge(&mut self, other: &ScanStats) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.fifos += other.fifos;
        self.bytes += other.bytes;
        self.excluded += other.excluded;
        self.excluded_bytes += other.excluded_bytes;
        for (k, v) in &other.excluded_by_rule {
            let t = self.excluded_by_rule.entry(k.clone()).or_default();
            t.count += v.count;
            t.bytes += v.bytes;
        }
        self.skipped += other.skipped;
        self.issues += other.issues;
    }
}

/// Scanner options.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Descend into folders on other file systems (default: no, they are reported).
    pub cross_filesystems: bool,
    /// Follow symlinks instead of recording them (default: no). Loops are reported as errors.
    pub follow_symlinks: bool,
    /// Open every regular file once to report unreadable files (default: no; the planner
    /// probes only the files that need backing up).
    pub probe_readable: bool,
    /// Resume after this catalog key: entries with keys up to it are not yielded and folders
    /// entirely before it are not walked.
    pub resume_after: Option<Vec<u8>>,
}

/// The scan cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The root cannot be examined.
    #[error("cannot scan {path}: {source}")]
    Root {
        /// The root.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The root is not a folder.
    #[error("cannot scan {path}: not a folder")]
    NotADirectory {
        /// The root.
        path: String,
    },
}

/// Opens `path` for reading and closes it again, without following a symlink and without
/// blocking on a fifo that appeared in its place.
pub fn probe_readable(path: &Path) -> io::Result<()> {
    let mut o = fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW);
    }
    o.open(path).map(drop)
}

/// A streaming scan of one source root.
pub struct Scanner {
    root: PathBuf,
    root_bytes_len: usize,
    matcher: Arc<Matcher>,
    opts: ScanOptions,
    it: walkdir::IntoIter,
    chain: Vec<Arc<DirRules>>,
    /// Open handles of the folders on `chain` (same index), to `lstat` entries relative to
    /// their folder instead of resolving the full path again for every file.
    dir_fds: Vec<Option<DirHandle>>,
    root_dev: u64,
    stats: ScanStats,
    queue: VecDeque<ScanEvent>,
    done: bool,
    /// Debug builds check that keys strictly increase.
    #[cfg(debug_assertions)]
    last_key: Option<Vec<u8>>,
}

impl Scanner {
    /// Prepares a scan of `root` (which must be a folder) with `matcher`'s rules.
    pub fn new(
        root: &Path,
        matcher: Arc<Matcher>,
        opts: ScanOptions,
    ) -> Result<Scanner, ScanError> {
        let md = fs::metadata(root).map_err(|e| ScanError::Root {
            path: root.display().to_string(),
            source: e,
        })?;
        if !md.is_dir() {
            return Err(ScanError::NotADirectory {
                path: root.display().to_string(),
            });
        }
        let follow = opts.follow_symlinks;
        let it = WalkDir::new(root)
            .follow_links(follow)
            .same_file_system(false)
            .sort_by(move |a, b| compare_entries(a, b, follow))
            .into_iter();
        Ok(Scanner {
            root: root.to_path_buf(),
            root_bytes_len: os_bytes(root.as_os_str()).len(),
            matcher,
            opts,
            it,
            chain: Vec::new(),
            dir_fds: Vec::new(),
            root_dev: meta_of(&md).device,
            stats: ScanStats::default(),
            queue: VecDeque::new(),
            done: false,
            #[cfg(debug_assertions)]
            last_key: None,
        })
    }

    /// Skips everything up to and including catalog key `key` (see
    /// [`ScanOptions::resume_after`]). Call before the first `next()`.
    pub fn set_resume_after(&mut self, key: Vec<u8>) {
        self.opts.resume_after = Some(key);
    }

    /// The source root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The matcher in use.
    pub fn matcher(&self) -> &Arc<Matcher> {
        &self.matcher
    }

    /// Counters so far (final once the iterator is exhausted).
    pub fn stats(&self) -> &ScanStats {
        &self.stats
    }

    fn rel_of(&self, path: &Path) -> Option<RelPath> {
        #[cfg(unix)]
        {
            let b = os_bytes(path.as_os_str());
            let rest = b.get(self.root_bytes_len..)?;
            let rest = rest.strip_prefix(b"/").unwrap_or(rest);
            RelPath::from_bytes(rest.to_vec()).ok()
        }
        #[cfg(not(unix))]
        {
            let _ = self.root_bytes_len;
            RelPath::strip_root(&self.root, path).ok()
        }
    }

    fn issue(&mut self, issue: ScanIssue) {
        self.stats.issues += 1;
        tracing::debug!(path = %issue.rel, kind = ?issue.kind, "{}", issue.message);
        self.queue.push_back(ScanEvent::Issue(issue));
    }

    fn excluded(&mut self, rel: RelPath, is_dir: bool, size: u64, rule: MatchedRule) {
        self.stats.excluded += 1;
        self.stats.excluded_bytes += size;
        let t = self.stats.excluded_by_rule.entry(rule.label()).or_default();
        t.count += 1;
        t.bytes += size;
        self.queue.push_back(ScanEvent::Excluded(ExcludedEntry {
            rel,
            is_dir,
            size,
            rule,
        }));
    }

    fn skipped(&mut self, rel: RelPath, reason: SkipReason) {
        self.stats.skipped += 1;
        self.queue.push_back(ScanEvent::Skipped(SkippedEntry {
            rel,
            reason,
            detail: reason.explain(),
        }));
    }

    fn load_rules(&mut self, rel: &RelPath) -> Arc<DirRules> {
        let (rules, problems) = self.matcher.load_dir_rules(rel);
        for p in problems {
            let os_error = match &p {
                crate::exclude::ExcludeError::ReadRules { source, .. }
                | crate::exclude::ExcludeError::Marker { source, .. } => source.raw_os_error(),
                _ => None,
            };
            self.issue(ScanIssue {
                rel: rel.clone(),
                kind: IssueKind::Rules,
                message: p.to_string(),
                os_error,
            });
        }
        Arc::new(rules)
    }

    fn handle_root(&mut self, dent: &DirEntry) {
        let root = RelPath::root();
        let rules = self.load_rules(&root);
        if let Some(m) = rules.marker().cloned() {
            self.excluded(root, true, 0, m);
            self.it.skip_current_dir();
            return;
        }
        if let Ok(md) = dent.metadata() {
            self.root_dev = meta_of(&md).device;
        }
        self.chain.clear();
        self.dir_fds.clear();
        self.push_dir(rules, dent.path());
    }

    fn handle_error(&mut self, err: walkdir::Error) {
        let rel = match err.path() {
            Some(p) => self.rel_of(p),
            None => None,
        }
        .or_else(|| self.chain.last().map(|d| d.dir().clone()))
        .unwrap_or_default();
        let (message, os_error) = match (err.loop_ancestor(), err.io_error()) {
            (Some(anc), _) => (format!("symlink loop back to {}", anc.display()), None),
            (None, Some(io)) => (io.to_string(), io.raw_os_error()),
            (None, None) => (err.to_string(), None),
        };
        self.issue(ScanIssue {
            rel,
            kind: IssueKind::ReadDir,
            message,
            os_error,
        });
    }

    fn handle_entry(&mut self, dent: DirEntry) {
        let depth = dent.depth();
        if depth == 0 {
            self.handle_root(&dent);
            return;
        }
        let walk_is_dir = dent.file_type().is_dir();
        // walkdir has opened (pushed) every folder it yields; skipping it pops it.
        let pushed = walk_is_dir;
        let Some(rel) = self.rel_of(dent.path()) else {
            let e = io::Error::new(io::ErrorKind::InvalidData, "path outside the source root");
            let rel = self
                .chain
                .last()
                .map(|d| d.dir().clone())
                .unwrap_or_default();
            self.issue(ScanIssue::from_io(rel, IssueKind::Stat, &e));
            if pushed {
                self.it.skip_current_dir();
            }
            return;
        };
        self.chain.truncate(depth);
        self.dir_fds.truncate(depth);
        if let Some(ckpt) = &self.opts.resume_after {
            let key = catalog_key(&rel, walk_is_dir);
            if walk_is_dir && ckpt.starts_with(&key) {
                // The previous run stopped inside this folder: go in without re-reporting it.
                let rules = self.load_rules_quiet(&rel);
                self.push_dir(rules, dent.path());
                return;
            }
            if key.as_slice() <= ckpt.as_slice() {
                if pushed {
                    self.it.skip_current_dir();
                }
                return;
            }
        }
        #[cfg(debug_assertions)]
        {
            let key = catalog_key(&rel, walk_is_dir);
            assert!(
                self.last_key.as_ref().is_none_or(|k| k < &key),
                "scanner order violated at {rel}"
            );
            self.last_key = Some(key);
        }

        let (ft, meta) = match self.lstat(&dent, depth) {
            Ok(x) => x,
            Err(e) => {
                if pushed {
                    self.it.skip_current_dir();
                }
                if e.kind() == io::ErrorKind::NotFound {
                    tracing::debug!(path = %rel, "vanished during the scan");
                } else {
                    self.issue(ScanIssue::from_io(rel, IssueKind::Stat, &e));
                }
                return;
            }
        };
        if ft.is_dir() != walk_is_dir {
            if pushed {
                self.it.skip_current_dir();
            }
            self.issue(ScanIssue {
                rel,
                kind: IssueKind::ChangedDuringScan,
                message: "changed type while being scanned".to_string(),
                os_error: None,
            });
            return;
        }

        if ft.is_dir() {
            if let Some(m) = self.matcher.match_patterns(&self.chain, &rel, true) {
                if !m.negated {
                    self.it.skip_current_dir();
                    self.excluded(rel, true, 0, m);
                    return;
                }
            }
            if !self.opts.cross_filesystems && meta.device != self.root_dev {
                self.it.skip_current_dir();
                self.skipped(rel, SkipReason::MountPoint);
                return;
            }
            let rules = self.load_rules(&rel);
            if let Some(m) = rules.marker().cloned() {
                self.it.skip_current_dir();
                self.excluded(rel, true, 0, m);
                return;
            }
            self.push_dir(rules, dent.path());
            self.stats.dirs += 1;
            self.queue
                .push_back(ScanEvent::Entry(meta.into_entry(rel, EntryKind::Dir, None)));
            return;
        }

        if let Some(m) = self.matcher.match_patterns(&self.chain, &rel, false) {
            if !m.negated {
                let size = if ft.is_file() { meta.size } else { 0 };
                self.excluded(rel, false, size, m);
                return;
            }
        }
        if ft.is_symlink() {
            match fs::read_link(dent.path()) {
                Ok(target) => {
                    let target = os_bytes(target.as_os_str()).into_owned();
                    self.stats.symlinks += 1;
                    let e = meta.into_entry(rel, EntryKind::Symlink, Some(target));
                    self.queue.push_back(ScanEvent::Entry(e));
                }
                Err(e) => self.issue(ScanIssue::from_io(rel, IssueKind::ReadLink, &e)),
            }
            return;
        }
        if ft == FileKind::Special(SkipReason::Fifo) && !self.opts.follow_symlinks {
            self.stats.fifos += 1;
            let e = meta.into_entry(rel, EntryKind::Fifo, None);
            self.queue.push_back(ScanEvent::Entry(e));
            return;
        }
        if !ft.is_file() {
            let reason = ft.special().unwrap_or(SkipReason::Other);
            self.skipped(rel, reason);
            return;
        }
        if let Some(rule) = self.matcher.size_rule(meta.size) {
            self.excluded(rel, false, meta.size, rule);
            return;
        }
        if self.opts.probe_readable {
            if let Err(e) = probe_readable(dent.path()) {
                self.issue(ScanIssue::from_io(rel.clone(), IssueKind::Unreadable, &e));
            }
        }
        self.stats.files += 1;
        self.stats.bytes += meta.size;
        self.queue.push_back(ScanEvent::Entry(meta.into_entry(
            rel,
            EntryKind::File,
            None,
        )));
    }

    fn push_dir(&mut self, rules: Arc<DirRules>, path: &Path) {
        self.chain.push(rules);
        self.dir_fds.push(if self.opts.follow_symlinks {
            None
        } else {
            DirHandle::open(path)
        });
    }

    /// `lstat` of an entry: relative to its folder's handle where possible.
    fn lstat(&self, dent: &DirEntry, depth: usize) -> io::Result<(FileKind, Meta)> {
        if let Some(Some(dir)) = depth.checked_sub(1).and_then(|d| self.dir_fds.get(d)) {
            return dir.lstat_at(dent.file_name());
        }
        let md = dent.metadata().map_err(|e| match e.into_io_error() {
            Some(io) => io,
            None => io::Error::other("cannot read metadata"),
        })?;
        Ok((FileKind::of(&md.file_type()), meta_of(&md)))
    }

    fn load_rules_quiet(&mut self, rel: &RelPath) -> Arc<DirRules> {
        Arc::new(self.matcher.load_dir_rules(rel).0)
    }
}

impl Iterator for Scanner {
    type Item = ScanEvent;

    fn next(&mut self) -> Option<ScanEvent> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            if self.done {
                return None;
            }
            match self.it.next() {
                None => self.done = true,
                Some(Err(e)) => self.handle_error(e),
                Some(Ok(dent)) => self.handle_entry(dent),
            }
        }
    }
}

/// Sort order within a folder: name bytes, with a folder's name followed by `/`.
///
/// Why this makes the walk's catalog keys strictly increasing: every key under a sibling `s`
/// starts with `s`'s sort key `k(s)` (its name, plus `/` if it is a folder), and the walk is
/// depth-first. For siblings with `k(a) < k(b)`, either the first differing byte is inside both
/// sort keys — then every key under `a` is below every key under `b` — or `k(a)` is a proper
/// prefix of `k(b)`; then `k(a)` cannot end in `/` (names hold no `/`), so `a` is not a folder,
/// its only key is `k(a)` itself, and a prefix sorts first. A folder's own key `D/` precedes the
/// keys of its content, which all extend it.
fn compare_entries(a: &DirEntry, b: &DirEntry, follow: bool) -> Ordering {
    let an = os_bytes(a.file_name());
    let bn = os_bytes(b.file_name());
    let slash = |d: &DirEntry| is_dir_for_order(d, follow).then_some(&b'/');
    an.iter().chain(slash(a)).cmp(bn.iter().chain(slash(b)))
}

fn is_dir_for_order(d: &DirEntry, follow: bool) -> bool {
    if d.file_type().is_dir() {
        return true;
    }
    // When following symlinks, a link to a folder is walked as a folder.
    follow
        && d.file_type().is_symlink()
        && fs::metadata(d.path()).map(|m| m.is_dir()).unwrap_or(false)
}

/// The type of an entry as `lstat` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Dir,
    File,
    Symlink,
    Special(SkipReason),
}

impl FileKind {
    fn of(ft: &fs::FileType) -> FileKind {
        if ft.is_dir() {
            return FileKind::Dir;
        }
        if ft.is_file() {
            return FileKind::File;
        }
        if ft.is_symlink() {
            return FileKind::Symlink;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                return FileKind::Special(SkipReason::Fifo);
            }
            if ft.is_socket() {
                return FileKind::Special(SkipReason::Socket);
            }
            if ft.is_char_device() {
                return FileKind::Special(SkipReason::CharDevice);
            }
            if ft.is_block_device() {
                return FileKind::Special(SkipReason::BlockDevice);
            }
        }
        FileKind::Special(SkipReason::Other)
    }

    fn is_dir(self) -> bool {
        self == FileKind::Dir
    }
    fn is_file(self) -> bool {
        self == FileKind::File
    }
    fn is_symlink(self) -> bool {
        self == FileKind::Symlink
    }
    fn special(self) -> Option<SkipReason> {
        match self {
            FileKind::Special(r) => Some(r),
            _ => None,
        }
    }
}

/// An open folder, for `fstatat` of its entries by name.
#[cfg(unix)]
#[derive(Debug)]
struct DirHandle(std::os::fd::OwnedFd);

#[cfg(unix)]
impl DirHandle {
    fn open(path: &Path) -> Option<DirHandle> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let c = std::ffi::CString::new(os_bytes(path.as_os_str()).into_owned()).ok()?;
        #[cfg(target_os = "linux")]
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        #[cfg(not(target_os = "linux"))]
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `c` is a valid NUL-terminated path; the returned descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a freshly opened descriptor nobody else owns.
        Some(DirHandle(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    #[allow(clippy::unnecessary_cast)] // field types differ between platforms
    fn lstat_at(&self, name: &std::ffi::OsStr) -> io::Result<(FileKind, Meta)> {
        use std::os::fd::AsRawFd;
        let c = std::ffi::CString::new(os_bytes(name).into_owned())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in file name"))?;
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, valid NUL-terminated name, `st` is writable.
        let rc = unsafe {
            libc::fstatat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let kind = match (st.st_mode as libc::mode_t) & libc::S_IFMT {
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFREG => FileKind::File,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Special(SkipReason::Fifo),
            libc::S_IFSOCK => FileKind::Special(SkipReason::Socket),
            libc::S_IFCHR => FileKind::Special(SkipReason::CharDevice),
            libc::S_IFBLK => FileKind::Special(SkipReason::BlockDevice),
            _ => FileKind::Special(SkipReason::Other),
        };
        let meta = Meta {
            size: st.st_size as u64,
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
            inode: st.st_ino as u64,
            device: st.st_dev as u64,
            nlink: st.st_nlink as u64,
            mode: st.st_mode as u32,
        };
        Ok((kind, meta))
    }
}

#[cfg(not(unix))]
#[derive(Debug)]
struct DirHandle;

#[cfg(not(unix))]
impl DirHandle {
    fn open(_path: &Path) -> Option<DirHandle> {
        None
    }
    fn lstat_at(&self, _name: &std::ffi::OsStr) -> io::Result<(FileKind, Meta)> {
        Err(io::Error::other("not supported"))
    }
}

/// The change-detection metadata of one `lstat`.
#[derive(Debug, Clone, Copy)]
struct Meta {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    device: u64,
    nlink: u64,
    mode: u32,
}

impl Meta {
    fn into_entry(self, rel: RelPath, kind: EntryKind, symlink_target: Option<Vec<u8>>) -> Entry {
        Entry {
            rel,
            kind,
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            device: self.device,
            nlink: self.nlink,
            mode: self.mode,
            symlink_target,
        }
    }
}

fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

#[cfg(unix)]
fn meta_of(md: &fs::Metadata) -> Meta {
    use std::os::unix::fs::MetadataExt;
    Meta {
        size: md.size(),
        mtime_ns: ns(md.mtime(), md.mtime_nsec()),
        ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        inode: md.ino(),
        device: md.dev(),
        nlink: md.nlink(),
        mode: md.mode(),
    }
}

#[cfg(not(unix))]
fn meta_of(md: &fs::Metadata) -> Meta {
    fn to_ns(t: io::Result<std::time::SystemTime>) -> i64 {
        match t {
            Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
                Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
            },
            Err(_) => 0,
        }
    }
    Meta {
        size: md.len(),
        mtime_ns: to_ns(md.modified()),
        ctime_ns: to_ns(md.created()),
        inode: 0,
        device: 0,
        nlink: 1,
        mode: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_codes_roundtrip() {
        for k in [
            EntryKind::File,
            EntryKind::Dir,
            EntryKind::Symlink,
            EntryKind::Fifo,
        ] {
            assert_eq!(EntryKind::from_code(k.code()), Some(k));
        }
        assert_eq!(EntryKind::from_code(9), None);
    }

    #[test]
    fn keys_of_dirs_end_in_slash() {
        let r = RelPath::from_bytes(b"a/b".to_vec()).unwrap();
        assert_eq!(catalog_key(&r, true), b"a/b/".to_vec());
        assert_eq!(catalog_key(&r, false), b"a/b".to_vec());
    }
}
