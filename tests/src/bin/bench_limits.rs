//! `bench-limits`: CPU-bound limits of the stages a backup runs, on samples of a real dataset.
//!
//! `bench-limits DIR [--sample-mb 256] [--reps 3]` loads two in-memory samples of DIR (a tree
//! made by `gen-shoot`): "media" (CR3/JPG/MP4 pieces, incompressible) and "meta" (the catalog
//! and the XMP sidecars, compressible), then times BLAKE3 (1 thread and all cores), zstd levels 1
//! and 3 (1 MiB frames) and age (X25519 + ChaCha20-Poly1305, one stream) over each. Each figure
//! is the median of `--reps` runs; one JSON line per measurement on stdout. Reading from disk is
//! not timed here (`peers.sh` measures it with `cat`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bench-limits",
    about = "BLAKE3 / zstd / age throughput on samples of a dataset"
)]
struct Args {
    dir: PathBuf,
    /// Size of each sample (MiB).
    #[arg(long, default_value_t = 256)]
    sample_mb: usize,
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

const PIECE: usize = 1 << 20;

fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Reads up to `per_file` bytes of each file, in order, until `cap` bytes are collected.
fn sample(files: &[PathBuf], per_file: usize, cap: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(cap);
    for f in files {
        if out.len() >= cap {
            break;
        }
        let take = per_file.min(cap - out.len());
        File::open(f)?.take(take as u64).read_to_end(&mut out)?;
    }
    Ok(out)
}

struct Sink(u64);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `f` `reps` times; returns (median wall s, median process CPU s, last output size).
fn time<F: FnMut() -> u64>(reps: usize, mut f: F) -> (f64, f64, u64) {
    let (mut walls, mut cpus, mut out) = (Vec::new(), Vec::new(), 0);
    for _ in 0..reps.max(1) {
        let (c0, t0) = (process_cpu_seconds(), Instant::now());
        out = f();
        walls.push(t0.elapsed().as_secs_f64());
        cpus.push(process_cpu_seconds() - c0);
    }
    (median(walls), median(cpus), out)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut media = Vec::new();
    let mut meta = Vec::new();
    for e in walkdir::WalkDir::new(&a.dir).sort_by_file_name() {
        let e = e?;
        if !e.file_type().is_file() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".cr3") || name.ends_with(".jpg") || name.ends_with(".mp4") {
            media.push(e.into_path());
        } else if name.ends_with(".xmp") || name.ends_with(".lrcat") {
            meta.push(e.into_path());
        }
    }
    if media.is_empty() || meta.is_empty() {
        bail!(
            "{}: no gen-shoot dataset here (need CR3/JPG/MP4 and xmp/lrcat files)",
            a.dir.display()
        );
    }
    let cap = a.sample_mb << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let samples = [
        ("media", sample(&media, 16 << 20, cap)?),
        ("meta", sample(&meta, usize::MAX, cap)?),
    ];
    let recipient = age::x25519::Identity::generate().to_public();

    for (class, data) in &samples {
        let n = data.len() as u64;
        let emit = |stage: &str, threads_used: usize, (wall, cpu, out): (f64, f64, u64)| {
            let mut line = serde_json::json!({
                "kind": "limit", "stage": stage, "class": class, "threads": threads_used,
                "bytes": n, "wall_s": wall, "cpu_s": cpu,
                "mb_s": n as f64 / 1e6 / wall, "cpu_s_per_gb": cpu / (n as f64 / 1e9),
            });
            if stage.starts_with("zstd") {
                line["ratio"] = serde_json::json!(out as f64 / n as f64);
            }
            println!("{line}");
        };
        emit(
            "blake3",
            1,
            time(a.reps, || {
                let mut h = blake3::Hasher::new();
                for p in data.chunks(PIECE) {
                    h.update(p);
                }
                h.finalize().as_bytes()[0] as u64
            }),
        );
        emit(
            "blake3",
            threads,
            time(a.reps, || {
                let per = data.len().div_ceil(threads);
                std::thread::scope(|s| {
                    let hs: Vec<_> = data
                        .chunks(per.max(1))
                        .map(|part| s.spawn(move || blake3::hash(part).as_bytes()[0] as u64))
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap()).sum()
                })
            }),
        );
        for level in [1, 3] {
            emit(
                &format!("zstd-{level}"),
                1,
                time(a.reps, || {
                    let mut c = zstd::bulk::Compressor::new(level).unwrap();
                    data.chunks(PIECE)
                        .map(|p| c.compress(p).unwrap().len() as u64)
                        .sum()
                }),
            );
        }
        emit(
            "age-chacha20poly1305",
            1,
            time(a.reps, || {
                let enc = age::Encryptor::with_recipients(std::iter::once(
                    &recipient as &dyn age::Recipient,
                ))
                .unwrap();
                let mut sink = Sink(0);
                let mut w = enc.wrap_output(&mut sink).unwrap();
                for p in data.chunks(PIECE) {
                    w.write_all(p).unwrap();
                }
                w.finish().unwrap();
                sink.0
            }),
        );
    }
    Ok(())
}
