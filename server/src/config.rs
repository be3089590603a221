//! Server configuration: defaults < config file < environment < command-line flags.
//!
//! Crash behaviour: none; configuration is read at start and never written.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

pub const DEFAULT_BIND: &str = "127.0.0.1:8420";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot determine a data directory; set --data-dir or KEEPSAKE_DATA_DIR")]
    NoDataDir,
    #[error("cannot read the {what} file {path}: {source}")]
    SecretFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} file {path} is empty")]
    EmptySecretFile { what: &'static str, path: PathBuf },
    #[error("HTTPS needs both tls_cert and tls_key (only {given} is set)")]
    TlsIncomplete { given: &'static str },
}

/// Reads a secret (a database URL, a token) kept in a file instead of on the command line: the
/// file's contents without surrounding white space; an unreadable or empty file is an error.
pub fn read_secret_file(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(ConfigError::EmptySecretFile {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

/// A secret given directly, else read from its file (see [`read_secret_file`]).
fn secret_or_file(
    what: &'static str,
    value: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    match (value, file) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(p)) => read_secret_file(what, p).map(Some),
        (None, None) => Ok(None),
    }
}

/// The certificate chain and private key (PEM files) the server serves HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A trusted reverse proxy: one address (`10.0.0.5`) or a network (`10.0.0.0/24`).
pub fn parse_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)"))
}

fn deserialize_proxies<'de, D>(d: D) -> Result<Option<Vec<ipnet::IpNet>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let list: Option<Vec<String>> = Option::deserialize(d)?;
    list.map(|l| {
        l.iter()
            .map(|s| parse_proxy(s).map_err(serde::de::Error::custom))
            .collect()
    })
    .transpose()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (structured logs for collectors).
    Json,
}

