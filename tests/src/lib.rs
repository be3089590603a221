//! Shared harness for Keepsake's end-to-end tests: real `keepsake-server` processes (or
//! in-process servers) over a throwaway PostgreSQL cluster, real `keepsake` agent processes with
//! their own home folders, and deterministic test trees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use keepsake_server::testkit::{self, TestDb};

pub mod hostile;
use rand::{Rng, SeedableRng};

/// Path of a binary built from this package (`e2e-keepsake`, `e2e-keepsake-server`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-hash → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile folder");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is not built; run the tests with `cargo test --workspace` (it builds the binaries)",
        p.display()
    );
    p
}

/// The agent binary.
pub fn keepsake_bin() -> PathBuf {
    bin("e2e-keepsake")
}

/// The server binary.
pub fn server_bin() -> PathBuf {
    bin("e2e-keepsake-server")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until `url/readyz` answers 200.
pub fn wait_ready(url: &str, limit: Duration) {
    wait_ready_with(&reqwest::blocking::Client::new(), url, limit)
}

/// [`wait_ready`] with a given client (e.g. one that trusts a test CA).
pub fn wait_ready_with(client: &reqwest::blocking::Client, url: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send() {
            if r.status().is_success() {
                return;
            }
        }
        assert!(start.elapsed() < limit, "{url} not ready within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `keepsake-server` child process on a database URL.
pub struct ServerProc {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub database_url: String,
}

impl ServerProc {
    /// Starts a server process on `database_url` with its data (and storage) in `data_dir`.
    pub fn start(database_url: &str, data_dir: &Path, port: Option<u16>) -> ServerProc {
        ServerProc::start_with(database_url, data_dir, port, &[])
    }

    /// Like `start`, with extra `serve` arguments (e.g. `--storage-dir` of another server).
    pub fn start_with(
        database_url: &str,
        data_dir: &Path,
        port: Option<u16>,
        extra: &[&str],
    ) -> ServerProc {
        ServerProc::spawn(database_url, data_dir, port, extra, None)
    }

    /// Like `start_with` for a server given `--tls-cert`/`--tls-key` in `extra`: its URL is
    /// `https://`, and readiness is checked trusting the CA certificate `ca` (PEM).
    pub fn start_tls(database_url: &str, data_dir: &Path, extra: &[&str], ca: &Path) -> ServerProc {
        ServerProc::spawn(database_url, data_dir, None, extra, Some(ca))
    }

    fn spawn(
        database_url: &str,
        data_dir: &Path,
        port: Option<u16>,
        extra: &[&str],
        ca: Option<&Path>,
    ) -> ServerProc {
        let port = port.unwrap_or_else(free_port);
        let child = Command::new(server_bin())
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--database-url")
            .arg(database_url)
            .env("KEEPSAKE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn keepsake-server");
        let mut client = reqwest::blocking::Client::builder();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).expect("CA certificate");
            client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        let scheme = if ca.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        wait_ready_with(&client.build().unwrap(), &url, Duration::from_secs(60));
        ServerProc {
            child,
            url,
            port,
            data_dir: data_dir.to_path_buf(),
            database_url: database_url.to_string(),
        }
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data (plain HTTP).
    pub fn restart(&mut self) {
        self.kill();
        let again = ServerProc::start(&self.database_url, &self.data_dir, Some(self.port));
        *self = again;
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent with its own home folder.
pub struct AgentHome {
    pub home: PathBuf,
    pub passphrase: String,
}

impl AgentHome {
    pub fn new(home: &Path) -> AgentHome {
        AgentHome {
            home: home.to_path_buf(),
            passphrase: "correct horse battery staple".into(),
        }
    }

    /// A `keepsake` command for this home (passphrase in the environment, fast key sealing).
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(keepsake_bin());
        c.arg("--home")
            .arg(&self.home)
            .env("KEEPSAKE_PASSPHRASE", &self.passphrase)
            .env("KEEPSAKE_SCRYPT_LOG_N", "10")
            .env("KEEPSAKE_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    /// Runs `keepsake <args>` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run keepsake")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "keepsake {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs and parses `--json` output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a: Vec<&str> = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("keepsake {a:?}: bad JSON ({e}): {out}"))
    }

    /// `keepsake backup DIR --json`: the summary of that folder.
    pub fn backup(&self, dir: &Path) -> serde_json::Value {
        let v = self.json(&["backup", dir.to_str().unwrap()]);
        v[0]["summary"].clone()
    }

    /// `keepsake restore --point P --to DIR --json <extra>`: its output, whatever the outcome.
    pub fn restore(&self, point: &str, to: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "restore",
            "--point",
            point,
            "--to",
            to.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// Enrols against `server` with `token`.
    pub fn enroll(&self, server: &str, token: &str, name: &str) -> serde_json::Value {
        self.json(&[
            "enroll", "--server", server, "--token", token, "--name", name,
        ])
    }
}

/// The recovery point a backup summary committed.
pub fn point_of(summary: &serde_json::Value) -> String {
    summary["committed"]["recovery_point_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no point in {summary}"))
        .to_string()
}

/// Deterministic file contents for tests.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Writes a small "shoot": RAW-like and JPEG-like random files, XMP sidecars, a folder with a
/// non-UTF-8 name on Unix, an empty file, a symlink. Returns the relative paths written.
pub fn write_shoot(root: &Path, seed: u64, photos: usize, raw_len: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dcim = root.join("DCIM/100EOSR5");
    std::fs::create_dir_all(&dcim).unwrap();
    for i in 0..photos {
        let raw = dcim.join(format!("IMG_{i:04}.CR3"));
        std::fs::write(&raw, random_bytes(seed * 1000 + i as u64, raw_len)).unwrap();
        let jpg = dcim.join(format!("IMG_{i:04}.JPG"));
        std::fs::write(&jpg, random_bytes(seed * 2000 + i as u64, raw_len / 4)).unwrap();
        let xmp = dcim.join(format!("IMG_{i:04}.xmp"));
        std::fs::write(
            &xmp,
            format!(
                "<x:xmpmeta rating=\"{}\">{}</x:xmpmeta>\n",
                i % 6,
                "crs:Exposure=0.5 ".repeat(200)
            ),
        )
        .unwrap();
        for p in [raw, jpg, xmp] {
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    std::fs::create_dir_all(root.join("Catalog")).unwrap();
    std::fs::write(root.join("Catalog/empty.txt"), b"").unwrap();
    out.push(PathBuf::from("Catalog/empty.txt"));
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"Caf\xe9 Ceremony");
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), b"latin-1 folder name").unwrap();
        out.push(PathBuf::from(name).join("notes.txt"));
        let _ = std::os::unix::fs::symlink("../DCIM", root.join("Catalog/link-to-dcim"));
    }
    out
}

/// BLAKE3 of every regular file under `root` (relative path → hash), for byte-identical checks.
pub fn tree_hashes(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false) {
        let e = e.expect("walk");
        if e.file_type().is_file() {
            let data = std::fs::read(e.path()).expect("read");
            out.insert(
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                blake3::hash(&data).to_hex().to_string(),
            );
        }
    }
    out
}

/// What an entry of a tree is, for comparing trees by kind, permissions and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file: permission bits and BLAKE3 of the content.
    File { mode: u32, hash: String },
    /// A folder and its permission bits.
    Dir { mode: u32 },
    /// A symbolic link and its target bytes.
    Symlink { target: Vec<u8> },
    /// A named pipe and its permission bits.
    Fifo { mode: u32 },
    /// Anything else.
    Other,
}

