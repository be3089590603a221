//! The scanner on real trees: kinds and metadata, order, non-UTF-8 names, symlinks (not
//! followed, loops, targets outside the root), special files, unreadable files and folders,
//! mount points, pruning.
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{matcher, mkdir, scan_all, write};
use keepsake_agent::detect::scan::{EntryKind, IssueKind, ScanEvent, ScanOptions, SkipReason};
use keepsake_agent::exclude::ExcludeConfig;

fn no_defaults() -> ExcludeConfig {
    ExcludeConfig {
        use_defaults: false,
        ..ExcludeConfig::default()
    }
}

fn entries(events: &[ScanEvent]) -> BTreeMap<Vec<u8>, keepsake_agent::detect::scan::Entry> {
    events
        .iter()
        .filter_map(|e| match e {
            ScanEvent::Entry(e) => Some((e.rel.as_bytes().to_vec(), e.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn records_kinds_and_metadata() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let f = write(root, "Smith/RAW/IMG_0001.CR3", &[7u8; 1234]);
    mkdir(root, "Smith/Empty");
    symlink("RAW/IMG_0001.CR3", root.join("Smith/latest")).unwrap();
    let (events, stats) = scan_all(root, matcher(root, no_defaults()), ScanOptions::default());
    let e = entries(&events);
    let file = &e[&b"Smith/RAW/IMG_0001.CR3"[..]];
    let md = fs::symlink_metadata(&f).unwrap();
    assert_eq!(file.kind, EntryKind::File);
    assert_eq!(file.size, 1234);
    assert_eq!(file.inode, md.ino());
    assert_eq!(file.device, md.dev());
    assert_eq!(file.mode, md.mode());
    assert_eq!(file.mtime_ns, md.mtime() * 1_000_000_000 + md.mtime_nsec());
    assert_eq!(file.ctime_ns, md.ctime() * 1_000_000_000 + md.ctime_nsec());
    assert_eq!(e[&b"Smith/Empty"[..]].kind, EntryKind::Dir);
    let link = &e[&b"Smith/latest"[..]];
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(
        link.symlink_target.as_deref(),
        Some(&b"RAW/IMG_0001.CR3"[..])
    );
    assert_eq!(
        (stats.files, stats.dirs, stats.symlinks, stats.bytes),
        (1, 3, 1, 1234)
    );
}

#[test]
fn keys_come_in_strictly_increasing_byte_order() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    // Names chosen so that naive depth-first order differs from byte order of full paths.
    for f in [
        "a.txt",
        "a/x",
        "a-b/y",
        "a0",
        "a/b.c/z",
        "a/b/z",
        "A",
        "b",
        "a/b-/q",
        "\u{e9}t\u{e9}/f",
        "z z/f",
    ] {
        write(root, f, b"1");
    }
    write(root, &format!("{}/x", "a.d"), b"1");
    let (events, _) = scan_all(root, matcher(root, no_defaults()), ScanOptions::default());
    let keys: Vec<Vec<u8>> = events
        .iter()
        .filter_map(|e| match e {
            ScanEvent::Entry(e) => Some(e.key()),
            _ => None,
        })
        .collect();
    assert!(keys.len() >= 17);
    for w in keys.windows(2) {
        assert!(
            w[0] < w[1],
            "{} before {}",
            String::from_utf8_lossy(&w[0]),
            String::from_utf8_lossy(&w[1])
        );
    }
}

#[test]
fn non_utf8_names_are_kept_as_raw_bytes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let dir = root.join(std::ffi::OsStr::from_bytes(b"Caf\xe9"));
    fs::create_dir(&dir).unwrap();
    fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"\xff\xfe.CR3")),
        b"raw",
    )
    .unwrap();
    let (events, stats) = scan_all(root, matcher(root, no_defaults()), ScanOptions::default());
    let e = entries(&events);
    let f = &e[&b"Caf\xe9/\xff\xfe.CR3"[..]];
    assert_eq!(f.size, 3);
    assert!(!f.rel.is_utf8());
    assert!(f.rel.display().contains('\u{fffd}'));
    assert_eq!(
        f.rel.under(root),
        dir.join(std::ffi::OsStr::from_bytes(b"\xff\xfe.CR3"))
    );
    assert_eq!(stats.issues, 0);
}

