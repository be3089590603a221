//! Talking to the server: enrolment (with the organisation's key setup) and one-shot backups.
//!
//! A backup: register the source → plan and read the changes into the upload sink (which sends
//! packs as they fill) and delta parts on disk → start the server job → send the parts → commit
//! → record the commit in the catalog. The server refuses a commit that names blobs it lacks;
//! the agent then forgets those blobs, abandons the job and runs again, re-reading only the files
//! that are not committed. Killed at any point, a rerun finishes without re-uploading what the
//! server acknowledged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keepsake_common::api::{CommitRequest, Committed, EnrollRequest, JobKind, RegisterKeyRequest};
use keepsake_common::delta::DeltaHeader;
use keepsake_common::keys::{KeyBundle, OrgKeys, PaperKey};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::client::{ApiClient, ClientError, CommitAnswer, RetryPolicy};
use crate::exclude::Matcher;
use crate::home::{AgentConfig, CatalogOpener, Home, HomeError, SecretSource};
use crate::pipeline::{backup_to_sink, BackupError, BackupObserver, BackupOptions, BackupReport};
use crate::upload::{UploadSink, DEFAULT_PACK_BYTES};

/// Errors of enrolment and backups.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A home-folder problem (not enrolled, missing keys, locked bundle).
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The catalog failed.
    #[error("catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The backup itself failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Key material problems.
    #[error(transparent)]
    Keys(#[from] keepsake_common::keys::KeyError),
    /// Anything else, with an explanation.
    #[error("{0}")]
    Other(String),
}

