//! The restore target: its root folder, opened once, and every folder below it reached from the
//! root one component at a time without following a link (on Unix: `openat` with
//! `O_DIRECTORY|O_NOFOLLOW`, missing folders created with `mkdirat` when asked). A component that
//! is a symlink or not a folder is refused ("refusing X: Y is a symlink"), so nothing a
//! recovery point or the target folder holds can make a restore write outside the target.
//!
//! A [`Cursor`] (one per worker) keeps the last folder it opened, so the files of one folder
//! are written through one descriptor, and flushes (`fsync`) a folder it wrote into when it
//! moves to another one and at the end.
//!
//! Files are written under short temporary names ([`temp_name`]: `.ks` + 10 random characters +
//! `.part`, 18 bytes, so a 255-byte destination name still works) and renamed into place. After
//! a crash, such leftovers are removed from each folder the next run visits, before that run
//! writes anything there ([`Target`] cleans each folder once per run).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::names::{os_bytes, os_from_bytes};

#[cfg(not(unix))]
#[path = "fs_std.rs"]
mod imp;
#[cfg(unix)]
#[path = "fs_unix.rs"]
mod imp;

pub(crate) use imp::{file_meta, is_root, set_file_meta, write_at, Dir};

/// Start of a temporary file's name.
pub const TEMP_PREFIX: &str = ".ks";
/// End of a temporary file's name.
pub const TEMP_SUFFIX: &str = ".part";
/// Random characters between them.
const TEMP_RANDOM: usize = 10;
/// Folders cleaned of leftovers per run, at most (beyond that they are left as they are).
const MAX_CLEANED: usize = 1_000_000;
/// Mode of a folder created only because something below it is restored (the umask applies).
pub const IMPLICIT_DIR_MODE: u32 = 0o777;

/// What a name in the target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// Anything else (device, socket).
    Other,
}

/// The metadata of a name in the target (of the link itself for a symlink).
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Its kind.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    /// Modification time, in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Device (0 where unknown).
    pub dev: u64,
    /// Inode (0 where unknown).
    pub ino: u64,
}

impl Meta {
    /// Whether `self` and `other` are the same file (same device and inode).
    pub fn same_file(&self, other: &Meta) -> bool {
        self.ino != 0 && self.dev == other.dev && self.ino == other.ino
    }
}

/// Why a folder of the target could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A component is a symlink (never followed).
    #[error("refusing {path}: {component} is a symlink")]
    Symlink {
        /// The path asked for.
        path: String,
        /// The offending component, relative to the target.
        component: String,
    },
    /// A component is something else than a folder.
    #[error("refusing {path}: {component} is not a folder")]
    NotFolder {
        /// The path asked for.
        path: String,
        /// The offending component, relative to the target.
        component: String,
    },
    /// The path is not a plain relative path.
    #[error("refusing {0}: not a plain relative path")]
    NotPlain(String),
    /// A system call failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// What.
        #[source]
        source: io::Error,
    },
}

