//! The backup pipeline on real files: round trip through packs and delta, determinism and
//! dedup, SQLite edits, delta parts, the catalog glue and the `keepsake pack` command.

mod pipeline_support;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keepsake_agent::backup::{backup_to_sink, BackupOptions, BackupReport, NoBackupObserver};
use keepsake_agent::catalog::{Catalog, FileState, Priority};
use keepsake_agent::detect::scan::{Entry, EntryKind};
use keepsake_agent::exclude::{ExcludeConfig, Matcher};
use keepsake_agent::pipeline::{
    catalog_entries, BlobSink, DeltaBuilder, DeltaLimits, DiscardSink, FileOutcome, FileResult,
    FileTask, FramedFileSink, MemorySink, Pipeline, PipelineOptions,
};
use keepsake_agent::relpath::RelPath;
use keepsake_common::delta::{ChunkRef, DeltaHeader, DeltaReader, Entry as DeltaEntry};
use keepsake_common::ids::{BlobId, ContentHash};
use keepsake_common::keys::OrgKeys;
use pipeline_support::*;

fn matcher(root: &Path) -> Arc<Matcher> {
    Arc::new(Matcher::new(
        root,
        &ExcludeConfig {
            use_defaults: false,
            ..ExcludeConfig::default()
        },
    ))
}

/// Options for trees written just before the test reads them (no racy wait).
fn quick(mut o: BackupOptions) -> BackupOptions {
    o.pipeline.racy_window = Duration::ZERO;
    o
}

fn backup(
    cat: &mut Catalog,
    root: &Path,
    keys: &OrgKeys,
    sink: Arc<dyn BlobSink>,
    delta_dir: &Path,
    update_catalog: bool,
) -> BackupReport {
    let mut opts = quick(BackupOptions::new(
        delta_dir,
        DeltaHeader::new("source-1", None),
    ));
    opts.plan.update_catalog = update_catalog;
    backup_to_sink(
        cat,
        root,
        matcher(root),
        &keys.public(),
        sink,
        &opts,
        &mut NoBackupObserver,
    )
    .unwrap()
}

fn part_paths(r: &BackupReport) -> Vec<PathBuf> {
    r.delta.parts.iter().map(|p| p.path.clone()).collect()
}

/// A tree with every kind of thing a photographer's folder holds.
fn photo_tree(root: &Path) {
    write_raw(
        root,
        b"Smith Wedding/RAW/IMG_0001.CR3",
        &random_bytes(9 << 20, 1),
    );
    write_raw(
        root,
        b"Smith Wedding/RAW/IMG_0002.CR3",
        &random_bytes(5 << 20, 2),
    );
    write_raw(
        root,
        b"Smith Wedding/JPG/IMG_0001.jpg",
        &random_bytes(700_000, 3),
    );
    write_raw(
        root,
        b"Smith Wedding/RAW/IMG_0001.xmp",
        &sidecar_text(6000, 4),
    );
    write_raw(
        root,
        b"Smith Wedding/RAW/IMG_0002.xmp",
        &sidecar_text(7000, 5),
    );
    write_raw(root, b"Smith Wedding/notes.txt", &sidecar_text(300_000, 6));
    write_raw(root, b"Smith Wedding/empty.txt", b"");
    write_raw(
        root,
        b"Smith Wedding/exactly-min.bin",
        &random_bytes(256 * 1024, 7),
    );
    write_raw(
        root,
        b"Smith Wedding/min-plus-one.bin",
        &random_bytes(256 * 1024 + 1, 8),
    );
    // Latin-1 name (not UTF-8), a backslash, and a name that looks like a drive letter.
    write_raw(
        root,
        b"Smith Wedding/caf\xe9 \xff.jpg",
        &random_bytes(40_000, 9),
    );
    write_raw(
        root,
        b"Smith Wedding/back\\slash.txt",
        b"backslash in a Unix name",
    );
    write_raw(root, b"C:odd", b"drive-letter-like name");
    fs::create_dir_all(root.join("Smith Wedding/empty folder")).unwrap();
    std::os::unix::fs::symlink("RAW/IMG_0001.CR3", root.join("Smith Wedding/latest")).unwrap();
    std::os::unix::fs::symlink(
        std::ffi::OsStr::new("../caf\u{e9}"),
        root.join("Smith Wedding/link-utf8"),
    )
    .unwrap();
    {
        use std::os::unix::ffi::OsStrExt;
        std::os::unix::fs::symlink(
            std::ffi::OsStr::from_bytes(b"target-\xfe"),
            root.join("Smith Wedding/link-raw"),
        )
        .unwrap();
    }
}

