//! Applies the SQL files of `migrations/` (embedded at build time) in order.
//!
//! Each file runs in its own transaction and is recorded in `keepsake_migrations` with a checksum;
//! an applied file that was edited afterwards is an error, never silently re-run. A session-level
//! advisory lock makes concurrent server starts against one database safe.
//!
//! Crash behaviour: a server killed while migrating leaves the file in progress unapplied (its
//! transaction rolls back) and the advisory lock released with its session; the next start applies
//! it again.

use tokio_postgres::Client;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Advisory lock key for migrations ("keepsake" in ASCII, truncated to 63 bits).
const LOCK_KEY: i64 = 0x6b65_6570_7361_6b65 & 0x7fff_ffff_ffff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migration {name} failed: {}", crate::db::describe(.source))]
    Apply {
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {0} was changed after it was applied (checksum differs); applied migrations must \
         never be edited — add a new migration instead"
    )]
    Edited(String),
}

/// How the database compares with the migrations this binary carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub applied: Vec<String>,
    pub pending: Vec<String>,
    /// Applied in the database but unknown to this binary (a newer server migrated it).
    pub unknown: Vec<String>,
    /// Applied, but the file in this binary differs.
    pub edited: Vec<String>,
}

impl Status {
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.edited.is_empty()
    }
}

pub fn checksum(sql: &str) -> String {
    blake3::hash(sql.as_bytes()).to_hex().to_string()
}

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS public.keepsake_migrations (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Reads the migration state without changing anything. Works for any role that can read
/// `keepsake_migrations` (the application role can).
pub async fn status(client: &Client) -> Result<Status, MigrateError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('public.keepsake_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let mut applied: Vec<(String, String)> = Vec::new();
    if exists {
        for row in client
            .query(
                "SELECT name, checksum FROM public.keepsake_migrations ORDER BY name",
                &[],
            )
            .await?
        {
            applied.push((row.get(0), row.get(1)));
        }
    }
    let mut st = Status::default();
    for (name, sum) in &applied {
        match MIGRATIONS.iter().find(|(n, _)| n == name) {
            Some((_, sql)) if checksum(sql) == *sum => st.applied.push(name.clone()),
            Some(_) => st.edited.push(name.clone()),
            None => st.unknown.push(name.clone()),
        }
    }
    for (name, _) in MIGRATIONS {
        if !applied.iter().any(|(n, _)| n == name) {
            st.pending.push(name.to_string());
        }
    }
    Ok(st)
}

/// Applies every pending migration. Returns the names applied (empty when already current).
pub async fn apply(client: &mut Client) -> Result<Vec<String>, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_locked(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_locked(client: &mut Client) -> Result<Vec<String>, MigrateError> {
    client
        .batch_execute(&format!(
            "SET client_min_messages = warning; {CREATE_TABLE}; RESET client_min_messages"
        ))
        .await?;
    let st = status(client).await?;
    if let Some(name) = st.edited.first() {
        return Err(MigrateError::Edited(name.clone()));
    }
    let mut done = Vec::new();
    for (name, sql) in MIGRATIONS {
        if !st.pending.iter().any(|p| p == name) {
            continue;
        }
        tracing::info!(migration = name, "applying migration");
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|source| MigrateError::Apply {
                name: name.to_string(),
                source,
            })?;
        tx.execute(
            "INSERT INTO public.keepsake_migrations (name, checksum) VALUES ($1, $2)",
            &[name, &checksum(sql)],
        )
        .await?;
        tx.commit().await?;
        done.push(name.to_string());
    }
    // The application role reads the migration state for /readyz.
    client
        .batch_execute(
            "DO $$ BEGIN
               IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'keepsake_app') THEN
                 GRANT SELECT ON public.keepsake_migrations TO keepsake_app;
               END IF;
             END $$",
        )
        .await?;
    Ok(done)
}
