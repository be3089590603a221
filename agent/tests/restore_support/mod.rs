//! An in-memory recovery point for restore tests: a sorted listing of entries sealed with
//! their metadata MAC, and the sealed blobs of their content (one or more stored copies each),
//! served through [`RestoreSource`] as the server would (pages, framed blob streams, `avoid`,
//! 404 `blobs_missing`, `blobs/adopt`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use keepsake_agent::client::ClientError;
use keepsake_agent::recovery::{self, ValidateProgress};
use keepsake_agent::restore::names::NameRules;
use keepsake_agent::restore::{
    restore_from, RestoreOptions, RestoreProgress, RestoreReport, RestoreSource,
};
use keepsake_common::api::{BlobCopy, FileAtPoint, FileKind, ValidationReport};
use keepsake_common::delta::ChunkRef;
use keepsake_common::framing::{FrameHeader, FrameWriter};
use keepsake_common::ids::{BlobId, CipherHash, ContentHash};
use keepsake_common::keys::OrgKeys;
use keepsake_common::mac::EntryMacKey;
use keepsake_common::path::bytes_to_wire;
use uuid::Uuid;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
/// A modification time with microseconds (what the server keeps).
pub const T0: i64 = 1_600_000_000_123_456_000;

/// Deterministic bytes that do not compress to nothing.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

/// The point and its blobs.
pub struct Point {
    pub keys: OrgKeys,
    pub mac: EntryMacKey,
    pub entries: Vec<FileAtPoint>,
    /// Stored copies of each blob, served in this order (minus those avoided).
    pub copies: HashMap<BlobId, Vec<(FrameHeader, Vec<u8>)>>,
    /// Every `blobs/adopt` request.
    pub adopted: Mutex<Vec<Vec<BlobCopy>>>,
    /// `blobs/read` requests with a non-empty `avoid`.
    pub avoiding_reads: AtomicUsize,
}

impl Default for Point {
    fn default() -> Self {
        Self::new()
    }
}

impl Point {
    pub fn new() -> Point {
        let keys = OrgKeys::generate().unwrap();
        let mac = EntryMacKey::derive(&keys.chunk_id_key);
        Point {
            keys,
            mac,
            entries: Vec::new(),
            copies: HashMap::new(),
            adopted: Mutex::new(Vec::new()),
            avoiding_reads: AtomicUsize::new(0),
        }
    }

    fn entry(path: &str, kind: FileKind, mode: Option<u32>) -> FileAtPoint {
        FileAtPoint {
            path: path.to_string(),
            raw_path: None,
            kind,
            size: 0,
            mtime_ns: Some(T0),
            mode,
            symlink_target: None,
            content_hash: None,
            chunks: Vec::new(),
            link: None,
            mac: None,
        }
    }