/// Every entry under `root` (never following links): relative path → [`Node`]. Files with more
/// than one name inside the tree are also returned as groups of paths sharing an inode.
#[cfg(unix)]
pub fn tree_nodes(root: &Path) -> (BTreeMap<PathBuf, Node>, Vec<Vec<PathBuf>>) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let e = e.expect("walk");
        let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
        let m = std::fs::symlink_metadata(e.path()).expect("lstat");
        let ft = m.file_type();
        let mode = m.mode() & 0o7777;
        let node = if ft.is_file() {
            if m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            let data = std::fs::read(e.path()).expect("read");
            Node::File {
                mode,
                hash: blake3::hash(&data).to_hex().to_string(),
            }
        } else if ft.is_dir() {
            Node::Dir { mode }
        } else if ft.is_symlink() {
            Node::Symlink {
                target: std::fs::read_link(e.path())
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            }
        } else if ft.is_fifo() {
            Node::Fifo { mode }
        } else {
            Node::Other
        };
        out.insert(rel, node);
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).collect();
    (out, groups)
}

/// Sizes of the files under `dir` (e.g. a storage folder).
pub fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A server process over a fresh test database, with helpers for organisations and agents.
pub struct World {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub db: TestDb,
    pub server: ServerProc,
    pub rt: tokio::runtime::Runtime,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    pub fn new() -> World {
        World::with_server_args(&[])
    }

