//! `keepsake enroll`: enrol this machine in an organisation (and set up or unlock its keys).
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::keys::SecretArgs;
use super::output;
use crate::enroll::{self, EnrollOptions};
use crate::home::Home;

/// `keepsake enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Server URL (repeat for failover servers, tried in order).
    #[arg(long = "server", required = true, value_name = "URL")]
    pub servers: Vec<String>,
    /// The single-use enrolment token from the organisation's admin.
    #[arg(long)]
    pub token: String,
    /// This machine's name in the organisation (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// First machine of an organisation: also seal the keys to a new paper key, written to FILE
    /// (print it, store it offline, delete the file).
    #[arg(long, value_name = "FILE")]
    pub paper_key_out: Option<PathBuf>,
    /// Passphrase or paper key.
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// Allow plain `http://` to a server that is not on this machine (token and data cross the
    /// network unencrypted; remembered in agent.toml).
    #[arg(long)]
    pub insecure_http: bool,
    /// A CA certificate (PEM) to trust for the server's HTTPS, e.g. of a self-signed certificate
    /// (remembered in agent.toml; keep the file where it is).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn scrypt_override() -> Option<u8> {
    std::env::var("KEEPSAKE_SCRYPT_LOG_N")
        .ok()
        .and_then(|v| v.parse().ok())
}

pub(super) fn cmd_enroll(home: &Path, args: EnrollArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let home = Home::new(home);
    let name = match args.name {
        Some(n) => n,
        None => hostname_or_default(),
    };
    let done = enroll::enroll(
        &home,
        &EnrollOptions {
            server_urls: args.servers,
            enroll_token: args.token,
            name,
            secrets: args.secrets.source(),
            paper_key_out: args.paper_key_out,
            scrypt_log_n: scrypt_override(),
            transport: crate::client::Transport {
                insecure_http: args.insecure_http,
                ca_cert: args.ca_cert.map(|p| std::path::absolute(&p).unwrap_or(p)),
            },
        },
    )?;
    if args.json {
        output::json(out, &done)?;
    } else {
        writeln!(
            out,
            "enrolled in {} ({}) as agent {}",
            done.organization_name, done.organization_id, done.agent_id
        )?;
        if done.generated_keys {
            writeln!(
                out,
                "generated the organisation's keys ({}); only the sealed bundle was sent to the server",
                done.key_id
            )?;
        } else {
            writeln!(out, "unlocked the organisation's keys ({})", done.key_id)?;
        }
        if let Some(p) = &done.paper_key_file {
            writeln!(
                out,
                "paper key written to {}: print it, keep it somewhere safe, then delete the file",
                p.display()
            )?;
        }
    }
    Ok(0)
}

fn hostname_or_default() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this-machine".to_string())
}