    /// Seals `f` with its MAC and adds it.
    pub fn push(&mut self, mut f: FileAtPoint) -> usize {
        f.mac = Some(self.mac.mac(&f.facts()));
        self.entries.push(f);
        self.entries.len() - 1
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> usize {
        self.push(Self::entry(
            path,
            FileKind::Directory,
            Some(0o040000 | mode),
        ))
    }

    /// The entry of a file holding `data` (blobs stored), not yet added.
    pub fn file_entry(&mut self, path: &str, data: &[u8], mode: u32) -> FileAtPoint {
        let mut f = Self::entry(path, FileKind::File, Some(0o100000 | mode));
        f.size = data.len() as u64;
        f.content_hash = Some(ContentHash::of(&self.keys.chunk_id_key, data));
        for chunk in data.chunks(CHUNK) {
            let sealed = self.keys.seal_blob(chunk).unwrap();
            f.chunks.push(ChunkRef {
                id: sealed.id,
                len: chunk.len() as u32,
            });
            self.copies
                .entry(sealed.id)
                .or_insert_with(|| vec![(FrameHeader::for_blob(&sealed), sealed.ciphertext)]);
        }
        f
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> usize {
        let f = self.file_entry(path, data, mode);
        self.push(f)
    }

    /// A file whose path has non-UTF-8 bytes.
    pub fn raw_file(&mut self, raw: &[u8], data: &[u8]) -> usize {
        let (wire, _) = bytes_to_wire(raw);
        let mut f = self.file_entry(&wire, data, 0o644);
        f.raw_path = Some(raw.to_vec());
        self.push(f)
    }

    /// A file of hard-link group `group`.
    pub fn linked(&mut self, path: &str, data: &[u8], group: u64) -> usize {
        let mut f = self.file_entry(path, data, 0o644);
        f.link = Some(group);
        self.push(f)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> usize {
        let mut f = Self::entry(path, FileKind::Symlink, None);
        f.symlink_target = Some(target.to_string());
        self.push(f)
    }

    pub fn fifo(&mut self, path: &str, mode: u32) -> usize {
        self.push(Self::entry(path, FileKind::Fifo, Some(0o010000 | mode)))
    }

    /// Puts a wrong copy of `id` (another blob's ciphertext under `id`'s name) first.
    pub fn wrong_copy_first(&mut self, id: BlobId, seed: u64) {
        let other = self.keys.seal_blob(&bytes(seed, 1000)).unwrap();
        let mut h = FrameHeader::for_blob(&other);
        h.blob_id = id;
        self.copies
            .entry(id)
            .or_default()
            .insert(0, (h, other.ciphertext));
    }

    /// Sorts the listing as the server does (by path).
    pub fn sorted(mut self) -> Point {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        self
    }

    /// Every copy adopted so far.
    pub fn adopted_copies(&self) -> Vec<BlobCopy> {
        self.adopted
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .copied()
            .collect()
    }

    /// Restores everything into `target` (case-sensitive unless `opts` says otherwise).
    pub fn restore(&self, target: &Path, opts: impl FnOnce(&mut RestoreOptions)) -> RestoreReport {
        let mut o = RestoreOptions::new(Uuid::nil(), target);
        o.workers = 3;
        o.batch_bytes = 2 * CHUNK as u64;
        o.name_rules = NameRules::Unix;
        o.case_insensitive = Some(false);
        opts(&mut o);
        restore_from(self, &self.keys, &o, &RestoreProgress::default()).unwrap()
    }

    /// Validates `target` against the whole point.
    pub fn validate(&self, target: &Path, case_insensitive: bool) -> ValidationReport {
        recovery::validate_from(
            self,
            &self.keys.chunk_id_key,
            Uuid::nil(),
            &[String::new()],
            target,
            NameRules::Unix,
            Some(case_insensitive),
            &ValidateProgress::default(),
        )
        .unwrap()
    }
}

impl RestoreSource for Point {
    fn files_page(
        &self,
        _point: Uuid,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        _chunks: bool,
    ) -> Result<(Vec<FileAtPoint>, bool), ClientError> {
        let under = format!("{prefix}/");
        let mut page: Vec<FileAtPoint> = self
            .entries
            .iter()
            .filter(|f| prefix.is_empty() || f.path == prefix || f.path.starts_with(&under))
            .filter(|f| after.is_none_or(|a| f.path.as_str() > a))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more))
    }

    fn read_blobs(
        &self,
        ids: &[BlobId],
        avoid: &[CipherHash],
    ) -> Result<Box<dyn std::io::Read + '_>, ClientError> {
        if !avoid.is_empty() {
            self.avoiding_reads.fetch_add(1, Ordering::Relaxed);
        }
        let mut w = FrameWriter::new(Vec::new()).unwrap();
        for id in ids {
            let copy = self
                .copies
                .get(id)
                .and_then(|cs| cs.iter().find(|(h, _)| !avoid.contains(&h.cipher_hash)));
            let Some((h, ct)) = copy else {
                return Err(ClientError::Api {
                    status: 404,
                    message: format!("no copy of blob {id} left"),
                    code: Some("blobs_missing".into()),
                    body: serde_json::Value::Null,
                });
            };
            w.write_frame(h, ct).unwrap();
        }
        Ok(Box::new(Cursor::new(w.finish().unwrap())))
    }

    fn adopt(&self, copies: &[BlobCopy]) -> Result<u64, ClientError> {
        self.adopted.lock().unwrap().push(copies.to_vec());
        Ok(copies.len() as u64)
    }
}
