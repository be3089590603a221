//! The `keepsake` command line, a thin layer over the agent's engine.
//!
//! ```text
//! keepsake [--home DIR] [--log-level LEVEL] COMMAND [ARGS...]
//! ```
//!
//! This file holds the parser ([`Cli`], [`Command`]), the dispatch, the exit codes, the home and
//! the logging. Each command is one file holding its flags and its `cmd_*` function, which
//! parses, calls the engine and prints (`scan.rs`, `exclude.rs`, `pack.rs`, `enroll.rs`,
//! `backup.rs`, `points.rs`, `ls.rs`, `restore.rs`, `whoami.rs`, `run.rs`, `status.rs`,
//! `recover.rs`, `drill.rs`, `unlock.rs`, `lock.rs`). Shared pieces: `rules.rs` (the exclusion
//! flags and the matcher), `keys.rs` (the passphrase flags, unsealing, key files),
//! `progress.rs` (the progress bar) and `output.rs` (JSON and the lines several commands print).
//!
//! Exit codes: 0 success; 1 failure, or a restore, recovery or drill that ran but failed
//! ([`EXIT_FAILED`]); 2 usage error; 3 the scan, pack or backup completed but some paths could
//! not be read, listed in the output ([`EXIT_PARTIAL`]); 4 `status --path`: some files of the
//! folder are not yet safe on the server ([`EXIT_NOT_SAFE`]).
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

mod backup;
mod drill;
mod enroll;
mod exclude;
mod keys;
mod lock;
mod ls;
mod output;
mod pack;
mod points;
mod progress;
mod recover;
mod restore;
mod rules;
mod run;
mod scan;
mod status;
mod unlock;
mod whoami;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

pub use backup::BackupArgs;
pub use drill::DrillArgs;
pub use enroll::EnrollArgs;
pub use exclude::{ExcludeCommand, ExcludeTestArgs};
pub use keys::{read_public_keys, SecretArgs};
pub use ls::LsArgs;
pub use pack::PackArgs;
pub use points::PointsArgs;
pub use recover::RecoverArgs;
pub use restore::RestoreArgs;
pub use rules::RuleArgs;
pub use run::RunArgs;
pub use scan::ScanArgs;
pub use status::StatusArgs;
pub use unlock::UnlockArgs;

/// Exit code: the command ran but its work failed (files not restored, a recovery or a drill
/// that failed); also what `main` returns for an error.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the scan completed but some paths could not be read.
pub const EXIT_PARTIAL: u8 = 3;
/// Exit code of `status --path`: some files of the folder are not yet safe on the server.
pub const EXIT_NOT_SAFE: u8 = 4;

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
    Enroll(EnrollArgs),
    /// Back up a folder to the server now.
    Backup(BackupArgs),
    /// List recovery points.
    Points(PointsArgs),
    /// List the files of a recovery point.
    Ls(LsArgs),
    /// Restore a recovery point (or part of it) into a folder.
    Restore(RestoreArgs),
    /// Show which organisation and server this agent uses.
    Whoami,
    /// Run the daemon: watch the folders and back them up continuously.
    Run(RunArgs),
    /// Show the daemon's state, or whether a folder is safe on the server (`--path`).
    Status(StatusArgs),
    /// Execute the recovery requests made for this machine (restore, validate, report).
    Recover(RecoverArgs),
    /// Restore drill: restore a sample of recent files into a scratch folder, validate them and
    /// report the result to the server.
    Drill(DrillArgs),
    /// Check the passphrase; with --remember keep the unsealed key here for the daemon (when the
    /// organisation allows it).
    Unlock(UnlockArgs),
    /// Remove the unsealed key kept by `unlock --remember`.
    Lock,
    /// Back up PATH offline into a folder: encrypted packs (framed blob streams) and the job
    /// delta, without a server. Every file is included (a full snapshot); the catalog is not
    /// touched.
    Pack(PackArgs),
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
        Command::Scan(args) => scan::cmd_scan(&home, args, out),
        Command::Exclude { command } => exclude::cmd_exclude(&home, command, out),
        Command::Pack(args) => pack::cmd_pack(&home, args, out),
        Command::Enroll(args) => enroll::cmd_enroll(&home, args, out),
        Command::Backup(args) => backup::cmd_backup(&home, args, out),
        Command::Points(args) => points::cmd_points(&home, args, out),
        Command::Ls(args) => ls::cmd_ls(&home, args, out),
        Command::Restore(args) => restore::cmd_restore(&home, args, out),
        Command::Whoami => whoami::cmd_whoami(&home, out),
        Command::Run(args) => run::cmd_run(&home, args, out),
        Command::Status(args) => status::cmd_status(&home, args, out),
        Command::Recover(args) => recover::cmd_recover(&home, args, out),
        Command::Drill(args) => drill::cmd_drill(&home, args, out),
        Command::Unlock(args) => unlock::cmd_unlock(&home, args, out),
        Command::Lock => lock::cmd_lock(&home, out),
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
