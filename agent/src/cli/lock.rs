//! `keepsake lock`: remove the unsealed key kept by `keepsake unlock --remember`.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::Path;

use crate::home::Home;

pub(super) fn cmd_lock(home_dir: &Path, out: &mut dyn Write) -> anyhow::Result<u8> {
    let home = Home::new(home_dir);
    let had = home.stored_secret_keys().ok().flatten().is_some()
        || home.path(crate::home::SECRET_KEYS_FILE).exists();
    home.forget_secret_keys()?;
    writeln!(
        out,
        "{}",
        if had {
            "the unsealed key was removed from this machine; recovery requests now wait for the passphrase"
        } else {
            "no unsealed key was kept on this machine"
        }
    )?;
    Ok(0)
}
