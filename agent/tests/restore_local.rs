//! The whole restore against an in-memory recovery point (no server): every kind of entry and
//! every legal name lands inside the target as recorded, a rerun skips only what is provably
//! complete, wrong blob copies are replaced by good ones, and the validation replays the
//! placement to find every entry where the restore put it.
#![cfg(unix)]

mod restore_support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use restore_support::{bytes, Point, CHUNK, T0};

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn long_names() -> (String, String, Vec<u8>) {
    let ascii = format!("{}.txt", "x".repeat(251));
    let utf8 = format!("{}x", "é".repeat(127));
    let mut raw = b"Shoot/".to_vec();
    raw.extend(std::iter::repeat_n(0xe9u8, 250));
    raw.extend_from_slice(b".jpg\xff");
    assert_eq!(ascii.len(), 255);
    assert_eq!(utf8.len(), 255);
    assert_eq!(raw.len() - "Shoot/".len(), 255);
    (ascii, utf8, raw)
}

fn shoot() -> (Point, Vec<u8>, Vec<u8>) {
    let (ascii, utf8, raw) = long_names();
    let mut p = Point::new();
    let big = bytes(1, 5 * CHUNK + 123);
    // Sparse: data, 2 MiB of zeros, data.
    let mut sparse = bytes(2, 5000);
    sparse.resize(5000 + 2 * 1024 * 1024, 0);
    sparse.extend(bytes(3, 7000));
    p.dir("Shoot", 0o750);
    p.file("Shoot/a.txt", b"hello", 0o640);
    p.file("Shoot/big.CR3", &big, 0o644);
    p.file("Shoot/sparse.img", &sparse, 0o600);
    p.file("Shoot/empty", b"", 0o644);
    p.file("Shoot/suid", b"#!/bin/sh\n", 0o4755);
    p.dir("Shoot/sub", 0o700);
    p.file("Shoot/sub/b.txt", b"inner", 0o644);
    p.symlink("Shoot/link", "a.txt");
    p.symlink("Shoot/abs", "/nonexistent/elsewhere");
    p.fifo("Shoot/pipe", 0o620);
    p.linked("Shoot/h1", b"same inode", 7);
    p.linked("Shoot/h2", b"same inode", 7);
    p.linked("Shoot/sub/h3", b"same inode", 7);
    // Same group number, other content: not a link of the others.
    p.linked("Shoot/h4", b"other content", 7);
    p.file(&format!("Shoot/{ascii}"), b"long ascii", 0o644);
    p.file(&format!("Shoot/{utf8}"), b"long utf8", 0o644);
    p.raw_file(&raw, b"long raw");
    (p.sorted(), big, sparse)
}

