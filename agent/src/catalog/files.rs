//! The `files` and `file_blobs` tables as read by everyone: one row per file, folder, symlink
//! or named pipe ([`FileRecord`], or the lighter [`ScanRow`] a rescan compares), its
//! [`FileState`], the encoding of a committed version's blob list ([`encode_blob_list`],
//! [`decode_blob_list`]) and the lookups, pages and counts over those rows.
//!
//! Crash behaviour: nothing here writes. The rows are written by the scan transactions (see
//! `scans`), by a recorded commit (see `commits`) and by a deferred queue item (see `queue`),
//! each in one transaction, so these reads only ever see a committed state. A row or blob list
//! this build cannot interpret is reported as [`CatalogError::Corrupt`], never trusted.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{BlobId, Catalog, CatalogError, Result, SourceId};
use crate::entry::Stat;
use crate::entry::{catalog_key, Entry, EntryKind};
use crate::relpath::RelPath;

/// Backup state of a catalog row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Seen with metadata that no committed version has; needs backing up.
    Pending,
    /// Its blobs are on the server; the delta referencing them is not committed yet.
    Uploaded,
    /// The last committed version matches the metadata last seen.
    Committed,
    /// Gone from disk (seen missing by a completed scan); the deletion is not committed yet.
    Deleted,
    /// The last backup attempt failed (see `error` and the queue's attempts).
    Error,
}

impl FileState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Uploaded => "uploaded",
            FileState::Committed => "committed",
            FileState::Deleted => "deleted",
            FileState::Error => "error",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<FileState> {
        Some(match s {
            "pending" => FileState::Pending,
            "uploaded" => FileState::Uploaded,
            "committed" => FileState::Committed,
            "deleted" => FileState::Deleted,
            "error" => FileState::Error,
            _ => return None,
        })
    }
}

/// One catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Catalog key: the relative path's bytes, with a trailing `/` for a folder.
    pub key: Vec<u8>,
    /// File, folder or symlink.
    pub kind: EntryKind,
    /// Size last seen.
    pub size: u64,
    /// mtime last seen (ns).
    pub mtime_ns: i64,
    /// ctime last seen (ns).
    pub ctime_ns: i64,
    /// Inode last seen.
    pub inode: u64,
    /// Device last seen.
    pub device: u64,
    /// Mode last seen.
    pub mode: u32,
    /// Symlink target last seen.
    pub symlink_target: Option<Vec<u8>>,
    /// Content hash of the committed version (opaque 32 bytes).
    pub content_hash: Option<[u8; 32]>,
    /// Backup state.
    pub state: FileState,
    /// Scan generation that last wrote this row's metadata.
    pub changed_generation: i64,
    /// Sequence number of the job that committed the current committed version.
    pub committed_seq: Option<i64>,
    /// Last error.
    pub error: Option<String>,
}

impl FileRecord {
    /// The relative path (the key without a folder's trailing `/`).
    pub fn rel(&self) -> RelPath {
        let k = self.key.strip_suffix(b"/").unwrap_or(&self.key);
        RelPath::from_bytes(k.to_vec()).unwrap_or_default()
    }

    /// Whether `e` looks unchanged: same kind, size, mtime, ctime and inode (and symlink
    /// target). The device number is not compared: it can change when a NAS share or a USB
    /// disk is mounted again, which must not force a full re-read.
    pub fn same_metadata(&self, e: &Entry) -> bool {
        metadata_matches(
            self.kind,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.inode,
            self.symlink_target.as_deref(),
            e,
        )
    }

    /// Whether a version of this path has been committed to the server.
    pub fn has_committed_version(&self) -> bool {
        self.committed_seq.is_some()
    }
}

fn metadata_matches(
    kind: EntryKind,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
    target: Option<&[u8]>,
    e: &Entry,
) -> bool {
    let seen = Stat {
        size,
        mtime_ns,
        ctime_ns,
        inode,
        is_file: kind == EntryKind::File,
        ..Stat::default()
    };
    kind == e.kind
        && seen.same_version(&e.stat())
        && (kind != EntryKind::Symlink || target == e.symlink_target.as_deref())
}