#[test]
fn symlinks_are_recorded_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = t.path();
    write(outside.path(), "secret/s.txt", b"outside");
    write(root, "real/r.txt", b"r");
    symlink(outside.path(), root.join("to-outside")).unwrap();
    symlink(".", root.join("self-loop")).unwrap();
    symlink("loop-b", root.join("loop-a")).unwrap();
    symlink("loop-a", root.join("loop-b")).unwrap();
    symlink("..", root.join("real/up")).unwrap();
    symlink("does-not-exist", root.join("dangling")).unwrap();
    let (events, stats) = scan_all(root, matcher(root, no_defaults()), ScanOptions::default());
    let e = entries(&events);
    let keys: Vec<String> = e
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        keys,
        vec![
            "dangling",
            "loop-a",
            "loop-b",
            "real",
            "real/r.txt",
            "real/up",
            "self-loop",
            "to-outside"
        ]
    );
    assert_eq!(
        e[&b"to-outside"[..]].symlink_target.as_deref(),
        Some(outside.path().as_os_str().as_bytes())
    );
    assert_eq!(
        e[&b"loop-a"[..]].symlink_target.as_deref(),
        Some(&b"loop-b"[..])
    );
    assert_eq!(e[&b"self-loop"[..]].kind, EntryKind::Symlink);
    assert_eq!(stats.symlinks, 6);
    assert_eq!(stats.issues, 0, "{events:?}");
}

#[test]
fn following_symlinks_reports_loops_without_hanging() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "d/f.txt", b"f");
    symlink("..", root.join("d/up")).unwrap();
    let opts = ScanOptions {
        follow_symlinks: true,
        ..ScanOptions::default()
    };
    let (events, stats) = scan_all(root, matcher(root, no_defaults()), opts);
    assert!(stats.issues >= 1);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ScanEvent::Issue(i) if i.message.contains("loop"))),
        "{events:?}"
    );
    assert!(entries(&events).contains_key(&b"d/f.txt"[..]));
}

#[test]
fn pipes_are_recorded_sockets_skipped_and_neither_opened() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "a.txt", b"a");
    let fifo = root.join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    // Probing is on: a scanner that opened the fifo would block here forever.
    let opts = ScanOptions {
        probe_readable: true,
        ..ScanOptions::default()
    };
    let (events, stats) = scan_all(root, matcher(root, no_defaults()), opts);
    let skipped: Vec<(String, SkipReason, &str)> = events
        .iter()
        .filter_map(|e| match e {
            ScanEvent::Skipped(s) => Some((s.rel.to_string(), s.reason, s.detail)),
            _ => None,
        })
        .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, "sock");
    assert_eq!(skipped[0].1, SkipReason::Socket);
    assert!(
        skipped[0].2.contains("socket"),
        "a reason in words: {skipped:?}"
    );
    assert_eq!(stats.skipped, 1);
    assert_eq!(stats.fifos, 1);
    assert_eq!(stats.issues, 0);
    // The pipe is an entry of its own kind, with its mode.
    assert_eq!(common::entry_paths(&events), vec!["a.txt", "pipe"]);
    let pipe = events
        .iter()
        .find_map(|e| match e {
            ScanEvent::Entry(e) if e.rel.to_string() == "pipe" => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(pipe.kind, keepsake_agent::detect::scan::EntryKind::Fifo);
    assert_eq!(pipe.mode & 0o170000, 0o010000);
}

/// An unreadable file and an unreadable folder are reported with the OS error and the scan
/// goes on. As root (where mode bits do not deny reads) the scan runs with an unprivileged
/// file-system uid on this thread; the test first proves the denial is real.
#[test]
fn unreadable_file_and_folder_are_reported_not_fatal() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    common::open_up(root);
    write(root, "ok/a.jpg", b"a");
    let locked = write(root, "ok/locked.CR3", b"secret");
    write(root, "private/inside.jpg", b"i");
    write(root, "zz/after.jpg", b"z");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o000)).unwrap();
    let m = matcher(root, no_defaults());
    let opts = ScanOptions {
        probe_readable: true,
        ..ScanOptions::default()
    };
    let (denied, (events, stats)) = common::unprivileged(|| {
        let denied = fs::read(&locked).is_err() && fs::read_dir(root.join("private")).is_err();
        (denied, scan_all(root, m, opts))
    });
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        denied,
        "could not make a file unreadable for the scan (root={})",
        common::is_root()
    );
    let issues: Vec<(String, IssueKind, Option<i32>)> = events
        .iter()
        .filter_map(|e| match e {
            ScanEvent::Issue(i) => Some((i.rel.to_string(), i.kind, i.os_error)),
            _ => None,
        })
        .collect();
    assert_eq!(
        issues,
        vec![
            (
                "ok/locked.CR3".to_string(),
                IssueKind::Unreadable,
                Some(libc::EACCES)
            ),
            (
                "private".to_string(),
                IssueKind::ReadDir,
                Some(libc::EACCES)
            ),
        ]
    );
    assert_eq!(stats.issues, 2);
    let paths = common::entry_paths(&events);
    assert!(
        paths.contains(&"zz/after.jpg".to_string()),
        "the scan went on: {paths:?}"
    );
    assert!(
        paths.contains(&"ok/locked.CR3".to_string()),
        "the file is still recorded"
    );
    assert!(paths.contains(&"private/".to_string()));
}

