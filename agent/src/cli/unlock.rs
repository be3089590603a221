//! `keepsake unlock`: check the passphrase; with `--remember` keep the unsealed key in the home
//! for the daemon (when the organisation allows it).
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::Path;

use anyhow::bail;
use clap::Args;

use super::keys::{unseal_from_server, SecretArgs};
use crate::client;
use crate::home::Home;

/// `keepsake unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Keep the unsealed key in the home (mode 0600) so that the daemon can execute recovery
    /// requests unattended; only when the organisation's policy allows it.
    #[arg(long)]
    pub remember: bool,
    /// Passphrase or paper key.
    #[command(flatten)]
    pub secrets: SecretArgs,
}

pub(super) fn cmd_unlock(
    home_dir: &Path,
    args: UnlockArgs,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let home = Home::new(home_dir);
    let (_, client) = client::connect(&home, None)?;
    let secrets = args.secrets.source();
    if !args.remember {
        unseal_from_server(&home, &secrets)?;
        writeln!(
            out,
            "the passphrase unlocks the organisation's keys (nothing was kept; --remember keeps the key for the daemon)"
        )?;
        return Ok(0);
    }
    let policy = client.policy()?;
    if !policy.agents_keep_unsealed_key {
        bail!(
            "the organisation does not allow keeping the unsealed key on its machines \
             (policy agents_keep_unsealed_key is off); recovery requests are executed with \
             `keepsake recover` and the passphrase"
        );
    }
    let keys = unseal_from_server(&home, &secrets)?;
    home.save_secret_keys(&keys)?;
    writeln!(
        out,
        "the unsealed key is kept in {} (owner-only); the daemon now executes recovery requests for this machine. `keepsake lock` removes it",
        home.path(crate::home::SECRET_KEYS_FILE).display()
    )?;
    Ok(0)
}
