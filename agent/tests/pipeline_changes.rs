//! Files that change, vanish or cannot be read while the pipeline works on them, and failures
//! of the whole pipeline (sink errors, cancellation).

mod pipeline_support;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keepsake_agent::catalog::Priority;
use keepsake_agent::pipeline::{
    BlobSink, FileErrorKind, FileOutcome, FileTask, MemorySink, Pipeline, PipelineError,
    PipelineOptions, SinkError, ThreadRole,
};
use keepsake_agent::relpath::RelPath;
use keepsake_common::crypto::SealedBlob;
use keepsake_common::ids::{BlobId, ContentHash};
use keepsake_common::keys::OrgKeys;
use pipeline_support::*;

fn task(root: &Path, rel: &str) -> FileTask {
    let path = root.join(rel);
    let md = fs::symlink_metadata(&path).unwrap();
    FileTask {
        rel: RelPath::from_bytes(rel.as_bytes().to_vec()).unwrap(),
        path,
        size: md.size(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        inode: md.ino(),
        mode: md.mode(),
        hard_link: None,
        priority: Priority::Normal,
    }
}

fn run(
    keys: &OrgKeys,
    sink: Arc<dyn BlobSink>,
    opts: PipelineOptions,
    tasks: Vec<FileTask>,
) -> Vec<FileOutcome> {
    let p = Pipeline::start(&keys.public(), sink, opts).unwrap();
    let mut out = Vec::new();
    p.run(tasks, &mut |o| out.push(o)).unwrap();
    out
}

fn hash(keys: &OrgKeys, data: &[u8]) -> ContentHash {
    ContentHash::of(&keys.chunk_id_key, data)
}

/// Checks a result against the final bytes of a file that was only ever appended to: a
/// consistent snapshot is a prefix of the final content.
fn assert_consistent_prefix(keys: &OrgKeys, o: &FileOutcome, final_bytes: &[u8]) {
    if let FileOutcome::Done(r) = o {
        let n = r.size as usize;
        assert!(n <= final_bytes.len());
        assert_eq!(
            r.content_hash,
            hash(keys, &final_bytes[..n]),
            "the result is one consistent version of the file"
        );
        assert_eq!(
            r.chunks.iter().map(|c| u64::from(c.len)).sum::<u64>(),
            r.size
        );
    }
}

fn appender(path: &Path, every: Duration, until: Instant) -> thread::JoinHandle<u64> {
    let path = path.to_path_buf();
    thread::spawn(move || {
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut n = 0u64;
        while Instant::now() < until {
            use std::io::Write;
            f.write_all(&random_bytes(64 * 1024, 1000 + n)).unwrap();
            n += 1;
            thread::sleep(every);
        }
        n
    })
}

#[test]
fn growing_file_is_retried_until_stable_and_committed_complete() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("card-dump.MOV");
    fs::write(&path, random_bytes(8 << 20, 1)).unwrap();
    let keys = OrgKeys::generate().unwrap();
    let writer = appender(
        &path,
        Duration::from_millis(4),
        Instant::now() + Duration::from_millis(1200),
    );
    thread::sleep(Duration::from_millis(30));
    let opts = PipelineOptions {
        max_attempts: 10,
        retry_backoff: Duration::from_millis(100),
        racy_window: Duration::from_millis(50),
        ..PipelineOptions::default()
    };
    let out = run(
        &keys,
        Arc::new(MemorySink::new()),
        opts,
        vec![task(t.path(), "card-dump.MOV")],
    );
    let appended = writer.join().unwrap();
    assert!(appended > 50);
    let final_bytes = fs::read(&path).unwrap();
    assert_eq!(out.len(), 1);
    assert_consistent_prefix(&keys, &out[0], &final_bytes);
    match &out[0] {
        FileOutcome::Done(r) => {
            assert!(r.attempts >= 2, "the first attempt saw the file grow");
            assert_eq!(
                r.size,
                final_bytes.len() as u64,
                "committed complete once stable"
            );
            assert_eq!(r.content_hash, hash(&keys, &final_bytes));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn file_growing_through_every_attempt_is_reported_as_changing() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("live.log");
    fs::write(&path, random_bytes(6 << 20, 2)).unwrap();
    let keys = OrgKeys::generate().unwrap();
    let writer = appender(
        &path,
        Duration::from_millis(3),
        Instant::now() + Duration::from_millis(2500),
    );
    thread::sleep(Duration::from_millis(20));
    let opts = PipelineOptions {
        max_attempts: 3,
        retry_backoff: Duration::from_millis(20),
        racy_window: Duration::from_millis(100),
        ..PipelineOptions::default()
    };
    let sink = Arc::new(MemorySink::new());
    let out = run(&keys, sink, opts, vec![task(t.path(), "live.log")]);
    writer.join().unwrap();
    let final_bytes = fs::read(&path).unwrap();
    assert_consistent_prefix(&keys, &out[0], &final_bytes);
    match &out[0] {
        FileOutcome::Failed(e) => {
            assert_eq!(e.kind, FileErrorKind::Changing, "{e:?}");
            assert_eq!(e.attempts, 3);
        }
        other => panic!("a file that never settles is not committed: {other:?}"),
    }
}

#[test]
fn in_place_rewrites_are_never_emitted_torn() {
    // Two versions of the same size are written over each other in 64 KiB pieces; a read that
    // mixes them would hash to neither.
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("IMG_0001.dng");
    let versions = [random_bytes(6 << 20, 10), random_bytes(6 << 20, 11)];
    fs::write(&path, &versions[0]).unwrap();
    let keys = OrgKeys::generate().unwrap();
    let last = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_millis(900);
    let writer = {
        let path = path.clone();
        let versions = versions.clone();
        let last = last.clone();
        thread::spawn(move || {
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut v = 0usize;
            while Instant::now() < stop_at {
                v ^= 1;
                for (i, piece) in versions[v].chunks(64 * 1024).enumerate() {
                    f.write_all_at(piece, (i * 64 * 1024) as u64).unwrap();
                    if i % 16 == 0 {
                        thread::sleep(Duration::from_micros(300));
                    }
                }
                last.store(v as u64, Ordering::SeqCst);
            }
        })
    };
    thread::sleep(Duration::from_millis(20));
    let opts = PipelineOptions {
        max_attempts: 12,
        retry_backoff: Duration::from_millis(60),
        racy_window: Duration::from_millis(50),
        ..PipelineOptions::default()
    };
    let p = Pipeline::start(&keys.public(), Arc::new(MemorySink::new()), opts).unwrap();
    let mut out = Vec::new();
    let stats = p
        .run(vec![task(t.path(), "IMG_0001.dng")], &mut |o| out.push(o))
        .unwrap();
    writer.join().unwrap();
    let final_v = last.load(Ordering::SeqCst) as usize;
    assert_eq!(fs::read(&path).unwrap(), versions[final_v]);
    match &out[0] {
        FileOutcome::Done(r) => {
            assert!(stats.retries >= 1, "the rewrites were noticed");
            assert_eq!(r.content_hash, hash(&keys, &versions[final_v]));
        }
        other => panic!("{other:?}"),
    }
}

/// A sink whose `emit` blocks until the gate opens: with a small memory budget the reader then
/// stops in the middle of a big file, which lets a test change the file at a known moment.
struct GateSink {
    open: Mutex<bool>,
    cv: Condvar,
    waiting: AtomicU64,
    inner: MemorySink,
}

impl GateSink {
    fn new() -> GateSink {
        GateSink {
            open: Mutex::new(false),
            cv: Condvar::new(),
            waiting: AtomicU64::new(0),
            inner: MemorySink::new(),
        }
    }
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn wait_until_blocked(&self) {
        let t = Instant::now();
        while self.waiting.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(20));
            thread::sleep(Duration::from_millis(5));
        }
        // Let the reader fill the budget and stop.
        thread::sleep(Duration::from_millis(300));
    }
}

