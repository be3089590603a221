//! The schema owned by an ordinary (non-superuser) role, as with an external database URL. A
//! superuser bypasses row-level security; this role does not, so FORCE ROW LEVEL SECURITY applies
//! to it and the SECURITY DEFINER functions must work through its "definer_maintenance" policies.

mod schema_support;

use keepsake_server::db::{migrate, Actor};
use keepsake_server::testkit;
use schema_support::*;
use uuid::Uuid;

const OWNER_ROLE: &str = "keepsake_test_owner";

#[tokio::test]
async fn a_non_superuser_owner_migrates_and_every_definer_path_works_under_forced_rls() {
    let db = testkit::empty_db().await;
    let mut own = db.owner().await;
    exec(
        &own,
        &format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
                 CREATE ROLE {OWNER_ROLE} NOLOGIN CREATEROLE;
               END IF;
             END $$;
             ALTER DATABASE {} OWNER TO {OWNER_ROLE};
             SET ROLE {OWNER_ROLE};",
            db.name()
        ),
    )
    .await;
    let applied = migrate::apply(&mut own)
        .await
        .unwrap_or_else(|e| panic!("migrate as {OWNER_ROLE}: {e}"));
    assert_eq!(applied.len(), migrate::MIGRATIONS.len());
    let sup: bool = own
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!sup, "the test must run as a non-superuser owner");
    assert_eq!(
        scalar_i64(&own, &format!("SELECT count(*) FROM pg_tables WHERE schemaname IN ('public', 'auth') AND tableowner <> '{OWNER_ROLE}'")).await,
        0
    );
    let member: bool = own
        .query_one(
            "SELECT pg_has_role(current_user, 'keepsake_app', 'MEMBER')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        member,
        "the migration grants keepsake_app to a non-superuser owner"
    );

    // Bootstrap through the definer function; a plain owner query then sees nothing (FORCE).
    for slug in ["owner-a", "owner-b"] {
        own.execute(
            "SELECT create_organization($1, $2, $3)",
            &[
                &format!("Studio {slug}"),
                &slug,
                &format!("owner@{slug}.test"),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("create_organization as {OWNER_ROLE}: {}", describe(&e)));
    }
    assert_eq!(
        scalar_i64(&own, "SELECT count(*) FROM organizations").await,
        0,
        "FORCE applies to the owner"
    );
    assert_eq!(
        scalar_i64(&own, "SELECT count(*) FROM auth.users").await,
        0,
        "FORCE applies to the owner"
    );
    // Owner maintenance: explicitly flagged.
    exec(&own, "SET keepsake.definer = 'on'").await;
    assert_eq!(
        scalar_i64(&own, "SELECT count(*) FROM organizations").await,
        2
    );
    let org_of = |slug: &'static str| {
        let own = &own;
        async move {
            let r = own
                .query_one(
                    "SELECT o.id, u.id FROM organizations o JOIN user_profiles p ON p.organization_id = o.id
                     JOIN auth.users u ON u.id = p.user_id WHERE o.slug = $1",
                    &[&slug],
                )
                .await
                .unwrap();
            Org {
                id: r.get(0),
                owner: r.get(1),
            }
        }
    };
    let a = org_of("owner-a").await;
    let b = org_of("owner-b").await;
    let agent = add_agent(&own, a.id, "a-laptop").await;
    let source = add_source(&own, a.id, agent, "/photos").await;
    let dest = add_destination(&own, a.id, "a-local").await;
    own.execute(
        "INSERT INTO api_tokens (organization_id, kind, agent_id, token_hash) VALUES ($1, 'agent', $2, $3)",
        &[&a.id, &agent, &digest("owner-agent-token")],
    )
    .await
    .unwrap();
    exec(&own, "RESET keepsake.definer").await;

    // The owner inherits keepsake_app's policies: with an identity it sees that organisation
    // (and the membership lookup does not recurse into the policies that call it).
    {
        let t = tx(
            &mut own,
            &Actor::User {
                org: a.id,
                user: a.owner,
            },
        )
        .await;
        assert_eq!(
            scalar_i64(&t, "SELECT count(*) FROM user_profiles").await,
            1
        );
        assert_eq!(
            scalar_i64(&t, "SELECT count(*) FROM organizations").await,
            1
        );
        t.rollback().await.unwrap();
    }

    let mut app = db.app().await;
    // Token resolution before the organisation is known.
    let t = tx(&mut app, &Actor::Anonymous).await;
    let rows = t
        .query(
            "SELECT organization_id, agent_id FROM auth.resolve_token($1)",
            &[&digest("owner-agent-token")],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].get::<_, Uuid>(0), rows[0].get::<_, Option<Uuid>>(1)),
        (a.id, Some(agent))
    );
    t.commit().await.unwrap();

    // Users: organisation list and scope.
    let t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: a.owner,
        },
    )
    .await;
    let orgs = t
        .query("SELECT organization_id FROM auth.my_organizations()", &[])
        .await
        .unwrap();
    assert_eq!(orgs.len(), 1);
    let role: String = t
        .query_one("SELECT auth.org_role()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "owner");
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM organizations").await,
        1
    );
    t.rollback().await.unwrap();
    let t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: b.owner,
        },
    )
    .await;
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM organizations").await,
        0,
        "B's owner claiming A"
    );
    t.rollback().await.unwrap();

    // The agent completes a job (usage, via definer trigger) and fails a wedding-critical one
    // (emergency notification, via definer trigger).
    let t = tx(&mut app, &Actor::Agent { org: a.id, agent }).await;
    t.execute(
        "INSERT INTO backup_jobs (organization_id, agent_id, source_id, destination_id, job_type, status, bytes_new)
         VALUES ($1, $2, $3, $4, 'incremental', 'running', 4096)",
        &[&a.id, &agent, &source, &dest],
    )
    .await
    .unwrap();
    assert_eq!(
        t.execute(
            "UPDATE backup_jobs SET status = 'completed', completed_at = now()",
            &[]
        )
        .await
        .unwrap(),
        1
    );
    t.execute(
        "INSERT INTO backup_jobs (organization_id, agent_id, source_id, job_type, status, wedding_critical_priority)
         VALUES ($1, $2, $3, 'incremental', 'running', true)",
        &[&a.id, &agent, &source],
    )
    .await
    .unwrap();
    assert_eq!(t.execute("UPDATE backup_jobs SET status = 'failed', error_message = 'card read error' WHERE status = 'running'", &[]).await.unwrap(), 1);
    t.commit().await.unwrap();

    // The system actor: cleanup and season optimisation for its organisation.
    exec(&own, "SET keepsake.definer = 'on'").await;
    own.execute(
        "INSERT INTO recovery_points (organization_id, agent_id, source_id, seq, point_in_time, recovery_type, backup_size_bytes, file_count, retention_expires_at)
         VALUES ($1, $2, $3, 1, now() - interval '1 year', 'full_recovery', 1, 1, now() - interval '1 day')",
        &[&a.id, &agent, &source],
    )
    .await
    .unwrap();
    own.execute(
        "INSERT INTO backup_strategies (organization_id, name, strategy_type, backup_frequency, retention_period, wedding_season_optimized)
         VALUES ($1, 's', 'incremental_backup', 'monthly', '1 year', true)",
        &[&a.id],
    )
    .await
    .unwrap();
    exec(&own, "RESET keepsake.definer").await;
    let t = tx(&mut app, &Actor::System { org: a.id }).await;
    let n: i32 = t
        .query_one("SELECT cleanup_expired_recovery_points()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    t.execute(
        "SELECT optimize_wedding_season_backups(DATE '2025-06-01')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM emergency_notifications").await,
        1
    );
    t.commit().await.unwrap();

    // Everything landed, checked as the owner in maintenance mode.
    exec(&own, "SET keepsake.definer = 'on'").await;
    let usage: i64 = own
        .query_one(
            "SELECT current_usage FROM backup_destinations WHERE id = $1",
            &[&dest],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(usage, 4096);
    let notif_org: Uuid = own
        .query_one("SELECT organization_id FROM emergency_notifications", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notif_org, a.id);
    assert_eq!(
        scalar_i64(&own, "SELECT count(*) FROM recovery_points").await,
        0
    );
    assert_eq!(
        scalar_i64(
            &own,
            "SELECT count(*) FROM backup_logs WHERE component = 'retention'"
        )
        .await,
        1
    );
    let freq: String = own
        .query_one(
            "SELECT backup_frequency::text FROM backup_strategies WHERE name = 's'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(freq, "daily");
    assert!(
        scalar_i64(&own, "SELECT count(*) FROM backup_audit_trail").await >= 4,
        "audit rows written by the definer trigger"
    );
    let used: bool = own
        .query_one("SELECT last_used_at IS NOT NULL FROM api_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert!(used);
    exec(&own, "RESET keepsake.definer").await;

    // The definer flag does nothing for keepsake_app.
    let t = app.transaction().await.unwrap();
    exec(&t, "SET LOCAL keepsake.definer = 'on'").await;
    assert_eq!(
        scalar_i64(&t, "SELECT count(*) FROM organizations").await,
        0
    );
    assert_eq!(scalar_i64(&t, "SELECT count(*) FROM backup_jobs").await, 0);
    t.rollback().await.unwrap();

    // Cross-organisation maintenance as the owner.
    let n: i32 = own
        .query_one("SELECT cleanup_expired_recovery_points_all_orgs()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let n: i32 = own
        .query_one(
            "SELECT optimize_wedding_season_backups_all_orgs(DATE '2025-06-01')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // After a definer function returns, the flag is off again for the owner session.
    assert_eq!(
        scalar_i64(&own, "SELECT count(*) FROM organizations").await,
        0
    );
}
