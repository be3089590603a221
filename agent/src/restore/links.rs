//! Hard links and symlinks: what waits for the final pass of a restore.
//!
//! Files with the same hard-link group and the same content hash are restored as one file and
//! hard links to it: the first of a group (in listing order) is restored as usual by a worker;
//! the later ones wait for the final pass, when the first is complete, and are then made with
//! `linkat` to wherever the first ended up (its name, or its beside name). When the first failed
//! or is gone, or the file system cannot link, a later one is restored as a copy. At most
//! [`MAX_LINK_GROUPS`] groups are tracked; beyond that, files are restored as copies (counted).
//!
//! Symlinks are created only in the final pass, after every file and folder, with `symlinkat`
//! in a folder opened without following links, and their time set with
//! `utimensat(AT_SYMLINK_NOFOLLOW)`. An existing link with the same target is accepted; another
//! one (or a file) is replaced only with `overwrite`, atomically (made at a temporary name and
//! renamed over); a folder is never removed.
//!
//! Everything that waits is spooled to unnamed temporary files, not kept in memory. A crash
//! loses the spool; the next run lists the point again and redoes it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use keepsake_common::api::FileAtPoint;
use keepsake_common::path::wire_path_bytes;
use serde::{Deserialize, Serialize};

use super::files::{restore_file, same_content, split, Done};
use super::names::{beside_name, beside_path, os_bytes, os_from_bytes};
use super::target::{temp_name, Cursor, Dir, Kind, Meta};
use super::{FileFail, Shared};

/// Hard-link groups tracked per restore.
pub const MAX_LINK_GROUPS: usize = 1_000_000;

/// State of the first file of a group.
pub(crate) const FIRST_PENDING: u8 = 0;
pub(crate) const FIRST_AT_NAME: u8 = 1;
pub(crate) const FIRST_BESIDE: u8 = 2;
pub(crate) const FIRST_FAILED: u8 = 3;

/// What a file with a hard-link group is.
pub(crate) enum Role {
    /// The first of its group (restored now; its state goes to this index).
    First(u32),
    /// A later one (spooled for the final pass).
    Later,
    /// Not tracked (too many groups): restored as a copy.
    Untracked,
}

struct Spool {
    out: BufWriter<File>,
    pos: u64,
}

impl Spool {
    fn new() -> io::Result<Spool> {
        Ok(Spool {
            out: BufWriter::new(tempfile::tempfile()?),
            pos: 0,
        })
    }

    /// Appends a JSON line.
    fn push(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    /// Appends a length-prefixed record; returns its offset.
    fn push_record(&mut self, rec: &[u8]) -> io::Result<u64> {
        let at = self.pos;
        let len = u32::try_from(rec.len()).map_err(|_| io::Error::other("record too long"))?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(rec)?;
        self.pos += 4 + u64::from(len);
        Ok(at)
    }

    fn reader(self) -> io::Result<BufReader<File>> {
        let mut f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        Ok(BufReader::new(f))
    }
}

#[derive(Serialize, Deserialize)]
struct LaterRec {
    f: FileAtPoint,
    rel: Vec<u8>,
    first: u32,
    first_at: u64,
}

#[derive(Serialize, Deserialize)]
struct SymlinkRec {
    path: String,
    rel: Vec<u8>,
    target: Vec<u8>,
    mtime_ns: Option<i64>,
}

fn group_key(f: &FileAtPoint, group: u64) -> u128 {
    let mut h = blake3::Hasher::new();
    h.update(&group.to_le_bytes());
    if let Some(c) = &f.content_hash {
        h.update(c.as_bytes());
    }
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    u128::from_le_bytes(b)
}

fn rel_bytes(rel: &Path) -> Vec<u8> {
    os_bytes(rel.as_os_str()).into_owned()
}

fn rel_path(b: Vec<u8>) -> PathBuf {
    PathBuf::from(os_from_bytes(b))
}

/// What the listing thread hands to the final pass.
pub(crate) struct Waiting {
    groups: HashMap<u128, (u32, u64)>,
    firsts: Spool,
    later: Spool,
    symlinks: Spool,
    /// Files of groups beyond the cap (restored as copies).
    pub untracked: u64,
}

impl Waiting {
    pub fn new() -> io::Result<Waiting> {
        Ok(Waiting {
            groups: HashMap::new(),
            firsts: Spool::new()?,
            later: Spool::new()?,
            symlinks: Spool::new()?,
            untracked: 0,
        })
    }