impl BlobSink for GateSink {
    fn known(&self, id: &BlobId) -> bool {
        self.inner.known(id)
    }
    fn emit(&self, blob: SealedBlob) -> Result<(), SinkError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
        drop(open);
        self.inner.emit(blob)
    }
}

fn gated_opts() -> PipelineOptions {
    PipelineOptions {
        readers: 1,
        sealers: 1,
        memory_budget: 2 << 20,
        retry_backoff: Duration::from_millis(20),
        racy_window: Duration::from_millis(50),
        ..PipelineOptions::default()
    }
}

#[test]
fn change_of_ctime_only_mid_read_is_detected_and_the_new_version_committed() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("wedding.mp4");
    let mut data = random_bytes(40 << 20, 20);
    fs::write(&path, &data).unwrap();
    let old_mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(GateSink::new());
    let mut p = Pipeline::start(&keys.public(), sink.clone(), gated_opts()).unwrap();
    let mut out = Vec::new();
    p.submit(task(t.path(), "wedding.mp4"), &mut |o| out.push(o))
        .unwrap();
    sink.wait_until_blocked();
    // Overwrite 1 KiB behind the reader and 1 KiB far ahead of it (what it reads is then
    // neither version), same size, and put the mtime back: only the ctime tells.
    let patch = random_bytes(1024, 21);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&patch, 0).unwrap();
    f.write_all_at(&patch, 30 << 20).unwrap();
    f.set_modified(old_mtime).unwrap();
    drop(f);
    data[..1024].copy_from_slice(&patch);
    data[30 << 20..(30 << 20) + 1024].copy_from_slice(&patch);
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), old_mtime);
    sink.release();
    let stats = p.finish(&mut |o| out.push(o)).unwrap();
    match &out[0] {
        FileOutcome::Done(r) => {
            assert!(r.attempts >= 2);
            assert_eq!(r.content_hash, hash(&keys, &data), "the new version");
        }
        other => panic!("{other:?}"),
    }
    assert!(stats.retries >= 1);
}

