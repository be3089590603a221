//! The job delta: what changed in one backup source since its parent state.
//!
//! NDJSON (one JSON object per line, `\n`-terminated, UTF-8):
//!
//! ```text
//! {"keepsake_delta":2,"source":"…","parent_seq":41}                  header (first line)
//! {"op":"upsert","path":"…","size":…,"mtime_ns":…,"mode":…,"content_hash":"…","chunks":[{"id":"…","len":…},…],"link":…,"mac":"…"}
//! {"op":"delete","path":"…"}
//! {"op":"symlink","path":"…","target":"…","mtime_ns":…,"mac":"…"}
//! {"op":"dir","path":"…","mtime_ns":…,"mode":…,"mac":"…"}
//! {"op":"fifo","path":"…","mtime_ns":…,"mode":…,"mac":"…"}
//! {"op":"end","entries":5}                                           trailer (last line)
//! ```
//!
//! `raw_path` (and `raw_target`) are standard base64 of the exact name bytes, present only when the
//! display form had to escape bytes (see [`crate::path`]). `link` is a file's hard-link group
//! (present only for files with more than one name). Every entry but a deletion carries `mac`, the
//! agent's [`crate::mac`] over its metadata, which [`DeltaWriter`] computes and [`DeltaReader`]
//! requires. The trailer's entry count makes a cut delta an error. [`DeltaWriter`] and
//! [`DeltaReader`] stream: neither holds more than one line. [`DeltaDigester`] hashes entries in
//! the order sent, so the server can prove that what it staged is what the agent sent.
//!
//! Pure format code: no state survives a crash.

use std::io::{self, BufRead, Read, Write};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::chunking::MAX_CHUNK_LEN;
use crate::ids::{BlobId, ContentHash, DeltaDigest, EntryMac};
use crate::mac::{EntryFacts, EntryMacKey, FactKind};
use crate::path::{self, PathError};

/// Current delta format version (the header's `keepsake_delta` value). Version 2 added entry
/// MACs, named pipes and hard-link groups; version 1 is no longer read.
pub const DELTA_VERSION: u32 = 2;
/// Longest line accepted (64 MiB: an upsert of a file with about 700 000 chunks).
pub const MAX_LINE_LEN: usize = 64 * 1024 * 1024;
/// Longest symlink target accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 16 * 1024;

/// First line of a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaHeader {
    /// Format version ([`DELTA_VERSION`]).
    #[serde(rename = "keepsake_delta")]
    pub version: u32,
    /// The backup source (agent-chosen identifier, e.g. the source's UUID).
    pub source: String,
    /// Sequence number of the parent state this delta applies to (`None` for the first job).
    pub parent_seq: Option<u64>,
}

impl DeltaHeader {
    /// A header of the current version.
    pub fn new(source: impl Into<String>, parent_seq: Option<u64>) -> Self {
        DeltaHeader {
            version: DELTA_VERSION,
            source: source.into(),
            parent_seq,
        }
    }
}

/// One chunk of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    pub id: BlobId,
    pub len: u32,
}

pub mod b64_opt {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(d)?;
        s.map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Entry {
    /// A regular file, new or changed.
    Upsert {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
        raw_path: Option<Vec<u8>>,
        size: u64,
        mtime_ns: i64,
        mode: u32,
        content_hash: ContentHash,
        chunks: Vec<ChunkRef>,
        /// Hard-link group: files of one source with the same group were one inode.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<EntryMac>,
    },
    /// A file, link or directory that no longer exists (a directory delete removes everything
    /// under it).
    Delete {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
        raw_path: Option<Vec<u8>>,
    },
    /// A symbolic link, recorded with its target (never followed).
    Symlink {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
        raw_path: Option<Vec<u8>>,
        /// Display form of the target (same escaping as paths; may be absolute or contain `..`).
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
        raw_target: Option<Vec<u8>>,
        mtime_ns: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<EntryMac>,
    },
    /// A directory (so empty directories and their modes are restored).
    Dir {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
        raw_path: Option<Vec<u8>>,
        mtime_ns: i64,
        mode: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<EntryMac>,
    },
    /// A named pipe (recreated by restore; it has no content).
    Fifo {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
        raw_path: Option<Vec<u8>>,
        mtime_ns: i64,
        mode: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<EntryMac>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    op: EndTag,
    entries: u64,
}

#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum EndTag {
    End,
}

/// Errors reading or writing a delta.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("line {line}: {msg}")]
    Syntax { line: u64, msg: String },
    #[error("line {line}: longer than {MAX_LINE_LEN} bytes")]
    LineTooLong { line: u64 },
    #[error("unsupported delta version {0} (this program reads version {DELTA_VERSION})")]
    UnsupportedVersion(u32),
    #[error("line {line}: bad path: {source}")]
    Path { line: u64, source: PathError },
    #[error("line {line}: {msg}")]
    Invalid { line: u64, msg: String },
    #[error("delta truncated: no end line")]
    Truncated,
    #[error("end line says {expected} entries, read {actual}")]
    CountMismatch { expected: u64, actual: u64 },
    #[error("data after the end line")]
    TrailingData,
    #[error("delta already finished")]
    Finished,
}

