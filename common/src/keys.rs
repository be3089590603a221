//! The organisation's keys, key rotation, and the passphrase-sealed key bundle.
//!
//! * [`OrgKeys`] — the secret material: the chunk-ID key and a [`KeyRing`] of age X25519 data
//!   identities. Generated on the first machine that joins an organisation, never on the server.
//! * [`KeyRing`] — rotation adds a new identity whose recipient is used for NEW blobs; the ring
//!   keeps every older identity so old blobs stay readable.
//! * [`OrgPublicKeys`] — what a backup-only machine needs: the recipients and the chunk-ID key.
//!   (The chunk-ID key is secret from the server, but every machine of the organisation has it.)
//! * [`KeyBundle`] — the secret material sealed with age, once per unlock method: one envelope to
//!   a passphrase (age scrypt recipient) and one per extra recipient (paper keys). age forbids an
//!   scrypt stanza next to other stanzas in one file, hence one envelope per method. The server
//!   stores only this bundle.
//! * [`PaperKey`] — an age X25519 identity meant to be printed (`AGE-SECRET-KEY-1…`).
//!
//! Crash behaviour: none here; keys and bundles are values, and whoever stores a bundle (the
//! agent's home, the server's database) owns writing it durably.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use base64::Engine;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::crypto::{self, CryptoError, SealedBlob};
use crate::ids::{BlobId, ChunkIdKey, CipherHash};

pub use age::secrecy::{ExposeSecret, SecretString};
pub use age::x25519::{Identity as AgeIdentity, Recipient as AgeRecipient};

/// Version of the key bundle and of the secret-keys JSON inside it.
pub const BUNDLE_VERSION: u32 = 1;
/// `format` field of a key bundle.
pub const BUNDLE_FORMAT: &str = "keepsake-key-bundle";
/// Default scrypt work factor of the passphrase envelope: N = 2^18 (256 MiB, about a second).
pub const DEFAULT_SCRYPT_LOG_N: u8 = 18;
/// Largest scrypt work factor accepted when unsealing (N = 2^20: 1 GiB of memory).
pub const MAX_SCRYPT_LOG_N: u8 = 20;
/// Largest bundle envelope accepted (the secret JSON is a few hundred bytes per key).
pub const MAX_ENVELOPE_LEN: usize = 1024 * 1024;

/// Errors about keys and key bundles.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("this key is not a recipient of the key bundle")]
    WrongKey,
    #[error("the key bundle has no passphrase envelope")]
    NoPassphraseEnvelope,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("scrypt work factor {0} is outside 1..={max}", max = MAX_SCRYPT_LOG_N)]
    WorkFactor(u8),
    #[error("unsupported key bundle version {0} (this program reads version {BUNDLE_VERSION})")]
    UnsupportedVersion(u32),
    #[error("key bundle is corrupt: {0}")]
    Corrupt(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("unknown data key {0}")]
    UnknownKeyId(String),
    #[error("random number generator failed: {0}")]
    Random(String),
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// Short public identifier of a data key: the first 8 bytes (16 hex digits) of
/// `BLAKE3-derive_key("keepsake key-id v1", recipient string)`.
pub fn key_id_of(recipient: &AgeRecipient) -> String {
    let d = blake3::derive_key("keepsake key-id v1", recipient.to_string().as_bytes());
    hex::encode(&d[..8])
}

/// One age X25519 data identity of the organisation.
#[derive(Clone)]
pub struct DataKey {
    /// [`key_id_of`] the recipient.
    pub key_id: String,
    /// The secret identity.
    pub identity: AgeIdentity,
    /// When the key was created.
    pub created_at: DateTime<Utc>,
}

impl DataKey {
    /// A new random data key.
    pub fn generate(now: DateTime<Utc>) -> DataKey {
        let identity = AgeIdentity::generate();
        DataKey {
            key_id: key_id_of(&identity.to_public()),
            identity,
            created_at: now.trunc_subsecs(0),
        }
    }

    /// The public recipient.
    pub fn recipient(&self) -> AgeRecipient {
        self.identity.to_public()
    }

    /// The public half of this key.
    pub fn public(&self) -> PublicDataKey {
        PublicDataKey {
            key_id: self.key_id.clone(),
            recipient: self.recipient().to_string(),
            created_at: self.created_at,
        }
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .field("recipient", &self.recipient().to_string())
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// All data identities of the organisation, oldest first; the last one is current.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<DataKey>,
}

impl KeyRing {
    /// A ring with one key.
    pub fn new(first: DataKey) -> KeyRing {
        KeyRing { keys: vec![first] }
    }