    /// Classifies a file that has a hard-link group (`sh` records the first's state).
    pub fn file(&mut self, sh: &Shared<'_>, f: &FileAtPoint, rel: &Path) -> io::Result<Role> {
        let Some(group) = f.link else {
            return Ok(Role::Untracked);
        };
        let key = group_key(f, group);
        if let Some(&(first, first_at)) = self.groups.get(&key) {
            let rec = LaterRec {
                f: f.clone(),
                rel: rel_bytes(rel),
                first,
                first_at,
            };
            self.later.push(&serde_json::to_vec(&rec)?)?;
            return Ok(Role::Later);
        }
        if self.groups.len() >= MAX_LINK_GROUPS {
            self.untracked += 1;
            return Ok(Role::Untracked);
        }
        let id = sh.new_first();
        let at = self.firsts.push_record(&rel_bytes(rel))?;
        self.groups.insert(key, (id, at));
        Ok(Role::First(id))
    }

    /// Spools a symlink for the final pass.
    pub fn symlink(&mut self, f: &FileAtPoint, rel: &Path) -> io::Result<()> {
        let target = f
            .symlink_target
            .as_deref()
            .map(wire_path_bytes)
            .ok_or_else(|| io::Error::other("symlink without a target"))?;
        let rec = SymlinkRec {
            path: f.path.clone(),
            rel: rel_bytes(rel),
            target,
            mtime_ns: f.mtime_ns,
        };
        self.symlinks.push(&serde_json::to_vec(&rec)?)?;
        Ok(())
    }

    /// The final pass: later files of link groups, then symlinks.
    pub fn finish(self, sh: &Shared<'_>, cur: &mut Cursor<'_>) {
        drop(self.groups);
        let spooled = (|| -> io::Result<_> {
            Ok((
                self.firsts.reader()?.into_inner(),
                self.later.reader()?,
                self.symlinks.reader()?,
            ))
        })();
        let (mut firsts, later, symlinks) = match spooled {
            Ok(s) => s,
            Err(e) => {
                sh.fail(
                    "(final pass)",
                    format!("the spool of links cannot be read: {e}"),
                );
                return;
            }
        };
        for line in later.split(b'\n') {
            let rec = match line
                .map_err(|e| e.to_string())
                .and_then(|l| serde_json::from_slice::<LaterRec>(&l).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    sh.fail("(final pass)", format!("the spool of hard links: {e}"));
                    break;
                }
            };
            let rel = rel_path(rec.rel);
            let result = read_first(&mut firsts, rec.first_at)
                .map_err(FileFail::from)
                .and_then(|first| later_file(sh, cur, &rec.f, &rel, rec.first, &first));
            sh.finished(&rec.f.path, result.map(|_| ()));
        }
        for line in symlinks.split(b'\n') {
            let rec = match line
                .map_err(|e| e.to_string())
                .and_then(|l| serde_json::from_slice::<SymlinkRec>(&l).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    sh.fail("(final pass)", format!("the spool of symlinks: {e}"));
                    break;
                }
            };
            let rel = rel_path(rec.rel);
            let result = symlink(sh, cur, &rel, &rec.target, rec.mtime_ns);
            sh.finished(&rec.path, result);
        }
    }
}

fn read_first(firsts: &mut File, at: u64) -> io::Result<PathBuf> {
    firsts.seek(SeekFrom::Start(at))?;
    let mut len = [0u8; 4];
    firsts.read_exact(&mut len)?;
    let mut rec = vec![0u8; u32::from_le_bytes(len) as usize];
    firsts.read_exact(&mut rec)?;
    Ok(rel_path(rec))
}

/// Restores a later file of a link group: a hard link to the first when it is complete, a copy
/// otherwise.
fn later_file(
    sh: &Shared<'_>,
    cur: &mut Cursor<'_>,
    f: &FileAtPoint,
    rel: &Path,
    first: u32,
    first_rel: &Path,
) -> Result<Done, FileFail> {
    let src = match sh.first_state(first) {
        FIRST_AT_NAME => Some(first_rel.to_path_buf()),
        FIRST_BESIDE => Some(beside_path(first_rel)),
        _ => None,
    };
    if let Some(src) = src {
        match link(sh, cur, f, rel, &src) {
            Ok(done) => return Ok(done),
            Err(Link::Copy(why)) => {
                tracing::info!(path = %f.path, reason = %why, "hard link not possible; restoring a copy")
            }
            Err(Link::Fail(e)) => return Err(e),
        }
    }
    sh.bump(|r| r.hard_links_copied += 1);
    restore_file(sh, cur, f, rel)
}

enum Link {
    /// Linking is not possible here: restore a copy.
    Copy(String),
    /// The entry fails.
    Fail(FileFail),
}

impl<E: Into<FileFail>> From<E> for Link {
    fn from(e: E) -> Self {
        Link::Fail(e.into())
    }
}

/// Whether linking failed because the file system cannot (then a copy is made instead).
fn cannot_link(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK) | Some(libc::ENOTSUP)
        ) || e.kind() == io::ErrorKind::Unsupported
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        true
    }
}

