//! The job delta on disk: [`DeltaBuilder`] writes entries into part files as they come, each
//! part a complete `keepsake_common::delta` stream (header, entries, end line) of at most
//! `max_entries` entries and `max_bytes` bytes, so the server can receive and stage parts one at
//! a time and neither side holds a delta in memory. A part always holds at least one entry (an
//! entry larger than `max_bytes` gets a part of its own); a job with no change has no part.
//!
//! Crash behaviour: the parts and the journal live in the run's work folder and are only read by
//! the same run; a killed run leaves them behind, unread (the next run writes a new folder and
//! starts a new server job). Nothing in the catalog changes until the server has committed.
//! Every entry is sealed with the organisation's entry MAC as it is written, and a digest of all
//! entries in order ([`DeltaOutput::digest`]) goes with the commit so the server can prove it
//! staged exactly what was sent. The part files are scratch: a crash loses them and the next run
//! writes new ones.
//!
//! Alongside, the builder writes a **commit journal**: per entry, what
//! `Catalog::record_commit` needs once the server has committed the job (catalog key, the
//! metadata read with the content including ctime and inode, which the delta does not carry,
//! the content hash and the blob list). [`CommitJournal::batches`] streams it back in batches,
//! so updating the catalog after a commit of a million files needs no more memory than one
//! batch.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use keepsake_common::delta::{
    DeltaDigester, DeltaError, DeltaHeader, DeltaWriter, Entry as DeltaEntry,
};
use keepsake_common::ids::DeltaDigest;
use keepsake_common::mac::EntryMacKey;
use keepsake_common::path::{bytes_to_wire, os_path_to_wire, PathError};
use serde::Serialize;

use super::FileResult;
use crate::catalog::{BlobRef, CommitEntry};
use crate::detect::scan::{catalog_key, Entry, EntryKind};
use crate::relpath::RelPath;

/// How big one part may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaLimits {
    /// Most entries per part.
    pub max_entries: u64,
    /// Most bytes per part (header, entries and end line). The server accepts up to
    /// `keepsake_common::api::MAX_DELTA_PART_BODY`.
    pub max_bytes: u64,
}

