//! The `keepsake` command line.
//!
//! ```text
//! keepsake [--home DIR] [--log-level LEVEL] scan PATH [--json] [--update-catalog] [--list] ...
//! keepsake [--home DIR] [--log-level LEVEL] exclude test PATH [--json] [--root DIR] [--dir] ...
//! keepsake [--home DIR] [--log-level LEVEL] pack PATH --out DIR --keys FILE [--json] ...
//! ```
//!
//! Exit codes: 0 success; 1 failure; 2 usage error; 3 the scan (or pack) completed but some
//! paths could not be read (listed in the output).

mod daemon_cmds;
mod keys;
mod output;
mod progress;
mod recover;
mod remote;
mod rules;

pub use keys::read_public_keys;
pub use rules::RuleArgs;
use rules::{build_matcher, parse_size_arg};

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use serde::Serialize;

use keepsake_common::delta::DeltaHeader;

use crate::backup::{backup_to_sink, BackupObserver, BackupOptions, BackupReport};
use crate::catalog::Catalog;
use crate::detect::plan::{self, Change, PlanObserver, PlanOptions, PlanReport, PlanTotals, Tally};
use crate::detect::scan::{EntryKind, ScanOptions};
use crate::exclude::Decision;
use crate::home::{Home, CATALOG_FILE};
use crate::pipeline::{DeltaLimits, FileOutcome, FramedFileSink};
use crate::relpath::RelPath;
use crate::units::format_bytes;

/// Exit code: the scan completed but some paths could not be read.
pub const EXIT_PARTIAL: u8 = 3;

/// Keepsake backup agent.
#[derive(Debug, Parser)]
#[command(
    name = "keepsake",
    version,
    about = "Keepsake backup agent",
    max_term_width = 100
)]
pub struct Cli {
    /// The agent's configuration and catalog folder [default: the OS's per-user data folder]
    #[arg(long, global = true, env = "KEEPSAKE_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Log filter for stderr: error, warn, info, debug, trace or a tracing directive
    /// [default: $RUST_LOG or warn]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what would be backed up from PATH: counts, sizes, changes since the catalog,
    /// what the exclusions removed, errors.
    Scan(ScanArgs),
    /// Exclusion rules.
    Exclude {
        /// Exclusion subcommand.
        #[command(subcommand)]
        command: ExcludeCommand,
    },
    /// Enrol this machine in an organisation (and set up or unlock its keys).
    Enroll(remote::EnrollArgs),
    /// Back up a folder to the server now.
    Backup(remote::BackupArgs),
    /// List recovery points.
    Points(remote::PointsArgs),
    /// List the files of a recovery point.
    Ls(remote::LsArgs),
    /// Restore a recovery point (or part of it) into a folder.
    Restore(remote::RestoreArgs),
    /// Show which organisation and server this agent uses.
    Whoami,
    /// Run the daemon: watch the folders and back them up continuously.
    Run(daemon_cmds::RunArgs),
    /// Show the daemon's state, or whether a folder is safe on the server (`--path`).
    Status(daemon_cmds::StatusArgs),
    /// Execute the recovery requests made for this machine (restore, validate, report).
    Recover(recover::RecoverArgs),
    /// Restore drill: restore a sample of recent files into a scratch folder, validate them and
    /// report the result to the server.
    Drill(recover::DrillArgs),
    /// Check the passphrase; with --remember keep the unsealed key here for the daemon (when the
    /// organisation allows it).
    Unlock(recover::UnlockArgs),
    /// Remove the unsealed key kept by `unlock --remember`.
    Lock,
    /// Back up PATH offline into a folder: encrypted packs (framed blob streams) and the job
    /// delta, without a server. Every file is included (a full snapshot); the catalog is not
    /// touched.
    Pack(PackArgs),
}

/// `keepsake exclude ...`
#[derive(Debug, Subcommand)]
pub enum ExcludeCommand {
    /// Say whether PATH is excluded, by which rule and why.
    Test(ExcludeTestArgs),
}

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

/// `keepsake pack`
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The folder to back up (a source root)
    pub path: PathBuf,
    /// Output folder (created if needed; must be empty)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The organisation's keys: the secret-keys JSON or the public-keys JSON
    #[arg(long, value_name = "FILE")]
    pub keys: PathBuf,
    /// Source identifier written in the delta header [default: the root path]
    #[arg(long, value_name = "ID")]
    pub source: Option<String>,
    /// Target size of each pack file
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size_arg)]
    pub pack_size: u64,
    /// Most entries per delta part
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    pub part_entries: u64,
    /// Most bytes per delta part
    #[arg(long, value_name = "SIZE", default_value = "32M", value_parser = parse_size_arg)]
    pub part_size: u64,
    /// Reader threads and sealer threads [default: one of each per CPU]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Descend into folders on other file systems
    #[arg(long)]
    pub cross_filesystems: bool,
    /// Exclusion rules.
    #[command(flatten)]
    pub rules: RuleArgs,
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

/// The process entry point: parses `args` (including the program name), runs the command,
/// writes results to stdout.
pub fn main_with_args<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run(args, &mut out).map(ExitCode::from)
}

