//! `keepsake scan`: what would be backed up from a folder: counts, sizes, changes since the
//! catalog, what the exclusions removed, errors.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::ProgressBar;
use serde::Serialize;

use super::progress::{self, Look};
use super::rules::{build_matcher, RuleArgs};
use super::{output, EXIT_PARTIAL};
use crate::catalog::Catalog;
use crate::detect::plan::{self, Change, PlanObserver, PlanOptions, PlanReport, PlanTotals, Tally};
use crate::detect::scan::{EntryKind, ScanOptions};
use crate::home::{Home, CATALOG_FILE};
use crate::relpath::RelPath;
use crate::units::format_bytes;

/// `keepsake scan`
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The folder to scan (a source root)
    pub path: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    /// Record the scan in the catalog (queue new/changed files, mark deletions); without it
    /// the scan only reads the catalog
    #[arg(long)]
    pub update_catalog: bool,
    /// Also list every new, modified and deleted path (one per line)
    #[arg(long, conflicts_with = "json")]
    pub list: bool,
    /// Descend into folders on other file systems
    #[arg(long)]
    pub cross_filesystems: bool,
    /// Label for the source when the catalog first records it
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Do not open new or modified files to check they are readable
    #[arg(long)]
    pub no_probe: bool,
    /// Exclusion rules.
    #[command(flatten)]
    pub rules: RuleArgs,
}

struct Progress {
    bar: ProgressBar,
}

impl PlanObserver for Progress {
    fn on_progress(&mut self, t: &PlanTotals) {
        self.bar.set_message(format!(
            "{} files, {} scanned — {} new, {} modified, {} excluded",
            t.scan.files,
            format_bytes(t.scan.bytes),
            t.new.entries,
            t.modified.entries,
            t.scan.excluded
        ));
    }
}

struct Lister<'a> {
    progress: Progress,
    out: &'a mut dyn Write,
    error: Option<std::io::Error>,
}

impl PlanObserver for Lister<'_> {
    fn on_change(&mut self, change: Change, rel: &RelPath, kind: EntryKind, _size: u64) {
        let tag = match change {
            Change::New => "+",
            Change::Modified => "M",
            Change::Deleted => "-",
            Change::Unverified => "?",
            Change::Unchanged => return,
        };
        let slash = if kind == EntryKind::Dir { "/" } else { "" };
        if self.error.is_none() {
            let bar = &self.progress.bar;
            let r = bar.suspend(|| writeln!(self.out, "{tag} {rel}{slash}"));
            if let Err(e) = r {
                self.error = Some(e);
            }
        }
    }
    fn on_progress(&mut self, t: &PlanTotals) {
        self.progress.on_progress(t);
    }
}

pub(super) fn cmd_scan(home: &Path, args: ScanArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let root = std::fs::canonicalize(&args.path)
        .with_context(|| format!("cannot scan {}", args.path.display()))?;
    if !root.is_dir() {
        bail!("cannot scan {}: not a folder", root.display());
    }
    let matcher = Arc::new(build_matcher(&root, home, &args.rules, None)?);
    let home = Home::new(home);
    let catalog_path = home.path(CATALOG_FILE);
    let mut writer;
    let mut reader;
    let catalog: &mut Catalog = if args.update_catalog {
        writer = home
            .catalog_writer()
            .with_context(|| format!("cannot open the catalog {}", catalog_path.display()))?;
        &mut writer
    } else {
        reader = match home.existing_catalog() {
            Ok(Some(c)) => c,
            Ok(None) => Catalog::open_in_memory()?,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open the catalog {}", catalog_path.display()))
            }
        };
        &mut reader
    };
    let opts = PlanOptions {
        update_catalog: args.update_catalog,
        probe_readable: !args.no_probe,
        label: args.label.clone(),
        ..PlanOptions::default()
    };
    let scan_opts = ScanOptions {
        cross_filesystems: args.cross_filesystems,
        ..ScanOptions::default()
    };
    let bar = progress::bar(args.json, &Look::SPINNER);
    let progress = Progress { bar: bar.clone() };
    let report = if args.list {
        let mut lister = Lister {
            progress,
            out: &mut *out,
            error: None,
        };
        let r = plan::run(catalog, &root, matcher, scan_opts, &opts, &mut lister)?;
        if let Some(e) = lister.error {
            return Err(e.into());
        }
        r
    } else {
        let mut progress = progress;
        plan::run(catalog, &root, matcher, scan_opts, &opts, &mut progress)?
    };
    bar.finish_and_clear();
    let catalog_shown = if catalog_path.exists() {
        Some(catalog_path.as_path())
    } else {
        None
    };
    if args.json {
        output::json(
            out,
            &ScanJson {
                report: &report,
                catalog: catalog_shown,
            },
        )?;
    } else {
        print_scan(out, &report, catalog_shown)?;
    }
    Ok(if report.has_issues() { EXIT_PARTIAL } else { 0 })
}