    /// A world whose server runs with extra `serve` flags (e.g. `--job-lease-secs 2`).
    pub fn with_server_args(extra: &[&str]) -> World {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let db = rt.block_on(testkit::test_db());
        let dir = tempfile::Builder::new()
            .prefix("keepsake-e2e")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let server = ServerProc::start_with(&db.url(), &root.join("server"), None, extra);
        World {
            _dir: dir,
            root,
            db,
            server,
            rt,
        }
    }

    /// A world whose server serves HTTPS only, with a self-signed certificate for 127.0.0.1 made
    /// here (rcgen); returns the certificate's PEM file, the CA an agent must trust.
    pub fn https() -> (World, PathBuf) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let db = rt.block_on(testkit::test_db());
        let dir = tempfile::Builder::new()
            .prefix("keepsake-e2e")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert, key) = (root.join("cert.pem"), root.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let extra = [
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        let server = ServerProc::start_tls(&db.url(), &root.join("server"), &extra, &cert);
        let world = World {
            _dir: dir,
            root,
            db,
            server,
            rt,
        };
        (world, cert)
    }

    /// `keepsake-server admin create-org` through the real binary.
    pub fn create_org(&self, name: &str) -> serde_json::Value {
        self.admin_json(&["create-org", name])
    }

    /// Another single-use enrolment token of `org` (slug or id).
    pub fn enroll_token(&self, org: &str) -> String {
        let v = self.admin_json(&["enroll-token", "--org", org]);
        v["token"].as_str().unwrap().to_string()
    }

    pub fn agent(&self, name: &str, token: &str) -> AgentHome {
        let a = AgentHome::new(&self.root.join(format!("home-{name}")));
        a.enroll(&self.server.url, token, name);
        a
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn storage(&self) -> PathBuf {
        self.root.join("server/storage")
    }

    /// Runs `keepsake-server admin <args>` against this world's database.
    pub fn admin(&self, args: &[&str]) -> Output {
        std::process::Command::new(server_bin())
            .arg("admin")
            .args(args)
            .args(["--database-url", &self.db.url()])
            .arg("--data-dir")
            .arg(self.root.join("server"))
            .env("KEEPSAKE_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run keepsake-server admin")
    }

    /// Runs `keepsake-server admin <args> --json`, requires success and parses the output.
    pub fn admin_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.admin(&a);
        assert!(
            out.status.success(),
            "keepsake-server admin {a:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "keepsake-server admin {a:?}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Flips one bit inside every stored copy of the first blob of the file at `path`, directly
    /// in the packs on the server's local storage.
    pub fn corrupt_blob_of(&self, path: &str) {
        let copies: Vec<(String, i64)> = self.rt.block_on(async {
            let c = self.db.owner().await;
            c.query(
                "SELECT p.object_key, bc.pack_offset FROM backup_files f \
                 JOIN content_chunks cc ON cc.organization_id = f.organization_id \
                      AND cc.content_hash = f.content_hash AND cc.agent_id = f.agent_id AND cc.seq = 0 \
                 JOIN blob_copies bc ON bc.organization_id = cc.organization_id AND bc.blob_id = cc.blob_id \
                 JOIN packs p ON p.id = bc.pack_id \
                 WHERE f.path = $1",
                &[&path],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        });
        assert!(!copies.is_empty(), "no stored blob of {path}");
        for (key, off) in copies {
            let pack = self.storage().join(key);
            let mut bytes = std::fs::read(&pack).unwrap();
            bytes[off as usize + 100] ^= 0x01;
            std::fs::write(&pack, bytes).unwrap();
        }
    }

    /// Runs a statement as the schema owner (test set-up, e.g. organisation settings).
    pub fn execute(&self, sql: &str) -> u64 {
        self.rt.block_on(async {
            self.db
                .owner()
                .await
                .execute(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// Runs several statements as the schema owner in one round trip (e.g. a transaction that
    /// tampers with history the way someone with database access could).
    pub fn batch(&self, sql: &str) {
        self.rt.block_on(async {
            self.db
                .owner()
                .await
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.rt.block_on(async {
            self.db
                .owner()
                .await
                .query_one(sql, &[])
                .await
                .unwrap()
                .get(0)
        })
    }
}
