//! Tests of the target layer (no server needed).
//!
//! Tests only; they write into temporary folders that are removed when they end.

use super::*;
use std::fs;

fn open(dir: &Path) -> Target {
    Target::open(dir, false).unwrap()
}

#[test]
fn temp_names_are_short_and_recognised() {
    let a = temp_name();
    let b = temp_name();
    assert_ne!(a, b);
    let bytes = os_bytes(&a).into_owned();
    assert_eq!(bytes.len(), 18, "{a:?}");
    assert!(is_temp_name(&bytes));
    for other in [
        &b".ksABCDEFGHIJ.part"[..],
        b".ksabcdefghij.parts",
        b"ksabcdefghijk.part",
        b".ksabcdefghi.part",
        b"IMG_0001.CR3",
        b".ksabc-efghij.part",
    ] {
        assert!(!is_temp_name(other), "{}", String::from_utf8_lossy(other));
    }
}

#[test]
fn folders_are_made_and_reached_component_by_component() {
    let dir = tempfile::tempdir().unwrap();
    let t = open(dir.path());
    let mut created = 0;
    let d = t
        .folder(
            Path::new("a/b/c"),
            Some(IMPLICIT_DIR_MODE),
            Path::new("a/b/c/x"),
            &mut created,
        )
        .unwrap();
    assert_eq!(created, 3);
    assert!(dir.path().join("a/b/c").is_dir());
    let f = d.create_new(OsStr::new("x")).unwrap();
    drop(f);
    assert!(dir.path().join("a/b/c/x").is_file());
    // Again: nothing new.
    let mut again = 0;
    t.folder(
        Path::new("a/b/c"),
        Some(0o777),
        Path::new("a/b/c"),
        &mut again,
    )
    .unwrap();
    assert_eq!(again, 0);
    // Without `create`, a missing folder is "not found", and nothing is made.
    let e = t
        .folder(
            Path::new("a/nope/deeper"),
            None,
            Path::new("a/nope/deeper"),
            &mut again,
        )
        .err()
        .unwrap();
    assert!(e.is_not_found(), "{e}");
    assert!(!dir.path().join("a/nope").exists());
    // Not a plain relative path.
    for bad in ["../x", "a/../../x", "/etc"] {
        let r = t.folder(Path::new(bad), Some(0o777), Path::new(bad), &mut again);
        assert!(r.is_err(), "{bad}");
    }
}

#[cfg(unix)]
#[test]
fn a_symlinked_or_non_folder_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
    fs::create_dir(dir.path().join("ok")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("ok/deep")).unwrap();
    fs::write(dir.path().join("file"), b"x").unwrap();
    let t = open(dir.path());
    let mut n = 0;
    for (rel, component) in [("evil/sub", "evil"), ("ok/deep/sub", "ok/deep")] {
        let e = t
            .folder(Path::new(rel), Some(0o777), Path::new("entry.txt"), &mut n)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("refusing entry.txt: {component} is a symlink")
        );
    }
    let e = t
        .folder(
            Path::new("file/sub"),
            Some(0o777),
            Path::new("file/sub/x"),
            &mut n,
        )
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "refusing file/sub/x: file is not a folder");
    assert_eq!(n, 0);
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    // A cursor refuses the same way, and never writes through the link.
    let mut cur = Cursor::new(&t);
    assert!(cur
        .folder(Path::new("evil"), true, Path::new("evil/payload"))
        .is_err());
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[cfg(unix)]
#[test]
fn the_root_may_be_reached_through_a_users_symlink() {
    let real = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let via = links.path().join("restore-here");
    std::os::unix::fs::symlink(real.path(), &via).unwrap();
    let t = Target::open(&via, true).unwrap();
    let mut n = 0;
    t.folder(Path::new("a"), Some(0o777), Path::new("a"), &mut n)
        .unwrap();
    assert!(real.path().join("a").is_dir());
}