impl Entry {
    /// The entry's display path.
    pub fn path(&self) -> &str {
        match self {
            Entry::Upsert { path, .. }
            | Entry::Delete { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::Dir { path, .. }
            | Entry::Fifo { path, .. } => path,
        }
    }

    /// The entry's raw path bytes, if escaped.
    pub fn raw_path(&self) -> Option<&[u8]> {
        match self {
            Entry::Upsert { raw_path, .. }
            | Entry::Delete { raw_path, .. }
            | Entry::Symlink { raw_path, .. }
            | Entry::Dir { raw_path, .. }
            | Entry::Fifo { raw_path, .. } => raw_path.as_deref(),
        }
    }

    /// The metadata the entry's MAC covers (`None` for a deletion, which has no MAC).
    pub fn facts(&self) -> Option<EntryFacts<'_>> {
        fn base(kind: FactKind, path: &str) -> EntryFacts<'_> {
            EntryFacts {
                kind,
                path,
                mode: 0,
                size: 0,
                content_hash: None,
                target: None,
                link: None,
            }
        }
        Some(match self {
            Entry::Upsert {
                path,
                size,
                mode,
                content_hash,
                link,
                ..
            } => EntryFacts {
                mode: *mode,
                size: *size,
                content_hash: Some(content_hash),
                link: *link,
                ..base(FactKind::File, path)
            },
            Entry::Delete { .. } => return None,
            Entry::Symlink { path, target, .. } => EntryFacts {
                target: Some(target),
                ..base(FactKind::Symlink, path)
            },
            Entry::Dir { path, mode, .. } => EntryFacts {
                mode: *mode,
                ..base(FactKind::Dir, path)
            },
            Entry::Fifo { path, mode, .. } => EntryFacts {
                mode: *mode,
                ..base(FactKind::Fifo, path)
            },
        })
    }

    /// The entry's MAC, if it carries one.
    pub fn mac(&self) -> Option<&EntryMac> {
        match self {
            Entry::Upsert { mac, .. }
            | Entry::Symlink { mac, .. }
            | Entry::Dir { mac, .. }
            | Entry::Fifo { mac, .. } => mac.as_ref(),
            Entry::Delete { .. } => None,
        }
    }

    /// Computes and stores the entry's MAC (a deletion has none).
    pub fn seal(&mut self, key: &EntryMacKey) {
        let Some(m) = self.facts().map(|f| key.mac(&f)) else {
            return;
        };
        match self {
            Entry::Upsert { mac, .. }
            | Entry::Symlink { mac, .. }
            | Entry::Dir { mac, .. }
            | Entry::Fifo { mac, .. } => *mac = Some(m),
            Entry::Delete { .. } => {}
        }
    }

    /// Checks the path rules and internal consistency (chunk lengths add up to the size, no
    /// empty or oversized chunk).
    pub fn validate(&self) -> Result<(), String> {
        path::validate_wire_pair(self.path(), self.raw_path())
            .map_err(|e| format!("bad path: {e}"))?;
        match self {
            Entry::Upsert { size, chunks, .. } => {
                let mut sum: u64 = 0;
                for c in chunks {
                    if c.len == 0 || c.len as usize > MAX_CHUNK_LEN {
                        return Err(format!("chunk {} has invalid length {}", c.id, c.len));
                    }
                    sum += u64::from(c.len);
                }
                if sum != *size {
                    return Err(format!("chunk lengths add up to {sum}, size is {size}"));
                }
            }
            Entry::Symlink {
                target, raw_target, ..
            } => {
                if target.is_empty() || target.len() > MAX_TARGET_LEN {
                    return Err("symlink target empty or too long".into());
                }
                if target.contains('\0') {
                    return Err("symlink target contains NUL".into());
                }
                if let Some(raw) = raw_target {
                    if path::wire_path_bytes(target) != *raw {
                        return Err("raw_target does not match target".into());
                    }
                }
            }
            Entry::Fifo { mode, .. } => {
                if mode & 0o170000 != 0 && mode & 0o170000 != 0o010000 {
                    return Err("a named pipe's mode names another file type".into());
                }
            }
            Entry::Delete { .. } | Entry::Dir { .. } => {}
        }
        Ok(())
    }

    /// [`Entry::validate`], and every entry but a deletion must carry its MAC.
    pub fn validate_sealed(&self) -> Result<(), String> {
        self.validate()?;
        if self.facts().is_some() && self.mac().is_none() {
            return Err("entry without a MAC".into());
        }
        Ok(())
    }
}

