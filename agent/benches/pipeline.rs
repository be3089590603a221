//! The whole backup pipeline without network: plan (scan against an empty catalog), read,
//! chunk, hash, dedup, compress, encrypt, emit into a discarding sink, and write the delta.
//!
//! Data sets (made once per run in a temp folder, so they are in the page cache):
//!
//! * `photos`: incompressible photo-like files, 12 × 24 MiB "RAW" + 24 × 6 MiB "JPEG";
//! * `mid_files`: 400 incompressible files of 0.5-2 MiB (JPEG previews, small JPEGs);
//! * `one_video`: a single incompressible 512 MiB file (one reader; the sealers share it);
//! * `sidecars`: 6,000 XMP-like text files of 2-10 KiB (compressible, one blob per file);
//! * `text_large`: 8 compressible text files of 8 MiB.
//!
//! `KEEPSAKE_BENCH_SETS=photos,one_video` builds and runs only the named sets.
//!
//! Criterion reports wall-clock throughput; after each benchmark the CPU time of the process
//! (user + system, all threads) per GB is printed too, since the machine is shared.
//! `cargo bench -p keepsake-agent --bench pipeline`.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keepsake_agent::backup::{
    backup_to_sink, process_cpu_time, BackupOptions, BackupReport, NoBackupObserver,
};
use keepsake_agent::catalog::Catalog;
use keepsake_agent::exclude::{ExcludeConfig, Matcher};
use keepsake_agent::pipeline::DiscardSink;
use keepsake_common::delta::DeltaHeader;
use keepsake_common::keys::{OrgKeys, OrgPublicKeys};

