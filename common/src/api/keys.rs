//! The organisation's registered data keys: the public recipient and the sealed key bundle
//! (never a private key), listed and registered.
//!
//! Crash behaviour: none; plain wire types, no state.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One registered data key: its public recipient and the sealed bundle (never a private key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: Uuid,
    pub key_id: String,
    pub recipient: String,
    /// The key bundle JSON (see `keys::KeyBundle`).
    pub bundle: String,
    pub is_active: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeysResponse {
    /// The active key (absent until the first machine has set the organisation up).
    #[serde(default)]
    pub active: Option<KeyRecord>,
}

/// `POST /v1/keys`: the first machine registers the organisation's key; a rotation registers the
/// next one (the bundle then holds the whole ring).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterKeyRequest {
    pub key_id: String,
    pub recipient: String,
    pub bundle: String,
    #[serde(default)]
    pub extra_recipients: Vec<String>,
    /// For a rotation: the key id this one replaces (must be the active one).
    #[serde(default)]
    pub replaces_key_id: Option<String>,
}
