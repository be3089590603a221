//! Recovery requests end to end: a real `keepsake-server` process over a real PostgreSQL, jobs
//! requested with `keepsake-server admin recovery create`, executed by real `keepsake` agent
//! processes (`keepsake recover`, the daemon) that restore, validate and report; restore drills.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keepsake_agent::home::Home;
use keepsake_agent::recovery::{self, ValidateProgress};
use keepsake_agent::restore::names::NameRules;
use keepsake_e2e::*;

/// `admin recovery create --org ORG <args>`: the job as JSON.
fn create_job(w: &World, org: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["recovery", "create", "--org", org];
    a.extend_from_slice(args);
    w.admin_json(&a)
}

/// `admin recovery show ID --org ORG`: `{job, logs, validations}`.
fn show(w: &World, org: &str, id: &str) -> serde_json::Value {
    w.admin_json(&["recovery", "show", id, "--org", org])
}

fn id_of(job: &serde_json::Value) -> String {
    job["id"].as_str().unwrap().to_string()
}

fn recover(a: &AgentHome, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = a.cmd();
    c.args(["recover", "--json"]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run keepsake recover")
}

fn outcomes(out: &std::process::Output) -> Vec<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap_or_else(|e| {
            panic!(
                "recover output is not JSON ({e}):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn steps(detail: &serde_json::Value) -> Vec<String> {
    detail["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["step"].as_str().unwrap_or("").to_string())
        .collect()
}

fn assert_completed(w: &World, org: &str, id: &str) -> serde_json::Value {
    let d = show(w, org, id);
    let j = &d["job"];
    assert_eq!(j["status"], "completed", "{d:#}");
    assert_eq!(j["progress_percentage"], 100, "{d:#}");
    assert_eq!(j["verification_passed"], true, "{d:#}");
    let s = steps(&d);
    for step in ["claimed", "space_check", "restore", "validate", "finish"] {
        assert!(s.iter().any(|x| x == step), "no {step} log entry: {s:?}");
    }
    assert!(
        d["validations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["passed"] == true),
        "{d:#}"
    );
    d
}

/// A studio with a laptop that backed up a shoot, and a replacement machine enrolled with the
/// passphrase (it holds no unsealed key).
struct Studio {
    w: World,
    org: String,
    laptop: AgentHome,
    shoot: PathBuf,
    point: String,
    source: String,
}

fn studio(name: &str, photos: usize, raw_len: usize) -> Studio {
    let w = World::new();
    let org = w.create_org(name);
    let slug = org["slug"].as_str().unwrap().to_string();
    let laptop = w.agent("laptop", org["enroll_token"].as_str().unwrap());
    let shoot = w.dir("shoot");
    write_shoot(&shoot, 21, photos, raw_len);
    let s = laptop.backup(&shoot);
    let point = point_of(&s);
    let points = laptop.json(&["points"]);
    let source = points[0]["source_id"].as_str().unwrap().to_string();
    Studio {
        w,
        org: slug,
        laptop,
        shoot,
        point,
        source,
    }
}

impl Studio {
    fn machine(&self, name: &str) -> AgentHome {
        self.w.agent(name, &self.w.enroll_token(&self.org))
    }
}

fn count_files(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| !e.file_type().is_dir())
        .count()
}

#[test]
fn full_recovery_onto_a_new_machine_with_progress_logs_and_validation() {
    let st = studio("Full Recovery Studio", 8, 4_000_000);
    let w = &st.w;
    let replacement = st.machine("replacement");
    let target = w.root.join("restored-full");
    let job = create_job(
        w,
        &st.org,
        &[
            "--type",
            "full",
            "--target-agent",
            "replacement",
            "--to",
            target.to_str().unwrap(),
            "--point",
            &st.point,
        ],
    );
    let id = id_of(&job);

    // The machine sees its pending request.
    let listed = replacement.json(&["recover", "--list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id.as_str()),
        "{listed}"
    );

    // A wrong passphrase unlocks nothing: nothing is claimed, nothing written.
    let bad = recover(
        &replacement,
        &[("KEEPSAKE_PASSPHRASE", "not the passphrase")],
    );
    assert!(!bad.status.success(), "a wrong passphrase must be refused");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("unlock") || err.contains("passphrase"),
        "{err}"
    );
    assert!(
        !target.exists(),
        "nothing may be written with a wrong passphrase"
    );
    let d = show(w, &st.org, &id);
    assert!(
        d["job"]["claimed_by"].is_null() && d["job"]["attempts"] == 0,
        "{d:#}"
    );

    // The right passphrase: claim, restore, validate, finish. Progress is watched meanwhile.
    let mut child = replacement
        .cmd()
        .args(["recover", "--json"])
        .env("KEEPSAKE_RECOVERY_PROGRESS_MS", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let samples: Vec<(i32, String)> = w.rt.block_on(async {
        let c = w.db.owner().await;
        let mut v = Vec::new();
        let start = Instant::now();
        loop {
            let r = c
                .query_one(
                    "SELECT progress_percentage, status::text FROM recovery_jobs WHERE id::text = $1",
                    &[&id],
                )
                .await
                .unwrap();
            v.push((r.get(0), r.get(1)));
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "recover hangs");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        v
    });
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let o = outcomes(&out);
    assert_eq!(o.len(), 1, "{o:?}");
    assert_eq!(o[0]["status"], "completed", "{:#}", o[0]);
    assert_eq!(
        tree_hashes(&st.shoot),
        tree_hashes(&target),
        "byte-identical"
    );
    assert_eq!(
        std::fs::read_link(target.join("Catalog/link-to-dcim")).unwrap(),
        PathBuf::from("../DCIM")
    );
    let d = assert_completed(w, &st.org, &id);
    assert!(
        d["job"]["bytes_recovered"].as_i64().unwrap() > 30_000_000,
        "{d:#}"
    );
    // Progress never went down, stayed below 100 until the job completed, and was seen while
    // the job ran.
    for pair in samples.windows(2) {
        assert!(pair[0].0 <= pair[1].0, "progress went down: {samples:?}");
    }
    for (p, s) in &samples {
        assert!(
            *p < 100 || s == "completed",
            "100 before completion: {samples:?}"
        );
    }
    assert!(
        samples
            .iter()
            .any(|(p, s)| *p > 0 && *p < 100 && (s == "running" || s == "verifying")),
        "no progress seen while the job ran: {samples:?}"
    );

    // Nothing left: a second run claims nothing and succeeds.
    let again = recover(&replacement, &[]);
    assert!(again.status.success());
    assert!(outcomes(&again).is_empty());

    // The validation itself, on the restored tree: a file altered after the restore, a file
    // removed and a stray file are all caught.
    let home = Home::new(&replacement.home);
    let (_, client) = keepsake_agent::client::connect(&home, None).unwrap();
    let key = home.public_keys().unwrap().chunk_id_key;
    let point = uuid_of(&st.point);
    let everything = vec![String::new()];
    let check = |prefixes: &[String]| {
        recovery::validate(
            &client,
            &key,
            point,
            prefixes,
            &target,
            NameRules::native(),
            &ValidateProgress::default(),
        )
        .unwrap()
    };
    let clean = check(&everything);
    assert!(clean.passed(), "{clean:?}");
    assert_eq!((clean.mismatches, clean.missing, clean.extra), (0, 0, 0));
    let photo = target.join("DCIM/100EOSR5/IMG_0003.CR3");
    let mut bytes = std::fs::read(&photo).unwrap();
    bytes[1234] ^= 0x40;
    std::fs::write(&photo, &bytes).unwrap();
    std::fs::remove_file(target.join("DCIM/100EOSR5/IMG_0004.xmp")).unwrap();
    std::fs::write(target.join("DCIM/100EOSR5/stray.txt"), b"not in the backup").unwrap();
    let v = check(&everything);
    assert!(!v.passed(), "{v:?}");
    assert_eq!((v.mismatches, v.missing, v.extra), (1, 1, 1), "{v:?}");
    let problems = v.details.as_ref().unwrap()["problems"].to_string();
    assert!(
        problems.contains("DCIM/100EOSR5/IMG_0003.CR3"),
        "{problems}"
    );
    assert!(problems.contains("IMG_0004.xmp"), "{problems}");
    assert!(problems.contains("stray.txt"), "{problems}");
    // Limited to a prefix, only what is under it counts.
    let v = check(&["Catalog".to_string()]);
    assert!(v.passed() && v.extra == 0, "{v:?}");
}

#[test]
fn partial_single_file_point_in_time_names_and_drill() {
    let st = studio("Partial Studio", 4, 1_000_000);
    let w = &st.w;
    let laptop = &st.laptop;

    // A newer version of one sidecar, and names Windows could not hold.
    let xmp = st.shoot.join("DCIM/100EOSR5/IMG_0001.xmp");
    let old_xmp = std::fs::read(&xmp).unwrap();
    let p1_time = laptop.json(&["points"])[0]["point_in_time"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&xmp, b"<x:xmpmeta rating=\"5\">edited later</x:xmpmeta>\n").unwrap();
    let odd = st.shoot.join("Odd names");
    std::fs::create_dir_all(&odd).unwrap();
    for n in ["CON.txt", "what?.jpg", "trailing.", "a:b"] {
        std::fs::write(odd.join(n), format!("content of {n}")).unwrap();
    }
    let s2 = laptop.backup(&st.shoot);
    let p2 = point_of(&s2);

    let t_partial = w.root.join("partial");
    let t_file = w.root.join("one-file");
    let t_pit = w.root.join("point-in-time");
    let partial = create_job(
        w,
        &st.org,
        &[
            "--type",
            "partial",
            "--target-agent",
            "laptop",
            "--to",
            t_partial.to_str().unwrap(),
            "--point",
            &p2,
            "--path",
            "Catalog",
            "--path",
            "Odd names",
        ],
    );
    let file = create_job(
        w,
        &st.org,
        &[
            "--type",
            "file",
            "--target-agent",
            "laptop",
            "--to",
            t_file.to_str().unwrap(),
            "--point",
            &p2,
            "--path",
            "DCIM/100EOSR5/IMG_0002.CR3",
        ],
    );
    let pit = create_job(
        w,
        &st.org,
        &[
            "--type",
            "point-in-time",
            "--target-agent",
            "laptop",
            "--to",
            t_pit.to_str().unwrap(),
            "--source",
            &st.source,
            "--at",
            &p1_time,
        ],
    );
    assert_eq!(pit["recovery_point_id"], st.point.as_str(), "{pit:#}");

    let out = recover(laptop, &[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let o = outcomes(&out);
    assert_eq!(o.len(), 3, "{o:?}");
    for job in [&partial, &file, &pit] {
        assert_completed(w, &st.org, &id_of(job));
    }

    // Partial: exactly the two folders.
    let got = tree_hashes(&t_partial);
    let want: std::collections::BTreeMap<_, _> = tree_hashes(&st.shoot)
        .into_iter()
        .filter(|(p, _)| p.starts_with("Catalog") || p.starts_with("Odd names"))
        .collect();
    assert_eq!(got, want);
    assert!(!t_partial.join("DCIM").exists());
    // Single file: just it.
    assert_eq!(count_files(&t_file), 1);
    assert_eq!(
        std::fs::read(t_file.join("DCIM/100EOSR5/IMG_0002.CR3")).unwrap(),
        std::fs::read(st.shoot.join("DCIM/100EOSR5/IMG_0002.CR3")).unwrap()
    );
    // Point in time: the older sidecar, and none of the later files.
    assert_eq!(
        std::fs::read(t_pit.join("DCIM/100EOSR5/IMG_0001.xmp")).unwrap(),
        old_xmp
    );
    assert!(!t_pit.join("Odd names").exists());

    // Names a Windows target cannot hold: the restore maps them (and says so), and the
    // validation finds them under their safe names.
    let home = Home::new(&laptop.home);
    let (_, client) = keepsake_agent::client::connect(&home, None).unwrap();
    let bundle =
        keepsake_common::keys::KeyBundle::from_json(&client.keys().unwrap().active.unwrap().bundle)
            .unwrap();
    let keys = bundle.unseal_with_passphrase(&laptop.passphrase).unwrap();
    let t_win = w.root.join("windows-names");
    let p2_id = uuid_of(&p2);
    let mut ro = keepsake_agent::restore::RestoreOptions::new(p2_id, &t_win);
    ro.prefix = "Odd names".into();
    ro.name_rules = NameRules::Windows;
    let r = keepsake_agent::restore::restore(
        &client,
        &keys,
        &ro,
        &keepsake_agent::restore::RestoreProgress::default(),
    )
    .unwrap();
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.renamed_count, 4, "{:?}", r.renamed);
    for n in std::fs::read_dir(t_win.join("Odd names")).unwrap() {
        let n = n.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            keepsake_agent::restore::names::name_problem(&n, NameRules::Windows).is_none(),
            "{n}"
        );
    }
    let con = r
        .renamed
        .iter()
        .find(|x| x.original == "Odd names/CON.txt")
        .unwrap();
    assert!(con.restored_as.starts_with("Odd names/CON~"), "{con:?}");
    assert_eq!(
        std::fs::read(t_win.join(&con.restored_as)).unwrap(),
        b"content of CON.txt"
    );
    let v = recovery::validate(
        &client,
        &keys.chunk_id_key,
        p2_id,
        &["Odd names".to_string()],
        &t_win,
        NameRules::Windows,
        &ValidateProgress::default(),
    )
    .unwrap();
    assert!(v.passed() && v.extra == 0, "{v:?}");
    assert_eq!(v.files_checked, 4);

    // A restore drill: recent files restored into a scratch folder, validated, recorded.
    let before = w.count("SELECT count(*) FROM recovery_jobs");
    let d = laptop.json(&["drill", "--files", "5"]);
    assert_eq!(d["passed"], true, "{d:#}");
    assert_eq!(d["files"].as_array().unwrap().len(), 5, "{d:#}");
    assert_eq!(d["reported"], true, "{d:#}");
    assert_eq!(d["validation"]["files_checked"], 5, "{d:#}");
    assert_eq!(w.count("SELECT count(*) FROM recovery_jobs"), before + 1);
    assert_eq!(
        w.count(
            "SELECT count(*) FROM recovery_jobs j JOIN recovery_validations v ON v.recovery_job_id = j.id \
             WHERE j.recovery_type = 'file_recovery' AND j.status = 'completed' AND v.passed \
               AND j.notes = 'restore drill' AND j.target_agent_id = j.claimed_by"
        ),
        1
    );
    let tmp = laptop.home.join("tmp");
    let leftovers = std::fs::read_dir(&tmp)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("drill-"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(leftovers, 0, "the scratch folder is removed");
}

#[test]
fn emergency_jobs_go_first_and_page_the_contacts() {
    let st = studio("Emergency Studio", 2, 500_000);
    let w = &st.w;
    let normal_dir = w.root.join("normal");
    let urgent_dir = w.root.join("urgent");
    let normal = create_job(
        w,
        &st.org,
        &[
            "--type",
            "full",
            "--target-agent",
            "laptop",
            "--to",
            normal_dir.to_str().unwrap(),
            "--point",
            &st.point,
        ],
    );
    std::thread::sleep(Duration::from_millis(50));
    let urgent = create_job(
        w,
        &st.org,
        &[
            "--type",
            "emergency",
            "--target-agent",
            "laptop",
            "--to",
            urgent_dir.to_str().unwrap(),
            "--point",
            &st.point,
        ],
    );
    assert_eq!(urgent["is_emergency"], true);
    let (n_id, u_id) = (id_of(&normal), id_of(&urgent));
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM emergency_notifications WHERE recovery_job_id = '{u_id}'"
        )),
        1,
        "the emergency job pages the contacts"
    );
    let out = recover(&st.laptop, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = outcomes(&out);
    assert_eq!(o.len(), 2);
    assert_eq!(o[0]["job_id"], u_id.as_str(), "emergency executed first");
    assert_eq!(o[1]["job_id"], n_id.as_str());
    assert_completed(w, &st.org, &u_id);
    assert_completed(w, &st.org, &n_id);
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM recovery_jobs u, recovery_jobs n \
             WHERE u.id = '{u_id}' AND n.id = '{n_id}' AND u.completed_at < n.completed_at"
        )),
        1,
        "the emergency job completed before the normal one"
    );
    assert_eq!(
        w.count(&format!(
            "SELECT count(*) FROM recovery_logs l JOIN recovery_logs m \
               ON m.recovery_job_id = '{n_id}' AND m.step = 'claimed' \
             WHERE l.recovery_job_id = '{u_id}' AND l.step = 'finish' AND l.id > m.id"
        )),
        0,
        "the emergency job finished before the normal one was claimed"
    );
    assert_eq!(tree_hashes(&urgent_dir), tree_hashes(&st.shoot));
    assert_eq!(tree_hashes(&normal_dir), tree_hashes(&st.shoot));
}

#[test]
fn space_check_refuses_and_a_corrupted_blob_fails_the_validation() {
    let st = studio("Damage Studio", 3, 500_000);
    let w = &st.w;

    // Not enough space: nothing written, the job failed with the reason.
    let cramped = w.root.join("cramped");
    let job = create_job(
        w,
        &st.org,
        &[
            "--type",
            "full",
            "--target-agent",
            "laptop",
            "--to",
            cramped.to_str().unwrap(),
            "--point",
            &st.point,
        ],
    );
    let out = recover(&st.laptop, &[("KEEPSAKE_TEST_FREE_BYTES", "1000")]);
    assert!(!out.status.success(), "a failed job fails the command");
    assert!(!cramped.exists(), "nothing written when space is short");
    let d = show(w, &st.org, &id_of(&job));
    assert_eq!(d["job"]["status"], "failed", "{d:#}");
    assert!(
        d["job"]["error_message"]
            .as_str()
            .unwrap()
            .contains("not enough free space"),
        "{d:#}"
    );
    assert_ne!(d["job"]["verification_passed"], true);
    assert!(d["job"]["progress_percentage"].as_i64().unwrap() < 100);
    assert!(
        d["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["step"] == "space_check" && l["level"] == "error"),
        "{d:#}"
    );

    // A blob damaged in storage: that file cannot be restored, the validation misses it, the
    // job fails with progress below 100.
    w.corrupt_blob_of("DCIM/100EOSR5/IMG_0001.CR3");
    let damaged = w.root.join("damaged");
    let job = create_job(
        w,
        &st.org,
        &[
            "--type",
            "full",
            "--target-agent",
            "laptop",
            "--to",
            damaged.to_str().unwrap(),
            "--point",
            &st.point,
        ],
    );
    let out = recover(&st.laptop, &[]);
    assert!(!out.status.success());
    let o = outcomes(&out);
    assert_eq!(o[0]["status"], "failed");
    assert_eq!(o[0]["validation"]["missing"], 1, "{:#}", o[0]);
    let d = show(w, &st.org, &id_of(&job));
    let j = &d["job"];
    assert_eq!(j["status"], "failed", "{d:#}");
    assert_eq!(j["verification_passed"], false, "{d:#}");
    assert!(j["progress_percentage"].as_i64().unwrap() < 100, "{d:#}");
    assert!(
        d["validations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["passed"] == false && v["missing"] == 1),
        "{d:#}"
    );
    assert!(
        d["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["level"] == "error"
                && l["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("DCIM/100EOSR5/IMG_0001.CR3")),
        "a log entry names the damaged file: {d:#}"
    );
    assert!(!damaged.join("DCIM/100EOSR5/IMG_0001.CR3").exists());
}

#[test]
fn the_daemon_flags_jobs_waiting_for_the_key_and_executes_them_once_allowed() {
    let st = studio("Daemon Recovery Studio", 2, 300_000);
    let w = &st.w;
    let nas = st.machine("nas");
    let watched = w.dir("nas-watched");
    let target = w.root.join("nas-restore");
    let job = create_job(
        w,
        &st.org,
        &[
            "--type",
            "full",
            "--target-agent",
            "nas",
            "--to",
            target.to_str().unwrap(),
            "--point",
            &st.point,
        ],
    );
    let id = id_of(&job);
    // Something of its own to back up, for the scheduled drill to sample.
    std::fs::write(watched.join("IMG_0001.CR3"), random_bytes(9001, 200_000)).unwrap();
    let log = nas.home.join("daemon.log");
    let mut daemon = nas
        .cmd()
        .args(["run", "--policy-interval", "1", "--heartbeat-interval", "5"])
        .args(["--settle", "1", "--drill-interval", "3"])
        .arg("--log-file")
        .arg(&log)
        .arg(&watched)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Without an unlocked key the job waits, and says why.
    wait("the waiting reason", &|| {
        show(w, &st.org, &id)["job"]["waiting_reason"]
            .as_str()
            .is_some_and(|r| r.contains("nas"))
    });
    assert!(!target.exists());
    // Keeping the key is refused while the organisation does not allow it.
    let refused = nas.run(&["unlock", "--remember"]);
    assert!(!refused.status.success());
    assert!(!nas.home.join("secret-keys.json").exists());
    // Allowed: the key is kept (owner-only) and the daemon executes the job by itself.
    w.execute(
        "UPDATE organizations SET settings = settings || '{\"agents_keep_unsealed_key\": true}'::jsonb",
    );
    nas.ok(&["unlock", "--remember"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(nas.home.join("secret-keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    wait("the daemon to execute the job", &|| {
        show(w, &st.org, &id)["job"]["status"] == "completed"
    });
    assert_completed(w, &st.org, &id);
    assert_eq!(tree_hashes(&target), tree_hashes(&st.shoot));
    // With the key kept, the daemon also runs its scheduled restore drill and records it.
    wait("a scheduled restore drill", &|| {
        w.count(
            "SELECT count(*) FROM recovery_jobs j JOIN agents a ON a.id = j.target_agent_id \
             WHERE a.name = 'nas' AND j.notes = 'restore drill' AND j.status = 'completed' \
               AND j.verification_passed",
        ) >= 1
    });
    // `lock` removes the key again.
    nas.ok(&["lock"]);
    assert!(!nas.home.join("secret-keys.json").exists());
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A UUID in the agent's type (the test package has no direct `uuid` dependency).
fn uuid_of<T: serde::de::DeserializeOwned>(s: &str) -> T {
    serde_json::from_value(serde_json::Value::String(s.to_string())).unwrap()
}
