//! The local catalog: migrations, pragmas, change detection by (size, mtime, ctime, inode),
//! deletions only after a completed scan, unreadable paths never deleted, server blob epochs,
//! queue, commits, jobs, writer lock.
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, SystemTime};

use common::{commit_all, plan, plan_with, write};
use keepsake_agent::catalog::{
    latest_schema_version, now_ms, BlobRef, Catalog, CatalogError, CommitEntry, FileState,
    JobStatus, Migration, Priority, QueueReason, WriterLock, MIGRATIONS,
};
use keepsake_agent::detect::plan::{Change, PlanObserver, PlanOptions};
use keepsake_agent::detect::scan::{Entry, EntryKind, ScanOptions};
use keepsake_agent::relpath::RelPath;

fn rel(s: &str) -> RelPath {
    RelPath::from_bytes(s.as_bytes().to_vec()).unwrap()
}

#[derive(Default)]
struct Changes(Vec<(Change, String)>);
impl PlanObserver for Changes {
    fn on_change(&mut self, change: Change, rel: &RelPath, kind: EntryKind, _size: u64) {
        if kind != EntryKind::Dir {
            self.0.push((change, rel.to_string()));
        }
    }
}
impl Changes {
    fn of(&self, c: Change) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| *k == c)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

#[test]
fn migrations_apply_and_reapply() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("sub/catalog.db");
    {
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.schema_version().unwrap(), latest_schema_version());
        let tables: i64 = c
            .connection()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN
                 ('sources','files','file_blobs','server_blobs','queue','jobs','scans','scan_missing','agent_state')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 9);
    }
    // Reopening applies nothing twice.
    let mut c = Catalog::open(&path).unwrap();
    let rows: i64 = c
        .connection()
        .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, MIGRATIONS.len() as i64);
    // A later migration is applied once, in order, after the existing ones.
    let next = latest_schema_version() + 1;
    let mut extended = MIGRATIONS.to_vec();
    extended.push(Migration {
        version: next,
        name: "test-extra",
        sql: "CREATE TABLE extra (x INTEGER);",
        foreign_keys_off: false,
    });
    c.migrate(&extended).unwrap();
    c.migrate(&extended).unwrap();
    assert_eq!(c.schema_version().unwrap(), next);
    let rows: i64 = c
        .connection()
        .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, next);
    drop(c);
    // This build refuses a catalog from the future instead of misreading it.
    match Catalog::open(&path) {
        Err(CatalogError::TooNew { found, supported })
            if found == next && supported == latest_schema_version() => {}
        other => panic!("expected TooNew, got {other:?}"),
    }
}

/// A catalog written before named pipes were recorded keeps every row (and the rows that
/// reference them) when its `files` table is rebuilt, and then accepts a pipe.
#[test]
fn the_named_pipe_migration_keeps_every_row() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON;").unwrap();
        conn.execute_batch(MIGRATIONS[0].sql).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
             INSERT INTO schema_migrations VALUES (1, 'initial', 0);
             INSERT INTO sources (id, root, root_display, created_at) VALUES (1, x'2f73', '/s', 0);
             INSERT INTO files (source_id, path, kind, size, mtime_ns, ctime_ns, inode, device, mode, state, changed_generation, committed_seq)
                 VALUES (1, x'61', 0, 3, 1, 1, 1, 1, 33188, 'committed', 1, 1);
             INSERT INTO file_blobs VALUES (1, x'61', x'00');
             INSERT INTO queue (source_id, path, reason, priority, enqueued_at, next_attempt_at) VALUES (1, x'61', 'new', 1, 0, 0);",
        )
        .unwrap();
        assert!(conn
            .execute(
                "INSERT INTO files (source_id, path, kind, size, mtime_ns, ctime_ns, inode, device, mode, state, changed_generation)
                 VALUES (1, x'70', 3, 0, 1, 1, 2, 1, 4516, 'pending', 1)",
                [],
            )
            .is_err());
    }
    let c = Catalog::open(&path).unwrap();
    assert_eq!(c.schema_version().unwrap(), latest_schema_version());
    let count = |sql: &str| -> i64 { c.connection().query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM files"), 1);
    assert_eq!(
        count("SELECT count(*) FROM file_blobs"),
        1,
        "not cascaded away"
    );
    assert_eq!(count("SELECT count(*) FROM queue"), 1, "not cascaded away");
    c.connection()
        .execute(
            "INSERT INTO files (source_id, path, kind, size, mtime_ns, ctime_ns, inode, device, mode, state, changed_generation)
             VALUES (1, x'70', 3, 0, 1, 1, 2, 1, 4516, 'pending', 1)",
            [],
        )
        .unwrap();
    // References are still enforced after the migration.
    assert!(c
        .connection()
        .execute("INSERT INTO file_blobs VALUES (1, x'7a7a', x'00')", [])
        .is_err());
}

