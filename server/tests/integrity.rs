//! Integrity of the catalog against a hostile or broken machine of the same organisation, over
//! real HTTP and real PostgreSQL: a machine holding the organisation's keys registers garbage
//! under blob IDs and a content hash another machine will use, and the honest machine's data
//! still reads back byte for byte; chunk lists never mix; adoptions; abandoned jobs end.

mod sync_support;

use std::time::Duration;

use keepsake_common::api::*;
use keepsake_common::crypto::SealedBlob;
use keepsake_common::delta::ChunkRef;
use keepsake_common::ids::{BlobId, CipherHash};
use keepsake_common::keys::OrgKeys;
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;
use serde_json::json;
use sync_support::*;
use uuid::Uuid;

/// A blob that claims to be `id` but holds other data (the hostile machine can seal anything).
fn forged(keys: &OrgKeys, id: BlobId, garbage: &[u8]) -> SealedBlob {
    let mut b = keys.seal_blob(garbage).unwrap();
    b.id = id;
    b
}

/// Opens blobs read back, in order; the first copy that does not open is avoided and asked for
/// again, as a restore does. Returns the plaintext and the number of copies refused.
async fn read_with_fallback(agent: &Agent, keys: &OrgKeys, ids: &[BlobId]) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut avoid: Vec<CipherHash> = Vec::new();
    let mut refused = 0;
    let mut next = 0;
    'outer: while next < ids.len() {
        let got = read_blobs_avoiding(agent, &ids[next..], &avoid)
            .await
            .unwrap_or_else(|e| panic!("read: {e:?}"));
        for (id, ct) in got {
            match keys.open_blob(&id, &ct, None) {
                Ok(plain) => {
                    out.extend_from_slice(&plain);
                    next += 1;
                }
                Err(_) => {
                    avoid.push(CipherHash::of(&ct));
                    refused += 1;
                    assert!(refused < 10, "no intact copy");
                    continue 'outer;
                }
            }
        }
    }
    (out, refused)
}

async fn commit_with(
    agent: &Agent,
    src: Uuid,
    entries: &[keepsake_common::delta::Entry],
) -> (StatusCode, serde_json::Value) {
    let job = start_job(agent, src, "incremental").await;
    let (s, v) = agent
        .put_bytes(&format!("/v1/jobs/{job}/parts/0"), delta(src, entries))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    agent
        .post_json(
            &format!("/v1/jobs/{job}/commit"),
            &json!({"parts": 1, "delta_digest": digest_of(entries)}),
        )
        .await
}

