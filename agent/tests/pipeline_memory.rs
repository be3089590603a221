//! Bounded memory: a multi-GiB generated stream and a big real file go through the pipeline
//! with the peak resident set size (`VmHWM`, reset before each measurement) far below the size
//! of the data. The tests of this file run one at a time (the peak is per process).
//!
//! `KEEPSAKE_TEST_STREAM_GIB` (default 4) and `KEEPSAKE_TEST_FILE_MIB` (default 1536) change the
//! sizes. `million_files_tree` backs up a tree of small files (`KEEPSAKE_TEST_FILES`, 20,000 in
//! the suite); the 1,000,000-file measurement is
//! `KEEPSAKE_TEST_FILES=1000000 cargo test --release -p keepsake-agent --test pipeline_memory -- --nocapture million`.

mod pipeline_support;

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keepsake_agent::backup::{backup_to_sink, process_cpu_time, BackupOptions, NoBackupObserver};
use keepsake_agent::catalog::{Catalog, Priority};
use keepsake_agent::exclude::{ExcludeConfig, Matcher};
use keepsake_agent::pipeline::{
    DiscardSink, FileOutcome, FileTask, FramedFileSink, Pipeline, PipelineOptions,
};
use keepsake_agent::relpath::RelPath;
use keepsake_common::delta::DeltaHeader;
use keepsake_common::keys::OrgKeys;
use pipeline_support::*;

static SERIAL: Mutex<()> = Mutex::new(());

