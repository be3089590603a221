//! Unit tests of the recovery module: prefixes as a job walks them, free space, the names the
//! validation looks for, and re-reading a file by size and keyed hash.
//!
//! Tests only; they write into temporary folders that are removed when they end.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use keepsake_common::api::{FileAtPoint, FileKind};
use keepsake_common::ids::ChunkIdKey;
use keepsake_common::prefix::walk_list;

use super::execute::job_walk;
use super::validate::{beside, check_file, path_key, Check};
use super::*;
use crate::restore::target::Target;

fn v(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn prefixes_are_normalised() {
    assert_eq!(walk_list(&[]), v(&[""]));
    assert_eq!(walk_list(&v(&["a", ""])), v(&[""]));
    assert_eq!(walk_list(&v(&["/a/", "a"])), v(&["a"]));
    assert_eq!(
        walk_list(&v(&["a/b", "a", "ab", "a.txt", "c/d"])),
        v(&["a", "a.txt", "ab", "c/d"])
    );
    assert_eq!(walk_list(&v(&["a/b/c", "a/b"])), v(&["a/b"]));
}

#[test]
fn a_jobs_prefixes_are_checked_before_they_are_walked() {
    assert_eq!(job_walk(&[]).unwrap(), v(&[""]));
    assert_eq!(
        job_walk(&v(&["2025/Smith/", "2025", "2024/Jones"])).unwrap(),
        v(&["2024/Jones", "2025"])
    );
    // Prefixes the server should never have sent are the job's error, not a panic.
    for bad in ["/etc", "..", "a/../b", "", "a//b"] {
        let e = job_walk(&v(&[bad])).unwrap_err();
        assert!(
            e.starts_with("the job's path prefixes cannot be restored: path prefix"),
            "{e}"
        );
    }
    let many: Vec<String> = (0..1001).map(|i| format!("d{i}")).collect();
    assert!(job_walk(&many)
        .unwrap_err()
        .contains("at most 1000 path_prefixes"));
}

#[test]
fn free_space_of_a_missing_folder_is_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("not/yet/there");
    if crate::test_hooks::free_bytes().is_none() {
        let free = free_space(&deep).unwrap();
        assert!(free > 0);
        assert!(!deep.exists(), "measuring creates nothing");
        let c = check_space(&deep, free.saturating_mul(2)).unwrap();
        assert!(!c.ok);
        let c = check_space(&deep, 0).unwrap();
        assert_eq!(c.ok, free >= 1024 * 1024);
    }
}

#[test]
fn beside_names() {
    assert_eq!(
        beside(Path::new("a/b.jpg")),
        PathBuf::from("a/b.jpg.restored")
    );
    assert_ne!(path_key(Path::new("a/b")), path_key(Path::new("a/c")));
}

#[test]
fn check_file_compares_size_and_keyed_hash() {
    let dir = tempfile::tempdir().unwrap();
    let key = ChunkIdKey([7u8; 32]);
    let data = b"wedding photo bytes".repeat(1000);
    let p = dir.path().join("f");
    fs::write(&p, &data).unwrap();
    let f = FileAtPoint {
        path: "f".into(),
        raw_path: None,
        kind: FileKind::File,
        size: data.len() as u64,
        mtime_ns: None,
        mode: None,
        symlink_target: None,
        content_hash: Some(keepsake_common::ids::ContentHash::of(&key, &data)),
        chunks: Vec::new(),
        link: None,
        mac: None,
    };
    let prog = ValidateProgress::default();
    let t = Target::open(dir.path(), false).unwrap();
    let root = t.root();
    let name = OsStr::new("f");
    assert!(
        matches!(check_file(root, name, &f, &key, &prog), Check::Ok(n) if n == data.len() as u64)
    );
    let mut bad = data.clone();
    bad[5] ^= 1;
    fs::write(&p, &bad).unwrap();
    assert!(matches!(
        check_file(root, name, &f, &key, &prog),
        Check::Mismatch(_)
    ));
    // Another key gives another hash: the hash is keyed.
    fs::write(&p, &data).unwrap();
    let other = ChunkIdKey([8u8; 32]);
    assert!(matches!(
        check_file(root, name, &f, &other, &prog),
        Check::Mismatch(_)
    ));
    fs::write(&p, b"short").unwrap();
    assert!(
        matches!(check_file(root, name, &f, &key, &prog), Check::Mismatch(m) if m.contains("bytes"))
    );
    fs::remove_file(&p).unwrap();
    assert!(matches!(
        check_file(root, name, &f, &key, &prog),
        Check::Missing(_)
    ));
    #[cfg(unix)]
    {
        let real = dir.path().join("real");
        fs::write(&real, &data).unwrap();
        std::os::unix::fs::symlink(&real, &p).unwrap();
        assert!(
            matches!(check_file(root, name, &f, &key, &prog), Check::Mismatch(_)),
            "a symlink is not the restored file"
        );
    }
}
