//! One source's backup as the daemon runs it: a [`Run`] of [`crate::backup`] with the policy's
//! rules, settle window and bandwidth limit. On success the committed sequence is recorded, and
//! a source with deferred (unsettled) files comes back once they may have settled. On failure
//! the source is retried after a wait with up to 25% jitter: doubling up to `max_backoff` while
//! the server is unreachable or busy (the daemon is then `offline` and still queues the
//! source's changes in the catalog, [`queue_locally`]), a fixed minute (at most `max_backoff`)
//! for any other error. After each run freed memory goes back to the system
//! ([`release_freed_memory`]).
//!
//! Crash behaviour: nothing of a run is kept here. A run killed at any point is resumed by the
//! next daemon, which reconciles every source against the catalog at start: the catalog marks a
//! file committed only with the server's commit, so what the server acknowledged is not sent
//! again and the rest is taken again (see [`crate::backup`]). The offline queue is durable in the
//! catalog, written in transactions with the scan's checkpoint. The failure count and backoff
//! live in memory and start afresh with the next daemon.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use keepsake_common::api::AgentPolicy;

use crate::backup::{Classifier, NoBackupObserver, Run, RunError, RunOptions};
use crate::exclude::{self, LocalRules};
use crate::home::Home;

use super::{Daemon, BACKUP_RETRY};

/// Nanoseconds since the epoch (the jitter's source; 0 when the clock is before it).
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Daemon {
    /// Backs up source `i`: a wedding-critical pass (when rules apply), then everything settled.
    pub(super) fn run_source(&mut self, i: usize) {
        self.sources[i].first_event = None;
        self.state = "backing_up".into();
        self.write_status();
        let root = self.sources[i].root.clone();
        let server_source = self
            .home
            .catalog()
            .ok()
            .and_then(|c| c.source_by_root(&root).ok().flatten())
            .and_then(|s| s.server_source_id);
        let started = Instant::now();
        let result =
            exclude::matcher_for(&self.home, &root, self.policy.as_ref(), &self.opts.rules)
                .map_err(RunError::from)
                .and_then(|matcher| {
                    let mut opts = RunOptions::new(Arc::new(matcher));
                    opts.settle = Some(self.settle());
                    opts.classifier = Some(Classifier::from_policy(
                        self.policy.as_ref(),
                        server_source.as_deref(),
                    ));
                    opts.bandwidth_kbps = self.bandwidth_kbps();
                    opts.retry = Some(BACKUP_RETRY);
                    opts.verifier = self.home.stored_secret_keys().ok().flatten().map(Arc::new);
                    Run::new(&self.home, &root, opts).execute(&mut NoBackupObserver)
                });
        let mut committed_any = false;
        if let Ok(run) = &result {
            self.sources[i].dirty = run.main.files_deferred > 0;
            if run.main.files_deferred > 0 {
                // Come back when the deferred files may have settled.
                self.sources[i].next_run =
                    Instant::now() + self.settle().max(Duration::from_secs(1));
            }
            for (pass, critical) in [(run.critical.as_ref(), true), (Some(&run.main), false)] {
                if let Some(c) = pass.and_then(|p| p.committed.as_ref()) {
                    committed_any = true;
                    self.sources[i].status.last_seq = Some(c.seq);
                    tracing::info!(root = %root.display(), seq = c.seq, added = c.files_added,
                        changed = c.files_changed, deleted = c.files_deleted,
                        critical, "committed");
                }
            }
        }
        let s = &mut self.sources[i];
        match result {
            Ok(_) => {
                s.failures = 0;
                s.status.last_error = None;
                if committed_any {
                    let now = Utc::now();
                    s.status.last_commit_at = Some(now);
                    self.last_success = Some(now);
                }
                self.last_error = None;
                self.state = "idle".into();
            }
            Err(e) => {
                s.failures += 1;
                let transient = e.is_transient();
                let base = if transient {
                    1u64 << s.failures.min(9)
                } else {
                    60
                };
                let mut wait = Duration::from_secs(base).min(self.opts.max_backoff);
                // Jitter: up to +25%.
                wait += wait.mul_f64(f64::from(now_ns().rem_euclid(1000) as u32) / 4000.0);
                s.next_run = Instant::now() + wait;
                s.dirty = true;
                let msg = e.to_string();
                tracing::warn!(root = %root.display(), error = %msg, retry_in = ?wait, "backup failed");
                s.status.last_error = Some(msg.clone());
                self.last_error = Some(msg);
                self.state = if transient {
                    "offline".into()
                } else {
                    "error".into()
                };
                if transient {
                    // Keep the queue current while the server is away: the scan's changes go
                    // into the catalog (durably), so `status` and the heartbeat count them and
                    // a restart does not forget them.
                    if let Err(e) =
                        queue_locally(&self.home, &root, self.policy.as_ref(), &self.opts.rules)
                    {
                        tracing::warn!(error = %e, "cannot record the offline queue");
                    }
                }
            }
        }
        tracing::debug!(elapsed = ?started.elapsed(), "run finished");
        release_freed_memory();
    }
}

/// Hands memory freed by a run (the pipeline's buffers, per-thread allocator arenas) back to the
/// system, so an idle daemon stays small. glibc keeps freed memory of its arenas otherwise.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointers are passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Scans `root` into the catalog without uploading: changed files become pending work.
fn queue_locally(
    home: &Home,
    root: &Path,
    policy: Option<&AgentPolicy>,
    rules: &LocalRules,
) -> Result<(), RunError> {
    let root = std::fs::canonicalize(root)
        .map_err(|e| RunError::Other(format!("{}: {e}", root.display())))?;
    let matcher = Arc::new(exclude::matcher_for(home, &root, policy, rules)?);
    let mut catalog = home.catalog_writer()?;
    let opts = crate::detect::plan::PlanOptions {
        update_catalog: true,
        probe_readable: false,
        ..Default::default()
    };
    crate::detect::plan::run(
        &mut catalog,
        &root,
        matcher,
        Default::default(),
        &opts,
        &mut crate::detect::plan::NoObserver,
    )
    .map_err(|e| RunError::Other(e.to_string()))?;
    Ok(())
}
