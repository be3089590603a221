//! The organisation's policy as last received from the server (`<home>/policy.json`): kept so
//! that the commands that work offline (`keepsake scan`, `keepsake exclude test`) apply the
//! same server rules as the daemon and `keepsake backup`, which fetch it.
//!
//! Crash behaviour: the file is replaced atomically (temp file + rename), so a crash leaves the
//! previous policy or the new one; an unreadable or corrupt file counts as no policy (the next
//! fetch replaces it) and is reported in the log.

use keepsake_common::api::AgentPolicy;

use super::{Home, HomeError};

/// File name of the cached policy.
pub const POLICY_FILE: &str = "policy.json";

impl Home {
    /// Keeps `policy` as the last one received.
    pub fn save_policy(&self, policy: &AgentPolicy) -> Result<(), HomeError> {
        let json = serde_json::to_vec_pretty(policy).map_err(|e| HomeError::Invalid {
            path: self.path(POLICY_FILE),
            message: e.to_string(),
        })?;
        self.write_file(POLICY_FILE, &json)
    }

    /// The last policy received, if any.
    pub fn cached_policy(&self) -> Option<AgentPolicy> {
        let path = self.path(POLICY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the cached policy");
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a corrupt cached policy");
                None
            }
        }
    }
}
