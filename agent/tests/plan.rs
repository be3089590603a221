//! Plan counts on a small tree before and after edits.
#![cfg(unix)]

mod common;

use std::fs;

use common::{commit_all, plan, write};
use keepsake_agent::catalog::{Catalog, FileState};
use keepsake_agent::detect::plan::Tally;

fn t(files: u64, dirs: u64, bytes: u64) -> (u64, u64, u64) {
    (files, dirs, bytes)
}
fn of(x: &Tally) -> (u64, u64, u64) {
    (x.files, x.dirs, x.bytes)
}

#[test]
fn plan_counts_before_and_after_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("Weddings");
    write(&root, "Smith/RAW/IMG_1.CR3", &[1; 1000]);
    write(&root, "Smith/RAW/IMG_2.CR3", &[2; 1000]);
    write(&root, "Smith/RAW/IMG_2.xmp", &[3; 100]);
    write(&root, "Smith/Edits/IMG_1.jpg", &[4; 500]);
    write(&root, "contracts/smith.pdf", &[5; 300]);
    write(&root, "Lightroom/Cat.lrcat", &[6; 2000]);
    write(&root, ".DS_Store", &[0; 10]);
    write(&root, "Lightroom/Cat Previews.lrdata/0/p.lrprev", &[0; 64]);
    let mut cat = Catalog::open_in_memory().unwrap();

    // Nothing in the catalog: everything is new; the exclusions are counted by rule.
    let r = plan(&mut cat, &root, false);
    assert_eq!(of(&r.totals.new), t(6, 5, 4900));
    assert_eq!(r.totals.new.entries, 11);
    assert_eq!(of(&r.totals.unchanged), t(0, 0, 0));
    assert_eq!(r.totals.scan.excluded, 2);
    assert_eq!(
        r.totals.scan.excluded_by_rule["default: .DS_Store"].bytes,
        10
    );
    assert_eq!(
        r.totals.scan.excluded_by_rule["default: *.lrdata/"].count,
        1
    );
    assert!(!r.catalog_updated);
    assert_eq!(cat.sources().unwrap().len(), 0, "a dry run writes nothing");

    // Record and commit: everything is unchanged.
    let r = plan(&mut cat, &root, true);
    assert_eq!(of(&r.totals.new), t(6, 5, 4900));
    let source = r.source_id.unwrap();
    commit_all(&mut cat, source, 1);
    let r = plan(&mut cat, &root, false);
    assert_eq!(of(&r.totals.unchanged), t(6, 5, 4900));
    assert_eq!(of(&r.totals.new), t(0, 0, 0));

    // Edits: one new, one modified, one deleted, one renamed.
    write(&root, "Smith/RAW/IMG_3.CR3", &[7; 1000]);
    write(&root, "Smith/RAW/IMG_2.xmp", &[3; 150]);
    fs::remove_file(root.join("contracts/smith.pdf")).unwrap();
    fs::rename(
        root.join("Smith/Edits/IMG_1.jpg"),
        root.join("Smith/Edits/IMG_1-final.jpg"),
    )
    .unwrap();
    for _ in 0..2 {
        // Read-only plans are repeatable.
        let r = plan(&mut cat, &root, false);
        assert_eq!(of(&r.totals.new), t(2, 0, 1500));
        assert_eq!(
            of(&r.totals.modified),
            t(1, 3, 150),
            "the xmp, and the three folders whose listing changed"
        );
        assert_eq!(of(&r.totals.deleted), t(2, 0, 800));
        assert_eq!(of(&r.totals.unchanged), t(3, 2, 4000));
    }
    // Recording it gives the same plan, queues the work and marks the deletions.
    let r = plan(&mut cat, &root, true);
    assert_eq!(
        (
            r.totals.new.files,
            r.totals.modified.files,
            r.totals.deleted.files
        ),
        (2, 1, 2)
    );
    assert_eq!(r.scan.as_ref().unwrap().completion.deleted, 2);
    assert_eq!(
        cat.count_files(source, Some(FileState::Deleted)).unwrap(),
        2
    );
    assert_eq!(cat.queue_len().unwrap(), 2 + 1 + 3 + 2);
    // Until a backup commits, the plan still says the same.
    let r = plan(&mut cat, &root, false);
    assert_eq!(
        (
            r.totals.new.files,
            r.totals.modified.files,
            r.totals.deleted.files
        ),
        (2, 1, 2)
    );
    commit_all(&mut cat, source, 2);
    let r = plan(&mut cat, &root, false);
    assert_eq!(of(&r.totals.unchanged), t(6, 5, 5650));
    assert_eq!(
        r.totals.new.entries + r.totals.modified.entries + r.totals.deleted.entries,
        0
    );
    assert_eq!(cat.queue_len().unwrap(), 0);
    assert!(cat.verify().unwrap().is_ok());
}

#[test]
fn a_file_excluded_then_included_again_is_unchanged_again() {
    use keepsake_agent::detect::plan::{NoObserver, PlanOptions};
    use keepsake_agent::detect::scan::ScanOptions;
    use keepsake_agent::exclude::{ExcludeConfig, RuleList};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("src");
    write(&root, "a.mov", b"a");
    write(&root, "b.jpg", b"b");
    let mut cat = Catalog::open_in_memory().unwrap();
    let source = plan(&mut cat, &root, true).source_id.unwrap();
    commit_all(&mut cat, source, 1);
    // The organisation starts excluding videos: the committed a.mov leaves the backup state.
    let config = ExcludeConfig {
        local: vec![RuleList {
            origin: "t".into(),
            patterns: vec!["*.mov".into()],
        }],
        ..ExcludeConfig::default()
    };
    let opts = PlanOptions {
        update_catalog: true,
        ..PlanOptions::default()
    };
    let m = common::matcher(&root, config);
    let r = keepsake_agent::detect::plan::run(
        &mut cat,
        &root,
        m,
        ScanOptions::default(),
        &opts,
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(r.totals.deleted.files, 1);
    assert_eq!(
        cat.count_files(source, Some(FileState::Deleted)).unwrap(),
        1
    );
    // The rule is dropped before a backup committed the deletion: a.mov is back, unchanged,
    // and its queued deletion is withdrawn.
    let r = plan(&mut cat, &root, true);
    assert_eq!(
        (
            r.totals.unchanged.files,
            r.totals.deleted.files,
            r.totals.modified.files
        ),
        (2, 0, 0)
    );
    assert_eq!(
        cat.count_files(source, Some(FileState::Committed)).unwrap(),
        2
    );
    assert_eq!(cat.queue_len().unwrap(), 0);
    assert!(cat.verify().unwrap().is_ok());
}
