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
//!
//! Crash behaviour: the scanner only reads; a crash mid-walk loses nothing, and what it had found
//! is the planner's to keep (see `detect::plan`).

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use walkdir::{DirEntry, WalkDir};

use crate::detect::Stat;
use crate::exclude::{DirRules, MatchedRule, Matcher};

mod entry;
mod fs_meta;

use crate::relpath::{os_bytes, RelPath};
pub use entry::*;
use fs_meta::*;

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
            root_dev: Stat::of(&md).device,
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
            self.root_dev = Stat::of(&md).device;
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
                .push_back(ScanEvent::Entry(entry_of(meta, rel, EntryKind::Dir, None)));
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
                    let e = entry_of(meta, rel, EntryKind::Symlink, Some(target));
                    self.queue.push_back(ScanEvent::Entry(e));
                }
                Err(e) => self.issue(ScanIssue::from_io(rel, IssueKind::ReadLink, &e)),
            }
            return;
        }
        if ft == FileKind::Special(SkipReason::Fifo) && !self.opts.follow_symlinks {
            self.stats.fifos += 1;
            let e = entry_of(meta, rel, EntryKind::Fifo, None);
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
        self.queue
            .push_back(ScanEvent::Entry(entry_of(meta, rel, EntryKind::File, None)));
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
    fn lstat(&self, dent: &DirEntry, depth: usize) -> io::Result<(FileKind, Stat)> {
        if let Some(Some(dir)) = depth.checked_sub(1).and_then(|d| self.dir_fds.get(d)) {
            return dir.lstat_at(dent.file_name());
        }
        let md = dent.metadata().map_err(|e| match e.into_io_error() {
            Some(io) => io,
            None => io::Error::other("cannot read metadata"),
        })?;
        Ok((FileKind::of(&md.file_type()), Stat::of(&md)))
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
