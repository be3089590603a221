//! The sync protocol from the server's side, over real HTTP on 127.0.0.1 with real PostgreSQL and
//! real storage: enrolment, keys, blob upload into packs, job deltas and commits, browsing and
//! blob reads — and every refusal: hostile bodies, other organisations, append-only agents.

mod sync_support;

use keepsake_common::api::*;
use keepsake_common::crypto::SealedBlob;
use keepsake_common::delta::Entry;
use keepsake_common::ids::{BlobId, CipherHash};
use keepsake_common::keys::{BundleParams, KeyBundle};
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;
use serde_json::Value;
use sync_support::*;
use uuid::Uuid;

#[tokio::test]
async fn backup_commit_browse_and_read_back() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Smith Studio").await;
    let (enrolled, a) = enroll(&srv, &org.enroll_token, "laptop").await;
    assert_eq!(enrolled.organization_id, org.organization_id);
    let (s, who) = a.get_json("/v1/whoami").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(who["kind"], "agent");

    let keys = test_keys();
    let src = source(&a, "/Users/ana/Shoots").await;
    assert_eq!(
        source(&a, "/Users/ana/Shoots").await,
        src,
        "registration is idempotent"
    );

    let raw: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let xmp = b"<x:xmpmeta rating=5/>".repeat(50);
    let (h1, b1) = seal(&keys, &raw, 100_000);
    let (h2, b2) = seal(&keys, &xmp, 100_000);
    let (h3, b3) = seal(&keys, b"", 100_000);
    let all: Vec<&SealedBlob> = b1.iter().chain(&b2).collect();
    let ids: Vec<BlobId> = all.iter().map(|b| b.id).collect();

    let (s, v) = a
        .post_json("/v1/blobs/missing", &serde_json::json!({"ids": ids}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["missing"].as_array().unwrap().len(), ids.len());

    let stored = upload(&a, &all).await;
    assert_eq!(stored.blobs, 4);
    assert_eq!(stored.new_blobs, 4);
    let (_, v) = a
        .post_json("/v1/blobs/missing", &serde_json::json!({"ids": ids}))
        .await;
    assert!(v["missing"].as_array().unwrap().is_empty());
    // Blobs reported present are protected from garbage collection for the grace period.
    let protected = db_count(
        &srv,
        "SELECT count(*) FROM blobs WHERE protected_until > now() + interval '23 hours'",
    )
    .await;
    assert_eq!(protected, 4);

    let job = start_job(&a, src, "incremental").await;
    let entries = [
        upsert("Smith/IMG_0001.CR3", raw.len(), h1, &b1),
        upsert("Smith/IMG_0001.xmp", xmp.len(), h2, &b2),
        upsert("Smith/empty.txt", 0, h3, &b3),
        Entry::Dir {
            path: "Smith".into(),
            raw_path: None,
            mtime_ns: 1_700_000_000_000_000_000,
            mode: 0o755,
            mac: None,
        },
    ];
    let d = delta(src, &entries);
    let (s, v) = a
        .put_bytes(&format!("/v1/jobs/{job}/parts/0"), d.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["entries"], 4);
    assert_eq!(v["new"], true);
    let (s, v) = a.put_bytes(&format!("/v1/jobs/{job}/parts/0"), d).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["new"], false, "a retried part changes nothing");

    // A digest that does not match what was staged is refused, and nothing is committed.
    let mut wrong = entries.to_vec();
    wrong.pop();
    let (s, v) = a
        .post_json(
            &format!("/v1/jobs/{job}/commit"),
            &serde_json::json!({"parts": 1, "delta_digest": digest_of(&wrong)}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("does not match what the agent sent"),
        "{v}"
    );
    assert_eq!(db_count(&srv, "SELECT count(*) FROM backup_files").await, 0);
    assert_eq!(
        db_count(&srv, "SELECT count(*) FROM recovery_points").await,
        0
    );

    let (s, v) = a
        .post_json(
            &format!("/v1/jobs/{job}/commit"),
            &serde_json::json!({"parts": 1, "delta_digest": digest_of(&entries)}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let c1: Committed = serde_json::from_value(v).unwrap();
    assert_eq!((c1.seq, c1.files_added, c1.file_count), (1, 4, 3));
    assert_eq!(c1.total_bytes, (raw.len() + xmp.len()) as i64);
    let (s, v) = commit(&a, job, 1).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_value::<Committed>(v).unwrap(),
        c1,
        "commit retry is idempotent"
    );

    // The commit wrote the whole record.
    for (sql, n) in [
        ("SELECT count(*) FROM backup_files", 4),
        ("SELECT count(*) FROM backup_manifests", 1),
        ("SELECT count(*) FROM recovery_points", 1),
        ("SELECT count(*) FROM backup_checksums WHERE subject_kind = 'manifest' AND status = 'verified' \
          AND expected_digest = actual_digest", 1),
        ("SELECT count(*) FROM backup_jobs WHERE checksum_verification_passed", 1),
        // Only a whole-point restore that re-read every file may claim this.
        ("SELECT count(*) FROM recovery_points WHERE data_integrity_verified", 0),
        ("SELECT count(*) FROM backup_files WHERE entry_mac IS NOT NULL", 4),
        ("SELECT count(*) FROM backup_logs WHERE component = 'commit'", 1),
        ("SELECT count(*) FROM backup_jobs WHERE status = 'completed' AND seq = 1", 1),
        ("SELECT count(*) FROM job_delta_entries", 0),
        ("SELECT count(*) FROM content_chunks", 4),
    ] {
        assert_eq!(db_count(&srv, sql).await, n, "{sql}");
    }

    let (s, points) = a.get_json("/v1/points").await;
    assert_eq!(s, StatusCode::OK);
    let p1 = points[0]["id"].as_str().unwrap().to_string();
    assert_eq!(points[0]["file_count"], 3);
    let listed = files(&a, &p1, "Smith").await;
    assert_eq!(
        listed.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec![
            "Smith",
            "Smith/IMG_0001.CR3",
            "Smith/IMG_0001.xmp",
            "Smith/empty.txt"
        ]
    );
    let cr3 = &listed[1];
    assert_eq!(cr3.size, raw.len() as u64);
    assert_eq!(cr3.content_hash, Some(h1));
    assert_eq!(cr3.chunks.len(), 3);

    // Read the blobs back and decrypt them into the original bytes.
    let ids: Vec<BlobId> = cr3.chunks.iter().map(|c| c.id).collect();
    let got = read_blobs(&a, &ids).await.unwrap();
    let mut restored = Vec::new();
    for (id, data) in &got {
        restored.extend(
            keys.open_blob(id, data, Some(&CipherHash::of(data)))
                .unwrap(),
        );
    }
    assert_eq!(restored, raw);

    // Next day: the sidecar changes, the empty file goes; the RAW is untouched.
    let xmp2 = b"<x:xmpmeta rating=4/>".repeat(50);
    let (h4, b4) = seal(&keys, &xmp2, 100_000);
    let job2 = start_job(&a, src, "incremental").await;
    let (s, v) = a
        .put_bytes(
            &format!("/v1/jobs/{job2}/parts/0"),
            delta(
                src,
                &[
                    upsert("Smith/IMG_0001.xmp", xmp2.len(), h4, &b4),
                    Entry::Delete {
                        path: "Smith/empty.txt".into(),
                        raw_path: None,
                    },
                    upsert("Smith/IMG_0001.CR3", raw.len(), h1, &b1),
                ],
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The new sidecar blob is not uploaded yet: the commit names it.
    let (s, v) = commit(&a, job2, 1).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["missing"].as_array().unwrap().len(), 1);
    assert_eq!(v["missing"][0], b4[0].id.to_string());
    upload(&a, &[&b4[0]]).await;
    let (s, v) = commit(&a, job2, 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let c2: Committed = serde_json::from_value(v).unwrap();
    assert_eq!(
        (
            c2.seq,
            c2.files_added,
            c2.files_changed,
            c2.files_deleted,
            c2.file_count
        ),
        (2, 0, 1, 1, 2),
        "an identical upsert adds no version"
    );
    // The older point still shows the older state.
    let old = files(&a, &p1, "Smith/IMG_0001.xmp").await;
    assert_eq!(old[0].content_hash, Some(h2));
    let (_, points) = a.get_json("/v1/points").await;
    let p2 = points[0]["id"].as_str().unwrap().to_string();
    let new = files(&a, &p2, "Smith/").await;
    assert_eq!(
        new.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec!["Smith", "Smith/IMG_0001.CR3", "Smith/IMG_0001.xmp"]
    );
    assert_eq!(new[2].content_hash, Some(h4));
    // A prefix matches whole names only.
    assert!(files(&a, &p2, "Smi").await.is_empty());
}

#[tokio::test]
async fn enrolment_tokens_are_single_use_and_failures_are_throttled() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Throttle Test").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "nas").await;
    // Used once: refused.
    let http = reqwest::Client::new();
    let again = http
        .post(format!("{}/v1/enroll", srv.url()))
        .json(&serde_json::json!({"enroll_token": org.enroll_token, "name": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    // A second machine with the same name is refused clearly.
    let t2 = srv.enroll_token(org.organization_id).await;
    let dup = http
        .post(format!("{}/v1/enroll", srv.url()))
        .json(&serde_json::json!({"enroll_token": t2, "name": "nas"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), StatusCode::CONFLICT);
    // The agent token works; a revoked one does not.
    assert_eq!(a.get_json("/v1/whoami").await.0, StatusCode::OK);
    let admin = user(&srv, &org.admin_token);
    let (_, agents) = admin.get_json("/v1/agents").await;
    let agent_id = agents[0]["id"].as_str().unwrap().to_string();
    let (s, _) = admin
        .post_json(&format!("/v1/agents/{agent_id}/revoke"), &Value::Null)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(a.get_json("/v1/whoami").await.0, StatusCode::UNAUTHORIZED);
    // Tokens are stored only as hashes.
    let plain = db_count(
        &srv,
        &format!(
            "SELECT count(*) FROM api_tokens WHERE position('{}'::bytea IN token_hash) > 0",
            &a.token[4..20]
        ),
    )
    .await;
    assert_eq!(plain, 0);
    // Repeated failures from one address are throttled.
    let bad = user(&srv, "ksu_0000");
    let mut last = StatusCode::OK;
    for _ in 0..25 {
        last = bad.get_json("/v1/whoami").await.0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn keys_are_registered_once_and_rotated_only_by_admins() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Keys Org").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "first").await;
    let (s, v) = a.get_json("/v1/keys").await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["active"].is_null());
    let keys = test_keys();
    let bundle = KeyBundle::seal_with(
        &keys,
        "correct horse",
        &[],
        BundleParams { scrypt_log_n: 4 },
    )
    .unwrap();
    let reg = serde_json::json!({
        "key_id": keys.key_id(),
        "recipient": keys.current_recipient().to_string(),
        "bundle": bundle.to_json(),
    });
    let (s, v) = a.post_json("/v1/keys", &reg).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = a.get_json("/v1/keys").await;
    let back = KeyBundle::from_json(v["active"]["bundle"].as_str().unwrap()).unwrap();
    let unsealed = back.unseal_with_passphrase("correct horse").unwrap();
    assert_eq!(unsealed.key_id(), keys.key_id());
    // A second machine cannot replace it.
    let t2 = srv.enroll_token(org.organization_id).await;
    let (_, b) = enroll(&srv, &t2, "second").await;
    let other = test_keys();
    let bundle2 = KeyBundle::seal_with(&other, "x", &[], BundleParams { scrypt_log_n: 4 }).unwrap();
    let mut reg2 = serde_json::json!({
        "key_id": other.key_id(),
        "recipient": other.current_recipient().to_string(),
        "bundle": bundle2.to_json(),
    });
    let (s, v) = b.post_json("/v1/keys", &reg2).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["code"], "key_exists");
    // Rotation: refused for agents, allowed for the admin.
    let mut rotated = keys.clone();
    rotated.rotate();
    let bundle3 = KeyBundle::seal_with(
        &rotated,
        "correct horse",
        &[],
        BundleParams { scrypt_log_n: 4 },
    )
    .unwrap();
    reg2 = serde_json::json!({
        "key_id": rotated.key_id(),
        "recipient": rotated.current_recipient().to_string(),
        "bundle": bundle3.to_json(),
        "replaces_key_id": keys.key_id(),
    });
    assert_eq!(
        b.post_json("/v1/keys", &reg2).await.0,
        StatusCode::FORBIDDEN
    );
    let admin = user(&srv, &org.admin_token);
    let (s, v) = admin.post_json("/v1/keys", &reg2).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = a.get_json("/v1/keys").await;
    assert_eq!(v["active"]["key_id"], rotated.key_id());
    // A bundle that carries a plaintext secret key is refused.
    let leak = serde_json::json!({
        "key_id": keys.key_id(),
        "recipient": keys.current_recipient().to_string(),
        "bundle": bundle.to_json().replace("\"envelopes\"", "\"AGE-SECRET-KEY-1XYZ\": 1, \"envelopes\""),
    });
    assert_eq!(
        a.post_json("/v1/keys", &leak).await.0,
        StatusCode::BAD_REQUEST
    );
}

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
