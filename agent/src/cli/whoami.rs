//! `keepsake whoami`: which organisation and server this agent uses.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::Path;

use crate::client;
use crate::home::Home;

pub(super) fn cmd_whoami(home: &Path, out: &mut dyn Write) -> anyhow::Result<u8> {
    let (cfg, client) = client::connect(&Home::new(home), None)?;
    let who = client.whoami()?;
    writeln!(
        out,
        "agent {} ({}) of {} ({}) at {}",
        cfg.agent_name,
        cfg.agent_id,
        cfg.organization_name,
        who.organization_id,
        client.url()
    )?;
    Ok(0)
}
