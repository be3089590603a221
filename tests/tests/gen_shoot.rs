//! `gen-shoot` is deterministic, writes the promised shapes, and `mutate` touches only what it
//! reports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_gen-shoot");

fn run(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run gen-shoot");
    assert!(
        out.status.success(),
        "gen-shoot {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gen-shoot prints one JSON object")
}

fn generate(dir: &Path, seed: u64) -> Value {
    run(&[
        "generate",
        dir.to_str().unwrap(),
        "--size-gb",
        "0.05",
        "--catalog-mb",
        "2",
        "--seed",
        &seed.to_string(),
    ])
}

/// Relative path -> BLAKE3 of the content, for every file under `root`.
fn tree(root: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let hash = blake3::hash(&std::fs::read(e.path()).unwrap())
                .to_hex()
                .to_string();
            (rel, hash)
        })
        .collect()
}

#[test]
fn generate_is_deterministic_and_realistic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let sa = generate(&a, 7);
    let sb = generate(&b, 7);
    generate(&c, 8);
    assert_eq!(sa, {
        let mut sb = sb.clone();
        sb["out"] = sa["out"].clone();
        sb
    });

    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    assert_eq!(ta, tb, "same seed, same arguments: byte-identical trees");
    assert_ne!(ta, tc, "another seed gives other bytes");
    let common: Vec<_> = ta.keys().filter(|k| tc.contains_key(*k)).collect();
    assert!(
        common.iter().all(|k| ta[*k] != tc[*k]),
        "no file is the same under another seed"
    );

    // Shapes.
    let photos = sa["photos"].as_u64().unwrap();
    assert!(photos >= 1);
    assert_eq!(
        sa["files"].as_u64().unwrap(),
        3 * photos + sa["videos"].as_u64().unwrap() + 1
    );
    assert_eq!(
        ta.len() as u64,
        sa["files"].as_u64().unwrap() + 1,
        "files + manifest"
    );
    let raw = std::fs::read(a.join("DCIM/100EOSR5/IMG_0001.CR3")).unwrap();
    assert!((25 << 20..=45 << 20).contains(&raw.len()));
    assert_eq!(&raw[4..12], b"ftypcrx ");
    let jpg = std::fs::read(a.join("DCIM/100EOSR5/IMG_0001.JPG")).unwrap();
    assert!((4 << 20..=12 << 20).contains(&jpg.len()));
    assert_eq!(&jpg[..4], &[0xff, 0xd8, 0xff, 0xe1]);
    assert_eq!(&jpg[jpg.len() - 2..], &[0xff, 0xd9]);
    let xmp = std::fs::read_to_string(a.join("DCIM/100EOSR5/IMG_0001.xmp")).unwrap();
    assert!(
        (4096..=8192 + 512).contains(&xmp.len()),
        "xmp is {} bytes",
        xmp.len()
    );
    assert!(xmp.contains("<x:xmpmeta") && xmp.trim_end().ends_with("<?xpacket end=\"w\"?>"));
    let packed = zstd::bulk::compress(xmp.as_bytes(), 3).unwrap();
    assert!(
        packed.len() * 2 < xmp.len(),
        "sidecars are compressible text"
    );
    let random = zstd::bulk::compress(&jpg[1 << 20..2 << 20], 3).unwrap();
    assert!(random.len() >= 1 << 20, "media bodies are incompressible");

    // The catalog is a real SQLite database of about the asked size.
    let cat = a.join("Catalog/Wedding-2024.lrcat");
    let size = std::fs::metadata(&cat).unwrap().len();
    assert!(
        (2 << 20..=3 << 20).contains(&size),
        "catalog is {size} bytes"
    );
    let db = rusqlite::Connection::open(&cat).unwrap();
    let q = |sql: &str| -> String {
        db.query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
    };
    assert_eq!(q("PRAGMA page_size"), "4096");
    assert_eq!(q("PRAGMA journal_mode"), "delete");
    assert_eq!(q("PRAGMA integrity_check"), "ok");
    let rows: u64 = q("SELECT count(*) FROM Adobe_images").parse().unwrap();
    assert_eq!(rows, sa["catalog_rows"].as_u64().unwrap());
    assert!(rows >= photos);
    let avg: f64 = db
        .query_row(
            "SELECT avg(length(text)) FROM Adobe_imageDevelopSettings",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (1000.0..1500.0).contains(&avg),
        "develop settings ~1.2 KB, got {avg}"
    );
    assert_eq!(
        q("SELECT baseName FROM AgLibraryFile WHERE id_local = 1"),
        "IMG_0001"
    );
}

