//! Cutting files into chunks.
//!
//! Two chunkers, chosen per file by [`ChunkerKind::detect`] from its first bytes:
//!
//! * [`ChunkerKind::Cdc`]: content-defined chunking, FastCDC 2020 (the `fastcdc` crate's `v2020`
//!   cut function, normalisation level 1, its gear table XORed with a seed derived from the
//!   organisation's chunk-ID key, see [`gear_seed`]) with min / average / max sizes of
//!   256 KiB / 1 MiB / 4 MiB. An insertion or deletion moves only the boundaries next to
//!   it; further on the cut points re-synchronise.
//! * [`ChunkerKind::SqlitePages`]: files that start with the SQLite header `"SQLite format 3\0"`
//!   (Lightroom `.lrcat` catalogs) are cut into fixed-size, page-aligned chunks of
//!   [`ChunkerConfig::sqlite_chunk`] bytes (16 KiB by default, rounded up to a multiple of the
//!   database page size). SQLite rewrites changed pages in place, so a next-day edit of a catalog
//!   produces new chunks only around the pages that changed.
//!
//! With either kind a file of at most [`ChunkerConfig::min`] bytes is a single chunk.
//!
//! Boundaries are an agent-side choice (a restore just concatenates the chunks), but they are
//! deterministic: they depend only on the file's bytes and the [`ChunkerConfig`], never on how the
//! reader delivers the data, so two machines of one organisation produce the same blobs.
//!
//! Two ways to run the same cuts: [`Chunker`], an iterator that owns its window and hands out
//! owned chunks, and [`chunk_with`], which cuts into a [`Window`] the caller keeps from file
//! to file and lends each chunk to a callback (what the agent's readers use, one window per
//! thread). Both are built on one implementation of the cut rules.
//!
//! Memory: either holds one window of `2 * max` bytes (8 MiB by default), whatever the size of
//! the file; the iterator also holds the chunk it is handing out.
//!
//! Crash behaviour: none to speak of; it keeps no state and writes nothing, so a crash loses only
//! the call in progress.

use std::borrow::Cow;
use std::io::{self, Read};

use fastcdc::v2020::{self, Normalization};

use crate::ids::ChunkIdKey;

/// `derive_key` context of the CDC gear seed.
pub const GEAR_SEED_CONTEXT: &str = "keepsake cdc-gear v1";

