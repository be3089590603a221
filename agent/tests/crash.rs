//! Crash consistency: `kill -9` of a real `keepsake scan --update-catalog` process part-way,
//! several times; after each kill the catalog passes `PRAGMA integrity_check` and its own
//! invariants and shows no premature deletion; a rerun resumes and ends with exactly the
//! catalog and the report that an uninterrupted scan produces.
#![cfg(unix)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{commit_all, plan, write};
use keepsake_agent::catalog::{Catalog, FileState};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

const OLD_DIRS: usize = 20;
const NEW_DIRS: usize = 200;
const FILES_PER_DIR: usize = 200;

fn spawn_scan(home: &Path, root: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .args([
            "--home",
            home.to_str().unwrap(),
            "scan",
            "--update-catalog",
            "--json",
            root.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The checkpoint of the running scan, read through a separate read-only connection.
fn checkpoint(db: &Path) -> Option<Vec<u8>> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(5)).ok()?;
    conn.query_row(
        "SELECT resume_after FROM scans WHERE status = 'running'",
        [],
        |r| r.get::<_, Option<Vec<u8>>>(0),
    )
    .ok()
    .flatten()
}

fn dump(db: &Path) -> (Vec<String>, Vec<String>) {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = conn
        .prepare(
            "SELECT hex(path), kind, size, mtime_ns, ctime_ns, inode, state, committed_seq, changed_generation
             FROM files ORDER BY path",
        )
        .unwrap();
    let files = st
        .query_map([], |r| {
            Ok(format!(
                "{} {} {} {} {} {} {} {:?} {}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, i64>(8)?
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut st = conn
        .prepare("SELECT hex(path), reason, priority, attempts FROM queue ORDER BY path")
        .unwrap();
    let queue = st
        .query_map([], |r| {
            Ok(format!(
                "{} {} {} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (files, queue)
}

#[test]
fn kill_9_mid_scan_leaves_a_consistent_catalog_and_the_rerun_completes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("Weddings");
    let home_a = t.path().join("home-crash");
    let home_b = t.path().join("home-reference");
    fs::create_dir_all(&home_b).unwrap();
    let db_a = home_a.join("catalog.db");
    let db_b = home_b.join("catalog.db");

    // A backed-up past: OLD_DIRS folders, committed.
    for d in 0..OLD_DIRS {
        for f in 0..FILES_PER_DIR {
            write(
                &root,
                &format!("2023/wedding-{d:03}/IMG_{f:04}.CR3"),
                b"old raw",
            );
        }
    }
    {
        let mut cat = Catalog::open(&db_a).unwrap();
        let source = plan(&mut cat, &root, true).source_id.unwrap();
        assert!(commit_all(&mut cat, source, 1) > 0);
    }
    // While the agent was off: deletions, edits, and a big card dump.
    for d in 0..OLD_DIRS {
        fs::remove_file(root.join(format!("2023/wedding-{d:03}/IMG_0000.CR3"))).unwrap();
        write(
            &root,
            &format!("2023/wedding-{d:03}/IMG_0001.CR3"),
            b"edited raw, longer",
        );
    }
    fs::remove_dir_all(root.join("2023/wedding-007")).unwrap();
    for d in 0..NEW_DIRS {
        for f in 0..FILES_PER_DIR {
            write(
                &root,
                &format!("2024/wedding-{d:03}/IMG_{f:04}.CR3"),
                b"new raw",
            );
        }
    }
    // The reference catalog starts from the same committed past.
    {
        let conn = Connection::open(&db_a).unwrap();
        conn.execute("VACUUM INTO ?1", [db_b.to_str().unwrap()])
            .unwrap();
    }

    // Kill the scan part-way, several times, at different points.
    let mut kills = 0;
    let mut last_seen: Option<Vec<u8>> = None;
    let extra_delays = [0u64, 7, 23, 3, 41];
    for delay in extra_delays {
        let mut child = spawn_scan(&home_a, &root);
        let started = Instant::now();
        let finished = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            let cp = checkpoint(&db_a);
            if cp.is_some() && cp != last_seen {
                break false;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "no progress");
            std::thread::sleep(Duration::from_millis(2));
        };
        if finished {
            break;
        }
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if status.success() {
            break; // it completed just before the signal
        }
        kills += 1;
        // After the crash: a sound database, the catalog's invariants, no premature deletion.
        let cat = Catalog::open(&db_a).unwrap();
        let report = cat.verify().unwrap();
        assert!(report.is_ok(), "after kill {kills}: {:?}", report.problems);
        let source = cat.sources().unwrap()[0].id;
        let running = cat
            .running_scan(source)
            .unwrap()
            .expect("an interrupted scan is recorded");
        assert_eq!(
            cat.count_files(source, Some(FileState::Deleted)).unwrap(),
            0,
            "deletions wait for completion"
        );
        last_seen = running.resume_after;
        if kills == 3 {
            break;
        }
    }
    assert!(
        kills >= 1,
        "the scan always finished before it could be killed; the tree is too small"
    );

    // The rerun resumes and completes.
    let out = spawn_scan(&home_a, &root).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crashed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(crashed["scan"]["resumed"], true);
    // The same scan without interruption, from the same starting catalog.
    let out = spawn_scan(&home_b, &root).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reference["scan"]["resumed"], false);

    // Same catalog, same report.
    let (files_a, queue_a) = dump(&db_a);
    let (files_b, queue_b) = dump(&db_b);
    assert_eq!(files_a.len(), files_b.len());
    assert!(files_a == files_b, "files differ after a crash and resume");
    assert!(queue_a == queue_b, "queues differ after a crash and resume");
    assert_eq!(crashed["totals"], reference["totals"]);
    let n_new = (NEW_DIRS * FILES_PER_DIR) as u64;
    assert_eq!(reference["totals"]["new"]["files"], n_new);
    assert_eq!(
        reference["totals"]["modified"]["files"],
        (OLD_DIRS - 1) as u64
    );
    assert_eq!(
        reference["totals"]["deleted"]["files"],
        (OLD_DIRS - 1 + FILES_PER_DIR) as u64
    );
    let cat = Catalog::open(&db_a).unwrap();
    assert!(cat.verify().unwrap().is_ok());
    let source = cat.sources().unwrap()[0].id;
    assert!(cat.running_scan(source).unwrap().is_none());
    assert_eq!(
        cat.count_files(source, Some(FileState::Deleted)).unwrap(),
        (OLD_DIRS - 1 + FILES_PER_DIR + 1) as u64
    );
    eprintln!(
        "killed {kills} times; final catalog has {} rows",
        files_a.len()
    );
}