#[derive(Serialize)]
struct ScanJson<'a> {
    #[serde(flatten)]
    report: &'a PlanReport,
    catalog: Option<&'a Path>,
}

fn count_line(t: &Tally) -> String {
    let mut parts = vec![format!("{} files", t.files)];
    if t.dirs > 0 {
        parts.push(format!("{} folders", t.dirs));
    }
    if t.symlinks > 0 {
        parts.push(format!("{} symlinks", t.symlinks));
    }
    format!("{:<44} {:>12}", parts.join(", "), format_bytes(t.bytes))
}

fn print_scan(out: &mut dyn Write, r: &PlanReport, catalog: Option<&Path>) -> std::io::Result<()> {
    let t = &r.totals;
    writeln!(out, "Source:   {}", r.root)?;
    writeln!(
        out,
        "Scanned:  {} files, {} folders, {} symlinks, {} in {:.1} s",
        t.scan.files,
        t.scan.dirs,
        t.scan.symlinks,
        format_bytes(t.scan.bytes),
        r.elapsed_ms as f64 / 1000.0
    )?;
    writeln!(out)?;
    writeln!(out, "Compared with the last committed backup:")?;
    writeln!(out, "  new         {}", count_line(&t.new))?;
    writeln!(out, "  modified    {}", count_line(&t.modified))?;
    writeln!(out, "  unchanged   {}", count_line(&t.unchanged))?;
    writeln!(out, "  deleted     {}", count_line(&t.deleted))?;
    if t.unverified.entries > 0 {
        writeln!(
            out,
            "  unverified  {}  (under paths that could not be read; kept as they were)",
            count_line(&t.unverified)
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Excluded: {} entries, {} of files (excluded folders are not walked)",
        t.scan.excluded,
        format_bytes(t.scan.excluded_bytes)
    )?;
    let mut rules: Vec<_> = t.scan.excluded_by_rule.iter().collect();
    rules.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    for (label, tally) in rules {
        writeln!(
            out,
            "  {:>8}  {:>10}  {}",
            tally.count,
            format_bytes(tally.bytes),
            label
        )?;
    }
    if t.scan.skipped > 0 {
        writeln!(
            out,
            "Skipped:  {} special files or mount points",
            t.scan.skipped
        )?;
        for s in &r.skipped {
            writeln!(out, "  {:?}  {}", s.reason, s.rel)?;
        }
    }
    if t.scan.issues > 0 {
        writeln!(out, "Errors:   {} (the scan continued)", t.scan.issues)?;
        for i in &r.issues {
            writeln!(out, "  {}: {}", i.rel, i.message)?;
        }
        output::and_more(out, "  ", r.issues.len(), t.scan.issues)?;
    } else {
        writeln!(out, "Errors:   none")?;
    }
    writeln!(out)?;
    match (&r.scan, catalog) {
        (Some(s), Some(c)) => writeln!(
            out,
            "Catalog:  updated ({}), scan generation {}{}; {} deletions recorded",
            c.display(),
            s.generation,
            if s.resumed {
                ", resumed after an interruption"
            } else {
                ""
            },
            s.completion.deleted
        )?,
        (_, Some(c)) => writeln!(
            out,
            "Catalog:  read only ({}); use --update-catalog to record this scan",
            c.display()
        )?,
        (_, None) => writeln!(
            out,
            "Catalog:  none yet; use --update-catalog to record this scan"
        )?,
    }
    Ok(())
}
