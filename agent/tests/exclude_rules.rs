//! Exclusion rules: gitignore semantics, layers, defaults, markers, size limit — on real files.
#![cfg(unix)]

mod common;

use std::fs;
use std::path::Path;

use common::{matcher, mkdir, scan_all, write};
use keepsake_agent::detect::scan::{ScanEvent, ScanOptions};
use keepsake_agent::exclude::{
    ExcludeConfig, Matcher, RuleList, RuleSource, CACHEDIR_TAG_SIGNATURE,
};
use keepsake_agent::relpath::RelPath;

/// One row of a rule table: the path, whether it is a folder, the expected answer and the
/// pattern that should have decided (None: no rule matched).
struct Case {
    path: &'static str,
    dir: bool,
    excluded: bool,
    pattern: Option<&'static str>,
}

const fn c(path: &'static str, dir: bool, excluded: bool, pattern: Option<&'static str>) -> Case {
    Case {
        path,
        dir,
        excluded,
        pattern,
    }
}

fn rel(s: &str) -> RelPath {
    RelPath::from_bytes(s.as_bytes().to_vec()).unwrap()
}

fn check(m: &Matcher, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let d = m.decide(&rel(case.path), case.dir);
        let pattern = d.rule.as_ref().map(|r| r.pattern.as_str());
        if d.excluded != case.excluded || pattern != case.pattern {
            failures.push(format!(
                "{}{}: expected excluded={} by {:?}, got excluded={} by {:?}",
                case.path,
                if case.dir { "/" } else { "" },
                case.excluded,
                case.pattern,
                d.excluded,
                pattern
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "rule table failures:\n{}",
        failures.join("\n")
    );
}

fn local(patterns: &[&str]) -> ExcludeConfig {
    ExcludeConfig {
        use_defaults: false,
        local: vec![RuleList {
            origin: "test".into(),
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
        }],
        ..ExcludeConfig::default()
    }
}

#[test]
fn negation_reincludes_a_file() {
    let t = tempfile::tempdir().unwrap();
    let m = matcher(t.path(), local(&["*.jpg", "!keep.jpg", "!/top/*.jpg"]));
    check(
        &m,
        &[
            c("a/x.jpg", false, true, Some("*.jpg")),
            c("a/keep.jpg", false, false, Some("!keep.jpg")),
            c("keep.jpg", false, false, Some("!keep.jpg")),
            c("top/y.jpg", false, false, Some("!/top/*.jpg")),
            c("a/top/y.jpg", false, true, Some("*.jpg")),
            c("a/x.CR3", false, false, None),
        ],
    );
    let d = m.decide(&rel("a/keep.jpg"), false);
    let rule = d.rule.unwrap();
    assert!(rule.negated);
    assert_eq!(rule.line, Some(2));
    assert_eq!(
        rule.source,
        RuleSource::Local {
            origin: "test".into()
        }
    );
}

#[test]
fn directory_only_patterns_match_only_folders() {
    let t = tempfile::tempdir().unwrap();
    let m = matcher(t.path(), local(&["build/", "exports/"]));
    check(
        &m,
        &[
            c("build", true, true, Some("build/")),
            c("build", false, false, None),
            c("a/b/build", true, true, Some("build/")),
            c("exports/final.jpg", false, true, Some("exports/")),
            c("a/exports/x/y.jpg", false, true, Some("exports/")),
        ],
    );
    // Inherited from the folder, and said so.
    let d = m.decide(&rel("a/exports/x/y.jpg"), false);
    assert_eq!(d.rule.unwrap().via, Some(rel("a/exports")));
}

#[test]
fn anchored_patterns_match_from_the_root_only() {
    let t = tempfile::tempdir().unwrap();
    let m = matcher(
        t.path(),
        local(&["/top.txt", "/Clients/*/Invoices/", "docs/draft.md"]),
    );
    check(
        &m,
        &[
            c("top.txt", false, true, Some("/top.txt")),
            c("a/top.txt", false, false, None),
            c(
                "Clients/Smith/Invoices",
                true,
                true,
                Some("/Clients/*/Invoices/"),
            ),
            c("Clients/Smith/Jones/Invoices", true, false, None),
            // A slash in the middle anchors too (gitignore rule).
            c("docs/draft.md", false, true, Some("docs/draft.md")),
            c("x/docs/draft.md", false, false, None),
        ],
    );
}

#[test]
fn double_star_patterns() {
    let t = tempfile::tempdir().unwrap();
    let m = matcher(
        t.path(),
        local(&["a/**/z.raw", "**/cache", "logs/**", "**/tmp/**/*.bak"]),
    );
    check(
        &m,
        &[
            c("a/z.raw", false, true, Some("a/**/z.raw")),
            c("a/b/c/z.raw", false, true, Some("a/**/z.raw")),
            c("b/a/z.raw", false, false, None),
            c("x/y/cache", true, true, Some("**/cache")),
            c("cache", false, true, Some("**/cache")),
            c("logs/2024/x.log", false, true, Some("logs/**")),
            // `logs/**` matches everything inside logs, not logs itself.
            c("logs", true, false, None),
            c("p/tmp/q/r/s.bak", false, true, Some("**/tmp/**/*.bak")),
            c("p/tmp/s.bak", false, true, Some("**/tmp/**/*.bak")),
        ],
    );
}

#[test]
fn negation_cannot_reinclude_inside_an_excluded_folder() {
    let t = tempfile::tempdir().unwrap();
    let m = matcher(t.path(), local(&["private/", "!private/keep.txt"]));
    check(
        &m,
        &[
            c("private/keep.txt", false, true, Some("private/")),
            c("private", true, true, Some("private/")),
        ],
    );
    // The scanner agrees: it never descends into private/.
    write(t.path(), "private/keep.txt", b"k");
    write(t.path(), "public.txt", b"p");
    let (events, stats) = scan_all(t.path(), m, ScanOptions::default());
    assert_eq!(common::entry_paths(&events), vec!["public.txt"]);
    assert_eq!(stats.excluded, 1);
}

#[test]
fn nested_ignore_files_override_their_parents() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(
        root,
        ".keepsakeignore",
        b"# studio rules\n*.psd\nscratch/\n",
    );
    write(root, "retouch/.keepsakeignore", b"!*.psd\n/only-here.txt\n");
    write(root, "retouch/deep/.keepsakeignore", b"*.psd\n");
    let m = matcher(
        root,
        ExcludeConfig {
            use_defaults: false,
            ..ExcludeConfig::default()
        },
    );
    check(
        &m,
        &[
            c("a.psd", false, true, Some("*.psd")),
            c("x/a.psd", false, true, Some("*.psd")),
            c("retouch/a.psd", false, false, Some("!*.psd")),
            c("retouch/sub/a.psd", false, false, Some("!*.psd")),
            c("retouch/deep/a.psd", false, true, Some("*.psd")),
            // Patterns of a nested file are relative to its folder.
            c("retouch/only-here.txt", false, true, Some("/only-here.txt")),
            c("retouch/sub/only-here.txt", false, false, None),
            c("only-here.txt", false, false, None),
            c("retouch/scratch", true, true, Some("scratch/")),
        ],
    );
    let d = m.decide(&rel("retouch/a.psd"), false);
    let r = d.rule.unwrap();
    assert_eq!(
        r.source,
        RuleSource::IgnoreFile {
            file: rel("retouch/.keepsakeignore")
        }
    );
    assert_eq!(r.line, Some(1));
    let d = m.decide(&rel("x/a.psd"), false);
    let r = d.rule.unwrap();
    assert_eq!(
        r.source,
        RuleSource::IgnoreFile {
            file: rel(".keepsakeignore")
        }
    );
    assert_eq!(r.line, Some(2), "comment lines count");
}

#[test]
fn layers_override_in_order_defaults_server_local_ignore_file() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let mut config = ExcludeConfig {
        server: vec!["!important.tmp".into(), "*.mov".into()],
        local: vec![RuleList {
            origin: "local".into(),
            patterns: vec!["important.tmp".into(), "!keep.mov".into()],
        }],
        ..ExcludeConfig::default()
    };
    let m = matcher(root, config.clone());
    check(
        &m,
        &[
            c("x.tmp", false, true, Some("*.tmp")),
            c("important.tmp", false, true, Some("important.tmp")),
            c("a.mov", false, true, Some("*.mov")),
            c("keep.mov", false, false, Some("!keep.mov")),
        ],
    );
    assert_eq!(
        m.decide(&rel("x.tmp"), false).rule.unwrap().source,
        RuleSource::Default
    );
    assert_eq!(
        m.decide(&rel("a.mov"), false).rule.unwrap().source,
        RuleSource::Server
    );
    // The server re-includes what the defaults exclude when the local layer does not object.
    config.local.clear();
    let m = matcher(root, config);
    check(
        &m,
        &[c("important.tmp", false, false, Some("!important.tmp"))],
    );
    // A folder's ignore file beats every global layer.
    write(root, "job/.keepsakeignore", b"!a.mov\n");
    check(
        &m,
        &[
            c("job/a.mov", false, false, Some("!a.mov")),
            c("a.mov", false, true, Some("*.mov")),
        ],
    );
}

