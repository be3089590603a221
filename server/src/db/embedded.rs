//! A private PostgreSQL cluster run from the machine's PostgreSQL binaries.
//!
//! Used by `keepsake-server` when no database URL is configured, and by the test harness. The
//! cluster listens only on a Unix socket inside a directory that only its owner can enter, never on
//! TCP. PostgreSQL refuses to run as root; when we are root the cluster is initialised and run as an
//! unprivileged system account (`postgres` unless `KEEPSAKE_PG_USER` names another).
//!
//! On a crash: PostgreSQL recovers its own data from its write-ahead log at the next start; a
//! postmaster left running by a killed server is found and used, and a stale `postmaster.pid`
//! whose process is gone is handled by [`Cluster::start`]. The cluster is initialised only when
//! its data folder has no `PG_VERSION`; an interrupted `initdb` is not repaired automatically
//! (the data folder, which holds no data yet, must be removed by hand).

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Name of the cluster superuser that owns the Keepsake schema.
pub const SUPERUSER: &str = "keepsake";
/// Name of the database Keepsake uses inside an embedded cluster.
pub const DATABASE: &str = "keepsake";
/// The port only names the socket file (`.s.PGSQL.<port>`); no TCP listener is opened.
pub const PORT: u16 = 5432;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) were not found on PATH or in the usual \
         install locations. Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; \
         Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql@16`) or configure \
         an existing database with --database-url / KEEPSAKE_DATABASE_URL"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but the unprivileged account `{0}` that must run PostgreSQL does not exist; \
         create it (`useradd --system {0}`) or set KEEPSAKE_PG_USER to another account"
    )]
    NoRunAsUser(String),
    #[error(
        "the PostgreSQL account `{user}` cannot reach {dir}: PostgreSQL refuses to run as root, so the \
         cluster runs as `{user}`, which needs to traverse every parent directory. Choose a data \
         directory it can reach (for example /var/lib/keepsake-server) or make the parents traversable"
    )]
    Unreachable { user: String, dir: PathBuf },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PostgreSQL did not become ready within {0:?}; see {1}")]
    Timeout(Duration, PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + '_ {
    move |source| EmbeddedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the PostgreSQL server programs live.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub bin_dir: PathBuf,
}

impl Binaries {
    /// Finds `initdb`, `pg_ctl` and `postgres`: `KEEPSAKE_PG_BIN`, then PATH, then the usual
    /// install locations (newest version first).
    pub fn locate() -> Result<Binaries, EmbeddedError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(dir) = std::env::var_os("KEEPSAKE_PG_BIN") {
            dirs.push(PathBuf::from(dir));
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.extend(well_known_dirs());
        Binaries::locate_in(&dirs)
    }

    /// The first of `dirs` that holds all three programs.
    pub fn locate_in(dirs: &[PathBuf]) -> Result<Binaries, EmbeddedError> {
        let has_all = |dir: &Path| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|p| dir.join(p).is_file())
        };
        for dir in dirs {
            if has_all(dir) {
                // Resolve symlinks such as /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin, so
                // that the programs of one installation are used together.
                let real = fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| has_all(d))
                    .unwrap_or_else(|| dir.clone());
                return Ok(Binaries { bin_dir: real });
            }
        }
        Err(EmbeddedError::BinariesNotFound)
    }

    fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// The unprivileged account that runs PostgreSQL when we are root.
#[derive(Debug, Clone)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `None` when we are not root (the cluster runs as ourselves).
    pub fn detect() -> Result<Option<RunAs>, EmbeddedError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = std::env::var("KEEPSAKE_PG_USER").unwrap_or_else(|_| "postgres".to_string());
        let cname =
            CString::new(name.clone()).map_err(|_| EmbeddedError::NoRunAsUser(name.clone()))?;
        // SAFETY: getpwnam returns NULL or a pointer to a static passwd record valid until the next
        // call; we copy the two integers out immediately.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if pw.is_null() {
            return Err(EmbeddedError::NoRunAsUser(name));
        }
        // SAFETY: pw is non-null and points to a valid passwd record.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Some(RunAs { name, uid, gid }))
    }
}

/// Options for a cluster's configuration, written at `initdb` time.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Trade durability for speed (fsync off). Only for throwaway test clusters.
    pub throwaway: bool,
}

/// A PostgreSQL cluster in a directory of ours.
#[derive(Debug)]
pub struct Cluster {
    bins: Binaries,
    run_as: Option<RunAs>,
    /// `<root>/data`: the PostgreSQL data directory.
    data_dir: PathBuf,
    /// `<root>/run`: the socket directory (mode 0700).
    socket_dir: PathBuf,
    log_file: PathBuf,
    started_by_us: bool,
}

impl Cluster {
    /// Prepares (and on first use initialises) the cluster under `root`.
    pub fn init(root: &Path, opts: &ClusterOptions) -> Result<Cluster, EmbeddedError> {
        let bins = Binaries::locate()?;
        let run_as = RunAs::detect()?;
        fs::create_dir_all(root).map_err(io_err(root))?;
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        let data_dir = root.join("data");
        let socket_dir = root.join("run");
        let log_dir = root.join("log");
        for dir in [&socket_dir, &log_dir] {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
        if let Some(ra) = &run_as {
            // The account must be able to enter root (not list it).
            let meta = fs::metadata(&root).map_err(io_err(&root))?;
            if meta.mode() & 0o001 == 0 && meta.uid() != ra.uid {
                let mode = meta.mode() | 0o711;
                fs::set_permissions(&root, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(io_err(&root))?;
            }
            for dir in [&socket_dir, &log_dir] {
                chown(dir, ra)?;
            }
            check_reachable(&root, ra)?;
        }
        let cluster = Cluster {
            log_file: log_dir.join("postgres.log"),
            bins,
            run_as,
            data_dir,
            socket_dir,
            started_by_us: false,
        };
        if !cluster.data_dir.join("PG_VERSION").is_file() {
            cluster.initdb(opts)?;
        }
        Ok(cluster)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn run_as(&self) -> Option<&RunAs> {
        self.run_as.as_ref()
    }

    /// Connection configuration for `dbname` as the cluster superuser.
    pub fn pg_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.socket_dir)
            .port(PORT)
            .user(SUPERUSER)
            .dbname(dbname)
            .application_name("keepsake-server");
        cfg
    }

    /// A libpq-style URL for `dbname` (for tools and error messages; the socket path is
    /// percent-encoded as the host).
    pub fn url(&self, dbname: &str) -> String {
        let host: String = self
            .socket_dir
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'/' => "%2F".to_string(),
                b if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) => (b as char).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect();
        format!("postgresql://{SUPERUSER}@{host}:{PORT}/{dbname}")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bins.program(program));
        cmd.env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some(ra) = &self.run_as {
            // std drops root's supplementary groups itself when it switches uid.
            cmd.uid(ra.uid).gid(ra.gid).current_dir("/");
        }
        cmd
    }

    fn run(&self, what: &str, mut cmd: Command) -> Result<Output, EmbeddedError> {
        let out = cmd.output().map_err(|e| EmbeddedError::Command {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
        if !out.status.success() {
            let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            return Err(EmbeddedError::Command {
                what: what.to_string(),
                detail: format!("{} ({detail})", out.status),
            });
        }
        Ok(out)
    }

    fn initdb(&self, opts: &ClusterOptions) -> Result<(), EmbeddedError> {
        if let Some(ra) = &self.run_as {
            tracing::info!(
                account = %ra.name,
                "running as root: the embedded PostgreSQL cluster is initialised and run as `{}`",
                ra.name
            );
        }
        fs::create_dir_all(&self.data_dir).map_err(io_err(&self.data_dir))?;
        fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.data_dir))?;
        if let Some(ra) = &self.run_as {
            chown(&self.data_dir, ra)?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        if opts.throwaway {
            cmd.arg("--no-sync");
        }
        tracing::info!(data_dir = %self.data_dir.display(), "initialising PostgreSQL cluster");
        self.run("initdb", cmd)?;
        // No TCP at all; the socket lives in a 0700 directory, so `trust` reaches only this account
        // (and root).
        let mut conf = String::from(
            "\n# keepsake: private cluster, Unix socket only\n\
             listen_addresses = ''\n\
             unix_socket_permissions = 0700\n\
             max_connections = 200\n\
             shared_buffers = 128MB\n",
        );
        conf.push_str(&format!("port = {PORT}\n"));
        if opts.throwaway {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let conf_path = self.data_dir.join("postgresql.conf");
        let mut existing = fs::read_to_string(&conf_path).map_err(io_err(&conf_path))?;
        existing.push_str(&conf);
        fs::write(&conf_path, existing).map_err(io_err(&conf_path))?;
        Ok(())
    }

    /// Starts the cluster, handling a stale `postmaster.pid` left by a crash. When a postmaster
    /// of this cluster is already running (the server was killed, or a `keepsake-server admin`
    /// command runs next to a serving server), it is used as it is; `own` says whether this
    /// process takes charge of stopping it (`serve` does, administration commands do not).
    pub fn start(&mut self, own: bool) -> Result<(), EmbeddedError> {
        if let Some(pid) = self.running_postmaster()? {
            if own {
                tracing::warn!(
                    pid,
                    "PostgreSQL from an earlier run is still running; using it"
                );
            }
            self.started_by_us = own;
            return self.wait_ready(Duration::from_secs(60));
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", "120", "-s", "-o"])
            .arg(format!("-k {}", shell_quote(self.socket_dir.as_os_str())));
        // pg_ctl's children inherit our stdout/stderr; keep them off the server's log stream.
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        self.run("pg_ctl start", cmd)?;
        self.started_by_us = true;
        self.wait_ready(Duration::from_secs(60))
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), EmbeddedError> {
        let socket = self.socket_dir.join(format!(".s.PGSQL.{PORT}"));
        let start = Instant::now();
        while start.elapsed() < limit {
            if socket.exists() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(EmbeddedError::Timeout(limit, self.log_file.clone()))
    }

    /// The pid of a live postmaster of this cluster. A `postmaster.pid` whose process is gone
    /// (or is not a postgres of this data directory) is left by a crash or power cut: it is
    /// removed.
    fn running_postmaster(&self) -> Result<Option<i32>, EmbeddedError> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let Ok(text) = fs::read_to_string(&pid_file) else {
            return Ok(None);
        };
        let pid: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        if alive && process_is_postmaster_of(pid, &self.data_dir) {
            return Ok(Some(pid));
        }
        tracing::warn!(pid, path = %pid_file.display(), "removing stale PostgreSQL pid file");
        fs::remove_file(&pid_file).map_err(io_err(&pid_file))?;
        Ok(None)
    }

    fn stop_inner(&self, mode: &str) -> Result<(), EmbeddedError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "60", "-s"]);
        self.run("pg_ctl stop", cmd).map(|_| ())
    }

    /// Stops the cluster if this process started it.
    pub fn stop(&mut self) -> Result<(), EmbeddedError> {
        if !self.started_by_us {
            return Ok(());
        }
        self.started_by_us = false;
        tracing::info!("stopping embedded PostgreSQL");
        self.stop_inner("fast")
    }

    /// The PID of the running postmaster, if any.
    pub fn postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "could not stop embedded PostgreSQL");
        }
    }
}

/// Install locations of PostgreSQL packages, newest major version first.
fn well_known_dirs() -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for root in [
        "/usr/lib/postgresql",
        "/usr/local/lib/postgresql",
        "/opt/homebrew/opt",
        "/usr/local/opt",
    ] {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("postgresql")
                || name.chars().all(|c| c.is_ascii_digit() || c == '.'))
            {
                continue;
            }
            let version: u32 = name
                .trim_start_matches("postgresql@")
                .trim_start_matches("postgresql")
                .split('.')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            found.push((version, entry.path().join("bin")));
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut dirs: Vec<PathBuf> = found.into_iter().map(|(_, d)| d).collect();
    dirs.push(PathBuf::from("/usr/local/pgsql/bin"));
    dirs.push(PathBuf::from("/usr/pgsql/bin"));
    dirs
}

fn shell_quote(s: &OsStr) -> String {
    // pg_ctl passes -o through a shell.
    format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"))
}

fn chown(path: &Path, ra: &RunAs) -> Result<(), EmbeddedError> {
    std::os::unix::fs::chown(path, Some(ra.uid), Some(ra.gid)).map_err(io_err(path))
}

/// Whether `dir` can be entered by the account (it must traverse every ancestor).
fn check_reachable(dir: &Path, ra: &RunAs) -> Result<(), EmbeddedError> {
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg("cd \"$1\"")
        .arg("sh")
        .arg(dir)
        .uid(ra.uid)
        .gid(ra.gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(io_err(dir))?;
    if status.success() {
        Ok(())
    } else {
        Err(EmbeddedError::Unreachable {
            user: ra.name.clone(),
            dir: dir.to_path_buf(),
        })
    }
}

fn process_is_postmaster_of(pid: i32, data_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        // Without /proc (macOS) we cannot tell; treat a live pid as ours so that pg_ctl decides.
        return !Path::new("/proc/self").exists();
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_pg = args
        .first()
        .map(|a| a.ends_with(b"postgres") || a.ends_with(b"postmaster"))
        .unwrap_or(false);
    let dd = data_dir.as_os_str().as_encoded_bytes();
    is_pg && args.contains(&dd)
}
