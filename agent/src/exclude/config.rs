//! The one place that decides which exclusion rules apply to a source: [`config`] layers them,
//! [`matcher_for`] compiles them for a source root. `keepsake backup`, `keepsake scan`,
//! `keepsake exclude test` and the daemon all build their matcher here, so they agree.
//!
//! Layers, lowest precedence first: the built-in photographer defaults; the organisation's rules
//! from the server (for every machine, for this machine, for this source); the home's local
//! `exclude` file; the command's flags (`--exclude`, `--marker`, `--max-file-size`, …). Per-folder
//! `.keepsakeignore` files apply on top, while scanning. The server's rules come from the policy
//! the caller passes: the daemon and `keepsake backup` fetch it, and every fetch is kept in the
//! home (`policy.json`) for the commands that work offline (`scan`, `exclude test`).
//!
//! Read-only: a crash here changes nothing.

use std::path::Path;

use keepsake_common::api::AgentPolicy;

use super::rules::RuleList;
use super::{ExcludeError, Matcher, DEFAULT_IGNORE_FILE_NAME, DEFAULT_MARKER_FILE};
use crate::home::{Home, LOCAL_EXCLUDE_FILE};

/// Origin name of the patterns given with `--exclude`.
pub const FLAG_ORIGIN: &str = "--exclude";

/// The rule choices a person makes on the command line.
#[derive(Debug, Clone, Default)]
pub struct LocalRules {
    /// Extra patterns (gitignore syntax), after the local exclude file.
    pub exclude: Vec<String>,
    /// Do not apply the built-in defaults.
    pub no_default_excludes: bool,
    /// Exclude files larger than this (wins over the organisation's setting).
    pub max_file_size: Option<u64>,
    /// Exclude-if-present marker names (empty: `.nobackup`).
    pub markers: Vec<String>,
    /// Do not skip folders tagged with `CACHEDIR.TAG`.
    pub no_cachedir_tag: bool,
}

/// Configuration of a [`Matcher`] (built by [`config`]).
#[derive(Debug, Clone)]
pub struct ExcludeConfig {
    /// Apply [`super::DEFAULT_RULES`].
    pub use_defaults: bool,
    /// The organisation's patterns from the server.
    pub server: Vec<String>,
    /// Local pattern lists, lowest precedence first.
    pub local: Vec<RuleList>,
    /// Per-folder ignore file name; `None` disables per-folder files.
    pub ignore_file_name: Option<String>,
    /// Exclude-if-present marker names.
    pub marker_files: Vec<String>,
    /// Honour `CACHEDIR.TAG` files carrying the standard signature.
    pub cachedir_tag: bool,
    /// Exclude regular files larger than this many bytes.
    pub max_file_size: Option<u64>,
}

impl Default for ExcludeConfig {
    fn default() -> Self {
        ExcludeConfig {
            use_defaults: true,
            server: Vec::new(),
            local: Vec::new(),
            ignore_file_name: Some(DEFAULT_IGNORE_FILE_NAME.to_string()),
            marker_files: vec![DEFAULT_MARKER_FILE.to_string()],
            cachedir_tag: true,
            max_file_size: None,
        }
    }
}

/// The layered configuration (see the module documentation): `policy` is the organisation's
/// policy as the server sent it (`None`: no server rules), `server_source` the source's id on
/// the server (rules scoped to another source are left out; without it, only rules for every
/// source apply).
pub fn config(
    home: &Home,
    policy: Option<&AgentPolicy>,
    server_source: Option<&str>,
    local: &LocalRules,
) -> Result<ExcludeConfig, ExcludeError> {
    let mut cfg = ExcludeConfig {
        use_defaults: !local.no_default_excludes,
        cachedir_tag: !local.no_cachedir_tag,
        ..ExcludeConfig::default()
    };
    if let Some(p) = policy {
        cfg.server = p
            .exclusions
            .iter()
            .filter(|r| match (&r.source_id, server_source) {
                (None, _) => true,
                (Some(s), Some(mine)) => s.to_string() == mine,
                (Some(_), None) => false,
            })
            .map(|r| r.pattern.clone())
            .collect();
        cfg.max_file_size = p.vendor.as_ref().and_then(|v| v.max_file_size_bytes);
    }
    let file = RuleList::from_file(&home.path(LOCAL_EXCLUDE_FILE))?;
    if !file.patterns.is_empty() {
        cfg.local.push(file);
    }
    if !local.exclude.is_empty() {
        cfg.local.push(RuleList {
            origin: FLAG_ORIGIN.to_string(),
            patterns: local.exclude.clone(),
        });
    }
    if local.max_file_size.is_some() {
        cfg.max_file_size = local.max_file_size;
    }
    if !local.markers.is_empty() {
        cfg.marker_files = local.markers.clone();
    }
    Ok(cfg)
}

/// The matcher of the source at `root` (canonical): [`config`] with the source's server id from
/// the catalog. An invalid `--exclude` pattern is an error (the person can fix it now); other
/// invalid patterns are skipped with a warning and listed in [`Matcher::problems`].
pub fn matcher_for(
    home: &Home,
    root: &Path,
    policy: Option<&AgentPolicy>,
    local: &LocalRules,
) -> Result<Matcher, ExcludeError> {
    let server_source = home
        .existing_catalog()
        .ok()
        .flatten()
        .and_then(|c| c.source_by_root(root).ok().flatten())
        .and_then(|s| s.server_source_id);
    let cfg = config(home, policy, server_source.as_deref(), local)?;
    let matcher = Matcher::new(root, &cfg);
    for p in matcher.problems() {
        if let ExcludeError::InvalidPattern {
            origin,
            line,
            pattern,
            message,
        } = p
        {
            if origin == FLAG_ORIGIN {
                return Err(ExcludeError::InvalidPattern {
                    origin: origin.clone(),
                    line: *line,
                    pattern: pattern.clone(),
                    message: message.clone(),
                });
            }
        }
        tracing::warn!("{p}");
    }
    Ok(matcher)
}