/// Crash injection for tests: when `KEEPSAKE_FAILPOINT` names this point, the process aborts
/// on the spot, exactly like a power cut or `kill -9` at that moment.
pub fn failpoint(name: &str) {
    if std::env::var("KEEPSAKE_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("keepsake: failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Options of `keepsake enroll`.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Server URLs (first is tried first).
    pub server_urls: Vec<String>,
    /// The single-use enrolment token.
    pub enroll_token: String,
    /// This machine's name in the organisation.
    pub name: String,
    /// Where the passphrase (or paper key) comes from.
    pub secrets: SecretSource,
    /// First machine only: also seal the bundle to a new paper key and write its secret here.
    pub paper_key_out: Option<PathBuf>,
    /// Scrypt work factor of the bundle (tests lower it; `None` is the strong default).
    pub scrypt_log_n: Option<u8>,
}

/// What enrolment did.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    /// The organisation.
    pub organization_id: Uuid,
    /// Its name.
    pub organization_name: String,
    /// This machine's agent id.
    pub agent_id: Uuid,
    /// True when this machine generated the organisation's keys.
    pub generated_keys: bool,
    /// The data key id in use.
    pub key_id: String,
    /// Whether the unsealed keys were kept on disk.
    pub secret_keys_on_disk: bool,
    /// Where the paper key was written (first machine, when asked).
    pub paper_key_file: Option<PathBuf>,
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Enrols this machine and sets up (first machine) or unlocks (later machines) the
/// organisation's keys. Only the sealed bundle ever goes to the server.
pub fn enroll(home: &Home, opts: &EnrollOptions) -> Result<Enrolled, SyncError> {
    if home.is_enrolled() {
        // Enrolled, but the keys were never set up or unlocked (e.g. a mistyped passphrase
        // after the token was spent): finish that with the saved agent token; the new
        // enrolment token is not used.
        if home.public_keys().is_err() {
            return finish_enrolment(home, opts);
        }
        return Err(SyncError::Other(format!(
            "{} already holds an enrolled agent; use another --home for a second agent",
            home.dir().display()
        )));
    }
    // Check the secret is available before spending the single-use token.
    let have_secret = opts.secrets.passphrase()?.is_some() || opts.secrets.paper_key_file.is_some();
    if !have_secret {
        return Err(SyncError::Other(format!(
            "a passphrase is needed to set up or unlock the organisation's keys: pass \
             --passphrase-file FILE or set {}",
            crate::home::PASSPHRASE_ENV
        )));
    }
    let anon = ApiClient::new(opts.server_urls.clone(), None)?;
    let e = anon.enroll(&EnrollRequest {
        enroll_token: opts.enroll_token.trim().to_string(),
        name: opts.name.clone(),
        hostname: hostname(),
        platform: Some(std::env::consts::OS.to_string()),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    })?;
    let cfg = AgentConfig {
        server_urls: opts.server_urls.clone(),
        organization_id: e.organization_id,
        organization_name: e.organization_name.clone(),
        agent_id: e.agent_id,
        agent_name: opts.name.clone(),
        token: e.agent_token.clone(),
        allow_unsealed_key_on_disk: e.allow_unsealed_key_on_disk,
    };
    home.save_config(&cfg)?;
    finish_enrolment(home, opts)
}

/// Sets up (first machine) or unlocks the organisation's keys for an enrolled home. A wrong
/// passphrase leaves the home enrolled without keys; running `keepsake enroll` again with the
/// right one finishes here.
fn finish_enrolment(home: &Home, opts: &EnrollOptions) -> Result<Enrolled, SyncError> {
    let cfg = home.config()?;
    let client = ApiClient::new(cfg.server_urls.clone(), Some(cfg.token.clone()))?;
    let (keys, generated, paper) = setup_keys(&client, opts).map_err(|e| match e {
        SyncError::Client(_) => e,
        other => SyncError::Other(format!(
            "{other}. This machine is enrolled as {:?} but its keys are not unlocked yet: run \
             `keepsake enroll` again with the right passphrase or paper key (no new token needed)",
            cfg.agent_name
        )),
    })?;
    home.save_public_keys(&keys.public())?;
    if cfg.allow_unsealed_key_on_disk {
        home.save_secret_keys(&keys)?;
    }
    Ok(Enrolled {
        organization_id: cfg.organization_id,
        organization_name: cfg.organization_name.clone(),
        agent_id: cfg.agent_id,
        generated_keys: generated,
        key_id: keys.key_id().to_string(),
        secret_keys_on_disk: cfg.allow_unsealed_key_on_disk,
        paper_key_file: paper,
    })
}

fn setup_keys(
    client: &ApiClient,
    opts: &EnrollOptions,
) -> Result<(OrgKeys, bool, Option<PathBuf>), SyncError> {
    if let Some(active) = client.keys()?.active {
        let bundle = KeyBundle::from_json(&active.bundle)?;
        let keys = opts.secrets.unseal(&bundle)?;
        return Ok((keys, false, None));
    }
    let pass = opts.secrets.passphrase()?.ok_or_else(|| {
        SyncError::Other(
            "this is the organisation's first machine: a passphrase is needed to seal its new keys"
                .into(),
        )
    })?;
    let keys = OrgKeys::generate()?;
    let mut extra = Vec::new();
    let mut paper_file = None;
    if let Some(out) = &opts.paper_key_out {
        let paper = PaperKey::generate();
        use keepsake_common::keys::ExposeSecret;
        crate::home::write_private(
            out,
            format!("{}\n", paper.secret().expose_secret()).as_bytes(),
        )?;
        extra.push(paper.recipient());
        paper_file = Some(out.clone());
    }
    let params = keepsake_common::keys::BundleParams {
        scrypt_log_n: opts
            .scrypt_log_n
            .unwrap_or(keepsake_common::keys::DEFAULT_SCRYPT_LOG_N),
    };
    let bundle = KeyBundle::seal_with(&keys, &pass, &extra, params)?;
    match client.register_key(&RegisterKeyRequest {
        key_id: keys.key_id().to_string(),
        recipient: keys.current_recipient().to_string(),
        bundle: bundle.to_json(),
        extra_recipients: extra.iter().map(|r| r.to_string()).collect(),
        replaces_key_id: None,
    }) {
        Ok(_) => Ok((keys, true, paper_file)),
        Err(ClientError::Api { code: Some(c), .. }) if c == "key_exists" => {
            // Another machine set the organisation up at the same moment: use its keys.
            if let Some(p) = &paper_file {
                let _ = std::fs::remove_file(p);
            }
            let active = client.keys()?.active.ok_or_else(|| {
                SyncError::Other("the server reported a key but returned none".into())
            })?;
            let keys = opts
                .secrets
                .unseal(&KeyBundle::from_json(&active.bundle)?)?;
            Ok((keys, false, None))
        }
        Err(e) => Err(e.into()),
    }
}

/// An API client for an enrolled home.
pub fn client_for(home: &Home) -> Result<(AgentConfig, Arc<ApiClient>), SyncError> {
    client_with_retry(home, None)
}

/// An API client for an enrolled home with its own retry policy (the daemon gives up sooner
/// and applies its own backoff, so it keeps scanning and reporting while the server is away).
pub fn client_with_retry(
    home: &Home,
    retry: Option<RetryPolicy>,
) -> Result<(AgentConfig, Arc<ApiClient>), SyncError> {
    let cfg = home.config()?;
    let mut client = ApiClient::new(cfg.server_urls.clone(), Some(cfg.token.clone()))?;
    if let Some(r) = retry {
        client = client.with_retry(r);
    }
    Ok((cfg, Arc::new(client)))
}

/// Adjusts the backup options of a run (tests, benchmarks).
pub type TuneFn = Box<dyn Fn(&mut BackupOptions)>;

/// Options of a one-shot backup.
pub struct SyncBackupOptions {
    /// Exclusion matcher for the root.
    pub matcher: Arc<Matcher>,
    /// Pack size for uploads.
    pub pack_bytes: usize,
    /// Mark the job wedding-critical.
    pub wedding_critical: bool,
    /// Commit attempts when the server reports missing blobs.
    pub max_attempts: u32,
    /// Adjusts the pipeline/plan options before the run.
    pub tune: Option<TuneFn>,
    /// Upload limit in kbit/s.
    pub bandwidth_kbps: Option<u32>,
    /// How long requests are retried before the run fails (default: the client's).
    pub retry: Option<RetryPolicy>,
    /// The organisation's identity, when this machine keeps it: other machines' copies of a
    /// blob are then checked and adopted instead of uploaded again.
    pub verifier: Option<Arc<OrgKeys>>,
}

impl SyncBackupOptions {
    /// Defaults with `matcher`.
    pub fn new(matcher: Arc<Matcher>) -> SyncBackupOptions {
        SyncBackupOptions {
            matcher,
            pack_bytes: DEFAULT_PACK_BYTES,
            wedding_critical: false,
            max_attempts: 3,
            tune: None,
            bandwidth_kbps: None,
            retry: None,
            verifier: None,
        }
    }
}

/// What a backup did.
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
    pub skipped: Vec<crate::scan::SkippedEntry>,
    /// How many entries were skipped.
    pub skipped_count: u64,
    /// The last run's report.
    #[serde(skip)]
    pub report: Option<BackupReport>,
}