/// The part of a catalog row a rescan compares (lighter than [`FileRecord`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRow {
    /// Catalog key.
    pub key: Vec<u8>,
    /// Kind.
    pub kind: EntryKind,
    /// Size last seen.
    pub size: u64,
    /// mtime last seen.
    pub mtime_ns: i64,
    /// ctime last seen.
    pub ctime_ns: i64,
    /// Inode last seen.
    pub inode: u64,
    /// Symlink target last seen.
    pub symlink_target: Option<Vec<u8>>,
    /// Backup state.
    pub state: FileState,
    /// Sequence of the committing job, if any version was committed.
    pub committed_seq: Option<i64>,
}

impl ScanRow {
    /// See [`FileRecord::same_metadata`].
    pub fn same_metadata(&self, e: &Entry) -> bool {
        metadata_matches(
            self.kind,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
            self.inode,
            self.symlink_target.as_deref(),
            e,
        )
    }

    /// Whether a version was committed.
    pub fn has_committed_version(&self) -> bool {
        self.committed_seq.is_some()
    }

    /// The relative path.
    pub fn rel(&self) -> RelPath {
        let k = self.key.strip_suffix(b"/").unwrap_or(&self.key);
        RelPath::from_bytes(k.to_vec()).unwrap_or_default()
    }
}

/// One blob of a file's content: its id and plaintext length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// Blob id.
    pub id: BlobId,
    /// Plaintext length of the chunk.
    pub len: u64,
}

const BLOB_LIST_VERSION: u8 = 1;

