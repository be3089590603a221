//! The real-time daemon (`keepsake run`) end to end: a real server process, real PostgreSQL, a
//! real daemon process watching real folders.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use keepsake_e2e::*;

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(a: &AgentHome, dirs: &[&Path], extra: &[&str]) -> Daemon {
        let log = a.home.join(format!("daemon-{}.log", std::process::id()));
        let mut cmd = a.cmd();
        cmd.args(["run", "--policy-interval", "1", "--heartbeat-interval", "1"]);
        if !extra.contains(&"--settle") {
            cmd.args(["--settle", "2"]);
        }
        cmd.args(extra).arg("--log-file").arg(&log);
        for d in dirs {
            cmd.arg(d);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Live files of the organisation's sources: path → content hash (hex), from the server's catalog.
fn live(w: &World) -> std::collections::BTreeMap<String, String> {
    w.rt.block_on(async {
        let c = w.db.owner().await;
        c.query(
            "SELECT path, encode(content_hash, 'hex') FROM backup_files \
             WHERE valid_to_seq IS NULL AND entry_kind = 'file'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    })
}

fn wait_until(what: &str, limit: Duration, d: Option<&Daemon>, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for: {what}\n--- daemon log ---\n{}",
                d.map(|d| d.log()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn has(w: &World, path: &str) -> bool {
    live(w).contains_key(path)
}

fn versions(w: &World, path: &str) -> i64 {
    w.count(&format!(
        "SELECT count(*) FROM backup_files WHERE path = '{path}'"
    ))
}

fn admin_post(w: &World, token: &str, path: &str, body: serde_json::Value) -> reqwest::StatusCode {
    reqwest::blocking::Client::new()
        .post(format!("{}{path}", w.server.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap()
        .status()
}

fn restore_latest_equals(a: &AgentHome, w: &World, dir: &Path) {
    let out = w.dir(&format!("check-{}", uuid_like()));
    let r = a.run(&[
        "restore",
        "--point",
        "latest",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(tree_hashes(dir), tree_hashes(&out));
}

fn uuid_like() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn follows_creates_modifies_renames_and_deletes_and_stops_cleanly() {
    let w = World::new();
    let org = w.create_org("Live Studio");
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let dir = w.dir("watched");
    std::fs::write(dir.join("b.xmp"), b"<rating 1/>").unwrap();
    std::fs::write(dir.join("c.CR3"), random_bytes(3, 4_000_000)).unwrap();
    std::fs::write(dir.join("e.txt"), b"to be deleted").unwrap();
    let d = Daemon::start(&a, &[&dir], &[]);
    wait_until(
        "the startup reconciliation",
        Duration::from_secs(60),
        Some(&d),
        || has(&w, "c.CR3") && has(&w, "e.txt"),
    );
    // A second daemon on the same home is refused.
    let second = a.run(&["run", dir.to_str().unwrap()]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another keepsake daemon"));

    let stored = dir_size(&w.storage());
    std::fs::write(dir.join("a.jpg"), random_bytes(4, 300_000)).unwrap();
    std::fs::write(dir.join("b.xmp"), b"<rating 5/>").unwrap();
    std::fs::rename(dir.join("c.CR3"), dir.join("d.CR3")).unwrap();
    std::fs::remove_file(dir.join("e.txt")).unwrap();
    wait_until(
        "all four changes",
        Duration::from_secs(60),
        Some(&d),
        || {
            let l = live(&w);
            l.contains_key("a.jpg")
                && l.contains_key("d.CR3")
                && !l.contains_key("c.CR3")
                && !l.contains_key("e.txt")
                && versions(&w, "b.xmp") == 2
        },
    );
    // The rename cost no re-upload: only the new photo and sidecar were stored.
    let grown = dir_size(&w.storage()) - stored;
    assert!(
        grown < 1_000_000,
        "a renamed 4 MB file must not be uploaded again ({grown} bytes)"
    );
    restore_latest_equals(&a, &w, &dir);
    // A heartbeat reached the server.
    wait_until("a heartbeat", Duration::from_secs(30), Some(&d), || {
        w.count("SELECT count(*) FROM agents WHERE last_heartbeat IS NOT NULL") == 1
    });
    // The source was registered with the server once, not by every run.
    let log = d.log();
    assert!(
        log.matches(" committed").count() >= 2,
        "several runs committed:\n{log}"
    );
    assert_eq!(
        log.matches("source registered with the server").count(),
        1,
        "the daemon registers its source once:\n{log}"
    );
    let status = d.sigterm();
    assert!(
        status.success(),
        "SIGTERM must stop the daemon cleanly ({status})"
    );
    let st = a.json(&["status"]);
    assert_eq!(st["daemon_running"], false);
    assert_eq!(st["status"]["state"], "stopped");
}

#[test]
fn a_file_written_slowly_is_committed_once_and_complete() {
    let w = World::new();
    let org = w.create_org("Slow Writer");
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let dir = w.dir("card");
    let d = Daemon::start(&a, &[&dir], &["--settle", "3"]);
    let path = dir.join("MVI_0001.MP4");
    let data = random_bytes(21, 20 * 100_000);
    let mut f = std::fs::File::create(&path).unwrap();
    for piece in data.chunks(100_000) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(f);
    wait_until(
        "the finished video",
        Duration::from_secs(60),
        Some(&d),
        || has(&w, "MVI_0001.MP4"),
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        versions(&w, "MVI_0001.MP4"),
        1,
        "committed exactly once\n{}",
        d.log()
    );
    restore_latest_equals(&a, &w, &dir);
}

#[test]
fn without_notifications_periodic_scans_lose_nothing() {
    let w = World::new();
    let org = w.create_org("No Watch");
    let a = w.agent("nas", org["enroll_token"].as_str().unwrap());
    let dir = w.dir("share");
    let d = Daemon::start(
        &a,
        &[&dir],
        &["--no-watch", "--rescan-interval", "2", "--settle", "1"],
    );
    for i in 0..5 {
        std::fs::write(
            dir.join(format!("IMG_{i}.JPG")),
            random_bytes(100 + i, 200_000),
        )
        .unwrap();
    }
    wait_until(
        "files found by rescans",
        Duration::from_secs(60),
        Some(&d),
        || (0..5).all(|i| has(&w, &format!("IMG_{i}.JPG"))),
    );
    let st = a.json(&["status"]);
    assert_eq!(st["status"]["sources"][0]["watched"], false);
}

#[test]
fn a_server_outage_is_ridden_out_and_nothing_is_duplicated() {
    let mut w = World::new();
    let org = w.create_org("Venue Wifi");
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let dir = w.dir("shoot");
    std::fs::write(dir.join("first.JPG"), random_bytes(1, 100_000)).unwrap();
    let d = Daemon::start(&a, &[&dir], &["--settle", "1"]);
    wait_until("the first file", Duration::from_secs(60), Some(&d), || {
        has(&w, "first.JPG")
    });
    w.server.kill();
    for i in 0..10 {
        std::fs::write(
            dir.join(format!("offline_{i}.JPG")),
            random_bytes(50 + i, 300_000),
        )
        .unwrap();
    }
    std::fs::write(dir.join("offline_0.xmp"), b"<x:xmpmeta/>").unwrap();
    std::fs::remove_file(dir.join("first.JPG")).unwrap();
    // The daemon notices the outage, keeps scanning and queues the new files in its catalog,
    // by class.
    wait_until(
        "the offline queue",
        Duration::from_secs(60),
        Some(&d),
        || {
            let st = a.json(&["status"]);
            st["status"]["state"] == "offline" && st["status"]["sources"][0]["pending_files"] == 11
        },
    );
    let st = a.json(&["status"]);
    let q = &st["status"]["sources"][0]["queue"];
    assert_eq!(q["originals"]["files"], 10, "{st}");
    assert_eq!(q["sidecars"]["files"], 1, "{st}");
    assert_eq!(q["critical"]["files"], 0, "{st}");
    let text = a.ok(&["status"]);
    assert!(text.contains("queue: 0 wedding-critical"), "{text}");
    w.server.restart();
    wait_until("catching up", Duration::from_secs(120), Some(&d), || {
        (0..10).all(|i| has(&w, &format!("offline_{i}.JPG"))) && has(&w, "offline_0.xmp")
    });
    for i in 0..10 {
        assert_eq!(versions(&w, &format!("offline_{i}.JPG")), 1);
    }
    wait_until("the deletion", Duration::from_secs(30), Some(&d), || {
        !has(&w, "first.JPG")
    });
    wait_until("state idle", Duration::from_secs(30), Some(&d), || {
        let st = a.json(&["status"]);
        st["status"]["state"] == "idle" && st["status"]["sources"][0]["pending_files"] == 0
    });
    restore_latest_equals(&a, &w, &dir);
}

#[test]
fn the_next_server_url_takes_over_when_the_first_fails() {
    let mut w = World::new();
    let org = w.create_org("Two Servers");
    // A second server process on the same database and the same storage.
    let storage = w.storage();
    let second = ServerProc::start_with(
        &w.db.url(),
        &w.root.join("server-b"),
        None,
        &["--storage-dir", storage.to_str().unwrap()],
    );
    let a = AgentHome::new(&w.root.join("home-failover"));
    a.json(&[
        "enroll",
        "--server",
        &w.server.url,
        "--server",
        &second.url,
        "--token",
        org["enroll_token"].as_str().unwrap(),
        "--name",
        "laptop",
    ]);
    let dir = w.dir("shoot");
    std::fs::write(dir.join("a.JPG"), random_bytes(7, 200_000)).unwrap();
    let d = Daemon::start(&a, &[&dir], &["--settle", "1"]);
    wait_until(
        "a.JPG through the first server",
        Duration::from_secs(60),
        Some(&d),
        || has(&w, "a.JPG"),
    );
    w.server.kill();
    std::fs::write(dir.join("b.JPG"), random_bytes(8, 200_000)).unwrap();
    wait_until(
        "b.JPG through the second server",
        Duration::from_secs(60),
        Some(&d),
        || has(&w, "b.JPG"),
    );
    // The run that committed it ends without an error (the status is written after the run).
    wait_until("state idle", Duration::from_secs(30), Some(&d), || {
        let st = a.json(&["status"]);
        st["status"]["state"] == "idle" && st["status"]["sources"][0]["last_error"].is_null()
    });
    assert_eq!(versions(&w, "a.JPG"), 1);
    restore_latest_equals(&a, &w, &dir);
    drop(second);
}

#[test]
fn kill_9_during_a_burst_then_restart_loses_nothing() {
    let w = World::new();
    let org = w.create_org("Card Dump");
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let dir = w.dir("dump");
    let mut d = Daemon::start(&a, &[&dir], &["--settle", "1"]);
    for i in 0..40 {
        std::fs::write(
            dir.join(format!("IMG_{i:04}.CR3")),
            random_bytes(1000 + i, 1_000_000),
        )
        .unwrap();
    }
    wait_until(
        "a first commit of the burst",
        Duration::from_secs(60),
        Some(&d),
        || !live(&w).is_empty(),
    );
    d.kill9();
    let d2 = Daemon::start(&a, &[&dir], &["--settle", "1"]);
    wait_until(
        "the whole burst",
        Duration::from_secs(120),
        Some(&d2),
        || (0..40).all(|i| has(&w, &format!("IMG_{i:04}.CR3"))),
    );
    for i in 0..40 {
        assert_eq!(versions(&w, &format!("IMG_{i:04}.CR3")), 1);
    }
    restore_latest_equals(&a, &w, &dir);
    // "Safe to format the card" answers yes once everything is committed.
    let r = a.run(&["status", "--path", dir.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    assert!(String::from_utf8_lossy(&r.stdout).starts_with("SAFE"));
    // ...and no while a new file waits.
    drop(d2);
    std::fs::write(dir.join("late.CR3"), b"just copied").unwrap();
    let r = a.run(&["status", "--path", dir.to_str().unwrap(), "--json"]);
    assert_eq!(r.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["safe_to_format"], false);
    assert_eq!(v["not_yet_seen"], 1);
}

#[test]
fn wedding_critical_files_are_committed_first_and_policy_changes_apply_live() {
    let w = World::new();
    let org = w.create_org("Priority Studio");
    let admin = org["admin_token"].as_str().unwrap().to_string();
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let today = chrono_today();
    assert_eq!(
        admin_post(
            &w,
            &admin,
            "/v1/wedding-critical",
            serde_json::json!({
                "wedding_name": "Smith & Jones", "wedding_date": today, "path_patterns": ["Smith/**"]
            })
        ),
        reqwest::StatusCode::CREATED
    );
    let dir = w.dir("weddings");
    for sub in ["Other", "Smith"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for i in 0..6 {
            std::fs::write(
                dir.join(sub).join(format!("IMG_{i}.CR3")),
                random_bytes(i + sub.len() as u64 * 100, 400_000),
            )
            .unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    let d = Daemon::start(&a, &[&dir], &["--settle", "1"]);
    wait_until("both folders", Duration::from_secs(60), Some(&d), || {
        let l = live(&w);
        (0..6).all(|i| {
            l.contains_key(&format!("Smith/IMG_{i}.CR3"))
                && l.contains_key(&format!("Other/IMG_{i}.CR3"))
        })
    });
    let seq = |prefix: &str, agg: &str| -> i64 {
        w.count(&format!(
            "SELECT {agg}(valid_from_seq) FROM backup_files WHERE path LIKE '{prefix}/%' AND entry_kind = 'file'"
        ))
    };
    assert!(
        seq("Smith", "max") < seq("Other", "min"),
        "wedding-critical files must be committed before the rest"
    );
    assert!(w.count("SELECT count(*) FROM recovery_points WHERE is_wedding_critical") >= 1);

    // A new exclusion on the server applies without restarting the daemon.
    assert_eq!(
        admin_post(
            &w,
            &admin,
            "/v1/exclusions",
            serde_json::json!({"pattern": "*.tmp"})
        ),
        reqwest::StatusCode::CREATED
    );
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(dir.join("Smith/render.tmp"), b"scratch").unwrap();
    std::fs::write(dir.join("Smith/IMG_9.CR3"), random_bytes(9, 100_000)).unwrap();
    wait_until("the new photo", Duration::from_secs(60), Some(&d), || {
        has(&w, "Smith/IMG_9.CR3")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !has(&w, "Smith/render.tmp"),
        "the server's exclusion must apply"
    );
}

fn chrono_today() -> String {
    let out = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn admin_put(w: &World, token: &str, path: &str, body: serde_json::Value) -> reqwest::StatusCode {
    reqwest::blocking::Client::new()
        .put(format!("{}{path}", w.server.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap()
        .status()
}

/// Local time `offset` from now as `HH:MM` (the daemon reads the window in local time).
fn local_hhmm(offset: &str) -> String {
    let out = std::process::Command::new("date")
        .args(["-d", offset, "+%H:%M"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_upload_window_pauses_and_the_bandwidth_limit_paces_uploads() {
    let w = World::new();
    let org = w.create_org("Venue Hours");
    let admin = org["admin_token"].as_str().unwrap().to_string();
    let a = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    // The organisation uploads only overnight: a window that opens in two hours.
    let closed = serde_json::json!({
        "supplier_type": "photographer", "settle_window_seconds": 1,
        "schedule_window_start": local_hhmm("+2 hours"), "schedule_window_end": local_hhmm("+3 hours"),
        "bandwidth_limit_kbps": 4000
    });
    assert_eq!(
        admin_put(&w, &admin, "/v1/vendor-config", closed),
        reqwest::StatusCode::NO_CONTENT
    );
    let dir = w.dir("venue");
    std::fs::write(dir.join("small.JPG"), random_bytes(71, 100_000)).unwrap();
    let d = Daemon::start(&a, &[&dir], &["--settle", "1"]);
    wait_until(
        "the paused state",
        Duration::from_secs(30),
        Some(&d),
        || a.json(&["status"])["status"]["state"] == "paused",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !has(&w, "small.JPG"),
        "nothing is uploaded outside the window\n{}",
        d.log()
    );
    // The window opens (no window any more); the 4000 kbit/s limit stays.
    let open = serde_json::json!({
        "supplier_type": "photographer", "settle_window_seconds": 1, "bandwidth_limit_kbps": 4000
    });
    assert_eq!(
        admin_put(&w, &admin, "/v1/vendor-config", open),
        reqwest::StatusCode::NO_CONTENT
    );
    wait_until(
        "the waiting file once the window opens",
        Duration::from_secs(30),
        Some(&d),
        || has(&w, "small.JPG"),
    );
    // 2 MB at 500 kB/s take at least 4 s to upload (unlimited: well under 2 s end to end).
    let started = Instant::now();
    std::fs::write(dir.join("big.CR3"), random_bytes(72, 2_000_000)).unwrap();
    wait_until("the paced file", Duration::from_secs(60), Some(&d), || {
        has(&w, "big.CR3")
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "2 MB committed in {took:?} despite the limit\n{}",
        d.log()
    );
    restore_latest_equals(&a, &w, &dir);
}
