//! A backup of one source root, from the folder to a committed recovery point: the one
//! orchestrator. `keepsake backup` and the daemon both build a [`Run`] from a [`RunOptions`].
//!
//! The data flow, by module:
//!
//! 1. the source is known to the server (registered once, its server id kept in the catalog);
//! 2. [`local`]: the plan (`crate::detect`: scan merged with the catalog) feeds every new or
//!    modified file, in the order of [`classify`], to the pipeline (`crate::pipeline`: read,
//!    chunk, seal), whose blobs go to the upload sink (`crate::upload`: packs sent as they fill)
//!    while the job's delta is written to part files on disk;
//! 3. [`server`]: the server job is started, the delta parts sent, the job committed, and the
//!    commit journal applied to the catalog.
//!
//! When the organisation has wedding-critical rules for the source, a first pass takes only the
//! files they match, as a job of its own, so they are safe before the rest is read.
//!
//! Crash behaviour: nothing is lost or doubled wherever the process dies. The server refuses a
//! commit that names blobs it lacks; the run then forgets those blobs, abandons the job and runs
//! again (up to `max_attempts`), re-reading only files that are not committed. Killed at any
//! point, a rerun finishes without re-uploading what the server acknowledged: the catalog marks a
//! file committed only in the transaction that applies the server's commit, and the server ends
//! an abandoned job when its lease runs out. The work folder (`<home>/tmp/backup-*`) of a killed
//! run is left behind and never read again.

pub mod classify;
pub mod local;
mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_common::api::Committed;
use keepsake_common::keys::OrgKeys;
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::{Catalog, CatalogError, Source};
use crate::client::{self, ApiClient, ClientError, ConnectError, RetryPolicy};
use crate::exclude::Matcher;
use crate::home::{Home, HomeError};
use crate::pipeline::PipelineOptions;
use crate::upload::DEFAULT_PACK_BYTES;

pub use classify::{Classifier, Selection};
pub use local::{
    backup_to_sink, process_cpu_time, BackupError, BackupObserver, BackupOptions, BackupReport,
    NoBackupObserver,
};

