//! Every refusal of the sync endpoints: hostile uploads and deltas are refused and change nothing,
//! organisations are isolated through every endpoint, and agents are append-only.

use crate::sync_support::*;
use keepsake_common::api::*;
use keepsake_common::crypto::SealedBlob;
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

#[tokio::test]
async fn hostile_uploads_and_deltas_are_refused_and_change_nothing() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Hostile").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "laptop").await;
    let keys = test_keys();
    let (h, blobs) = seal(&keys, &vec![9u8; 50_000], 20_000);
    let refs: Vec<&SealedBlob> = blobs.iter().collect();
    let good = pack(&refs);

    // Wrong ciphertext hash: one flipped byte inside a blob.
    let mut flipped = good.clone();
    let at = 16 + 80 + 10;
    flipped[at] ^= 1;
    let (s, v) = a.post_bytes("/v1/packs", flipped).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("does not match"),
        "{v}"
    );
    // Truncated, garbage, empty, trailing data.
    for (what, body) in [
        ("truncated", good[..good.len() - 100].to_vec()),
        ("garbage", b"this is not a pack".repeat(10)),
        ("empty", Vec::new()),
        ("trailing", [good.clone(), b"extra".to_vec()].concat()),
    ] {
        let (s, v) = a.post_bytes("/v1/packs", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert!(
            !v["error"].as_str().unwrap_or("").is_empty(),
            "{what}: clear message"
        );
    }
    assert_eq!(db_count(&srv, "SELECT count(*) FROM blobs").await, 0);
    assert_eq!(db_count(&srv, "SELECT count(*) FROM packs").await, 0);
    let leftovers = walk(&srv.storage_dir());
    assert!(
        leftovers
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".pack")),
        "a refused pack leaves no object: {leftovers:?}"
    );
    // Oversized bodies are refused before they are stored.
    let big = vec![0u8; (MAX_PACK_BODY + 1024) as usize];
    let r = a
        .req(reqwest::Method::POST, "/v1/packs")
        .body(big)
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == StatusCode::PAYLOAD_TOO_LARGE || r.status() == StatusCode::BAD_REQUEST,
        "{}",
        r.status()
    );

    upload(&a, &refs).await;
    let src = source(&a, "/shoots").await;
    let job = start_job(&a, src, "incremental").await;
    // Hand-written lines: the format crate's writer would refuse to produce these.
    let raw_delta = |path: &str, size: u64| -> Vec<u8> {
        let header =
            serde_json::json!({"keepsake_delta": 2, "source": src.to_string(), "parent_seq": null});
        let mut sealed = upsert("placeholder", size as usize, h, &blobs);
        sealed.seal(&mac_key());
        let mut entry = serde_json::to_value(sealed).unwrap();
        entry["path"] = path.into();
        format!("{header}\n{entry}\n{{\"op\":\"end\",\"entries\":1}}\n").into_bytes()
    };
    assert_eq!(
        a.put_bytes(
            &format!("/v1/jobs/{job}/parts/9"),
            raw_delta("ok/name.bin", 50_000)
        )
        .await
        .0,
        StatusCode::OK,
        "the hand-written delta is well-formed"
    );
    let bad_deltas: Vec<(&str, Vec<u8>)> = vec![
        ("traversal", raw_delta("../etc/passwd", 50_000)),
        ("inner traversal", raw_delta("a/../../b", 50_000)),
        ("absolute", raw_delta("/etc/passwd", 50_000)),
        ("backslash", raw_delta("..\\windows", 50_000)),
        ("nul", raw_delta("a\u{0}b", 50_000)),
        ("size mismatch", raw_delta("a.bin", 49_999)),
        (
            "other source",
            delta(Uuid::new_v4(), &[upsert("a.bin", 50_000, h, &blobs)]),
        ),
        ("garbage", b"{\"keepsake_delta\":2}\nnot json\n".to_vec()),
        ("retired version", {
            let mut d = raw_delta("old/version.bin", 50_000);
            let at = d
                .windows(18)
                .position(|w| w == b"\"keepsake_delta\":2")
                .unwrap();
            d[at + 17] = b'1';
            d
        }),
        ("no MAC", {
            let header = serde_json::json!({"keepsake_delta": 2, "source": src.to_string(), "parent_seq": null});
            let entry = serde_json::to_value(upsert("unsealed.bin", 50_000, h, &blobs)).unwrap();
            format!("{header}\n{entry}\n{{\"op\":\"end\",\"entries\":1}}\n").into_bytes()
        }),
        ("cut", {
            let d = delta(src, &[upsert("a.bin", 50_000, h, &blobs)]);
            d[..d.len() - 5].to_vec()
        }),
    ];
    for (what, body) in bad_deltas {
        let (s, v) = a.put_bytes(&format!("/v1/jobs/{job}/parts/0"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert!(!v["error"].as_str().unwrap_or("").is_empty(), "{what}");
    }
    assert_eq!(
        db_count(&srv, "SELECT count(*) FROM job_delta_entries").await,
        1,
        "only the well-formed part is staged"
    );
    // The commit cannot claim parts it did not send.
    assert_eq!(commit(&a, job, 1).await.0, StatusCode::CONFLICT);
    // Malformed JSON and unknown fields get a 4xx with a message.
    let (s, _) = a
        .post_json("/v1/blobs/missing", &serde_json::json!({"ids": ["zz"]}))
        .await;
    assert!(s.is_client_error());
    let (s, _) = a
        .post_json(
            "/v1/jobs",
            &serde_json::json!({"source_id": src, "kind": "incremental", "evil": 1}),
        )
        .await;
    assert!(s.is_client_error());
}

#[tokio::test]
async fn organisations_are_isolated_through_every_endpoint() {
    let srv = TestServer::start().await;
    let a_org = srv.create_org("Org A").await;
    let b_org = srv.create_org("Org B").await;
    let (_, a) = enroll(&srv, &a_org.enroll_token, "a-laptop").await;
    let (_, b) = enroll(&srv, &b_org.enroll_token, "b-laptop").await;
    let keys = test_keys();
    let data = vec![7u8; 10_000];
    let (h, blobs) = seal(&keys, &data, 10_000);
    upload(&a, &[&blobs[0]]).await;
    let src = source(&a, "/a").await;
    let job = start_job(&a, src, "incremental").await;
    a.put_bytes(
        &format!("/v1/jobs/{job}/parts/0"),
        delta(src, &[upsert("x", data.len(), h, &blobs)]),
    )
    .await;
    assert_eq!(commit(&a, job, 1).await.0, StatusCode::OK);
    let (_, points) = a.get_json("/v1/points").await;
    let point = points[0]["id"].as_str().unwrap().to_string();

    // B sees none of A's points, files, blobs, sources or agents.
    let (_, bp) = b.get_json("/v1/points").await;
    assert_eq!(bp.as_array().unwrap().len(), 0);
    assert_eq!(
        b.get_json(&format!("/v1/points/{point}")).await.0,
        StatusCode::NOT_FOUND
    );
    let r = b
        .req(reqwest::Method::GET, &format!("/v1/points/{point}/files"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let err = read_blobs(&b, &[blobs[0].id]).await.unwrap_err();
    assert_eq!(err.0, StatusCode::NOT_FOUND);
    let (_, v) = b
        .post_json(
            "/v1/blobs/missing",
            &serde_json::json!({"ids": [blobs[0].id]}),
        )
        .await;
    assert_eq!(
        v["missing"].as_array().unwrap().len(),
        1,
        "dedup never crosses organisations"
    );
    let (_, srcs) = b.get_json("/v1/sources").await;
    assert!(srcs.as_array().unwrap().is_empty());
    // B cannot write into A's job or source.
    assert_eq!(
        b.put_bytes(
            &format!("/v1/jobs/{job}/parts/1"),
            delta(src, &[upsert("y", data.len(), h, &blobs)])
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(commit(&b, job, 1).await.0, StatusCode::NOT_FOUND);
    let (s, _) = b
        .post_json(
            "/v1/jobs",
            &serde_json::json!({"source_id": src, "kind": "full"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        b.post_json(
            &format!("/v1/jobs/{job}/fail"),
            &serde_json::json!({"error": "x"})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // B's admin cannot revoke A's agent or tokens.
    let b_admin = user(&srv, &b_org.admin_token);
    let a_admin = user(&srv, &a_org.admin_token);
    let (_, agents) = a_admin.get_json("/v1/agents").await;
    let a_agent = agents[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        b_admin
            .post_json(&format!("/v1/agents/{a_agent}/revoke"), &Value::Null)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(a.get_json("/v1/whoami").await.0, StatusCode::OK);
    // The same blob uploaded by B is stored separately for B.
    upload(&b, &[&blobs[0]]).await;
    assert_eq!(db_count(&srv, "SELECT count(*) FROM blobs").await, 2);
}

#[tokio::test]
async fn agents_are_append_only() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Append Only").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "laptop").await;
    let t2 = srv.enroll_token(org.organization_id).await;
    let (_, other) = enroll(&srv, &t2, "nas").await;
    // Administration is for users.
    assert_eq!(
        a.post_json("/v1/enroll-tokens", &serde_json::json!({}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        a.post_json("/v1/tokens", &serde_json::json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, agents) = user(&srv, &org.admin_token).get_json("/v1/agents").await;
    for ag in agents.as_array().unwrap() {
        let id = ag["id"].as_str().unwrap();
        assert_eq!(
            a.post_json(&format!("/v1/agents/{id}/revoke"), &Value::Null)
                .await
                .0,
            StatusCode::FORBIDDEN
        );
    }
    let r = a
        .req(
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{}", Uuid::new_v4()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Another machine's history is out of reach.
    let keys = test_keys();
    let data = vec![1u8; 1000];
    let (h, blobs) = seal(&keys, &data, 1000);
    upload(&other, &[&blobs[0]]).await;
    let src = source(&other, "/nas").await;
    let job = start_job(&other, src, "incremental").await;
    other
        .put_bytes(
            &format!("/v1/jobs/{job}/parts/0"),
            delta(src, &[upsert("f", 1000, h, &blobs)]),
        )
        .await;
    assert_eq!(commit(&a, job, 1).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        a.post_json(
            "/v1/jobs",
            &serde_json::json!({"source_id": src, "kind": "full"})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(commit(&other, job, 1).await.0, StatusCode::OK);
    // Uploading a blob another machine stored never touches that machine's copy: it adds a copy
    // of this machine's own (the server cannot tell which of two ciphertexts is right).
    async fn copies(srv: &TestServer) -> Vec<(String, i64, Vec<u8>, String)> {
        srv.db
            .owner()
            .await
            .query(
                "SELECT pack_id::text, pack_offset, cipher_hash, uploaded_by_agent_id::text \
                 FROM blob_copies ORDER BY created_at",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }
    let before = copies(&srv).await;
    assert_eq!(before.len(), 1);
    let (_, v) = a
        .post_json(
            "/v1/blobs/missing",
            &serde_json::json!({"ids": [blobs[0].id]}),
        )
        .await;
    assert_eq!(
        v["missing"].as_array().unwrap().len(),
        1,
        "another machine's copy is not trusted: {v}"
    );
    assert_eq!(v["foreign"].as_array().unwrap().len(), 1, "{v}");
    let stored = upload(&a, &[&blobs[0]]).await;
    assert_eq!((stored.new_blobs, stored.kept), (1, true));
    let after = copies(&srv).await;
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before[0], "the first copy is untouched");
    // The same blob again from the same machine is not kept twice (no row, no object).
    let objects = walk(&srv.storage_dir()).len();
    let again = upload(&a, &[&blobs[0]]).await;
    assert_eq!((again.new_blobs, again.kept), (0, false));
    assert_eq!(copies(&srv).await.len(), 2);
    assert_eq!(
        walk(&srv.storage_dir()).len(),
        objects,
        "the redundant pack object was deleted"
    );
    assert_eq!(
        db_count(
            &srv,
            &format!("SELECT count(*) FROM packs WHERE id = '{}'", again.pack_id)
        )
        .await,
        0
    );
}