/// Generous bound asserted by the tests (the design target is 100 MB).
const PEAK_LIMIT: u64 = 200 * 1024 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An incompressible stream of `left` bytes made on the fly, 1 MiB at a time.
struct Generator {
    left: u64,
    seed: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Generator {
    fn new(len: u64, seed: u64) -> Generator {
        Generator {
            left: len,
            seed,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for Generator {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.left == 0 {
                return Ok(0);
            }
            let n = self.left.min(1 << 20) as usize;
            self.buf.resize(n, 0);
            self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            fill_random(&mut self.buf, self.seed);
            self.left -= n as u64;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn report(what: &str, bytes: u64, took: Duration, cpu: Option<Duration>, base: u64, peak: u64) {
    let gb = bytes as f64 / 1e9;
    eprintln!(
        "{what}: {:.0} MiB in {:.1} s = {:.0} MB/s, {} CPU-s/GB; RSS before {:.0} MiB, peak {:.0} MiB",
        mib(bytes),
        took.as_secs_f64(),
        bytes as f64 / 1e6 / took.as_secs_f64(),
        cpu.map(|c| format!("{:.2}", c.as_secs_f64() / gb))
            .unwrap_or_else(|| "?".into()),
        mib(base),
        mib(peak)
    );
}

#[test]
fn generated_stream_of_several_gib_stays_within_the_memory_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let size = env_u64("KEEPSAKE_TEST_STREAM_GIB", 4) << 30;
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(DiscardSink::new());
    let mut p = Pipeline::start(&keys.public(), sink.clone(), PipelineOptions::default()).unwrap();
    assert!(reset_peak_rss(), "this test needs Linux /proc");
    let base = current_rss().unwrap();
    let started = Instant::now();
    let cpu0 = process_cpu_time();
    let content = p.chunk_stream(Generator::new(size, 7)).unwrap();
    let stats = p.finish(&mut |_| {}).unwrap();
    let took = started.elapsed();
    let cpu = process_cpu_time().zip(cpu0).map(|(b, a)| b - a);
    let peak = peak_rss().unwrap();
    report("generated stream", size, took, cpu, base, peak);
    assert_eq!(content.size, size);
    assert_eq!(
        content.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(),
        size
    );
    assert_eq!(stats.blobs_emitted, content.chunks.len() as u64);
    assert_eq!(sink.blobs(), stats.blobs_emitted);
    assert!(
        stats.peak_queued_bytes <= (32 << 20) + (4 << 20),
        "{}",
        stats.peak_queued_bytes
    );
    assert!(peak < PEAK_LIMIT, "peak RSS {} MiB", mib(peak));
    // The streamed hash is the hash of the whole stream.
    let mut h = keys.chunk_id_key.content_hasher();
    let mut g = Generator::new(size, 7);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = g.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert_eq!(h.finalize(), content.content_hash);
}

#[test]
fn big_file_stays_within_the_memory_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let size = env_u64("KEEPSAKE_TEST_FILE_MIB", 1536) << 20;
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("ceremony.mov");
    {
        let mut f = io::BufWriter::new(fs::File::create(&path).unwrap());
        let mut g = Generator::new(size, 3);
        io::copy(&mut g, &mut f).unwrap();
        f.flush().unwrap();
    }
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(DiscardSink::new());
    let opts = PipelineOptions {
        racy_window: Duration::ZERO,
        ..PipelineOptions::default()
    };
    let p = Pipeline::start(&keys.public(), sink, opts).unwrap();
    let md = fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    let task = FileTask {
        rel: RelPath::from_bytes(b"ceremony.mov".to_vec()).unwrap(),
        path: path.clone(),
        size: md.size(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        inode: md.ino(),
        mode: md.mode(),
        hard_link: None,
        priority: Priority::Normal,
    };
    assert!(reset_peak_rss());
    let base = current_rss().unwrap();
    let started = Instant::now();
    let cpu0 = process_cpu_time();
    let mut out = Vec::new();
    let stats = p.run([task], &mut |o| out.push(o)).unwrap();
    let took = started.elapsed();
    let cpu = process_cpu_time().zip(cpu0).map(|(b, a)| b - a);
    let peak = peak_rss().unwrap();
    report("file", size, took, cpu, base, peak);
    match &out[0] {
        FileOutcome::Done(r) => assert_eq!(r.size, size),
        other => panic!("{other:?}"),
    }
    assert_eq!(stats.bytes_read, size);
    assert!(peak < PEAK_LIMIT, "peak RSS {} MiB", mib(peak));
}

fn build_tree(root: &Path, n: u64) {
    let per_dir = 1000;
    let mut buf = Vec::new();
    for i in 0..n {
        let dir = root.join(format!(
            "wedding-{:03}/card-{:02}",
            i / per_dir / 100,
            (i / per_dir) % 100
        ));
        if i % per_dir == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        buf.clear();
        buf.extend_from_slice(format!("sidecar {i}\n").as_bytes());
        buf.extend_from_slice(&sidecar_text(200 + (i % 1800) as usize, i));
        fs::write(dir.join(format!("IMG_{i:07}.xmp")), &buf).unwrap();
    }
}

#[test]
fn million_files_tree() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let n = env_u64("KEEPSAKE_TEST_FILES", 20_000);
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    let t0 = Instant::now();
    build_tree(&root, n);
    eprintln!("built {n} files in {:.0} s", t0.elapsed().as_secs_f64());
    let keys = OrgKeys::generate().unwrap();
    let mut cat = Catalog::open(&t.path().join("catalog.db")).unwrap();
    let sink = Arc::new(FramedFileSink::new(&t.path().join("packs"), 32 << 20).unwrap());
    let mut opts = BackupOptions::new(&t.path().join("delta"), DeltaHeader::new("s", None));
    opts.pipeline.racy_window = Duration::ZERO;
    let matcher = Arc::new(Matcher::new(&root, &ExcludeConfig::default()));
    assert!(reset_peak_rss());
    let base = current_rss().unwrap();
    let r = backup_to_sink(
        &mut cat,
        &root,
        matcher,
        &keys.public(),
        sink,
        &opts,
        &mut NoBackupObserver,
    )
    .unwrap();
    let peak = peak_rss().unwrap();
    report(
        &format!("{n} files"),
        r.pipeline.bytes_read,
        r.elapsed,
        r.cpu,
        base,
        peak,
    );
    eprintln!(
        "  {} files backed up, {} blobs, {} delta parts, {:?}",
        r.files_backed_up,
        r.pipeline.blobs_emitted,
        r.delta.parts.len(),
        r.pipeline.stages
    );
    assert_eq!(r.files_backed_up, n);
    assert!(peak < PEAK_LIMIT, "peak RSS {} MiB", mib(peak));
}
