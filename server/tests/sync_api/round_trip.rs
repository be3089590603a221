//! The whole protocol once, as a well-behaved agent speaks it: enrol, register a source, upload
//! blobs into packs, send job deltas and commit, browse the recovery points (old and new) and read
//! the blobs back.

use crate::sync_support::*;
use keepsake_common::api::*;
use keepsake_common::crypto::SealedBlob;
use keepsake_common::delta::Entry;
use keepsake_common::ids::{BlobId, CipherHash};
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;

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
        // The job runs under the organisation's default strategy (no other applies), and that
        // strategy's retention decides how long the point is kept.
        ("SELECT count(*) FROM backup_jobs j JOIN backup_strategies s ON s.id = j.strategy_id \
          WHERE s.is_default AND s.organization_id = j.organization_id", 1),
        ("SELECT count(*) FROM recovery_points p JOIN backup_jobs j ON j.id = p.backup_job_id \
          JOIN backup_strategies s ON s.id = j.strategy_id \
          WHERE p.retention_expires_at BETWEEN now() + s.retention_period - interval '1 hour' \
                                           AND now() + s.retention_period", 1),
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