    /// Builds a ring from keys, oldest first (the last is current). Fails on an empty list or
    /// duplicate key ids.
    pub fn from_keys(keys: Vec<DataKey>) -> Result<KeyRing, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::InvalidKey(
                "a key ring needs at least one key".into(),
            ));
        }
        for (i, k) in keys.iter().enumerate() {
            if key_id_of(&k.recipient()) != k.key_id {
                return Err(KeyError::InvalidKey(format!(
                    "key id {} does not match its key",
                    k.key_id
                )));
            }
            if keys[..i].iter().any(|o| o.key_id == k.key_id) {
                return Err(KeyError::InvalidKey(format!("duplicate key {}", k.key_id)));
            }
        }
        Ok(KeyRing { keys })
    }

    /// The key new data is encrypted to.
    pub fn current(&self) -> &DataKey {
        // The ring is never empty (constructors enforce it).
        &self.keys[self.keys.len() - 1]
    }

    /// The recipient new blobs are sealed to.
    pub fn current_recipient(&self) -> AgeRecipient {
        self.current().recipient()
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> &[DataKey] {
        &self.keys
    }

    /// Every identity (to open blobs of any age), newest first.
    pub fn identities(&self) -> Vec<AgeIdentity> {
        self.keys.iter().rev().map(|k| k.identity.clone()).collect()
    }

    /// The key with this id.
    pub fn get(&self, key_id: &str) -> Option<&DataKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }

    /// Adds a fresh key and makes it current. Returns it.
    pub fn rotate(&mut self, now: DateTime<Utc>) -> &DataKey {
        let k = DataKey::generate(now);
        self.keys.push(k);
        self.current()
    }
}

/// The organisation's secret key material.
#[derive(Clone, Debug)]
pub struct OrgKeys {
    /// The chunk-ID key (keys blob IDs and content hashes).
    pub chunk_id_key: ChunkIdKey,
    /// The data identities.
    pub ring: KeyRing,
    /// When the organisation's keys were first generated.
    pub created_at: DateTime<Utc>,
}

impl OrgKeys {
    /// Fresh keys: a random chunk-ID key and one data identity.
    pub fn generate() -> Result<OrgKeys, KeyError> {
        let now = Utc::now().trunc_subsecs(0);
        Ok(OrgKeys {
            chunk_id_key: ChunkIdKey::generate().map_err(|e| KeyError::Random(e.to_string()))?,
            ring: KeyRing::new(DataKey::generate(now)),
            created_at: now,
        })
    }

    /// Id of the current data key.
    pub fn key_id(&self) -> &str {
        &self.ring.current().key_id
    }

    /// The recipient new blobs go to.
    pub fn current_recipient(&self) -> AgeRecipient {
        self.ring.current_recipient()
    }

    /// Rotates the data key (see [`KeyRing::rotate`]); returns the new key's id.
    pub fn rotate(&mut self) -> String {
        self.ring.rotate(Utc::now()).key_id.clone()
    }

    /// The public part, for backup-only machines.
    pub fn public(&self) -> OrgPublicKeys {
        OrgPublicKeys {
            chunk_id_key: self.chunk_id_key.clone(),
            keys: self.ring.keys().iter().map(DataKey::public).collect(),
            current_key_id: self.key_id().to_string(),
        }
    }

    /// Seals a chunk to the current recipient.
    pub fn seal_blob(&self, chunk: &[u8]) -> Result<SealedBlob, CryptoError> {
        crypto::seal_blob(&[self.current_recipient()], &self.chunk_id_key, chunk)
    }

    /// Opens a blob sealed to any key of the ring.
    pub fn open_blob(
        &self,
        expected: &BlobId,
        ciphertext: &[u8],
        expected_cipher_hash: Option<&CipherHash>,
    ) -> Result<Vec<u8>, CryptoError> {
        crypto::open_blob(
            &self.ring.identities(),
            &self.chunk_id_key,
            expected,
            ciphertext,
            expected_cipher_hash,
        )
    }

