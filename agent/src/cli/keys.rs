//! How the commands get the organisation's keys: the passphrase / paper-key flags
//! ([`SecretArgs`]), the key kept in the home, unsealing the server's bundle, and key files.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use keepsake_common::keys::{KeyBundle, OrgKeys, OrgPublicKeys};

use crate::client;
use crate::home::{Home, SecretSource};

/// Passphrase / paper-key options shared by the commands that unlock keys.
#[derive(Debug, Args, Clone, Default)]
pub struct SecretArgs {
    /// Read the organisation's passphrase from FILE (else `KEEPSAKE_PASSPHRASE`).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Unlock with a paper key read from FILE instead of the passphrase.
    #[arg(long, value_name = "FILE")]
    pub paper_key_file: Option<PathBuf>,
}

impl SecretArgs {
    /// Where to find the passphrase or paper key.
    pub(super) fn source(&self) -> SecretSource {
        SecretSource {
            passphrase_file: self.passphrase_file.clone(),
            paper_key_file: self.paper_key_file.clone(),
        }
    }
}

/// The organisation's secret keys: kept on disk (when allowed), else unsealed from the bundle
/// with `secrets` as given (no prompt; `restore`).
pub(super) fn unlock_keys(home: &Home, secrets: &SecretSource) -> anyhow::Result<OrgKeys> {
    if let Some(k) = home.stored_secret_keys()? {
        return Ok(k);
    }
    let (_, client) = client::connect(home, None)?;
    let active = client
        .keys()?
        .active
        .context("the organisation has no key yet")?;
    let bundle = KeyBundle::from_json(&active.bundle)?;
    Ok(secrets.unseal(&bundle)?)
}

/// The organisation's keys: kept in the home (when allowed), else unsealed with the passphrase
/// (`--passphrase-file`, `KEEPSAKE_PASSPHRASE`, a prompt on a terminal) or a paper key
/// (`recover`, `drill`).
pub(super) fn keys_for(home: &Home, secrets: &SecretSource) -> anyhow::Result<OrgKeys> {
    if let Some(k) = home.stored_secret_keys()? {
        return Ok(k);
    }
    unseal_from_server(home, secrets)
}

/// The organisation's keys unsealed from the server's active bundle with the passphrase
/// (`--passphrase-file`, `KEEPSAKE_PASSPHRASE`, a prompt on a terminal) or a paper key.
pub(super) fn unseal_from_server(home: &Home, secrets: &SecretSource) -> anyhow::Result<OrgKeys> {
    let (_, client) = client::connect(home, None)?;
    let active = client
        .keys()?
        .active
        .context("the organisation has no key yet")?;
    let bundle = KeyBundle::from_json(&active.bundle)?;
    let no_secret = secrets.paper_key_file.is_none() && secrets.passphrase()?.is_none();
    if no_secret && std::io::stdin().is_terminal() {
        let pass = prompt_passphrase()?;
        return bundle
            .unseal_with_passphrase(&pass)
            .context("the passphrase does not unlock the organisation's keys");
    }
    secrets
        .unseal(&bundle)
        .context("cannot unlock the organisation's keys")
}

/// Reads a passphrase from the terminal without echo.
fn prompt_passphrase() -> anyhow::Result<String> {
    let mut err = std::io::stderr();
    write!(err, "Organisation passphrase: ")?;
    err.flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it for a descriptor we checked is a TTY.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have_tty = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_tty {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    if have_tty {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    read.context("cannot read the passphrase")?;
    let pass = line.trim_end_matches(['\r', '\n']).to_string();
    if pass.is_empty() {
        bail!("no passphrase given");
    }
    Ok(pass)
}

/// Reads the organisation's keys from a file holding either the public-keys JSON or the
/// secret-keys JSON (of which only the public part is kept).
pub fn read_public_keys(path: &Path) -> anyhow::Result<OrgPublicKeys> {
    let mut bytes =
        std::fs::read(path).with_context(|| format!("cannot read the keys {}", path.display()))?;
    let parsed = match serde_json::from_slice::<OrgPublicKeys>(&bytes) {
        Ok(k) => Ok(k),
        Err(_) => OrgKeys::from_secret_json(&bytes).map(|k| k.public()),
    };
    // Best effort: do not leave the secret JSON around in freed memory.
    bytes.fill(0);
    parsed.with_context(|| {
        format!(
            "{} holds neither the organisation's public keys nor its secret keys",
            path.display()
        )
    })
}
