//! What a restore does with what is already in the target, and with what a recovery point
//! could hold to lead it astray: symlinks never lead outside, existing entries are kept unless
//! asked, names that differ only by case never overwrite each other, derived names fit.
#![cfg(unix)]

mod restore_support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use restore_support::Point;

fn empty(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().count() == 0
}

#[test]
fn symlinks_in_the_target_or_the_point_never_lead_outside() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    // The target already holds a link to elsewhere, at a folder's name and deeper.
    std::os::unix::fs::symlink(outside.path(), t.join("evil")).unwrap();
    fs::create_dir(t.join("ok")).unwrap();
    std::os::unix::fs::symlink(outside.path(), t.join("ok/deep")).unwrap();
    let mut p = Point::new();
    p.dir("evil", 0o755);
    p.file("evil/payload.txt", b"x", 0o644);
    p.file("ok/deep/payload.txt", b"x", 0o644);
    p.fifo("evil/pipe", 0o644);
    // The point itself: a link to outside, then a file "through" it. Links are made last, so
    // the file makes a real folder and the link is refused.
    p.symlink("door", &outside.path().to_string_lossy());
    p.file("door/x.txt", b"x", 0o644);
    p.symlink("ok/deep/inner-link", "/etc");
    let p = p.sorted();
    let r = p.restore(t, |o| o.overwrite = true);
    assert!(empty(outside.path()), "nothing written outside");
    let errors: Vec<String> = r
        .failures
        .iter()
        .map(|f| format!("{}: {}", f.path, f.error))
        .collect();
    let has = |s: &str| errors.iter().any(|e| e.contains(s));
    assert!(has("evil: refusing evil: it is a symlink"), "{errors:?}");
    assert!(
        has("evil/payload.txt: refusing evil/payload.txt: evil is a symlink"),
        "{errors:?}"
    );
    assert!(
        has("ok/deep/payload.txt: refusing ok/deep/payload.txt: ok/deep is a symlink"),
        "{errors:?}"
    );
    assert!(has("evil/pipe: refusing"), "{errors:?}");
    assert!(has("ok/deep/inner-link: refusing"), "{errors:?}");
    assert!(has("door: door is a folder"), "{errors:?}");
    assert_eq!(fs::read(t.join("door/x.txt")).unwrap(), b"x");
    assert!(fs::symlink_metadata(t.join("door")).unwrap().is_dir());
    // The links in the target are untouched.
    assert!(fs::symlink_metadata(t.join("evil"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Validation never follows them either.
    let v = p.validate(t, false);
    assert!(!v.passed());
    assert!(empty(outside.path()));
}

#[test]
fn validation_refuses_a_symlinked_parent() {
    let mut p = Point::new();
    p.dir("a", 0o755);
    p.file("a/f.txt", b"content", 0o644);
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    p.restore(t, |_| {});
    assert!(p.validate(t, false).passed());
    // Same content, reached through a link: not what the restore made.
    fs::rename(t.join("a"), t.join("real")).unwrap();
    std::os::unix::fs::symlink(t.join("real"), t.join("a")).unwrap();
    let v = p.validate(t, false);
    assert!(!v.passed(), "{v:?}");
    assert!(v.mismatches >= 1, "{v:?}");
    let text = serde_json::to_string(&v.details).unwrap();
    assert!(text.contains("a is a symlink"), "{text}");
}

#[test]
fn existing_entries_are_kept_unless_overwrite_and_folders_always() {
    let long = format!("{}.jpg", "L".repeat(251));
    let mut p = Point::new();
    p.file("a.txt", b"restored", 0o644);
    p.file("b", b"file where a folder is", 0o644);
    p.fifo("pipe", 0o644);
    p.fifo("pipe2", 0o600);
    p.symlink("ln", "right");
    p.file(&long, b"long restored", 0o644);
    p.linked("h1", b"linked", 1);
    p.linked("h2", b"linked", 1);
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    fs::write(t.join("a.txt"), b"local edit").unwrap();
    fs::create_dir(t.join("b")).unwrap();
    fs::write(t.join("b/inside"), b"keep").unwrap();
    fs::write(t.join("pipe"), b"a regular file").unwrap();
    nix_mkfifo(&t.join("pipe2"));
    std::os::unix::fs::symlink("wrong", t.join("ln")).unwrap();
    fs::write(t.join(&long), b"local long").unwrap();
    fs::write(t.join("h1"), b"local h1").unwrap();

    let r = p.restore(t, |_| {});
    let errors: Vec<String> = r.failures.iter().map(|f| f.error.clone()).collect();
    assert_eq!(
        errors,
        vec!["ln exists with another target (use --overwrite)"]
    );
    assert_eq!(fs::read(t.join("a.txt")).unwrap(), b"local edit");
    assert_eq!(fs::read(t.join("a.txt.restored")).unwrap(), b"restored");
    assert_eq!(fs::read(t.join("b/inside")).unwrap(), b"keep");
    assert_eq!(
        fs::read(t.join("b.restored")).unwrap(),
        b"file where a folder is"
    );
    assert_eq!(fs::read(t.join("pipe")).unwrap(), b"a regular file");
    assert!(fs::symlink_metadata(t.join("pipe.restored"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(
        !t.join("pipe2.restored").exists(),
        "an existing pipe is accepted"
    );
    // A 255-byte name's beside copy still fits, and the validation finds it there.
    let beside: Vec<String> = fs::read_dir(t)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("LLLL") && n != &long)
        .collect();
    assert_eq!(beside.len(), 1, "{beside:?}");
    assert!(beside[0].len() <= 255 && beside[0].ends_with(".jpg.restored"));
    assert_eq!(fs::read(t.join(&beside[0])).unwrap(), b"long restored");
    // The first of a link group went beside a local file; the second links to that copy.
    assert_eq!(fs::read(t.join("h1")).unwrap(), b"local h1");
    let ino = |n: &str| fs::metadata(t.join(n)).unwrap().ino();
    assert_eq!(ino("h1.restored"), ino("h2"));
    let v = p.validate(t, false);
    assert_eq!((v.missing, v.mismatches), (0, 1), "{v:?}");

    // With overwrite: files and pipes replaced, the link retargeted, the folder kept.
    let r = p.restore(t, |o| o.overwrite = true);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(fs::read(t.join("a.txt")).unwrap(), b"restored");
    assert_eq!(fs::read(t.join("b/inside")).unwrap(), b"keep");
    assert!(fs::symlink_metadata(t.join("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(fs::read_link(t.join("ln")).unwrap(), Path::new("right"));
    assert_eq!(fs::read(t.join(&long)).unwrap(), b"long restored");
    assert!(p.validate(t, false).passed());
}

fn nix_mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn names_differing_only_by_case_never_overwrite_each_other() {
    let mut p = Point::new();
    p.dir("Photos", 0o755);
    p.file("Photos/IMG.jpg", b"first", 0o644);
    p.file("Photos/img.JPG", b"second", 0o644);
    p.dir("photos", 0o755);
    p.file("photos/other.jpg", b"merged folder", 0o644);
    p.file("photos/Img.jpg", b"third", 0o644);
    p.file("README", b"a file", 0o644);
    p.dir("readme", 0o755);
    p.file("readme/inside.txt", b"follows its folder", 0o644);
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    // Forced: this file system tells case apart, the restore behaves as on one that does not.
    let r = p.restore(t, |o| o.case_insensitive = Some(true));
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert!(r.case_insensitive);
    let renamed: Vec<(String, String)> = r
        .renamed
        .iter()
        .map(|x| (x.original.clone(), x.restored_as.clone()))
        .collect();
    assert_eq!(r.renamed_count, 4, "{renamed:?}");
    let find = |orig: &str| {
        renamed
            .iter()
            .find(|(o, _)| o == orig)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| panic!("{orig} not reported: {renamed:?}"))
    };
    let second = find("Photos/img.JPG");
    assert!(
        second.starts_with("Photos/img~case-") && second.ends_with(".JPG"),
        "{second}"
    );
    let third = find("photos/Img.jpg");
    assert!(third.starts_with("Photos/Img~case-"), "{third}");
    let folder = find("readme");
    assert!(folder.starts_with("readme~case-"), "{folder}");
    assert_eq!(find("readme/inside.txt"), format!("{folder}/inside.txt"));
    assert_eq!(fs::read(t.join("Photos/IMG.jpg")).unwrap(), b"first");
    assert_eq!(fs::read(t.join(&second)).unwrap(), b"second");
    assert_eq!(fs::read(t.join(&third)).unwrap(), b"third");
    assert_eq!(
        fs::read(t.join("Photos/other.jpg")).unwrap(),
        b"merged folder"
    );
    assert_eq!(fs::read(t.join("README")).unwrap(), b"a file");
    assert_eq!(
        fs::read(t.join(&folder).join("inside.txt")).unwrap(),
        b"follows its folder"
    );
    assert!(
        !t.join("photos").exists(),
        "folders differing by case merge"
    );
    // The validation replays the same placement.
    let v = p.validate(t, true);
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.extra, 0, "{v:?}");
    // A rerun finds everything in place.
    let again = p.restore(t, |o| o.case_insensitive = Some(true));
    assert_eq!(
        (again.files_restored, again.files_skipped),
        (0, 6),
        "{again:?}"
    );
}

#[test]
fn a_prefix_restores_only_its_subtree() {
    let mut p = Point::new();
    p.dir("a", 0o700);
    p.dir("a/b", 0o750);
    p.file("a/b/c.txt", b"c", 0o644);
    p.file("a/bb.txt", b"not under a/b", 0o644);
    p.file("x.txt", b"x", 0o644);
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let r = p.restore(t, |o| o.prefix = "a/b".into());
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.files_restored, 1);
    assert_eq!(fs::read(t.join("a/b/c.txt")).unwrap(), b"c");
    assert!(!t.join("a/bb.txt").exists() && !t.join("x.txt").exists());
    use std::os::unix::fs::PermissionsExt;
    let m = fs::metadata(t.join("a/b")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o750);
}

#[test]
fn a_later_hard_link_is_a_copy_when_the_first_failed() {
    let mut p = Point::new();
    p.linked("first", b"shared content", 3);
    p.linked("second", b"shared content", 3);
    let p = p.sorted();
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    // Both the first's name and its beside name are folders: the first cannot be restored.
    fs::create_dir(t.join("first")).unwrap();
    fs::create_dir(t.join("first.restored")).unwrap();
    let r = p.restore(t, |_| {});
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert_eq!(r.failures[0].path, "first");
    assert_eq!(r.hard_links, 0);
    assert_eq!(r.hard_links_copied, 1);
    assert_eq!(fs::read(t.join("second")).unwrap(), b"shared content");
    assert_eq!(fs::metadata(t.join("second")).unwrap().nlink(), 1);
}