    /// The secret-keys JSON (the plaintext of every bundle envelope; see `docs/format.md`). For a
    /// machine that keeps its keys in a local protected file; zeroize the buffer when done.
    pub fn to_secret_json(&self) -> Result<Vec<u8>, KeyError> {
        let doc = SecretKeysV1 {
            version: BUNDLE_VERSION,
            created_at: self.created_at,
            chunk_id_key: self.chunk_id_key.to_hex(),
            current_key_id: self.key_id().to_string(),
            data_keys: self
                .ring
                .keys()
                .iter()
                .map(|k| SecretDataKeyV1 {
                    key_id: k.key_id.clone(),
                    identity: k.identity.to_string().expose_secret().to_string(),
                    created_at: k.created_at,
                })
                .collect(),
        };
        serde_json::to_vec(&doc).map_err(|e| KeyError::Corrupt(e.to_string()))
    }

    /// Parses [`OrgKeys::to_secret_json`] output.
    pub fn from_secret_json(bytes: &[u8]) -> Result<OrgKeys, KeyError> {
        let mut doc: SecretKeysV1 = serde_json::from_slice(bytes)
            .map_err(|e| KeyError::Corrupt(format!("secret keys JSON: {e}")))?;
        if doc.version != BUNDLE_VERSION {
            return Err(KeyError::UnsupportedVersion(doc.version));
        }
        let chunk_id_key = ChunkIdKey::from_hex(&doc.chunk_id_key)
            .map_err(|e| KeyError::Corrupt(format!("chunk-ID key: {e}")))?;
        doc.chunk_id_key.zeroize();
        let mut keys = Vec::with_capacity(doc.data_keys.len());
        for k in &mut doc.data_keys {
            let identity = AgeIdentity::from_str(&k.identity)
                .map_err(|e| KeyError::Corrupt(format!("data key {}: {e}", k.key_id)))?;
            k.identity.zeroize();
            keys.push(DataKey {
                key_id: k.key_id.clone(),
                identity,
                created_at: k.created_at,
            });
        }
        // The current key is the last one of the ring.
        if keys.last().map(|k| k.key_id.as_str()) != Some(doc.current_key_id.as_str()) {
            return Err(KeyError::Corrupt(
                "current key is not the newest key of the ring".into(),
            ));
        }
        let ring = KeyRing::from_keys(keys).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        Ok(OrgKeys {
            chunk_id_key,
            ring,
            created_at: doc.created_at,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeysV1 {
    version: u32,
    created_at: DateTime<Utc>,
    chunk_id_key: String,
    current_key_id: String,
    data_keys: Vec<SecretDataKeyV1>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretDataKeyV1 {
    key_id: String,
    identity: String,
    created_at: DateTime<Utc>,
}

/// The public half of one data key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicDataKey {
    pub key_id: String,
    /// `age1…` recipient.
    pub recipient: String,
    pub created_at: DateTime<Utc>,
}

/// What a backup-only machine holds: every recipient (the current one seals new blobs) and the
/// chunk-ID key. It cannot open blobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgPublicKeys {
    pub chunk_id_key: ChunkIdKey,
    pub keys: Vec<PublicDataKey>,
    pub current_key_id: String,
}

impl OrgPublicKeys {
    /// The recipient new blobs go to.
    pub fn current_recipient(&self) -> Result<AgeRecipient, KeyError> {
        let k = self
            .keys
            .iter()
            .find(|k| k.key_id == self.current_key_id)
            .ok_or_else(|| KeyError::UnknownKeyId(self.current_key_id.clone()))?;
        let r = AgeRecipient::from_str(&k.recipient)
            .map_err(|e| KeyError::InvalidKey(e.to_string()))?;
        if key_id_of(&r) != k.key_id {
            return Err(KeyError::InvalidKey(format!(
                "key id {} does not match its recipient",
                k.key_id
            )));
        }
        Ok(r)
    }

    /// Seals a chunk to the current recipient.
    pub fn seal_blob(&self, chunk: &[u8]) -> Result<SealedBlob, KeyError> {
        let r = self.current_recipient()?;
        crypto::seal_blob(&[r], &self.chunk_id_key, chunk)
            .map_err(|e| KeyError::Encrypt(e.to_string()))
    }
}

/// A printable recovery key: an age X25519 identity.
pub struct PaperKey {
    identity: AgeIdentity,
}

impl PaperKey {
    /// A new random paper key.
    pub fn generate() -> PaperKey {
        PaperKey {
            identity: AgeIdentity::generate(),
        }
    }

    /// Parses a printed key (`AGE-SECRET-KEY-1…`, surrounding whitespace ignored, case-insensitive).
    pub fn parse(s: &str) -> Result<PaperKey, KeyError> {
        let cleaned: String = s.split_whitespace().collect::<String>().to_uppercase();
        AgeIdentity::from_str(&cleaned)
            .map(|identity| PaperKey { identity })
            .map_err(|e| KeyError::InvalidKey(e.to_string()))
    }

    /// The text to print.
    pub fn secret(&self) -> SecretString {
        self.identity.to_string()
    }

    /// The recipient to seal the bundle to.
    pub fn recipient(&self) -> AgeRecipient {
        self.identity.to_public()
    }

    /// The identity that unseals the bundle.
    pub fn identity(&self) -> &AgeIdentity {
        &self.identity
    }
}

impl fmt::Debug for PaperKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PaperKey({})", self.recipient())
    }
}

/// Parameters of [`KeyBundle::seal_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleParams {
    /// scrypt work factor log2(N) of the passphrase envelope (1..=[`MAX_SCRYPT_LOG_N`]).
    pub scrypt_log_n: u8,
}