#[test]
fn file_deleted_while_being_read_is_reported_as_vanished() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("IMG_0002.CR3");
    fs::write(&path, random_bytes(30 << 20, 30)).unwrap();
    write_raw(t.path(), b"other.xmp", &sidecar_text(4000, 1));
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(GateSink::new());
    let mut p = Pipeline::start(&keys.public(), sink.clone(), gated_opts()).unwrap();
    let mut out = Vec::new();
    p.submit(task(t.path(), "IMG_0002.CR3"), &mut |o| out.push(o))
        .unwrap();
    p.submit(task(t.path(), "other.xmp"), &mut |o| out.push(o))
        .unwrap();
    sink.wait_until_blocked();
    fs::remove_file(&path).unwrap();
    sink.release();
    p.finish(&mut |o| out.push(o)).unwrap();
    out.sort_by(|a, b| a.rel().cmp(b.rel()));
    match &out[0] {
        FileOutcome::Failed(e) => {
            assert_eq!(e.kind, FileErrorKind::Vanished, "{e:?}");
            assert_eq!(e.rel.as_bytes(), b"IMG_0002.CR3");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&out[1], FileOutcome::Done(r) if r.rel.as_bytes() == b"other.xmp"));
}

#[test]
fn file_truncated_mid_read_is_retried_and_the_short_version_committed() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("export.tif");
    let data = random_bytes(40 << 20, 40);
    fs::write(&path, &data).unwrap();
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(GateSink::new());
    let mut p = Pipeline::start(&keys.public(), sink.clone(), gated_opts()).unwrap();
    let mut out = Vec::new();
    p.submit(task(t.path(), "export.tif"), &mut |o| out.push(o))
        .unwrap();
    sink.wait_until_blocked();
    // The reader is a few MiB in; cut the file to 20 MiB under it.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    sink.release();
    p.finish(&mut |o| out.push(o)).unwrap();
    match &out[0] {
        FileOutcome::Done(r) => {
            assert!(r.attempts >= 2);
            assert_eq!(r.size, 20 << 20);
            assert_eq!(r.content_hash, hash(&keys, &data[..20 << 20]));
        }
        other => panic!("{other:?}"),
    }
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn vanished_unreadable_and_replaced_files_are_reported_and_the_rest_completes() {
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = t.path();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let rel = format!("f{i:02}.jpg");
        let size = if i % 3 == 0 { 600_000 } else { 20_000 };
        write_raw(root, rel.as_bytes(), &random_bytes(size, i));
        tasks.push(task(root, &rel));
    }
    for name in ["gone.jpg", "secret.jpg", "dir-now.jpg", "link-now.jpg"] {
        write_raw(root, name.as_bytes(), &random_bytes(50_000, 7));
        tasks.push(task(root, name));
    }
    // After the scan saw them: one deleted, one unreadable, one now a folder, one now a link.
    fs::remove_file(root.join("gone.jpg")).unwrap();
    fs::set_permissions(root.join("secret.jpg"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::remove_file(root.join("dir-now.jpg")).unwrap();
    fs::create_dir(root.join("dir-now.jpg")).unwrap();
    fs::remove_file(root.join("link-now.jpg")).unwrap();
    std::os::unix::fs::symlink("f01.jpg", root.join("link-now.jpg")).unwrap();
    let keys = OrgKeys::generate().unwrap();
    let hook_ran = Arc::new(AtomicBool::new(false));
    let hook_flag = hook_ran.clone();
    let opts = PipelineOptions {
        racy_window: Duration::ZERO,
        // As root, permission bits do not deny reads: read as an unprivileged user
        // (setfsuid is per thread, hence the hook on every pipeline thread).
        on_thread_start: Some(Arc::new(move |role: ThreadRole| {
            if role == ThreadRole::Reader && is_root() {
                // SAFETY: plain syscalls on the current thread.
                unsafe {
                    libc::setfsgid(65534);
                    libc::setfsuid(65534);
                }
                hook_flag.store(true, Ordering::SeqCst);
            }
        })),
        ..PipelineOptions::default()
    };
    let sink = Arc::new(MemorySink::new());
    let mut out = run(&keys, sink, opts, tasks);
    assert_eq!(hook_ran.load(Ordering::SeqCst), is_root());
    out.sort_by(|a, b| a.rel().cmp(b.rel()));
    let kind_of = |name: &str| -> Option<FileErrorKind> {
        match out
            .iter()
            .find(|o| o.rel().as_bytes() == name.as_bytes())
            .unwrap()
        {
            FileOutcome::Failed(e) => Some(e.kind),
            FileOutcome::Done(_) => None,
        }
    };
    assert_eq!(kind_of("gone.jpg"), Some(FileErrorKind::Vanished));
    assert_eq!(kind_of("secret.jpg"), Some(FileErrorKind::Unreadable));
    assert_eq!(kind_of("dir-now.jpg"), Some(FileErrorKind::NotAFile));
    assert_eq!(kind_of("link-now.jpg"), Some(FileErrorKind::NotAFile));
    let done: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            FileOutcome::Done(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 30);
    for r in done {
        let data = fs::read(root.join(r.rel.to_path())).unwrap();
        assert_eq!(r.content_hash, hash(&keys, &data));
    }
    if let FileOutcome::Failed(e) = out
        .iter()
        .find(|o| o.rel().as_bytes() == b"secret.jpg")
        .unwrap()
    {
        assert_eq!(e.os_error, Some(libc::EACCES));
    }
}

struct FailingSink {
    after: AtomicU64,
}

impl BlobSink for FailingSink {
    fn known(&self, _id: &BlobId) -> bool {
        false
    }
    fn emit(&self, _blob: SealedBlob) -> Result<(), SinkError> {
        if self.after.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(SinkError::Other(
                "upload refused: disk full on the server".into(),
            ));
        }
        Ok(())
    }
}