#[test]
fn round_trip_restores_identical_files() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    fs::create_dir(&root).unwrap();
    photo_tree(&root);
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(FramedFileSink::new(&t.path().join("packs"), 4 << 20).unwrap());
    let mut cat = Catalog::open_in_memory().unwrap();
    let report = backup(
        &mut cat,
        &root,
        &keys,
        sink.clone(),
        &t.path().join("delta"),
        true,
    );
    assert_eq!(report.files_failed, 0, "{:?}", report.failures);
    let original = tree_files(&root);
    assert_eq!(report.files_backed_up, original.len() as u64);
    // Several pack files of about the target size, each a complete stream.
    let packs = sink.files();
    assert!(packs.len() >= 3, "{packs:?}");
    for p in &packs[..packs.len() - 1] {
        assert!(p.bytes <= 4 << 20 || p.blobs == 1, "{p:?}");
    }
    let blobs = read_packs(&t.path().join("packs"));
    assert_eq!(blobs.len() as u64, report.pipeline.blobs_emitted);
    let restored = restore(&part_paths(&report), &blobs, &keys);
    assert_eq!(restored.files.len(), original.len());
    for (path, data) in &original {
        let got = restored
            .files
            .get(path)
            .unwrap_or_else(|| panic!("{} restored", String::from_utf8_lossy(path)));
        assert!(got == data, "{} identical", String::from_utf8_lossy(path));
    }
    assert!(restored
        .files
        .contains_key(&b"Smith Wedding/caf\xe9 \xff.jpg"[..]));
    assert_eq!(restored.files[&b"Smith Wedding/empty.txt"[..]], b"");
    let mut dirs = restored.dirs.clone();
    dirs.sort();
    assert_eq!(
        dirs,
        [
            &b"Smith Wedding"[..],
            b"Smith Wedding/JPG",
            b"Smith Wedding/RAW",
            b"Smith Wedding/empty folder"
        ]
    );
    assert_eq!(
        restored.links[&b"Smith Wedding/latest"[..]],
        b"RAW/IMG_0001.CR3"
    );
    assert_eq!(
        restored.links[&b"Smith Wedding/link-raw"[..]],
        b"target-\xfe"
    );
    assert_eq!(
        restored.links[&b"Smith Wedding/link-utf8"[..]],
        "../caf\u{e9}".as_bytes()
    );
    // Modes and mtimes are what the files have.
    for (path, (mode, mtime)) in &restored.meta {
        use std::os::unix::fs::MetadataExt;
        let md = fs::symlink_metadata(root.join(raw_path(path))).unwrap();
        assert_eq!(*mode, md.mode());
        assert_eq!(*mtime, md.mtime() * 1_000_000_000 + md.mtime_nsec());
    }
    // Incompressible media stays raw, text is compressed.
    assert!(report.pipeline.blobs_compressed >= 3);
    assert!(report.pipeline.cipher_bytes_emitted < report.pipeline.bytes_read);
    // The big files were cut into several chunks.
    assert!(report.pipeline.chunks >= 14, "{}", report.pipeline.chunks);
}

