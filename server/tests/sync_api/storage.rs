//! Stored blobs under pressure: concurrent uploads of one blob index it once, and a damaged copy
//! is refused while another copy is read.

use crate::sync_support::*;
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;

#[tokio::test]
async fn concurrent_uploads_of_one_blob_index_it_once() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Race").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "laptop").await;
    let keys = test_keys();
    let (_, blobs) = seal(&keys, &vec![3u8; 200_000], 200_000);
    let body = pack(&[&blobs[0]]);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let req = a.req(reqwest::Method::POST, "/v1/packs").body(body.clone());
        tasks.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(db_count(&srv, "SELECT count(*) FROM blobs").await, 1);
    let got = read_blobs(&a, &[blobs[0].id]).await.unwrap();
    assert_eq!(
        keys.open_blob(&got[0].0, &got[0].1, None).unwrap(),
        vec![3u8; 200_000]
    );
}

#[tokio::test]
async fn a_damaged_copy_is_refused_and_another_copy_is_read() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Bitrot").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "laptop").await;
    let (_, nas) = enroll(&srv, &srv.enroll_token(org.organization_id).await, "nas").await;
    let keys = test_keys();
    let (_, b1) = seal(&keys, &vec![1u8; 30_000], 30_000);
    let (_, b2) = seal(&keys, &vec![2u8; 30_000], 30_000);
    upload(&a, &[&b1[0]]).await;
    upload(&a, &[&b2[0]]).await;
    // Flip one byte of the first blob's ciphertext on disk.
    let row = srv
        .db
        .owner()
        .await
        .query_one(
            "SELECT p.object_key, c.pack_offset FROM blob_copies c JOIN packs p ON p.id = c.pack_id WHERE c.blob_id = $1",
            &[&b1[0].id.as_bytes().as_slice()],
        )
        .await
        .unwrap();
    let key: String = row.get(0);
    let off: i64 = row.get(1);
    let path = srv.storage_dir().join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[off as usize + 40] ^= 0x80;
    std::fs::write(&path, bytes).unwrap();
    // The server never sends damaged data: with no intact copy the stream is cut.
    assert!(read_blobs(&a, &[b1[0].id, b2[0].id]).await.is_err());
    let got = read_blobs(&a, &[b2[0].id]).await.unwrap();
    assert_eq!(
        keys.open_blob(&got[0].0, &got[0].1, Some(&b2[0].cipher_hash))
            .unwrap(),
        vec![2u8; 30_000]
    );
    // Another machine's copy of the same blob: the damaged one is refused, that one is sent.
    let (_, b1_again) = seal(&keys, &vec![1u8; 30_000], 30_000);
    assert_eq!(b1_again[0].id, b1[0].id);
    upload(&nas, &[&b1_again[0]]).await;
    let got = read_blobs(&a, &[b1[0].id, b2[0].id]).await.unwrap();
    assert_eq!(
        keys.open_blob(&got[0].0, &got[0].1, None).unwrap(),
        vec![1u8; 30_000]
    );
    assert_eq!(got[0].1.len(), b1_again[0].ciphertext.len());
    // Avoiding that copy leaves only the damaged one, which is never sent.
    let err = read_blobs_avoiding(&a, &[b1[0].id], &[b1_again[0].cipher_hash])
        .await
        .unwrap_err();
    assert_eq!(err.0, StatusCode::OK, "cut, not refused: {err:?}");
    // Avoiding both leaves no copy: 404 blobs_missing.
    let err = read_blobs_avoiding(
        &a,
        &[b1[0].id],
        &[b1_again[0].cipher_hash, b1[0].cipher_hash],
    )
    .await
    .unwrap_err();
    assert_eq!(err.0, StatusCode::NOT_FOUND);
    assert_eq!(err.1["code"], "blobs_missing");
}
