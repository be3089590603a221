//! Server lifecycle: prepare the database (embedded or configured), migrate, serve, shut down.
//!
//! One serving process per data directory (an exclusive lock on `server.lock`, released by the
//! operating system however the process ends). On a crash: the embedded cluster may outlive the
//! server; the next start finds its postmaster (or its stale `postmaster.pid`) and takes it over
//! ([`crate::db::embedded`]); migrations are applied one transaction per file, so an interrupted
//! migration is applied again from its start; with `tls_cert` and `tls_key` set it serves HTTPS
//! only (rustls), and a certificate or key it cannot load stops the start; requests in flight are lost (each write they made
//! is one transaction, so it either happened whole or not at all) and agents retry them.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Config, Database, LogFormat, TlsFiles};
use crate::db::embedded::{self, Cluster, ClusterOptions};
use crate::db::{self, migrate, Db, DbError};
use crate::destinations::{Destination, DestinationError};
use crate::http::{self, AppState, HttpSettings};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Embedded(#[from] embedded::EmbeddedError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("default storage: {0}")]
    Storage(#[from] DestinationError),
    #[error("server task failed: {0}")]
    Task(String),
    #[error("TLS: {path}: {message}")]
    Tls { path: PathBuf, message: String },
}

/// Loads the HTTPS certificate chain and key (PEM) into a rustls configuration (aws-lc-rs, the
/// provider the agent's client uses too; HTTP/2 and HTTP/1.1 offered).
fn load_tls(files: &TlsFiles) -> Result<RustlsConfig, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |path: &PathBuf, message: String| ServerError::Tls {
        path: path.clone(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err(&files.cert, format!("cannot read the certificate: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(
            &files.cert,
            "no PEM certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| tls_err(&files.key, format!("cannot read the private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            tls_err(
                &files.cert,
                format!("certificate and key are not usable together: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// The database a server process uses, with the embedded cluster kept alive alongside.
pub struct PreparedDatabase {
    pub owner_config: tokio_postgres::Config,
    pub cluster: Option<Cluster>,
}

/// Brings the database up: starts (and on first run creates) the embedded cluster, or parses
/// the configured URL. Blocking work runs off the async threads.
pub async fn prepare_database(config: &Config, own: bool) -> Result<PreparedDatabase, ServerError> {
    match &config.database {
        Database::Url(url) => {
            tracing::info!(database = %db::redact_url(url), "using configured PostgreSQL");
            Ok(PreparedDatabase {
                owner_config: db::parse_url(url)?,
                cluster: None,
            })
        }
        Database::Embedded => {
            let root: PathBuf = config.data_dir.join("postgres");
            let cluster = tokio::task::spawn_blocking(move || {
                let mut cluster = Cluster::init(&root, &ClusterOptions::default())?;
                cluster.start(own)?;
                Ok::<_, embedded::EmbeddedError>(cluster)
            })
            .await
            .map_err(|e| ServerError::Task(e.to_string()))??;
            tracing::info!(
                socket_dir = %cluster.socket_dir().display(),
                "embedded PostgreSQL running (Unix socket only)"
            );
            let admin = db::connect_owner(&cluster.pg_config("postgres")).await?;
            db::ensure_database(&admin, embedded::DATABASE).await?;
            Ok(PreparedDatabase {
                owner_config: cluster.pg_config(embedded::DATABASE),
                cluster: Some(cluster),
            })
        }
    }
}

/// One serving process per data directory (its embedded cluster is not shared): an exclusive
/// lock on `<data-dir>/server.lock`, released when the process exits, however it exits.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("server.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(ServerError::Io(std::io::Error::other(format!(
            "another keepsake-server is already serving {}",
            dir.display()
        ))));
    }
    Ok(f)
}

/// Applies pending migrations with the owner connection.
pub async fn run_migrations(owner: &tokio_postgres::Config) -> Result<Vec<String>, ServerError> {
    let mut client = db::connect_owner(owner).await?;
    let applied = migrate::apply(&mut client).await?;
    if applied.is_empty() {
        tracing::info!("database schema is current");
    } else {
        tracing::info!(count = applied.len(), "applied migrations");
    }
    Ok(applied)
}

/// A server running in this process.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Whether it serves HTTPS (else plain HTTP).
    pub tls: bool,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Base URL such as `http://127.0.0.1:8420` (`https://` when it serves HTTPS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Asks the server to stop and waits until in-flight requests are done and the embedded
    /// database (if any) has stopped.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server stops by itself (signal).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?
    }
}

