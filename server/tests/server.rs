//! The server process: embedded PostgreSQL lifecycle, migrations on start, probes, shutdown.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keepsake_server::app;
use keepsake_server::config::{Config, Database};
use keepsake_server::db::embedded::{Binaries, Cluster, ClusterOptions, EmbeddedError};
use keepsake_server::db::{self, migrate, Actor};
use keepsake_server::testkit;

const BIN: &str = env!("CARGO_BIN_EXE_keepsake-server");

async fn get(url: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::get(url).await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json().await.expect("json body");
    (status, body)
}

/// A `/readyz` body holds its three yes/no answers and nothing else: no error text, no SQL, no
/// migration names.
fn assert_only_yes_or_no(body: &serde_json::Value) {
    let obj = body.as_object().expect("an object");
    let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["database", "migrations_current", "ready"], "{body}");
    assert!(obj.values().all(|v| v.is_boolean()), "{body}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn postmaster_running(data_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postgres/data/postmaster.pid")) else {
        return false;
    };
    let pid: i32 = text
        .lines()
        .next()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

async fn wait_ready(base: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(resp) = reqwest::get(format!("{base}/readyz")).await {
            if resp.status().as_u16() == 200 {
                return;
            }
        }
        assert!(
            start.elapsed() < limit,
            "server at {base} not ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn_server(data_dir: &Path, port: u16) -> Child {
    Command::new(BIN)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("KEEPSAKE_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keepsake-server")
}

fn data_dir() -> tempfile::TempDir {
    // PostgreSQL runs as an unprivileged account when tests run as root: it must be able to
    // traverse the directory, so keep it under the system temp dir.
    tempfile::Builder::new()
        .prefix("keepsake-server-test")
        .tempdir()
        .expect("tempdir")
}

#[tokio::test]
async fn embedded_default_serves_probes_and_restarts_without_remigrating() {
    let dir = data_dir();
    let server = app::start(
        Config::for_data_dir(dir.path().to_path_buf()),
        std::future::pending(),
    )
    .await
    .expect("server starts with its embedded database");
    let (code, body) = get(&format!("{}/healthz", server.url())).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "ok");
    let (code, body) = get(&format!("{}/readyz", server.url())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["migrations_current"], true);
    assert!(postmaster_running(dir.path()));
    server.shutdown().await.expect("clean shutdown");
    assert!(
        !postmaster_running(dir.path()),
        "embedded PostgreSQL must stop with the server"
    );

    // Second start: the cluster is reused and no migration is applied again.
    let server = app::start(
        Config::for_data_dir(dir.path().to_path_buf()),
        std::future::pending(),
    )
    .await
    .expect("second start");
    let (code, _) = get(&format!("{}/readyz", server.url())).await;
    assert_eq!(code, 200);
    server.shutdown().await.expect("clean shutdown");

    let mut cluster =
        Cluster::init(&dir.path().join("postgres"), &ClusterOptions::default()).expect("cluster");
    cluster.start(true).expect("start");
    let client = db::connect_owner(&cluster.pg_config("keepsake"))
        .await
        .unwrap();
    let rows = client
        .query("SELECT name FROM keepsake_migrations", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), migrate::MIGRATIONS.len());
    let mut again = db::connect_owner(&cluster.pg_config("keepsake"))
        .await
        .unwrap();
    assert!(migrate::apply(&mut again).await.unwrap().is_empty());
    drop(client);
    drop(again);
    cluster.stop().unwrap();
}