/// Command line of `keepsake-server`.
#[derive(Debug, Parser)]
#[command(
    name = "keepsake-server",
    version,
    about = "Keepsake central backup server"
)]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(long, env = "KEEPSAKE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "KEEPSAKE_BIND", global = true)]
    pub bind: Option<SocketAddr>,
    /// Directory for the server's state: the embedded PostgreSQL cluster and local storage.
    #[arg(long, env = "KEEPSAKE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL with rights to create the schema. Without it the server runs its own
    /// embedded cluster in the data directory. Queries run as the role `keepsake_app`.
    #[arg(
        long,
        env = "KEEPSAKE_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL URL (keeps its password out of the process list and the
    /// environment); `--database-url` wins when both are given.
    #[arg(
        long,
        env = "KEEPSAKE_DATABASE_URL_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub database_url_file: Option<PathBuf>,
    /// Log filter, e.g. `info`, `debug`, `keepsake_server=debug,info`.
    #[arg(long, env = "KEEPSAKE_LOG", global = true)]
    pub log_level: Option<String>,
    /// Log line format.
    #[arg(long, env = "KEEPSAKE_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Folder for the default local storage destination (default: <data-dir>/storage). A
    /// `[storage]` table in the config file selects S3-compatible storage instead.
    #[arg(long, env = "KEEPSAKE_STORAGE_DIR", global = true)]
    pub storage_dir: Option<PathBuf>,
    /// Platform administrator token for `POST /v1/orgs` (unset: organisations are created only
    /// with `keepsake-server admin create-org`).
    #[arg(
        long,
        env = "KEEPSAKE_PLATFORM_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub platform_token: Option<String>,
    /// File holding the platform administrator token; `--platform-token` wins when both are
    /// given.
    #[arg(
        long,
        env = "KEEPSAKE_PLATFORM_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub platform_token_file: Option<PathBuf>,
    /// Seconds a running backup job may go without a word from its agent (a delta part, a
    /// commit) before it is failed as abandoned and its staged delta discarded (default 1800).
    #[arg(long, env = "KEEPSAKE_JOB_LEASE_SECS", global = true)]
    pub job_lease_secs: Option<u64>,
    /// Certificate chain (PEM) for HTTPS; with `--tls-key` the server serves HTTPS only.
    #[arg(long, env = "KEEPSAKE_TLS_CERT", global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "KEEPSAKE_TLS_KEY", global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Reverse proxy whose `X-Forwarded-For` is believed: an address or a network (repeatable;
    /// comma-separated in the environment). Without it the TCP peer is the client.
    #[arg(
        long = "trusted-proxy",
        env = "KEEPSAKE_TRUSTED_PROXIES",
        global = true,
        value_name = "IP|CIDR",
        value_delimiter = ',',
        value_parser = parse_proxy
    )]
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum Command {
    /// Apply migrations and serve the API (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Administration (works without a running server; uses the database directly).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// Create an organisation with its first admin; prints the admin token and an enrolment token.
    CreateOrg {
        /// Display name, e.g. "Smith & Jones Photography".
        name: String,
        /// URL-safe short name (default: derived from the name).
        #[arg(long)]
        slug: Option<String>,
        /// E-mail of the first admin (owner) of the organisation.
        #[arg(long, default_value = "admin@localhost.localdomain")]
        admin_email: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create another single-use enrolment token for an organisation (id or slug).
    EnrollToken {
        #[arg(long)]
        org: String,
        /// Validity in hours.
        #[arg(long, default_value_t = 72)]
        hours: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Recovery jobs: request a restore onto a machine, list and inspect them.
    #[command(subcommand)]
    Recovery(RecoveryCommand),
    /// Disaster scenarios: list the procedures and start one.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
}

/// What a recovery job restores (`admin recovery create --type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecoveryKind {
    /// A whole source.
    Full,
    /// Some folders of a source (`--path`, at least one).
    Partial,
    /// One file (`--path`, exactly one).
    File,
    /// A source as it was at a time (`--at`).
    PointInTime,
    /// Ahead of every other job, with the emergency contacts notified.
    Emergency,
}

#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum RecoveryCommand {
    /// Queue a recovery job for a target machine (it restores when it next claims work).
    Create {
        /// Organisation (id or slug).
        #[arg(long)]
        org: String,
        /// What to restore.
        #[arg(long = "type", value_enum)]
        kind: RecoveryKind,
        /// The machine that restores (name or id).
        #[arg(long)]
        target_agent: String,
        /// Absolute folder on the target machine.
        #[arg(long = "to")]
        to: String,
        /// Recovery point id.
        #[arg(long, conflicts_with_all = ["source", "from_agent"])]
        point: Option<uuid::Uuid>,
        /// Source id (its newest point, or the newest at or before `--at`).
        #[arg(long, conflicts_with = "from_agent")]
        source: Option<uuid::Uuid>,
        /// Restore this machine's only (or first) source (name or id).
        #[arg(long)]
        from_agent: Option<String>,
        /// Relative path of a folder or file to restore (repeatable).
        #[arg(long = "path")]
        paths: Vec<String>,
        /// The state at this time (RFC 3339, e.g. 2025-06-14T18:00:00Z).
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// Replace newer local files (default: restore beside them).
        #[arg(long)]
        overwrite: bool,
        /// A note for the job.
        #[arg(long)]
        notes: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The organisation's recovery jobs, newest first.
    List {
        #[arg(long)]
        org: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One recovery job with its log and validation.
    Show {
        id: uuid::Uuid,
        #[arg(long)]
        org: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum ScenarioCommand {
    /// The organisation's disaster scenarios with their steps.
    List {
        #[arg(long)]
        org: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start a scenario: queue the recovery jobs it prescribes.
    Start {
        /// Scenario name or id, e.g. "Laptop stolen at a venue".
        scenario: String,
        #[arg(long)]
        org: String,
        /// The machine that restores (name or id).
        #[arg(long)]
        target_agent: String,
        /// Absolute folder on the target machine.
        #[arg(long = "to")]
        to: String,
        /// The machine that was lost (name or id; may be revoked).
        #[arg(long)]
        lost_agent: Option<String>,
        /// The state at this time (RFC 3339), e.g. before ransomware struck.
        #[arg(long)]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The config file's keys (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    /// File holding the database URL (when `database_url` is not set).
    pub database_url_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub db_pool_size: Option<usize>,
    pub storage_dir: Option<PathBuf>,
    /// The default storage destination (overrides `storage_dir`), e.g. an S3 bucket.
    pub storage: Option<crate::destinations::DestinationConfig>,
    pub platform_token: Option<String>,
    /// File holding the platform token (when `platform_token` is not set).
    pub platform_token_file: Option<PathBuf>,
    /// Seconds blobs reported present stay protected from garbage collection.
    pub protect_grace_secs: Option<u64>,
    /// Seconds a running backup job may go unheard of before it is failed as abandoned.
    pub job_lease_secs: Option<u64>,
    /// Certificate chain (PEM) for HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies whose `X-Forwarded-For` is believed (addresses or networks).
    #[serde(default, deserialize_with = "deserialize_proxies")]
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// Where the database comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A private cluster inside the data directory.
    Embedded,
    /// An existing PostgreSQL (owner URL).
    Url(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Embedded => f.write_str("Embedded"),
            Database::Url(u) => write!(f, "Url({})", crate::db::redact_url(u)),
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub database: Database,
    pub log_level: String,
    pub log_format: LogFormat,
    pub db_pool_size: usize,
    /// The server's default storage destination.
    pub storage: crate::destinations::DestinationConfig,
    pub platform_token: Option<crate::destinations::Secret>,
    pub protect_grace_secs: u64,
    /// Lease of a running backup job (see [`Cli::job_lease_secs`]).
    pub job_lease_secs: u64,
    /// HTTPS certificate and key; `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Default lease of a running backup job: 30 minutes without a delta part or a commit.
pub const DEFAULT_JOB_LEASE_SECS: u64 = 1800;

impl Config {
    /// Merges flags/environment (already merged by clap) over the config file over defaults.
    pub fn resolve(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        let data_dir = match cli.data_dir.clone().or(file.data_dir) {
            Some(d) => d,
            None => default_data_dir().ok_or(ConfigError::NoDataDir)?,
        };
        let database_url = match secret_or_file(
            "database URL",
            cli.database_url.clone(),
            cli.database_url_file.as_deref(),
        )? {
            Some(url) => Some(url),
            None => secret_or_file(
                "database URL",
                file.database_url.clone(),
                file.database_url_file.as_deref(),
            )?,
        };
        let platform_token = match secret_or_file(
            "platform token",
            cli.platform_token.clone(),
            cli.platform_token_file.as_deref(),
        )? {
            Some(t) => Some(t),
            None => secret_or_file(
                "platform token",
                file.platform_token.clone(),
                file.platform_token_file.as_deref(),
            )?,
        };
        let database = match database_url {
            Some(url) if !url.trim().is_empty() => Database::Url(url),
            _ => Database::Embedded,
        };
        let tls = match (
            cli.tls_cert.clone().or(file.tls_cert),
            cli.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::TlsIncomplete { given: "tls_cert" }),
            (None, Some(_)) => return Err(ConfigError::TlsIncomplete { given: "tls_key" }),
        };
        Ok(Config {
            tls,
            trusted_proxies: cli
                .trusted_proxies
                .clone()
                .or(file.trusted_proxies)
                .unwrap_or_default(),
            database,
            bind: cli
                .bind
                .or(file.bind)
                .unwrap_or_else(|| DEFAULT_BIND.parse().expect("valid default address")),
            log_level: cli
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            db_pool_size: file.db_pool_size.unwrap_or(16).max(2),
            storage: match (cli.storage_dir.clone(), file.storage, file.storage_dir) {
                (Some(dir), _, _) => crate::destinations::DestinationConfig::Local { path: dir },
                (None, Some(cfg), _) => cfg,
                (None, None, Some(dir)) => {
                    crate::destinations::DestinationConfig::Local { path: dir }
                }
                (None, None, None) => crate::destinations::DestinationConfig::Local {
                    path: data_dir.join("storage"),
                },
            },
            platform_token: platform_token
                .filter(|t| !t.trim().is_empty())
                .map(crate::destinations::Secret::new),
            protect_grace_secs: file.protect_grace_secs.unwrap_or(24 * 3600),
            job_lease_secs: cli
                .job_lease_secs
                .or(file.job_lease_secs)
                .unwrap_or(DEFAULT_JOB_LEASE_SECS)
                .clamp(1, 30 * 24 * 3600),
            data_dir,
        })
    }

    /// A configuration for tests and embedding: embedded database in `data_dir`, ephemeral port.
    pub fn for_data_dir(data_dir: PathBuf) -> Config {
        Config {
            bind: "127.0.0.1:0".parse().expect("valid address"),
            storage: crate::destinations::DestinationConfig::Local {
                path: data_dir.join("storage"),
            },
            data_dir,
            database: Database::Embedded,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            db_pool_size: 8,
            platform_token: None,
            protect_grace_secs: 24 * 3600,
            job_lease_secs: DEFAULT_JOB_LEASE_SECS,
            tls: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `/var/lib/keepsake-server` for root (a place the PostgreSQL account can reach), else the
/// user's data directory.
pub fn default_data_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/lib/keepsake-server"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("keepsake-server"));
    }
    let home = PathBuf::from(std::env::var_os("HOME")?);
    if cfg!(target_os = "macos") {
        Some(home.join("Library/Application Support/keepsake-server"))
    } else {
        Some(home.join(".local/share/keepsake-server"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "bind = \"127.0.0.1:9000\"\ndata_dir = \"/srv/from-file\"\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "keepsake-server",
            "--config",
            file.to_str().unwrap(),
            "--bind",
            "127.0.0.1:9100",
            "migrate",
        ])
        .unwrap();
        let cfg = Config::resolve(&cli).unwrap();
        assert_eq!(cfg.bind, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/from-file"));
        assert_eq!(cfg.log_level, "debug");
        assert_eq!(cfg.database, Database::Embedded);
        assert_eq!(cli.command, Some(Command::Migrate));
    }

    #[test]
    fn database_url_and_platform_token_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("db-url");
        std::fs::write(&url, "postgresql://owner:s3cret@db.example/keepsake\n").unwrap();
        let token = dir.path().join("platform-token");
        std::fs::write(&token, "  tok-from-file \n").unwrap();
        let cli = Cli::try_parse_from([
            "keepsake-server",
            "--data-dir",
            "/srv/k",
            "--database-url-file",
            url.to_str().unwrap(),
            "--platform-token-file",
            token.to_str().unwrap(),
        ])
        .unwrap();
        let cfg = Config::resolve(&cli).unwrap();
        assert_eq!(
            cfg.database,
            Database::Url("postgresql://owner:s3cret@db.example/keepsake".into())
        );
        assert_eq!(
            cfg.platform_token.as_ref().map(|t| t.expose().to_string()),
            Some("tok-from-file".to_string())
        );

        // The same keys in the config file.
        let conf = dir.path().join("server.toml");
        std::fs::write(
            &conf,
            format!(
                "data_dir = \"/srv/k\"\ndatabase_url_file = {:?}\n",
                url.to_str().unwrap()
            ),
        )
        .unwrap();
        let cli =
            Cli::try_parse_from(["keepsake-server", "--config", conf.to_str().unwrap()]).unwrap();
        assert!(
            matches!(Config::resolve(&cli).unwrap().database, Database::Url(u) if u.contains("db.example"))
        );

        // A missing or empty file is a clear error, not a silent fall-back to the embedded
        // database.
        let missing = dir.path().join("nope");
        let cli = Cli::try_parse_from([
            "keepsake-server",
            "--data-dir",
            "/srv/k",
            "--database-url-file",
            missing.to_str().unwrap(),
        ])
        .unwrap();
        let e = Config::resolve(&cli).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read the database URL file {}",
                missing.display()
            )),
            "{e}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let cli = Cli::try_parse_from([
            "keepsake-server",
            "--data-dir",
            "/srv/k",
            "--platform-token-file",
            empty.to_str().unwrap(),
        ])
        .unwrap();
        let e = Config::resolve(&cli).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("the platform token file {} is empty", empty.display())
        );
    }

    #[test]
    fn tls_and_trusted_proxies_come_from_file_env_or_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "tls_cert = \"/etc/ks/cert.pem\"\ntls_key = \"/etc/ks/key.pem\"\n\
             trusted_proxies = [\"10.0.0.5\", \"192.168.0.0/16\", \"::1\"]\n",
        )
        .unwrap();
        let args = ["keepsake-server", "--config", file.to_str().unwrap()];
        let cfg = Config::resolve(&Cli::try_parse_from(args).unwrap()).unwrap();
        assert_eq!(
            cfg.tls,
            Some(TlsFiles {
                cert: "/etc/ks/cert.pem".into(),
                key: "/etc/ks/key.pem".into()
            })
        );
        let shown: Vec<String> = cfg.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.0.0.5/32", "192.168.0.0/16", "::1/128"]);
        // Flags replace the file's list.
        let cli = Cli::try_parse_from([
            "keepsake-server",
            "--config",
            file.to_str().unwrap(),
            "--trusted-proxy",
            "172.16.0.0/12,127.0.0.1",
        ])
        .unwrap();
        let shown: Vec<String> = Config::resolve(&cli)
            .unwrap()
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(shown, ["172.16.0.0/12", "127.0.0.1/32"]);
        // Half a TLS setting is refused; so is a proxy that is not an address.
        let cli = Cli::try_parse_from(["keepsake-server", "--tls-cert", "/x.pem"]).unwrap();
        let err = Config::resolve(&cli).unwrap_err().to_string();
        assert!(err.contains("tls_key"), "{err}");
        let err = Cli::try_parse_from(["keepsake-server", "--trusted-proxy", "proxy.lan"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an IP address"), "{err}");
        std::fs::write(&file, "trusted_proxies = [\"10.0.0.300\"]\n").unwrap();
        let err = Config::resolve(&Cli::try_parse_from(args).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an IP address"), "{err}");
    }

    #[test]
    fn database_url_is_redacted_in_debug_output() {
        let db = Database::Url("postgresql://owner:s3cret@db.example/keepsake".into());
        let shown = format!("{db:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("owner:***@db.example"), "{shown}");
    }
}
