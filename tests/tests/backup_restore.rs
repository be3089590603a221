//! End to end: a real `keepsake-server` process on 127.0.0.1 over a real PostgreSQL, local
//! storage on disk, real `keepsake` agent processes — backups, restores, dedup, crashes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keepsake_e2e::*;

fn restore(a: &AgentHome, point: &str, to: &Path, extra: &[&str]) -> std::process::Output {
    a.restore(point, to, extra)
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ha, hb) = (tree_hashes(a), tree_hashes(b));
    assert_eq!(ha.len(), hb.len(), "file count differs");
    assert_eq!(ha, hb, "contents differ");
}

#[test]
fn backup_restore_incremental_and_older_points() {
    let w = World::new();
    let org = w.create_org("Smith Photography");
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let shoot = w.dir("shoot");
    write_shoot(&shoot, 1, 6, 3_000_000);

    let s1 = a.backup(&shoot);
    let c1 = &s1["committed"];
    assert_eq!(c1["seq"], 1, "{s1}");
    assert!(s1["bytes_sent"].as_u64().unwrap() > 20_000_000);
    let p1 = c1["recovery_point_id"].as_str().unwrap().to_string();

    // Unchanged re-run: nothing read, nothing sent, no new point.
    let t = Instant::now();
    let again = a.backup(&shoot);
    assert!(again["committed"].is_null(), "{again}");
    assert_eq!(again["bytes_sent"], 0);
    assert_eq!(again["bytes_read"], 0);
    eprintln!("unchanged re-run: {:?}", t.elapsed());

    // Full restore: byte-identical, symlink and non-UTF-8 name included.
    let out1 = w.dir("restore1");
    let r = restore(&a, &p1, &out1, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same_tree(&shoot, &out1);
    let link = std::fs::read_link(out1.join("Catalog/link-to-dcim")).unwrap();
    assert_eq!(link, PathBuf::from("../DCIM"));
    let orig_mtime = std::fs::metadata(shoot.join("DCIM/100EOSR5/IMG_0001.CR3"))
        .unwrap()
        .modified()
        .unwrap();
    let rest_mtime = std::fs::metadata(out1.join("DCIM/100EOSR5/IMG_0001.CR3"))
        .unwrap()
        .modified()
        .unwrap();
    let diff = orig_mtime
        .duration_since(rest_mtime)
        .unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_micros(2), "mtime restored ({diff:?})");

    // Next day: a sidecar edited, a photo added, a file deleted. Only new blobs travel.
    let xmp = shoot.join("DCIM/100EOSR5/IMG_0002.xmp");
    let old_xmp = std::fs::read(&xmp).unwrap();
    std::fs::write(&xmp, b"<x:xmpmeta rating=\"5\">edited</x:xmpmeta>\n").unwrap();
    std::fs::write(
        shoot.join("DCIM/100EOSR5/IMG_0100.CR3"),
        random_bytes(77, 1_000_000),
    )
    .unwrap();
    std::fs::remove_file(shoot.join("DCIM/100EOSR5/IMG_0003.JPG")).unwrap();
    let s2 = a.backup(&shoot);
    let c2 = &s2["committed"];
    assert_eq!(
        (
            c2["seq"].as_i64(),
            c2["files_added"].as_i64(),
            c2["files_changed"].as_i64(),
            c2["files_deleted"].as_i64()
        ),
        // Changed: the sidecar, and its folder (whose mtime moved).
        (Some(2), Some(1), Some(2), Some(1)),
        "{s2}"
    );
    let sent = s2["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < 1_200_000,
        "incremental sent {sent} bytes for ~1 MB of change"
    );
    let p2 = c2["recovery_point_id"].as_str().unwrap().to_string();

    // The older point still restores the older content; the newer one the newer.
    let old = w.dir("restore-old");
    assert!(
        restore(&a, &p1, &old, &["--path", "DCIM/100EOSR5/IMG_0002.xmp"])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read(old.join("DCIM/100EOSR5/IMG_0002.xmp")).unwrap(),
        old_xmp
    );
    assert_eq!(tree_hashes(&old).len(), 1, "--path restores only that file");
    let new = w.dir("restore-new");
    assert!(restore(&a, &p2, &new, &[]).status.success());
    assert_same_tree(&shoot, &new);

    // Points and listing.
    let points = a.json(&["points"]);
    assert_eq!(points.as_array().unwrap().len(), 2);
    let ls = a.ok(&["ls", "--point", &p2, "DCIM"]);
    assert!(ls.contains("DCIM/100EOSR5/IMG_0100.CR3"), "{ls}");
    assert!(!ls.contains("IMG_0003.JPG"), "{ls}");

    // An interrupted restore resumes: complete files are skipped.
    std::fs::remove_file(new.join("DCIM/100EOSR5/IMG_0001.CR3")).unwrap();
    let r = restore(&a, "latest", &new, &[]);
    assert!(r.status.success());
    let rep: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rep["files_restored"], 1, "{rep}");
    assert!(rep["files_skipped"].as_u64().unwrap() > 10);
    assert_same_tree(&shoot, &new);

    // A local file that differs is not overwritten without --overwrite.
    std::fs::write(new.join("DCIM/100EOSR5/IMG_0000.xmp"), b"my local edit").unwrap();
    assert!(restore(&a, &p2, &new, &[]).status.success());
    assert_eq!(
        std::fs::read(new.join("DCIM/100EOSR5/IMG_0000.xmp")).unwrap(),
        b"my local edit"
    );
    assert_eq!(
        std::fs::read(new.join("DCIM/100EOSR5/IMG_0000.xmp.restored")).unwrap(),
        std::fs::read(shoot.join("DCIM/100EOSR5/IMG_0000.xmp")).unwrap()
    );
}

