//! The `keepsake` command line, in-process and as a real process.
#![cfg(unix)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::write;
use keepsake_agent::cli;
use serde_json::Value;

fn run(args: &[&str]) -> (u8, String) {
    let mut out = Vec::new();
    let mut argv = vec!["keepsake"];
    argv.extend_from_slice(args);
    let code = cli::run(argv, &mut out).unwrap();
    (code, String::from_utf8(out).unwrap())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tree(root: &Path) {
    write(root, "Smith/RAW/IMG_1.CR3", &[1; 1000]);
    write(root, "Smith/RAW/IMG_1.xmp", &[2; 100]);
    write(root, "Smith/.DS_Store", &[0; 10]);
    write(root, "Lightroom/Cat Previews.lrdata/0/p.lrprev", &[0; 64]);
    write(root, "Lightroom/Cat.lrcat", &[3; 400]);
}

#[test]
fn scan_json_reports_counts_exclusions_and_leaves_no_catalog() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    let home = t.path().join("home");
    tree(&root);
    let (code, out) = run(&["--home", s(&home), "scan", s(&root), "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"]["new"]["files"], 3);
    assert_eq!(v["totals"]["new"]["bytes"], 1500);
    assert_eq!(v["totals"]["scan"]["excluded"], 2);
    assert_eq!(
        v["totals"]["scan"]["excluded_by_rule"]["default: *.lrdata/"]["count"],
        1
    );
    assert_eq!(v["catalog_updated"], false);
    assert!(
        !home.join("catalog.db").exists(),
        "a plain scan does not create a catalog"
    );
}