/// The organisation's CDC gear seed: the first 8 bytes (little-endian u64) of
/// `BLAKE3-derive_key("keepsake cdc-gear v1", chunk_id_key)`.
///
/// Every gear-table entry is XORed with it (`fastcdc`'s seeded tables), so chunk boundaries — and
/// the chunk lengths the server sees — depend on the organisation's secret key: the length
/// sequence of a known file does not reveal whether it is stored.
pub fn gear_seed(key: &ChunkIdKey) -> u64 {
    let d = blake3::derive_key(GEAR_SEED_CONTEXT, key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The 16-byte header every SQLite 3 database file starts with.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How many leading bytes [`ChunkerKind::detect`] looks at.
pub const DETECT_LEN: usize = 18;

/// Largest chunk any Keepsake chunker may produce (and any reader must accept): 16 MiB.
pub const MAX_CHUNK_LEN: usize = 16 * 1024 * 1024;

/// A piece of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of the chunk in the file.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

impl Chunk {
    /// Length of the chunk in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True for an empty chunk (never produced by a [`Chunker`]).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Errors of the chunkers.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("reading the file failed: {0}")]
    Io(#[from] io::Error),
    #[error("invalid chunker configuration: {0}")]
    Config(String),
}

/// Which chunker a file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkerKind {
    /// Content-defined chunking (FastCDC 2020).
    Cdc,
    /// Fixed-size chunks aligned to the pages of an SQLite database.
    SqlitePages {
        /// Page size read from the database header (512..=65536, a power of two).
        page_size: u32,
    },
}

impl ChunkerKind {
    /// Picks the chunker from the first bytes of a file (give at least [`DETECT_LEN`] bytes;
    /// fewer always yields [`ChunkerKind::Cdc`]).
    ///
    /// An SQLite database is recognised by its 16-byte header; the page size is the big-endian
    /// u16 at offset 16 (the value 1 means 65536). A header with an invalid page size is treated
    /// as an ordinary file.
    pub fn detect(first_bytes: &[u8]) -> ChunkerKind {
        if first_bytes.len() < DETECT_LEN || &first_bytes[..16] != SQLITE_HEADER {
            return ChunkerKind::Cdc;
        }
        let raw = u16::from_be_bytes([first_bytes[16], first_bytes[17]]);
        let page_size: u32 = if raw == 1 { 65536 } else { u32::from(raw) };
        if (512..=65536).contains(&page_size) && page_size.is_power_of_two() {
            ChunkerKind::SqlitePages { page_size }
        } else {
            ChunkerKind::Cdc
        }
    }
}

/// Sizes used by the chunkers. Changing them changes every boundary (and so loses dedup against
/// data chunked with other values) but never breaks a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// Minimum CDC chunk size; also the size up to which any file is a single chunk.
    pub min: usize,
    /// Target (average) CDC chunk size.
    pub avg: usize,
    /// Maximum CDC chunk size.
    pub max: usize,
    /// Chunk size for SQLite databases (rounded up to a multiple of the page size).
    pub sqlite_chunk: usize,
}

/// Default sizes, chosen by measurement (see `docs/format.md`, "Chunk sizes").
pub const DEFAULT_CONFIG: ChunkerConfig = ChunkerConfig {
    min: 256 * 1024,
    avg: 1024 * 1024,
    max: 4 * 1024 * 1024,
    sqlite_chunk: 16 * 1024,
};

impl Default for ChunkerConfig {
    fn default() -> Self {
        DEFAULT_CONFIG
    }
}

impl ChunkerConfig {
    /// Checks the sizes against the limits of FastCDC and of the format.
    pub fn validate(&self) -> Result<(), ChunkError> {
        let bad = |m: &str| Err(ChunkError::Config(m.to_string()));
        if !(v2020::MINIMUM_MIN..=v2020::MINIMUM_MAX).contains(&self.min) {
            return bad("min out of range 64 B ..= 1 MiB");
        }
        if !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&self.avg) {
            return bad("avg out of range 256 B ..= 4 MiB");
        }
        if !(v2020::MAXIMUM_MIN..=MAX_CHUNK_LEN.min(v2020::MAXIMUM_MAX)).contains(&self.max) {
            return bad("max out of range 1 KiB ..= 16 MiB");
        }
        if !(self.min.is_multiple_of(2) && self.avg.is_multiple_of(2) && self.max.is_multiple_of(2))
        {
            return bad("min, avg and max must be even");
        }
        if !(self.min < self.avg && self.avg < self.max) {
            return bad("need min < avg < max");
        }
        if self.sqlite_chunk == 0 || self.sqlite_chunk > self.max {
            return bad("sqlite_chunk must be in 1 ..= max");
        }
        Ok(())
    }

    /// The SQLite chunk size for a database of `page_size`: `sqlite_chunk` rounded up to a
    /// multiple of the page size.
    pub fn sqlite_chunk_len(&self, page_size: u32) -> usize {
        let p = page_size.max(1) as usize;
        self.sqlite_chunk.div_ceil(p) * p
    }
}

/// The cut parameters of one chunker configuration: its sizes, FastCDC's masks and the gear
/// tables. Computed once (per organisation) and shared by every file and thread; [`chunk_with`]
/// takes them, and every [`Chunker`] holds its own.
#[derive(Debug, Clone)]
pub struct Cuts {
    cfg: ChunkerConfig,
    masks: (u64, u64),
    gear: (Cow<'static, [u64]>, Cow<'static, [u64]>),
}

impl Cuts {
    /// The organisation's cuts: default sizes and the gear seed derived from its chunk-ID key
    /// ([`gear_seed`]), as [`Chunker::keyed`] and [`Chunker::detect`] with a key cut.
    pub fn keyed(key: &ChunkIdKey) -> Cuts {
        Cuts::build(DEFAULT_CONFIG, gear_seed(key))
    }