impl TargetError {
    /// Whether the folder (or one of its parents) simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TargetError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn shown(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

/// A fresh temporary name: `.ks` + 10 random lowercase letters or digits + `.part`.
pub fn temp_name() -> OsString {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let random = uuid::Uuid::new_v4();
    let mut name = Vec::with_capacity(TEMP_PREFIX.len() + TEMP_RANDOM + TEMP_SUFFIX.len());
    name.extend_from_slice(TEMP_PREFIX.as_bytes());
    for b in &random.as_bytes()[..TEMP_RANDOM] {
        name.push(ALPHABET[usize::from(*b) % ALPHABET.len()]);
    }
    name.extend_from_slice(TEMP_SUFFIX.as_bytes());
    os_from_bytes(name)
}

/// Whether `name` has the form of a temporary name ([`temp_name`]).
pub fn is_temp_name(name: &[u8]) -> bool {
    name.len() == TEMP_PREFIX.len() + TEMP_RANDOM + TEMP_SUFFIX.len()
        && name.starts_with(TEMP_PREFIX.as_bytes())
        && name.ends_with(TEMP_SUFFIX.as_bytes())
        && name[TEMP_PREFIX.len()..TEMP_PREFIX.len() + TEMP_RANDOM]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Creates a new temporary file in `dir` (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600).
pub(crate) fn create_temp(dir: &Dir) -> io::Result<(OsString, File)> {
    let mut last = None;
    for _ in 0..8 {
        let name = temp_name();
        match dir.create_new(&name) {
            Ok(f) => return Ok((name, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

fn path_key(rel: &Path) -> u128 {
    let h = blake3::hash(&os_bytes(rel.as_os_str()));
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.as_bytes()[..16]);
    u128::from_le_bytes(b)
}

struct Cleaned {
    seen: HashSet<u128>,
    full: bool,
}

/// The target folder of a restore (or of a validation).
pub(crate) struct Target {
    root: Dir,
    cleaned: Mutex<Cleaned>,
    temps_removed: AtomicU64,
}

impl Target {
    /// Opens the target folder `path`, creating it (and its parents) first when `create`.
    pub fn open(path: &Path, create: bool) -> Result<Target, TargetError> {
        let err = |source| TargetError::Io {
            path: path.display().to_string(),
            source,
        };
        if create {
            std::fs::create_dir_all(path).map_err(err)?;
        }
        let root = Dir::open_root(path).map_err(err)?;
        Ok(Target {
            root,
            cleaned: Mutex::new(Cleaned {
                seen: HashSet::new(),
                full: false,
            }),
            temps_removed: AtomicU64::new(0),
        })
    }

    /// The root folder.
    pub fn root(&self) -> &Dir {
        &self.root
    }

    /// Temporary leftovers removed so far.
    pub fn temps_removed(&self) -> u64 {
        self.temps_removed.load(Ordering::Relaxed)
    }

    /// Opens the folder `rel` (relative to the root; empty for the root) component by
    /// component, never following a link. With `create`, missing folders are made with that
    /// mode (counted in `created`). `entry` is the path named in errors.
    pub fn folder(
        &self,
        rel: &Path,
        create: Option<u32>,
        entry: &Path,
        created: &mut u64,
    ) -> Result<Dir, TargetError> {
        let io_err = |source| TargetError::Io {
            path: shown(entry),
            source,
        };
        let mut cur = self.root.try_clone().map_err(io_err)?;
        let mut sofar = PathBuf::new();
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(TargetError::NotPlain(shown(entry)));
            };
            sofar.push(name);
            let next = match cur.open_child(name) {
                Ok(d) => Ok(d),
                Err(e) if e.kind() == io::ErrorKind::NotFound => match create {
                    Some(mode) => {
                        if cur.mkdir(name, mode).map_err(io_err)? {
                            *created += 1;
                        }
                        cur.open_child(name)
                    }
                    None => Err(e),
                },
                Err(e) => Err(e),
            };
            cur = match next {
                Ok(d) => d,
                Err(e) => return Err(classify(&cur, name, e, &sofar, entry)),
            };
        }
        Ok(cur)
    }

    /// Removes temporary leftovers of an earlier run from the folder `rel` (open as `dir`), the
    /// first time this run visits it, before anything is written there: the scan runs under a
    /// lock every first visit takes, so no file of this run can be mistaken for a leftover.
    fn clean_once(&self, rel: &Path, dir: &Dir) {
        let mut g = self.cleaned.lock().unwrap_or_else(|p| p.into_inner());
        if g.full || !g.seen.insert(path_key(rel)) {
            return;
        }
        if g.seen.len() >= MAX_CLEANED {
            g.full = true;
            tracing::debug!("too many folders to track: later folders are not cleaned");
        }
        let mut victims: Vec<OsString> = Vec::new();
        if let Err(e) = dir.for_each_name(|n| {
            if is_temp_name(&os_bytes(n)) {
                victims.push(n.to_os_string());
            }
        }) {
            tracing::debug!(folder = %shown(rel), error = %e, "cannot list a folder to clean it");
        }
        for v in victims {
            if matches!(dir.stat(&v), Ok(Some(m)) if m.kind == Kind::File) && dir.unlink(&v).is_ok()
            {
                tracing::info!(folder = %shown(rel), name = %v.to_string_lossy(), "removed a leftover of an interrupted restore");
                self.temps_removed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether the target folder tells apart names that differ only by letter case: an existing
    /// name is looked up with its case swapped; in an empty folder, a temporary file is made and
    /// looked up in upper case, then removed.
    pub fn probe_case_insensitive(&self) -> io::Result<bool> {
        let mut candidate: Option<OsString> = None;
        self.root.for_each_name(|n| {
            let b = os_bytes(n);
            if candidate.is_none() && !is_temp_name(&b) && b.iter().any(u8::is_ascii_alphabetic) {
                candidate = Some(n.to_os_string());
            }
        })?;
        if let Some(name) = candidate {
            let swapped: Vec<u8> = os_bytes(&name)
                .iter()
                .map(|b| {
                    if b.is_ascii_lowercase() {
                        b.to_ascii_uppercase()
                    } else {
                        b.to_ascii_lowercase()
                    }
                })
                .collect();
            let a = self.root.stat(&name)?;
            let b = self.root.stat(&os_from_bytes(swapped))?;
            return Ok(match (a, b) {
                (Some(a), Some(b)) => a.same_file(&b) || (a.ino == 0 && b.ino == 0),
                _ => false,
            });
        }
        let (name, file) = create_temp(&self.root)?;
        drop(file);
        let upper = os_from_bytes(os_bytes(&name).to_ascii_uppercase());
        let found = self.root.stat(&upper);
        if let Err(e) = self.root.unlink(&name) {
            tracing::warn!(error = %e, "cannot remove the case probe file");
        }
        Ok(matches!(found?, Some(m) if m.kind == Kind::File))
    }
}

fn classify(parent: &Dir, name: &OsStr, e: io::Error, sofar: &Path, entry: &Path) -> TargetError {
    match parent.stat(name) {
        Ok(Some(m)) if m.kind == Kind::Symlink => TargetError::Symlink {
            path: shown(entry),
            component: shown(sofar),
        },
        Ok(Some(m)) if m.kind != Kind::Dir => TargetError::NotFolder {
            path: shown(entry),
            component: shown(sofar),
        },
        _ => TargetError::Io {
            path: shown(entry),
            source: e,
        },
    }
}

struct Cached {
    rel: PathBuf,
    dir: Dir,
    dirty: bool,
}

/// One worker's way into the target: the last folder opened is kept (a folder of 10,000 files
/// is walked once) and flushed to disk when left after being written into.
pub(crate) struct Cursor<'t> {
    target: &'t Target,
    cached: Option<Cached>,
    /// Folders created on the way.
    pub created: u64,
}

impl<'t> Cursor<'t> {
    /// A cursor with nothing open yet.
    pub fn new(target: &'t Target) -> Cursor<'t> {
        Cursor {
            target,
            cached: None,
            created: 0,
        }
    }

    /// The target.
    pub fn target(&self) -> &'t Target {
        self.target
    }

    /// The folder `rel` (see [`Target::folder`]; missing folders are created when `create`).
    pub fn folder(&mut self, rel: &Path, create: bool, entry: &Path) -> Result<&Dir, TargetError> {
        let hit = matches!(&self.cached, Some(c) if c.rel == rel);
        if !hit {
            self.flush();
            self.cached = None;
            let dir = self.target.folder(
                rel,
                create.then_some(IMPLICIT_DIR_MODE),
                entry,
                &mut self.created,
            )?;
            self.target.clean_once(rel, &dir);
            self.cached = Some(Cached {
                rel: rel.to_path_buf(),
                dir,
                dirty: false,
            });
        }
        match &self.cached {
            Some(c) => Ok(&c.dir),
            None => Err(TargetError::NotPlain(shown(entry))),
        }
    }

    /// Notes that the current folder's entries changed (it is flushed when left).
    pub fn touched(&mut self) {
        if let Some(c) = &mut self.cached {
            c.dirty = true;
        }
    }

    /// Flushes the current folder if it was written into.
    pub fn flush(&mut self) {
        if let Some(c) = &mut self.cached {
            if c.dirty {
                if let Err(e) = c.dir.sync() {
                    tracing::warn!(folder = %shown(&c.rel), error = %e, "cannot flush a folder to disk");
                }
                c.dirty = false;
            }
        }
    }
}

impl Drop for Cursor<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