#[test]
fn photographer_defaults_exclude_caches_but_never_catalogs_or_sidecars() {
    let t = tempfile::tempdir().unwrap();
    let m = matcher(t.path(), ExcludeConfig::default());
    check(
        &m,
        &[
            c(".DS_Store", false, true, Some(".DS_Store")),
            c("Wedding/.DS_Store", false, true, Some(".DS_Store")),
            c("Wedding/Thumbs.db", false, true, Some("Thumbs.db")),
            c("Wedding/THUMBS.DB", false, true, Some("Thumbs.db")),
            c("Wedding/desktop.ini", false, true, Some("desktop.ini")),
            c("Card/._IMG_0001.CR3", false, true, Some("._*")),
            c(".Spotlight-V100", true, true, Some(".Spotlight-V100/")),
            c(".Trashes", true, true, Some(".Trashes/")),
            c(".fseventsd", true, true, Some(".fseventsd/")),
            c("$RECYCLE.BIN", true, true, Some("$RECYCLE.BIN/")),
            c("$Recycle.Bin", true, true, Some("$RECYCLE.BIN/")),
            c(
                "Lightroom/Lightroom Catalog Previews.lrdata",
                true,
                true,
                Some("*.lrdata/"),
            ),
            c(
                "Lightroom/Lightroom Catalog Smart Previews.lrdata",
                true,
                true,
                Some("*.lrdata/"),
            ),
            c(
                "Lightroom/Previews.lrdata/1/12/x.lrprev",
                false,
                true,
                Some("*.lrdata/"),
            ),
            c(
                "Lightroom/Lightroom Catalog.lrcat.lock",
                false,
                true,
                Some("*.lrcat.lock"),
            ),
            c(
                "Lightroom/Lightroom Catalog.lrcat-shm",
                false,
                true,
                Some("*.lrcat-shm"),
            ),
            c(
                "Smith/Capture/CaptureOne/Cache",
                true,
                true,
                Some("**/CaptureOne/Cache/"),
            ),
            c(
                "Smith/Capture/CaptureOne/Cache/Proxies/IMG.cop",
                false,
                true,
                Some("**/CaptureOne/Cache/"),
            ),
            c(
                "C1/Studio.cocatalog/Cache",
                true,
                true,
                Some("**/*.cocatalog/Cache/"),
            ),
            c(
                "Downloads/contract.pdf.crdownload",
                false,
                true,
                Some("*.crdownload"),
            ),
            c("Downloads/gallery.zip.part", false, true, Some("*.part")),
            c("Clients/~$contract.docx", false, true, Some("~$*")),
            c(
                "Clients/.~lock.contract.odt#",
                false,
                true,
                Some(".~lock.*#"),
            ),
            c("Clients/.notes.txt.swp", false, true, Some("*.swp")),
            c("Export/render.TMP", false, true, Some("*.tmp")),
            // Real data: never excluded.
            c("Lightroom/Lightroom Catalog.lrcat", false, false, None),
            c("Lightroom/Lightroom Catalog.lrcat-wal", false, false, None),
            c(
                "Lightroom/Lightroom Catalog.lrcat-journal",
                false,
                false,
                None,
            ),
            c("Lightroom/Lightroom Catalog.lrcat-data", true, false, None),
            c(
                "Lightroom/Backups/2024-06-01 1200/Lightroom Catalog.lrcat.zip",
                false,
                false,
                None,
            ),
            c("Smith/RAW/IMG_0001.CR3", false, false, None),
            c("Smith/RAW/IMG_0001.xmp", false, false, None),
            c(
                "Smith/Capture/CaptureOne/Settings153/IMG_0001.CR3.cos",
                false,
                false,
                None,
            ),
            c("Smith/Smith.cosessiondb", false, false, None),
            c("C1/Studio.cocatalog/Studio.cocatalogdb", false, false, None),
            c(
                "C1/Studio.cocatalog/Studio.cocatalogdb-wal",
                false,
                false,
                None,
            ),
            c(
                "C1/Studio.cocatalog/Originals/2024/IMG.CR3",
                false,
                false,
                None,
            ),
            c("Clients/contract.docx", false, false, None),
            c(".keepsakeignore", false, false, None),
        ],
    );
    let r = m
        .decide(&rel("Lightroom/Previews.lrdata"), true)
        .rule
        .unwrap();
    assert_eq!(r.source, RuleSource::Default);
    assert!(r.reason.unwrap().contains("Lightroom"));
}

