//! Filesystem notifications for the daemon: which sources changed, and when notifications can't
//! be trusted (overflow, watch limit) so the tree must be rescanned.
//!
//! The watcher only says "this source changed" — it never decides what to back up. Every backup
//! run rescans the source against the catalog (fast for unchanged trees), so a lost or merged
//! event can delay a change until the next run but never lose it.
//!
//! Crash behaviour: notifications live only in memory, so a crash loses the ones not yet acted on;
//! the daemon reconciles every source with a full scan when it starts again, which finds those
//! changes.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Instant;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

/// What the watcher reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something under source `index` changed.
    Changed {
        /// Index of the source in the list given to [`SourceWatcher::start`].
        index: usize,
        /// When the event arrived.
        at: Instant,
    },
    /// Notifications for source `index` were lost or are unavailable: rescan it.
    Rescan {
        /// The source.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// Watches the roots of the sources.
pub struct SourceWatcher {
    _watcher: Option<RecommendedWatcher>,
    _keepalive: Option<Sender<WatchEvent>>,
    /// Sources that could not be watched (they rely on periodic scans).
    pub unwatched: Vec<(usize, String)>,
}

/// Paths inside these folders are ignored (the agent's own home, when it lies inside a source).
fn ignored(path: &Path, ignore: &[PathBuf]) -> bool {
    ignore.iter().any(|i| path.starts_with(i))
}

impl SourceWatcher {
    /// Starts watching `roots` recursively; events go to the returned receiver.
    pub fn start(roots: &[PathBuf], ignore: Vec<PathBuf>) -> (SourceWatcher, Receiver<WatchEvent>) {
        let (tx, rx) = channel::<WatchEvent>();
        let roots_owned: Vec<PathBuf> = roots.to_vec();
        let handler_tx: Sender<WatchEvent> = tx.clone();
        let handler = move |res: notify::Result<Event>| match res {
            Ok(ev) => {
                if ev.need_rescan() {
                    for index in 0..roots_owned.len() {
                        let _ = handler_tx.send(WatchEvent::Rescan {
                            index,
                            reason: "notification queue overflow".into(),
                        });
                    }
                    return;
                }
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                for p in &ev.paths {
                    if ignored(p, &ignore) {
                        continue;
                    }
                    if let Some(index) = roots_owned.iter().position(|r| p.starts_with(r)) {
                        let _ = handler_tx.send(WatchEvent::Changed {
                            index,
                            at: Instant::now(),
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "filesystem notifications failed; rescanning");
                for index in 0..roots_owned.len() {
                    let _ = handler_tx.send(WatchEvent::Rescan {
                        index,
                        reason: format!("notification error: {e}"),
                    });
                }
            }
        };
        let mut unwatched = Vec::new();
        let watcher = match notify::recommended_watcher(handler) {
            Ok(mut w) => {
                for (i, r) in roots.iter().enumerate() {
                    if let Err(e) = w.watch(r, RecursiveMode::Recursive) {
                        // E.g. the inotify watch limit: periodic scans cover this source.
                        tracing::warn!(root = %r.display(), error = %e,
                            "cannot watch this folder; relying on periodic scans");
                        unwatched.push((i, e.to_string()));
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "filesystem notifications unavailable; relying on periodic scans");
                for i in 0..roots.len() {
                    unwatched.push((i, e.to_string()));
                }
                None
            }
        };
        for (i, why) in &unwatched {
            let _ = tx.send(WatchEvent::Rescan {
                index: *i,
                reason: why.clone(),
            });
        }
        (
            SourceWatcher {
                _watcher: watcher,
                _keepalive: None,
                unwatched,
            },
            rx,
        )
    }

    /// A watcher that watches nothing (notifications disabled): periodic scans only.
    pub fn disabled(count: usize) -> (SourceWatcher, Receiver<WatchEvent>) {
        let (tx, rx) = channel();
        for index in 0..count {
            let _ = tx.send(WatchEvent::Rescan {
                index,
                reason: "notifications disabled".into(),
            });
        }
        (
            SourceWatcher {
                _watcher: None,
                // Kept so that the receiver never reports a disconnect.
                _keepalive: Some(tx),
                unwatched: (0..count).map(|i| (i, "disabled".to_string())).collect(),
            },
            rx,
        )
    }
}