#[test]
fn uses_wal_and_normal_sync() {
    let t = tempfile::tempdir().unwrap();
    let c = Catalog::open(&t.path().join("c.db")).unwrap();
    let q = |sql: &str| -> String {
        c.connection()
            .query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
            .map(|v| format!("{v:?}"))
            .unwrap()
    };
    assert_eq!(q("PRAGMA journal_mode"), "Text(\"wal\")");
    assert_eq!(q("PRAGMA synchronous"), "Integer(1)");
    assert_eq!(q("PRAGMA foreign_keys"), "Integer(1)");
    assert_eq!(q("PRAGMA busy_timeout"), "Integer(10000)");
}

#[test]
fn unchanged_files_are_recognised_by_size_mtime_ctime_inode() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    for f in [
        "touched.CR3",
        "replaced.CR3",
        "chmod.CR3",
        "same.CR3",
        "sub/same2.CR3",
    ] {
        write(&root, f, b"0123456789");
    }
    let mut cat = Catalog::open_in_memory().unwrap();
    let first = plan(&mut cat, &root, true);
    assert_eq!(first.totals.new.files, 5);
    let source = first.source_id.unwrap();
    commit_all(&mut cat, source, 1);
    let mut ch = Changes::default();
    let r = plan_with(&mut cat, &root, false, &mut ch);
    assert_eq!(
        (
            r.totals.unchanged.files,
            r.totals.modified.files,
            r.totals.new.files
        ),
        (5, 0, 0)
    );

    // Touch the mtime only.
    let f = fs::File::options()
        .write(true)
        .open(root.join("touched.CR3"))
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    // Replace with a same-size file with the same mtime: a new inode.
    let old = fs::metadata(root.join("replaced.CR3")).unwrap();
    write(&root, "replacement.tmp", b"9876543210");
    let f = fs::File::options()
        .write(true)
        .open(root.join("replacement.tmp"))
        .unwrap();
    f.set_modified(old.modified().unwrap()).unwrap();
    drop(f);
    fs::rename(root.join("replacement.tmp"), root.join("replaced.CR3")).unwrap();
    let new = fs::metadata(root.join("replaced.CR3")).unwrap();
    assert_eq!(
        (new.len(), new.mtime(), new.mtime_nsec()),
        (old.len(), old.mtime(), old.mtime_nsec())
    );
    assert_ne!(new.ino(), old.ino());
    // A permission change moves only the ctime.
    fs::set_permissions(root.join("chmod.CR3"), fs::Permissions::from_mode(0o600)).unwrap();

    let mut ch = Changes::default();
    let r = plan_with(&mut cat, &root, false, &mut ch);
    let mut modified = ch.of(Change::Modified);
    modified.sort();
    assert_eq!(modified, vec!["chmod.CR3", "replaced.CR3", "touched.CR3"]);
    assert_eq!(ch.of(Change::Unchanged), vec!["same.CR3", "sub/same2.CR3"]);
    assert_eq!(r.totals.modified.bytes, 30);

    // The single-path lookup the watcher will use.
    let rec = cat.lookup(source, &rel("sub/same2.CR3")).unwrap().unwrap();
    assert_eq!(
        (rec.kind, rec.size, rec.state),
        (EntryKind::File, 10, FileState::Committed)
    );
    let dir = cat.lookup(source, &rel("sub")).unwrap().unwrap();
    assert_eq!(dir.kind, EntryKind::Dir);
    assert!(cat.lookup(source, &rel("nope")).unwrap().is_none());
}

