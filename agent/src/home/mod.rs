//! The agent's home folder: its configuration (server URLs, identity, token), the organisation's
//! keys, the catalog. Several agents can run side by side on one machine with different homes.
//!
//! ```text
//! <home>/agent.toml      server URLs, organisation, agent id and name, agent token (mode 0600)
//! <home>/keys.json       the organisation's public keys and chunk-ID key (mode 0600)
//! <home>/secret-keys.json  the unsealed data identities — only when the organisation allows
//!                        keeping them on disk (mode 0600); otherwise restores ask for the
//!                        passphrase (or a paper key) each time
//! <home>/catalog.db      the local catalog (see `catalog`)
//! <home>/catalog.lock    held by the one process that writes the catalog
//! <home>/exclude         local exclusion rules (gitignore syntax)
//! <home>/daemon.lock     held by the running daemon
//! <home>/status.json     the daemon's state, for `keepsake status`
//! <home>/tmp/            scratch space of backups and drills
//! <home>/policy.json     the organisation's policy as last received (see `policy`)
//! ```
//!
//! The home is created with mode 0700 and an existing one open to other users is tightened
//! ([`Home::ensure_dir`]); scratch folders under `tmp/` get exclusive random names
//! ([`Home::scratch_dir`]).
//!
//! Crash behaviour: every file the home owns is written atomically (temp file, fsync, rename;
//! [`write_private`]), so a crash leaves the old version or the new one, never a torn file. The
//! catalog has its own transactions (see `catalog`) and is handed out by `catalog`'s
//! [`Home::catalog_writer`] with its lock. `agent.toml` is written as soon as enrolment gets the
//! agent token and the keys last, so a crash in between leaves an enrolled home without keys,
//! which `keepsake enroll` finishes (see `crate::enroll`).

mod catalog;
mod policy;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use keepsake_common::keys::{KeyBundle, OrgKeys, OrgPublicKeys, PaperKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use catalog::{CatalogOpener, CatalogWriter};
pub use policy::POLICY_FILE;

/// File name of the agent configuration.
pub const CONFIG_FILE: &str = "agent.toml";
/// File name of the organisation's public keys.
pub const KEYS_FILE: &str = "keys.json";
/// File name of the unsealed secret keys (only when allowed).
pub const SECRET_KEYS_FILE: &str = "secret-keys.json";
/// File name of the local catalog.
pub const CATALOG_FILE: &str = "catalog.db";
/// Lock file held by a process that updates the catalog.
pub const LOCK_FILE: &str = "catalog.lock";
/// Local exclusion rules (gitignore syntax).
pub const LOCAL_EXCLUDE_FILE: &str = "exclude";
/// Lock file held by the running daemon.
pub const DAEMON_LOCK: &str = "daemon.lock";
/// Status file the daemon keeps current (read by `keepsake status`).
pub const STATUS_FILE: &str = "status.json";
/// Scratch folder: a backup's delta parts, a drill's restored files (removed after use; what a
/// killed process leaves there is never read again).
pub const TMP_DIR: &str = "tmp";

/// Errors of the home folder.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// The agent has not been enrolled (no configuration).
    #[error(
        "this agent is not enrolled (no {0}); run `keepsake enroll --server URL --token TOKEN`"
    )]
    NotEnrolled(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file has invalid contents.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The keys could not be unsealed or parsed.
    #[error(transparent)]
    Keys(#[from] keepsake_common::keys::KeyError),
}

/// `agent.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Server base URLs, tried in order (failover).
    pub server_urls: Vec<String>,
    /// The organisation this machine belongs to.
    pub organization_id: Uuid,
    /// The organisation's display name.
    #[serde(default)]
    pub organization_name: String,
    /// This machine's agent id.
    pub agent_id: Uuid,
    /// This machine's name in the organisation.
    pub agent_name: String,
    /// The agent token (secret).
    pub token: String,
    /// Whether the organisation allows keeping the unsealed key on disk.
    #[serde(default)]
    pub allow_unsealed_key_on_disk: bool,
    /// Plain `http://` to a server that is not on this machine is allowed (enrolled with
    /// `--insecure-http`); otherwise such a URL is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// A CA certificate (PEM) trusted for the servers' HTTPS besides the system's (enrolled with
    /// `--ca-cert`), e.g. for a self-signed server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// Checks server URLs: `https://` anywhere, `http://` only to this machine (127.0.0.0/8, ::1,
/// `localhost`) unless `insecure_http` allows it. The error names the URL and the way out.
pub fn check_server_urls(urls: &[String], insecure_http: bool) -> Result<(), String> {
    for url in urls {
        let parsed = reqwest::Url::parse(url.trim())
            .map_err(|e| format!("invalid server URL {url:?}: {e}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if insecure_http => {}
            "http" => {
                let host = parsed.host_str().unwrap_or("");
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = host.eq_ignore_ascii_case("localhost")
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(format!(
                        "refusing plain http:// to {url}: the agent token and backups would cross \
                         the network unencrypted; use https:// (with --ca-cert FILE for a \
                         self-signed certificate) or enrol with --insecure-http"
                    ));
                }
            }
            other => return Err(format!("server URL {url:?}: unsupported scheme {other:?}")),
        }
    }
    Ok(())
}

/// The agent's home folder.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` and its missing parents readable by the owner only (mode 0700 on Unix); an
/// existing folder is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// A new folder `<parent>/<prefix><random>`, created exclusively (a name that exists is never
/// reused) with mode 0700 (Unix), removed when the returned value is dropped.
pub fn private_temp_dir(parent: &Path, prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(fs::Permissions::from_mode(0o700));
    }
    b.tempdir_in(parent)
}

