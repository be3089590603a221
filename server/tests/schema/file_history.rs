//! `backup_files`: file versions form an append-only history with one live version per path, and
//! agents update only their own in-flight rows.

use crate::fixtures::*;
use crate::schema_support::*;
use keepsake_server::db::Actor;
use keepsake_server::testkit;
use uuid::Uuid;

/// Commits a job for `w.source` as its agent: bumps the source's sequence, assigns it to the job,
/// and returns (job id, seq).
async fn commit_job(t: &tokio_postgres::Transaction<'_>, w: &World) -> (Uuid, i64) {
    let seq: i64 = t
        .query_one(
            "UPDATE backup_sources SET last_committed_seq = last_committed_seq + 1 WHERE id = $1 RETURNING last_committed_seq",
            &[&w.source],
        )
        .await
        .unwrap()
        .get(0);
    let job: Uuid = t
        .query_one(
            "INSERT INTO backup_jobs (organization_id, agent_id, source_id, job_type, status, seq, parent_seq)
             VALUES ($1, $2, $3, 'incremental', 'running', $4, $5) RETURNING id",
            &[&w.org.id, &w.agent, &w.source, &seq, &(seq - 1)],
        )
        .await
        .unwrap()
        .get(0);
    (job, seq)
}

async fn add_version(
    t: &tokio_postgres::Transaction<'_>,
    w: &World,
    path: &str,
    content: &str,
    seq: i64,
    job: Uuid,
) -> Result<i64, tokio_postgres::Error> {
    t.execute(
        "INSERT INTO file_contents (organization_id, content_hash, size, chunk_count, agent_id)
         VALUES ($1, $2, 100, 1, $3) ON CONFLICT DO NOTHING",
        &[&w.org.id, &digest(content), &w.agent],
    )
    .await?;
    t.query_one(
        "INSERT INTO backup_files (organization_id, agent_id, source_id, path, size, content_hash, chunk_count,
             valid_from_seq, created_by_job_id)
         VALUES ($1, $2, $3, $4, 100, $5, 1, $6, $7) RETURNING id",
        &[&w.org.id, &w.agent, &w.source, &path, &digest(content), &seq, &job],
    )
    .await
    .map(|r| r.get(0))
}

async fn close_version(
    t: &tokio_postgres::Transaction<'_>,
    id: i64,
    seq: i64,
    job: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    t.execute(
        "UPDATE backup_files SET valid_to_seq = $2, valid_to = now(), closed_by_job_id = $3 WHERE id = $1",
        &[&id, &seq, &job],
    )
    .await
}

