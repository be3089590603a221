//! Enrolment: joining an organisation with a single-use token and setting up (first machine) or
//! unlocking (later machines) the organisation's keys. Only the sealed key bundle ever goes to
//! the server.
//!
//! Crash behaviour: the steps are ordered so that a half-finished enrolment can always be
//! finished. The secret is checked before the single-use token is spent; the agent token is
//! saved (`agent.toml`) as soon as the server hands it out (a crash in the instant between the
//! server's answer and that write leaves a spent token and a home that is not enrolled: the
//! machine then needs a new token); the keys are saved last. A crash (or
//! a mistyped passphrase) after the token is spent leaves a home that is enrolled without keys:
//! running `keepsake enroll` again finds it and only finishes the key step with the saved agent
//! token (no new enrolment token). When two first machines race to create the organisation's
//! keys, the server keeps the first bundle and the other machine unlocks it instead.

use std::path::PathBuf;

use keepsake_common::api::{EnrollRequest, RegisterKeyRequest};
use keepsake_common::keys::{KeyBundle, OrgKeys, PaperKey};
use serde::Serialize;
use uuid::Uuid;

use crate::client::{ApiClient, ClientError, Transport};
use crate::home::{AgentConfig, Home, HomeError, SecretSource};

/// Errors of enrolment.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A home-folder problem (unreadable configuration, locked bundle).
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Key material problems.
    #[error(transparent)]
    Keys(#[from] keepsake_common::keys::KeyError),
    /// Anything else, with an explanation.
    #[error("{0}")]
    Other(String),
}

/// Options of `keepsake enroll`.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Server URLs (first is tried first).
    pub server_urls: Vec<String>,
    /// The single-use enrolment token.
    pub enroll_token: String,
    /// This machine's name in the organisation.
    pub name: String,
    /// Where the passphrase (or paper key) comes from.
    pub secrets: SecretSource,
    /// First machine only: also seal the bundle to a new paper key and write its secret here.
    pub paper_key_out: Option<PathBuf>,
    /// Scrypt work factor of the bundle (tests lower it; `None` is the strong default).
    pub scrypt_log_n: Option<u8>,
    /// Plain `http://` to another machine allowed, and extra CA trusted (kept in `agent.toml`).
    pub transport: Transport,
}

