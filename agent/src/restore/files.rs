//! Restoring one regular file or named pipe into its folder of the target.
//!
//! A file is written to a temporary file created in the destination folder ([`create_temp`]:
//! short random name, `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600). Blocks that are all zeros are
//! skipped (the file stays sparse; its length is set at the end), the whole content is checked
//! against the file's keyed content hash, mode and time are set on the descriptor, the file is
//! flushed (`fsync`) and only then renamed into place, so a crash leaves either the complete
//! file or a temporary leftover that the next run removes. The folder is flushed by the
//! worker's [`Cursor`].
//!
//! A file is skipped only when what is already there (at its name, or at its beside name) is a
//! regular file of the right size whose keyed content hash matches (read without following a
//! link); its mode and time are then corrected if needed. An existing different file is never
//! replaced unless asked (`overwrite`): the restored copy goes beside it
//! ([`names::beside_name`]); a folder or a symlink is never replaced.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use keepsake_common::api::FileAtPoint;
use keepsake_common::ids::{ChunkIdKey, ContentHash};
use keepsake_common::keys::OrgKeys;

use super::blobs::fetch_file;
use super::names::beside_name;
use super::target::{create_temp, file_meta, set_file_meta, write_at, Cursor, Dir, Kind};
use super::{FileFail, Shared};

/// Granularity of the zero-block test (a common file-system block size).
const BLOCK: usize = 4096;

/// How a file or pipe ended up in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Done {
    /// Written (or created) now.
    Written {
        /// At the beside name.
        beside: bool,
    },
    /// Already there, complete.
    Skipped {
        /// At the beside name.
        beside: bool,
    },
}

impl Done {
    /// Whether it is at the beside name.
    pub fn beside(self) -> bool {
        matches!(
            self,
            Done::Written { beside: true } | Done::Skipped { beside: true }
        )
    }
}

/// Splits a target-relative path into its folder and name.
pub(crate) fn split(rel: &Path) -> Result<(&Path, &OsStr), FileFail> {
    match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(FileFail::Msg(format!("{}: not a file path", rel.display()))),
    }
}

/// Writes a file's content, skipping whole zero blocks.
struct SparseWriter<'f> {
    file: &'f File,
    pos: u64,
}

impl SparseWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut i = 0;
        let mut run: Option<usize> = None;
        while i < data.len() {
            // Blocks are aligned on file offsets, so holes line up with the file system's.
            let into = (self.pos + i as u64) % BLOCK as u64;
            let end = data.len().min(i + BLOCK - into as usize);
            if data[i..end].iter().all(|&b| b == 0) {
                if let Some(s) = run.take() {
                    write_at(self.file, &data[s..i], self.pos + s as u64)?;
                }
            } else if run.is_none() {
                run = Some(i);
            }
            i = end;
        }
        if let Some(s) = run {
            write_at(self.file, &data[s..], self.pos + s as u64)?;
        }
        self.pos += data.len() as u64;
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        self.file.set_len(self.pos)
    }
}

/// Opens `name` and reads it whole: the open file when it is a regular file of `size` bytes
/// whose keyed content hash is `expected`.
pub(crate) fn same_content(
    dir: &Dir,
    name: &OsStr,
    size: u64,
    expected: &ContentHash,
    keys: &OrgKeys,
) -> io::Result<Option<File>> {
    let mut file = match dir.open_read(name) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // A symlink swapped in (ELOOP), or unreadable: not the right content.
        Err(_) => return Ok(None),
    };
    let m = file_meta(&file)?;
    if m.kind != Kind::File || m.size != size {
        return Ok(None);
    }
    let (total, hash) = content_hash_of(&mut file, &keys.chunk_id_key, |_| {})?;
    Ok((total == size && hash == *expected).then_some(file))
}