#[test]
fn machines_rely_only_on_copies_they_uploaded_or_checked_and_never_across_organisations() {
    let w = World::new();
    let org = w.create_org("Dedup Studio");
    let other = w.create_org("Other Studio");
    let laptop = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let nas = w.agent("nas", &w.enroll_token(org["slug"].as_str().unwrap()));
    let studio = w.agent("studio", &w.enroll_token(org["slug"].as_str().unwrap()));
    let stranger = w.agent("stranger", other["enroll_token"].as_str().unwrap());
    // The second machine unlocked the first machine's keys with the passphrase.
    let k1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(laptop.home.join("keys.json")).unwrap()).unwrap();
    let k2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(nas.home.join("keys.json")).unwrap()).unwrap();
    assert_eq!(k1, k2);
    assert!(
        !nas.home.join("secret-keys.json").exists(),
        "identity not kept on disk by default"
    );

    let a = w.dir("laptop-shoot");
    write_shoot(&a, 5, 4, 2_000_000);
    let b = w.dir("nas-copy");
    write_shoot(&b, 5, 4, 2_000_000);
    let s1 = laptop.backup(&a);
    // A backup-only machine cannot check the laptop's ciphertext, so it keeps its own copy: a
    // stolen or broken laptop can never spoil the NAS's backup of the same photos.
    let s2 = nas.backup(&b);
    // A machine that keeps the organisation's identity checks the copies instead of uploading.
    w.execute(
        "UPDATE organizations SET settings = settings || '{\"agents_keep_unsealed_key\": true}'::jsonb",
    );
    studio.ok(&["unlock", "--remember"]);
    let c = w.dir("studio-copy");
    write_shoot(&c, 5, 4, 2_000_000);
    let s3 = studio.backup(&c);
    let s4 = stranger.backup(&b);
    let sent = |s: &serde_json::Value| s["bytes_sent"].as_u64().unwrap();
    assert!(
        sent(&s2) > sent(&s1) * 9 / 10,
        "the NAS uploads its own copy: {} vs {}",
        sent(&s2),
        sent(&s1)
    );
    assert_eq!(s2["blobs_adopted"], 0);
    assert!(
        sent(&s3) < sent(&s1) / 20,
        "the studio machine checked and adopted the copies: {} vs {}",
        sent(&s3),
        sent(&s1)
    );
    assert!(s3["blobs_adopted"].as_u64().unwrap() > 0, "{s3}");
    assert!(
        sent(&s4) > sent(&s1) * 9 / 10,
        "another organisation shares nothing: {} vs {}",
        sent(&s4),
        sent(&s1)
    );
    // The NAS's point restores on the laptop's side too (same organisation).
    let p = s2["committed"]["recovery_point_id"].as_str().unwrap();
    let out = w.dir("cross-restore");
    assert!(restore(&laptop, p, &out, &[]).status.success());
    assert_same_tree(&b, &out);
    let p3 = s3["committed"]["recovery_point_id"].as_str().unwrap();
    let out3 = w.dir("studio-restore");
    assert!(restore(&laptop, p3, &out3, &[]).status.success());
    assert_same_tree(&c, &out3);
    // The stranger cannot restore it.
    let r = restore(&stranger, p, &w.dir("nope"), &[]);
    assert!(!r.status.success());
}