#[tokio::test]
async fn a_hostile_machine_cannot_spoil_another_machines_backup() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Poison").await;
    let (_, honest) = enroll(&srv, &org.enroll_token, "nas").await;
    let (_, hostile) = enroll(&srv, &srv.enroll_token(org.organization_id).await, "stolen").await;
    let (_, newcomer) = enroll(
        &srv,
        &srv.enroll_token(org.organization_id).await,
        "new-laptop",
    )
    .await;
    let keys = OrgKeys::generate().unwrap();
    let data: Vec<u8> = (0..90_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let (hash, blobs) = seal(&keys, &data, 30_000);
    let ids: Vec<BlobId> = blobs.iter().map(|b| b.id).collect();

    // The hostile machine goes first: garbage under the real IDs, and the real content hash with
    // a chunk list of its own (the right size, the wrong order).
    let garbage: Vec<SealedBlob> = ids
        .iter()
        .map(|id| forged(&keys, *id, &[0xEE; 30_000]))
        .collect();
    let refs: Vec<&SealedBlob> = garbage.iter().collect();
    upload(&hostile, &refs).await;
    let hsrc = source(&hostile, "/stolen").await;
    let mut reversed = blobs.clone();
    reversed.reverse();
    let (s, v) = commit_with(
        &hostile,
        hsrc,
        &[upsert("IMG_0001.CR3", data.len(), hash, &reversed)],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The honest machine is not fooled into skipping its upload.
    let (_, v) = honest
        .post_json("/v1/blobs/missing", &json!({ "ids": ids }))
        .await;
    assert_eq!(v["missing"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["foreign"].as_array().unwrap().len(), 3, "{v}");
    // Committing on the strength of the hostile copies is refused with the missing IDs.
    let src = source(&honest, "/volume1/Weddings").await;
    let entries = [upsert("Smith/IMG_0001.CR3", data.len(), hash, &blobs)];
    let (s, v) = commit_with(&honest, src, &entries).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["missing"].as_array().unwrap().len(), 3, "{v}");
    let refs: Vec<&SealedBlob> = blobs.iter().collect();
    upload(&honest, &refs).await;
    let (s, v) = commit_with(&honest, src, &entries).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let point = v["recovery_point_id"].as_str().unwrap().to_string();

    // The honest point lists the honest chunk list, not the one registered first.
    let listed = files(&honest, &point, "").await;
    assert_eq!(listed.len(), 1);
    let want: Vec<ChunkRef> = blobs
        .iter()
        .map(|b| ChunkRef {
            id: b.id,
            len: b.plain_len,
        })
        .collect();
    assert_eq!(listed[0].chunks, want);
    let rows = db_count(
        &srv,
        "SELECT count(DISTINCT agent_id) FROM content_chunks WHERE content_hash <> '\\x0000000000000000000000000000000000000000000000000000000000000000'",
    )
    .await;
    assert_eq!(rows, 2, "one chunk list per machine");

    // The honest machine reads its own copies first: byte-identical, nothing refused.
    let (got, refused) = read_with_fallback(&honest, &keys, &ids).await;
    assert_eq!(got, data);
    assert_eq!(refused, 0);
    // A replacement machine gets the oldest (hostile) copies first, refuses them, falls back.
    let (got, refused) = read_with_fallback(&newcomer, &keys, &ids).await;
    assert_eq!(got, data, "the restore is byte-identical");
    assert_eq!(refused, 3);

    // Having checked the honest copies, the newcomer adopts them; a copy it names wrongly is
    // not adopted. Then it need not upload those blobs itself.
    let copies: Vec<BlobCopy> = blobs
        .iter()
        .map(|b| BlobCopy {
            id: b.id,
            cipher_hash: b.cipher_hash,
        })
        .chain(std::iter::once(BlobCopy {
            id: ids[0],
            cipher_hash: CipherHash([7; 32]),
        }))
        .collect();
    let (s, v) = newcomer
        .post_json("/v1/blobs/adopt", &json!({ "copies": copies }))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["adopted"], 3);
    let (_, v) = newcomer
        .post_json("/v1/blobs/missing", &json!({ "ids": ids }))
        .await;
    assert!(v["missing"].as_array().unwrap().is_empty(), "{v}");
    // Adopting is for machines only, and never affects another machine's trust.
    let admin = user(&srv, &org.admin_token);
    assert_eq!(
        admin
            .post_json("/v1/blobs/adopt", &json!({ "copies": copies }))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (_, v) = hostile
        .post_json("/v1/blobs/missing", &json!({ "ids": ids }))
        .await;
    assert!(v["missing"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn two_first_commits_of_one_content_never_mix_chunk_lists() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Race Lists").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "laptop").await;
    let keys = OrgKeys::generate().unwrap();
    for round in 0..4 {
        // One content, two different chunk lists of the right total size (a buggy agent).
        let data = vec![round as u8; 60_000];
        let (hash, two) = seal(&keys, &data, 30_000);
        let (_, three) = seal(&keys, &data, 20_000);
        let all: Vec<&SealedBlob> = two.iter().chain(&three).collect();
        upload(&a, &all).await;
        let s1 = source(&a, &format!("/one-{round}")).await;
        let s2 = source(&a, &format!("/two-{round}")).await;
        let e1 = [upsert("x.bin", data.len(), hash, &two)];
        let e2 = [upsert("x.bin", data.len(), hash, &three)];
        let (r1, r2) = tokio::join!(commit_with(&a, s1, &e1), commit_with(&a, s2, &e2));
        assert_eq!(r1.0, StatusCode::OK, "{}", r1.1);
        assert_eq!(r2.0, StatusCode::OK, "{}", r2.1);
        let owner = srv.db.owner().await;
        let row = owner
            .query_one(
                "SELECT fc.chunk_count, count(c.seq), coalesce(sum(c.plain_length), 0)::bigint, fc.size \
                 FROM file_contents fc LEFT JOIN content_chunks c \
                   ON c.organization_id = fc.organization_id AND c.content_hash = fc.content_hash AND c.agent_id = fc.agent_id \
                 WHERE fc.content_hash = $1 GROUP BY fc.chunk_count, fc.size",
                &[&hash.as_bytes().as_slice()],
            )
            .await
            .unwrap();
        let (count, rows, sum, size): (i32, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(i64::from(count), rows, "round {round}: one whole list");
        assert_eq!(sum, size, "round {round}: the list adds up to the file");
        assert!(rows == 2 || rows == 3);
    }
}

#[tokio::test]
async fn an_abandoned_job_is_failed_and_its_staging_discarded() {
    let srv = TestServer::start_configured(|c| c.job_lease_secs = 2).await;
    let org = srv.create_org("Lease").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "laptop").await;
    let keys = OrgKeys::generate().unwrap();
    let (hash, blobs) = seal(&keys, &[5u8; 1000], 1000);
    upload(&a, &[&blobs[0]]).await;
    let src = source(&a, "/shoot").await;
    let entries = [upsert("a.jpg", 1000, hash, &blobs)];

    // The agent dies after sending a part.
    let dead = start_job(&a, src, "incremental").await;
    a.put_bytes(&format!("/v1/jobs/{dead}/parts/0"), delta(src, &entries))
        .await;
    // A job whose agent keeps talking survives the same time.
    let alive = start_job(&a, src, "incremental").await;
    for part in 0..3u32 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (s, _) = a
            .put_bytes(
                &format!("/v1/jobs/{alive}/parts/{part}"),
                delta(src, &entries),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let owner = srv.db.owner().await;
    let row = owner
        .query_one(
            "SELECT status::text, error_message FROM backup_jobs WHERE id = $1",
            &[&dead],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    let why: String = row.get(1);
    assert!(why.contains("abandoned"), "{why}");
    assert_eq!(
        db_count(
            &srv,
            &format!("SELECT count(*) FROM job_delta_entries WHERE backup_job_id = '{dead}'")
        )
        .await,
        0,
        "its staged delta is gone"
    );
    assert_eq!(
        db_count(
            &srv,
            &format!(
                "SELECT count(*) FROM backup_logs WHERE backup_job_id = '{dead}' AND component = 'lease'"
            )
        )
        .await,
        1
    );
    // Its agent cannot revive it; the live job commits.
    let (s, _) = commit(&a, dead, 1).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = a
        .post_json(&format!("/v1/jobs/{alive}/commit"), &json!({"parts": 3}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