#[test]
fn defaults_can_be_switched_off_and_overridden() {
    let t = tempfile::tempdir().unwrap();
    let m = matcher(
        t.path(),
        ExcludeConfig {
            use_defaults: false,
            ..ExcludeConfig::default()
        },
    );
    check(
        &m,
        &[
            c(".DS_Store", false, false, None),
            c("x.lrdata", true, false, None),
        ],
    );
    // An organisation that wants smart previews re-includes them.
    let m = matcher(
        t.path(),
        ExcludeConfig {
            server: vec!["!*Smart Previews.lrdata/".into()],
            ..ExcludeConfig::default()
        },
    );
    check(
        &m,
        &[
            c(
                "LR/Cat Smart Previews.lrdata",
                true,
                false,
                Some("!*Smart Previews.lrdata/"),
            ),
            c("LR/Cat Previews.lrdata", true, true, Some("*.lrdata/")),
        ],
    );
}

#[test]
fn marker_files_exclude_their_folder() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "scratch/.nobackup", b"");
    write(root, "scratch/big.mov", b"m");
    let mut tag = CACHEDIR_TAG_SIGNATURE.to_vec();
    tag.extend_from_slice(b"\n# This file is a cache directory tag.\n");
    write(root, "app/cache/CACHEDIR.TAG", &tag);
    write(root, "app/cache/blob", b"b");
    write(root, "app/fake/CACHEDIR.TAG", b"not the signature");
    write(root, "app/fake/data", b"d");
    write(root, "custom/.ignore-me", b"");
    let m = matcher(
        root,
        ExcludeConfig {
            use_defaults: false,
            ..ExcludeConfig::default()
        },
    );
    check(
        &m,
        &[
            c("scratch", true, true, Some(".nobackup")),
            c("scratch/big.mov", false, true, Some(".nobackup")),
            c("app/cache", true, true, Some("CACHEDIR.TAG")),
            c("app/cache/blob", false, true, Some("CACHEDIR.TAG")),
            c("app/fake/data", false, false, None),
            c("custom/x", false, false, None),
        ],
    );
    let r = m.decide(&rel("scratch/big.mov"), false).rule.unwrap();
    assert_eq!(
        r.source,
        RuleSource::Marker {
            file: ".nobackup".into()
        }
    );
    assert_eq!(r.via, Some(rel("scratch")));
    // Configurable marker names; CACHEDIR.TAG can be switched off.
    let m = matcher(
        root,
        ExcludeConfig {
            use_defaults: false,
            marker_files: vec![".ignore-me".into()],
            cachedir_tag: false,
            ..ExcludeConfig::default()
        },
    );
    check(
        &m,
        &[
            c("custom/x", false, true, Some(".ignore-me")),
            c("scratch/big.mov", false, false, None),
            c("app/cache/blob", false, false, None),
        ],
    );
    // The scanner prunes marked folders.
    let m = matcher(
        root,
        ExcludeConfig {
            use_defaults: false,
            ..ExcludeConfig::default()
        },
    );
    let (events, stats) = scan_all(root, m, ScanOptions::default());
    let paths = common::entry_paths(&events);
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("scratch") || p.starts_with("app/cache")),
        "{paths:?}"
    );
    assert!(paths.contains(&"app/fake/data".to_string()));
    assert_eq!(stats.excluded_by_rule["marker: .nobackup"].count, 1);
    assert_eq!(stats.excluded_by_rule["marker: CACHEDIR.TAG"].count, 1);
}