#[test]
fn every_kind_and_every_legal_name_lands_as_recorded() {
    let (p, big, sparse) = shoot();
    let (ascii, utf8, raw) = long_names();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let r = p.restore(t, |_| {});
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.refused, 0);
    assert_eq!(r.files_restored, 13, "{r:?}");
    assert_eq!(r.hard_links, 2);
    assert_eq!(r.symlinks, 2);
    assert_eq!(r.fifos, 1);
    assert_eq!(r.dirs, 2);
    assert!(r.time_to_first_byte.is_some());
    assert!(r.copies_adopted > 0);

    let s = t.join("Shoot");
    assert_eq!(fs::read(s.join("a.txt")).unwrap(), b"hello");
    assert_eq!(fs::read(s.join("big.CR3")).unwrap(), big);
    assert_eq!(fs::read(s.join("sparse.img")).unwrap(), sparse);
    let sm = fs::metadata(s.join("sparse.img")).unwrap();
    assert!(
        sm.blocks() * 512 < sm.len() / 2,
        "zero blocks left as holes"
    );
    assert_eq!(fs::read(s.join("empty")).unwrap(), b"");
    assert_eq!(fs::read(s.join("sub/b.txt")).unwrap(), b"inner");
    assert_eq!(fs::read(s.join(&ascii)).unwrap(), b"long ascii");
    assert_eq!(fs::read(s.join(&utf8)).unwrap(), b"long utf8");
    use std::os::unix::ffi::OsStrExt;
    let raw_path = t.join(std::ffi::OsStr::from_bytes(&raw));
    assert_eq!(fs::read(raw_path).unwrap(), b"long raw");

    // Modes (masked: no set-user-ID without --keep-special-bits) and times.
    let mode = |rel: &str| {
        fs::symlink_metadata(t.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("Shoot"), 0o750);
    assert_eq!(mode("Shoot/sub"), 0o700);
    assert_eq!(mode("Shoot/a.txt"), 0o640);
    assert_eq!(mode("Shoot/suid"), 0o755);
    assert_eq!(mode("Shoot/pipe"), 0o620);
    for rel in [
        "Shoot",
        "Shoot/sub",
        "Shoot/a.txt",
        "Shoot/pipe",
        "Shoot/link",
    ] {
        let m = fs::symlink_metadata(t.join(rel)).unwrap();
        assert_eq!(mtime_ns(&m), T0, "{rel}");
    }

    // Kinds.
    assert!(fs::symlink_metadata(s.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(fs::read_link(s.join("link")).unwrap(), Path::new("a.txt"));
    assert_eq!(
        fs::read_link(s.join("abs")).unwrap(),
        Path::new("/nonexistent/elsewhere")
    );
    let ino = |rel: &str| fs::metadata(s.join(rel)).unwrap().ino();
    assert_eq!(ino("h1"), ino("h2"));
    assert_eq!(ino("h1"), ino("sub/h3"));
    assert_ne!(ino("h1"), ino("h4"));
    assert_eq!(fs::read(s.join("h4")).unwrap(), b"other content");

    // Nothing else: no temporary file left, nothing outside.
    let names: Vec<String> = fs::read_dir(&s)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".ks")), "{names:?}");
    assert_eq!(fs::read_dir(t).unwrap().count(), 1);

    // The validation finds everything.
    let v = p.validate(t, false);
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.extra, 0, "{v:?}");

    // A rerun writes nothing: every file is found complete by its content, links and pipes
    // are accepted.
    let again = p.restore(t, |_| {});
    assert!(again.failures.is_empty(), "{:?}", again.failures);
    assert_eq!(again.files_restored, 0, "{again:?}");
    assert_eq!(again.files_skipped, 13);
    assert_eq!(again.bytes, 0);
    assert_eq!(again.symlinks + again.fifos + again.hard_links, 0);
    assert_eq!(ino("h1"), ino("sub/h3"));
}

#[test]
fn special_bits_are_kept_only_when_asked_and_root() {
    let mut p = Point::new();
    p.file("suid", b"x", 0o4755);
    p.dir("shared", 0o3777);
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let r = p.restore(dir.path(), |o| o.keep_special_bits = true);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let mode = |rel: &str| {
        fs::metadata(dir.path().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        assert_eq!(mode("suid"), 0o4755);
        assert_eq!(mode("shared"), 0o3777);
    } else {
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("shared"), 0o777);
    }
}

#[test]
fn unauthenticated_entries_are_refused_and_the_rest_restored() {
    let mut p = Point::new();
    p.file("good.txt", b"good", 0o644);
    // No MAC at all.
    let i = p.file("nomac.txt", b"x", 0o644);
    p.entries[i].mac = None;
    // The server swapped a file's content (and chunk list) for another's.
    let i = p.file("swapped.txt", b"the real content", 0o644);
    let other = p.file_entry("other", b"malicious content", 0o644);
    p.entries[i].content_hash = other.content_hash;
    p.entries[i].chunks = other.chunks;
    p.entries[i].size = other.size;
    // A symlink retargeted, a folder given a wider mode, a pipe turned into a file.
    let i = p.symlink("link", "good.txt");
    p.entries[i].symlink_target = Some("/etc".into());
    let i = p.dir("private", 0o700);
    p.entries[i].mode = Some(0o040777);
    let i = p.fifo("pipe", 0o600);
    p.entries[i].kind = keepsake_common::api::FileKind::File;
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let r = p.restore(dir.path(), |_| {});
    assert_eq!(r.refused, 5, "{:?}", r.failures);
    assert_eq!(r.failures.len(), 5);
    for f in &r.failures {
        assert!(
            f.error
                .starts_with(&format!("metadata not authenticated: {} refused", f.path)),
            "{f:?}"
        );
    }
    assert_eq!(fs::read(dir.path().join("good.txt")).unwrap(), b"good");
    for gone in ["nomac.txt", "swapped.txt", "link", "private", "pipe"] {
        assert!(
            fs::symlink_metadata(dir.path().join(gone)).is_err(),
            "{gone} must not be written"
        );
    }
    let v = p.validate(dir.path(), false);
    assert_eq!(v.missing, 5, "{v:?}");
}