/// Writes `data` to `path` atomically, readable by the owner only: a temporary file with a
/// random name beside it, created exclusively (`O_EXCL`, mode 0600), synced, then renamed over
/// `path`. A missing parent folder is created with mode 0700. A crash leaves the old `path` or
/// the new one (and at worst an orphan `.<name>.*.tmp` beside it).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), HomeError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir(dir).map_err(io_err(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(data).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

impl Home {
    /// The home at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a file in the home.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the home when missing, with mode 0700 (Unix). An existing home that other users
    /// can read or enter (a home made by an older version, or by hand) is tightened to 0700 with
    /// a warning; when that is not possible (another owner) the warning says so and the home is
    /// used as it is. Every file the home creates goes through here first.
    pub fn ensure_dir(&self) -> Result<(), HomeError> {
        create_private_dir(&self.dir).map_err(io_err(&self.dir))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&self.dir)
                .map_err(io_err(&self.dir))?
                .permissions()
                .mode()
                & 0o7777;
            if mode & 0o077 != 0 {
                let home = self.dir.display();
                match fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)) {
                    Ok(()) => tracing::warn!(
                        %home,
                        old_mode = format!("{mode:o}"),
                        "the agent's home was open to other users; tightened it to 0700"
                    ),
                    Err(e) => tracing::warn!(
                        %home,
                        mode = format!("{mode:o}"),
                        error = %e,
                        "the agent's home is open to other users and cannot be tightened"
                    ),
                }
            }
        }
        Ok(())
    }

    /// Writes the home's file `name` atomically, readable by the owner only ([`write_private`]),
    /// creating the home first ([`Home::ensure_dir`]).
    pub fn write_file(&self, name: &str, data: &[u8]) -> Result<(), HomeError> {
        self.ensure_dir()?;
        write_private(&self.path(name), data)
    }

    /// A new scratch folder `<home>/tmp/<prefix><random>`: created exclusively (a name that
    /// exists is never reused), mode 0700, removed when the returned value is dropped.
    pub fn scratch_dir(&self, prefix: &str) -> Result<tempfile::TempDir, HomeError> {
        self.ensure_dir()?;
        let tmp = self.path(TMP_DIR);
        create_private_dir(&tmp).map_err(io_err(&tmp))?;
        private_temp_dir(&tmp, prefix).map_err(io_err(&tmp))
    }

    /// Whether the agent is enrolled.
    pub fn is_enrolled(&self) -> bool {
        self.path(CONFIG_FILE).is_file()
    }

    /// Reads `agent.toml`.
    pub fn config(&self) -> Result<AgentConfig, HomeError> {
        let p = self.path(CONFIG_FILE);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HomeError::NotEnrolled(p))
            }
            Err(e) => return Err(io_err(&p)(e)),
        };
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| HomeError::Invalid {
            path: p.clone(),
            message: e.to_string(),
        })?;
        check_server_urls(&cfg.server_urls, cfg.insecure_http)
            .map_err(|message| HomeError::Invalid { path: p, message })?;
        Ok(cfg)
    }

    /// Writes `agent.toml`.
    pub fn save_config(&self, cfg: &AgentConfig) -> Result<(), HomeError> {
        let p = self.path(CONFIG_FILE);
        let text = toml::to_string_pretty(cfg).map_err(|e| HomeError::Invalid {
            path: p.clone(),
            message: e.to_string(),
        })?;
        self.write_file(CONFIG_FILE, text.as_bytes())
    }

    /// The organisation's public keys (what backing up needs).
    pub fn public_keys(&self) -> Result<OrgPublicKeys, HomeError> {
        let p = self.path(KEYS_FILE);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HomeError::Invalid {
                    path: p,
                    message: "no keys yet: run `keepsake enroll` to set up or unlock the \
                              organisation's keys"
                        .into(),
                })
            }
            Err(e) => return Err(io_err(&p)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| HomeError::Invalid {
            path: p,
            message: e.to_string(),
        })
    }

    /// Stores the public keys.
    pub fn save_public_keys(&self, keys: &OrgPublicKeys) -> Result<(), HomeError> {
        let json = serde_json::to_vec_pretty(keys).map_err(|e| HomeError::Invalid {
            path: self.path(KEYS_FILE),
            message: e.to_string(),
        })?;
        self.write_file(KEYS_FILE, &json)
    }

    /// The unsealed keys kept on disk, when there are any.
    pub fn stored_secret_keys(&self) -> Result<Option<OrgKeys>, HomeError> {
        let p = self.path(SECRET_KEYS_FILE);
        match fs::read(&p) {
            Ok(b) => Ok(Some(OrgKeys::from_secret_json(&b)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    /// Keeps the unsealed keys on disk (only call when the organisation allows it).
    pub fn save_secret_keys(&self, keys: &OrgKeys) -> Result<(), HomeError> {
        let json = keys.to_secret_json()?;
        self.write_file(SECRET_KEYS_FILE, &json)
    }

    /// Removes unsealed keys from disk.
    pub fn forget_secret_keys(&self) -> Result<(), HomeError> {
        let p = self.path(SECRET_KEYS_FILE);
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }
}

/// Where a passphrase or paper key comes from, for commands that run without a terminal.
#[derive(Debug, Clone, Default)]
pub struct SecretSource {
    /// `--passphrase-file`.
    pub passphrase_file: Option<PathBuf>,
    /// `--paper-key-file`.
    pub paper_key_file: Option<PathBuf>,
}

/// Environment variable holding the passphrase.
pub const PASSPHRASE_ENV: &str = "KEEPSAKE_PASSPHRASE";

impl SecretSource {
    /// The passphrase: `--passphrase-file`, else `KEEPSAKE_PASSPHRASE`, else `None`.
    pub fn passphrase(&self) -> Result<Option<String>, HomeError> {
        if let Some(p) = &self.passphrase_file {
            let text = fs::read_to_string(p).map_err(io_err(p))?;
            let pass = text.trim_end_matches(['\r', '\n']).to_string();
            if pass.is_empty() {
                return Err(HomeError::Invalid {
                    path: p.clone(),
                    message: "the passphrase file is empty".into(),
                });
            }
            return Ok(Some(pass));
        }
        Ok(std::env::var(PASSPHRASE_ENV).ok().filter(|p| !p.is_empty()))
    }

    /// Unseals `bundle` with the paper key if one is given, else with the passphrase.
    pub fn unseal(&self, bundle: &KeyBundle) -> Result<OrgKeys, HomeError> {
        if let Some(p) = &self.paper_key_file {
            let text = fs::read_to_string(p).map_err(io_err(p))?;
            let paper = PaperKey::parse(&text)?;
            return Ok(bundle.unseal_with_identity(paper.identity())?);
        }
        match self.passphrase()? {
            Some(pass) => Ok(bundle.unseal_with_passphrase(&pass)?),
            None => Err(HomeError::Invalid {
                path: PathBuf::from(PASSPHRASE_ENV),
                message: format!(
                    "the organisation's key bundle is locked: give the passphrase with \
                     --passphrase-file FILE or {PASSPHRASE_ENV}, or a paper key with --paper-key-file"
                ),
            }),
        }
    }
}

#[cfg(all(test, unix))]
mod tests;

#[cfg(test)]
mod transport_tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_http_is_refused_off_this_machine_unless_allowed() {
        let local = urls(&[
            "http://127.0.0.1:8420",
            "http://127.9.0.1",
            "http://[::1]:8420/",
            "http://LocalHost:1",
            "https://backup.example.invalid",
        ]);
        assert_eq!(check_server_urls(&local, false), Ok(()));
        for remote in [
            "http://192.0.2.1:8420",
            "http://example.invalid",
            "http://[2001:db8::1]",
        ] {
            let err = check_server_urls(&urls(&["http://127.0.0.1:1", remote]), false).unwrap_err();
            assert!(
                err.contains(remote) && err.contains("--insecure-http"),
                "{err}"
            );
            assert_eq!(check_server_urls(&urls(&[remote]), true), Ok(()));
        }
        let err = check_server_urls(&urls(&["ftp://127.0.0.1"]), true).unwrap_err();
        assert!(err.contains("unsupported scheme"), "{err}");
        assert!(check_server_urls(&urls(&["not a url"]), true).is_err());
    }

    #[test]
    fn loading_a_config_with_plain_http_to_another_machine_fails_unless_it_was_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let mut cfg = AgentConfig {
            server_urls: urls(&["http://192.0.2.1:8420"]),
            organization_id: Uuid::nil(),
            organization_name: "Org".into(),
            agent_id: Uuid::nil(),
            agent_name: "nas".into(),
            token: "ksa_x".into(),
            allow_unsealed_key_on_disk: false,
            insecure_http: false,
            ca_cert: None,
        };
        home.save_config(&cfg).unwrap();
        let err = home.config().unwrap_err().to_string();
        assert!(err.contains("refusing plain http://"), "{err}");
        cfg.insecure_http = true;
        cfg.ca_cert = Some(dir.path().join("ca.pem"));
        home.save_config(&cfg).unwrap();
        assert_eq!(home.config().unwrap(), cfg);
        // A config written before these settings existed still loads (both off).
        let old = "server_urls = [\"http://127.0.0.1:8420\"]\norganization_id = \
                   \"00000000-0000-0000-0000-000000000000\"\nagent_id = \
                   \"00000000-0000-0000-0000-000000000000\"\nagent_name = \"nas\"\ntoken = \"t\"\n";
        std::fs::write(home.path(CONFIG_FILE), old).unwrap();
        let loaded = home.config().unwrap();
        assert!(!loaded.insecure_http && loaded.ca_cert.is_none());
    }
}
