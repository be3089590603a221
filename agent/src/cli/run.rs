//! `keepsake run`: the daemon, watching the folders and backing them up continuously.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::rules::RuleArgs;
use crate::daemon::{Daemon, DaemonOptions};
use crate::home::Home;

/// `keepsake run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folders to watch and back up (added to those backed up before from this home).
    pub paths: Vec<PathBuf>,
    /// Seconds a file must stay unchanged before it is taken (the organisation's vendor
    /// setting wins when set on the server; `KEEPSAKE_SETTLE_SECS` forces this value).
    #[arg(long, env = "KEEPSAKE_SETTLE_SECS", default_value_t = 5)]
    pub settle: u64,
    /// Full rescan interval in seconds (notifications can be lost).
    #[arg(long, default_value_t = 900)]
    pub rescan_interval: u64,
    /// Seconds between policy refreshes from the server.
    #[arg(long, default_value_t = 60)]
    pub policy_interval: u64,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 60)]
    pub heartbeat_interval: u64,
    /// Do not use filesystem notifications (network shares): periodic scans only.
    #[arg(long)]
    pub no_watch: bool,
    /// Upload limit in kbit/s (else the organisation's setting).
    #[arg(long)]
    pub bandwidth_kbps: Option<u32>,
    /// Seconds between restore drills (only when the organisation lets this machine keep the
    /// key: `keepsake unlock --remember`); 0 turns them off.
    #[arg(long, default_value_t = 86_400)]
    pub drill_interval: u64,
    /// Write logs to FILE instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Exclusion rules (with the organisation's rules and the home's `exclude` file).
    #[command(flatten)]
    pub rules: RuleArgs,
}

pub(super) fn cmd_run(home: &Path, args: RunArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    let opts = DaemonOptions {
        settle: Duration::from_secs(args.settle),
        rescan_interval: Duration::from_secs(args.rescan_interval.max(1)),
        policy_interval: Duration::from_secs(args.policy_interval.max(1)),
        heartbeat_interval: Duration::from_secs(args.heartbeat_interval.max(1)),
        watch: !args.no_watch,
        bandwidth_kbps: args.bandwidth_kbps,
        drill_interval: (args.drill_interval > 0).then(|| Duration::from_secs(args.drill_interval)),
        rules: args.rules.local(),
        ..DaemonOptions::default()
    };
    let mut d = Daemon::new(Home::new(home), args.paths, opts, stop)?;
    d.run()?;
    writeln!(out, "keepsake daemon stopped")?;
    Ok(0)
}