#[cfg(target_os = "linux")]
#[test]
fn other_file_systems_are_not_entered_unless_configured() {
    // /dev/shm is a separate tmpfs on Linux machines and containers alike.
    let dev = fs::metadata("/dev").unwrap().dev();
    let shm = match fs::metadata("/dev/shm") {
        Ok(m) => m.dev(),
        Err(e) => panic!("this test needs /dev/shm: {e}"),
    };
    assert_ne!(
        dev, shm,
        "expected /dev/shm to be a mount point on this machine"
    );
    let root = Path::new("/dev");
    let (events, stats) = scan_all(root, matcher(root, no_defaults()), ScanOptions::default());
    assert!(events.iter().any(|e| matches!(e, ScanEvent::Skipped(s) if s.rel.to_string() == "shm" && s.reason == SkipReason::MountPoint)));
    assert!(!common::entry_paths(&events)
        .iter()
        .any(|p| p.starts_with("shm/")));
    // Devices are skipped, never read.
    assert!(events.iter().any(|e| matches!(e, ScanEvent::Skipped(s) if s.rel.to_string() == "null" && s.reason == SkipReason::CharDevice)));
    assert!(stats.skipped >= 2);
    let opts = ScanOptions {
        cross_filesystems: true,
        ..ScanOptions::default()
    };
    let (events, _) = scan_all(root, matcher(root, no_defaults()), opts);
    assert!(common::entry_paths(&events).contains(&"shm/".to_string()));
}

#[test]
fn excluded_folders_are_pruned_not_walked() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    for i in 0..50 {
        write(
            root,
            &format!("Lightroom/Cat Previews.lrdata/{:x}/{i}.lrprev", i % 16),
            b"p",
        );
    }
    write(root, "Lightroom/Cat.lrcat", b"catalog");
    // An unreadable folder inside the excluded one would be an error if it were walked.
    let hidden = mkdir(root, "Lightroom/Cat Previews.lrdata/locked");
    fs::set_permissions(&hidden, fs::Permissions::from_mode(0o000)).unwrap();
    let (events, stats) = common::unprivileged(|| {
        scan_all(
            root,
            matcher(root, ExcludeConfig::default()),
            ScanOptions::default(),
        )
    });
    fs::set_permissions(&hidden, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        common::entry_paths(&events),
        vec!["Lightroom/", "Lightroom/Cat.lrcat"]
    );
    assert_eq!(stats.excluded, 1);
    assert_eq!(stats.excluded_by_rule["default: *.lrdata/"].count, 1);
    assert_eq!(stats.issues, 0);
}

#[test]
fn resume_skips_what_was_done() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    for f in ["a/1", "a/2", "b/c/1", "b/c/2", "b/d", "e"] {
        write(root, f, b"x");
    }
    let opts = ScanOptions {
        resume_after: Some(b"b/c/1".to_vec()),
        ..ScanOptions::default()
    };
    let (events, _) = scan_all(root, matcher(root, no_defaults()), opts);
    assert_eq!(common::entry_paths(&events), vec!["b/c/2", "b/d", "e"]);
    let opts = ScanOptions {
        resume_after: Some(b"b/".to_vec()),
        ..ScanOptions::default()
    };
    let (events, _) = scan_all(root, matcher(root, no_defaults()), opts);
    assert_eq!(
        common::entry_paths(&events),
        vec!["b/c/", "b/c/1", "b/c/2", "b/d", "e"]
    );
}

#[test]
fn root_must_be_a_folder() {
    let t = tempfile::tempdir().unwrap();
    let f = write(t.path(), "file", b"x");
    let m = matcher(t.path(), no_defaults());
    assert!(
        keepsake_agent::detect::scan::Scanner::new(&f, m.clone(), ScanOptions::default()).is_err()
    );
    assert!(keepsake_agent::detect::scan::Scanner::new(
        &t.path().join("missing"),
        m,
        ScanOptions::default()
    )
    .is_err());
}
