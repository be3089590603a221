//! Measures the chunk-size trade-off that `docs/format.md` reports: index size per TB of photos
//! versus the bytes a next-day edit costs, for several candidate sizes.
//!
//! ```text
//! cargo run --release -p keepsake-common --example chunk_sizes -- --synthetic
//! cargo run --release -p keepsake-common --example chunk_sizes -- \
//!     CATALOG_BEFORE CATALOG_AFTER MEDIA_DIR [SIDECARS_BEFORE_DIR SIDECARS_AFTER_DIR]
//! ```
//!
//! `--synthetic` uses a deterministic generator built in here: 1 GiB of photo-like
//! (incompressible) data and a 50 MB SQLite-like catalog of 4 KiB pages holding settings text and
//! small random thumbnails, of which 55 pages are rewritten in place the next day (the shape of
//! a culling session: a few clustered rating updates and ~50 scattered develop-setting updates).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use keepsake_common::chunking::{
    gear_seed, Chunker, ChunkerConfig, ChunkerKind, DEFAULT_CONFIG, SQLITE_HEADER,
};
use keepsake_common::crypto::seal_blob;
use keepsake_common::ids::{BlobId, ChunkIdKey};
use keepsake_common::keys::AgeIdentity;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const TIB: f64 = (1u64 << 40) as f64;
/// Estimated bytes per blob in the server's PostgreSQL index (row: id 32, cipher hash 32, pack
/// id 16, offset 8, lengths 8, codec 1, tuple header ~28; plus the primary-key B-tree entry on the
/// blob id ~48 and the per-file-version chunk reference ~80 in the catalog).
const INDEX_BYTES_PER_BLOB: f64 = 125.0 + 48.0 + 80.0;

struct XorShift(u64);
impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
    fn below(&mut self, n: u64) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b) % n
    }
}