/// What enrolment did.
#[derive(Debug, Clone, Serialize)]
pub struct Enrolled {
    /// The organisation.
    pub organization_id: Uuid,
    /// Its name.
    pub organization_name: String,
    /// This machine's agent id.
    pub agent_id: Uuid,
    /// True when this machine generated the organisation's keys.
    pub generated_keys: bool,
    /// The data key id in use.
    pub key_id: String,
    /// Whether the unsealed keys were kept on disk.
    pub secret_keys_on_disk: bool,
    /// Where the paper key was written (first machine, when asked).
    pub paper_key_file: Option<PathBuf>,
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Enrols this machine and sets up (first machine) or unlocks (later machines) the
/// organisation's keys. Only the sealed bundle ever goes to the server.
pub fn enroll(home: &Home, opts: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    if home.is_enrolled() {
        // Enrolled, but the keys were never set up or unlocked (e.g. a mistyped passphrase
        // after the token was spent): finish that with the saved agent token; the new
        // enrolment token is not used.
        if home.public_keys().is_err() {
            return finish_enrolment(home, opts);
        }
        return Err(EnrollError::Other(format!(
            "{} already holds an enrolled agent; use another --home for a second agent",
            home.dir().display()
        )));
    }
    // Check the secret is available before spending the single-use token.
    let have_secret = opts.secrets.passphrase()?.is_some() || opts.secrets.paper_key_file.is_some();
    if !have_secret {
        return Err(EnrollError::Other(format!(
            "a passphrase is needed to set up or unlock the organisation's keys: pass \
             --passphrase-file FILE or set {}",
            crate::home::PASSPHRASE_ENV
        )));
    }
    // Refuses plain http:// to another machine before the token crosses the network.
    let anon = ApiClient::with_transport(opts.server_urls.clone(), None, &opts.transport)?;
    let e = anon.enroll(&EnrollRequest {
        enroll_token: opts.enroll_token.trim().to_string(),
        name: opts.name.clone(),
        hostname: hostname(),
        platform: Some(std::env::consts::OS.to_string()),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    })?;
    let cfg = AgentConfig {
        server_urls: opts.server_urls.clone(),
        organization_id: e.organization_id,
        organization_name: e.organization_name.clone(),
        agent_id: e.agent_id,
        agent_name: opts.name.clone(),
        token: e.agent_token.clone(),
        allow_unsealed_key_on_disk: e.allow_unsealed_key_on_disk,
        insecure_http: opts.transport.insecure_http,
        ca_cert: opts.transport.ca_cert.clone(),
    };
    home.save_config(&cfg)?;
    finish_enrolment(home, opts)
}

/// Sets up (first machine) or unlocks the organisation's keys for an enrolled home. A wrong
/// passphrase leaves the home enrolled without keys; running `keepsake enroll` again with the
/// right one finishes here.
fn finish_enrolment(home: &Home, opts: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    let (cfg, client) = crate::client::connect(home, None).map_err(|e| match e {
        crate::client::ConnectError::Home(h) => EnrollError::Home(h),
        crate::client::ConnectError::Client(c) => EnrollError::Client(c),
    })?;
    let (keys, generated, paper) = setup_keys(&client, opts).map_err(|e| match e {
        EnrollError::Client(_) => e,
        other => EnrollError::Other(format!(
            "{other}. This machine is enrolled as {:?} but its keys are not unlocked yet: run \
             `keepsake enroll` again with the right passphrase or paper key (no new token needed)",
            cfg.agent_name
        )),
    })?;
    home.save_public_keys(&keys.public())?;
    if cfg.allow_unsealed_key_on_disk {
        home.save_secret_keys(&keys)?;
    }
    Ok(Enrolled {
        organization_id: cfg.organization_id,
        organization_name: cfg.organization_name.clone(),
        agent_id: cfg.agent_id,
        generated_keys: generated,
        key_id: keys.key_id().to_string(),
        secret_keys_on_disk: cfg.allow_unsealed_key_on_disk,
        paper_key_file: paper,
    })
}

fn setup_keys(
    client: &ApiClient,
    opts: &EnrollOptions,
) -> Result<(OrgKeys, bool, Option<PathBuf>), EnrollError> {
    if let Some(active) = client.keys()?.active {
        let bundle = KeyBundle::from_json(&active.bundle)?;
        let keys = opts.secrets.unseal(&bundle)?;
        return Ok((keys, false, None));
    }
    let pass = opts.secrets.passphrase()?.ok_or_else(|| {
        EnrollError::Other(
            "this is the organisation's first machine: a passphrase is needed to seal its new keys"
                .into(),
        )
    })?;
    let keys = OrgKeys::generate()?;
    let mut extra = Vec::new();
    let mut paper_file = None;
    if let Some(out) = &opts.paper_key_out {
        let paper = PaperKey::generate();
        use keepsake_common::keys::ExposeSecret;
        crate::home::write_private(
            out,
            format!("{}\n", paper.secret().expose_secret()).as_bytes(),
        )?;
        extra.push(paper.recipient());
        paper_file = Some(out.clone());
    }
    let params = keepsake_common::keys::BundleParams {
        scrypt_log_n: opts
            .scrypt_log_n
            .unwrap_or(keepsake_common::keys::DEFAULT_SCRYPT_LOG_N),
    };
    let bundle = KeyBundle::seal_with(&keys, &pass, &extra, params)?;
    match client.register_key(&RegisterKeyRequest {
        key_id: keys.key_id().to_string(),
        recipient: keys.current_recipient().to_string(),
        bundle: bundle.to_json(),
        extra_recipients: extra.iter().map(|r| r.to_string()).collect(),
        replaces_key_id: None,
    }) {
        Ok(_) => Ok((keys, true, paper_file)),
        Err(ClientError::Api { code: Some(c), .. }) if c == "key_exists" => {
            // Another machine set the organisation up at the same moment: use its keys.
            if let Some(p) = &paper_file {
                let _ = std::fs::remove_file(p);
            }
            let active = client.keys()?.active.ok_or_else(|| {
                EnrollError::Other("the server reported a key but returned none".into())
            })?;
            let keys = opts
                .secrets
                .unseal(&KeyBundle::from_json(&active.bundle)?)?;
            Ok((keys, false, None))
        }
        Err(e) => Err(e.into()),
    }
}
