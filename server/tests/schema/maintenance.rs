//! The scheduled maintenance functions: `cleanup_expired_recovery_points` (keeps referenced and
//! legally held points, logs per organisation) and `optimize_wedding_season_backups` (respects the
//! hemisphere, touches only the calling organisation).

use crate::fixtures::*;
use crate::schema_support::*;
use keepsake_server::db::Actor;
use keepsake_server::testkit;
use uuid::Uuid;

#[tokio::test]
async fn cleanup_keeps_referenced_and_held_points_and_logs_per_organisation() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let mut worlds = Vec::new();
    for slug in ["clean-a", "clean-b"] {
        let w = world(&owner, slug, "north").await;
        let expired = recovery_point(&owner, &w, 1, "now() - interval '1 day'", false).await;
        let referenced = recovery_point(&owner, &w, 2, "now() - interval '1 day'", false).await;
        let held = recovery_point(&owner, &w, 3, "now() - interval '1 day'", true).await;
        let live = recovery_point(&owner, &w, 4, "now() + interval '1 day'", false).await;
        owner
            .execute(
                "INSERT INTO recovery_jobs (recovery_point_id, organization_id, initiated_by, recovery_type, target_location, status)
                 VALUES ($1, $2, $3, 'full_recovery', '/restore', 'completed')",
                &[&referenced, &w.org.id, &w.org.owner],
            )
            .await
            .unwrap_err(); // completed requires completed_at
        owner
            .execute(
                "INSERT INTO recovery_jobs (recovery_point_id, organization_id, initiated_by, recovery_type, target_location, status, completed_at)
                 VALUES ($1, $2, $3, 'full_recovery', '/restore', 'completed', now())",
                &[&referenced, &w.org.id, &w.org.owner],
            )
            .await
            .unwrap();
        worlds.push((w, expired, referenced, held, live));
    }

    // Scoped entry point: the system actor of org A cleans org A only.
    let (wa, ..) = &worlds[0];
    let mut app = db.app().await;
    let t = tx(&mut app, &Actor::System { org: wa.org.id }).await;
    let n: i32 = t
        .query_one("SELECT cleanup_expired_recovery_points()", &[])
        .await
        .unwrap()
        .get(0);
    t.commit().await.unwrap();
    assert_eq!(n, 1);
    let remaining_b = scalar_i64(
        &owner,
        &format!(
            "SELECT count(*) FROM recovery_points WHERE organization_id = '{}'",
            worlds[1].0.org.id
        ),
    )
    .await;
    assert_eq!(remaining_b, 4, "org B untouched by org A's cleanup");

    // Cross-organisation maintenance (owner only) handles the rest.
    let n: i32 = owner
        .query_one("SELECT cleanup_expired_recovery_points_all_orgs()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "only org B's unreferenced expired point is left to delete"
    );

    for (w, expired, referenced, held, live) in &worlds {
        let exists = |id: Uuid| {
            let owner = &owner;
            async move {
                owner
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM recovery_points WHERE id = $1)",
                        &[&id],
                    )
                    .await
                    .unwrap()
                    .get::<_, bool>(0)
            }
        };
        assert!(!exists(*expired).await, "expired point deleted");
        assert!(
            exists(*referenced).await,
            "point referenced by a recovery job kept"
        );
        assert!(exists(*held).await, "point under legal hold kept");
        assert!(exists(*live).await, "unexpired point kept");
        let logs = owner
            .query(
                "SELECT message, details FROM backup_logs WHERE organization_id = $1 AND component = 'retention' ORDER BY id",
                &[&w.org.id],
            )
            .await
            .unwrap();
        assert!(!logs.is_empty(), "a log row for each organisation");
        let first: String = logs[0].get(0);
        assert_eq!(first, "Cleaned up 1 expired recovery points");
        let details: serde_json::Value = logs[0].get(1);
        assert_eq!(details["kept_referenced_by_recovery_jobs"], 1);
        assert_eq!(details["kept_legal_hold"], 1);
    }
    assert_eq!(
        scalar_i64(
            &owner,
            "SELECT count(*) FROM backup_logs WHERE organization_id IS NULL"
        )
        .await,
        0
    );

    // Who may call it: system or admin/owner; not a member, not an agent, not without identity.
    let (wa, ..) = &worlds[0];
    let member = add_user(&owner, wa.org.id, "member@clean-a.test", "member").await;
    for (actor, ok) in [
        (
            Actor::User {
                org: wa.org.id,
                user: wa.org.owner,
            },
            true,
        ),
        (
            Actor::User {
                org: wa.org.id,
                user: member,
            },
            false,
        ),
        (
            Actor::Agent {
                org: wa.org.id,
                agent: wa.agent,
            },
            false,
        ),
        (Actor::Anonymous, false),
    ] {
        let t = tx(&mut app, &actor).await;
        let r = t
            .query_one("SELECT cleanup_expired_recovery_points()", &[])
            .await;
        assert_eq!(
            r.is_ok(),
            ok,
            "{actor:?}: {:?}",
            r.err().map(|e| describe(&e))
        );
        if let Err(e) = r {
            assert_eq!(sqlstate(&e), "42501");
        }
        t.rollback().await.unwrap();
    }
    // The cross-organisation variant is not executable by the application role.
    let t = tx(&mut app, &Actor::System { org: wa.org.id }).await;
    let e = t
        .query_one("SELECT cleanup_expired_recovery_points_all_orgs()", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();
}