#[test]
fn each_metadata_field_counts_except_the_device() {
    let e = Entry {
        rel: rel("a"),
        kind: EntryKind::File,
        size: 10,
        mtime_ns: 1_000,
        ctime_ns: 2_000,
        inode: 42,
        device: 7,
        nlink: 1,
        mode: 0o100644,
        symlink_target: None,
    };
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "a", b"x");
    let mut cat = Catalog::open_in_memory().unwrap();
    let src = plan(&mut cat, t.path(), true).source_id.unwrap();
    let mut r = cat.lookup(src, &rel("a")).unwrap().unwrap();
    (r.size, r.mtime_ns, r.ctime_ns, r.inode, r.device) = (10, 1_000, 2_000, 42, 7);
    assert!(r.same_metadata(&e));
    assert!(
        !r.same_metadata(&Entry {
            inode: 43,
            ..e.clone()
        }),
        "same size and mtime, other inode"
    );
    assert!(!r.same_metadata(&Entry {
        mtime_ns: 1_001,
        ..e.clone()
    }));
    assert!(!r.same_metadata(&Entry {
        ctime_ns: 2_001,
        ..e.clone()
    }));
    assert!(!r.same_metadata(&Entry {
        size: 11,
        ..e.clone()
    }));
    assert!(!r.same_metadata(&Entry {
        kind: EntryKind::Symlink,
        ..e.clone()
    }));
    assert!(
        r.same_metadata(&Entry {
            device: 8,
            ..e.clone()
        }),
        "a remounted share keeps its files"
    );
}

struct PanicAfter(usize);
impl PlanObserver for PanicAfter {
    fn on_change(&mut self, _c: Change, _r: &RelPath, _k: EntryKind, _s: u64) {
        if self.0 == 0 {
            panic!("simulated crash");
        }
        self.0 -= 1;
    }
}

#[test]
fn deletions_happen_only_when_a_scan_completes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    for i in 0..40 {
        write(&root, &format!("f{i:02}.jpg"), b"x");
    }
    let mut cat = Catalog::open_in_memory().unwrap();
    let source = plan(&mut cat, &root, true).source_id.unwrap();
    commit_all(&mut cat, source, 1);
    fs::remove_file(root.join("f00.jpg")).unwrap();
    fs::remove_file(root.join("f30.jpg")).unwrap();

    // A scan that dies half-way: small batches so that some are written before the "crash".
    let opts = PlanOptions {
        update_catalog: true,
        flush_rows: 1,
        ..PlanOptions::default()
    };
    let m = common::matcher(&root, common::no_defaults());
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        keepsake_agent::detect::plan::run(
            &mut cat,
            &root,
            m.clone(),
            ScanOptions::default(),
            &opts,
            &mut PanicAfter(20),
        )
    }));
    assert!(crashed.is_err());
    let running = cat
        .running_scan(source)
        .unwrap()
        .expect("the scan is left running");
    assert!(running.resume_after.is_some());
    let missing: i64 = cat
        .connection()
        .query_row("SELECT count(*) FROM scan_missing", [], |r| r.get(0))
        .unwrap();
    assert_eq!(missing, 1, "f00 was seen missing…");
    let rec = cat.lookup(source, &rel("f00.jpg")).unwrap().unwrap();
    assert_eq!(
        rec.state,
        FileState::Committed,
        "…but is not deleted while the scan is incomplete"
    );
    assert_eq!(
        cat.count_files(source, Some(FileState::Deleted)).unwrap(),
        0
    );
    assert!(cat.verify().unwrap().is_ok());

    // The next run resumes and completes: now both are deletions, queued for the next commit.
    let r = plan(&mut cat, &root, true);
    let scan = r.scan.as_ref().unwrap();
    assert!(scan.resumed);
    assert_eq!(scan.completion.deleted, 2);
    assert_eq!(r.totals.deleted.files, 2);
    assert_eq!(r.totals.unchanged.files, 38);
    assert_eq!(
        cat.lookup(source, &rel("f00.jpg")).unwrap().unwrap().state,
        FileState::Deleted
    );
    assert_eq!(
        cat.lookup(source, &rel("f30.jpg")).unwrap().unwrap().state,
        FileState::Deleted
    );
    let due = cat.due_work(now_ms() + 1, 100).unwrap();
    let deleted: Vec<_> = due
        .iter()
        .filter(|q| q.reason == QueueReason::Deleted)
        .collect();
    assert_eq!(deleted.len(), 2);
    assert!(cat.verify().unwrap().is_ok());
    // Committing the deletions removes the rows.
    commit_all(&mut cat, source, 2);
    assert!(cat.lookup(source, &rel("f00.jpg")).unwrap().is_none());
    assert_eq!(cat.queue_len().unwrap(), 0);

    // A file that never reached the server simply disappears from the catalog.
    write(&root, "new.jpg", b"n");
    plan(&mut cat, &root, true);
    fs::remove_file(root.join("new.jpg")).unwrap();
    let r = plan(&mut cat, &root, true);
    assert_eq!(r.totals.dropped, 1);
    assert_eq!(r.totals.deleted.entries, 0);
    assert!(cat.lookup(source, &rel("new.jpg")).unwrap().is_none());
    assert!(cat.verify().unwrap().is_ok());
}

