//! `keepsake drill`: restore a sample of recent files into a scratch folder, validate them and
//! report the result to the server.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::Path;

use clap::Args;

use super::keys::{keys_for, SecretArgs};
use super::{output, EXIT_FAILED};
use crate::client;
use crate::home::Home;
use crate::recovery;
use crate::units::format_bytes;

/// `keepsake drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// How many recent files to restore and check.
    #[arg(long, default_value_t = recovery::DEFAULT_DRILL_FILES, value_name = "N")]
    pub files: usize,
    /// Passphrase or paper key.
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn cmd_drill(
    home_dir: &Path,
    args: DrillArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let home = Home::new(home_dir);
    let (cfg, client) = client::connect(&home, None)?;
    let keys = keys_for(&home, &args.secrets.source())?;
    let o = recovery::drill(
        &client,
        &keys,
        cfg.agent_id,
        &home.path(crate::home::TMP_DIR),
        args.files,
    )?;
    if args.json {
        output::json(out, &o)?;
    } else {
        let v = &o.validation;
        writeln!(
            out,
            "restore drill of {} ({}): {}: {} of {} sampled files restored ({}) and re-read; {} mismatched, {} missing{}",
            o.recovery_point_id,
            o.root_path,
            if o.passed { "PASSED" } else { "FAILED" },
            o.files_restored,
            o.files.len(),
            format_bytes(o.bytes_restored),
            v.mismatches,
            v.missing,
            if o.reported { "" } else { " (not recorded on the server)" }
        )?;
        if let Some(e) = &o.error {
            writeln!(out, "  {e}")?;
        }
    }
    Ok(if o.passed { 0 } else { EXIT_FAILED })
}