#[test]
fn size_limit_excludes_large_files_only() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "small.jpg", &[0u8; 100]);
    write(root, "big.mov", &[0u8; 5000]);
    write(root, "edge.bin", &[0u8; 1000]);
    let m = matcher(
        root,
        ExcludeConfig {
            max_file_size: Some(1000),
            ..ExcludeConfig::default()
        },
    );
    assert!(
        !m.decide_with_size(&rel("small.jpg"), false, Some(100))
            .excluded
    );
    assert!(
        !m.decide_with_size(&rel("edge.bin"), false, Some(1000))
            .excluded
    );
    let d = m.decide_with_size(&rel("big.mov"), false, Some(5000));
    assert!(d.excluded);
    assert_eq!(
        d.rule.unwrap().source,
        RuleSource::SizeLimit { limit: 1000 }
    );
    assert!(
        !m.decide_with_size(&rel("folder"), true, Some(5000))
            .excluded
    );
    let (events, stats) = scan_all(root, m, ScanOptions::default());
    assert_eq!(common::entry_paths(&events), vec!["edge.bin", "small.jpg"]);
    assert_eq!(stats.excluded, 1);
    assert_eq!(stats.excluded_bytes, 5000);
    assert_eq!(stats.excluded_by_rule["size limit: > 1000 B"].bytes, 5000);
}