impl Default for BundleParams {
    fn default() -> Self {
        BundleParams {
            scrypt_log_n: DEFAULT_SCRYPT_LOG_N,
        }
    }
}

/// How an envelope is unlocked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EnvelopeKind {
    /// age scrypt recipient.
    Passphrase,
    /// age X25519 recipient (a paper key or another recovery key).
    X25519 { recipient: String },
}

/// One age file holding the secret-keys JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(flatten)]
    pub kind: EnvelopeKind,
    /// Standard base64 (with padding) of the binary age file.
    pub age: String,
}

/// The sealed key bundle the server stores (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyBundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// [`BUNDLE_VERSION`].
    pub version: u32,
    /// Current data key id at sealing time (public, for `backup_encryption_keys`).
    pub key_id: String,
    /// Every data key id in the ring.
    pub key_ids: Vec<String>,
    /// When the bundle was sealed.
    pub sealed_at: DateTime<Utc>,
    /// One envelope per unlock method; exactly one is `passphrase`.
    pub envelopes: Vec<Envelope>,
}

fn age_seal(recipient: &dyn age::Recipient, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    let enc = age::Encryptor::with_recipients(std::iter::once(recipient))
        .map_err(|e| KeyError::Encrypt(e.to_string()))?;
    let mut out = Vec::new();
    let io_err = |e: std::io::Error| KeyError::Encrypt(e.to_string());
    let mut w = enc.wrap_output(&mut out).map_err(io_err)?;
    w.write_all(plaintext).map_err(io_err)?;
    w.finish().map_err(io_err)?;
    Ok(out)
}

impl KeyBundle {
    /// Seals `keys` to a passphrase (default, strong work factor) and to each extra recipient.
    pub fn seal(
        keys: &OrgKeys,
        passphrase: &str,
        extra_recipients: &[AgeRecipient],
    ) -> Result<KeyBundle, KeyError> {
        Self::seal_with(keys, passphrase, extra_recipients, BundleParams::default())
    }