/// Backs up `root` once: see the module documentation.
pub fn backup(
    home: &Home,
    root: &Path,
    opts: &SyncBackupOptions,
    observer: &mut dyn BackupObserver,
) -> Result<BackupSummary, SyncError> {
    let started = Instant::now();
    let (_, client) = client_with_retry(home, opts.retry)?;
    let keys = home.public_keys()?;
    let root = std::fs::canonicalize(root)
        .map_err(|e| SyncError::Other(format!("{}: {e}", root.display())))?;
    let mut catalog = home.catalog_writer()?;
    let catalog_opener = home.catalog_opener();
    let local = catalog.ensure_source(&root, None)?;
    let server_source = client.register_source(&root.to_string_lossy(), None)?;
    if local.server_source_id.as_deref() != Some(&server_source.id.to_string()) {
        catalog.set_server_source_id(local.id, &server_source.id.to_string())?;
    }
    let mut summary = BackupSummary {
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
    };
    loop {
        summary.attempts += 1;
        let work = home
            .path("tmp")
            .join(format!("backup-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&work)
            .map_err(|e| SyncError::Other(format!("{}: {e}", work.display())))?;
        let result = run_once(
            &client,
            &mut catalog,
            &catalog_opener,
            &root,
            server_source.id,
            &keys,
            opts,
            &work,
            observer,
            &mut summary,
        );
        let _ = std::fs::remove_dir_all(&work);
        match result? {
            Some(missing) if summary.attempts < opts.max_attempts => {
                tracing::warn!(
                    missing = missing.len(),
                    "the server lacks blobs the catalog believed it held; backing up again"
                );
                catalog.forget_server_blobs(&missing)?;
            }
            Some(missing) => {
                return Err(SyncError::Other(format!(
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

/// One attempt. `Ok(Some(missing))` when the commit was refused for missing blobs.
#[allow(clippy::too_many_arguments)]
fn run_once(
    client: &Arc<ApiClient>,
    catalog: &mut Catalog,
    catalog_opener: &CatalogOpener,
    root: &Path,
    server_source: Uuid,
    keys: &keepsake_common::keys::OrgPublicKeys,
    opts: &SyncBackupOptions,
    work: &Path,
    observer: &mut dyn BackupObserver,
    summary: &mut BackupSummary,
) -> Result<Option<Vec<[u8; 32]>>, SyncError> {
    let parent = client
        .sources()?
        .into_iter()
        .find(|s| s.id == server_source)
        .map(|s| s.last_committed_seq)
        .unwrap_or(0);
    let header = DeltaHeader::new(server_source.to_string(), Some(parent.max(0) as u64));
    let mut bopts = BackupOptions::new(work, header);
    if let Some(t) = &opts.tune {
        t(&mut bopts);
    }
    let sink = Arc::new(
        UploadSink::new(client.clone(), catalog_opener, opts.pack_bytes)
            .map(|s| {
                s.with_rate_limit(opts.bandwidth_kbps.map(|k| u64::from(k) * 1000 / 8))
                    .with_verifier(opts.verifier.clone())
            })
            .map_err(|e| SyncError::Other(e.to_string()))?,
    );
    let report = backup_to_sink(
        catalog,
        root,
        opts.matcher.clone(),
        keys,
        sink.clone(),
        &bopts,
        observer,
    )?;
    let stats = &sink.stats;
    use std::sync::atomic::Ordering::Relaxed;
    summary.files = report.delta.entries;
    summary.files_backed_up = report.files_backed_up;
    summary.files_failed = report.files_failed;
    summary.files_deferred = report.files_deferred;
    summary.fifos = report.plan.totals.scan.fifos;
    summary.skipped_count = report.plan.totals.scan.skipped;
    summary.skipped = report.plan.skipped.clone();
    summary.bytes_read += report.bytes_backed_up;
    summary.bytes_new += report.pipeline.cipher_bytes_emitted;
    summary.bytes_sent += stats.bytes_sent.load(Relaxed);
    summary.blobs_already_present += stats.blobs_already_present.load(Relaxed);
    summary.blobs_adopted += stats.blobs_adopted.load(Relaxed);
    summary.packs += stats.packs.load(Relaxed);
    let source = report
        .source_id
        .ok_or_else(|| SyncError::Other("the plan did not report its catalog source".into()))?;
    if report.delta.parts.is_empty() {
        // Nothing changed: no job, no recovery point.
        summary.report = Some(report);
        return Ok(None);
    }
    let job = client.start_job(server_source, JobKind::Incremental, opts.wedding_critical)?;
    let outcome = (|| -> Result<CommitAnswer, SyncError> {
        for part in &report.delta.parts {
            client.put_part(job.job_id, part.index, &part.path)?;
        }
        failpoint("before_commit");
        Ok(client.commit(
            job.job_id,
            &CommitRequest {
                parts: report.delta.parts.len() as u32,
                files_failed: report.files_failed.min(u64::from(u32::MAX)) as u32,
                bytes_read: report.bytes_backed_up,
                bytes_sent: summary.bytes_sent,
                delta_digest: Some(report.delta.digest),
            },
        )?)
    })();
    match outcome {
        Ok(CommitAnswer::Committed(c)) => {
            failpoint("after_commit");
            if let Some(journal) = &report.delta.journal {
                for batch in journal
                    .batches(10_000)
                    .map_err(|e| SyncError::Other(e.to_string()))?
                {
                    let batch = batch.map_err(|e| SyncError::Other(e.to_string()))?;
                    catalog.record_commit(source, c.seq, &batch)?;
                }
            }
            summary.committed = Some(c);
            summary.report = Some(report);
            Ok(None)
        }
        Ok(CommitAnswer::Missing(m)) => {
            let _ = client.fail_job(job.job_id, "blobs missing on the server; retrying");
            Ok(Some(m.missing.iter().map(|b| *b.as_bytes()).collect()))
        }
        Err(e) => {
            // Leave the server job to be abandoned; the next run starts a new one.
            let _ = client.fail_job(job.job_id, &e.to_string());
            Err(e)
        }
    }
}