#[test]
fn second_run_emits_nothing_and_results_are_deterministic() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    fs::create_dir(&root).unwrap();
    photo_tree(&root);
    let keys = OrgKeys::generate().unwrap();
    let tasks = |root: &Path| -> Vec<FileTask> {
        tree_files(root)
            .keys()
            .map(|rel| {
                let path = root.join(raw_path(rel));
                let md = fs::metadata(&path).unwrap();
                use std::os::unix::fs::MetadataExt;
                FileTask {
                    rel: RelPath::from_bytes(rel.clone()).unwrap(),
                    path,
                    size: md.size(),
                    mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
                    inode: md.ino(),
                    mode: md.mode(),
                    hard_link: None,
                    priority: Priority::Normal,
                }
            })
            .collect()
    };
    let opts = PipelineOptions {
        racy_window: Duration::ZERO,
        ..PipelineOptions::default()
    };
    let run = |sink: Arc<MemorySink>| -> BTreeMap<RelPath, FileResult> {
        let p = Pipeline::start(&keys.public(), sink, opts.clone()).unwrap();
        let mut out = BTreeMap::new();
        p.run(tasks(&root), &mut |o| match o {
            FileOutcome::Done(mut r) => {
                r.attempts = 0;
                out.insert(r.rel.clone(), r);
            }
            FileOutcome::Failed(e) => panic!("{e:?}"),
        })
        .unwrap();
        out
    };
    let first_sink = Arc::new(MemorySink::new());
    let first = run(first_sink.clone());
    let emitted: Vec<BlobId> = first_sink.blobs().iter().map(|b| b.id).collect();
    let unique: HashSet<BlobId> = emitted.iter().copied().collect();
    assert_eq!(unique.len(), emitted.len(), "no blob emitted twice");
    // Every chunk referenced was emitted.
    let referenced: HashSet<BlobId> = first
        .values()
        .flat_map(|r| r.chunks.iter().map(|c| c.id))
        .collect();
    assert_eq!(referenced, unique);
    for r in first.values() {
        let data = fs::read(root.join(r.rel.to_path())).unwrap();
        assert_eq!(r.content_hash, ContentHash::of(&keys.chunk_id_key, &data));
    }
    // Second run: the sink knows every blob, so nothing is sealed, and results are equal.
    let second_sink = Arc::new(MemorySink::with_known(unique.iter().copied()));
    let second = run(second_sink.clone());
    assert!(second_sink.is_empty(), "nothing new the second time");
    assert_eq!(first, second);
}

#[test]
fn identical_files_are_sealed_once() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    let big = random_bytes(3 << 20, 11);
    let small = sidecar_text(5000, 12);
    for i in 0..5 {
        write_raw(&root, format!("copy{i}/IMG_0001.CR3").as_bytes(), &big);
    }
    for i in 0..20 {
        write_raw(&root, format!("xmp/{i:02}.xmp").as_bytes(), &small);
    }
    let keys = OrgKeys::generate().unwrap();
    // A sink that knows nothing: the pipeline's own window must dedup.
    let sink = Arc::new(DiscardSink::new());
    let mut cat = Catalog::open_in_memory().unwrap();
    let r = backup(
        &mut cat,
        &root,
        &keys,
        sink.clone(),
        &t.path().join("d1"),
        false,
    );
    assert_eq!(r.files_backed_up, 25);
    let big_chunks = r.pipeline.chunks.saturating_sub(20) / 5;
    assert!(big_chunks >= 1);
    assert_eq!(
        r.pipeline.blobs_emitted,
        big_chunks + 1,
        "each distinct chunk sealed once: {:?}",
        r.pipeline
    );
    assert_eq!(sink.blobs(), r.pipeline.blobs_emitted);
    assert_eq!(
        r.pipeline.chunks_deduped,
        r.pipeline.chunks - r.pipeline.blobs_emitted
    );
}

/// Creates a Lightroom-like SQLite catalog of about 6 MB.
fn make_catalog(path: &Path) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = DELETE;
         CREATE TABLE images (id INTEGER PRIMARY KEY, name TEXT, rating INTEGER, develop TEXT);",
    )
    .unwrap();
    let tx = db.unchecked_transaction().unwrap();
    for i in 0..12_000 {
        tx.execute(
            "INSERT INTO images (name, rating, develop) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                format!("IMG_{i:05}.CR3"),
                (i % 6) as i64,
                String::from_utf8(sidecar_text(400, i)).unwrap()
            ],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn sqlite_edit_in_one_page_reemits_about_one_chunk() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    fs::create_dir(&root).unwrap();
    let lrcat = root.join("Studio.lrcat");
    make_catalog(&lrcat);
    let size = fs::metadata(&lrcat).unwrap().len();
    assert!(size > 4 << 20);
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(MemorySink::new());
    let mut cat = Catalog::open_in_memory().unwrap();
    let first = backup(
        &mut cat,
        &root,
        &keys,
        sink.clone(),
        &t.path().join("d1"),
        true,
    );
    assert_eq!(first.files_backed_up, 1);
    // SQLite pages: 16 KiB chunks.
    assert_eq!(first.pipeline.chunks, size.div_ceil(16384));
    let before = sink.len();
    // Rate one photo: one row's page changes (plus the header page's change counter).
    let db = rusqlite::Connection::open(&lrcat).unwrap();
    db.execute("UPDATE images SET rating = 5 WHERE id = 7000", [])
        .unwrap();
    drop(db);
    let second = backup(
        &mut cat,
        &root,
        &keys,
        sink.clone(),
        &t.path().join("d2"),
        true,
    );
    assert_eq!(second.files_backed_up, 1);
    let new = sink.len() - before;
    assert!(
        (1..=2).contains(&new),
        "{new} new blobs for a one-row edit ({:?})",
        second.pipeline
    );
    assert!(
        second.pipeline.cipher_bytes_emitted < 3 * 16384,
        "{} new bytes",
        second.pipeline.cipher_bytes_emitted
    );
}

