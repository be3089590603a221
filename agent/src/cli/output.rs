//! Output shared by the commands: the `--json` printers and the human lines several commands
//! print the same way.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;

use serde::Serialize;

/// Writes `value` as pretty JSON followed by a newline: the `--json` output of the commands.
pub(super) fn json<T: Serialize + ?Sized>(out: &mut dyn Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Writes `value` as JSON on one line (JSON lines, one value per line).
pub(super) fn json_line<T: Serialize + ?Sized>(
    out: &mut dyn Write,
    value: &T,
) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Closes a list that shows `shown` of `total` items with `… and N more`, indented by `indent`,
/// when some were left out.
pub(super) fn and_more(
    out: &mut dyn Write,
    indent: &str,
    shown: usize,
    total: u64,
) -> std::io::Result<()> {
    let shown = shown as u64;
    if shown < total {
        writeln!(out, "{indent}… and {} more", total - shown)?;
    }
    Ok(())
}