impl Default for DeltaLimits {
    fn default() -> Self {
        DeltaLimits {
            max_entries: 50_000,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Errors of [`DeltaBuilder`]. [`DeltaBuildError::is_entry_error`] tells the ones that concern a
/// single entry (it was not written; the delta is still valid) from fatal ones.
#[derive(Debug, thiserror::Error)]
pub enum DeltaBuildError {
    /// Writing a part or the journal failed.
    #[error("writing the delta: {0}")]
    Io(#[from] io::Error),
    /// The delta writer refused.
    #[error("writing the delta: {0}")]
    Delta(#[from] DeltaError),
    /// The name cannot be sent (e.g. longer than the format allows).
    #[error("{rel}: the name cannot be recorded: {source}")]
    Path {
        /// The path.
        rel: RelPath,
        /// Why.
        source: PathError,
    },
    /// The entry breaks a rule of the format (e.g. an empty or huge symlink target).
    #[error("{rel}: {msg}")]
    Invalid {
        /// The path.
        rel: RelPath,
        /// Why.
        msg: String,
    },
    /// The commit journal is damaged.
    #[error("commit journal: {0}")]
    Journal(String),
}

impl DeltaBuildError {
    /// True when only this entry was refused and the builder can go on.
    pub fn is_entry_error(&self) -> bool {
        matches!(
            self,
            DeltaBuildError::Path { .. } | DeltaBuildError::Invalid { .. }
        )
    }
}

/// One finished part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeltaPart {
    /// Part number (0, 1, …), as sent to the server.
    pub index: u32,
    /// The file.
    pub path: PathBuf,
    /// Entries in it.
    pub entries: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What [`DeltaBuilder::finish`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaOutput {
    /// The parts in order (empty when nothing changed).
    pub parts: Vec<DeltaPart>,
    /// Entries in all parts.
    pub entries: u64,
    /// Of which file upserts.
    pub upserts: u64,
    /// Deletions.
    pub deletes: u64,
    /// Folders.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Named pipes.
    pub fifos: u64,
    /// Digest of every entry written, in order (sent with the commit).
    pub digest: DeltaDigest,
    /// The commit journal, when one was written.
    pub journal: Option<CommitJournal>,
}

impl DeltaOutput {
    fn empty() -> DeltaOutput {
        DeltaOutput {
            parts: Vec::new(),
            entries: 0,
            upserts: 0,
            deletes: 0,
            dirs: 0,
            symlinks: 0,
            fifos: 0,
            digest: DeltaDigester::new().finish(),
            journal: None,
        }
    }
}

struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct OpenPart {
    index: u32,
    path: PathBuf,
    writer: DeltaWriter<Counting<BufWriter<File>>>,
    bytes: u64,
}

/// Room kept in a part for its end line (`{"op":"end","entries":N}`).
const END_RESERVE: u64 = 48;

/// Writes a job delta into part files (see the module docs).
pub struct DeltaBuilder {
    dir: PathBuf,
    header: DeltaHeader,
    header_len: u64,
    limits: DeltaLimits,
    open: Option<OpenPart>,
    parts: Vec<DeltaPart>,
    journal: Option<(PathBuf, BufWriter<File>, u64)>,
    scratch: Vec<u8>,
    key: EntryMacKey,
    digest: DeltaDigester,
    out: DeltaOutput,
}

impl std::fmt::Debug for DeltaBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaBuilder")
            .field("dir", &self.dir)
            .field("parts", &self.parts.len())
            .field("entries", &self.out.entries)
            .finish_non_exhaustive()
    }
}

impl DeltaBuilder {
    /// A builder writing `part-NNNNNN.ndjson` files (and `commit-journal.bin` when `journal`)
    /// into `dir`, which is created if needed, sealing entries with `key`. Existing files are
    /// never overwritten.
    pub fn new(
        dir: &Path,
        header: DeltaHeader,
        limits: DeltaLimits,
        journal: bool,
        key: EntryMacKey,
    ) -> Result<DeltaBuilder, DeltaBuildError> {
        fs::create_dir_all(dir)?;
        let header_len = serde_json::to_vec(&header)
            .map_err(|e| DeltaBuildError::Journal(e.to_string()))?
            .len() as u64
            + 1;
        let journal = if journal {
            let path = dir.join("commit-journal.bin");
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            let mut w = BufWriter::with_capacity(256 * 1024, f);
            w.write_all(JOURNAL_MAGIC)?;
            Some((path, w, 0))
        } else {
            None
        };
        Ok(DeltaBuilder {
            dir: dir.to_path_buf(),
            header,
            header_len,
            limits: DeltaLimits {
                max_entries: limits.max_entries.max(1),
                max_bytes: limits.max_bytes,
            },
            open: None,
            parts: Vec::new(),
            journal,
            scratch: Vec::new(),
            key,
            digest: DeltaDigester::new(),
            out: DeltaOutput::empty(),
        })
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.out.entries
    }

    /// Adds a file's new version.
    pub fn add_file(&mut self, r: &FileResult) -> Result<(), DeltaBuildError> {
        let mut entry = r
            .delta_entry(&self.key)
            .map_err(|source| DeltaBuildError::Path {
                rel: r.rel.clone(),
                source,
            })?;
        self.write(&r.rel, &mut entry, Some(&r.commit_entry()))?;
        self.out.upserts += 1;
        Ok(())
    }

    /// Adds a folder, a symlink or a named pipe the scan saw (files go through
    /// [`DeltaBuilder::add_file`]).
    pub fn add_scanned(&mut self, e: &Entry) -> Result<(), DeltaBuildError> {
        let (path, raw_path) = wire(&e.rel)?;
        let mut entry = match e.kind {
            EntryKind::Dir => DeltaEntry::Dir {
                path,
                raw_path,
                mtime_ns: e.mtime_ns,
                mode: e.mode,
                mac: None,
            },
            EntryKind::Fifo => DeltaEntry::Fifo {
                path,
                raw_path,
                mtime_ns: e.mtime_ns,
                mode: e.mode,
                mac: None,
            },
            EntryKind::Symlink => {
                let target = e.symlink_target.as_deref().unwrap_or_default();
                let (display, escaped) = bytes_to_wire(target);
                DeltaEntry::Symlink {
                    path,
                    raw_path,
                    target: display,
                    raw_target: escaped.then(|| target.to_vec()),
                    mtime_ns: e.mtime_ns,
                    mac: None,
                }
            }
            EntryKind::File => {
                return Err(DeltaBuildError::Invalid {
                    rel: e.rel.clone(),
                    msg: "a file's entry needs its content: use add_file".into(),
                })
            }
        };
        let commit = CommitEntry::Version {
            key: e.key(),
            size: e.size,
            mtime_ns: e.mtime_ns,
            ctime_ns: e.ctime_ns,
            inode: e.inode,
            content_hash: None,
            blobs: Vec::new(),
        };
        self.write(&e.rel, &mut entry, Some(&commit))?;
        match e.kind {
            EntryKind::Dir => self.out.dirs += 1,
            EntryKind::Fifo => self.out.fifos += 1,
            _ => self.out.symlinks += 1,
        }
        Ok(())
    }

    /// Adds the deletion of a path (a folder's deletion covers everything under it).
    pub fn add_deletion(&mut self, rel: &RelPath, kind: EntryKind) -> Result<(), DeltaBuildError> {
        let (path, raw_path) = wire(rel)?;
        let mut entry = DeltaEntry::Delete { path, raw_path };
        let commit = CommitEntry::Deletion {
            key: catalog_key(rel, kind == EntryKind::Dir),
        };
        self.write(rel, &mut entry, Some(&commit))?;
        self.out.deletes += 1;
        Ok(())
    }

    fn write(
        &mut self,
        rel: &RelPath,
        entry: &mut DeltaEntry,
        commit: Option<&CommitEntry>,
    ) -> Result<(), DeltaBuildError> {
        entry.validate().map_err(|msg| DeltaBuildError::Invalid {
            rel: rel.clone(),
            msg,
        })?;
        // Sealed here too, so the size check below sees the line as it will be written.
        entry.seal(&self.key);
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, entry)
            .map_err(|e| DeltaBuildError::Journal(e.to_string()))?;
        let line = self.scratch.len() as u64 + 1;
        let full = self.open.as_ref().is_some_and(|p| {
            p.writer.entries() >= self.limits.max_entries
                || (p.writer.entries() > 0 && p.bytes + line + END_RESERVE > self.limits.max_bytes)
        });
        if full {
            self.close_part()?;
        }
        if self.open.is_none() {
            let index = self.parts.len() as u32;
            let path = self.dir.join(format!("part-{index:06}.ndjson"));
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            let w = Counting {
                inner: BufWriter::with_capacity(256 * 1024, f),
                written: 0,
            };
            self.open = Some(OpenPart {
                index,
                path,
                writer: DeltaWriter::new(w, &self.header, &self.key)?,
                bytes: self.header_len,
            });
        }
        if let Some(p) = self.open.as_mut() {
            p.writer.write(entry)?;
            p.bytes += line;
        }
        self.digest.add(entry);
        self.out.entries += 1;
        if let (Some((_, w, n)), Some(c)) = (self.journal.as_mut(), commit) {
            write_journal(w, c)?;
            *n += 1;
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<(), DeltaBuildError> {
        if let Some(p) = self.open.take() {
            let entries = p.writer.entries();
            let mut w = p.writer.finish()?;
            w.flush()?;
            let bytes = w.written;
            w.inner.into_inner().map_err(|e| e.into_error())?;
            self.parts.push(DeltaPart {
                index: p.index,
                path: p.path,
                entries,
                bytes,
            });
        }
        Ok(())
    }

    /// Finishes the last part and the journal.
    pub fn finish(mut self) -> Result<DeltaOutput, DeltaBuildError> {
        self.close_part()?;
        let mut out = std::mem::replace(&mut self.out, DeltaOutput::empty());
        out.parts = std::mem::take(&mut self.parts);
        out.digest = self.digest.finish();
        if let Some((path, mut w, entries)) = self.journal.take() {
            w.flush()?;
            w.into_inner().map_err(|e| e.into_error())?;
            out.journal = Some(CommitJournal { path, entries });
        }
        Ok(out)
    }
}

fn wire(rel: &RelPath) -> Result<(String, Option<Vec<u8>>), DeltaBuildError> {
    os_path_to_wire(&rel.to_path()).map_err(|source| DeltaBuildError::Path {
        rel: rel.clone(),
        source,
    })
}

const JOURNAL_MAGIC: &[u8; 8] = b"KSJRNL1\n";
const TAG_VERSION: u8 = b'V';
const TAG_DELETION: u8 = b'D';

fn write_journal(w: &mut impl Write, c: &CommitEntry) -> io::Result<()> {
    match c {
        CommitEntry::Version {
            key,
            size,
            mtime_ns,
            ctime_ns,
            inode,
            content_hash,
            blobs,
        } => {
            w.write_all(&[TAG_VERSION])?;
            w.write_all(&(key.len() as u32).to_le_bytes())?;
            w.write_all(key)?;
            w.write_all(&size.to_le_bytes())?;
            w.write_all(&mtime_ns.to_le_bytes())?;
            w.write_all(&ctime_ns.to_le_bytes())?;
            w.write_all(&inode.to_le_bytes())?;
            match content_hash {
                Some(h) => {
                    w.write_all(&[1])?;
                    w.write_all(h)?;
                }
                None => w.write_all(&[0])?,
            }
            w.write_all(&(blobs.len() as u32).to_le_bytes())?;
            for b in blobs {
                w.write_all(&b.id)?;
                w.write_all(&b.len.to_le_bytes())?;
            }
        }
        CommitEntry::Deletion { key } => {
            w.write_all(&[TAG_DELETION])?;
            w.write_all(&(key.len() as u32).to_le_bytes())?;
            w.write_all(key)?;
        }
    }
    Ok(())
}

/// The commit journal of a delta: the catalog updates to apply once the job is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitJournal {
    /// The file.
    pub path: PathBuf,
    /// Records in it (one per delta entry).
    pub entries: u64,
}

impl CommitJournal {
    /// Reads the journal back in batches of at most `batch` entries, for
    /// `Catalog::record_commit(source, seq, &batch)`.
    pub fn batches(&self, batch: usize) -> Result<JournalBatches, DeltaBuildError> {
        let mut r = BufReader::with_capacity(256 * 1024, File::open(&self.path)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != JOURNAL_MAGIC {
            return Err(DeltaBuildError::Journal("not a commit journal".into()));
        }
        Ok(JournalBatches {
            input: r,
            batch: batch.max(1),
            done: false,
        })
    }
}

/// Iterator over batches of a [`CommitJournal`].
pub struct JournalBatches {
    input: BufReader<File>,
    batch: usize,
    done: bool,
}

impl std::fmt::Debug for JournalBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalBatches")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

const MAX_KEY_LEN: u32 = 1 << 20;
const MAX_BLOBS: u32 = 1 << 26;

impl JournalBatches {
    fn read_u32(&mut self) -> Result<u32, DeltaBuildError> {
        let mut b = [0u8; 4];
        self.input.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn read_u64(&mut self) -> Result<u64, DeltaBuildError> {
        let mut b = [0u8; 8];
        self.input.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn read_key(&mut self) -> Result<Vec<u8>, DeltaBuildError> {
        let n = self.read_u32()?;
        if n > MAX_KEY_LEN {
            return Err(DeltaBuildError::Journal("key too long".into()));
        }
        let mut k = vec![0u8; n as usize];
        self.input.read_exact(&mut k)?;
        Ok(k)
    }

    fn next_entry(&mut self) -> Result<Option<CommitEntry>, DeltaBuildError> {
        let mut tag = [0u8; 1];
        if self.input.read(&mut tag)? == 0 {
            return Ok(None);
        }
        match tag[0] {
            TAG_VERSION => {
                let key = self.read_key()?;
                let size = self.read_u64()?;
                let mtime_ns = self.read_u64()? as i64;
                let ctime_ns = self.read_u64()? as i64;
                let inode = self.read_u64()?;
                let mut has = [0u8; 1];
                self.input.read_exact(&mut has)?;
                let content_hash = if has[0] == 1 {
                    let mut h = [0u8; 32];
                    self.input.read_exact(&mut h)?;
                    Some(h)
                } else {
                    None
                };
                let n = self.read_u32()?;
                if n > MAX_BLOBS {
                    return Err(DeltaBuildError::Journal("blob list too long".into()));
                }
                let mut blobs = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let mut id = [0u8; 32];
                    self.input.read_exact(&mut id)?;
                    let len = self.read_u64()?;
                    blobs.push(BlobRef { id, len });
                }
                Ok(Some(CommitEntry::Version {
                    key,
                    size,
                    mtime_ns,
                    ctime_ns,
                    inode,
                    content_hash,
                    blobs,
                }))
            }
            TAG_DELETION => Ok(Some(CommitEntry::Deletion {
                key: self.read_key()?,
            })),
            other => Err(DeltaBuildError::Journal(format!(
                "unknown record tag {other}"
            ))),
        }
    }
}

impl Iterator for JournalBatches {
    type Item = Result<Vec<CommitEntry>, DeltaBuildError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut out = Vec::with_capacity(self.batch.min(4096));
        while out.len() < self.batch {
            match self.next_entry() {
                Ok(Some(e)) => out.push(e),
                Ok(None) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        if out.is_empty() {
            None
        } else {
            Some(Ok(out))
        }
    }
}