    /// [`KeyBundle::seal`] with an explicit scrypt work factor (tests use a small one).
    pub fn seal_with(
        keys: &OrgKeys,
        passphrase: &str,
        extra_recipients: &[AgeRecipient],
        params: BundleParams,
    ) -> Result<KeyBundle, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        if params.scrypt_log_n == 0 || params.scrypt_log_n > MAX_SCRYPT_LOG_N {
            return Err(KeyError::WorkFactor(params.scrypt_log_n));
        }
        let mut secret = keys.to_secret_json()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut envelopes = Vec::with_capacity(1 + extra_recipients.len());
        let mut scrypt = age::scrypt::Recipient::new(SecretString::from(passphrase.to_string()));
        scrypt.set_work_factor(params.scrypt_log_n);
        let sealed = age_seal(&scrypt, &secret);
        let sealed = match sealed {
            Ok(s) => s,
            Err(e) => {
                secret.zeroize();
                return Err(e);
            }
        };
        envelopes.push(Envelope {
            kind: EnvelopeKind::Passphrase,
            age: b64.encode(sealed),
        });
        for r in extra_recipients {
            let sealed = age_seal(r, &secret);
            let sealed = match sealed {
                Ok(s) => s,
                Err(e) => {
                    secret.zeroize();
                    return Err(e);
                }
            };
            envelopes.push(Envelope {
                kind: EnvelopeKind::X25519 {
                    recipient: r.to_string(),
                },
                age: b64.encode(sealed),
            });
        }
        secret.zeroize();
        Ok(KeyBundle {
            format: BUNDLE_FORMAT.to_string(),
            version: BUNDLE_VERSION,
            key_id: keys.key_id().to_string(),
            key_ids: keys.ring.keys().iter().map(|k| k.key_id.clone()).collect(),
            sealed_at: Utc::now().trunc_subsecs(0),
            envelopes,
        })
    }

    fn check_header(&self) -> Result<(), KeyError> {
        if self.format != BUNDLE_FORMAT {
            return Err(KeyError::Corrupt(format!(
                "format is {:?}, not {BUNDLE_FORMAT:?}",
                self.format
            )));
        }
        if self.version != BUNDLE_VERSION {
            return Err(KeyError::UnsupportedVersion(self.version));
        }
        Ok(())
    }

    fn envelope_bytes(env: &Envelope) -> Result<Vec<u8>, KeyError> {
        if env.age.len() > MAX_ENVELOPE_LEN * 4 / 3 + 4 {
            return Err(KeyError::Corrupt("envelope too large".into()));
        }
        base64::engine::general_purpose::STANDARD
            .decode(&env.age)
            .map_err(|e| KeyError::Corrupt(format!("envelope base64: {e}")))
    }

    fn open(
        &self,
        bytes: &[u8],
        identity: &dyn age::Identity,
        passphrase: bool,
    ) -> Result<OrgKeys, KeyError> {
        let decryptor =
            age::Decryptor::new_buffered(bytes).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        if passphrase != decryptor.is_scrypt() {
            return Err(KeyError::Corrupt(
                "envelope kind does not match its age header".into(),
            ));
        }
        let mut reader = decryptor
            .decrypt(std::iter::once(identity))
            .map_err(|e| match e {
                age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed
                    if passphrase =>
                {
                    KeyError::WrongPassphrase
                }
                age::DecryptError::NoMatchingKeys => {
                    if passphrase {
                        KeyError::WrongPassphrase
                    } else {
                        KeyError::WrongKey
                    }
                }
                age::DecryptError::ExcessiveWork { required, .. } => KeyError::WorkFactor(required),
                other => KeyError::Corrupt(other.to_string()),
            })?;
        let mut plain = Vec::new();
        (&mut reader)
            .take(MAX_ENVELOPE_LEN as u64)
            .read_to_end(&mut plain)
            .map_err(|e| KeyError::Corrupt(format!("envelope payload: {e}")))?;
        let keys = OrgKeys::from_secret_json(&plain);
        plain.zeroize();
        let keys = keys?;
        if keys.key_id() != self.key_id {
            return Err(KeyError::Corrupt(
                "bundle key id does not match the sealed keys".into(),
            ));
        }
        Ok(keys)
    }

    /// Unseals with the passphrase. A wrong passphrase is [`KeyError::WrongPassphrase`].
    pub fn unseal_with_passphrase(&self, passphrase: &str) -> Result<OrgKeys, KeyError> {
        self.check_header()?;
        let env = self
            .envelopes
            .iter()
            .find(|e| e.kind == EnvelopeKind::Passphrase)
            .ok_or(KeyError::NoPassphraseEnvelope)?;
        let bytes = Self::envelope_bytes(env)?;
        let mut identity = age::scrypt::Identity::new(SecretString::from(passphrase.to_string()));
        identity.set_max_work_factor(MAX_SCRYPT_LOG_N);
        self.open(&bytes, &identity, true)
    }

    /// Unseals with an X25519 identity (a paper key). An identity the bundle was not sealed to is
    /// [`KeyError::WrongKey`].
    pub fn unseal_with_identity(&self, identity: &AgeIdentity) -> Result<OrgKeys, KeyError> {
        self.check_header()?;
        let mine = identity.to_public().to_string();
        let env = self
            .envelopes
            .iter()
            .find(|e| matches!(&e.kind, EnvelopeKind::X25519 { recipient } if *recipient == mine))
            .ok_or(KeyError::WrongKey)?;
        let bytes = Self::envelope_bytes(env)?;
        self.open(&bytes, identity, false)
    }

    /// Serialises as JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and dates cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses the JSON form, checking format and version.
    pub fn from_json(s: &str) -> Result<KeyBundle, KeyError> {
        let b: KeyBundle =
            serde_json::from_str(s).map_err(|e| KeyError::Corrupt(format!("bundle JSON: {e}")))?;
        b.check_header()?;
        Ok(b)
    }
}