/// Hashes a job's entries, in the order they are sent, into a [`DeltaDigest`]: the agent over
/// what it writes, the server over what it staged. Each entry contributes an op byte (`U`, `D`,
/// `S`, `R` for a folder, `F`), then for a deletion the length-prefixed path bytes, for every other
/// entry its [`EntryFacts`] encoding, `mtime_ns` (i64), a MAC flag and the MAC, and for a file the
/// chunk count (u32) and each chunk's ID and length (u32). Integers are little-endian.
#[derive(Debug, Clone, Default)]
pub struct DeltaDigester {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    entries: u64,
}

impl DeltaDigester {
    /// An empty digest.
    pub fn new() -> DeltaDigester {
        DeltaDigester::default()
    }

    /// Adds the next entry.
    pub fn add(&mut self, e: &Entry) {
        self.buf.clear();
        let (op, mtime) = match e {
            Entry::Upsert { mtime_ns, .. } => (b'U', Some(*mtime_ns)),
            Entry::Delete { .. } => (b'D', None),
            Entry::Symlink { mtime_ns, .. } => (b'S', Some(*mtime_ns)),
            Entry::Dir { mtime_ns, .. } => (b'R', Some(*mtime_ns)),
            Entry::Fifo { mtime_ns, .. } => (b'F', Some(*mtime_ns)),
        };
        self.buf.push(op);
        match e.facts() {
            None => {
                let p = path::wire_path_bytes(e.path());
                self.buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(&p);
            }
            Some(f) => {
                f.encode(&mut self.buf);
                self.buf
                    .extend_from_slice(&mtime.unwrap_or_default().to_le_bytes());
                match e.mac() {
                    Some(m) => {
                        self.buf.push(1);
                        self.buf.extend_from_slice(m.as_bytes());
                    }
                    None => self.buf.push(0),
                }
            }
        }
        self.hasher.update(&self.buf);
        if let Entry::Upsert { chunks, .. } = e {
            self.hasher.update(&(chunks.len() as u32).to_le_bytes());
            for c in chunks {
                self.hasher.update(c.id.as_bytes());
                self.hasher.update(&c.len.to_le_bytes());
            }
        }
        self.entries += 1;
    }

    /// Entries added.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The digest of the entries added so far.
    pub fn finish(&self) -> DeltaDigest {
        let mut h = self.hasher.clone();
        h.update(&self.entries.to_le_bytes());
        DeltaDigest(*h.finalize().as_bytes())
    }
}

/// Streaming writer of a delta. Every entry it writes is sealed with its MAC.
pub struct DeltaWriter<W: Write> {
    out: W,
    entries: u64,
    finished: bool,
    buf: Vec<u8>,
    key: EntryMacKey,
}

impl<W: Write> DeltaWriter<W> {
    /// Writes the header line; entries will be sealed with `key`.
    pub fn new(mut out: W, header: &DeltaHeader, key: &EntryMacKey) -> Result<Self, DeltaError> {
        let mut buf = serde_json::to_vec(header).map_err(|e| DeltaError::Syntax {
            line: 1,
            msg: e.to_string(),
        })?;
        buf.push(b'\n');
        out.write_all(&buf)?;
        Ok(DeltaWriter {
            out,
            entries: 0,
            finished: false,
            buf,
            key: key.clone(),
        })
    }

