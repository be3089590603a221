//! What the daemon tells about itself: the status file `<home>/status.json` that `keepsake
//! status` reads ([`DaemonStatus`], one [`SourceStatus`] per source with its waiting work by
//! class), and the heartbeat sent to the server. The counts of waiting files are read from the
//! catalog each time (`refresh_pending`), never kept by the daemon.
//!
//! Crash behaviour: the status file is written atomically (a temporary file, synced, then
//! renamed over the old one), so a reader sees a whole file, old or new, never a torn one; a
//! write that fails is skipped and the next one tries again. After a crash the file keeps the
//! last state written (`backing_up`, say) and the dead daemon's pid; [`read_status`] returns it
//! together with whether a daemon holds the lock now (false), so `keepsake status` does not
//! report a dead daemon as running. What is waiting is durable in the catalog, not here: the
//! next daemon counts it again. A heartbeat is one quick try without state; a lost one is
//! replaced by the next.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use keepsake_common::api::Heartbeat;
use serde::{Deserialize, Serialize};

use crate::backup::Classifier;
use crate::catalog::Priority;
use crate::client;
use crate::home::{Home, STATUS_FILE};
use crate::relpath::RelPath;

use super::{daemon_running, Daemon, QUICK};

/// Per-source state shown by `keepsake status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The folder.
    pub root: PathBuf,
    /// Whether notifications work for it.
    pub watched: bool,
    /// Last successful commit.
    pub last_commit_at: Option<DateTime<Utc>>,
    /// Its sequence number.
    pub last_seq: Option<i64>,
    /// Files waiting (changed, not yet committed).
    pub pending_files: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Wedding-critical files waiting (also counted in `queue`).
    pub pending_critical: u64,
    /// The waiting files by class, in the order they are taken.
    #[serde(default)]
    pub queue: QueueByClass,
    /// Last error, while it lasts.
    pub last_error: Option<String>,
}

/// Files and bytes of one class of waiting work.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClassCount {
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Waiting work by class: wedding-critical first, then originals, then sidecars.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueByClass {
    /// Matching an active wedding-critical rule.
    pub critical: ClassCount,
    /// Photos, videos and everything else that is not a sidecar.
    pub originals: ClassCount,
    /// Sidecars and small descriptive files (XMP, THM, ...), taken after their originals.
    pub sidecars: ClassCount,
    /// Files not classified because the queue is longer than the status looks at (counted
    /// with the originals).
    pub unclassified: u64,
}

/// How many waiting files the status classifies (the rest counts as originals).
const CLASSIFY_LIMIT: u64 = 200_000;

/// The daemon's status file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Process id.
    pub pid: u32,
    /// `idle`, `backing_up`, `offline`, `paused`, `stopping`, `stopped`.
    pub state: String,
    /// When this was written.
    pub updated_at: Option<DateTime<Utc>>,
    /// Last successful commit of any source.
    pub last_success_at: Option<DateTime<Utc>>,
    /// The sources.
    pub sources: Vec<SourceStatus>,
    /// Whether the server says the organisation is in wedding season.
    pub in_wedding_season: bool,
}

impl Daemon {
    /// Counts each source's waiting files and bytes, by class, from the catalog.
    fn refresh_pending(&mut self) {
        let Ok(catalog) = self.home.catalog() else {
            return;
        };
        let by_root: HashMap<PathBuf, _> = catalog
            .sources()
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.root.clone(), (s.id, s.server_source_id.clone())))
            .collect();
        for s in &mut self.sources {
            let Some((id, server_source)) = by_root.get(&s.root) else {
                continue;
            };
            if let Ok((n, b)) = catalog.pending_files(*id) {
                s.status.pending_files = n;
                s.status.pending_bytes = b;
                let classifier =
                    Classifier::from_policy(self.policy.as_ref(), server_source.as_deref());
                let mut q = QueueByClass::default();
                let add = |c: &mut ClassCount, size: u64| {
                    c.files += 1;
                    c.bytes += size;
                };
                let seen = catalog
                    .for_each_pending(*id, CLASSIFY_LIMIT, |path, size| {
                        let Ok(rel) = RelPath::from_bytes(path.to_vec()) else {
                            return add(&mut q.originals, size);
                        };
                        match classifier.classify(&rel) {
                            Priority::Critical => add(&mut q.critical, size),
                            Priority::Low => add(&mut q.sidecars, size),
                            _ => add(&mut q.originals, size),
                        }
                    })
                    .unwrap_or(0);
                if n > seen {
                    q.unclassified = n - seen;
                    q.originals.files += n - seen;
                }
                s.status.pending_critical = q.critical.files;
                s.status.queue = q;
            }
        }
    }

    /// Writes the status file (after refreshing the counts).
    pub(super) fn write_status(&mut self) {
        self.refresh_pending();
        let st = DaemonStatus {
            pid: std::process::id(),
            state: if self.stop.load(Ordering::Relaxed) && self.state != "stopped" {
                "stopping".into()
            } else {
                self.state.clone()
            },
            updated_at: Some(Utc::now()),
            last_success_at: self.last_success,
            sources: self.sources.iter().map(|s| s.status.clone()).collect(),
            in_wedding_season: self.policy.as_ref().is_some_and(|p| p.in_wedding_season),
        };
        if let Ok(json) = serde_json::to_vec_pretty(&st) {
            let _ = self.home.write_file(STATUS_FILE, &json);
        }
    }

    /// Sends a heartbeat with the counts and the last success and error (one quick try).
    pub(super) fn send_heartbeat(&mut self) {
        self.refresh_pending();
        let Ok((_, client)) = client::connect(&self.home, Some(QUICK)) else {
            return;
        };
        let pending: u64 = self.sources.iter().map(|s| s.status.pending_files).sum();
        let critical: u64 = self.sources.iter().map(|s| s.status.pending_critical).sum();
        let hb = Heartbeat {
            state: self.state.clone(),
            queue_critical: critical,
            queue_normal: pending.saturating_sub(critical),
            last_success_at: self.last_success,
            recovery_point_age_seconds: self
                .last_success
                .map(|t| (Utc::now() - t).num_seconds().max(0) as u64),
            last_error: self.last_error.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        if let Err(e) = client.heartbeat(&hb) {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}

/// Reads the daemon's status file, and whether a daemon holds the lock now.
pub fn read_status(home: &Home) -> (Option<DaemonStatus>, bool) {
    let status = std::fs::read(home.path(STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    (status, daemon_running(home))
}
