//! What reusing state across files and chunks saves: the chunker's window, the blob-ID pass of a
//! seal whose ID is already known, and the zstd compression context.
//!
//! Each benchmark pairs the path that sets everything up per call (`Chunker` per file,
//! `seal_blob_with` hashing the chunk again) with the path that reuses it (`chunk_with` on one
//! `Window`, `seal_blob_with_id`); compression runs with the per-thread zstd context. These
//! benchmarks first measured the agent's forks of the reusing paths against the common crate's
//! (see `docs/benchmarks.md`).
//!
//! Times are CPU time of the benchmark thread (Linux `/proc/thread-self/schedstat`; wall time
//! elsewhere), so other processes on a shared machine distort them less than wall time.
//! `cargo bench -p keepsake-common --bench reuse`.

mod support;
use support::random;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keepsake_common::chunking::{chunk_with, Chunker, Cuts, Window};
use keepsake_common::compress::{maybe_compress, DEFAULT_POLICY};
use keepsake_common::crypto::{seal_blob_with, seal_blob_with_id};
use keepsake_common::ids::{BlobId, ChunkIdKey};
use keepsake_common::keys::AgeIdentity;

const MIB: usize = 1024 * 1024;

fn sidecar(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(
            format!(
                "  <rdf:li crs:Exposure2012=\"{:+}\" crs:Temperature=\"{}\" xmp:Rating=\"{}\"/>\n",
                (i * 37) % 400,
                4000 + (i * 7919) % 3000,
                i % 6
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

/// Nanoseconds this thread has spent on a CPU, or `None` where that is not available.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
}

/// Times `iters` calls of `f` in CPU time of this thread (wall time if unavailable).
fn cpu_time<T>(iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let wall = Instant::now();
    let c0 = thread_cpu_ns();
    for _ in 0..iters {
        black_box(f());
    }
    match (c0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Duration::from_nanos(b.saturating_sub(a)),
        _ => wall.elapsed(),
    }
}

fn reuse(c: &mut Criterion) {
    let key = ChunkIdKey([11; 32]);
    let mut g = c.benchmark_group("reuse");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    // 100 incompressible files of 0.5-2 MiB (the sizes of the agent's `mid_files` set).
    let files: Vec<Vec<u8>> = (0..100u64)
        .map(|i| random((512 << 10) + ((i as usize * 7919) % (3 << 19)), 300 + i))
        .collect();
    let total: usize = files.iter().map(Vec::len).sum();
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("chunk_100_files/per_file_chunker", |b| {
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                let mut n = 0usize;
                for f in &files {
                    for chunk in Chunker::detect(&f[..], Some(&key)).expect("in-memory read") {
                        n += chunk.expect("in-memory read").data.len();
                    }
                }
                n
            })
        })
    });
    let cuts = Cuts::keyed(&key);
    let mut window = Window::default();
    g.bench_function("chunk_100_files/reused_window", |b| {
        b.iter_custom(|iters| {
            cpu_time(iters, || {
                let mut n = 0usize;
                for f in &files {
                    let r = chunk_with(&cuts, &mut window, &f[..], |c| {
                        n += c.len();
                        Ok::<(), ()>(())
                    });
                    assert!(r.is_ok(), "in-memory read");
                }
                n
            })
        })
    });

    let identity = AgeIdentity::generate();
    let recipients = [identity.to_public()];
    for (name, data) in [
        ("random_1MiB", random(MIB, 5)),
        ("text_8KiB", sidecar(8 * 1024)),
        ("text_1MiB", sidecar(MIB)),
    ] {
        let id = BlobId::of(&key, &data);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("seal_{name}/id_computed"), |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    seal_blob_with(&recipients, &key, black_box(&data), &DEFAULT_POLICY)
                        .expect("seal")
                        .0
                        .ciphertext
                        .len()
                })
            })
        });
        g.bench_function(format!("seal_{name}/id_given"), |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    seal_blob_with_id(&recipients, id, black_box(&data), &DEFAULT_POLICY)
                        .expect("seal")
                        .0
                        .ciphertext
                        .len()
                })
            })
        });
    }

    for (name, data) in [
        ("text_8KiB", sidecar(8 * 1024)),
        ("text_1MiB", sidecar(MIB)),
    ] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("compress_{name}/common"), |b| {
            b.iter_custom(|iters| {
                cpu_time(iters, || {
                    maybe_compress(black_box(&data), &DEFAULT_POLICY)
                        .expect("compress")
                        .1
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, reuse);
criterion_main!(benches);