#[test]
fn catalog_is_updated_from_the_journal_and_unchanged_files_are_not_read_again() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    fs::create_dir(&root).unwrap();
    photo_tree(&root);
    let keys = OrgKeys::generate().unwrap();
    let sink = Arc::new(MemorySink::new());
    let mut cat = Catalog::open_in_memory().unwrap();
    let first = backup(
        &mut cat,
        &root,
        &keys,
        sink.clone(),
        &t.path().join("d1"),
        true,
    );
    let source = first.source_id.unwrap();
    let journal = first.delta.journal.clone().unwrap();
    assert_eq!(journal.entries, first.delta.entries);
    // What the sync client does after the server committed the job as seq 1.
    let mut n = 0;
    for batch in journal.batches(5).unwrap() {
        let batch = batch.unwrap();
        assert!(batch.len() <= 5);
        n += batch.len() as u64;
        cat.record_commit(source, 1, &batch).unwrap();
    }
    assert_eq!(n, first.delta.entries);
    assert_eq!(
        cat.count_files(source, Some(FileState::Pending)).unwrap(),
        0
    );
    assert_eq!(cat.queue_len().unwrap(), 0);
    let rec = cat
        .lookup(
            source,
            &RelPath::from_bytes(b"Smith Wedding/RAW/IMG_0001.CR3".to_vec()).unwrap(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, FileState::Committed);
    let data = fs::read(root.join("Smith Wedding/RAW/IMG_0001.CR3")).unwrap();
    assert_eq!(
        rec.content_hash,
        Some(ContentHash::of(&keys.chunk_id_key, &data).0)
    );
    let blobs = cat.blob_list(source, &rec.key).unwrap().unwrap();
    assert_eq!(blobs.iter().map(|b| b.len).sum::<u64>(), data.len() as u64);

    // Nothing changed: nothing is read, the delta is empty.
    let second = backup(
        &mut cat,
        &root,
        &keys,
        sink.clone(),
        &t.path().join("d2"),
        true,
    );
    assert_eq!(second.pipeline.bytes_read, 0);
    assert_eq!(second.delta.entries, 0);
    assert!(second.delta.parts.is_empty());

    // One edit, one deletion: only those are in the next delta.
    fs::write(
        root.join("Smith Wedding/RAW/IMG_0001.xmp"),
        sidecar_text(6100, 99),
    )
    .unwrap();
    fs::remove_file(root.join("Smith Wedding/notes.txt")).unwrap();
    let third = backup(
        &mut cat,
        &root,
        &keys,
        sink.clone(),
        &t.path().join("d3"),
        true,
    );
    assert_eq!(third.files_backed_up, 1);
    let blobs = read_blobs_from(&sink);
    let r = restore(&part_paths(&third), &blobs, &keys);
    assert_eq!(
        r.files.keys().cloned().collect::<Vec<_>>(),
        vec![b"Smith Wedding/RAW/IMG_0001.xmp".to_vec()]
    );
    assert_eq!(r.deleted, vec![b"Smith Wedding/notes.txt".to_vec()]);
    // The folder that lost a file is in it too (rewriting a file does not touch its folder).
    assert_eq!(r.dirs, vec![b"Smith Wedding".to_vec()]);

    // The glue for in-memory results agrees with the journal.
    let fr = FileResult {
        rel: RelPath::from_bytes(b"a".to_vec()).unwrap(),
        size: 3,
        mtime_ns: 1,
        ctime_ns: 2,
        inode: 3,
        mode: 0o100644,
        hard_link: None,
        content_hash: ContentHash([1; 32]),
        chunks: vec![ChunkRef {
            id: BlobId([2; 32]),
            len: 3,
        }],
        attempts: 1,
    };
    let ce = catalog_entries(std::slice::from_ref(&fr));
    assert!(matches!(
        &ce[0],
        keepsake_agent::catalog::CommitEntry::Version { key, blobs, ctime_ns: 2, inode: 3, .. }
            if key == b"a" && blobs.len() == 1 && blobs[0].len == 3
    ));
}

