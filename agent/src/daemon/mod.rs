//! `keepsake run`: the long-running daemon.
//!
//! It watches every source ([`crate::detect::watch`]), and when a source changed (or a scan is due) it
//! runs a backup of that source through the sync protocol. Each run rescans the source against the
//! catalog — cheap when little changed — so a missed notification only delays a change. Files
//! that have not settled (modified within the settle window) are deferred to a later run, so a
//! card dump streams through in small commits without a file ever being committed half-written.
//! Wedding-critical files (rules from the server) go in a first pass with its own commit; within
//! a pass, originals go before sidecars.
//!
//! Offline, runs fail and are retried with exponential backoff and jitter while the catalog keeps
//! what is pending; the client fails over between server URLs. The policy (exclusions,
//! wedding-critical rules, schedules, settle window, bandwidth limit, upload window) is pulled from
//! the server periodically and applied without a restart. A heartbeat reports the daemon's state.
//! SIGTERM/SIGINT stop it after the run in progress. One daemon per home (a lock file).
//!
//! This file holds the daemon and its main loop: which source is due (events after the
//! debounce, a burst after `max_batch_wait`, periodic rescans) and how long to wait for the next
//! deadline. The rest by concern: `lock.rs` (one daemon per home), `status.rs` (the status file
//! and the heartbeat), `policy.rs` (the policy, upload window, schedules, recovery requests and
//! drills) and `runs.rs` (a source's backup, backoff and the offline queue).
//!
//! Crash behaviour: the daemon's durable state is the catalog's (pending files, queue, jobs). The
//! lock is an `flock` the kernel drops with the process; the status file keeps the dead daemon's
//! last state until the next daemon writes its own, and `keepsake status` tells the two apart by
//! probing the lock. A daemon started after a crash reconciles every source against the catalog,
//! so a change seen but not committed before the crash is found again.

mod lock;
mod policy;
mod runs;
mod status;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keepsake_common::api::AgentPolicy;

use crate::client::RetryPolicy;
use crate::detect::watch::{SourceWatcher, WatchEvent};
use crate::exclude::LocalRules;
use crate::home::Home;

pub use lock::daemon_running;
use lock::lock_daemon;
pub use policy::in_window;
pub use status::{read_status, ClassCount, DaemonStatus, QueueByClass, SourceStatus};

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon runs on this home.
    #[error("another keepsake daemon is running with this home ({0})")]
    AlreadyRunning(String),
    /// Nothing to watch.
    #[error("no folder to back up: give one, e.g. `keepsake run ~/Pictures/Weddings`")]
    NoSources,
    /// The home is not enrolled or its keys are missing.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// Catalog failure.
    #[error("catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Tunables of the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// A file is taken once unchanged this long (the server's vendor setting overrides it).
    pub settle: Duration,
    /// Quiet time after the last event before a run starts.
    pub debounce: Duration,
    /// A restore drill (a sample of recent files restored into a scratch folder and validated,
    /// the result recorded on the server) this often, when the daemon may keep the key; `None`
    /// for never.
    pub drill_interval: Option<Duration>,
    /// Longest a run waits for quiet: during a long burst (a card dump) runs start anyway, so
    /// the files that have settled are committed while the rest is still being written.
    pub max_batch_wait: Duration,
    /// Full rescans of every source this often (and of unwatched sources).
    pub rescan_interval: Duration,
    /// How often the policy is pulled.
    pub policy_interval: Duration,
    /// How often a heartbeat is sent.
    pub heartbeat_interval: Duration,
    /// Use filesystem notifications.
    pub watch: bool,
    /// Upload limit in kbit/s (the server's vendor setting applies when this is `None`).
    pub bandwidth_kbps: Option<u32>,
    /// Longest wait between retries while offline.
    pub max_backoff: Duration,
    /// Exclusion choices of the command line (`keepsake run --exclude …`), applied with the
    /// organisation's rules and the home's local file.
    pub rules: LocalRules,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            settle: Duration::from_secs(5),
            debounce: Duration::from_millis(500),
            max_batch_wait: Duration::from_secs(2),
            drill_interval: Some(Duration::from_secs(24 * 3600)),
            rescan_interval: Duration::from_secs(15 * 60),
            policy_interval: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(60),
            watch: true,
            bandwidth_kbps: None,
            max_backoff: Duration::from_secs(300),
            rules: LocalRules::default(),
        }
    }
}

struct SourceState {
    root: PathBuf,
    dirty: bool,
    last_event: Option<Instant>,
    /// The first event since the last run started.
    first_event: Option<Instant>,
    next_run: Instant,
    failures: u32,
    last_full_scan: Instant,
    status: SourceStatus,
}

/// Policy and heartbeat requests: one quick try; the next interval tries again.
const QUICK: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(200),
    max_delay: Duration::from_millis(500),
    give_up_after: Duration::from_secs(2),
};

/// Backup runs ride out a short blip (a server restart) inside the run; longer outages fail
/// the run so the daemon reports "offline", keeps scanning, and retries with its own backoff.
const BACKUP_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(200),
    max_delay: Duration::from_secs(2),
    give_up_after: Duration::from_secs(10),
};

/// The daemon.
pub struct Daemon {
    home: Home,
    opts: DaemonOptions,
    stop: Arc<AtomicBool>,
    sources: Vec<SourceState>,
    policy: Option<AgentPolicy>,
    schedules: Vec<(croner::Cron, DateTime<Utc>)>,
    state: String,
    last_success: Option<DateTime<Utc>>,
    last_error: Option<String>,
    _lock: std::fs::File,
}

