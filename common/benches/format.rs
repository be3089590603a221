//! Throughput of each format stage, one core each: chunking, blob-id hashing, the compression
//! decision, sealing (compress decision + age encryption), opening (decryption + id check), and
//! the chained single-core pipeline. Run with `cargo bench -p keepsake-common`.

mod support;
use support::random;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keepsake_common::chunking::{Chunker, ChunkerKind, SQLITE_HEADER};
use keepsake_common::compress::{maybe_compress, worth_trying, DEFAULT_POLICY};
use keepsake_common::crypto::{open_blob, seal_blob};
use keepsake_common::ids::{BlobId, ChunkIdKey, CipherHash, ContentHasher};
use keepsake_common::keys::AgeIdentity;

const MIB: usize = 1024 * 1024;

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

fn quick<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g
}

fn chunking(c: &mut Criterion) {
    let data = random(64 * MIB, 1);
    let mut sqlite = data.clone();
    sqlite[..16].copy_from_slice(SQLITE_HEADER);
    sqlite[16..18].copy_from_slice(&4096u16.to_be_bytes());
    let mut g = quick(c, "chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("cdc_64MiB", |b| {
        b.iter(|| {
            Chunker::new(&data[..], ChunkerKind::Cdc)
                .map(|c| c.expect("in-memory read").data.len())
                .sum::<usize>()
        })
    });
    let key = ChunkIdKey([1; 32]);
    g.bench_function("cdc_keyed_64MiB", |b| {
        b.iter(|| {
            Chunker::keyed(&data[..], ChunkerKind::Cdc, &key)
                .map(|c| c.expect("in-memory read").data.len())
                .sum::<usize>()
        })
    });
    g.bench_function("sqlite_pages_64MiB", |b| {
        b.iter(|| {
            Chunker::new(&sqlite[..], ChunkerKind::SqlitePages { page_size: 4096 })
                .map(|c| c.expect("in-memory read").data.len())
                .sum::<usize>()
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let key = ChunkIdKey([3; 32]);
    let mut g = quick(c, "hash");
    for size in [16 * 1024, MIB] {
        let data = random(size, 2);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("blob_id", size), &data, |b, d| {
            b.iter(|| BlobId::of(&key, black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("cipher_hash", size), &data, |b, d| {
            b.iter(|| CipherHash::of(black_box(d)))
        });
    }
    let data = random(64 * MIB, 3);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("content_hash_64MiB_in_1MiB_reads", |b| {
        b.iter(|| {
            let mut h = ContentHasher::new(&key);
            for piece in data.chunks(MIB) {
                h.update(piece);
            }
            h.finalize()
        })
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let rnd = random(MIB, 4);
    let txt = text(MIB);
    let mut g = quick(c, "compress");
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("decision_random_1MiB", |b| {
        b.iter(|| maybe_compress(black_box(&rnd), &DEFAULT_POLICY).map(|r| r.1))
    });
    g.bench_function("sample_test_only_text_1MiB", |b| {
        b.iter(|| worth_trying(black_box(&txt), &DEFAULT_POLICY))
    });
    g.bench_function("decision_and_zstd3_text_1MiB", |b| {
        b.iter(|| maybe_compress(black_box(&txt), &DEFAULT_POLICY).map(|r| r.1))
    });
    let small = text(16 * 1024);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("zstd3_text_16KiB", |b| {
        b.iter(|| maybe_compress(black_box(&small), &DEFAULT_POLICY).map(|r| r.1))
    });
    g.finish();
}

fn sealing(c: &mut Criterion) {
    let id = AgeIdentity::generate();
    let rcpt = [id.to_public()];
    let ids = [id];
    let key = ChunkIdKey([5; 32]);
    let mut g = quick(c, "blob");
    for size in [0usize, 16 * 1024, MIB, 4 * MIB] {
        let data = random(size, 6);
        g.throughput(Throughput::Bytes(size.max(1) as u64));
        g.bench_with_input(BenchmarkId::new("seal_random", size), &data, |b, d| {
            b.iter(|| seal_blob(&rcpt, &key, black_box(d)).map(|s| s.ciphertext.len()))
        });
        let sealed = seal_blob(&rcpt, &key, &data).expect("seal");
        g.bench_with_input(BenchmarkId::new("open_random", size), &sealed, |b, s| {
            b.iter(|| {
                open_blob(
                    &ids,
                    &key,
                    &s.id,
                    black_box(&s.ciphertext),
                    Some(&s.cipher_hash),
                )
                .map(|p| p.len())
            })
        });
    }
    let txt = text(MIB);
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("seal_text_1MiB", |b| {
        b.iter(|| seal_blob(&rcpt, &key, black_box(&txt)).map(|s| s.ciphertext.len()))
    });
    let sealed = seal_blob(&rcpt, &key, &txt).expect("seal");
    g.bench_function("open_text_1MiB", |b| {
        b.iter(|| {
            open_blob(&ids, &key, &sealed.id, black_box(&sealed.ciphertext), None).map(|p| p.len())
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    // One core: chunk + content hash + blob id + decision + age, over photo-like data.
    let id = AgeIdentity::generate();
    let rcpt = [id.to_public()];
    let key = ChunkIdKey([8; 32]);
    let data = random(64 * MIB, 9);
    let mut g = quick(c, "pipeline");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("chunk_hash_seal_64MiB", |b| {
        b.iter(|| {
            let mut content = ContentHasher::new(&key);
            let mut out = 0usize;
            for chunk in Chunker::keyed(&data[..], ChunkerKind::Cdc, &key) {
                let chunk = chunk.expect("in-memory read");
                content.update(&chunk.data);
                out += seal_blob(&rcpt, &key, &chunk.data)
                    .expect("seal")
                    .ciphertext
                    .len();
            }
            (out, content.finalize())
        })
    });
    g.finish();
}

criterion_group!(benches, chunking, hashing, compression, sealing, pipeline);
criterion_main!(benches);
