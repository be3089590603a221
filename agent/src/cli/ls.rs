//! `keepsake ls`: list the files of a recovery point.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::Path;

use clap::Args;
use keepsake_common::api::FileKind;

use super::output;
use super::points::resolve_point;
use crate::client;
use crate::home::Home;

/// `keepsake ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Recovery point id, or `latest` (this machine's newest).
    #[arg(long)]
    pub point: String,
    /// Path prefix (a file, or a folder and everything under it).
    #[arg(default_value = "")]
    pub prefix: String,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn cmd_ls(home: &Path, args: LsArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let (cfg, client) = client::connect(&Home::new(home), None)?;
    let point = resolve_point(&client, cfg.agent_id, &args.point)?;
    let mut after: Option<String> = None;
    loop {
        let (files, more) =
            client.files_page(point, &args.prefix, after.as_deref(), 1000, false)?;
        after = files.last().map(|f| f.path.clone());
        for f in &files {
            if args.json {
                output::json_line(out, f)?;
            } else {
                let kind = match f.kind {
                    FileKind::Directory => "d",
                    FileKind::Symlink => "l",
                    FileKind::File => "-",
                    FileKind::Fifo => "p",
                };
                writeln!(out, "{kind} {:>12}  {}", f.size, f.path)?;
            }
        }
        if !more {
            break;
        }
    }
    Ok(0)
}