/// Prepares the database, migrates, binds and starts serving. `stop` ends the server when it
/// resolves (in addition to [`RunningServer::shutdown`]).
pub async fn start(
    config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningServer, ServerError> {
    // A certificate that cannot be loaded stops the start before anything else happens.
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let _lock = match config.database {
        Database::Embedded => Some(lock_data_dir(&config.data_dir)?),
        Database::Url(_) => None,
    };
    let database = prepare_database(&config, true).await?;
    run_migrations(&database.owner_config).await?;
    let db = Db::new(database.owner_config.clone(), config.db_pool_size)?;
    // Fail fast if the application role cannot connect (e.g. migrations did not create it).
    drop(db.client().await?);
    let default_storage = Destination::open("server-default", &config.storage)?;
    let settings = HttpSettings {
        protect_grace: std::time::Duration::from_secs(config.protect_grace_secs),
        platform_token_hash: config
            .platform_token
            .as_ref()
            .map(|t| crate::auth::hash_token(t.expose())),
        trusted_proxies: config.trusted_proxies.clone(),
        ..HttpSettings::default()
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, https = tls.is_some(), "listening");
    let serving_tls = tls.is_some();
    let (tx, rx) = oneshot::channel::<()>();
    let sweeper = tokio::spawn(sweep_abandoned_jobs(
        db.clone(),
        std::time::Duration::from_secs(config.job_lease_secs),
    ));
    let app = http::router(AppState::new(
        db.clone(),
        default_storage,
        settings,
        Some(database.owner_config.clone()),
    ))
    .into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        let begun = Arc::new(tokio::sync::Notify::new());
        let begun_tx = begun.clone();
        let shutdown = async move {
            tokio::select! {
                _ = rx => {},
                _ = stop => {},
            }
            tracing::info!("shutting down: finishing in-flight requests");
            begun_tx.notify_one();
        };
        let _lock = _lock;
        // In-flight requests get a grace period; a request stuck longer (a huge commit, a
        // client that stopped reading) must not keep the server and its database running.
        // Their transactions roll back when the cluster stops.
        let serve: std::pin::Pin<
            Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>,
        > = match tls {
            None => Box::pin(
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .into_future(),
            ),
            Some(tls) => {
                let handle = axum_server::Handle::<SocketAddr>::new();
                let stopper = handle.clone();
                tokio::spawn(async move {
                    shutdown.await;
                    stopper.graceful_shutdown(None);
                });
                let listener = listener.into_std()?;
                Box::pin(
                    axum_server::from_tcp_rustls(listener, tls)?
                        .handle(handle)
                        .serve(app),
                )
            }
        };
        let served = tokio::select! {
            r = serve => r,
            _ = async {
                begun.notified().await;
                tokio::time::sleep(shutdown_grace()).await;
            } => {
                tracing::warn!(grace = ?shutdown_grace(), "in-flight requests did not finish in time; stopping anyway");
                Ok(())
            }
        };
        sweeper.abort();
        db.pool().close();
        if let Some(mut cluster) = database.cluster {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .map_err(|e| ServerError::Task(e.to_string()))??;
        }
        served.map_err(ServerError::Io)
    });
    Ok(RunningServer {
        addr,
        tls: serving_tls,
        shutdown: Some(tx),
        task,
    })
}

/// Background work: fails running backup jobs whose agent went silent for longer than `lease`
/// (see `catalog::lease`). Runs in every server process; the database hands each abandoned job to
/// exactly one of them. Checks every minute, or every `lease / 2` when the lease is shorter.
async fn sweep_abandoned_jobs(db: Db, lease: std::time::Duration) {
    let every = (lease / 2).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match crate::catalog::expire_abandoned(&db, lease).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                jobs = n,
                ?lease,
                "failed backup jobs abandoned by their agents"
            ),
            Err(e) => tracing::warn!(error = %e, "could not sweep abandoned backup jobs"),
        }
    }
}

/// How long a stopping server waits for in-flight requests: 30 s, or
/// `KEEPSAKE_SHUTDOWN_GRACE_SECS`.
fn shutdown_grace() -> std::time::Duration {
    let secs = std::env::var("KEEPSAKE_SHUTDOWN_GRACE_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(30);
    std::time::Duration::from_secs(secs)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Installs the global tracing subscriber (stderr; text or JSON lines).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