#[test]
fn leftovers_are_removed_once_per_folder_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    let leftover = dir.path().join("sub/.ksabcdefghij.part");
    let keep_name = dir.path().join("sub/.ksabcdefghij.partial");
    let keep_folder = dir.path().join("sub/.ksklmnopqrst.part");
    fs::write(&leftover, b"half a file").unwrap();
    fs::write(&keep_name, b"a user's file").unwrap();
    fs::create_dir(&keep_folder).unwrap();
    let t = open(dir.path());
    {
        let mut cur = Cursor::new(&t);
        let d = cur
            .folder(Path::new("sub"), false, Path::new("sub/x"))
            .unwrap();
        assert!(!leftover.exists(), "a leftover temporary file is removed");
        assert!(
            keep_name.exists() && keep_folder.is_dir(),
            "other names stay"
        );
        // Files this run makes afterwards, even with a temporary-looking name, are not touched
        // by a later visit (each folder is cleaned once per run).
        let (name, f) = create_temp(d).unwrap();
        drop(f);
        cur.touched();
        cur.folder(Path::new(""), false, Path::new("y")).unwrap();
        let mut other = Cursor::new(&t);
        other
            .folder(Path::new("sub"), false, Path::new("sub/z"))
            .unwrap();
        assert!(dir.path().join("sub").join(&name).exists());
    }
    assert_eq!(t.temps_removed(), 1);
}

#[cfg(unix)]
#[test]
fn temporary_files_are_private_and_exclusive() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let t = open(dir.path());
    let (name, f) = create_temp(t.root()).unwrap();
    drop(f);
    let m = fs::metadata(dir.path().join(&name)).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    // O_EXCL: an existing name is never reused, a symlink there never followed.
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::os::unix::fs::symlink(&victim, dir.path().join("trap")).unwrap();
    assert!(t.root().create_new(OsStr::new("trap")).is_err());
    assert!(!victim.exists());
    assert!(t.root().create_new(&name).is_err());
}

#[test]
fn case_probe_on_this_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let t = open(dir.path());
    // Empty folder: the probe makes and removes a temporary file.
    let empty = t.probe_case_insensitive().unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left");
    // With a name present, the answer is the same.
    fs::write(dir.path().join("Photo.JPG"), b"x").unwrap();
    assert_eq!(t.probe_case_insensitive().unwrap(), empty);
    // Both casings present as different files: certainly case-sensitive.
    if !empty {
        fs::write(dir.path().join("pHOTO.jpg"), b"y").unwrap();
        assert!(!t.probe_case_insensitive().unwrap());
    }
    #[cfg(target_os = "linux")]
    assert!(
        !empty,
        "the usual Linux test file systems are case-sensitive"
    );
}

#[cfg(unix)]
#[test]
fn cursor_keeps_the_folder_it_opened() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("a")).unwrap();
    let t = open(dir.path());
    let mut cur = Cursor::new(&t);
    let ino1 = cur
        .folder(Path::new("a"), false, Path::new("a/1"))
        .unwrap()
        .stat(OsStr::new("."))
        .unwrap()
        .unwrap()
        .ino;
    // The folder is swapped for another one behind the cursor's back: the cursor keeps
    // working in the folder it holds (no second walk from the root for the same folder).
    fs::rename(dir.path().join("a"), dir.path().join("old")).unwrap();
    fs::create_dir(dir.path().join("a")).unwrap();
    let ino2 = cur
        .folder(Path::new("a"), false, Path::new("a/2"))
        .unwrap()
        .stat(OsStr::new("."))
        .unwrap()
        .unwrap()
        .ino;
    assert_eq!(ino1, ino2);
    // Another folder, then back: walked again, now the new one.
    cur.folder(Path::new(""), false, Path::new("x")).unwrap();
    let ino3 = cur
        .folder(Path::new("a"), false, Path::new("a/3"))
        .unwrap()
        .stat(OsStr::new("."))
        .unwrap()
        .unwrap()
        .ino;
    assert_ne!(ino1, ino3);
}