#[tokio::test]
async fn file_versions_form_append_only_history_with_one_live_version_per_path() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "files", "north").await;
    let mut app = db.app().await;
    let agent = Actor::Agent {
        org: w.org.id,
        agent: w.agent,
    };

    // Commit 1: two files.
    let mut t = tx(&mut app, &agent).await;
    let (j1, s1) = commit_job(&t, &w).await;
    let a1 = add_version(&t, &w, "2025/Smith/IMG_0001.CR3", "a1", s1, j1)
        .await
        .unwrap();
    let b1 = add_version(&t, &w, "2025/Smith/IMG_0002.CR3", "b1", s1, j1)
        .await
        .unwrap();
    // At most one live version per path.
    let sp = t.savepoint("dup").await.unwrap();
    let e = add_version(&sp, &w, "2025/Smith/IMG_0001.CR3", "a1-dup", s1, j1)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505", "{}", describe(&e));
    sp.rollback().await.unwrap();
    t.commit().await.unwrap();

    // Commit 2: IMG_0001 changed, IMG_0002 deleted, a sidecar added.
    let t = tx(&mut app, &agent).await;
    let (j2, s2) = commit_job(&t, &w).await;
    assert_eq!(close_version(&t, a1, s2, j2).await.unwrap(), 1);
    add_version(&t, &w, "2025/Smith/IMG_0001.CR3", "a2", s2, j2)
        .await
        .unwrap();
    assert_eq!(close_version(&t, b1, s2, j2).await.unwrap(), 1);
    add_version(&t, &w, "2025/Smith/IMG_0001.xmp", "x2", s2, j2)
        .await
        .unwrap();
    t.commit().await.unwrap();

    // The history guard: a closed version cannot be reopened or re-closed, content never changes.
    let mut t = tx(&mut app, &agent).await;
    for sql in [
        format!("UPDATE backup_files SET valid_to_seq = NULL, valid_to = NULL, closed_by_job_id = NULL WHERE id = {a1}"),
        format!("UPDATE backup_files SET valid_to_seq = 5 WHERE id = {a1}"),
        "UPDATE backup_files SET content_hash = decode(repeat('00', 32), 'hex') WHERE valid_to_seq IS NULL AND path LIKE '%IMG_0001.CR3'".to_string(),
        format!("UPDATE backup_files SET path = 'renamed' WHERE id = {a1}"),
    ] {
        let r = attempt(&mut t, &sql).await;
        match r {
            Ok(n) => assert_eq!(n, 0, "{sql} must not change history"),
            Err(e) => assert_eq!(sqlstate(&e), "42501", "{sql}: {}", describe(&e)),
        }
    }
    // An agent can only write at its source's newest commit: not into a past state.
    let sp = t.savepoint("past").await.unwrap();
    let e = add_version(&sp, &w, "2025/Smith/backdated.CR3", "bd", s1, j1)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    sp.rollback().await.unwrap();
    // ... and never delete.
    assert_eq!(
        attempt(&mut t, "DELETE FROM backup_files")
            .await
            .unwrap_or(0),
        0
    );
    t.rollback().await.unwrap();

    // Even the owner/system cannot rewrite a closed version (only explicit maintenance can).
    let e = owner
        .execute(
            "UPDATE backup_files SET valid_to_seq = 9 WHERE id = $1",
            &[&a1],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");

    // State queries: seq 1 had IMG_0001 (a1) and IMG_0002; seq 2 has IMG_0001 (a2) and the xmp.
    let at = |seq: i64, prefixes: Vec<&'static str>| {
        let owner = &owner;
        let source = w.source;
        async move {
            owner
                .query(
                    "SELECT path, content_hash FROM backup_files_at($1, $2, $3) ORDER BY path",
                    &[&source, &seq, &prefixes],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        at(1, vec![]).await,
        vec![
            ("2025/Smith/IMG_0001.CR3".to_string(), digest("a1")),
            ("2025/Smith/IMG_0002.CR3".to_string(), digest("b1"))
        ]
    );
    assert_eq!(
        at(2, vec![]).await,
        vec![
            ("2025/Smith/IMG_0001.CR3".to_string(), digest("a2")),
            ("2025/Smith/IMG_0001.xmp".to_string(), digest("x2"))
        ]
    );
    assert_eq!(at(2, vec!["2025/Smith"]).await.len(), 2, "directory prefix");
    assert_eq!(
        at(2, vec!["2025/Smi"]).await.len(),
        0,
        "prefixes match whole path components"
    );
    assert_eq!(
        at(1, vec!["2025/Smith/IMG_0002.CR3"]).await.len(),
        1,
        "a single file"
    );
    assert_eq!(
        at(2, vec!["2025/Smith", "2025"]).await.len(),
        2,
        "overlapping prefixes do not duplicate"
    );

    // Paths must be relative and normalised.
    for bad in ["/abs", "a/../b", "./a", "a//b", "a/.", ".."] {
        let e = owner
            .execute(
                "INSERT INTO backup_files (organization_id, agent_id, source_id, path, size, content_hash, valid_from_seq, created_by_job_id)
                 VALUES ($1, $2, $3, $4, 1, $5, 2, $6)",
                &[&w.org.id, &w.agent, &w.source, &bad, &digest(bad), &j2],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{bad}");
    }
}

#[tokio::test]
async fn agents_update_only_their_own_in_flight_rows() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "inflight", "north").await;
    let mut app = db.app().await;
    let agent = Actor::Agent {
        org: w.org.id,
        agent: w.agent,
    };

    let t = tx(&mut app, &agent).await;
    let job: Uuid = t
        .query_one(
            "INSERT INTO backup_jobs (organization_id, agent_id, source_id, job_type, status, wedding_critical_priority)
             VALUES ($1, $2, $3, 'incremental', 'running', true) RETURNING id",
            &[&w.org.id, &w.agent, &w.source],
        )
        .await
        .unwrap()
        .get(0);
    // Progress while running: fine. Lowering the wedding-critical priority: refused.
    assert_eq!(
        t.execute(
            "UPDATE backup_jobs SET files_processed = 10 WHERE id = $1",
            &[&job]
        )
        .await
        .unwrap(),
        1
    );
    t.commit().await.unwrap();
    let mut t = tx(&mut app, &agent).await;
    let e = attempt(
        &mut t,
        &format!("UPDATE backup_jobs SET wedding_critical_priority = false WHERE id = '{job}'"),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(attempt(&mut t, &format!("UPDATE backup_jobs SET status = 'completed', completed_at = now() WHERE id = '{job}'")).await.unwrap(), 1);
    // Finished: no more updates from the agent.
    assert_eq!(
        attempt(
            &mut t,
            &format!("UPDATE backup_jobs SET status = 'running' WHERE id = '{job}'")
        )
        .await
        .unwrap(),
        0
    );
    // Its own heartbeat: yes; its revocation or name: no.
    assert_eq!(attempt(&mut t, &format!("UPDATE agents SET last_seen_at = now(), last_heartbeat = '{{\"queue\": 3}}' WHERE id = '{}'", w.agent)).await.unwrap(), 1);
    let e = attempt(
        &mut t,
        &format!(
            "UPDATE agents SET revoked_at = NULL, name = 'x' WHERE id = '{}'",
            w.agent
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // Its source's sequence only moves forward.
    assert_eq!(attempt(&mut t, &format!("UPDATE backup_sources SET last_committed_seq = last_committed_seq + 1 WHERE id = '{}'", w.source)).await.unwrap(), 1);
    let e = attempt(
        &mut t,
        &format!(
            "UPDATE backup_sources SET last_committed_seq = 0 WHERE id = '{}'",
            w.source
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = attempt(
        &mut t,
        &format!(
            "UPDATE backup_sources SET root_path = '/' WHERE id = '{}'",
            w.source
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.commit().await.unwrap();

    // Recovery jobs targeted at the agent: progress yes, retargeting no.
    let rj: Uuid = owner
        .query_one(
            "INSERT INTO recovery_jobs (organization_id, source_id, point_in_time, initiated_by, recovery_type, target_location, target_agent_id, status)
             VALUES ($1, $2, now(), $3, 'full_recovery', '/restore', $4, 'queued') RETURNING id",
            &[&w.org.id, &w.source, &w.org.owner, &w.agent],
        )
        .await
        .unwrap()
        .get(0);
    let mut t = tx(&mut app, &agent).await;
    assert_eq!(
        attempt(&mut t, &format!("UPDATE recovery_jobs SET status = 'running', claimed_by = '{}', claimed_at = now(), lease_expires_at = now() + interval '5 minutes', progress_percentage = 10 WHERE id = '{rj}'", w.agent)).await.unwrap(),
        1
    );
    let e = attempt(
        &mut t,
        &format!("UPDATE recovery_jobs SET target_location = '/elsewhere' WHERE id = '{rj}'"),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = attempt(
        &mut t,
        &format!("UPDATE recovery_jobs SET path_prefixes = ARRAY['x'] WHERE id = '{rj}'"),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(attempt(&mut t, &format!("UPDATE recovery_jobs SET status = 'completed', completed_at = now(), progress_percentage = 100 WHERE id = '{rj}'")).await.unwrap(), 1);
    assert_eq!(
        attempt(
            &mut t,
            &format!("UPDATE recovery_jobs SET progress_percentage = 50 WHERE id = '{rj}'")
        )
        .await
        .unwrap(),
        0,
        "finished"
    );
    t.commit().await.unwrap();
}
