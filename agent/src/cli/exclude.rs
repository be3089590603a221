//! `keepsake exclude`, the exclusion subcommands: `exclude test` says whether a path is excluded,
//! by which rule and why.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::output;
use super::rules::{build_matcher, RuleArgs};
use crate::exclude::Decision;
use crate::home::Home;
use crate::relpath::RelPath;

/// `keepsake exclude ...`
#[derive(Debug, Subcommand)]
pub enum ExcludeCommand {
    /// Say whether PATH is excluded, by which rule and why.
    Test(ExcludeTestArgs),
}

/// `keepsake exclude test`
#[derive(Debug, Args)]
pub struct ExcludeTestArgs {
    /// The path to test (need not exist)
    pub path: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    /// The source root the rules apply to [default: the catalog's source containing PATH,
    /// else the current folder]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Treat PATH as a folder even if it does not exist
    #[arg(long)]
    pub dir: bool,
    /// Exclusion rules.
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// Runs an exclusion subcommand.
pub(super) fn cmd_exclude(
    home: &Path,
    command: ExcludeCommand,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    match command {
        ExcludeCommand::Test(args) => cmd_exclude_test(home, args, out),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    // Resolve the parent (symlinks, `..`) but not the final component, which may be a symlink
    // or not exist at all.
    let name = abs.file_name().map(|n| n.to_os_string());
    match (abs.parent(), name) {
        (Some(parent), Some(name)) if name != ".." => {
            let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
            Ok(parent.join(name))
        }
        _ => Ok(std::fs::canonicalize(&abs).unwrap_or(abs)),
    }
}

fn find_root(home: &Path, abs: &Path, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(r) = explicit {
        return std::fs::canonicalize(r)
            .with_context(|| format!("cannot use --root {}", r.display()));
    }
    if let Some(catalog) = Home::new(home).existing_catalog()? {
        let best = catalog
            .sources()?
            .into_iter()
            .map(|s| s.root)
            .filter(|r| abs.starts_with(r))
            .max_by_key(|r| r.as_os_str().len());
        if let Some(r) = best {
            return Ok(r);
        }
    }
    let cwd = std::fs::canonicalize(std::env::current_dir()?)?;
    if abs.starts_with(&cwd) {
        return Ok(cwd);
    }
    bail!(
        "{} is not inside a source known to the catalog nor inside the current folder; pass --root",
        abs.display()
    )
}

#[derive(Serialize)]
struct ExcludeJson<'a> {
    path: &'a RelPath,
    root: &'a Path,
    is_dir: bool,
    size: Option<u64>,
    #[serde(flatten)]
    decision: &'a Decision,
}

fn cmd_exclude_test(home: &Path, args: ExcludeTestArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let abs = absolute(&args.path)?;
    let root = find_root(home, &abs, args.root.as_deref())?;
    let rel = RelPath::strip_root(&root, &abs)?;
    let md = std::fs::symlink_metadata(&abs).ok();
    let is_dir = args.dir || md.as_ref().is_some_and(|m| m.is_dir());
    let size = md.as_ref().filter(|m| m.is_file()).map(|m| m.len());
    let matcher = build_matcher(&root, home, &args.rules, None)?;
    let decision = matcher.decide_with_size(&rel, is_dir, size);
    if args.json {
        output::json(
            out,
            &ExcludeJson {
                path: &rel,
                root: &root,
                is_dir,
                size,
                decision: &decision,
            },
        )?;
        return Ok(0);
    }
    let shown = if is_dir {
        format!("{rel}/")
    } else {
        rel.to_string()
    };
    match (&decision.excluded, &decision.rule) {
        (true, Some(rule)) => {
            writeln!(out, "excluded: {shown}")?;
            writeln!(out, "  rule:   {}", rule.pattern)?;
            writeln!(out, "  source: {}", rule.describe_source())?;
            if let Some(reason) = &rule.reason {
                writeln!(out, "  why:    {reason}")?;
            }
            if let Some(via) = &rule.via {
                writeln!(
                    out,
                    "  via:    the folder {via}/ is excluded, so everything in it is"
                )?;
            }
        }
        (false, Some(rule)) => {
            writeln!(out, "included: {shown}")?;
            writeln!(
                out,
                "  re-included by: {} ({})",
                rule.pattern,
                rule.describe_source()
            )?;
        }
        (_, None) => writeln!(out, "included: {shown} (no rule matches)")?,
    }
    writeln!(out, "  root:   {}", root.display())?;
    Ok(0)
}
