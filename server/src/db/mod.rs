//! PostgreSQL: the application pool, the per-transaction identity, migrations, the embedded
//! cluster, and the queries of the tables that are neither the catalog ([`crate::catalog`]) nor
//! recovery ([`crate::recovery`]): organisations, machines, tokens, keys, policy, destinations.
//!
//! Every application query runs as the role `keepsake_app`, which owns nothing and has no
//! BYPASSRLS, so row-level security applies to it. The acting principal (user, agent or the
//! server's own background work) and its organisation are set with `set_config(..., true)` at the
//! start of each transaction ([`begin`]); being transaction-local, nothing survives into the next
//! transaction on a pooled connection.
//!
//! Crash behaviour: all state is PostgreSQL's. A transaction the server did not commit (the process
//! died, the connection dropped) is rolled back by PostgreSQL, and the identity settings are
//! transaction-local, so a pooled connection never carries one over.

pub mod agents;
pub mod blobs;
pub mod destinations;
pub mod embedded;
pub mod keys;
pub mod migrate;
pub mod orgs;
pub mod policy;
pub mod roles;
pub mod tokens;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use uuid::Uuid;

/// The role every application query runs as.
pub const APP_ROLE: &str = "keepsake_app";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {}", describe(.0))]
    Pg(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("database configuration: {0}")]
    Config(String),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::Pg(e),
            other => DbError::Pool(other.to_string()),
        }
    }
}

/// A readable description of a PostgreSQL error: message, detail, hint and constraint.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            if let Some(w) = db.where_() {
                s.push_str(&format!(" (where: {w})"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// Who is acting in a transaction. Row-level security keys off this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A person using the CLI or API, acting within one organisation they belong to.
    User { org: Uuid, user: Uuid },
    /// An enrolled machine of an organisation.
    Agent { org: Uuid, agent: Uuid },
    /// The server's own background work within one organisation.
    System { org: Uuid },
    /// No identity: sees no tenant rows at all.
    Anonymous,
}

impl Actor {
    pub fn org(&self) -> Option<Uuid> {
        match self {
            Actor::User { org, .. } | Actor::Agent { org, .. } | Actor::System { org } => {
                Some(*org)
            }
            Actor::Anonymous => None,
        }
    }

    fn settings(&self) -> [String; 4] {
        let s = |u: &Uuid| u.to_string();
        match self {
            Actor::User { org, user } => ["user".into(), s(org), s(user), String::new()],
            Actor::Agent { org, agent } => ["agent".into(), s(org), String::new(), s(agent)],
            Actor::System { org } => ["system".into(), s(org), String::new(), String::new()],
            Actor::Anonymous => [String::new(), String::new(), String::new(), String::new()],
        }
    }
}

/// Sets the acting identity for the current transaction only.
pub async fn set_identity(
    tx: &tokio_postgres::Transaction<'_>,
    actor: &Actor,
) -> Result<(), DbError> {
    let [kind, org, user, agent] = actor.settings();
    tx.execute(
        "SELECT set_config('keepsake.actor', $1, true), set_config('keepsake.org_id', $2, true), \
                set_config('keepsake.user_id', $3, true), set_config('keepsake.agent_id', $4, true)",
        &[&kind, &org, &user, &agent],
    )
    .await?;
    Ok(())
}

/// Starts a transaction acting as `actor`.
pub async fn begin<'a>(
    client: &'a mut deadpool_postgres::Client,
    actor: &Actor,
) -> Result<deadpool_postgres::Transaction<'a>, DbError> {
    let tx = client.transaction().await?;
    set_identity(&tx, actor).await?;
    Ok(tx)
}

/// How long a request waits for a pooled connection before it is answered 503.
pub const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest statement of the application role (a safety net; the largest commit statements of
/// a million-file job stay well below it).
pub const STATEMENT_TIMEOUT: &str = "15min";
/// A transaction of the application role left idle this long is ended by PostgreSQL (the
/// server never waits for a client inside a transaction).
pub const IDLE_IN_TRANSACTION: &str = "60s";

/// The application's connection pool. Every connection runs as [`APP_ROLE`].
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("status", &self.pool.status())
            .finish()
    }
}

impl Db {
    /// Builds the pool. `config` is the owner connection; each new connection switches to the
    /// application role and verifies that row-level security applies to it.
    pub fn new(config: tokio_postgres::Config, max_size: usize) -> Result<Db, DbError> {
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // Never `Clean`: its DISCARD ALL would also reset the role back to the owner.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_size)
            // A request waits this long for a connection, then gets 503: a full pool answers
            // instead of queueing requests without end.
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(&format!(
                            "SET ROLE {APP_ROLE}; \
                             SET statement_timeout = '{STATEMENT_TIMEOUT}'; \
                             SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'"
                        ))
                        .await
                        .map_err(HookError::Backend)?;
                    let row = client
                        .query_one(
                            "SELECT current_user::text, r.rolsuper, r.rolbypassrls \
                             FROM pg_roles r WHERE r.rolname = current_user",
                            &[],
                        )
                        .await
                        .map_err(HookError::Backend)?;
                    let (user, sup, bypass): (String, bool, bool) =
                        (row.get(0), row.get(1), row.get(2));
                    if user != APP_ROLE || sup || bypass {
                        return Err(HookError::message(format!(
                            "connection runs as {user} (superuser={sup}, bypassrls={bypass}); \
                             refusing to serve without row-level security"
                        )));
                    }
                    Ok(())
                })
            }))
            .build()
            .map_err(|e| DbError::Config(e.to_string()))?;
        Ok(Db { pool })
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Client, DbError> {
        Ok(self.pool.get().await?)
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// Connects once with the owner configuration (for migrations and administration).
pub async fn connect_owner(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, DbError> {
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "owner connection closed");
        }
    });
    Ok(client)
}

/// Answers when the database does (readiness probe).
pub async fn ping(client: &tokio_postgres::Client) -> Result<(), DbError> {
    client.query_one("SELECT 1", &[]).await?;
    Ok(())
}

/// Creates database `name` in the cluster `admin` is connected to, unless it exists.
pub async fn ensure_database(admin: &tokio_postgres::Client, name: &str) -> Result<(), DbError> {
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\"",
                name.replace('"', "\"\"")
            ))
            .await?;
    }
    Ok(())
}

/// Parses a database URL, refusing TLS modes we cannot honour.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let cfg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        DbError::Config(format!("invalid database URL: {e}"))
    })?;
    if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(DbError::Config(
            "sslmode=require is not supported by this build; connect over a Unix socket, \
             loopback, or a TLS-terminating proxy"
                .into(),
        ));
    }
    Ok(cfg)
}

/// The database URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        return url.to_string();
    }
    // key=value form
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
