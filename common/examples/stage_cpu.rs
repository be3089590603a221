//! Per-core throughput of each format stage measured in CPU time of the running thread (Linux
//! `/proc/thread-self/schedstat`), so that other processes competing for the cores do not distort
//! the figures the way they distort wall-clock benchmarks. Elsewhere it falls back to wall time.
//!
//! ```text
//! cargo run --release -p keepsake-common --example stage_cpu
//! ```

#[path = "../benches/support/mod.rs"]
mod support;
use support::random;

use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use keepsake_common::chunking::{Chunker, ChunkerKind, SQLITE_HEADER};
use keepsake_common::compress::{maybe_compress, DEFAULT_POLICY};
use keepsake_common::crypto::{open_blob, seal_blob};
use keepsake_common::ids::{BlobId, ChunkIdKey, CipherHash, ContentHasher};
use keepsake_common::keys::AgeIdentity;

const MIB: usize = 1024 * 1024;

/// Nanoseconds this thread has spent on a CPU (wall-clock nanoseconds if unavailable).
fn cpu_ns(start: Instant) -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| start.elapsed().as_nanos() as u64)
}

/// Runs `f` (which processes `bytes` bytes) in batches long enough to make the cost of reading
/// the CPU clock negligible, until ~1.5 s of CPU time is spent; returns (MiB/s per core, µs per
/// call).
fn measure(bytes: usize, mut f: impl FnMut()) -> (f64, f64) {
    let origin = Instant::now();
    // Warm up and size a batch to at least 20 ms of wall time.
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        if t.elapsed().as_millis() >= 20 {
            break;
        }
        batch *= 2;
    }
    let t0 = cpu_ns(origin);
    let mut calls = 0u64;
    loop {
        for _ in 0..batch {
            f();
        }
        calls += batch;
        let spent = cpu_ns(origin) - t0;
        if spent > 1_500_000_000 {
            let per_call = spent as f64 / calls as f64;
            return (bytes as f64 / MIB as f64 / (per_call / 1e9), per_call / 1e3);
        }
    }
}

fn text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "s = {{ Exposure2012 = {}, Contrast2012 = {}, Highlights2012 = -{} }} <rdf:li>{}</rdf:li>\n",
                i % 97,
                (i * 7) % 100,
                (i * 13) % 100,
                i
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

fn row(name: &str, (mibs, us): (f64, f64)) {
    println!("| {name} | {mibs:.0} MiB/s | {us:.1} µs |");
}