#[tokio::test]
async fn stale_pid_file_after_a_crash_is_handled() {
    let dir = data_dir();
    let root = dir.path().join("postgres");
    {
        let mut cluster = Cluster::init(&root, &ClusterOptions::default()).expect("init");
        cluster.start(true).expect("start");
        cluster.stop().expect("stop");
    }
    // A pid file naming a process that no longer exists, as a power cut leaves it.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let pid_file = root.join("data/postmaster.pid");
    std::fs::write(
        &pid_file,
        format!(
            "{dead_pid}\n{}\n1700000000\n5432\n\n\n",
            root.join("data").display()
        ),
    )
    .unwrap();
    let server = app::start(
        Config::for_data_dir(dir.path().to_path_buf()),
        std::future::pending(),
    )
    .await
    .expect("server starts despite the stale pid file");
    let (code, _) = get(&format!("{}/readyz", server.url())).await;
    assert_eq!(code, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn killed_server_leaves_postgres_running_and_the_next_start_recovers() {
    let dir = data_dir();
    let port = free_port();
    let mut child = spawn_server(dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base, Duration::from_secs(60)).await;
    child.kill().unwrap(); // SIGKILL: no cleanup at all
    child.wait().unwrap();
    assert!(
        postmaster_running(dir.path()),
        "precondition: PostgreSQL outlives a SIGKILLed server"
    );
    let port = free_port();
    let mut child = spawn_server(dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base, Duration::from_secs(60)).await;
    // SIGTERM: graceful shutdown, embedded PostgreSQL stopped, exit code 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(!postmaster_running(dir.path()));
}

#[tokio::test]
async fn migrate_command_applies_once_against_a_database_url() {
    let db = testkit::empty_db().await;
    let run = || {
        Command::new(BIN)
            .args(["migrate", "--database-url", &db.url()])
            .output()
            .expect("run migrate")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8_lossy(&first.stdout);
    for (name, _) in migrate::MIGRATIONS {
        assert!(out.contains(&format!("applied {name}")), "{out}");
    }
    let second = run();
    assert!(second.status.success());
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        "schema is current"
    );
}

#[tokio::test]
async fn readyz_reports_an_edited_migration_and_a_missing_database() {
    let db = testkit::test_db().await;
    let mut config = Config::for_data_dir(data_dir().path().to_path_buf());
    config.database = Database::Url(db.url());
    let server = app::start(config, std::future::pending())
        .await
        .expect("start");
    let (code, _) = get(&format!("{}/readyz", server.url())).await;
    assert_eq!(code, 200);

    let owner = db.owner().await;
    owner
        .execute(
            "UPDATE keepsake_migrations SET checksum = 'tampered' WHERE name = (SELECT min(name) FROM keepsake_migrations)",
            &[],
        )
        .await
        .unwrap();
    let (code, body) = get(&format!("{}/readyz", server.url())).await;
    assert_eq!(code, 503);
    assert_eq!(body["migrations_current"], false);
    assert_only_yes_or_no(&body);
    // An edited migration is refused by the runner, not silently re-applied.
    let mut client = db.owner().await;
    let err = migrate::apply(&mut client).await.unwrap_err();
    assert!(matches!(err, migrate::MigrateError::Edited(_)), "{err}");

    // The database goes away: readiness fails, liveness does not.
    let mut admin_cfg = db.config();
    admin_cfg.dbname("postgres");
    let admin = db::connect_owner(&admin_cfg).await.unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            db.name()
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&db.name()],
        )
        .await
        .unwrap();
    let (code, body) = get(&format!("{}/readyz", server.url())).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["database"], false);
    assert_only_yes_or_no(&body);
    let (code, _) = get(&format!("{}/healthz", server.url())).await;
    assert_eq!(code, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn pool_runs_as_the_application_role_and_identity_never_outlives_a_transaction() {
    let db = testkit::test_db().await;
    let pool = db.db();
    let mut client = pool.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolsuper, r.rolbypassrls, \
                    (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "keepsake_app");
    assert!(!row.get::<_, bool>(1), "app role must not be superuser");
    assert!(!row.get::<_, bool>(2), "app role must not bypass RLS");
    assert_eq!(row.get::<_, i64>(3), 0, "app role must own nothing");

    let org = uuid::Uuid::new_v4();
    let tx = db::begin(&mut client, &Actor::System { org })
        .await
        .unwrap();
    let seen: String = tx
        .query_one("SELECT current_setting('keepsake.org_id', true)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, org.to_string());
    tx.commit().await.unwrap();
    drop(client);
    // The same pooled connection (pool of one idle) carries nothing into the next transaction.
    let client = pool.client().await.unwrap();
    let after: Option<String> = client
        .query_one(
            "SELECT nullif(current_setting('keepsake.org_id', true), '')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, None);
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "keepsake_app");
}

#[test]
fn missing_postgres_binaries_give_an_install_hint() {
    let empty = tempfile::tempdir().unwrap();
    let err = Binaries::locate_in(&[empty.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, EmbeddedError::BinariesNotFound));
    let msg = err.to_string();
    assert!(msg.contains("apt-get install postgresql"), "{msg}");
    assert!(msg.contains("--database-url"), "{msg}");
}

#[test]
fn binary_reports_a_bad_config_file_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "bind = \"127.0.0.1:1\"\nno_such_key = 1\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid config file"), "{err}");
    assert!(err.contains("no_such_key"), "{err}");
}

#[tokio::test]
async fn admin_commands_share_a_serving_embedded_cluster_and_a_second_server_is_refused() {
    let dir = data_dir();
    let port = free_port();
    let mut child = spawn_server(dir.path(), port);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base, Duration::from_secs(60)).await;
    let out = Command::new(BIN)
        .args(["admin", "create-org", "Side Studio", "--json"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("KEEPSAKE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(created["enroll_token"]
        .as_str()
        .unwrap()
        .starts_with("kse_"));
    // The serving server still has its database after the admin command finished.
    let (code, _) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 200);
    // A second server on the same data directory is refused.
    let second = Command::new(BIN)
        .args(["serve", "--bind", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("KEEPSAKE_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already serving"));
    let (code, _) = get(&format!("{base}/readyz")).await;
    assert_eq!(code, 200);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

#[tokio::test]
async fn a_stuck_request_does_not_keep_a_stopping_server_alive() {
    use std::io::Write as _;
    let dir = data_dir();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("KEEPSAKE_DATABASE_URL")
        .env("KEEPSAKE_SHUTDOWN_GRACE_SECS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn keepsake-server");
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base, Duration::from_secs(60)).await;
    // A client that announces a body and stops sending it: the request stays in flight.
    let mut stuck = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stuck
        .write_all(
            b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100000\r\n\r\n{\"enroll_token\": ",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a stuck request kept the server running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "the in-flight request got its grace"
    );
    assert!(status.success(), "exit status: {status}");
    assert!(
        !postmaster_running(dir.path()),
        "the embedded cluster is stopped"
    );
    drop(stuck);
}
