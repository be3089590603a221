//! What a running job tells the server besides its finish: log entries ([`Journal`]) and
//! progress reports ([`Reporter`], never going backwards, with an estimated completion time).
//! Both use a short retry policy and never stop the job when the server does not answer. Each
//! progress report extends the job's lease; when they stop (a crash), the lease runs out and the
//! job can be claimed again.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keepsake_common::api::{RecoveryLogEntry, RecoveryProgressReport};
use uuid::Uuid;

use super::progress::{phase, JobProgress};
use crate::client::{ApiClient, RetryPolicy};

/// Progress reports and log entries: a few quick tries, so that a server outage delays the
/// restore by seconds, not minutes (the finish report keeps the client's full retry policy).
pub(super) const AUX_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(200),
    max_delay: Duration::from_secs(2),
    give_up_after: Duration::from_secs(10),
};

/// Posts log entries; failures are logged locally and never stop the job.
pub(super) struct Journal<'a> {
    client: &'a ApiClient,
    job: Uuid,
}

impl<'a> Journal<'a> {
    /// Log entries of `job`, sent with `client`.
    pub(super) fn new(client: &'a ApiClient, job: Uuid) -> Journal<'a> {
        Journal { client, job }
    }

    pub(super) fn log(
        &self,
        step: &str,
        level: &str,
        message: String,
        details: Option<serde_json::Value>,
    ) {
        match level {
            "error" | "critical" => tracing::error!(job = %self.job, step, "{message}"),
            "warning" => tracing::warn!(job = %self.job, step, "{message}"),
            _ => tracing::info!(job = %self.job, step, "{message}"),
        }
        let entry = RecoveryLogEntry {
            step: step.to_string(),
            level: level.to_string(),
            message,
            details,
        };
        if let Err(e) = self.client.recovery_log(self.job, &entry) {
            tracing::warn!(job = %self.job, error = %e, "recovery log entry not sent");
        }
    }
}

/// Posts progress reports, one at a time and never going backwards.
pub(super) struct Reporter<'a> {
    client: &'a ApiClient,
    job: Uuid,
    progress: &'a JobProgress,
    restore_started: Mutex<Option<Instant>>,
    verify_started: Mutex<Option<Instant>>,
    last: Mutex<(u64, u64)>,
}

impl<'a> Reporter<'a> {
    /// Progress reports of `job` from `progress`, sent with `client`; nothing reported yet.
    pub(super) fn new(client: &'a ApiClient, job: Uuid, progress: &'a JobProgress) -> Reporter<'a> {
        Reporter {
            client,
            job,
            progress,
            restore_started: Mutex::new(None),
            verify_started: Mutex::new(None),
            last: Mutex::new((0, 0)),
        }
    }

    pub(super) fn enter(&self, ph: u8) {
        let slot = if ph == phase::VERIFYING {
            &self.verify_started
        } else {
            &self.restore_started
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.progress.phase.store(ph, Ordering::Relaxed);
    }

    fn estimate(&self, now: Instant) -> Option<DateTime<Utc>> {
        let p = self.progress;
        let verifying = p.phase.load(Ordering::Relaxed) >= phase::VERIFYING;
        let since = if verifying {
            &self.verify_started
        } else {
            &self.restore_started
        };
        let since = (*since.lock().unwrap_or_else(|e| e.into_inner()))?;
        let total = p.bytes_total.load(Ordering::Relaxed);
        let done = if verifying {
            p.validate.bytes.load(Ordering::Relaxed)
        } else {
            p.bytes_done()
        };
        let elapsed = now.duration_since(since).as_secs_f64();
        if done == 0 || elapsed <= 0.0 || done >= total {
            return None;
        }
        let rate = done as f64 / elapsed;
        let remaining = (total - done) as f64 / rate;
        let d = chrono::Duration::milliseconds((remaining * 1000.0).min(1e12) as i64);
        Some(Utc::now() + d)
    }

    pub(super) fn post(&self) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let p = self.progress;
        let files = p.files_done().max(last.0);
        let bytes = p.bytes_done().max(last.1);
        let status = if p.phase.load(Ordering::Relaxed) >= phase::VERIFYING {
            "verifying"
        } else {
            "running"
        };
        let report = RecoveryProgressReport {
            status: status.to_string(),
            files_total: p.files_total.load(Ordering::Relaxed),
            bytes_total: p.bytes_total.load(Ordering::Relaxed),
            files_recovered: files,
            bytes_recovered: bytes,
            estimated_completion: self.estimate(Instant::now()),
        };
        match self.client.recovery_progress(self.job, &report) {
            Ok(()) => *last = (files, bytes),
            Err(e) => tracing::debug!(job = %self.job, error = %e, "progress report not sent"),
        }
    }
}
