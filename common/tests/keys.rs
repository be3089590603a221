//! Key bundles: passphrase and paper-key unlock, wrong secrets, rotation, JSON form.

use keepsake_common::keys::{
    BundleParams, EnvelopeKind, ExposeSecret, KeyBundle, KeyError, OrgKeys, OrgPublicKeys,
    PaperKey, BUNDLE_VERSION,
};

/// Fast scrypt for tests (the default is 2^18).
const FAST: BundleParams = BundleParams { scrypt_log_n: 4 };

fn same_keys(a: &OrgKeys, b: &OrgKeys) {
    assert_eq!(a.chunk_id_key, b.chunk_id_key);
    assert_eq!(a.created_at, b.created_at);
    assert_eq!(a.ring.keys().len(), b.ring.keys().len());
    for (x, y) in a.ring.keys().iter().zip(b.ring.keys()) {
        assert_eq!(x.key_id, y.key_id);
        assert_eq!(x.created_at, y.created_at);
        assert_eq!(
            x.identity.to_string().expose_secret(),
            y.identity.to_string().expose_secret()
        );
    }
}

#[test]
fn passphrase_and_paper_key_unlock() {
    let keys = OrgKeys::generate().unwrap();
    let paper = PaperKey::generate();
    let printed = paper.secret().expose_secret().to_string();
    assert!(printed.starts_with("AGE-SECRET-KEY-1"));
    let bundle = KeyBundle::seal_with(
        &keys,
        "correct horse battery staple",
        &[paper.recipient()],
        FAST,
    )
    .unwrap();
    assert_eq!(bundle.version, BUNDLE_VERSION);
    assert_eq!(bundle.envelopes.len(), 2);
    assert_eq!(bundle.envelopes[0].kind, EnvelopeKind::Passphrase);

    // Through JSON, as the server stores it.
    let json = bundle.to_json();
    assert!(
        !json.contains(&keys.chunk_id_key.to_hex()),
        "secret material must not be in clear"
    );
    let bundle = KeyBundle::from_json(&json).unwrap();

    let a = bundle
        .unseal_with_passphrase("correct horse battery staple")
        .unwrap();
    same_keys(&a, &keys);
    // The paper key as typed back from paper (lowercase, spaces).
    let typed = printed
        .to_lowercase()
        .chars()
        .collect::<Vec<_>>()
        .chunks(8)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ");
    let b = bundle
        .unseal_with_identity(PaperKey::parse(&typed).unwrap().identity())
        .unwrap();
    same_keys(&b, &keys);
}

#[test]
fn wrong_secrets_are_distinct_errors() {
    let keys = OrgKeys::generate().unwrap();
    let paper = PaperKey::generate();
    let bundle = KeyBundle::seal_with(&keys, "right", &[paper.recipient()], FAST).unwrap();
    assert!(matches!(
        bundle.unseal_with_passphrase("wrong"),
        Err(KeyError::WrongPassphrase)
    ));
    assert!(matches!(
        bundle.unseal_with_passphrase(""),
        Err(KeyError::WrongPassphrase)
    ));
    let stranger = PaperKey::generate();
    assert!(matches!(
        bundle.unseal_with_identity(stranger.identity()),
        Err(KeyError::WrongKey)
    ));
    assert!(matches!(
        KeyBundle::seal_with(&keys, "", &[], FAST),
        Err(KeyError::EmptyPassphrase)
    ));
    assert!(matches!(
        KeyBundle::seal_with(&keys, "x", &[], BundleParams { scrypt_log_n: 30 }),
        Err(KeyError::WorkFactor(30))
    ));
    assert!(PaperKey::parse("AGE-SECRET-KEY-1NOTAKEY").is_err());
}