/// Links `name` in `dir` to `src_name` in `src_dir`, through a temporary name when `replace`
/// (atomically over what is there).
fn link_at(
    dir: &Dir,
    name: &OsStr,
    src_dir: &Dir,
    src_name: &OsStr,
    replace: bool,
) -> Result<(), Link> {
    let made = if replace {
        let tmp = temp_name();
        dir.hard_link(src_dir, src_name, &tmp).and_then(|()| {
            dir.rename(&tmp, dir, name).inspect_err(|_| {
                let _ = dir.unlink(&tmp);
            })
        })
    } else {
        dir.hard_link(src_dir, src_name, name)
    };
    match made {
        Ok(()) => Ok(()),
        Err(e) if cannot_link(&e) => Err(Link::Copy(e.to_string())),
        Err(e) => Err(Link::Fail(e.into())),
    }
}

fn link(
    sh: &Shared<'_>,
    cur: &mut Cursor<'_>,
    f: &FileAtPoint,
    rel: &Path,
    src: &Path,
) -> Result<Done, Link> {
    let (src_parent, src_name) = split(src)?;
    let mut created = 0;
    let src_dir = cur
        .target()
        .folder(src_parent, None, src, &mut created)
        .map_err(|e| Link::Copy(e.to_string()))?;
    let src_meta: Meta = match src_dir.stat(src_name)? {
        Some(m) if m.kind == Kind::File => m,
        _ => return Err(Link::Copy("the first name is gone".into())),
    };
    let (parent, name) = split(rel)?;
    let expected = f.content_hash;
    let dir = cur.folder(parent, true, rel)?;
    let mut beside = false;
    match dir.stat(name)? {
        None => link_at(dir, name, &src_dir, src_name, false)?,
        Some(m) if m.same_file(&src_meta) => {
            sh.skipped(f);
            return Ok(Done::Skipped { beside: false });
        }
        Some(m)
            if m.kind == Kind::File
                && m.size == f.size
                && expected.is_some_and(|h| {
                    matches!(same_content(dir, name, f.size, &h, sh.keys), Ok(Some(_)))
                }) =>
        {
            // The same content as a separate copy: made a link (nothing is lost).
            link_at(dir, name, &src_dir, src_name, true)?
        }
        Some(m) if matches!(m.kind, Kind::Dir | Kind::Symlink) || !sh.opts.overwrite => {
            let b = beside_name(name);
            beside = true;
            match dir.stat(&b)? {
                None => link_at(dir, &b, &src_dir, src_name, false)?,
                Some(bm) if bm.same_file(&src_meta) => {
                    sh.skipped(f);
                    return Ok(Done::Skipped { beside: true });
                }
                Some(bm) if bm.kind == Kind::Dir => {
                    return Err(Link::Fail(FileFail::Msg(format!(
                        "{} differs from the backup and {} is a folder",
                        rel.display(),
                        b.to_string_lossy()
                    ))))
                }
                Some(_) => link_at(dir, &b, &src_dir, src_name, true)?,
            }
        }
        Some(_) => link_at(dir, name, &src_dir, src_name, true)?,
    }
    cur.touched();
    sh.bump(|r| {
        r.files_restored += 1;
        r.hard_links += 1;
        if beside {
            r.files_beside += 1;
        }
    });
    Ok(Done::Written { beside })
}

/// Creates (or accepts) the symlink `rel` → `target`.
fn symlink(
    sh: &Shared<'_>,
    cur: &mut Cursor<'_>,
    rel: &Path,
    target: &[u8],
    mtime_ns: Option<i64>,
) -> Result<(), FileFail> {
    let (parent, name) = split(rel)?;
    let dir = cur.folder(parent, true, rel)?;
    let mut created = true;
    match dir.stat(name)? {
        None => dir.symlink(target, name)?,
        Some(m) if m.kind == Kind::Symlink && dir.readlink(name)? == target => created = false,
        Some(m) if m.kind == Kind::Dir => {
            return Err(FileFail::Msg(format!(
                "{} is a folder; the symlink is not restored over it",
                rel.display()
            )))
        }
        Some(m) if !sh.opts.overwrite => {
            return Err(FileFail::Msg(if m.kind == Kind::Symlink {
                format!(
                    "{} exists with another target (use --overwrite)",
                    rel.display()
                )
            } else {
                format!(
                    "{} exists and is not a symlink (use --overwrite)",
                    rel.display()
                )
            }))
        }
        Some(_) => {
            let tmp = temp_name();
            dir.symlink(target, &tmp)?;
            if let Err(e) = dir.rename(&tmp, dir, name) {
                let _ = dir.unlink(&tmp);
                return Err(e.into());
            }
        }
    }
    if let Some(t) = mtime_ns {
        if let Err(e) = dir.set_mtime_nofollow(name, t) {
            tracing::debug!(path = %rel.display(), error = %e, "cannot set a symlink's time");
        }
    }
    cur.touched();
    if created {
        sh.bump(|r| r.symlinks += 1);
    }
    Ok(())
}