async fn frequency(owner: &tokio_postgres::Client, id: Uuid) -> String {
    owner
        .query_one(
            "SELECT backup_frequency::text FROM backup_strategies WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn wedding_season_optimisation_respects_hemisphere_and_touches_only_the_calling_org() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let north = world(&owner, "north", "north").await;
    let south = world(&owner, "south", "south").await;
    let n_opt = strategy(&owner, north.org.id, "season", true).await;
    let n_plain = strategy(&owner, north.org.id, "plain", false).await;
    let s_opt = strategy(&owner, south.org.id, "season", true).await;

    // Wedding-critical data of the north studio: the Smith wedding on 2025-07-12, folder pattern.
    owner
        .execute(
            "INSERT INTO wedding_critical_data (organization_id, wedding_name, wedding_date, path_patterns, agent_id, source_id)
             VALUES ($1, 'Smith', DATE '2025-07-12', ARRAY['2025/2025-07-12 Smith/**'], $2, $3)",
            &[&north.org.id, &north.agent, &north.source],
        )
        .await
        .unwrap();
    let other_source = add_source(&owner, north.org.id, north.agent, "/Volumes/Archive").await;
    let mk_job = |org: Uuid, agent: Uuid, source: Uuid, status: &'static str| {
        let owner = &owner;
        async move {
            owner
                .query_one(
                    &format!(
                        "INSERT INTO backup_jobs (organization_id, agent_id, source_id, job_type, status)
                         VALUES ($1, $2, $3, 'incremental', '{status}') RETURNING id"
                    ),
                    &[&org, &agent, &source],
                )
                .await
                .unwrap()
                .get::<_, Uuid>(0)
        }
    };
    let queued = mk_job(north.org.id, north.agent, north.source, "queued").await;
    let running = mk_job(north.org.id, north.agent, north.source, "running").await;
    let failed = mk_job(north.org.id, north.agent, north.source, "failed").await;
    let unrelated = mk_job(north.org.id, north.agent, other_source, "running").await;
    let south_job = mk_job(south.org.id, south.agent, south.source, "running").await;

    // July: northern wedding season. The north studio's admin runs the optimisation.
    let mut app = db.app().await;
    let t = tx(
        &mut app,
        &Actor::User {
            org: north.org.id,
            user: north.org.owner,
        },
    )
    .await;
    t.execute(
        "SELECT optimize_wedding_season_backups(DATE '2025-07-14')",
        &[],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        frequency(&owner, n_opt).await,
        "daily",
        "north, July: in season"
    );
    assert_eq!(
        frequency(&owner, n_plain).await,
        "monthly",
        "not optimised: untouched"
    );
    assert_eq!(
        frequency(&owner, s_opt).await,
        "monthly",
        "another organisation: untouched"
    );

    let flagged = |id: Uuid| {
        let owner = &owner;
        async move {
            owner
                .query_one(
                    "SELECT wedding_critical_priority FROM backup_jobs WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };
    assert!(
        flagged(queued).await && flagged(running).await,
        "in-flight jobs of the wedding's source flagged"
    );
    assert!(!flagged(failed).await, "finished jobs are never rewritten");
    assert!(
        !flagged(unrelated).await,
        "a source without wedding-critical data is not flagged"
    );
    assert!(
        !flagged(south_job).await,
        "another organisation's jobs are not flagged"
    );
    assert_eq!(
        scalar_i64(&owner, "SELECT count(*) FROM emergency_notifications").await,
        0,
        "flagging does not re-fire failure alerts"
    );
    let status: String = owner
        .query_one(
            "SELECT status::text FROM wedding_critical_data WHERE organization_id = $1",
            &[&north.org.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "active");

    // July is off-season in the southern hemisphere; January is in season there.
    let t = tx(&mut app, &Actor::System { org: south.org.id }).await;
    t.execute(
        "SELECT optimize_wedding_season_backups(DATE '2025-07-14')",
        &[],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        frequency(&owner, s_opt).await,
        "weekly",
        "south, July: off season"
    );
    assert_eq!(
        frequency(&owner, n_opt).await,
        "daily",
        "north untouched by the south's run"
    );
    let t = tx(&mut app, &Actor::System { org: south.org.id }).await;
    t.execute(
        "SELECT optimize_wedding_season_backups(DATE '2026-01-10')",
        &[],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        frequency(&owner, s_opt).await,
        "daily",
        "south, January: in season"
    );

    // Explicit season months override the hemisphere.
    owner
        .execute(
            "UPDATE organizations SET settings = settings || '{\"wedding_season_months\": [9, 10]}' WHERE id = $1",
            &[&north.org.id],
        )
        .await
        .unwrap();
    owner
        .execute(
            "SELECT optimize_wedding_season_backups_for_org($1, DATE '2025-07-14')",
            &[&north.org.id],
        )
        .await
        .unwrap();
    assert_eq!(frequency(&owner, n_opt).await, "weekly");

    // Members and agents may not run it; settings are validated.
    let member = add_user(&owner, north.org.id, "member@north.test", "member").await;
    let t = tx(
        &mut app,
        &Actor::User {
            org: north.org.id,
            user: member,
        },
    )
    .await;
    let e = t
        .execute("SELECT optimize_wedding_season_backups()", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();
    for bad in [
        r#"{"hemisphere": "east"}"#,
        r#"{"wedding_season_months": [13]}"#,
        r#"{"wedding_season_months": [5, 5]}"#,
        r#"{"allow_unsealed_key_on_disk": "yes"}"#,
        "[]",
    ] {
        let e = owner
            .execute(
                &format!("UPDATE organizations SET settings = '{bad}' WHERE id = $1"),
                &[&north.org.id],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{bad}");
    }
}
