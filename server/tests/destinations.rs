//! One conformance suite, run against every destination type: a local folder and a real S3-API
//! server on 127.0.0.1 (never a mock of the client).

use bytes::Bytes;
use futures::TryStreamExt;
use keepsake_server::destinations::{Destination, DestinationConfig, DestinationError, PART_SIZE};
use keepsake_server::testkit::s3::S3Server;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

async fn keys(dest: &Destination, prefix: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = dest.list(prefix).try_collect().await.expect("list");
    v.sort();
    v
}

async fn conformance(dest: Destination) {
    // Small atomic put, whole and ranged reads.
    let small = Bytes::from(pattern(10_000, 1));
    dest.put("packs/aa/small.pack", small.clone())
        .await
        .unwrap();
    assert_eq!(dest.size("packs/aa/small.pack").await.unwrap(), 10_000);
    let r = dest
        .get_range("packs/aa/small.pack", 100..300)
        .await
        .unwrap();
    assert_eq!(&r[..], &small[100..300]);
    let rs = dest
        .get_ranges("packs/aa/small.pack", &[0..10, 5000..5010, 9990..10_000])
        .await
        .unwrap();
    assert_eq!(&rs[0][..], &small[0..10]);
    assert_eq!(&rs[1][..], &small[5000..5010]);
    assert_eq!(&rs[2][..], &small[9990..10_000]);

    // A streamed write of several parts is invisible until finished, then complete.
    let big = pattern(PART_SIZE * 2 + 12_345, 2);
    let mut w = dest.writer("packs/bb/big.pack").await.unwrap();
    for piece in big.chunks(1_000_003) {
        w.write(piece).await.unwrap();
    }
    assert!(
        matches!(
            dest.size("packs/bb/big.pack").await,
            Err(DestinationError::NotFound(_))
        ),
        "a pack must not be visible under its final name before it is complete"
    );
    assert!(keys(&dest, "packs/bb").await.is_empty());
    assert_eq!(w.finish().await.unwrap(), big.len() as u64);
    assert_eq!(
        dest.size("packs/bb/big.pack").await.unwrap(),
        big.len() as u64
    );
    let whole: Vec<Bytes> = dest
        .get_stream("packs/bb/big.pack")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(whole.concat(), big);
    let mid = (PART_SIZE as u64 - 10)..(PART_SIZE as u64 + 10);
    let r = dest
        .get_range("packs/bb/big.pack", mid.clone())
        .await
        .unwrap();
    assert_eq!(&r[..], &big[mid.start as usize..mid.end as usize]);

    // An aborted write leaves nothing under the key.
    let mut w = dest.writer("packs/cc/aborted.pack").await.unwrap();
    w.write(&pattern(PART_SIZE + 1, 3)).await.unwrap();
    w.abort().await.unwrap();
    assert!(matches!(
        dest.size("packs/cc/aborted.pack").await,
        Err(DestinationError::NotFound(_))
    ));
    assert!(keys(&dest, "packs/cc").await.is_empty());

    // Listing is by prefix and reports sizes; keys are relative to the destination.
    let listed = keys(&dest, "packs").await;
    assert_eq!(
        listed,
        vec![
            ("packs/aa/small.pack".to_string(), 10_000),
            ("packs/bb/big.pack".to_string(), big.len() as u64)
        ]
    );

    // Missing objects are NotFound, not a generic error.
    assert!(matches!(
        dest.get_range("packs/zz/none.pack", 0..1).await,
        Err(DestinationError::NotFound(_))
    ));

    // Delete is idempotent.
    dest.delete("packs/aa/small.pack").await.unwrap();
    dest.delete("packs/aa/small.pack").await.unwrap();
    assert!(matches!(
        dest.size("packs/aa/small.pack").await,
        Err(DestinationError::NotFound(_))
    ));

    // Health check round trip leaves nothing behind.
    dest.health_check().await.unwrap();
    assert!(keys(&dest, "health").await.is_empty());
}

#[tokio::test]
async fn local_folder_destination_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = DestinationConfig::Local {
        path: dir.path().join("store"),
    };
    conformance(Destination::open("local", &cfg).unwrap()).await;
    // No temporary files are left next to the packs.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains('#'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn s3_destination_conforms_against_a_real_s3_server() {
    let s3 = S3Server::start();
    conformance(Destination::open("s3", &s3.destination_config(None)).unwrap()).await;
}

#[tokio::test]
async fn s3_destination_with_a_prefix_conforms() {
    let s3 = S3Server::start();
    let dest = Destination::open("s3p", &s3.destination_config(Some("tenant-a"))).unwrap();
    conformance(dest).await;
    assert!(s3.root.join(&s3.bucket).join("tenant-a").is_dir());
}

#[tokio::test]
async fn s3_with_wrong_credentials_is_refused_and_secrets_stay_out_of_errors() {
    let s3 = S3Server::start();
    let mut cfg = s3.destination_config(None);
    if let DestinationConfig::S3 {
        secret_access_key, ..
    } = &mut cfg
    {
        *secret_access_key = Some(keepsake_server::destinations::Secret::new(
            "definitely-wrong-secret",
        ));
    }
    let dest = Destination::open("bad", &cfg).unwrap();
    let err = dest
        .put("x", Bytes::from_static(b"1"))
        .await
        .expect_err("wrong secret must be refused");
    let text = err.to_string();
    assert!(!text.contains("definitely-wrong-secret"), "{text}");
    assert!(!text.contains(&s3.secret_key), "{text}");
}

#[test]
fn destination_credentials_never_appear_in_debug_or_redacted_output() {
    let cfg = DestinationConfig::S3 {
        bucket: "b".into(),
        endpoint: Some("http://127.0.0.1:1".into()),
        region: None,
        access_key_id: Some("AKID".into()),
        secret_access_key: Some(keepsake_server::destinations::Secret::new("TOPSECRET")),
        prefix: None,
        allow_http: true,
        virtual_hosted: false,
    };
    assert!(!format!("{cfg:?}").contains("TOPSECRET"));
    assert!(!cfg.redacted().to_string().contains("TOPSECRET"));
    let dest = Destination::open("d", &cfg).unwrap();
    assert!(!format!("{dest:?}").contains("TOPSECRET"));
    // Unknown keys in a stored configuration are an error, not silently ignored.
    let bad: Result<DestinationConfig, _> =
        serde_json::from_value(serde_json::json!({"kind": "local", "path": "/x", "oops": 1}));
    assert!(bad.is_err());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