#[test]
fn a_failing_sink_stops_the_pipeline_with_its_error() {
    let t = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let rel = format!("f{i:02}.jpg");
        write_raw(t.path(), rel.as_bytes(), &random_bytes(300_000, i));
        tasks.push(task(t.path(), &rel));
    }
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(FailingSink {
        after: AtomicU64::new(5),
    });
    let opts = PipelineOptions {
        racy_window: Duration::ZERO,
        max_outstanding_files: 8,
        ..PipelineOptions::default()
    };
    let p = Pipeline::start(&keys.public(), sink, opts).unwrap();
    let mut outcomes = 0;
    let started = Instant::now();
    let err = p.run(tasks, &mut |_| outcomes += 1).unwrap_err();
    assert!(matches!(err, PipelineError::Sink(_)), "{err}");
    assert!(err.to_string().contains("disk full"));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(outcomes <= 40);
}

#[test]
fn cancellation_stops_the_pipeline() {
    let t = tempfile::tempdir().unwrap();
    write_raw(t.path(), b"a.jpg", &random_bytes(1000, 1));
    let keys = OrgKeys::generate().unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = PipelineOptions {
        cancel: Some(cancel.clone()),
        ..PipelineOptions::default()
    };
    let mut p = Pipeline::start(&keys.public(), Arc::new(MemorySink::new()), opts).unwrap();
    cancel.store(true, Ordering::SeqCst);
    let mut out = Vec::new();
    let e = p.submit(task(t.path(), "a.jpg"), &mut |o| out.push(o));
    assert!(matches!(e, Err(PipelineError::Cancelled)));
    assert!(matches!(
        p.finish(&mut |o| out.push(o)),
        Err(PipelineError::Cancelled)
    ));
}

#[test]
fn racy_files_wait_for_their_window_without_blocking_others() {
    let t = tempfile::tempdir().unwrap();
    let keys = OrgKeys::generate().unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let rel = format!("fresh{i}.xmp");
        write_raw(t.path(), rel.as_bytes(), &sidecar_text(3000, i));
        tasks.push(task(t.path(), &rel));
    }
    let opts = PipelineOptions {
        readers: 1,
        racy_window: Duration::from_millis(400),
        ..PipelineOptions::default()
    };
    let started = Instant::now();
    let p = Pipeline::start(&keys.public(), Arc::new(MemorySink::new()), opts).unwrap();
    let mut out = Vec::new();
    let stats = p.run(tasks, &mut |o| out.push(o)).unwrap();
    let took = started.elapsed();
    assert!(out
        .iter()
        .all(|o| matches!(o, FileOutcome::Done(r) if r.attempts == 2)));
    assert_eq!(stats.retries, 6);
    // One reader, six files each parked for ~0.4 s: parked in parallel, not one after another.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(2000), "{took:?}");
}