#[test]
fn a_wrong_copy_is_replaced_by_another_and_good_copies_are_adopted() {
    let mut p = Point::new();
    let data = bytes(9, 3 * CHUNK + 10);
    let i = p.file("photo.CR3", &data, 0o644);
    let bad_blob = p.entries[i].chunks[1].id;
    p.wrong_copy_first(bad_blob, 100);
    let wrong_hash = p.copies[&bad_blob][0].0.cipher_hash;
    // Only wrong copies for this one.
    let j = p.file("lost.CR3", &bytes(10, 2 * CHUNK), 0o644);
    let lost_blob = p.entries[j].chunks[0].id;
    p.copies.get_mut(&lost_blob).unwrap().clear();
    p.wrong_copy_first(lost_blob, 101);
    p.wrong_copy_first(lost_blob, 102);
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let r = p.restore(dir.path(), |o| o.workers = 1);
    assert_eq!(fs::read(dir.path().join("photo.CR3")).unwrap(), data);
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert_eq!(r.failures[0].path, "lost.CR3");
    assert_eq!(
        r.failures[0].error,
        format!("no intact copy of blob {lost_blob}")
    );
    assert!(!dir.path().join("lost.CR3").exists());
    assert_eq!(r.copies_rejected, 3);
    assert!(p.avoiding_reads.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    // Adopted: every copy that opened (4 blobs of the photo), never a wrong one.
    let adopted = p.adopted_copies();
    assert!(adopted.iter().all(|c| c.cipher_hash != wrong_hash));
    assert!(adopted.iter().any(|c| c.id == bad_blob));
    for c in &adopted {
        let good = &p.copies[&c.id];
        assert!(good.iter().any(|(h, _)| h.cipher_hash == c.cipher_hash));
    }
    assert_eq!(r.copies_adopted, adopted.len() as u64);
}

#[test]
fn a_rerun_never_trusts_size_and_time_alone() {
    let mut p = Point::new();
    p.dir("d", 0o755);
    p.file("d/a.txt", b"original!", 0o644);
    p.file("d/b.txt", b"untouched", 0o640);
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    p.restore(t, |_| {});
    // Same size, same time, other bytes: not complete.
    let a = t.join("d/a.txt");
    fs::write(&a, b"tampered!").unwrap();
    filetime::set_file_mtime(
        &a,
        filetime::FileTime::from_unix_time(T0 / 1_000_000_000, (T0 % 1_000_000_000) as u32),
    )
    .unwrap();
    // Complete, but mode and time changed: corrected, not rewritten.
    let b = t.join("d/b.txt");
    fs::set_permissions(&b, fs::Permissions::from_mode(0o600)).unwrap();
    filetime::set_file_mtime(&b, filetime::FileTime::from_unix_time(5, 0)).unwrap();
    let ino_b = fs::metadata(&b).unwrap().ino();
    // A temporary file of an interrupted run.
    fs::write(t.join("d/.ksabcdefghij.part"), b"half").unwrap();
    let r = p.restore(t, |_| {});
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.files_restored, 1);
    assert_eq!(r.files_beside, 1);
    assert_eq!(r.files_skipped, 1);
    assert_eq!(r.leftovers_removed, 1);
    assert!(!t.join("d/.ksabcdefghij.part").exists());
    assert_eq!(fs::read(&a).unwrap(), b"tampered!", "kept: no --overwrite");
    assert_eq!(fs::read(t.join("d/a.txt.restored")).unwrap(), b"original!");
    let mb = fs::metadata(&b).unwrap();
    assert_eq!(mb.ino(), ino_b, "not rewritten");
    assert_eq!(mb.permissions().mode() & 0o777, 0o640);
    assert_eq!(mtime_ns(&mb), T0);
    assert!(p.validate(t, false).passed());
    // With overwrite, the file itself is replaced.
    let r = p.restore(t, |o| o.overwrite = true);
    assert_eq!(r.files_restored, 1, "{r:?}");
    assert_eq!(fs::read(&a).unwrap(), b"original!");
}