/// Errors that stop a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A home-folder problem (not enrolled, missing keys).
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The catalog failed.
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// The local half of the backup failed.
    #[error(transparent)]
    Local(#[from] BackupError),
    /// The exclusion rules could not be built (an unreadable rule file, an invalid flag).
    #[error(transparent)]
    Rules(#[from] crate::exclude::ExcludeError),
    /// Anything else, with an explanation.
    #[error("{0}")]
    Other(String),
}

impl From<ConnectError> for RunError {
    fn from(e: ConnectError) -> RunError {
        match e {
            ConnectError::Home(h) => RunError::Home(h),
            ConnectError::Client(c) => RunError::Client(c),
        }
    }
}

impl RunError {
    /// Whether the server could not be reached (worth retrying soon), as opposed to a refusal
    /// or a local problem.
    pub fn is_transient(&self) -> bool {
        matches!(self, RunError::Client(c) if c.is_transient())
    }
}

/// Crash injection for tests: when `KEEPSAKE_FAILPOINT` names this point (and the build has the
/// `test-hooks` feature, see [`crate::test_hooks`]), the process aborts on the spot, exactly like
/// a power cut or `kill -9` at that moment. In any other build it does nothing.
pub fn failpoint(name: &str) {
    if crate::test_hooks::failpoint_armed(name) {
        eprintln!("keepsake: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Everything a run needs to know besides the home and the folder.
#[derive(Clone)]
pub struct RunOptions {
    /// Exclusion matcher for the root (built by `crate::exclude::config`).
    pub matcher: Arc<Matcher>,
    /// Pack size for uploads.
    pub pack_bytes: usize,
    /// Mark every job of the run wedding-critical (`keepsake backup --critical`).
    pub wedding_critical: bool,
    /// Commit attempts when the server reports missing blobs.
    pub max_attempts: u32,
    /// Upload limit in kbit/s.
    pub bandwidth_kbps: Option<u32>,
    /// How long requests are retried before the run fails (default: the client's).
    pub retry: Option<RetryPolicy>,
    /// The organisation's identity, when this machine keeps it: other machines' copies of a
    /// blob are then checked and adopted instead of uploaded again.
    pub verifier: Option<Arc<OrgKeys>>,
    /// Take only files unchanged for this long; younger ones are left for a later run (the
    /// daemon's settle window).
    pub settle: Option<Duration>,
    /// File order; with wedding-critical rules, their files go first in a pass of their own.
    pub classifier: Option<Classifier>,
    /// The pipeline's tunables.
    pub pipeline: PipelineOptions,
}

impl RunOptions {
    /// Defaults with `matcher`: one pass over everything, default pipeline.
    pub fn new(matcher: Arc<Matcher>) -> RunOptions {
        RunOptions {
            matcher,
            pack_bytes: DEFAULT_PACK_BYTES,
            wedding_critical: false,
            max_attempts: 3,
            bandwidth_kbps: None,
            retry: None,
            verifier: None,
            settle: None,
            classifier: None,
            pipeline: PipelineOptions::default(),
        }
    }
}

/// What one pass (one server job) did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupSummary {
    /// The committed job (absent when nothing had changed).
    pub committed: Option<Committed>,
    /// Files in the delta.
    pub files: u64,
    /// Files read and backed up.
    pub files_backed_up: u64,
    /// Files that could not be backed up.
    pub files_failed: u64,
    /// Changed files left for a later run (not settled yet, or not selected).
    pub files_deferred: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Sealed bytes new to this run (after dedup and compression).
    pub bytes_new: u64,
    /// Bytes uploaded.
    pub bytes_sent: u64,
    /// Blobs the server already had.
    pub blobs_already_present: u64,
    /// Other machines' copies this machine checked with its keys and adopted (not uploaded).
    pub blobs_adopted: u64,
    /// Packs uploaded.
    pub packs: u64,
    /// Duration.
    pub elapsed: Duration,
    /// Attempts (more than one when the server lacked blobs the catalog believed it had).
    pub attempts: u32,
    /// Named pipes recorded.
    pub fifos: u64,
    /// Entries not backed up because of their kind (sockets, devices, other file systems), each
    /// with its reason (the first of them; all are counted in `skipped_count`).
    pub skipped: Vec<crate::detect::scan::SkippedEntry>,
    /// How many entries were skipped.
    pub skipped_count: u64,
    /// The last attempt's report.
    #[serde(skip)]
    pub report: Option<BackupReport>,
}

impl BackupSummary {
    fn empty() -> BackupSummary {
        BackupSummary {
            committed: None,
            files: 0,
            files_backed_up: 0,
            files_failed: 0,
            files_deferred: 0,
            bytes_read: 0,
            bytes_new: 0,
            bytes_sent: 0,
            blobs_already_present: 0,
            blobs_adopted: 0,
            packs: 0,
            elapsed: Duration::ZERO,
            attempts: 0,
            fifos: 0,
            skipped: Vec::new(),
            skipped_count: 0,
            report: None,
        }
    }
}

/// What a run did: the wedding-critical pass (when there was one) and the pass over everything.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The wedding-critical pass.
    pub critical: Option<BackupSummary>,
    /// The pass over every settled change.
    pub main: BackupSummary,
}

/// One backup of one source root (see the module documentation).
pub struct Run<'a> {
    home: &'a Home,
    root: PathBuf,
    opts: RunOptions,
}

impl<'a> Run<'a> {
    /// A run of `root` for the enrolled `home`.
    pub fn new(home: &'a Home, root: &Path, opts: RunOptions) -> Run<'a> {
        Run {
            home,
            root: root.to_path_buf(),
            opts,
        }
    }

    /// Runs it: the wedding-critical pass when rules apply, then everything settled.
    pub fn execute(&self, observer: &mut dyn BackupObserver) -> Result<RunSummary, RunError> {
        let (_, client) = client::connect(self.home, self.opts.retry)?;
        let keys = self.home.public_keys()?;
        let root = std::fs::canonicalize(&self.root)
            .map_err(|e| RunError::Other(format!("{}: {e}", self.root.display())))?;
        let mut catalog = self.home.catalog_writer()?;
        let local = catalog.ensure_source(&root, None)?;
        let server_source = known_to_server(&client, &mut catalog, &local, &root)?;
        let classifier = self.opts.classifier.clone();
        let critical_pass = classifier.as_ref().filter(|c| c.has_critical_rules());
        let pass = |only_critical: Option<&Classifier>,
                    catalog: &mut Catalog,
                    observer: &mut dyn BackupObserver| {
            let select = Selection {
                settled_before_ns: self
                    .opts
                    .settle
                    .map(|s| now_ns() - s.as_nanos().min(i64::MAX as u128) as i64),
                only_critical: only_critical.cloned(),
            };
            let ctx = server::Pass {
                client: &client,
                catalog_opener: self.home.catalog_opener(),
                root: &root,
                server_source,
                keys: &keys,
                opts: &self.opts,
                select,
                wedding_critical: self.opts.wedding_critical || only_critical.is_some(),
            };
            self.with_attempts(&ctx, catalog, observer)
        };
        let critical = match critical_pass {
            Some(c) => Some(pass(Some(c), &mut catalog, observer)?),
            None => None,
        };
        let main = pass(None, &mut catalog, observer)?;
        Ok(RunSummary { critical, main })
    }

    /// One pass, attempted again while the server reports blobs the catalog believed it held.
    fn with_attempts(
        &self,
        pass: &server::Pass<'_>,
        catalog: &mut Catalog,
        observer: &mut dyn BackupObserver,
    ) -> Result<BackupSummary, RunError> {
        let started = Instant::now();
        let mut summary = BackupSummary::empty();
        loop {
            summary.attempts += 1;
            let work = self.home.scratch_dir("backup-")?;
            let result = pass.attempt(catalog, work.path(), observer, &mut summary);
            drop(work);
            match result? {
                Some(missing) if summary.attempts < self.opts.max_attempts => {
                    tracing::warn!(
                        missing = missing.len(),
                        "the server lacks blobs the catalog believed it held; backing up again"
                    );
                    catalog.forget_server_blobs(&missing)?;
                }
                Some(missing) => {
                    return Err(RunError::Other(format!(
                        "the server still lacks {} blob(s) after {} attempts",
                        missing.len(),
                        summary.attempts
                    )))
                }
                None => break,
            }
        }
        summary.elapsed = started.elapsed();
        Ok(summary)
    }
}

/// The server's id of the source at `root`: the one the catalog keeps when the server still
/// lists it, else registered now (first run, or a server that no longer knows it) and kept.
fn known_to_server(
    client: &ApiClient,
    catalog: &mut Catalog,
    local: &Source,
    root: &Path,
) -> Result<Uuid, RunError> {
    if let Some(id) = local
        .server_source_id
        .as_deref()
        .and_then(|s| Uuid::parse_str(s).ok())
    {
        if client.sources()?.iter().any(|s| s.id == id) {
            return Ok(id);
        }
    }
    let registered = client.register_source(&root.to_string_lossy(), None)?;
    tracing::info!(root = %root.display(), source = %registered.id, "source registered with the server");
    if local.server_source_id.as_deref() != Some(&registered.id.to_string()) {
        catalog.set_server_source_id(local.id, &registered.id.to_string())?;
    }
    Ok(registered.id)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