#[test]
fn corrupt_and_foreign_bundles() {
    let keys = OrgKeys::generate().unwrap();
    let bundle = KeyBundle::seal_with(&keys, "pw", &[], FAST).unwrap();
    let mut v2 = bundle.clone();
    v2.version = 2;
    assert!(matches!(
        v2.unseal_with_passphrase("pw"),
        Err(KeyError::UnsupportedVersion(2))
    ));
    assert!(KeyBundle::from_json(&v2.to_json()).is_err());
    let mut damaged = bundle.clone();
    let mut raw = base64_decode(&damaged.envelopes[0].age);
    let n = raw.len();
    raw[n - 5] ^= 1; // inside the encrypted payload
    damaged.envelopes[0].age = base64_encode(&raw);
    assert!(matches!(
        damaged.unseal_with_passphrase("pw"),
        Err(KeyError::Corrupt(_))
    ));
    let mut no_pw = bundle.clone();
    no_pw.envelopes.clear();
    assert!(matches!(
        no_pw.unseal_with_passphrase("pw"),
        Err(KeyError::NoPassphraseEnvelope)
    ));
    assert!(KeyBundle::from_json("{\"format\":\"other\"}").is_err());
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn rotation_survives_the_bundle() {
    let mut keys = OrgKeys::generate().unwrap();
    let old_blob = keys.seal_blob(b"old photo").unwrap();
    let first = keys.key_id().to_string();
    let second = keys.rotate();
    let new_blob = keys.seal_blob(b"new photo").unwrap();
    let bundle = KeyBundle::seal_with(&keys, "pw", &[], FAST).unwrap();
    assert_eq!(bundle.key_id, second);
    assert_eq!(bundle.key_ids, vec![first, second.clone()]);
    let restored = bundle.unseal_with_passphrase("pw").unwrap();
    assert_eq!(restored.key_id(), second);
    assert_eq!(
        restored
            .open_blob(&old_blob.id, &old_blob.ciphertext, None)
            .unwrap(),
        b"old photo"
    );
    assert_eq!(
        restored
            .open_blob(&new_blob.id, &new_blob.ciphertext, None)
            .unwrap(),
        b"new photo"
    );
    assert_eq!(
        restored.current_recipient().to_string(),
        keys.current_recipient().to_string()
    );
}

#[test]
fn public_keys_json() {
    let keys = OrgKeys::generate().unwrap();
    let public = keys.public();
    let json = serde_json::to_string(&public).unwrap();
    assert!(!json.contains("AGE-SECRET-KEY"));
    let back: OrgPublicKeys = serde_json::from_str(&json).unwrap();
    assert_eq!(back, public);
    assert_eq!(
        back.current_recipient().unwrap().to_string(),
        keys.current_recipient().to_string()
    );
    // A tampered key id is refused.
    let mut bad = back.clone();
    bad.keys[0].key_id = "0000000000000000".into();
    bad.current_key_id = bad.keys[0].key_id.clone();
    assert!(bad.current_recipient().is_err());
}

#[test]
fn default_work_factor_is_strong() {
    assert!(BundleParams::default().scrypt_log_n >= 18);
}

/// Seals and unseals with the default (strong) work factor (about a second each way in release).
#[test]
fn default_work_factor_round_trip() {
    let keys = OrgKeys::generate().unwrap();
    let t = std::time::Instant::now();
    let bundle = KeyBundle::seal(&keys, "pw", &[]).unwrap();
    let sealed = t.elapsed();
    let t = std::time::Instant::now();
    same_keys(&bundle.unseal_with_passphrase("pw").unwrap(), &keys);
    println!("scrypt 2^18: seal {sealed:?}, unseal {:?}", t.elapsed());
}

#[test]
fn bundle_json_has_the_documented_shape() {
    let keys = OrgKeys::generate().unwrap();
    let paper = PaperKey::generate();
    let bundle = KeyBundle::seal_with(&keys, "pw", &[paper.recipient()], FAST).unwrap();
    let v: serde_json::Value = serde_json::from_str(&bundle.to_json()).unwrap();
    assert_eq!(v["format"], "keepsake-key-bundle");
    assert_eq!(v["version"], 1);
    assert_eq!(v["key_id"], keys.key_id());
    assert_eq!(v["envelopes"][0]["kind"], "passphrase");
    assert_eq!(v["envelopes"][1]["kind"], "x25519");
    assert_eq!(
        v["envelopes"][1]["recipient"],
        paper.recipient().to_string()
    );
    // Each envelope is a binary (not armored) age file.
    for e in v["envelopes"].as_array().unwrap() {
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(e["age"].as_str().unwrap())
            .unwrap();
        assert!(raw.starts_with(b"age-encryption.org/v1\n"));
    }
    // The secret JSON inside.
    let secret: serde_json::Value =
        serde_json::from_slice(&keys.to_secret_json().unwrap()).unwrap();
    assert_eq!(secret["version"], 1);
    assert_eq!(secret["chunk_id_key"], keys.chunk_id_key.to_hex());
    assert!(secret["data_keys"][0]["identity"]
        .as_str()
        .unwrap()
        .starts_with("AGE-SECRET-KEY-1"));
    same_keys(
        &OrgKeys::from_secret_json(&keys.to_secret_json().unwrap()).unwrap(),
        &keys,
    );
}