impl Daemon {
    /// Prepares the daemon: takes the lock, registers `roots` as sources (in addition to those
    /// already in the catalog).
    pub fn new(
        home: Home,
        roots: Vec<PathBuf>,
        opts: DaemonOptions,
        stop: Arc<AtomicBool>,
    ) -> Result<Daemon, DaemonError> {
        let lock = lock_daemon(&home)?;
        home.config()?;
        home.public_keys()?;
        let mut all: Vec<PathBuf> = Vec::new();
        {
            let mut catalog = home.catalog_writer()?;
            for r in roots {
                let c = std::fs::canonicalize(&r)
                    .map_err(|e| DaemonError::Other(format!("{}: {e}", r.display())))?;
                if !c.is_dir() {
                    return Err(DaemonError::Other(format!(
                        "{} is not a folder",
                        c.display()
                    )));
                }
                catalog.ensure_source(&c, None)?;
            }
            for s in catalog.sources()? {
                if !all.contains(&s.root) {
                    all.push(s.root);
                }
            }
        }
        if all.is_empty() {
            return Err(DaemonError::NoSources);
        }
        let now = Instant::now();
        let sources = all
            .into_iter()
            .map(|root| SourceState {
                status: SourceStatus {
                    root: root.clone(),
                    watched: true,
                    ..SourceStatus::default()
                },
                root,
                // Reconcile every source against the catalog at start.
                dirty: true,
                last_event: None,
                first_event: None,
                next_run: now,
                failures: 0,
                last_full_scan: now,
            })
            .collect();
        Ok(Daemon {
            home,
            opts,
            stop,
            sources,
            policy: None,
            schedules: Vec::new(),
            state: "idle".into(),
            last_success: None,
            last_error: None,
            _lock: lock,
        })
    }

    /// Runs until stopped.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        let roots: Vec<PathBuf> = self.sources.iter().map(|s| s.root.clone()).collect();
        let home_dir = std::fs::canonicalize(self.home.dir())
            .unwrap_or_else(|_| self.home.dir().to_path_buf());
        let (watcher, events) = if self.opts.watch {
            SourceWatcher::start(&roots, vec![home_dir])
        } else {
            SourceWatcher::disabled(roots.len())
        };
        for (i, why) in &watcher.unwatched {
            self.sources[*i].status.watched = false;
            tracing::info!(root = %roots[*i].display(), why, "source not watched: periodic scans only");
        }
        let mut next_policy = Instant::now();
        let mut next_heartbeat = Instant::now();
        let mut next_drill = self.opts.drill_interval.map(|d| Instant::now() + d);
        tracing::info!(sources = roots.len(), "keepsake daemon running");
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_policy {
                self.refresh_policy();
                next_policy = now + self.opts.policy_interval;
            }
            self.check_schedules();
            // Periodic full rescans (all sources; unwatched ones more often, and everything
            // twice as often in the organisation's wedding season).
            let season = self.policy.as_ref().is_some_and(|p| p.in_wedding_season);
            for s in &mut self.sources {
                let mut every = if s.status.watched {
                    self.opts.rescan_interval
                } else {
                    self.opts.rescan_interval.min(Duration::from_secs(60))
                };
                if season {
                    every /= 2;
                }
                if now.duration_since(s.last_full_scan) >= every {
                    s.dirty = true;
                    s.last_full_scan = now;
                }
            }
            let (debounce, max_wait) = (self.opts.debounce, self.opts.max_batch_wait);
            let due = self.sources.iter().position(|s| {
                s.dirty
                    && now >= s.next_run
                    && (s
                        .last_event
                        .is_none_or(|t| now.duration_since(t) >= debounce)
                        || s.first_event
                            .is_some_and(|t| now.duration_since(t) >= max_wait))
            });
            if let Some(i) = due {
                if self.upload_window_open() {
                    self.run_source(i);
                } else {
                    self.state = "paused".into();
                    self.sources[i].next_run = Instant::now() + Duration::from_secs(30);
                }
                self.write_status();
            }
            if let (Some(at), Some(every)) = (next_drill, self.opts.drill_interval) {
                if Instant::now() >= at {
                    self.scheduled_drill();
                    next_drill = Some(Instant::now() + every);
                }
            }
            if Instant::now() >= next_heartbeat {
                self.send_heartbeat();
                self.write_status();
                next_heartbeat = Instant::now() + self.opts.heartbeat_interval;
            }
            // Wait for events until the next deadline (at most half a second, to notice stop).
            let wait = self
                .next_deadline()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            match events.recv_timeout(wait.max(Duration::from_millis(20))) {
                Ok(ev) => self.on_event(ev),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(wait.max(Duration::from_millis(20)));
                }
            }
            while let Ok(ev) = events.try_recv() {
                self.on_event(ev);
            }
        }
        self.state = "stopped".into();
        self.write_status();
        drop(watcher);
        tracing::info!("keepsake daemon stopped");
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        self.sources
            .iter()
            .filter(|s| s.dirty)
            .map(|s| {
                let after_quiet = s
                    .last_event
                    .map(|t| t + self.opts.debounce)
                    .unwrap_or(s.next_run);
                let at_most = s
                    .first_event
                    .map(|t| t + self.opts.max_batch_wait)
                    .unwrap_or(after_quiet);
                after_quiet.min(at_most).max(s.next_run)
            })
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(500))
    }

    fn on_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Changed { index, at } => {
                if let Some(s) = self.sources.get_mut(index) {
                    s.dirty = true;
                    s.last_event = Some(at);
                    s.first_event.get_or_insert(at);
                }
            }
            WatchEvent::Rescan { index, reason } => {
                tracing::info!(reason, "rescanning after lost notifications");
                if let Some(s) = self.sources.get_mut(index) {
                    s.dirty = true;
                }
            }
        }
    }
}