    /// Explicit sizes (validated) and gear seed (0 = the `fastcdc` crate's plain table).
    pub fn with_config(cfg: ChunkerConfig, seed: u64) -> Result<Cuts, ChunkError> {
        cfg.validate()?;
        Ok(Cuts::build(cfg, seed))
    }

    fn build(cfg: ChunkerConfig, seed: u64) -> Cuts {
        Cuts {
            cfg,
            masks: v2020::select_masks(cfg.avg, Normalization::Level1),
            gear: v2020::get_gear_with_seed(seed),
        }
    }

    /// The sizes.
    pub fn config(&self) -> &ChunkerConfig {
        &self.cfg
    }

    /// Bytes of window [`chunk_with`] needs for any kind: twice the longest span a cut may
    /// need in view (`max`, `min + 1` for the one-chunk rule, or the SQLite chunk of the
    /// largest page size).
    fn window_len(&self) -> usize {
        let c = &self.cfg;
        2 * c.max.max(c.min + 1).max(c.sqlite_chunk_len(65536))
    }
}

/// Read position in a window buffer: `buf[start..end]` holds bytes read and not yet cut. The
/// cut rules of `docs/format.md` section 2 live here, once, for [`Chunker`] (which owns its
/// buffer) and [`chunk_with`] (which borrows the caller's).
struct Cursor {
    start: usize,
    end: usize,
    eof: bool,
    first: bool,
}

impl Cursor {
    fn new() -> Cursor {
        Cursor {
            start: 0,
            end: 0,
            eof: false,
            first: true,
        }
    }