/// Encodes an ordered blob list: a version byte, then per blob the 32-byte id and the length
/// as an unsigned LEB128 varint (1–3 bytes for typical chunk sizes).
pub fn encode_blob_list(blobs: &[BlobRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + blobs.len() * 35);
    out.push(BLOB_LIST_VERSION);
    for b in blobs {
        out.extend_from_slice(&b.id);
        let mut v = b.len;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

/// Decodes [`encode_blob_list`]'s format.
pub fn decode_blob_list(mut data: &[u8]) -> Result<Vec<BlobRef>> {
    let bad = |why: &str| CatalogError::Corrupt(format!("blob list: {why}"));
    let (&version, rest) = data.split_first().ok_or_else(|| bad("empty"))?;
    if version != BLOB_LIST_VERSION {
        return Err(bad("unknown version"));
    }
    data = rest;
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 32 {
            return Err(bad("truncated id"));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&data[..32]);
        data = &data[32..];
        let mut len: u64 = 0;
        let mut shift = 0u32;
        loop {
            let (&byte, rest) = data.split_first().ok_or_else(|| bad("truncated length"))?;
            data = rest;
            if shift >= 64 || (shift == 63 && byte > 1) {
                return Err(bad("length overflows"));
            }
            len |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        out.push(BlobRef { id, len });
    }
    Ok(out)
}

const FILE_COLUMNS: &str =
    "path, kind, size, mtime_ns, ctime_ns, inode, device, mode, symlink_target, \
     content_hash, state, changed_generation, committed_seq, error";

fn record_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<std::result::Result<FileRecord, String>> {
    let key: Vec<u8> = row.get(0)?;
    let kind: i64 = row.get(1)?;
    let hash: Option<Vec<u8>> = row.get(9)?;
    let state_ref = row.get_ref(10)?;
    let state_text = state_ref.as_str().unwrap_or("");
    let Some(kind) = EntryKind::from_code(kind) else {
        return Ok(Err(format!("unknown kind {kind}")));
    };
    let Some(state) = FileState::parse(state_text) else {
        return Ok(Err(format!("unknown state {state_text:?}")));
    };
    let content_hash = match hash {
        None => None,
        Some(h) => match <[u8; 32]>::try_from(h.as_slice()) {
            Ok(a) => Some(a),
            Err(_) => return Ok(Err("content hash is not 32 bytes".to_string())),
        },
    };
    Ok(Ok(FileRecord {
        key,
        kind,
        size: row.get::<_, i64>(2)? as u64,
        mtime_ns: row.get(3)?,
        ctime_ns: row.get(4)?,
        inode: row.get::<_, i64>(5)? as u64,
        device: row.get::<_, i64>(6)? as u64,
        mode: row.get::<_, i64>(7)? as u32,
        symlink_target: row.get(8)?,
        content_hash,
        state,
        changed_generation: row.get(11)?,
        committed_seq: row.get(12)?,
        error: row.get(13)?,
    }))
}

impl Catalog {
    /// The row for exactly this catalog key.
    pub fn lookup_key(&self, source: SourceId, key: &[u8]) -> Result<Option<FileRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE source_id = ?1 AND path = ?2"
        ))?;
        match st
            .query_row(params![source, key], record_from_row)
            .optional()?
        {
            None => Ok(None),
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(why)) => Err(CatalogError::Corrupt(why)),
        }
    }

    /// The row for a relative path (a file or symlink, else a folder of that name).
    pub fn lookup(&self, source: SourceId, rel: &RelPath) -> Result<Option<FileRecord>> {
        if let Some(r) = self.lookup_key(source, &catalog_key(rel, false))? {
            return Ok(Some(r));
        }
        self.lookup_key(source, &catalog_key(rel, true))
    }

    /// Up to `limit` rows with keys greater than `after`, in key order (a page of a merge).
    pub fn records_after(
        &self,
        source: SourceId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<FileRecord>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE source_id = ?1 AND path > ?2 ORDER BY path LIMIT ?3"
        ))?;
        let rows = st.query_map(params![source, after, limit as i64], record_from_row)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for r in rows {
            out.push(r?.map_err(CatalogError::Corrupt)?);
        }
        Ok(out)
    }

    /// Up to `limit` rows (the compared columns only) with keys greater than `after`, in key
    /// order: one page of a rescan's merge.
    pub fn scan_rows_after(
        &self,
        source: SourceId,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<ScanRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT path, kind, size, mtime_ns, ctime_ns, inode, symlink_target, state, committed_seq
             FROM files WHERE source_id = ?1 AND path > ?2 ORDER BY path LIMIT ?3",
        )?;
        let mut rows = st.query(params![source, after, limit as i64])?;
        let mut out = Vec::with_capacity(limit.min(4096));
        while let Some(r) = rows.next()? {
            let kind: i64 = r.get(1)?;
            let kind = EntryKind::from_code(kind)
                .ok_or_else(|| CatalogError::Corrupt(format!("unknown kind {kind}")))?;
            let state_ref = r.get_ref(7)?;
            let state_text = state_ref.as_str().unwrap_or("");
            let state = FileState::parse(state_text)
                .ok_or_else(|| CatalogError::Corrupt(format!("unknown state {state_text:?}")))?;
            out.push(ScanRow {
                key: r.get(0)?,
                kind,
                size: r.get::<_, i64>(2)? as u64,
                mtime_ns: r.get(3)?,
                ctime_ns: r.get(4)?,
                inode: r.get::<_, i64>(5)? as u64,
                symlink_target: r.get(6)?,
                state,
                committed_seq: r.get(8)?,
            });
        }
        Ok(out)
    }

    /// Number of rows of a source, optionally only in one state.
    pub fn count_files(&self, source: SourceId, state: Option<FileState>) -> Result<u64> {
        let n: i64 = match state {
            None => self.conn.query_row(
                "SELECT count(*) FROM files WHERE source_id = ?1",
                [source],
                |r| r.get(0),
            )?,
            Some(s) => self.conn.query_row(
                "SELECT count(*) FROM files WHERE source_id = ?1 AND state = ?2",
                params![source, s.as_str()],
                |r| r.get(0),
            )?,
        };
        Ok(n as u64)
    }

    /// The blob list of the committed version of a path.
    pub fn blob_list(&self, source: SourceId, key: &[u8]) -> Result<Option<Vec<BlobRef>>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT blobs FROM file_blobs WHERE source_id = ?1 AND path = ?2")?;
        let data: Option<Vec<u8>> = st
            .query_row(params![source, key], |r| r.get(0))
            .optional()?;
        data.map(|d| decode_blob_list(&d)).transpose()
    }

    /// Files of `source` not yet committed in their current version: (count, bytes).
    pub fn pending_files(&self, source: SourceId) -> Result<(u64, u64)> {
        let mut st = self.conn.prepare_cached(
            "SELECT count(*), coalesce(sum(size), 0) FROM files
              WHERE source_id = ?1 AND kind = 0 AND state IN ('pending', 'uploaded', 'error')",
        )?;
        let (n, b): (i64, i64) = st.query_row([source], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok((n.max(0) as u64, b.max(0) as u64))
    }

    /// Calls `f(path, size)` for up to `limit` regular files of `source` not yet committed in
    /// their current version (in path order); returns how many it visited.
    pub fn for_each_pending(
        &self,
        source: SourceId,
        limit: u64,
        mut f: impl FnMut(&[u8], u64),
    ) -> Result<u64> {
        let mut st = self.conn.prepare_cached(
            "SELECT path, size FROM files
              WHERE source_id = ?1 AND kind = 0 AND state IN ('pending', 'uploaded', 'error')
              ORDER BY path LIMIT ?2",
        )?;
        let mut rows = st.query(rusqlite::params![source, limit.min(i64::MAX as u64) as i64])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let path: Vec<u8> = r.get(0)?;
            let size: i64 = r.get(1)?;
            f(&path, size.max(0) as u64);
            n += 1;
        }
        Ok(n)
    }

    /// Regular files of `source` under `prefix` (raw relative path bytes, no trailing slash;
    /// empty for the whole source) by state: (committed, not committed).
    pub fn files_under(&self, source: SourceId, prefix: &[u8]) -> Result<(u64, u64)> {
        let mut lo = prefix.to_vec();
        let mut hi = prefix.to_vec();
        if !prefix.is_empty() {
            lo.push(b'/');
            hi.push(b'0');
        } else {
            hi = vec![0xff; 1];
        }
        let mut st = self.conn.prepare_cached(
            "SELECT count(*) FILTER (WHERE state = 'committed'),
                    count(*) FILTER (WHERE state IN ('pending', 'uploaded', 'error'))
               FROM files
              WHERE source_id = ?1 AND kind = 0
                AND ((path >= ?2 AND path < ?3) OR path = ?4)",
        )?;
        let (c, p): (i64, i64) = st.query_row(rusqlite::params![source, lo, hi, prefix], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok((c.max(0) as u64, p.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_list_roundtrip() {
        let blobs = vec![
            BlobRef {
                id: [1; 32],
                len: 0,
            },
            BlobRef {
                id: [2; 32],
                len: 127,
            },
            BlobRef {
                id: [3; 32],
                len: 1 << 20,
            },
            BlobRef {
                id: [4; 32],
                len: u64::MAX,
            },
        ];
        let enc = encode_blob_list(&blobs);
        assert_eq!(enc.len(), 1 + 4 * 32 + 1 + 1 + 3 + 10);
        assert_eq!(decode_blob_list(&enc).unwrap(), blobs);
        assert_eq!(decode_blob_list(&encode_blob_list(&[])).unwrap(), vec![]);
    }

    #[test]
    fn blob_list_rejects_garbage() {
        assert!(decode_blob_list(&[]).is_err());
        assert!(decode_blob_list(&[9]).is_err());
        assert!(decode_blob_list(&[1, 0, 0]).is_err());
        let mut enc = encode_blob_list(&[BlobRef {
            id: [7; 32],
            len: 300,
        }]);
        enc.pop();
        assert!(decode_blob_list(&enc).is_err());
        let mut over = vec![1u8];
        over.extend_from_slice(&[0; 32]);
        over.extend_from_slice(&[0xff; 10]);
        over.push(0x01);
        assert!(decode_blob_list(&over).is_err());
    }

    #[test]
    fn states_roundtrip() {
        for s in [
            FileState::Pending,
            FileState::Uploaded,
            FileState::Committed,
            FileState::Deleted,
            FileState::Error,
        ] {
            assert_eq!(FileState::parse(s.as_str()), Some(s));
        }
    }
}