#[test]
fn unreadable_folders_hide_their_content_instead_of_deleting_it() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    write(&root, "a.jpg", b"a");
    write(&root, "locked/b.jpg", b"b");
    write(&root, "locked/deeper/c.jpg", b"c");
    write(&root, "locked.txt", b"l");
    write(&root, "z.jpg", b"z");
    let mut cat = Catalog::open_in_memory().unwrap();
    let source = plan(&mut cat, &root, true).source_id.unwrap();
    commit_all(&mut cat, source, 1);
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let r = common::unprivileged(|| plan(&mut cat, &root, true));
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(r.totals.scan.issues, 1, "{:?}", r.issues);
    assert_eq!(r.issues[0].rel.to_string(), "locked");
    assert_eq!(r.totals.deleted.entries, 0);
    assert_eq!(r.totals.unverified.files, 2);
    assert_eq!(r.totals.unverified.dirs, 1);
    assert_eq!(r.scan.as_ref().unwrap().completion.deleted, 0);
    assert_eq!(
        cat.lookup(source, &rel("locked/deeper/c.jpg"))
            .unwrap()
            .unwrap()
            .state,
        FileState::Committed
    );
    assert_eq!(
        cat.recent_jobs(1).unwrap()[0].status,
        JobStatus::CompletedWithErrors
    );
}

#[test]
fn server_blobs_count_only_under_the_current_epoch() {
    let mut cat = Catalog::open_in_memory().unwrap();
    let a = [0xaa; 32];
    let b = [0xbb; 32];
    assert_eq!(cat.server_epoch().unwrap(), 0);
    cat.record_server_blobs(&[BlobRef { id: a, len: 100 }, BlobRef { id: b, len: 200 }])
        .unwrap();
    assert!(cat.server_has_blob(&a).unwrap());
    assert_eq!(
        cat.unknown_blobs(&[a, b, [0xcc; 32]]).unwrap(),
        vec![[0xcc; 32]]
    );
    // The server ran a garbage collection: nothing confirmed before counts any more.
    cat.set_server_epoch(7).unwrap();
    assert!(!cat.server_has_blob(&a).unwrap());
    assert_eq!(cat.unknown_blobs(&[a, b]).unwrap(), vec![a, b]);
    cat.record_server_blobs(&[BlobRef { id: a, len: 100 }])
        .unwrap();
    assert!(cat.server_has_blob(&a).unwrap());
    assert_eq!(cat.prune_stale_blobs().unwrap(), 1);
    assert!(cat.server_has_blob(&a).unwrap());
}