fn main() {
    let key = ChunkIdKey([7; 32]);
    let id = AgeIdentity::generate();
    let rcpt = [id.to_public()];
    let ids = [id];
    let big = random(64 * MIB, 1);
    let mut sqlite = big.clone();
    sqlite[..16].copy_from_slice(SQLITE_HEADER);
    sqlite[16..18].copy_from_slice(&4096u16.to_be_bytes());
    let one = random(MIB, 2);
    let small = random(16 * 1024, 3);
    let txt = text(MIB);

    println!("| stage (one core, CPU time) | throughput | per call |");
    println!("|---|---|---|");
    row(
        "FastCDC, keyed gear, 64 MiB",
        measure(big.len(), || {
            black_box(
                Chunker::keyed(&big[..], ChunkerKind::Cdc, &key)
                    .map(|c| c.map(|c| c.data.len()).unwrap_or(0))
                    .sum::<usize>(),
            );
        }),
    );
    row(
        "SQLite page chunker, 64 MiB",
        measure(sqlite.len(), || {
            black_box(
                Chunker::new(&sqlite[..], ChunkerKind::SqlitePages { page_size: 4096 })
                    .map(|c| c.map(|c| c.data.len()).unwrap_or(0))
                    .sum::<usize>(),
            );
        }),
    );
    row(
        "blob id (keyed BLAKE3), 1 MiB",
        measure(MIB, || {
            black_box(BlobId::of(&key, black_box(&one)));
        }),
    );
    row(
        "blob id (keyed BLAKE3), 16 KiB",
        measure(small.len(), || {
            black_box(BlobId::of(&key, black_box(&small)));
        }),
    );
    row(
        "content hash, 64 MiB in 1 MiB updates",
        measure(big.len(), || {
            let mut h = ContentHasher::new(&key);
            for p in big.chunks(MIB) {
                h.update(p);
            }
            black_box(h.finalize());
        }),
    );
    row(
        "compression decision, random 1 MiB (skipped)",
        measure(MIB, || {
            black_box(
                maybe_compress(black_box(&one), &DEFAULT_POLICY)
                    .map(|r| r.1)
                    .ok(),
            );
        }),
    );
    row(
        "compression decision + zstd -3, text 1 MiB",
        measure(MIB, || {
            black_box(
                maybe_compress(black_box(&txt), &DEFAULT_POLICY)
                    .map(|r| r.1)
                    .ok(),
            );
        }),
    );
    row(
        "age encryption only (no hashing), random 1 MiB",
        measure(MIB, || {
            let enc =
                age::Encryptor::with_recipients(rcpt.iter().map(|r| r as &dyn age::Recipient)).ok();
            let mut out = Vec::with_capacity(MIB + 1024);
            if let Some(enc) = enc {
                if let Ok(mut w) = enc.wrap_output(&mut out) {
                    let _ = w.write_all(&one);
                    let _ = w.finish();
                }
            }
            black_box(CipherHash::of(&out[..0]));
        }),
    );
    row(
        "seal_blob, random 1 MiB",
        measure(MIB, || {
            black_box(
                seal_blob(&rcpt, &key, black_box(&one))
                    .map(|b| b.ciphertext.len())
                    .ok(),
            );
        }),
    );
    row(
        "seal_blob, random 16 KiB",
        measure(small.len(), || {
            black_box(
                seal_blob(&rcpt, &key, black_box(&small))
                    .map(|b| b.ciphertext.len())
                    .ok(),
            );
        }),
    );
    row(
        "seal_blob, empty chunk (fixed per-blob cost)",
        measure(1, || {
            black_box(seal_blob(&rcpt, &key, b"").map(|b| b.ciphertext.len()).ok());
        }),
    );
    row(
        "seal_blob, text 1 MiB",
        measure(MIB, || {
            black_box(
                seal_blob(&rcpt, &key, black_box(&txt))
                    .map(|b| b.ciphertext.len())
                    .ok(),
            );
        }),
    );
    let sealed = seal_blob(&rcpt, &key, &one).expect("seal");
    row(
        "open_blob with cipher-hash check, random 1 MiB",
        measure(MIB, || {
            black_box(
                open_blob(
                    &ids,
                    &key,
                    &sealed.id,
                    &sealed.ciphertext,
                    Some(&sealed.cipher_hash),
                )
                .map(|p| p.len())
                .ok(),
            );
        }),
    );
    let sealed_small = seal_blob(&rcpt, &key, &small).expect("seal");
    row(
        "open_blob, random 16 KiB",
        measure(small.len(), || {
            black_box(
                open_blob(&ids, &key, &sealed_small.id, &sealed_small.ciphertext, None)
                    .map(|p| p.len())
                    .ok(),
            );
        }),
    );
    let sealed_txt = seal_blob(&rcpt, &key, &txt).expect("seal");
    row(
        "open_blob, text 1 MiB (zstd)",
        measure(MIB, || {
            black_box(
                open_blob(&ids, &key, &sealed_txt.id, &sealed_txt.ciphertext, None)
                    .map(|p| p.len())
                    .ok(),
            );
        }),
    );
    row(
        "pipeline: keyed CDC + content hash + seal, 64 MiB",
        measure(big.len(), || {
            let mut content = ContentHasher::new(&key);
            let mut out = 0usize;
            for chunk in Chunker::keyed(&big[..], ChunkerKind::Cdc, &key).flatten() {
                content.update(&chunk.data);
                out += seal_blob(&rcpt, &key, &chunk.data)
                    .map(|b| b.ciphertext.len())
                    .unwrap_or(0);
            }
            black_box((out, content.finalize()));
        }),
    );
}
