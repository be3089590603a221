//! Rescan of an unchanged tree of 100,000 small files against a committed catalog: the stat walk,
//! the exclusion matching and the merge with the catalog, read-only and recording the scan.
//!
//! `cargo bench -p keepsake-agent --bench rescan`; `KEEPSAKE_BENCH_FILES` changes the count.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use keepsake_agent::catalog::{BlobRef, Catalog, CommitEntry, FileState};
use keepsake_agent::detect::plan::{self, NoObserver, PlanOptions, PlanReport};
use keepsake_agent::detect::scan::ScanOptions;
use keepsake_agent::exclude::{ExcludeConfig, Matcher};

/// User + system CPU time of this process, in seconds.
#[cfg(not(unix))]
fn cpu_seconds() -> f64 {
    0.0
}

/// User + system CPU time of this process, in seconds.
#[cfg(unix)]
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let r = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        r
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn files_wanted() -> usize {
    std::env::var("KEEPSAKE_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn build_tree(root: &Path, n: usize) {
    let per_dir = 250;
    for i in 0..n {
        let dir = root.join(format!(
            "wedding-{:03}/card-{}",
            i / per_dir / 10,
            (i / per_dir) % 10
        ));
        if i % per_dir == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        fs::write(dir.join(format!("IMG_{i:06}.CR3")), b"raw").unwrap();
    }
}

fn commit_everything(cat: &mut Catalog, source: i64) {
    let mut after = Vec::new();
    let mut entries = Vec::new();
    loop {
        let rows = cat.records_after(source, &after, 10_000).unwrap();
        let Some(last) = rows.last() else { break };
        after = last.key.clone();
        for r in rows.into_iter().filter(|r| r.state != FileState::Committed) {
            entries.push(CommitEntry::Version {
                key: r.key.clone(),
                size: r.size,
                mtime_ns: r.mtime_ns,
                ctime_ns: r.ctime_ns,
                inode: r.inode,
                content_hash: Some([1; 32]),
                blobs: vec![BlobRef {
                    id: [2; 32],
                    len: r.size,
                }],
            });
        }
    }
    cat.record_commit(source, 1, &entries).unwrap();
}

fn run(cat: &mut Catalog, root: &Path, matcher: &Arc<Matcher>, update: bool) -> PlanReport {
    let opts = PlanOptions {
        update_catalog: update,
        ..PlanOptions::default()
    };
    plan::run(
        cat,
        root,
        Arc::clone(matcher),
        ScanOptions::default(),
        &opts,
        &mut NoObserver,
    )
    .unwrap()
}

fn rescan(c: &mut Criterion) {
    let n = files_wanted();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    let t0 = Instant::now();
    build_tree(&root, n);
    eprintln!("created {n} files in {:.1?}", t0.elapsed());
    let mut cat = Catalog::open(&tmp.path().join("catalog.db")).unwrap();
    let matcher = Arc::new(Matcher::new(&root, &ExcludeConfig::default()));
    let t0 = Instant::now();
    let first = run(&mut cat, &root, &matcher, true);
    eprintln!(
        "first scan (recording {} entries): {:.1?}",
        first.totals.new.entries,
        t0.elapsed()
    );
    commit_everything(&mut cat, first.source_id.unwrap());
    let check = run(&mut cat, &root, &matcher, false);
    assert_eq!(check.totals.unchanged.files as usize, n);
    assert_eq!(check.totals.new.entries + check.totals.modified.entries, 0);

    // Wall time depends on what else the machine runs; CPU time (user + system) much less so.
    for update in [false, true] {
        let mut samples = Vec::new();
        for _ in 0..7 {
            let (t, c0) = (Instant::now(), cpu_seconds());
            let r = run(&mut cat, &root, &matcher, update);
            samples.push((t.elapsed().as_secs_f64(), cpu_seconds() - c0));
            assert_eq!(r.totals.unchanged.files as usize, n);
        }
        samples.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (wall, cpu) = samples[samples.len() / 2];
        let best_wall = samples.iter().map(|s| s.0).fold(f64::INFINITY, f64::min);
        eprintln!(
            "rescan of {n} unchanged files (update_catalog={update}): median cpu {:.0} ms, its wall {:.0} ms, best wall {:.0} ms",
            cpu * 1e3,
            wall * 1e3,
            best_wall * 1e3
        );
    }

    let mut g = c.benchmark_group("rescan_unchanged");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(3));
    g.bench_function(format!("{n}_files_read_only"), |b| {
        b.iter(|| run(&mut cat, &root, &matcher, false))
    });
    g.bench_function(format!("{n}_files_update_catalog"), |b| {
        b.iter(|| run(&mut cat, &root, &matcher, true))
    });
    g.finish();
}

criterion_group!(benches, rescan);
criterion_main!(benches);