/// Like [`main_with_args`], writing results to `out` and returning the exit code as a number
/// (for in-process tests).
pub fn run<I, T>(args: I, out: &mut dyn Write) -> anyhow::Result<u8>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = u8::try_from(e.exit_code()).unwrap_or(2);
            if code == 0 {
                write!(out, "{e}")?;
            } else {
                let _ = e.print();
            }
            return Ok(code);
        }
    };
    let log_file = match &cli.command {
        Command::Run(a) => a.log_file.clone(),
        _ => None,
    };
    // The daemon logs what it does by default; one-shot commands only warnings.
    let level = cli.log_level.clone().or_else(|| {
        (matches!(cli.command, Command::Run(_)) && std::env::var_os("RUST_LOG").is_none())
            .then(|| "info".to_string())
    });
    init_logging(level.as_deref(), log_file.as_deref())?;
    let home = resolve_home(cli.home.clone())?;
    match cli.command {
        Command::Scan(args) => cmd_scan(&home, args, out),
        Command::Exclude {
            command: ExcludeCommand::Test(args),
        } => cmd_exclude_test(&home, args, out),
        Command::Pack(args) => cmd_pack(&home, args, out),
        Command::Enroll(args) => remote::cmd_enroll(&home, args, out),
        Command::Backup(args) => remote::cmd_backup(&home, args, out),
        Command::Points(args) => remote::cmd_points(&home, args, out),
        Command::Ls(args) => remote::cmd_ls(&home, args, out),
        Command::Restore(args) => remote::cmd_restore(&home, args, out),
        Command::Whoami => remote::cmd_whoami(&home, out),
        Command::Run(args) => daemon_cmds::cmd_run(&home, args, out),
        Command::Status(args) => daemon_cmds::cmd_status(&home, args, out),
        Command::Recover(args) => recover::cmd_recover(&home, args, out),
        Command::Drill(args) => recover::cmd_drill(&home, args, out),
        Command::Unlock(args) => recover::cmd_unlock(&home, args, out),
        Command::Lock => recover::cmd_lock(&home, out),
    }
}