#[test]
fn queue_orders_by_priority_and_backs_off() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "normal.jpg", b"n");
    write(t.path(), "wedding/critical.CR3", b"c");
    let mut cat = Catalog::open_in_memory().unwrap();
    let source = plan(&mut cat, t.path(), true).source_id.unwrap();
    assert_eq!(cat.queue_len().unwrap(), 3, "two files and a folder");
    cat.enqueue(
        source,
        b"wedding/critical.CR3",
        QueueReason::New,
        Priority::Critical,
    )
    .unwrap();
    let due = cat.due_work(now_ms() + 1, 10).unwrap();
    assert_eq!(due[0].key, b"wedding/critical.CR3");
    assert_eq!(due[0].priority, Priority::Critical);
    let later = now_ms() + 60_000;
    cat.defer(
        source,
        b"wedding/critical.CR3",
        later,
        "network unreachable",
    )
    .unwrap();
    let due = cat.due_work(now_ms() + 1, 10).unwrap();
    assert!(due.iter().all(|q| q.key != b"wedding/critical.CR3"));
    let due = cat.due_work(later, 10).unwrap();
    let item = due
        .iter()
        .find(|q| q.key == b"wedding/critical.CR3")
        .unwrap();
    assert_eq!(item.attempts, 1);
    assert_eq!(item.last_error.as_deref(), Some("network unreachable"));
    let rec = cat
        .lookup(source, &rel("wedding/critical.CR3"))
        .unwrap()
        .unwrap();
    assert_eq!(rec.state, FileState::Error);
    assert!(cat.verify().unwrap().is_ok());
}

#[test]
fn a_commit_of_a_file_that_changed_meanwhile_stays_pending() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "catalog.lrcat", b"v1");
    let mut cat = Catalog::open_in_memory().unwrap();
    let source = plan(&mut cat, t.path(), true).source_id.unwrap();
    let read = cat.lookup(source, &rel("catalog.lrcat")).unwrap().unwrap();
    // The pipeline read v1; meanwhile Lightroom wrote v2 and a scan saw it.
    write(t.path(), "catalog.lrcat", b"v2 longer");
    plan(&mut cat, t.path(), true);
    let blobs = vec![BlobRef {
        id: [1; 32],
        len: 2,
    }];
    cat.record_commit(
        source,
        1,
        &[CommitEntry::Version {
            key: read.key.clone(),
            size: read.size,
            mtime_ns: read.mtime_ns,
            ctime_ns: read.ctime_ns,
            inode: read.inode,
            content_hash: Some([9; 32]),
            blobs: blobs.clone(),
        }],
    )
    .unwrap();
    let rec = cat.lookup(source, &rel("catalog.lrcat")).unwrap().unwrap();
    assert_eq!(rec.state, FileState::Pending, "v2 still needs backing up");
    assert_eq!(rec.committed_seq, Some(1));
    assert_eq!(cat.blob_list(source, &rec.key).unwrap(), Some(blobs));
    let r = plan(&mut cat, t.path(), false);
    assert_eq!(r.totals.modified.files, 1);
    assert!(cat.verify().unwrap().is_ok());
}

#[test]
fn jobs_record_scans_and_interruptions() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "a", b"a");
    let mut cat = Catalog::open_in_memory().unwrap();
    let source = plan(&mut cat, t.path(), true).source_id.unwrap();
    let jobs = cat.recent_jobs(10).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].kind.as_str(), jobs[0].status),
        ("scan", JobStatus::Completed)
    );
    assert!(jobs[0]
        .counters
        .as_deref()
        .unwrap_or("")
        .contains("\"new\""));
    // A scan left running by a dead process is continued by the next, which marks the old job.
    let s = cat.begin_scan(source).unwrap();
    assert!(!s.resumed);
    let s2 = cat.begin_scan(source).unwrap();
    assert!(s2.resumed);
    assert_eq!(s2.scan_id, s.scan_id);
    let jobs = cat.recent_jobs(10).unwrap();
    assert_eq!(jobs[1].status, JobStatus::Interrupted);
    assert_eq!(jobs[0].status, JobStatus::Running);
    assert!(cat.abandon_running_scan(source).unwrap());
    assert!(cat.running_scan(source).unwrap().is_none());
    let id = cat.start_job("backup", Some(source)).unwrap();
    cat.finish_job(id, JobStatus::Failed, None, Some("server unreachable"))
        .unwrap();
    assert_eq!(
        cat.recent_jobs(1).unwrap()[0].error.as_deref(),
        Some("server unreachable")
    );
}

#[test]
fn one_writer_at_a_time() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("catalog.lock");
    let first = WriterLock::acquire(&p).unwrap();
    assert!(matches!(
        WriterLock::acquire(&p),
        Err(CatalogError::Locked(_))
    ));
    drop(first);
    WriterLock::acquire(&p).unwrap();
}