/// A reader of `len` deterministic random bytes.
struct RandomReader {
    rng: XorShift,
    left: u64,
}
impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        self.rng.fill(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn synthetic_catalog() -> (Vec<u8>, Vec<u8>) {
    const PAGE: usize = 4096;
    let pages = 50 * MIB / PAGE;
    let mut rng = XorShift(0x5EED_CA7A_1060);
    let mut db = vec![0u8; pages * PAGE];
    for p in 0..pages {
        let page = &mut db[p * PAGE..(p + 1) * PAGE];
        // Develop-settings-like text with varying numbers, and a 300-byte random thumbnail.
        let mut text = Vec::with_capacity(PAGE);
        while text.len() < PAGE - 400 {
            text.extend_from_slice(
                format!(
                    "Exposure2012 = {}, Contrast2012 = {}, Shadows2012 = {}, ToneCurvePV2012 = {{ 0, 8, 16, {} }} ",
                    rng.below(200) as i64 - 100,
                    rng.below(200) as i64 - 100,
                    rng.below(100),
                    rng.below(255)
                )
                .as_bytes(),
            );
        }
        text.truncate(PAGE - 400);
        page[..text.len()].copy_from_slice(&text);
        rng.fill(&mut page[PAGE - 300..]);
    }
    db[..16].copy_from_slice(SQLITE_HEADER);
    db[16..18].copy_from_slice(&(PAGE as u16).to_be_bytes());
    let mut next = db.clone();
    // Day 2: header page (change counter), 4 clustered pages, 50 scattered pages.
    let start = 1000 + rng.below(5000) as usize;
    let mut touched: Vec<usize> = vec![0, start, start + 1, start + 2, start + 3];
    while touched.len() < 55 {
        let p = 1 + rng.below(pages as u64 - 1) as usize;
        if !touched.contains(&p) {
            touched.push(p);
        }
    }
    for p in touched {
        let off = p * PAGE + 24 + rng.below(3000) as usize;
        let mut patch = [0u8; 40];
        rng.fill(&mut patch);
        for b in patch.iter_mut() {
            *b = b'0' + (*b % 10);
        }
        next[off..off + patch.len()].copy_from_slice(&patch);
    }
    (db, next)
}

/// Gear seed of the (fixed) organisation key the measurement uses.
fn seed() -> u64 {
    gear_seed(&ChunkIdKey([1; 32]))
}

fn chunks(data: &[u8], kind: ChunkerKind, cfg: ChunkerConfig) -> Vec<Vec<u8>> {
    Chunker::with_config(data, kind, cfg)
        .expect("config")
        .with_gear_seed(seed())
        .map(|c| c.expect("in-memory read").data)
        .collect()
}

fn changed_pages(a: &[u8], b: &[u8], page: usize) -> usize {
    a.chunks(page)
        .zip(b.chunks(page))
        .filter(|(x, y)| x != y)
        .count()
        + a.len().abs_diff(b.len()).div_ceil(page)
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let synthetic = args.first().map(|a| a == "--synthetic").unwrap_or(true);
    let (cat_a, cat_b) = if synthetic {
        synthetic_catalog()
    } else {
        (
            std::fs::read(&args[0]).expect("read CATALOG_BEFORE"),
            std::fs::read(&args[1]).expect("read CATALOG_AFTER"),
        )
    };
    let key = ChunkIdKey([1; 32]);
    let identity = AgeIdentity::generate();
    let rcpt = [identity.to_public()];

    // 0. Fixed per-blob cost of age: header bytes and time (X25519 + HKDF + header MAC).
    {
        let n = 2000;
        let t = std::time::Instant::now();
        let (mut total, mut lo, mut hi) = (0usize, usize::MAX, 0usize);
        for _ in 0..n {
            let len = seal_blob(&rcpt, &key, b"").expect("seal").ciphertext.len();
            total += len;
            lo = lo.min(len);
            hi = hi.max(len);
        }
        let per = t.elapsed() / n as u32;
        // Ciphertext of an empty chunk = header + 16-byte nonce + (1 codec byte + 16-byte tag).
        println!("## age per-blob overhead");
        println!(
            "empty-chunk blob: mean {:.0} B (min {lo}, max {hi}) = header + nonce 16 + codec byte 1 + tag 16; seal time {per:?} per blob",
            total as f64 / n as f64
        );
        println!();
    }

    let candidates = [
        ("64K/256K/1M", 64 * KIB, 256 * KIB, MIB),
        ("128K/512K/2M", 128 * KIB, 512 * KIB, 2 * MIB),
        ("256K/1M/4M", 256 * KIB, MIB, 4 * MIB),
        ("512K/2M/8M", 512 * KIB, 2 * MIB, 8 * MIB),
    ];

    // 1. Index size per TiB of photos and video.
    println!("## CDC candidates: blobs and index per TiB of media");
    println!("| min/avg/max | media bytes | blobs | mean chunk | blobs per TiB | index per TiB |");
    println!("|---|---|---|---|---|---|");
    let media: Vec<PathBuf> = if synthetic {
        Vec::new()
    } else {
        let mut v = Vec::new();
        list_files(Path::new(&args[2]), &mut v);
        v.retain(|p| {
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            ["cr3", "jpg", "mp4", "nef", "arw", "mov"].contains(&ext.as_str())
        });
        v
    };
    for (name, min, avg, max) in candidates {
        let cfg = ChunkerConfig {
            min,
            avg,
            max,
            sqlite_chunk: DEFAULT_CONFIG.sqlite_chunk,
        };
        let (mut bytes, mut blobs) = (0u64, 0u64);
        let mut count = |r: &mut dyn Read| {
            for c in Chunker::with_config(r, ChunkerKind::Cdc, cfg)
                .expect("config")
                .with_gear_seed(seed())
            {
                let c = c.expect("read media");
                bytes += c.data.len() as u64;
                blobs += 1;
            }
        };
        if synthetic {
            // 1 GiB as 40 "files" of 10-40 MB.
            let mut rng = XorShift(77);
            let mut total = 0u64;
            while total < 1 << 30 {
                let len = (10 * MIB as u64 + rng.below(30 * MIB as u64)).min((1 << 30) - total);
                count(&mut RandomReader {
                    rng: XorShift(total | 1),
                    left: len,
                });
                total += len;
            }
        } else {
            for p in &media {
                count(&mut BufReader::new(File::open(p).expect("open media")));
            }
        }
        let per_tib = blobs as f64 / bytes as f64 * TIB;
        println!(
            "| {name} | {:.2} GiB | {blobs} | {:.0} KiB | {:.0} | {:.0} MiB |",
            bytes as f64 / (1u64 << 30) as f64,
            bytes as f64 / blobs as f64 / 1024.0,
            per_tib,
            per_tib * INDEX_BYTES_PER_BLOB / MIB as f64
        );
    }

    // 2. The edited catalog through CDC (what it would cost without the page-aware chunker).
    let page = match ChunkerKind::detect(&cat_a) {
        ChunkerKind::SqlitePages { page_size } => page_size as usize,
        ChunkerKind::Cdc => 4096,
    };
    let changed = changed_pages(&cat_a, &cat_b, page);
    let changed_bytes = changed * page;
    let differing_bytes = cat_a.iter().zip(&cat_b).filter(|(x, y)| x != y).count();
    println!();
    println!(
        "## Next-day catalog edit: {} MB catalog, {changed} of {} pages of {page} B changed ({} KiB), {differing_bytes} bytes differ",
        cat_b.len() / 1_000_000,
        cat_b.len() / page,
        changed_bytes / 1024
    );
    println!("| chunker | chunks in catalog | new chunks | new plaintext | new sealed blob bytes | sealed / changed pages |");
    println!("|---|---|---|---|---|---|");
    let report = |name: String, a: Vec<Vec<u8>>, b: Vec<Vec<u8>>| {
        let old: HashSet<BlobId> = a.iter().map(|c| BlobId::of(&key, c)).collect();
        let mut seen = HashSet::new();
        let (mut n, mut plain, mut sealed) = (0usize, 0usize, 0usize);
        for c in &b {
            let id = BlobId::of(&key, c);
            if !old.contains(&id) && seen.insert(id) {
                n += 1;
                plain += c.len();
                sealed += seal_blob(&rcpt, &key, c).expect("seal").ciphertext.len();
            }
        }
        println!(
            "| {name} | {} | {n} | {} KiB | {} KiB | {:.2}x |",
            b.len(),
            plain / 1024,
            sealed / 1024,
            sealed as f64 / changed_bytes as f64
        );
    };
    for (name, min, avg, max) in candidates {
        let cfg = ChunkerConfig {
            min,
            avg,
            max,
            sqlite_chunk: DEFAULT_CONFIG.sqlite_chunk,
        };
        report(
            format!("CDC {name}"),
            chunks(&cat_a, ChunkerKind::Cdc, cfg),
            chunks(&cat_b, ChunkerKind::Cdc, cfg),
        );
    }
    for size in [
        4 * KIB,
        8 * KIB,
        16 * KIB,
        32 * KIB,
        64 * KIB,
        256 * KIB,
        MIB,
    ] {
        let cfg = ChunkerConfig {
            sqlite_chunk: size.max(page),
            ..DEFAULT_CONFIG
        };
        let kind = ChunkerKind::SqlitePages {
            page_size: page as u32,
        };
        report(
            format!("SQLite pages, {} KiB chunks", size / 1024),
            chunks(&cat_a, kind, cfg),
            chunks(&cat_b, kind, cfg),
        );
    }

    // 3. Sidecars: each is smaller than every candidate's minimum, so one chunk per file.
    if args.len() >= 5 {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        list_files(Path::new(&args[3]), &mut a);
        list_files(Path::new(&args[4]), &mut b);
        let is_xmp = |p: &PathBuf| {
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| e.eq_ignore_ascii_case("xmp"))
                == Some(true)
        };
        let old: std::collections::HashMap<std::ffi::OsString, BlobId> = a
            .iter()
            .filter(|p| is_xmp(p))
            .map(|p| {
                (
                    p.file_name().unwrap_or_default().to_owned(),
                    BlobId::of(&key, &std::fs::read(p).expect("read sidecar")),
                )
            })
            .collect();
        b.retain(|p| is_xmp(p) && old.contains_key(p.file_name().unwrap_or_default()));
        let (mut new_files, mut new_plain, mut new_sealed, mut total) = (0, 0, 0, 0);
        for p in &b {
            let d = std::fs::read(p).expect("read sidecar");
            total += d.len();
            if old.get(p.file_name().unwrap_or_default()) != Some(&BlobId::of(&key, &d)) {
                new_files += 1;
                new_plain += d.len();
                new_sealed += seal_blob(&rcpt, &key, &d).expect("seal").ciphertext.len();
            }
        }
        println!();
        println!(
            "## Sidecars: {} files, {} KiB; {new_files} changed: {new_plain} B plaintext -> {new_sealed} B sealed (same for every CDC candidate: each sidecar is below the minimum chunk size)",
            b.len(),
            total / 1024
        );
    }
}
