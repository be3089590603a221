//! Helpers shared by the agent's integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keepsake_agent::detect::scan::{ScanEvent, ScanOptions, ScanStats, Scanner};
use keepsake_agent::exclude::{ExcludeConfig, Matcher};

/// Writes `content` to `root/rel`, creating parent folders.
pub fn write(root: &Path, rel: &str, content: &[u8]) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, content).unwrap();
    p
}

/// Creates `root/rel` and its parents.
pub fn mkdir(root: &Path, rel: &str) -> PathBuf {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap();
    p
}

/// A matcher for `root`.
pub fn matcher(root: &Path, config: ExcludeConfig) -> Arc<Matcher> {
    Arc::new(Matcher::new(root, &config))
}

/// Runs a scan to the end.
pub fn scan_all(root: &Path, m: Arc<Matcher>, opts: ScanOptions) -> (Vec<ScanEvent>, ScanStats) {
    let mut s = Scanner::new(root, m, opts).unwrap();
    let events: Vec<ScanEvent> = s.by_ref().collect();
    (events, s.stats().clone())
}

/// Paths (with a trailing `/` for folders) of the entries yielded.
pub fn entry_paths(events: &[ScanEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ScanEvent::Entry(e) => Some(String::from_utf8_lossy(&e.key()).into_owned()),
            _ => None,
        })
        .collect()
}

/// Whether the tests run as root (where permission bits do not deny reads).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` with file-system permission checks of an unprivileged user. As root this switches
/// the *calling thread's* file-system uid/gid to 65534 (Linux `setfsuid`/`setfsgid` are
/// per-thread and drop the DAC-override capabilities while non-zero), and restores them after.
/// As a normal user it just runs `f`.
#[cfg(target_os = "linux")]
pub fn unprivileged<T>(f: impl FnOnce() -> T) -> T {
    if !is_root() {
        return f();
    }
    unprivileged_linux(f)
}

/// Elsewhere only a normal user can run these tests.
#[cfg(not(target_os = "linux"))]
pub fn unprivileged<T>(f: impl FnOnce() -> T) -> T {
    assert!(
        !is_root(),
        "tests needing unreadable files run as root only on Linux (setfsuid)"
    );
    f()
}

#[cfg(target_os = "linux")]
fn unprivileged_linux<T>(f: impl FnOnce() -> T) -> T {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: plain syscalls on the current thread.
            unsafe {
                libc::setfsuid(0);
                libc::setfsgid(0);
            }
        }
    }
    // SAFETY: plain syscalls on the current thread.
    unsafe {
        libc::setfsgid(65534);
        libc::setfsuid(65534);
    }
    let _restore = Restore;
    f()
}

/// Makes `dir` traversable by everybody (tempfile creates 0700 folders).
pub fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

use keepsake_agent::catalog::{BlobRef, Catalog, CommitEntry, FileState, SourceId};
use keepsake_agent::detect::plan::{self, NoObserver, PlanObserver, PlanOptions, PlanReport};

/// Rule config without the built-in defaults.
pub fn no_defaults() -> ExcludeConfig {
    ExcludeConfig {
        use_defaults: false,
        ..ExcludeConfig::default()
    }
}

/// Plans `root` against `cat` (recording the scan when `update`).
pub fn plan_with(
    cat: &mut Catalog,
    root: &Path,
    update: bool,
    observer: &mut dyn PlanObserver,
) -> PlanReport {
    let opts = PlanOptions {
        update_catalog: update,
        ..PlanOptions::default()
    };
    plan::run(
        cat,
        root,
        matcher(root, ExcludeConfig::default()),
        ScanOptions::default(),
        &opts,
        observer,
    )
    .unwrap()
}

/// [`plan_with`] without an observer.
pub fn plan(cat: &mut Catalog, root: &Path, update: bool) -> PlanReport {
    plan_with(cat, root, update, &mut NoObserver)
}

/// Pretends a backup job committed everything pending (and every pending deletion) as `seq`.
pub fn commit_all(cat: &mut Catalog, source: SourceId, seq: i64) -> usize {
    let mut entries = Vec::new();
    let mut after = Vec::new();
    loop {
        let rows = cat.records_after(source, &after, 1000).unwrap();
        let Some(last) = rows.last() else { break };
        after = last.key.clone();
        for r in rows {
            match r.state {
                FileState::Committed => {}
                FileState::Deleted => entries.push(CommitEntry::Deletion { key: r.key }),
                _ => entries.push(CommitEntry::Version {
                    key: r.key.clone(),
                    size: r.size,
                    mtime_ns: r.mtime_ns,
                    ctime_ns: r.ctime_ns,
                    inode: r.inode,
                    content_hash: Some([seq as u8; 32]),
                    blobs: vec![BlobRef {
                        id: [seq as u8; 32],
                        len: r.size,
                    }],
                }),
            }
        }
    }
    let n = entries.len();
    cat.record_commit(source, seq, &entries).unwrap();
    n
}
