//! Which files of a run go first, and which a run takes now.
//!
//! * [`Classifier`]: the order of files inside a run. Sidecars (`.xmp`, `.thm`, …) go after the
//!   originals they describe; originals under the organisation's wedding-critical rules (gitignore
//!   syntax, relative to the source root, from the server's policy) go first; the rest in between.
//! * [`Selection`]: which new or modified files a run takes. A file modified within the settle
//!   window is deferred (left uncommitted in the catalog, so the next run takes it); a
//!   wedding-critical pass takes only the files its rules match.
//!
//! Plain data computed from the policy; nothing here is stored, so a crash loses nothing.

use std::path::PathBuf;
use std::sync::Arc;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use keepsake_common::api::AgentPolicy;

use crate::catalog::Priority;
use crate::detect::scan::Entry;
use crate::relpath::RelPath;

/// Extensions of files that describe others (run after the originals of their class).
const SIDECARS: &[&str] = &[
    "xmp", "xml", "thm", "json", "txt", "aae", "lrv", "cos", "pp3", "dop",
];

fn extension_lower(rel: &RelPath) -> Option<String> {
    let b = rel.as_bytes();
    let name = b.rsplit(|c| *c == b'/').next()?;
    let dot = name.iter().rposition(|c| *c == b'.')?;
    std::str::from_utf8(&name[dot + 1..])
        .ok()
        .map(|s| s.to_ascii_lowercase())
}

fn rel_as_path(rel: &RelPath) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(std::ffi::OsStr::from_bytes(rel.as_bytes()))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(rel.display().into_owned())
    }
}

/// Orders the files of a run (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    critical: Option<Arc<Gitignore>>,
}

impl Classifier {
    /// The classifier of the source whose server id is `server_source`, from the organisation's
    /// active wedding-critical rules (those for every source and those for this one).
    pub fn from_policy(policy: Option<&AgentPolicy>, server_source: Option<&str>) -> Classifier {
        let Some(policy) = policy else {
            return Classifier::default();
        };
        let mut b = GitignoreBuilder::new("");
        let mut any = false;
        for rule in policy.critical.iter().filter(|r| r.active) {
            if let (Some(s), Some(mine)) = (rule.source_id, server_source) {
                if s.to_string() != mine {
                    continue;
                }
            }
            for p in &rule.path_patterns {
                if b.add_line(None, p).is_ok() {
                    any = true;
                }
            }
        }
        Classifier {
            critical: if any {
                b.build().ok().map(Arc::new)
            } else {
                None
            },
        }
    }

    /// Whether any wedding-critical rule applies.
    pub fn has_critical_rules(&self) -> bool {
        self.critical.is_some()
    }

    /// Whether a wedding-critical rule matches `rel` (or one of its folders).
    pub fn is_critical(&self, rel: &RelPath) -> bool {
        self.critical.as_ref().is_some_and(|g| {
            g.matched_path_or_any_parents(rel_as_path(rel), false)
                .is_ignore()
        })
    }

    /// The class of a file: sidecars go last (after the originals they describe, even in a
    /// wedding-critical folder), then wedding-critical originals first, then the rest.
    pub fn classify(&self, rel: &RelPath) -> Priority {
        if extension_lower(rel).is_some_and(|x| SIDECARS.contains(&x.as_str())) {
            Priority::Low
        } else if self.is_critical(rel) {
            Priority::Critical
        } else {
            Priority::Normal
        }
    }
}

/// Which new or modified files a run takes (the default takes all of them).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Defer files whose mtime or ctime is later than this (nanoseconds since the epoch).
    pub settled_before_ns: Option<i64>,
    /// Take only the files these wedding-critical rules match.
    pub only_critical: Option<Classifier>,
}

impl Selection {
    /// Whether the run takes `e` now.
    pub fn takes(&self, e: &Entry) -> bool {
        let settled = self
            .settled_before_ns
            .is_none_or(|cutoff| e.mtime_ns <= cutoff && e.ctime_ns <= cutoff);
        let wanted = self
            .only_critical
            .as_ref()
            .is_none_or(|c| c.is_critical(&e.rel));
        settled && wanted
    }
}