    /// Validates, seals (sets its MAC) and writes one entry.
    pub fn write(&mut self, e: &mut Entry) -> Result<(), DeltaError> {
        let line = self.entries + 2;
        if self.finished {
            return Err(DeltaError::Finished);
        }
        e.validate()
            .map_err(|msg| DeltaError::Invalid { line, msg })?;
        e.seal(&self.key);
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, e).map_err(|e| DeltaError::Syntax {
            line,
            msg: e.to_string(),
        })?;
        if self.buf.len() > MAX_LINE_LEN {
            return Err(DeltaError::LineTooLong { line });
        }
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)?;
        self.entries += 1;
        Ok(())
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Writes the end line, flushes and returns the writer.
    pub fn finish(mut self) -> Result<W, DeltaError> {
        self.finished = true;
        let end = EndLine {
            op: EndTag::End,
            entries: self.entries,
        };
        let mut line = serde_json::to_vec(&end).map_err(|e| DeltaError::Syntax {
            line: self.entries + 2,
            msg: e.to_string(),
        })?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Streaming reader of a delta. Every entry is validated ([`Entry::validate`]) before it is
/// returned; a missing end line or a wrong count is an error.
pub struct DeltaReader<R: BufRead> {
    input: R,
    header: DeltaHeader,
    line_no: u64,
    entries: u64,
    done: bool,
    buf: Vec<u8>,
}

fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, line: u64) -> Result<bool, DeltaError> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE_LEN as u64 + 2)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE_LEN {
        return Err(DeltaError::LineTooLong { line });
    } else {
        // A last line without '\n' is a cut file.
        return Err(DeltaError::Truncated);
    }
    if buf.len() > MAX_LINE_LEN {
        return Err(DeltaError::LineTooLong { line });
    }
    Ok(true)
}

impl<R: BufRead> DeltaReader<R> {
    /// Reads and checks the header line.
    pub fn new(mut input: R) -> Result<Self, DeltaError> {
        let mut buf = Vec::new();
        if !read_line(&mut input, &mut buf, 1)? {
            return Err(DeltaError::Truncated);
        }
        #[derive(Deserialize)]
        struct VersionOnly {
            keepsake_delta: u32,
        }
        let v: VersionOnly = serde_json::from_slice(&buf).map_err(|e| DeltaError::Syntax {
            line: 1,
            msg: format!("not a delta header: {e}"),
        })?;
        if v.keepsake_delta != DELTA_VERSION {
            return Err(DeltaError::UnsupportedVersion(v.keepsake_delta));
        }
        let header: DeltaHeader = serde_json::from_slice(&buf).map_err(|e| DeltaError::Syntax {
            line: 1,
            msg: e.to_string(),
        })?;
        Ok(DeltaReader {
            input,
            header,
            line_no: 1,
            entries: 0,
            done: false,
            buf,
        })
    }

    /// The header line.
    pub fn header(&self) -> &DeltaHeader {
        &self.header
    }

    /// The next entry, or `None` after a valid end line.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, DeltaError> {
        if self.done {
            return Ok(None);
        }
        self.line_no += 1;
        let line = self.line_no;
        if !read_line(&mut self.input, &mut self.buf, line)? {
            return Err(DeltaError::Truncated);
        }
        let end = if self.buf.len() <= 256 {
            serde_json::from_slice::<EndLine>(&self.buf).ok()
        } else {
            None
        };
        if let Some(end) = end {
            if end.entries != self.entries {
                return Err(DeltaError::CountMismatch {
                    expected: end.entries,
                    actual: self.entries,
                });
            }
            let mut rest = [0u8; 1];
            loop {
                match self.input.read(&mut rest) {
                    Ok(0) => break,
                    Ok(_) => return Err(DeltaError::TrailingData),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(DeltaError::Io(e)),
                }
            }
            self.done = true;
            return Ok(None);
        }
        let entry: Entry = serde_json::from_slice(&self.buf).map_err(|e| DeltaError::Syntax {
            line,
            msg: e.to_string(),
        })?;
        if let Err(msg) = entry.validate_sealed() {
            if let Err(source) = path::validate_wire_pair(entry.path(), entry.raw_path()) {
                return Err(DeltaError::Path { line, source });
            }
            return Err(DeltaError::Invalid { line, msg });
        }
        self.entries += 1;
        Ok(Some(entry))
    }
}

impl<R: BufRead> Iterator for DeltaReader<R> {
    type Item = Result<Entry, DeltaError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