#[test]
fn mutate_changes_only_what_it_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    generate(&a, 3);
    generate(&b, 3);
    let before = tree(&a);
    let cat = a.join("Catalog/Wedding-2024.lrcat");
    let db = rusqlite::Connection::open(&cat).unwrap();
    let snapshot = |db: &rusqlite::Connection| -> Vec<(i64, i64, String)> {
        db.prepare("SELECT i.id_local, i.rating, d.text FROM Adobe_images i JOIN Adobe_imageDevelopSettings d ON d.id_local = i.id_local ORDER BY i.id_local")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    let rows_before = snapshot(&db);
    drop(db);
    let old_xmp: BTreeMap<String, String> = before
        .keys()
        .filter(|k| k.ends_with(".xmp"))
        .map(|k| (k.clone(), std::fs::read_to_string(a.join(k)).unwrap()))
        .collect();

    let report = run(&["mutate", a.to_str().unwrap(), "--day", "1"]);
    let report_b = run(&["mutate", b.to_str().unwrap(), "--day", "1"]);
    assert_eq!(report, report_b, "mutate is deterministic too");
    let after = tree(&a);
    assert_eq!(after, tree(&b));

    let added: BTreeSet<_> = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .cloned()
        .collect();
    let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: BTreeSet<_> = before
        .keys()
        .filter(|k| after.get(*k).is_some_and(|h| h != &before[*k]))
        .cloned()
        .collect();
    assert!(removed.is_empty(), "mutate removes nothing: {removed:?}");

    let first = report["first_new_photo"].as_u64().unwrap();
    let n_new = report["new_photos"].as_u64().unwrap();
    assert!(n_new >= 1);
    let expected_added: BTreeSet<String> = (first..first + n_new)
        .flat_map(|i| ["CR3", "JPG", "xmp"].map(|ext| format!("DCIM/100EOSR5/IMG_{i:04}.{ext}")))
        .collect();
    assert_eq!(added, expected_added);
    assert_eq!(report["new_files"].as_u64().unwrap(), 3 * n_new);

    let mut expected_changed: BTreeSet<String> = report["xmp_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        expected_changed.len() as u64,
        report["xmp_rewritten"].as_u64().unwrap()
    );
    expected_changed.insert("Catalog/Wedding-2024.lrcat".into());
    expected_changed.insert(".gen_manifest.json".into());
    assert_eq!(changed, expected_changed);

    // Sidecars keep their shape: a few values change and one history entry is added.
    for x in report["xmp_files"].as_array().unwrap() {
        let x = x.as_str().unwrap();
        let new = std::fs::read_to_string(a.join(x)).unwrap();
        let ids = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| l.contains("xmp.iid:"))
                .map(str::to_string)
                .collect()
        };
        let (old_ids, new_ids) = (ids(&old_xmp[x]), ids(&new));
        assert_eq!(
            new_ids.len(),
            old_ids.len() + 1,
            "{x}: one new history entry"
        );
        assert_eq!(&new_ids[1..], &old_ids[..], "{x}: older history kept");
        assert!(new.contains("tiff:Model=\"Canon EOS R5\""));
    }

    // Catalog: same rows, a clustered range re-rated, ~50 develop settings rewritten, still sound.
    let db = rusqlite::Connection::open(&cat).unwrap();
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let rows_after = snapshot(&db);
    assert_eq!(rows_before.len(), rows_after.len(), "UPDATEs only");
    assert_eq!(
        report["catalog_rows"].as_u64().unwrap(),
        rows_after.len() as u64
    );
    let dev_changed = rows_before
        .iter()
        .zip(&rows_after)
        .filter(|(x, y)| x.2 != y.2)
        .count();
    assert_eq!(
        dev_changed as u64,
        report["develop_settings_updated"].as_u64().unwrap()
    );
    let start = report["catalog_range_start"].as_i64().unwrap();
    let n_upd = report["catalog_rows_updated"].as_i64().unwrap();
    let touched: i64 = db
        .query_row(
            "SELECT count(*) FROM Adobe_images WHERE touchCount > 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(touched, n_upd);
    let in_range: i64 = db
        .query_row(
            "SELECT count(*) FROM Adobe_images WHERE touchCount > 0 AND id_local BETWEEN ?1 AND ?2",
            [start, start + n_upd - 1],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        in_range, n_upd,
        "the culling session is one clustered range"
    );

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(a.join(".gen_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["mutations"].as_array().unwrap().len(), 1);
    assert_eq!(
        manifest["photos"].as_u64().unwrap(),
        first - 1 + n_new,
        "the manifest counts the new photos"
    );
}

#[test]
fn smallfiles_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let s = run(&["smallfiles", a.to_str().unwrap(), "--count", "450"]);
    run(&["smallfiles", b.to_str().unwrap(), "--count", "450"]);
    assert_eq!(s["files"], 450);
    let ta = tree(&a);
    assert_eq!(ta, tree(&b));
    assert_eq!(ta.len(), 450);
    let dirs: BTreeSet<_> = ta
        .keys()
        .map(|k| k.split('/').next().unwrap().to_string())
        .collect();
    assert_eq!(dirs.len(), 100);
    for e in walkdir::WalkDir::new(&a).into_iter().map(|e| e.unwrap()) {
        if e.file_type().is_file() {
            let len = e.metadata().unwrap().len();
            assert!((1024..=4096).contains(&len), "{len}");
        }
    }
}
