//! Test harness: one throwaway PostgreSQL cluster per test process, a migrated template
//! database, and a fresh database per test.
//!
//! The cluster is created with the machine's own `initdb`/`pg_ctl` in a temporary directory and
//! listens only on a Unix socket. When PostgreSQL is missing the harness panics with the install
//! hint — tests never skip silently. A watchdog process stops the cluster and removes its
//! directory when the test process exits, however it exits.
//!
//! Crash behaviour (tests only): a killed test process leaves nothing behind for long; the watchdog
//! notices the process is gone, stops PostgreSQL and removes the directory.

pub mod s3;
pub mod server;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use tokio_postgres::{Client, NoTls};

use crate::db::embedded::{Cluster, ClusterOptions, PORT, SUPERUSER};
use crate::db::{migrate, Db};

const TEMPLATE: &str = "keepsake_template";

struct TestCluster {
    cluster: Cluster,
}

static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);
static CREATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster() -> &'static TestCluster {
    match CLUSTER.get_or_init(start_cluster) {
        Ok(c) => c,
        Err(e) => panic!("test PostgreSQL cluster unavailable: {e}"),
    }
}

fn start_cluster() -> Result<TestCluster, String> {
    let root = std::env::temp_dir().join(format!(
        "keepsake-pgtest-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    spawn_watchdog(&root)?;
    let mut cluster =
        Cluster::init(&root, &ClusterOptions { throwaway: true }).map_err(|e| e.to_string())?;
    if let Some(ra) = cluster.run_as() {
        eprintln!(
            "testkit: running as root; the test PostgreSQL cluster runs as `{}`",
            ra.name
        );
    }
    cluster.start(true).map_err(|e| e.to_string())?;
    // Build the migrated template on a runtime of its own: a connection must not outlive the
    // runtime of the test that happened to start the cluster.
    let cfg = cluster.pg_config("postgres");
    let tcfg = cluster.pg_config(TEMPLATE);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let admin = connect(&cfg).await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
                .await
                .map_err(|e| crate::db::describe(&e))?;
            let mut t = connect(&tcfg).await?;
            migrate::apply(&mut t).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        })
    })
    .join()
    .map_err(|_| "template setup panicked".to_string())??;
    Ok(TestCluster { cluster })
}

/// Stops the cluster and removes its directory once this process is gone.
fn spawn_watchdog(root: &Path) -> Result<(), String> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        pidfile="$2/data/postmaster.pid"
        if [ -f "$pidfile" ]; then
            pid=$(head -n 1 "$pidfile")
            kill -QUIT "$pid" 2>/dev/null
            i=0
            while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
        fi
        rm -rf "$2"
    "#;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg("keepsake-pgtest-watchdog")
        .arg(std::process::id().to_string())
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; a session of its own keeps the watchdog alive when the
    // test run is interrupted with Ctrl-C.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map(|_| ())
        .map_err(|e| format!("cannot start the cluster watchdog: {e}"))
}

async fn connect(cfg: &tokio_postgres::Config) -> Result<Client, String> {
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|e| crate::db::describe(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A database of the test cluster for one test.
pub struct TestDb {
    name: String,
    config: tokio_postgres::Config,
    socket_dir: PathBuf,
}

/// A fresh database with every migration applied.
pub async fn test_db() -> TestDb {
    create(Some(TEMPLATE)).await
}

/// A fresh, empty database (no migrations applied).
pub async fn empty_db() -> TestDb {
    create(None).await
}

async fn create(template: Option<&str>) -> TestDb {
    let c = cluster();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    {
        let _guard = CREATE_LOCK.lock().await;
        let admin = connect(&c.cluster.pg_config("postgres"))
            .await
            .unwrap_or_else(|e| panic!("connect to test cluster: {e}"));
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name} TEMPLATE template0"),
        };
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", crate::db::describe(&e)));
    }
    TestDb {
        config: c.cluster.pg_config(&name),
        socket_dir: c.cluster.socket_dir().to_path_buf(),
        name,
    }
}

impl TestDb {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Owner connection configuration (the cluster superuser, who owns the schema).
    pub fn config(&self) -> tokio_postgres::Config {
        self.config.clone()
    }

    /// Owner connection string in key=value form (accepted as a database URL by the server).
    pub fn url(&self) -> String {
        format!(
            "host={} port={PORT} user={SUPERUSER} dbname={}",
            self.socket_dir.display(),
            self.name
        )
    }

    /// A connection as the schema owner.
    pub async fn owner(&self) -> Client {
        connect(&self.config)
            .await
            .unwrap_or_else(|e| panic!("owner connection: {e}"))
    }

    /// A connection switched to the application role, like the server's pool.
    pub async fn app(&self) -> Client {
        let client = self.owner().await;
        client
            .batch_execute(&format!("SET ROLE {}", crate::db::APP_ROLE))
            .await
            .unwrap_or_else(|e| panic!("SET ROLE: {}", crate::db::describe(&e)));
        client
    }

    /// The application pool, exactly as the server builds it.
    pub fn db(&self) -> Db {
        Db::new(self.config.clone(), 4).unwrap_or_else(|e| panic!("pool: {e}"))
    }
}
