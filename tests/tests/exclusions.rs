//! One exclusion builder: `keepsake backup`, `keepsake exclude test`, `keepsake scan` and the
//! daemon (`keepsake run`) apply the same layers — built-in defaults, the organisation's rules
//! from the server, the home's `exclude` file, the command's flags and markers — and so agree
//! on every path. A real server, real PostgreSQL, real agent processes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use keepsake_e2e::*;

/// Flags given to every command: an extra pattern and a marker that replaces `.nobackup`.
const FLAGS: &[&str] = &["--exclude", "*.flag", "--marker", ".private"];

/// A session folder with one file per layer, and what must be backed up of it.
fn session(dir: &Path) -> BTreeSet<String> {
    let files: &[(&str, &[u8])] = &[
        ("keep.jpg", b"a photo"),
        ("render.tmp", b"server rule *.tmp"),
        ("notes.skip", b"home exclude file *.skip"),
        ("draft.flag", b"--exclude *.flag"),
        (".DS_Store", b"built-in default"),
        ("Private/.private", b""),
        ("Private/x.jpg", b"marked private by --marker"),
        // `--marker .private` replaces the default marker, so this folder is backed up.
        ("NoBackup/.nobackup", b""),
        ("NoBackup/y.jpg", b"default marker not in use"),
    ];
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    ["keep.jpg", "NoBackup/.nobackup", "NoBackup/y.jpg"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

const ALL: &[&str] = &[
    "keep.jpg",
    "render.tmp",
    "notes.skip",
    "draft.flag",
    ".DS_Store",
    "Private/.private",
    "Private/x.jpg",
    "NoBackup/.nobackup",
    "NoBackup/y.jpg",
];

/// Live files on the server under `prefix/`, relative to it.
fn on_server(w: &World, prefix: &str) -> BTreeSet<String> {
    w.rt.block_on(async {
        let c = w.db.owner().await;
        c.query(
            "SELECT path FROM backup_files WHERE valid_to_seq IS NULL AND entry_kind = 'file'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .filter_map(|r| {
            let p: String = r.get(0);
            p.strip_prefix(&format!("{prefix}/")).map(str::to_string)
        })
        .collect()
    })
}

fn args<'a>(head: &[&'a str]) -> Vec<&'a str> {
    let mut v = head.to_vec();
    v.extend_from_slice(FLAGS);
    v
}

#[test]
fn backup_exclude_test_scan_and_the_daemon_apply_the_same_rules() {
    let w = World::new();
    let org = w.create_org("Rules Studio");
    let admin = org["admin_token"].as_str().unwrap().to_string();
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let status = reqwest::blocking::Client::new()
        .post(format!("{}/v1/exclusions", w.server.url))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"pattern": "*.tmp", "reason": "render scratch"}))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::CREATED);
    std::fs::write(a.home.join("exclude"), "*.skip\n").unwrap();
    let dir = w.dir("weddings");
    let root = dir.to_str().unwrap();

    // keepsake backup
    let expected = session(&dir.join("s1"));
    a.ok(&args(&["backup", root]));
    assert_eq!(on_server(&w, "s1"), expected, "keepsake backup");

    // keepsake exclude test: the same answer for every path, with the rule that decided.
    for name in ALL {
        let p = dir.join("s1").join(name);
        let v = a.json(&args(&[
            "exclude",
            "test",
            p.to_str().unwrap(),
            "--root",
            root,
        ]));
        assert_eq!(
            v["excluded"].as_bool().unwrap(),
            !expected.contains(*name),
            "keepsake exclude test {name}: {v}"
        );
    }
    let v = a.json(&args(&[
        "exclude",
        "test",
        dir.join("s1/render.tmp").to_str().unwrap(),
        "--root",
        root,
    ]));
    assert_eq!(v["rule"]["pattern"], "*.tmp", "{v}");

    // keepsake scan: the new files of a second session are exactly the ones to back up.
    session(&dir.join("s2"));
    let listed: BTreeSet<String> = a
        .ok(&args(&["scan", root, "--list"]))
        .lines()
        .filter_map(|l| l.strip_prefix("+ s2/"))
        .filter(|l| !l.is_empty() && !l.ends_with('/'))
        .map(str::to_string)
        .collect();
    assert_eq!(listed, expected, "keepsake scan");

    // keepsake run: the daemon backs up the third session with the same rules.
    let log = a.home.join("daemon.log");
    let mut cmd = a.cmd();
    cmd.args(args(&["run", "--settle", "1", "--policy-interval", "1"]))
        .arg("--log-file")
        .arg(&log)
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = cmd.spawn().unwrap();
    session(&dir.join("s3"));
    let start = Instant::now();
    while on_server(&w, "s3") != expected || on_server(&w, "s2") != expected {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = daemon.kill();
            panic!(
                "the daemon did not back up s2 and s3 as expected: s2 {:?}, s3 {:?}\n{}",
                on_server(&w, "s2"),
                on_server(&w, "s3"),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give it time to (wrongly) add anything else, then look again.
    std::thread::sleep(Duration::from_secs(3));
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(on_server(&w, "s3"), expected, "keepsake run");
    assert_eq!(on_server(&w, "s1"), expected, "nothing else appeared");

    // A bad pattern on the command line is refused with a clear error, and changes nothing.
    let bad = a.run(&["backup", root, "--exclude", "[z-a]"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("invalid exclusion pattern"), "{err}");
    assert_eq!(on_server(&w, "s1"), expected);
}