fn wait_for_pack(storage: &Path, limit: Duration) {
    let start = Instant::now();
    loop {
        let packs = walkdir::WalkDir::new(storage)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count();
        if packs > 0 {
            return;
        }
        assert!(start.elapsed() < limit, "no pack uploaded within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn agent_killed_during_upload_and_at_commit_boundaries_loses_nothing() {
    let w = World::new();
    let org = w.create_org("Crash Test");
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let shoot = w.dir("shoot");
    write_shoot(&shoot, 9, 30, 2_500_000);
    let data = dir_size(&shoot);

    // kill -9 while packs are uploading.
    let mut child = a
        .cmd()
        .args(["backup", shoot.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once a pack is stored and indexed (a pack object can exist a moment before its
    // index rows commit; the kill must come after some data is really on the server).
    let start = Instant::now();
    while w.count("SELECT count(*) FROM blob_copies") == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no pack indexed within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stored_before = w.count("SELECT count(*) FROM blob_copies");
    assert!(stored_before > 0);

    // Crash right before the commit, then right after it (before the catalog records it).
    for point in ["before_commit", "after_commit"] {
        let out = a
            .cmd()
            .env("KEEPSAKE_FAILPOINT", point)
            .args(["backup", shoot.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "failpoint {point} must abort");
    }
    let committed = w.count("SELECT count(*) FROM recovery_points");
    assert_eq!(
        committed, 1,
        "the after_commit crash happened after a real commit"
    );

    // The rerun finishes; blobs the server held were not uploaded again.
    let s = a.backup(&shoot);
    let packs_rerun = s["packs"].as_u64().unwrap();
    assert_eq!(packs_rerun, 0, "nothing left to upload: {s}");
    // Every file is in the latest point, exactly once, and restores byte for byte.
    let out = w.dir("restored");
    assert!(restore(&a, "latest", &out, &[]).status.success());
    assert_same_tree(&shoot, &out);
    assert_eq!(
        w.count(
            "SELECT count(*) FROM backup_files WHERE valid_to_seq IS NULL AND entry_kind = 'file'"
        ),
        tree_hashes(&shoot).len() as i64
    );
    // No blob stored twice for this machine; storage holds at most the aborted pack in excess.
    assert_eq!(
        w.count("SELECT count(*) FROM blob_copies"),
        w.count("SELECT count(DISTINCT blob_id) FROM blob_copies")
    );
    let stored = dir_size(&w.storage());
    assert!(
        stored < data + data / 3,
        "stored {stored} for {data} bytes of data"
    );
    // The job interrupted before its commit was abandoned, not committed.
    assert_eq!(
        w.count("SELECT count(*) FROM backup_jobs WHERE status = 'completed'"),
        2
    );
}

#[test]
fn server_killed_during_upload_the_agent_retries_and_completes() {
    let mut w = World::new();
    let org = w.create_org("Outage");
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let shoot = w.dir("shoot");
    write_shoot(&shoot, 11, 30, 2_500_000);
    let child = a
        .cmd()
        .args(["backup", shoot.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_pack(&w.storage(), Duration::from_secs(60));
    w.server.kill();
    std::thread::sleep(Duration::from_secs(2));
    w.server.restart();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the agent must ride out a server restart"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = v[0]["summary"]["committed"]["recovery_point_id"]
        .as_str()
        .unwrap()
        .to_string();
    let restored = w.dir("restored");
    assert!(restore(&a, &p, &restored, &[]).status.success());
    assert_same_tree(&shoot, &restored);
}

#[test]
fn a_flipped_byte_in_a_stored_pack_fails_that_file_only() {
    let w = World::new();
    let org = w.create_org("Bit Rot");
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let shoot = w.dir("shoot");
    write_shoot(&shoot, 13, 3, 500_000);
    let s = a.backup(&shoot);
    let p = s["committed"]["recovery_point_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Damage the blob of one RAW file inside its pack.
    w.corrupt_blob_of("DCIM/100EOSR5/IMG_0001.CR3");

    let out_dir = w.dir("restored");
    let r = restore(&a, &p, &out_dir, &[]);
    assert!(
        !r.status.success(),
        "a damaged blob must fail the restore loudly"
    );
    let rep: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let failures = rep["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{rep}");
    assert_eq!(failures[0]["path"], "DCIM/100EOSR5/IMG_0001.CR3");
    assert!(
        !out_dir.join("DCIM/100EOSR5/IMG_0001.CR3").exists(),
        "no torn file left"
    );
    let mut want = tree_hashes(&shoot);
    want.remove(Path::new("DCIM/100EOSR5/IMG_0001.CR3"));
    assert_eq!(
        tree_hashes(&out_dir),
        want,
        "every other file restored intact"
    );
}

#[test]
fn a_mistyped_passphrase_at_enrolment_is_retried_without_a_new_token() {
    let w = World::new();
    let org = w.create_org("Typo Studio");
    let first = w.agent("first", org["enroll_token"].as_str().unwrap());
    let token = w.enroll_token(org["slug"].as_str().unwrap());
    let mut second = AgentHome::new(&w.root.join("home-second"));
    second.passphrase = "not the passphrase".into();
    let args = [
        "enroll",
        "--server",
        &w.server.url,
        "--token",
        &token,
        "--name",
        "second",
        "--json",
    ];
    let bad = second.run(&args);
    assert!(
        !bad.status.success(),
        "a wrong passphrase must not unlock the keys"
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("keepsake enroll") && err.contains("no new token"),
        "{err}"
    );
    // The token is spent; the same command with the right passphrase finishes the enrolment.
    second.passphrase = first.passphrase.clone();
    second.ok(&args);
    let dir = w.dir("second-photos");
    std::fs::write(dir.join("IMG_1.JPG"), random_bytes(5, 50_000)).unwrap();
    second.ok(&["backup", dir.to_str().unwrap()]);
    assert_eq!(
        w.count("SELECT count(*) FROM agents WHERE name = 'second'"),
        1,
        "one machine, not two"
    );
}
