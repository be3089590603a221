//! `keepsake points`: list recovery points; and the `--point` argument (`latest` or an id) of
//! `ls` and `restore`.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::Args;
use uuid::Uuid;

use super::output;
use crate::client;
use crate::home::Home;
use crate::units::format_bytes;

/// `keepsake points`.
#[derive(Debug, Args)]
pub struct PointsArgs {
    /// Only this machine's points.
    #[arg(long)]
    pub mine: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Resolves `latest` to this machine's newest point.
pub(super) fn resolve_point(
    client: &crate::client::ApiClient,
    agent: Uuid,
    point: &str,
) -> anyhow::Result<Uuid> {
    if point == "latest" {
        let points = client.points(None, Some(agent))?;
        return points
            .first()
            .map(|p| p.id)
            .context("this machine has no recovery point yet");
    }
    Uuid::parse_str(point)
        .with_context(|| format!("`{point}` is not a recovery point id (or `latest`)"))
}

pub(super) fn cmd_points(home: &Path, args: PointsArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let (cfg, client) = client::connect(&Home::new(home), None)?;
    let points = client.points(None, args.mine.then_some(cfg.agent_id))?;
    if args.json {
        output::json(out, &points)?;
        return Ok(0);
    }
    if points.is_empty() {
        writeln!(out, "no recovery points yet")?;
    }
    for p in points {
        writeln!(
            out,
            "{}  {}  {:<16} {:>8} files {:>10}  seq {:<5} {}{}",
            p.id,
            p.point_in_time.format("%Y-%m-%d %H:%M:%S"),
            p.agent_name,
            p.file_count,
            format_bytes(p.backup_size_bytes.max(0) as u64),
            p.seq,
            p.root_path,
            if p.is_wedding_critical {
                "  [critical]"
            } else {
                ""
            }
        )?;
    }
    Ok(0)
}