fn read_blobs_from(
    sink: &MemorySink,
) -> std::collections::HashMap<BlobId, (keepsake_common::framing::FrameHeader, Vec<u8>)> {
    sink.blobs()
        .into_iter()
        .map(|b| {
            (
                b.id,
                (
                    keepsake_common::framing::FrameHeader::for_blob(&b),
                    b.ciphertext,
                ),
            )
        })
        .collect()
}

fn test_mac_key() -> keepsake_common::mac::EntryMacKey {
    keepsake_common::mac::EntryMacKey::derive(&keepsake_common::ids::ChunkIdKey([3; 32]))
}

fn entry(rel: &[u8], kind: EntryKind, target: Option<&[u8]>) -> Entry {
    Entry {
        rel: RelPath::from_bytes(rel.to_vec()).unwrap(),
        kind,
        size: target.map(|t| t.len() as u64).unwrap_or(0),
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1_700_000_000_000_000_001,
        inode: 42,
        device: 1,
        nlink: 1,
        mode: if kind == EntryKind::Dir {
            0o40755
        } else {
            0o120777
        },
        symlink_target: target.map(|t| t.to_vec()),
    }
}

#[test]
fn delta_parts_are_split_and_each_is_a_valid_delta() {
    let t = tempfile::tempdir().unwrap();
    let limits = DeltaLimits {
        max_entries: 7,
        max_bytes: 4096,
    };
    let header = DeltaHeader::new("3f1c0a4e-0000-4000-8000-000000000001", Some(41));
    let mut b = DeltaBuilder::new(t.path(), header.clone(), limits, true, test_mac_key()).unwrap();
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for i in 0..100u32 {
        let name = format!("w/f{i:03}").into_bytes();
        match i % 5 {
            0 => b.add_scanned(&entry(&name, EntryKind::Dir, None)).unwrap(),
            1 => b
                .add_scanned(&entry(&name, EntryKind::Symlink, Some(b"t\xe9")))
                .unwrap(),
            2 => b
                .add_deletion(&RelPath::from_bytes(name.clone()).unwrap(), EntryKind::File)
                .unwrap(),
            _ => {
                // Files with many chunks make long lines; one is longer than a whole part.
                let n = if i == 53 { 60 } else { (i % 7) as usize };
                let chunks: Vec<ChunkRef> = (0..n)
                    .map(|k| ChunkRef {
                        id: BlobId([k as u8; 32]),
                        len: 1000,
                    })
                    .collect();
                b.add_file(&FileResult {
                    rel: RelPath::from_bytes(name.clone()).unwrap(),
                    size: 1000 * n as u64,
                    mtime_ns: 5,
                    ctime_ns: 6,
                    inode: i as u64,
                    mode: 0o100600,
                    hard_link: (i % 10 == 2).then_some((1, u64::from(i))),
                    content_hash: ContentHash([i as u8; 32]),
                    chunks,
                    attempts: 1,
                })
                .unwrap();
            }
        }
        expected.push(name);
    }
    // A name that cannot be sent is refused alone; the delta stays valid.
    let too_long = vec![b'x'; 17 * 1024];
    let err = b
        .add_deletion(&RelPath::from_bytes(too_long).unwrap(), EntryKind::File)
        .unwrap_err();
    assert!(err.is_entry_error());
    let out = b.finish().unwrap();
    assert_eq!(out.entries, 100);
    assert!(out.parts.len() >= 15, "{} parts", out.parts.len());
    let mut seen = Vec::new();
    let mut big_alone = false;
    for (i, p) in out.parts.iter().enumerate() {
        assert_eq!(p.index as usize, i);
        let bytes = fs::read(&p.path).unwrap();
        assert_eq!(bytes.len() as u64, p.bytes);
        assert!(p.entries >= 1 && p.entries <= 7);
        let mut r = DeltaReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header(), &header);
        let mut n = 0;
        while let Some(e) = r.next_entry().unwrap() {
            seen.push(keepsake_common::path::wire_path_bytes(e.path()));
            if let DeltaEntry::Upsert { chunks, .. } = &e {
                if chunks.len() == 60 {
                    big_alone = p.entries == 1;
                }
            }
            n += 1;
        }
        assert_eq!(n, p.entries);
        if p.bytes > 4096 {
            assert_eq!(
                p.entries, 1,
                "only a single oversized entry may exceed the limit"
            );
        }
    }
    assert!(big_alone, "the oversized entry got a part of its own");
    assert_eq!(seen, expected);
    // The journal has one record per entry, with ctime and inode.
    let journal = out.journal.unwrap();
    let all: Vec<_> = journal
        .batches(16)
        .unwrap()
        .flat_map(|b| b.unwrap())
        .collect();
    assert_eq!(all.len(), 100);
    match &all[3] {
        keepsake_agent::catalog::CommitEntry::Version {
            key,
            ctime_ns,
            inode,
            blobs,
            ..
        } => {
            assert_eq!(key, b"w/f003");
            assert_eq!((*ctime_ns, *inode, blobs.len()), (6, 3, 3));
        }
        other => panic!("{other:?}"),
    }
    // A folder's catalog key ends in '/'.
    match &all[0] {
        keepsake_agent::catalog::CommitEntry::Version { key, .. } => assert_eq!(key, b"w/f000/"),
        other => panic!("{other:?}"),
    }
    // An empty job has no part at all.
    let t2 = tempfile::tempdir().unwrap();
    let empty = DeltaBuilder::new(t2.path(), header, limits, false, test_mac_key())
        .unwrap()
        .finish()
        .unwrap();
    assert!(empty.parts.is_empty());
}