fn init_logging(level: Option<&str>, file: Option<&Path>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("invalid --log-level {l:?}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    // A second call (tests running several commands in one process) keeps the first subscriber.
    if let Some(path) = file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the log file {}", path.display()))?;
        let _ = tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .with_env_filter(filter)
            .try_init();
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
    Ok(())
}

/// The OS's usual per-user data folder for the agent: `$XDG_DATA_HOME/keepsake` (or
/// `~/.local/share/keepsake`) on Linux, `~/Library/Application Support/Keepsake` on macOS,
/// `%APPDATA%\Keepsake` on Windows.
pub fn default_home() -> Option<PathBuf> {
    let name = if cfg!(any(target_os = "macos", windows)) {
        "Keepsake"
    } else {
        "keepsake"
    };
    dirs::data_dir().map(|d| d.join(name))
}

fn resolve_home(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit.filter(|p| !p.as_os_str().is_empty()) {
        Some(h) => Ok(h),
        None => default_home()
            .context("cannot find the per-user data folder; pass --home or set KEEPSAKE_HOME"),
    }
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

fn cmd_scan(home: &Path, args: ScanArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
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
    let bar = progress::bar(args.json, &progress::Look::SPINNER);
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

/// The `manifest.json` of a `keepsake pack` folder.
#[derive(Serialize)]
struct PackManifest<'a> {
    format: &'static str,
    version: u32,
    root: String,
    source: &'a str,
    key_id: &'a str,
    created_at_ms: i64,
    packs: Vec<ManifestFile>,
    delta_parts: Vec<ManifestFile>,
    report: &'a BackupReport,
}

#[derive(Serialize)]
struct ManifestFile {
    file: String,
    blobs: Option<u64>,
    entries: Option<u64>,
    bytes: u64,
}

struct PackProgress {
    bar: ProgressBar,
    files: u64,
    bytes: u64,
    failed: u64,
}

impl BackupObserver for PackProgress {
    fn on_plan_progress(&mut self, t: &PlanTotals) {
        self.bar.set_message(format!(
            "scanned {} files — packed {} files, {}{}",
            t.scan.files,
            self.files,
            format_bytes(self.bytes),
            if self.failed > 0 {
                format!(", {} failed", self.failed)
            } else {
                String::new()
            }
        ));
    }
    fn on_file(&mut self, o: &FileOutcome) {
        match o {
            FileOutcome::Done(r) => {
                self.files += 1;
                self.bytes += r.size;
            }
            FileOutcome::Failed(_) => self.failed += 1,
        }
        if self.files % 64 == 0 {
            self.bar.set_message(format!(
                "packed {} files, {}",
                self.files,
                format_bytes(self.bytes)
            ));
        }
    }
}

fn relative_name(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

fn cmd_pack(home: &Path, args: PackArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let root = std::fs::canonicalize(&args.path)
        .with_context(|| format!("cannot back up {}", args.path.display()))?;
    if !root.is_dir() {
        bail!("cannot back up {}: not a folder", root.display());
    }
    let keys = read_public_keys(&args.keys)?;
    keys.current_recipient()
        .context("the keys have no usable current recipient")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out_dir = std::fs::canonicalize(&args.out)?;
    if std::fs::read_dir(&out_dir)?.next().is_some() {
        bail!(
            "{} is not empty; pack into a new or empty folder",
            out_dir.display()
        );
    }
    if out_dir.starts_with(&root) {
        bail!(
            "the output folder {} is inside the folder being packed",
            out_dir.display()
        );
    }
    let matcher = Arc::new(build_matcher(&root, home, &args.rules, None)?);
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| root.display().to_string());
    let sink = Arc::new(FramedFileSink::new(&out_dir.join("packs"), args.pack_size)?);
    let mut opts = BackupOptions::new(&out_dir.join("delta"), DeltaHeader::new(&source, None));
    // A full snapshot: plan against an empty catalog, record nothing.
    opts.plan.update_catalog = false;
    opts.journal = false;
    opts.scan.cross_filesystems = args.cross_filesystems;
    opts.delta_limits = DeltaLimits {
        max_entries: args.part_entries.max(1),
        max_bytes: args.part_size,
    };
    if let Some(n) = args.threads {
        opts.pipeline.readers = n.max(1);
        opts.pipeline.sealers = n.max(1);
    }
    let mut catalog = Catalog::open_in_memory()?;
    let bar = progress::bar(args.json, &progress::Look::SPINNER);
    let mut progress = PackProgress {
        bar: bar.clone(),
        files: 0,
        bytes: 0,
        failed: 0,
    };
    let report = backup_to_sink(
        &mut catalog,
        &root,
        matcher,
        &keys,
        sink.clone(),
        &opts,
        &mut progress,
    )?;
    bar.finish_and_clear();
    let packs: Vec<ManifestFile> = sink
        .files()
        .iter()
        .map(|f| ManifestFile {
            file: relative_name(&out_dir, &f.path),
            blobs: Some(f.blobs),
            entries: None,
            bytes: f.bytes,
        })
        .collect();
    let parts: Vec<ManifestFile> = report
        .delta
        .parts
        .iter()
        .map(|p| ManifestFile {
            file: relative_name(&out_dir, &p.path),
            blobs: None,
            entries: Some(p.entries),
            bytes: p.bytes,
        })
        .collect();
    let manifest = PackManifest {
        format: "keepsake-offline-pack",
        version: 1,
        root: root.display().to_string(),
        source: &source,
        key_id: &keys.current_key_id,
        created_at_ms: crate::catalog::now_ms(),
        packs,
        delta_parts: parts,
        report: &report,
    };
    let manifest_path = out_dir.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    if args.json {
        output::json(out, &manifest)?;
    } else {
        print_pack(out, &report, &out_dir, sink.files().len())?;
    }
    let partial = report.files_failed > 0 || report.entry_errors > 0 || report.plan.has_issues();
    Ok(if partial { EXIT_PARTIAL } else { 0 })
}

fn print_pack(
    out: &mut dyn Write,
    r: &BackupReport,
    dir: &Path,
    pack_files: usize,
) -> std::io::Result<()> {
    let secs = r.elapsed.as_secs_f64();
    let p = &r.pipeline;
    writeln!(out, "Source:   {}", r.plan.root)?;
    writeln!(
        out,
        "Packed:   {} files ({}), {} folders, {} symlinks in {:.1} s ({}/s)",
        r.files_backed_up,
        format_bytes(r.bytes_backed_up),
        r.delta.dirs,
        r.delta.symlinks,
        secs,
        format_bytes((p.bytes_read as f64 / secs.max(1e-9)) as u64)
    )?;
    writeln!(
        out,
        "Blobs:    {} sealed ({} encrypted, {} compressed), {} chunks deduplicated",
        p.blobs_emitted,
        format_bytes(p.cipher_bytes_emitted),
        p.blobs_compressed,
        p.chunks_deduped + p.chunks_known
    )?;
    writeln!(
        out,
        "Output:   {} pack files, {} delta parts ({} entries) in {}",
        pack_files,
        r.delta.parts.len(),
        r.delta.entries,
        dir.display()
    )?;
    if let Some(cpu) = r.cpu {
        writeln!(
            out,
            "CPU:      {:.1} s ({} threads reading, {} sealing)",
            cpu.as_secs_f64(),
            r.threads.0,
            r.threads.1
        )?;
    }
    if r.files_failed > 0 || r.entry_errors > 0 {
        writeln!(
            out,
            "Failed:   {} files (not in the pack; run again later)",
            r.files_failed + r.entry_errors
        )?;
        for f in &r.failures {
            writeln!(out, "  {}: {}", f.rel, f.message)?;
        }
        output::and_more(out, "  ", r.failures.len(), r.files_failed)?;
    } else {
        writeln!(out, "Failed:   none")?;
    }
    if r.plan.has_issues() {
        writeln!(
            out,
            "Errors:   {} paths could not be scanned",
            r.plan.totals.scan.issues
        )?;
        for i in &r.plan.issues {
            writeln!(out, "  {}: {}", i.rel, i.message)?;
        }
    }
    Ok(())
}