#[test]
fn invalid_patterns_are_reported_not_fatal() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, "sub/.keepsakeignore", b"*.a\n[z-a]\n*.b\n");
    let m = matcher(root, local(&["*.x", "[z-a]", "*.y"]));
    assert_eq!(m.problems().len(), 1, "{:?}", m.problems());
    assert!(m.problems()[0].to_string().contains("line 2"));
    check(
        &m,
        &[
            c("f.x", false, true, Some("*.x")),
            c("f.y", false, true, Some("*.y")),
        ],
    );
    // In an ignore file: the other lines still apply and the scanner reports the problem.
    check(
        &m,
        &[
            c("sub/f.a", false, true, Some("*.a")),
            c("sub/f.b", false, true, Some("*.b")),
        ],
    );
    write(root, "sub/f.a", b"");
    write(root, "sub/f.c", b"");
    let (events, stats) = scan_all(root, m, ScanOptions::default());
    assert_eq!(stats.issues, 1);
    assert!(events
        .iter()
        .any(|e| matches!(e, ScanEvent::Issue(i) if i.message.contains("sub/.keepsakeignore"))));
    assert!(common::entry_paths(&events).contains(&"sub/f.c".to_string()));
}

#[test]
fn query_api_caches_ignore_files_until_invalidated() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    mkdir(root, "job");
    let m = matcher(
        root,
        ExcludeConfig {
            use_defaults: false,
            ..ExcludeConfig::default()
        },
    );
    assert!(!m.decide(&rel("job/a.mov"), false).excluded);
    write(root, "job/.keepsakeignore", b"*.mov\n");
    assert!(
        !m.decide(&rel("job/a.mov"), false).excluded,
        "cached until invalidated"
    );
    m.invalidate_dir(&rel("job"));
    assert!(m.decide(&rel("job/a.mov"), false).excluded);
    fs::remove_file(root.join("job/.keepsakeignore")).unwrap();
    m.clear_cache();
    assert!(!m.decide(&rel("job/a.mov"), false).excluded);
}

/// Walks `dir` by hand, collecting (relative path, is_dir) pairs.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, bool)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let is_dir = e.file_type().unwrap().is_dir();
        out.push((
            p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
            is_dir,
        ));
        if is_dir {
            walk(root, &p, out);
        }
    }
}

#[test]
fn scanner_and_single_path_queries_agree() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    write(root, ".keepsakeignore", b"*.psd\n!keep/\n/drafts/\n");
    write(root, "a/.keepsakeignore", b"!*.psd\n*.txt\n");
    write(root, "a/b/.keepsakeignore", b"!notes.txt\nraw/\n");
    for f in [
        "x.psd",
        "x.jpg",
        "drafts/d.jpg",
        "a/drafts/d.jpg",
        "a/y.psd",
        "a/n.txt",
        "a/b/notes.txt",
        "a/b/other.txt",
        "a/b/raw/r.CR3",
        "a/b/c/raw/r.CR3",
        "a/b/c/z.psd",
        "keep/k.psd",
        ".DS_Store",
        "LR/Cat Previews.lrdata/p",
        "m/.nobackup",
        "m/x.jpg",
        "a/b/c/d/e/f.jpg",
        "x.tmp",
    ] {
        write(root, f, b"data");
    }
    let m = matcher(root, ExcludeConfig::default());
    let (events, _) = scan_all(root, m.clone(), ScanOptions::default());
    let yielded: Vec<String> = common::entry_paths(&events);
    let mut all = Vec::new();
    walk(root, root, &mut all);
    assert!(all.len() > 30);
    for (path, is_dir) in all {
        let key = if is_dir {
            format!("{path}/")
        } else {
            path.clone()
        };
        let by_query = !m.decide(&rel(&path), is_dir).excluded;
        let by_scan = yielded.contains(&key);
        assert_eq!(
            by_query, by_scan,
            "{key}: query says included={by_query}, scanner yielded={by_scan}"
        );
    }
}
