//! `keepsake enroll`: enrol this machine in an organisation (and set up or unlock its keys).
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::Write;

use anyhow::{bail, Context};
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
    /// The single-use enrolment token from the organisation's admin (visible to other users
    /// in the process list: prefer `--token-file` or `KEEPSAKE_ENROLL_TOKEN`).
    #[arg(long, env = "KEEPSAKE_ENROLL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the enrolment token from FILE (wins over `--token` and `KEEPSAKE_ENROLL_TOKEN`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
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

impl EnrollArgs {
    /// The enrolment token: `--token-file`, else `--token` / `KEEPSAKE_ENROLL_TOKEN`.
    fn enroll_token(&self) -> anyhow::Result<String> {
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the enrolment token file {}", path.display())
                })?;
                if text.trim().is_empty() {
                    bail!("the enrolment token file {} is empty", path.display());
                }
                text.trim().to_string()
            }
            (None, Some(t)) if !t.trim().is_empty() => t.trim().to_string(),
            _ => bail!(
                "no enrolment token: give --token-file FILE, set KEEPSAKE_ENROLL_TOKEN or give \
                 --token TOKEN"
            ),
        };
        Ok(token)
    }
}

pub(super) fn cmd_enroll(home: &Path, args: EnrollArgs, out: &mut dyn Write) -> anyhow::Result<u8> {
    let enroll_token = args.enroll_token()?;
    let home = Home::new(home);
    let name = match args.name {
        Some(n) => n,
        None => hostname_or_default(),
    };
    let done = enroll::enroll(
        &home,
        &EnrollOptions {
            server_urls: args.servers,
            enroll_token,
            name,
            secrets: args.secrets.source(),
            paper_key_out: args.paper_key_out,
            scrypt_log_n: crate::test_hooks::scrypt_log_n(),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: EnrollArgs,
    }

    fn parse(extra: &[&str]) -> EnrollArgs {
        let mut argv = vec!["keepsake", "--server", "http://127.0.0.1:1"];
        argv.extend_from_slice(extra);
        Wrap::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn the_enrolment_token_comes_from_a_file_the_environment_or_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "ks_enroll_from_file\n").unwrap();
        let f = file.to_str().unwrap();
        assert_eq!(
            parse(&["--token-file", f]).enroll_token().unwrap(),
            "ks_enroll_from_file"
        );
        assert_eq!(
            parse(&["--token", "ks_flag"]).enroll_token().unwrap(),
            "ks_flag"
        );
        // The environment (read by clap; only this test sets it).
        std::env::set_var("KEEPSAKE_ENROLL_TOKEN", "ks_from_env");
        let from_env = parse(&[]).enroll_token();
        let file_wins = parse(&["--token-file", f]).enroll_token();
        std::env::remove_var("KEEPSAKE_ENROLL_TOKEN");
        assert_eq!(from_env.unwrap(), "ks_from_env");
        assert_eq!(file_wins.unwrap(), "ks_enroll_from_file");

        // Missing, empty or no token at all: clear errors.
        let missing = dir.path().join("nope");
        let e = format!(
            "{:#}",
            parse(&["--token-file", missing.to_str().unwrap()])
                .enroll_token()
                .unwrap_err()
        );
        assert!(
            e.starts_with(&format!(
                "cannot read the enrolment token file {}",
                missing.display()
            )),
            "{e}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = parse(&["--token-file", empty.to_str().unwrap()])
            .enroll_token()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("the enrolment token file {} is empty", empty.display())
        );
        let e = parse(&[]).enroll_token().unwrap_err().to_string();
        assert!(e.starts_with("no enrolment token"), "{e}");
    }
}