#[test]
fn update_catalog_records_and_the_next_scan_compares() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    let home = t.path().join("home");
    tree(&root);
    let (code, out) = run(&[
        "--home",
        s(&home),
        "scan",
        s(&root),
        "--update-catalog",
        "--label",
        "Studio",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("Catalog:  updated"), "{out}");
    assert!(out.contains("scan generation 1"), "{out}");
    assert!(home.join("catalog.db").exists());
    fs::remove_file(root.join("Smith/RAW/IMG_1.xmp")).unwrap();
    write(&root, "Smith/RAW/IMG_2.CR3", &[5; 10]);
    let (code, out) = run(&["--home", s(&home), "scan", s(&root), "--list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(['+', '-', 'M']))
        .collect();
    // Nothing was committed yet, so every file still counts as new; the xmp never reached the
    // server so its disappearance is no deletion.
    assert!(lines.contains(&"+ Smith/RAW/IMG_2.CR3"), "{out}");
    assert!(!lines.iter().any(|l| l.contains("IMG_1.xmp")), "{out}");
    assert!(out.contains("Catalog:  read only"), "{out}");
}

#[test]
fn exclude_test_explains_the_rule() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    let home = t.path().join("home");
    tree(&root);
    write(
        &root,
        "Smith/.keepsakeignore",
        b"# no proofs\n*.proof.jpg\n",
    );
    let p = root.join("Lightroom/Cat Previews.lrdata/0/p.lrprev");
    let (code, out) = run(&[
        "--home",
        s(&home),
        "exclude",
        "test",
        s(&p),
        "--root",
        s(&root),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("excluded: Lightroom/Cat Previews.lrdata/0/p.lrprev"),
        "{out}"
    );
    assert!(out.contains("rule:   *.lrdata/"), "{out}");
    assert!(out.contains("built-in default"), "{out}");
    assert!(
        out.contains("via:    the folder Lightroom/Cat Previews.lrdata/"),
        "{out}"
    );

    let p = root.join("Smith/x.proof.jpg");
    let (_, out) = run(&[
        "--home",
        s(&home),
        "exclude",
        "test",
        s(&p),
        "--root",
        s(&root),
        "--json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["excluded"], true);
    assert_eq!(v["path"], "Smith/x.proof.jpg");
    assert_eq!(v["rule"]["pattern"], "*.proof.jpg");
    assert_eq!(v["rule"]["line"], 2);
    assert_eq!(v["rule"]["source"]["kind"], "ignore_file");
    assert_eq!(v["rule"]["source"]["file"], "Smith/.keepsakeignore");

    let p = root.join("Smith/RAW/IMG_1.CR3");
    let (_, out) = run(&[
        "--home",
        s(&home),
        "exclude",
        "test",
        s(&p),
        "--root",
        s(&root),
    ]);
    assert!(
        out.starts_with("included: Smith/RAW/IMG_1.CR3 (no rule matches)"),
        "{out}"
    );
    // Size limit and --dir for a path that does not exist.
    let (_, out) = run(&[
        "--home",
        s(&home),
        "exclude",
        "test",
        s(&p),
        "--root",
        s(&root),
        "--max-file-size",
        "500",
    ]);
    assert!(out.contains("maximum file size"), "{out}");
    let p = root.join("Smith/Trash/.Trashes");
    let (_, out) = run(&[
        "--home",
        s(&home),
        "exclude",
        "test",
        s(&p),
        "--root",
        s(&root),
        "--dir",
    ]);
    assert!(out.starts_with("excluded: Smith/Trash/.Trashes/"), "{out}");
}

#[test]
fn exclude_test_finds_the_source_root_in_the_catalog() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    let home = t.path().join("home");
    tree(&root);
    write(&root, ".keepsakeignore", b"/Smith/\n");
    run(&["--home", s(&home), "scan", s(&root), "--update-catalog"]);
    let p = root.join("Smith/RAW/IMG_1.CR3");
    let (_, out) = run(&["--home", s(&home), "exclude", "test", s(&p)]);
    assert!(
        out.contains("rule:   /Smith/"),
        "anchored to the registered root: {out}"
    );
    let canonical = fs::canonicalize(&root).unwrap();
    assert!(
        out.contains(&format!("root:   {}", canonical.display())),
        "{out}"
    );
}

#[test]
fn local_exclude_file_and_flags() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    let home = t.path().join("home");
    tree(&root);
    write(&home, "exclude", b"*.xmp\n");
    let (_, out) = run(&[
        "--home",
        s(&home),
        "scan",
        s(&root),
        "--json",
        "--exclude",
        "*.lrcat",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["totals"]["new"]["files"], 1);
    let origin = format!("{}:1: *.xmp", home.join("exclude").display());
    assert_eq!(
        v["totals"]["scan"]["excluded_by_rule"][origin.as_str()]["count"],
        1,
        "{out}"
    );
    assert_eq!(
        v["totals"]["scan"]["excluded_by_rule"]["--exclude:1: *.lrcat"]["count"], 1,
        "{out}"
    );
    // A pattern typed on the command line that does not parse is an error, not a silent no-op.
    let mut sink = Vec::new();
    let err = cli::run(
        [
            "keepsake",
            "--home",
            s(&home),
            "scan",
            s(&root),
            "--exclude",
            "[z-a]",
        ],
        &mut sink,
    );
    assert!(err.is_err());
}

#[test]
fn usage_errors_and_help() {
    let (code, _) = run(&["scan"]);
    assert_eq!(code, 2);
    let (code, out) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("scan") && out.contains("exclude"), "{out}");
    let (code, _) = run(&["scan", "/x", "--json", "--list"]);
    assert_eq!(code, 2, "--list conflicts with --json");
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keepsake"))
}

#[test]
fn binary_uses_keepsake_home_and_logs_to_stderr() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    let home = t.path().join("home-from-env");
    tree(&root);
    let out = bin()
        .env("KEEPSAKE_HOME", &home)
        .args([
            "--log-level",
            "debug",
            "scan",
            "--update-catalog",
            "--json",
            s(&root),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is pure JSON");
    assert_eq!(v["catalog_updated"], true);
    assert!(home.join("catalog.db").exists());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("catalog migration"),
        "logs go to stderr"
    );
    let out = bin()
        .args(["--home", s(&home), "scan", "/definitely/not/here"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot scan /definitely/not/here"));
}

/// The real binary as an unprivileged user (as root it switches to uid/gid 65534, where mode
/// bits apply): an unreadable file and folder are listed, the scan completes, exit code 3.
#[test]
fn binary_reports_unreadable_paths_with_exit_code_3() {
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("src");
    let home = t.path().join("home");
    tree(&root);
    let locked = write(&root, "Smith/RAW/IMG_9.CR3", b"raw");
    write(&root, "Clients/contract.pdf", b"pdf");
    fs::create_dir_all(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(root.join("Clients"), fs::Permissions::from_mode(0o000)).unwrap();
    // The build folder may not be reachable for another user: run a copy from the temp dir.
    let exe = t.path().join("keepsake");
    fs::copy(env!("CARGO_BIN_EXE_keepsake"), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args([
        "--home",
        s(&home),
        "scan",
        "--update-catalog",
        "--json",
        s(&root),
    ]);
    if common::is_root() {
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    fs::set_permissions(root.join("Clients"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let issues: Vec<(String, String)> = v["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_string(),
                i["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        issues,
        vec![
            ("Clients".to_string(), "read_dir".to_string()),
            ("Smith/RAW/IMG_9.CR3".to_string(), "unreadable".to_string()),
        ]
    );
    assert!(v["issues"][0]["message"]
        .as_str()
        .unwrap()
        .contains("Permission denied"));
    assert_eq!(v["totals"]["scan"]["issues"], 2);
    assert_eq!(v["catalog_updated"], true);
    assert_eq!(v["totals"]["new"]["files"], 4, "the scan went on past both");
}