    /// Makes at least `want` bytes available at `buf[start..end]` unless the input ends first.
    fn fill<R: Read>(&mut self, reader: &mut R, buf: &mut [u8], want: usize) -> io::Result<()> {
        if self.end - self.start >= want || self.eof {
            return Ok(());
        }
        if buf.len() - self.start < want {
            buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < want && !self.eof {
            match reader.read(&mut buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Length of the next chunk (0 at the end of the input); it is `buf[start..start + len]`.
    fn next_len<R: Read>(
        &mut self,
        reader: &mut R,
        buf: &mut [u8],
        cuts: &Cuts,
        kind: ChunkerKind,
    ) -> io::Result<usize> {
        let cfg = &cuts.cfg;
        if self.first {
            self.first = false;
            // Files of at most `min` bytes are one chunk, whatever the kind.
            self.fill(reader, buf, cfg.min + 1)?;
            if self.eof && self.end - self.start <= cfg.min {
                return Ok(self.end - self.start);
            }
        }
        match kind {
            ChunkerKind::Cdc => {
                self.fill(reader, buf, cfg.max)?;
                let avail = &buf[self.start..self.end];
                if avail.is_empty() {
                    return Ok(0);
                }
                let (mask_s, mask_l) = cuts.masks;
                let (_, n) = v2020::cut_gear(
                    avail,
                    cfg.min,
                    cfg.avg,
                    cfg.max,
                    mask_s,
                    mask_l,
                    mask_s << 1,
                    mask_l << 1,
                    &cuts.gear.0,
                    &cuts.gear.1,
                );
                Ok(n.clamp(1, avail.len()))
            }
            ChunkerKind::SqlitePages { page_size } => {
                let len = cfg.sqlite_chunk_len(page_size);
                self.fill(reader, buf, len)?;
                Ok(len.min(self.end - self.start))
            }
        }
    }
}

/// A chunker window kept by the caller from file to file (one per thread), for [`chunk_with`].
///
/// [`Chunker`] allocates its window with every file, and the allocator hands back reused memory
/// that it must zero: 8 MiB of `memset` per file, measured at 12 % of the CPU time of a backup of
/// 0.5-2 MiB photos. A `Window` is allocated on first use and then reused as it is.
#[derive(Debug, Default)]
pub struct Window {
    buf: Vec<u8>,
}

/// Why [`chunk_with`] stopped before the end of the input.
#[derive(Debug, thiserror::Error)]
pub enum ChunkStop<E> {
    /// Reading failed.
    #[error("reading the file failed: {0}")]
    Io(#[source] io::Error),
    /// The callback returned this error.
    #[error("stopped by the chunk callback: {0}")]
    Callback(E),
}

/// Cuts everything `reader` yields into chunks with `cuts` (the kind detected from the first
/// bytes, as [`Chunker::detect`] does), calling `on_chunk` with each chunk in order; the slice
/// points into `window`, so nothing is copied unless the callback copies it. Returns the number
/// of bytes read. The chunks are exactly those of a [`Chunker`] with the same sizes and seed.
pub fn chunk_with<R: Read, E>(
    cuts: &Cuts,
    window: &mut Window,
    mut reader: R,
    mut on_chunk: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, ChunkStop<E>> {
    let need = cuts.window_len();
    if window.buf.len() < need {
        window.buf = vec![0u8; need];
    }
    let buf = &mut window.buf[..need];
    let mut cur = Cursor::new();
    cur.fill(&mut reader, buf, DETECT_LEN)
        .map_err(ChunkStop::Io)?;
    let kind = ChunkerKind::detect(&buf[cur.start..cur.end]);
    let mut total: u64 = 0;
    loop {
        let n = cur
            .next_len(&mut reader, buf, cuts, kind)
            .map_err(ChunkStop::Io)?;
        if n == 0 {
            return Ok(total);
        }
        let chunk = &buf[cur.start..cur.start + n];
        cur.start += n;
        total += n as u64;
        on_chunk(chunk).map_err(ChunkStop::Callback)?;
    }
}

/// Streaming chunker over any [`Read`]: an iterator of [`Chunk`]s, each copied out of a window
/// it allocates (to chunk many files without that cost, see [`chunk_with`]).
///
/// After an error the iterator is finished.
pub struct Chunker<R> {
    reader: R,
    kind: ChunkerKind,
    cuts: Cuts,
    buf: Vec<u8>,
    cur: Cursor,
    done: bool,
    offset: u64,
}

impl<R: Read> Chunker<R> {
    /// An unkeyed chunker (gear seed 0) with the default sizes ([`DEFAULT_CONFIG`]). The agent
    /// uses [`Chunker::keyed`]; this one is for tools and tests.
    pub fn new(reader: R, kind: ChunkerKind) -> Self {
        Self::build(reader, kind, DEFAULT_CONFIG)
    }

    /// The organisation's chunker: default sizes and the gear seed derived from its chunk-ID key
    /// ([`gear_seed`]). This is what every agent of the organisation must use for blobs to dedup.
    pub fn keyed(reader: R, kind: ChunkerKind, key: &ChunkIdKey) -> Self {
        Self::build(reader, kind, DEFAULT_CONFIG).with_gear_seed(gear_seed(key))
    }

    /// Replaces the gear seed (0 = the `fastcdc` crate's plain table).
    pub fn with_gear_seed(mut self, seed: u64) -> Self {
        self.cuts.gear = v2020::get_gear_with_seed(seed);
        self
    }

    /// A chunker with explicit sizes.
    pub fn with_config(
        reader: R,
        kind: ChunkerKind,
        cfg: ChunkerConfig,
    ) -> Result<Self, ChunkError> {
        cfg.validate()?;
        if let ChunkerKind::SqlitePages { page_size } = kind {
            if cfg.sqlite_chunk_len(page_size) > MAX_CHUNK_LEN {
                return Err(ChunkError::Config("SQLite chunk larger than 16 MiB".into()));
            }
        }
        Ok(Self::build(reader, kind, cfg))
    }

    /// Detects the kind from the first bytes of `reader` (read ahead, not lost) and chunks it
    /// with the default sizes, keyed when `key` is given (see [`Chunker::keyed`]).
    pub fn detect(reader: R, key: Option<&ChunkIdKey>) -> Result<Self, ChunkError> {
        let mut me = Self::build(reader, ChunkerKind::Cdc, DEFAULT_CONFIG);
        if let Some(k) = key {
            me = me.with_gear_seed(gear_seed(k));
        }
        me.cur.fill(&mut me.reader, &mut me.buf, DETECT_LEN)?;
        me.kind = ChunkerKind::detect(&me.buf[me.cur.start..me.cur.end]);
        Ok(me)
    }

    fn build(reader: R, kind: ChunkerKind, cfg: ChunkerConfig) -> Self {
        let window = match kind {
            ChunkerKind::Cdc => cfg.max,
            ChunkerKind::SqlitePages { page_size } => {
                cfg.sqlite_chunk_len(page_size).max(cfg.min + 1)
            }
        }
        .max(cfg.min + 1);
        Chunker {
            reader,
            kind,
            cuts: Cuts::build(cfg, 0),
            buf: vec![0u8; 2 * window.max(cfg.max)],
            cur: Cursor::new(),
            done: false,
            offset: 0,
        }
    }

    /// The chunker kind in use.
    pub fn kind(&self) -> ChunkerKind {
        self.kind
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Chunk, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self
            .cur
            .next_len(&mut self.reader, &mut self.buf, &self.cuts, self.kind)
        {
            Ok(0) => {
                self.done = true;
                None
            }
            Ok(n) => {
                let start = self.cur.start;
                let data = self.buf[start..start + n].to_vec();
                self.cur.start += n;
                let chunk = Chunk {
                    offset: self.offset,
                    data,
                };
                self.offset += n as u64;
                Some(Ok(chunk))
            }
            Err(e) => {
                self.done = true;
                Some(Err(ChunkError::Io(e)))
            }
        }
    }
}

/// Chunks an in-memory buffer (tests and tools): the lengths of the chunks [`Chunker`] would
/// produce for `data`.
pub fn chunk_lengths(
    data: &[u8],
    kind: ChunkerKind,
    cfg: ChunkerConfig,
) -> Result<Vec<usize>, ChunkError> {
    Chunker::with_config(data, kind, cfg)?
        .map(|c| c.map(|c| c.data.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_header(page: u16) -> Vec<u8> {
        let mut h = SQLITE_HEADER.to_vec();
        h.extend_from_slice(&page.to_be_bytes());
        h.resize(100, 0);
        h
    }

    #[test]
    fn detect_sqlite_and_page_size() {
        assert_eq!(
            ChunkerKind::detect(&sqlite_header(4096)),
            ChunkerKind::SqlitePages { page_size: 4096 }
        );
        assert_eq!(
            ChunkerKind::detect(&sqlite_header(1)),
            ChunkerKind::SqlitePages { page_size: 65536 }
        );
        assert_eq!(ChunkerKind::detect(&sqlite_header(1000)), ChunkerKind::Cdc);
        assert_eq!(ChunkerKind::detect(&sqlite_header(256)), ChunkerKind::Cdc);
        assert_eq!(ChunkerKind::detect(b"SQLite format 3\0"), ChunkerKind::Cdc);
        assert_eq!(
            ChunkerKind::detect(b"\xff\xd8\xff\xe1 jpeg......."),
            ChunkerKind::Cdc
        );
    }

    #[test]
    fn empty_and_small_files() {
        let none: Vec<_> = Chunker::new(&b""[..], ChunkerKind::Cdc).collect();
        assert!(none.is_empty());
        let data = vec![5u8; 1000];
        let chunks: Vec<Chunk> =
            Chunker::new(&data[..], ChunkerKind::SqlitePages { page_size: 512 })
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].data, data);
    }

    #[test]
    fn config_validation() {
        assert!(DEFAULT_CONFIG.validate().is_ok());
        let mut c = DEFAULT_CONFIG;
        c.avg = c.max;
        assert!(c.validate().is_err());
        c = DEFAULT_CONFIG;
        c.max = 64 * 1024 * 1024;
        assert!(c.validate().is_err());
        assert_eq!(DEFAULT_CONFIG.sqlite_chunk_len(4096), 16384);
        assert_eq!(DEFAULT_CONFIG.sqlite_chunk_len(65536), 65536);
        assert_eq!(DEFAULT_CONFIG.sqlite_chunk_len(1024), 16384);
    }

    #[test]
    fn detect_constructor_keeps_bytes() {
        let mut data = sqlite_header(1024);
        data.resize(600 * 1024, 7);
        let ch = Chunker::detect(&data[..], None).unwrap();
        assert_eq!(ch.kind(), ChunkerKind::SqlitePages { page_size: 1024 });
        let out: Vec<u8> = ch.flat_map(|c| c.unwrap().data).collect();
        assert_eq!(out, data);
    }
}
