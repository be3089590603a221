//! The exclusion flags shared by `scan`, `exclude test`, `pack`, `backup` and `run`
//! ([`RuleArgs`]), and the matcher they build with the one exclusion builder.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::path::Path;

use clap::Args;
use keepsake_common::api::AgentPolicy;

use crate::exclude::{self, LocalRules, Matcher};
use crate::home::Home;
use crate::units::parse_size;

/// Rule options shared by the commands.
#[derive(Debug, Args, Clone)]
pub struct RuleArgs {
    /// Extra exclusion pattern (gitignore syntax; repeatable; after the local exclude file)
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Do not apply the built-in photographer defaults
    #[arg(long)]
    pub no_default_excludes: bool,
    /// Exclude files larger than SIZE (e.g. 500M, 4G)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub max_file_size: Option<u64>,
    /// Exclude-if-present marker file name (repeatable) [default: .nobackup]
    #[arg(long = "marker", value_name = "NAME")]
    pub markers: Vec<String>,
    /// Do not skip folders tagged with CACHEDIR.TAG
    #[arg(long)]
    pub no_cachedir_tag: bool,
}

/// Parses a size flag (`500M`, `4G`) for clap.
pub(super) fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

impl RuleArgs {
    /// The flags as the exclusion builder takes them.
    pub fn local(&self) -> LocalRules {
        LocalRules {
            exclude: self.exclude.clone(),
            no_default_excludes: self.no_default_excludes,
            max_file_size: self.max_file_size,
            markers: self.markers.clone(),
            no_cachedir_tag: self.no_cachedir_tag,
        }
    }
}

/// The matcher of `root` from the one exclusion builder, with the organisation's policy as last
/// received (or `policy` when the command just fetched it).
pub(crate) fn build_matcher(
    root: &Path,
    home: &Path,
    rules: &RuleArgs,
    policy: Option<&AgentPolicy>,
) -> anyhow::Result<Matcher> {
    let home = Home::new(home);
    let cached;
    let policy = match policy {
        Some(p) => Some(p),
        None => {
            cached = home.cached_policy();
            cached.as_ref()
        }
    };
    Ok(exclude::matcher_for(&home, root, policy, &rules.local())?)
}