fn fill_random(buf: &mut [u8], seed: u64) {
    // splitmix64 of the seed: distinct seeds give unrelated streams (never the zero state).
    let mut s = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    s = (s ^ (s >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    s = (s ^ (s >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    s = (s ^ (s >> 31)) | 1;
    for c in buf.chunks_mut(8) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let v = s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

fn sidecar_text(n: usize, seed: u64) -> Vec<u8> {
    let mut s = String::from("<?xpacket begin=\"\"?>\n<x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n");
    let mut i = seed;
    while s.len() < n {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(&format!(
            "  <rdf:li crs:Exposure2012=\"{:+.2}\" crs:Temperature=\"{}\" xmp:Rating=\"{}\"/>\n",
            ((i >> 40) % 400) as f64 / 100.0 - 2.0,
            4000 + (i >> 20) % 3000,
            (i >> 8) % 6
        ));
    }
    s.truncate(n);
    s.into_bytes()
}

fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

fn make_photos(root: &Path) -> u64 {
    let mut total = 0;
    let mut buf = vec![0u8; 24 << 20];
    for i in 0..12u64 {
        fill_random(&mut buf, 100 + i);
        write(&root.join(format!("RAW/IMG_{i:04}.CR3")), &buf);
        total += buf.len() as u64;
    }
    buf.truncate(6 << 20);
    for i in 0..24u64 {
        fill_random(&mut buf, 200 + i);
        write(&root.join(format!("JPG/IMG_{i:04}.jpg")), &buf);
        total += buf.len() as u64;
    }
    total
}

fn make_mid_files(root: &Path) -> u64 {
    let mut total = 0;
    let mut buf = vec![0u8; 2 << 20];
    for i in 0..400u64 {
        let n = (512 << 10) + ((i as usize * 7919) % (3 << 19));
        fill_random(&mut buf[..n], 300 + i);
        write(&root.join(format!("previews/IMG_{i:04}.jpg")), &buf[..n]);
        total += n as u64;
    }
    total
}

fn make_video(root: &Path) -> u64 {
    let mut buf = vec![0u8; 512 << 20];
    fill_random(&mut buf, 7);
    write(&root.join("ceremony.mov"), &buf);
    buf.len() as u64
}

fn make_sidecars(root: &Path) -> u64 {
    let mut total = 0;
    for i in 0..6000u64 {
        let data = sidecar_text(2048 + (i as usize * 37) % 8192, i);
        write(
            &root.join(format!("card-{:02}/IMG_{i:05}.xmp", i / 500)),
            &data,
        );
        total += data.len() as u64;
    }
    total
}

fn make_text_large(root: &Path) -> u64 {
    let mut total = 0;
    for i in 0..8u64 {
        let data = sidecar_text(8 << 20, 1000 + i);
        write(&root.join(format!("exports/list-{i}.txt")), &data);
        total += data.len() as u64;
    }
    total
}

struct Run {
    root: PathBuf,
    work: PathBuf,
    keys: OrgPublicKeys,
    n: Cell<u64>,
}

impl Run {
    fn once(&self, threads: usize) -> BackupReport {
        let i = self.n.get();
        self.n.set(i + 1);
        let delta_dir = self.work.join(format!("delta-{i}"));
        let mut opts = BackupOptions::new(&delta_dir, DeltaHeader::new("bench", None));
        opts.plan.update_catalog = false;
        opts.journal = false;
        opts.pipeline.racy_window = Duration::ZERO;
        opts.pipeline.readers = threads;
        opts.pipeline.sealers = threads;
        let mut cat = Catalog::open_in_memory().unwrap();
        let matcher = Arc::new(Matcher::new(&self.root, &ExcludeConfig::default()));
        let r = backup_to_sink(
            &mut cat,
            &self.root,
            matcher,
            &self.keys,
            Arc::new(DiscardSink::new()),
            &opts,
            &mut NoBackupObserver,
        )
        .unwrap();
        let _ = fs::remove_dir_all(&delta_dir);
        assert_eq!(r.files_failed, 0);
        r
    }
}

fn bench_set(
    c: &mut Criterion,
    name: &str,
    make: fn(&Path) -> u64,
    threads: &[(usize, &str)],
    samples: usize,
) {
    if let Ok(only) = std::env::var("KEEPSAKE_BENCH_SETS") {
        if !only.split(',').any(|s| s.trim() == name) {
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let bytes = make(&root);
    let root = fs::canonicalize(&root).unwrap();
    let run = Run {
        root,
        work: tmp.path().to_path_buf(),
        keys: OrgKeys::generate().unwrap().public(),
        n: Cell::new(0),
    };
    // Warm the page cache.
    run.once(0);
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(samples);
    g.measurement_time(Duration::from_secs(15));
    for &(t, label) in threads {
        let cpu = Cell::new(Duration::ZERO);
        let wall = Cell::new(Duration::ZERO);
        let total = Cell::new(0u64);
        let last = std::cell::RefCell::new(None);
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    let c0 = process_cpu_time().unwrap_or_default();
                    let t0 = Instant::now();
                    let r = run.once(t);
                    took += t0.elapsed();
                    cpu.set(cpu.get() + process_cpu_time().unwrap_or_default() - c0);
                    total.set(total.get() + r.pipeline.bytes_read);
                    *last.borrow_mut() = Some(r);
                }
                wall.set(wall.get() + took);
                took
            })
        });
        let gb = total.get() as f64 / 1e9;
        let last = last.into_inner();
        if let Some(r) = last.as_ref() {
            let s = &r.pipeline.stages;
            let ms = |ns: u64| ns as f64 / 1e6;
            eprintln!(
                "{name}/{label}: {:.0} MB/s, {:.2} CPU-s/GB ({} readers, {} sealers); last run: \
                 {} files, {} blobs ({} compressed), {:.0} MB sealed; stage ms (summed over threads): \
                 read {:.0}, chunk {:.0}, hash {:.0}, budget wait {:.0}, seal {:.0}, emit {:.0}",
                total.get() as f64 / 1e6 / wall.get().as_secs_f64(),
                cpu.get().as_secs_f64() / gb,
                r.threads.0,
                r.threads.1,
                r.files_backed_up,
                r.pipeline.blobs_emitted,
                r.pipeline.blobs_compressed,
                r.pipeline.cipher_bytes_emitted as f64 / 1e6,
                ms(s.read_ns),
                ms(s.chunk_ns),
                ms(s.hash_ns),
                ms(s.budget_wait_ns),
                ms(s.seal_ns),
                ms(s.emit_ns),
            );
        }
    }
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    eprintln!("{cpus} CPUs");
    bench_set(
        c,
        "photos",
        make_photos,
        &[(0, "default_threads"), (1, "1_reader_1_sealer")],
        10,
    );
    bench_set(
        c,
        "mid_files",
        make_mid_files,
        &[(0, "default_threads")],
        10,
    );
    bench_set(c, "one_video", make_video, &[(0, "default_threads")], 10);
    bench_set(c, "sidecars", make_sidecars, &[(0, "default_threads")], 10);
    bench_set(
        c,
        "text_large",
        make_text_large,
        &[(0, "default_threads")],
        10,
    );
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