#[test]
fn pack_command_writes_a_restorable_folder() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    fs::create_dir(&root).unwrap();
    photo_tree(&root);
    write_raw(&root, b"Smith Wedding/.DS_Store", b"finder junk");
    let keys = OrgKeys::generate().unwrap();
    let keys_file = t.path().join("keys.json");
    fs::write(&keys_file, keys.to_secret_json().unwrap()).unwrap();
    let out_dir = t.path().join("out");
    let home = t.path().join("home");
    // Files written a moment ago wait for the racy window: still well under a few seconds.
    let mut out = Vec::new();
    let code = keepsake_agent::cli::run(
        [
            std::ffi::OsStr::new("keepsake"),
            "--home".as_ref(),
            home.as_os_str(),
            "pack".as_ref(),
            root.as_os_str(),
            "--out".as_ref(),
            out_dir.as_os_str(),
            "--keys".as_ref(),
            keys_file.as_os_str(),
            "--pack-size".as_ref(),
            "8M".as_ref(),
            "--part-entries".as_ref(),
            "4".as_ref(),
        ],
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Packed:"), "{text}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "keepsake-offline-pack");
    let mut parts: Vec<PathBuf> = manifest["delta_parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| out_dir.join(p["file"].as_str().unwrap()))
        .collect();
    parts.sort();
    assert!(parts.len() >= 4);
    let blobs = read_packs(&out_dir.join("packs"));
    let restored = restore(&parts, &blobs, &keys);
    let mut original = tree_files(&root);
    // The default rules leave out .DS_Store.
    original.remove(&b"Smith Wedding/.DS_Store"[..]);
    assert_eq!(restored.files, original);
    // A second pack into the same folder is refused.
    let mut out2 = Vec::new();
    let r = keepsake_agent::cli::run(
        [
            std::ffi::OsStr::new("keepsake"),
            "--home".as_ref(),
            home.as_os_str(),
            "pack".as_ref(),
            root.as_os_str(),
            "--out".as_ref(),
            out_dir.as_os_str(),
            "--keys".as_ref(),
            keys_file.as_os_str(),
        ],
        &mut out2,
    );
    assert!(r.is_err());
    // The public keys alone are enough to pack.
    let pub_file = t.path().join("public.json");
    fs::write(&pub_file, serde_json::to_vec(&keys.public()).unwrap()).unwrap();
    let mut out3 = Vec::new();
    let code = keepsake_agent::cli::run(
        [
            std::ffi::OsStr::new("keepsake"),
            "--home".as_ref(),
            home.as_os_str(),
            "pack".as_ref(),
            root.as_os_str(),
            "--out".as_ref(),
            t.path().join("out2").as_os_str(),
            "--keys".as_ref(),
            pub_file.as_os_str(),
            "--json".as_ref(),
        ],
        &mut out3,
    )
    .unwrap();
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out3).unwrap();
    assert_eq!(
        v["report"]["files_backed_up"].as_u64().unwrap(),
        original.len() as u64
    );
}