/// Reads `r` to its end (1 MiB at a time) and returns how many bytes it held and their keyed
/// content hash; `progress` is told each piece's length.
pub(crate) fn content_hash_of(
    r: &mut impl Read,
    key: &ChunkIdKey,
    mut progress: impl FnMut(u64),
) -> io::Result<(u64, ContentHash)> {
    let mut hasher = key.content_hasher();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
                progress(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((total, hasher.finalize()))
}

/// Corrects the mode and time of an open file that is already complete.
fn fix_meta(file: &File, mode: u32, mtime_ns: Option<i64>) -> io::Result<()> {
    let m = file_meta(file)?;
    let mode = (m.mode != mode).then_some(mode);
    let mtime = mtime_ns.filter(|t| i128::from(*t) != m.mtime_ns);
    if mode.is_some() || mtime.is_some() {
        set_file_meta(file, mode, mtime)?;
    }
    Ok(())
}

/// Restores the regular file `f` at `rel`.
pub(crate) fn restore_file(
    sh: &Shared<'_>,
    cur: &mut Cursor<'_>,
    f: &FileAtPoint,
    rel: &Path,
) -> Result<Done, FileFail> {
    let expected = f
        .content_hash
        .ok_or_else(|| FileFail::Msg("no content hash in the listing".into()))?;
    let (parent, name) = split(rel)?;
    let mode = sh.mode_of(f, 0o644);
    let dir = cur.folder(parent, true, rel)?;
    let mut dest = name.to_os_string();
    let mut beside = false;
    if let Some(m) = dir.stat(name)? {
        if m.kind == Kind::File && m.size == f.size {
            if let Some(file) = same_content(dir, name, f.size, &expected, sh.keys)? {
                fix_meta(&file, mode, f.mtime_ns)?;
                sh.skipped(f);
                return Ok(Done::Skipped { beside: false });
            }
        }
        if matches!(m.kind, Kind::Dir | Kind::Symlink) || !sh.opts.overwrite {
            dest = beside_name(name);
            beside = true;
            if let Some(b) = dir.stat(&dest)? {
                if b.kind == Kind::File && b.size == f.size {
                    if let Some(file) = same_content(dir, &dest, f.size, &expected, sh.keys)? {
                        fix_meta(&file, mode, f.mtime_ns)?;
                        sh.skipped(f);
                        return Ok(Done::Skipped { beside: true });
                    }
                }
                if b.kind == Kind::Dir {
                    return Err(FileFail::Msg(format!(
                        "{} differs from the backup and {} is a folder",
                        rel.display(),
                        dest.to_string_lossy()
                    )));
                }
            }
        }
    }
    let (tmp, file) = create_temp(dir)?;
    let written = write_content(sh, f, &file, &expected).and_then(|()| {
        set_file_meta(&file, Some(mode), f.mtime_ns)?;
        file.sync_all()?;
        Ok(())
    });
    drop(file);
    if let Err(e) = written.and_then(|()| Ok(dir.rename(&tmp, dir, &dest)?)) {
        let _ = dir.unlink(&tmp);
        return Err(e);
    }
    cur.touched();
    sh.bump(|r| {
        r.files_restored += 1;
        r.bytes += f.size;
        if beside {
            r.files_beside += 1;
        }
    });
    Ok(Done::Written { beside })
}

fn write_content(
    sh: &Shared<'_>,
    f: &FileAtPoint,
    file: &File,
    expected: &ContentHash,
) -> Result<(), FileFail> {
    let mut hasher = sh.keys.chunk_id_key.content_hasher();
    let mut out = SparseWriter { file, pos: 0 };
    fetch_file(
        sh.source,
        sh.keys,
        &sh.adopter,
        f,
        sh.opts.batch_bytes,
        |plain| {
            if out.pos + plain.len() as u64 > f.size {
                return Err(FileFail::Msg(format!(
                    "the server's chunk list holds more than the file's {} bytes",
                    f.size
                )));
            }
            hasher.update(plain);
            out.write(plain)?;
            sh.wrote(plain.len() as u64);
            Ok(())
        },
    )?;
    if out.pos != f.size {
        return Err(FileFail::Msg(format!(
            "restored {} bytes but the file has {}",
            out.pos, f.size
        )));
    }
    out.finish()?;
    if hasher.finalize() != *expected {
        return Err(FileFail::Msg(
            "the restored content does not match the file's content hash".into(),
        ));
    }
    Ok(())
}

/// Makes a named pipe at `tmp` with `mode` and `mtime_ns` (set on a descriptor opened without
/// following links and without blocking).
fn make_fifo(dir: &Dir, tmp: &OsStr, mode: u32, mtime_ns: Option<i64>) -> io::Result<()> {
    dir.mkfifo(tmp, 0o600)?;
    let set = (|| {
        let pipe = dir.open_read(tmp)?;
        if file_meta(&pipe)?.kind != Kind::Fifo {
            return Err(io::Error::other("not the pipe just made"));
        }
        set_file_meta(&pipe, Some(mode), mtime_ns)
    })();
    if set.is_err() {
        let _ = dir.unlink(tmp);
    }
    set
}

/// Restores the named pipe `f` at `rel`: an existing pipe is accepted; anything else there is
/// treated like a different file (beside, or replaced with `overwrite`; a folder never).
pub(crate) fn restore_fifo(
    sh: &Shared<'_>,
    cur: &mut Cursor<'_>,
    f: &FileAtPoint,
    rel: &Path,
) -> Result<Done, FileFail> {
    let (parent, name) = split(rel)?;
    let mode = sh.mode_of(f, 0o644);
    let dir = cur.folder(parent, true, rel)?;
    let accept = |n: &OsStr| -> Result<(), FileFail> {
        let pipe = dir.open_read(n)?;
        if file_meta(&pipe)?.kind != Kind::Fifo {
            return Err(FileFail::Msg(format!(
                "{}: changed meanwhile",
                rel.display()
            )));
        }
        fix_meta(&pipe, mode, f.mtime_ns)?;
        Ok(())
    };
    let mut dest = name.to_os_string();
    let mut beside = false;
    match dir.stat(name)? {
        None => {}
        Some(m) if m.kind == Kind::Fifo => {
            accept(name)?;
            return Ok(Done::Skipped { beside: false });
        }
        Some(m) if matches!(m.kind, Kind::Dir | Kind::Symlink) || !sh.opts.overwrite => {
            dest = beside_name(name);
            beside = true;
            match dir.stat(&dest)? {
                Some(b) if b.kind == Kind::Fifo => {
                    accept(&dest)?;
                    return Ok(Done::Skipped { beside: true });
                }
                Some(b) if b.kind == Kind::Dir => {
                    return Err(FileFail::Msg(format!(
                        "{} is not a named pipe and {} is a folder",
                        rel.display(),
                        dest.to_string_lossy()
                    )))
                }
                _ => {}
            }
        }
        Some(_) => {}
    }
    let tmp = super::target::temp_name();
    make_fifo(dir, &tmp, mode, f.mtime_ns)?;
    if let Err(e) = dir.rename(&tmp, dir, &dest) {
        let _ = dir.unlink(&tmp);
        return Err(e.into());
    }
    cur.touched();
    sh.bump(|r| {
        r.fifos += 1;
        if beside {
            r.files_beside += 1;
        }
    });
    Ok(Done::Written { beside })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_skipped_and_content_is_identical() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let file = File::create(&p).unwrap();
        // 1 MiB of zeros between data, unaligned edges, trailing zeros.
        let mut data = vec![0u8; 3 * 1024 * 1024 + 123];
        data[..5000].fill(7);
        data[2 * 1024 * 1024 + 17..2 * 1024 * 1024 + 9000].fill(9);
        let mut w = SparseWriter {
            file: &file,
            pos: 0,
        };
        // Fed in uneven pieces, as chunks come.
        for piece in data.chunks(777_777) {
            w.write(piece).unwrap();
        }
        w.finish().unwrap();
        drop(file);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::metadata(&p).unwrap();
            // Allocated blocks (512 bytes each) well below the length: holes were left.
            assert!(
                m.blocks() * 512 < m.len() / 2,
                "{} blocks for {} bytes",
                m.blocks(),
                m.len()
            );
        }
    }
}
