//! Data integrity end to end, with a real `keepsake-server` process over a real PostgreSQL, real
//! storage and real `keepsake` processes: the awkward trees real disks hold (255-byte names,
//! links out of the tree and in loops, a named pipe, hard links, a 60-level path, a sparse file,
//! a socket), recovery points crafted to write outside the target, metadata tampered with in
//! the database, blobs poisoned by another machine of the organisation, a restore killed with
//! SIGKILL and resumed, and a backup job abandoned by its agent.

#![cfg(unix)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keepsake_e2e::hostile::{file_entry, symlink_entry, Hostile};
use keepsake_e2e::*;

/// `keepsake restore --json`: (success, report).
fn restore(a: &AgentHome, point: &str, to: &Path, extra: &[&str]) -> (bool, serde_json::Value) {
    let out = a.restore(point, to, extra);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "restore output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn name(bytes: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// Names of exactly 255 bytes: ASCII, multi-byte UTF-8, and bytes that are not UTF-8.
fn long_names() -> Vec<Vec<u8>> {
    let mut ascii = vec![b'a'; 251];
    ascii.extend_from_slice(b".CR3");
    // 125 two-byte characters and an extension.
    let utf8 = format!("{}.jpeg", "é".repeat(125)).into_bytes();
    let mut raw = vec![0xE9u8];
    raw.extend(std::iter::repeat_n(b'n', 250));
    raw.extend_from_slice(b".jpg");
    for n in [&ascii, &utf8, &raw] {
        assert_eq!(n.len(), 255);
    }
    vec![ascii, utf8, raw]
}

/// Builds the awkward tree under `root`. Returns the socket's listener (kept open while the
/// backup runs) and the paths of the hard-link pair.
fn hostile_tree(root: &Path) -> std::os::unix::net::UnixListener {
    std::fs::create_dir_all(root.join("Smith")).unwrap();
    for (i, n) in long_names().iter().enumerate() {
        std::fs::write(
            root.join("Smith").join(name(n)),
            random_bytes(100 + i as u64, 40_000),
        )
        .unwrap();
    }
    // Links that point out of the tree, and a loop: recorded, never followed.
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("../../../outside", root.join("Smith/escape")).unwrap();
    std::os::unix::fs::symlink("loop-b", root.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", root.join("loop-b")).unwrap();
    // A named pipe.
    let c = std::ffi::CString::new(root.join("Smith/pipe").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    // A hard-link pair.
    std::fs::create_dir_all(root.join("pair")).unwrap();
    std::fs::write(root.join("pair/one.jpg"), random_bytes(7, 300_000)).unwrap();
    std::fs::hard_link(root.join("pair/one.jpg"), root.join("pair/two.jpg")).unwrap();
    // A 60-level path.
    let mut deep = root.join("deep");
    for i in 0..60 {
        deep.push(format!("level{i:02}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), b"sixty folders down").unwrap();
    // A sparse file: 48 MiB with two data regions.
    let f = std::fs::File::create(root.join("ceremony.mov")).unwrap();
    f.set_len(48 * 1024 * 1024).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_at(&random_bytes(8, 100_000), 1024 * 1024).unwrap();
    f.write_at(&random_bytes(9, 50_000), 40 * 1024 * 1024)
        .unwrap();
    drop(f);
    // A set-user-ID file: backed up with its mode, restored without the special bit.
    std::fs::write(root.join("tool.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        root.join("tool.sh"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    // A socket: skipped, with its reason.
    std::os::unix::net::UnixListener::bind(root.join("app.sock")).unwrap()
}

/// The tree as a restore should reproduce it: no socket, special bits masked.
fn expected_nodes(src: &Path) -> BTreeMap<PathBuf, Node> {
    let (mut nodes, _) = tree_nodes(src);
    nodes.remove(Path::new("app.sock"));
    for n in nodes.values_mut() {
        match n {
            Node::File { mode, .. } | Node::Dir { mode } | Node::Fifo { mode } => *mode &= 0o777,
            _ => {}
        }
    }
    nodes
}

fn assert_same_nodes(want: &BTreeMap<PathBuf, Node>, got_root: &Path) {
    let (got, _) = tree_nodes(got_root);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (k, v) in want {
        assert_eq!(&got[k], v, "{}", k.display());
    }
}

#[test]
fn a_hostile_tree_restores_byte_for_byte_and_its_full_recovery_validates() {
    let w = World::new();
    let org = w.create_org("Awkward Names");
    let slug = org["slug"].as_str().unwrap().to_string();
    let laptop = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let src = w.dir("tree");
    let _sock = hostile_tree(&src);
    let want = expected_nodes(&src);

    let s = laptop.backup(&src);
    assert_eq!(s["fifos"], 1, "{s}");
    assert_eq!(s["skipped_count"], 1, "{s}");
    assert_eq!(s["skipped"][0]["path"], "app.sock", "{s}");
    assert_eq!(s["skipped"][0]["reason"], "socket", "{s}");
    assert!(
        s["skipped"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("socket"),
        "{s}"
    );
    let point = point_of(&s);

    // Restore: every name, every kind, byte for byte.
    let out = w.dir("restored");
    let (ok, rep) = restore(&laptop, &point, &out, &[]);
    assert!(ok, "{rep:#}");
    assert_eq!(rep["failures"].as_array().unwrap().len(), 0, "{rep:#}");
    assert_eq!(rep["fifos"], 1, "{rep}");
    assert_eq!(rep["hard_links"], 1, "{rep}");
    assert_same_nodes(&want, &out);
    let (_, groups) = tree_nodes(&out);
    assert_eq!(
        groups,
        vec![vec![
            PathBuf::from("pair/one.jpg"),
            PathBuf::from("pair/two.jpg")
        ]],
        "the hard-link pair is one inode again"
    );
    let m = std::fs::metadata(out.join("ceremony.mov")).unwrap();
    assert_eq!(m.len(), 48 * 1024 * 1024);
    assert!(
        m.blocks() * 512 < m.len() / 4,
        "the sparse file stays sparse: {} blocks",
        m.blocks()
    );
    assert_eq!(
        std::fs::read_link(out.join("Smith/escape")).unwrap(),
        PathBuf::from("../../../outside"),
        "a link out of the tree is restored as a link, never followed"
    );
    let leftovers: Vec<_> = walkdir::WalkDir::new(&out)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A second run finds everything complete and rewrites nothing.
    let (ok, again) = restore(&laptop, &point, &out, &[]);
    assert!(ok, "{again:#}");
    assert_eq!(again["files_restored"], 0, "{again}");
    assert_same_nodes(&want, &out);

    // The stolen-laptop case: a full recovery onto a new machine, validated file by file.
    let newbie = w.agent("new-laptop", &w.enroll_token(&slug));
    let target = w.root.join("recovered");
    let job = w.admin_json(&[
        "recovery",
        "create",
        "--org",
        &slug,
        "--type",
        "full",
        "--target-agent",
        "new-laptop",
        "--point",
        &point,
        "--to",
        target.to_str().unwrap(),
    ]);
    let id = job["id"].as_str().unwrap().to_string();
    newbie.ok(&["recover", "--json"]);
    let d = w.admin_json(&["recovery", "show", &id, "--org", &slug]);
    assert_eq!(d["job"]["status"], "completed", "{d:#}");
    assert_eq!(d["job"]["verification_passed"], true, "{d:#}");
    assert_same_nodes(&want, &target);
    // Only now, after a whole point was restored and re-read, is the point called verified.
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM recovery_points WHERE id = '{point}' AND data_integrity_verified"
        )),
        1
    );
    // The new machine checked every copy it read: its next backup of the same data sends nothing.
    let s2 = newbie.backup(&target);
    assert!(
        s2["bytes_sent"].as_u64().unwrap() < 200_000,
        "after a verified recovery the data is not uploaded again: {s2}"
    );
}

#[test]
fn a_hostile_point_and_a_hostile_target_write_nothing_outside() {
    let w = World::new();
    let org = w.create_org("Hostile Point");
    let laptop = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let outside = w.dir("outside");
    std::fs::write(outside.join("victim.txt"), b"untouched").unwrap();
    let before = tree_hashes(&outside);

    // A machine with the organisation's keys commits a point built to escape: a link `a` to
    // the outside folder and a file `a/x` below it, a set-user-ID file, a link loop, and names
    // the target will have planted as links.
    let h = Hostile::of_home(&laptop.home);
    let payload = b"written through a link".to_vec();
    let blob = h.seal(&payload);
    let (_, hash) = h.ids_of(&payload);
    h.upload(std::slice::from_ref(&blob));
    let src = h.source("/crafted");
    let out = outside.to_str().unwrap();
    let c = h.commit(
        src,
        vec![
            symlink_entry("a", out),
            file_entry("a/x", &payload, Some(&blob), hash, 0o100644),
            file_entry("suid", &payload, Some(&blob), hash, 0o104755),
            symlink_entry("loop1", "loop2"),
            symlink_entry("loop2", "loop1"),
            file_entry("planted.jpg", &payload, Some(&blob), hash, 0o100644),
            file_entry("DCIM/y.jpg", &payload, Some(&blob), hash, 0o100644),
        ],
    );
    let point = c.recovery_point_id.to_string();

    // The target already holds links where the point has names.
    let target = w.dir("target");
    std::os::unix::fs::symlink(outside.join("victim.txt"), target.join("planted.jpg")).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("DCIM")).unwrap();
    let (ok, rep) = restore(&laptop, &point, &target, &[]);
    assert!(!ok, "refused entries make the restore report failure");
    let failures: Vec<(String, String)> = rep["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tree_hashes(&outside),
        before,
        "nothing written outside: {failures:?}"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    // `a/x` made a real folder `a`; the link `a` (made last) found it and was refused.
    assert!(std::fs::symlink_metadata(target.join("a"))
        .unwrap()
        .is_dir());
    assert_eq!(std::fs::read(target.join("a/x")).unwrap(), payload);
    assert!(failures.iter().any(|(p, _)| p == "a"), "{failures:?}");
    // The planted folder link is refused, not followed.
    assert!(
        failures
            .iter()
            .any(|(p, e)| p == "DCIM/y.jpg" && e.contains("symlink")),
        "{failures:?}"
    );
    // The planted file link is left alone; the file goes beside it.
    assert!(std::fs::symlink_metadata(target.join("planted.jpg"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(target.join("planted.jpg.restored")).unwrap(),
        payload
    );
    // Special bits are dropped; the loop is two links.
    let mode = std::fs::metadata(target.join("suid")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
    assert_eq!(
        std::fs::read_link(target.join("loop1")).unwrap(),
        PathBuf::from("loop2")
    );
}

#[test]
fn metadata_tampered_in_the_database_is_refused_and_the_rest_restores() {
    let w = World::new();
    let org = w.create_org("Tampered");
    let laptop = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let shoot = w.dir("shoot");
    write_shoot(&shoot, 31, 4, 300_000);
    let point = point_of(&laptop.backup(&shoot));
    // Someone with database access: a setuid bit on a photo, a sidecar's content swapped for a
    // RAW's, and a crafted link `evil -> /outside` plus a file `evil/x` copied from a real row.
    let outside = w.dir("outside");
    w.batch(&format!(
        "BEGIN;
         SELECT auth.enter_definer();
         UPDATE backup_files SET mode = 35309 WHERE path = 'DCIM/100EOSR5/IMG_0000.JPG';
         UPDATE backup_files f SET content_hash = r.content_hash, size = r.size, chunk_count = r.chunk_count
           FROM backup_files r
          WHERE f.path = 'DCIM/100EOSR5/IMG_0001.xmp' AND r.path = 'DCIM/100EOSR5/IMG_0001.CR3';
         INSERT INTO backup_files (organization_id, agent_id, source_id, path, entry_kind, symlink_target,
             size, mtime, content_hash, chunk_count, valid_from_seq, created_by_job_id, entry_mac)
         SELECT organization_id, agent_id, source_id, 'evil', 'symlink', '{}', 0, mtime, content_hash, 0,
             valid_from_seq, created_by_job_id, entry_mac
           FROM backup_files WHERE entry_kind = 'symlink' LIMIT 1;
         INSERT INTO backup_files (organization_id, agent_id, source_id, path, size, mtime, mode, content_hash,
             chunk_count, valid_from_seq, created_by_job_id, entry_mac)
         SELECT organization_id, agent_id, source_id, 'evil/x', size, mtime, mode, content_hash,
             chunk_count, valid_from_seq, created_by_job_id, entry_mac
           FROM backup_files WHERE path = 'DCIM/100EOSR5/IMG_0002.CR3';
         COMMIT;",
        outside.display()
    ));
    let out = w.dir("restored");
    let (ok, rep) = restore(&laptop, &point, &out, &[]);
    assert!(!ok, "tampered entries fail the restore loudly");
    let mut refused: Vec<String> = rep["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(
                f["error"]
                    .as_str()
                    .unwrap()
                    .contains("metadata not authenticated"),
                "{f}"
            );
            f["path"].as_str().unwrap().to_string()
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        vec![
            "DCIM/100EOSR5/IMG_0000.JPG",
            "DCIM/100EOSR5/IMG_0001.xmp",
            "evil",
            "evil/x"
        ]
    );
    assert_eq!(rep["refused"], 4);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!out.join("evil").exists());
    // Everything else restored intact.
    let mut want = tree_hashes(&shoot);
    want.remove(Path::new("DCIM/100EOSR5/IMG_0000.JPG"));
    want.remove(Path::new("DCIM/100EOSR5/IMG_0001.xmp"));
    assert_eq!(tree_hashes(&out), want);
}

#[test]
fn blobs_poisoned_by_another_machine_never_spoil_the_honest_backup() {
    let w = World::new();
    let org = w.create_org("Poisoned");
    let slug = org["slug"].as_str().unwrap().to_string();
    let nas = w.agent("nas", org["enroll_token"].as_str().unwrap());
    let stolen = w.agent("stolen-laptop", &w.enroll_token(&slug));
    // The photos the NAS will back up (one chunk each), known to the stolen laptop too.
    let shoot = w.dir("shoot");
    let photos: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("Smith/IMG_{i:04}.JPG"),
                random_bytes(500 + i, 150_000),
            )
        })
        .collect();
    for (p, data) in &photos {
        std::fs::create_dir_all(shoot.join(p).parent().unwrap()).unwrap();
        std::fs::write(shoot.join(p), data).unwrap();
    }
    // The stolen laptop goes first: garbage under the real blob IDs, and the real content
    // hashes with chunk lists pointing at the wrong blobs.
    let h = Hostile::of_home(&stolen.home);
    let mut forged = Vec::new();
    let mut entries = Vec::new();
    for (i, (p, data)) in photos.iter().enumerate() {
        let (id, hash) = h.ids_of(data);
        let garbage = random_bytes(900 + i as u64, data.len());
        let blob = h.forge(id, &garbage);
        let other = &photos[(i + 1) % photos.len()].1;
        let wrong = h.forge(h.ids_of(other).0, &garbage);
        entries.push(file_entry(p, data, Some(&wrong), hash, 0o100644));
        forged.push(blob);
    }
    h.upload(&forged);
    let hsrc = h.source("/stolen");
    h.commit(hsrc, entries);

    // The NAS backs up as usual, then restores: byte-identical.
    let s = nas.backup(&shoot);
    assert!(
        s["bytes_sent"].as_u64().unwrap() > 6 * 150_000,
        "the NAS uploads its own copies: {s}"
    );
    let point = point_of(&s);
    let out = w.dir("nas-restore");
    let (ok, rep) = restore(&nas, &point, &out, &[]);
    assert!(ok, "{rep:#}");
    assert_eq!(tree_hashes(&out), tree_hashes(&shoot));
    // A replacement machine, which has no copy of its own, meets the poisoned copies first,
    // refuses them and falls back: still byte-identical.
    let replacement = w.agent("replacement", &w.enroll_token(&slug));
    let out2 = w.dir("replacement-restore");
    let (ok, rep) = restore(&replacement, &point, &out2, &[]);
    assert!(ok, "{rep:#}");
    assert_eq!(tree_hashes(&out2), tree_hashes(&shoot));
    assert!(
        rep["copies_rejected"].as_u64().unwrap() >= 6,
        "the poisoned copies were met and refused: {rep}"
    );
}

#[test]
fn a_restore_killed_with_sigkill_resumes_and_every_file_matches() {
    let w = World::new();
    let org = w.create_org("Killed Restore");
    let laptop = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let shoot = w.dir("shoot");
    write_shoot(&shoot, 41, 60, 2_500_000);
    let point = point_of(&laptop.backup(&shoot));
    let out = w.dir("restored");
    let mut killed_mid_way = false;
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let mut child = laptop
            .cmd()
            .args(["restore", "--point", &point, "--to", out.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let n = walkdir::WalkDir::new(&out)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .count();
            if n >= 20 || matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(2));
        }
        // SIGKILL: no chance to clean up.
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid_way = true;
            break;
        }
    }
    assert!(
        killed_mid_way,
        "the restore always finished before it could be killed"
    );
    // The resumed run completes; every file matches, and no temporary file is left.
    let (ok, rep) = restore(&laptop, &point, &out, &[]);
    assert!(ok, "{rep:#}");
    assert!(rep["files_skipped"].as_u64().unwrap() > 0, "{rep}");
    assert_eq!(tree_hashes(&out), tree_hashes(&shoot));
    let leftovers: Vec<_> = walkdir::WalkDir::new(&out)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| keepsake_agent::restore::is_temp_name(e.file_name().as_bytes()))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_job_abandoned_by_its_agent_ends_and_the_next_run_starts_cleanly() {
    let w = World::with_server_args(&["--job-lease-secs", "2"]);
    let org = w.create_org("Abandoned");
    let laptop = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let shoot = w.dir("shoot");
    write_shoot(&shoot, 51, 3, 200_000);
    // The agent dies after sending its delta, before the commit.
    let out = laptop
        .cmd()
        .env("KEEPSAKE_FAILPOINT", "before_commit")
        .args(["backup", shoot.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        w.count("SELECT count(*) FROM backup_jobs WHERE status = 'running'"),
        1
    );
    assert!(w.count("SELECT count(*) FROM job_delta_entries") > 0);
    let start = Instant::now();
    while w.count("SELECT count(*) FROM backup_jobs WHERE status = 'running'") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the lease never lapsed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        w.count(
            "SELECT count(*) FROM backup_jobs WHERE status = 'failed' AND error_message LIKE 'abandoned:%'"
        ),
        1
    );
    assert_eq!(w.count("SELECT count(*) FROM job_delta_entries"), 0);
    // The next run commits a new job.
    let s = laptop.backup(&shoot);
    assert!(s["committed"]["seq"].as_i64().is_some(), "{s}");
    assert_eq!(
        w.count("SELECT count(*) FROM backup_jobs WHERE status = 'completed'"),
        1
    );
}
