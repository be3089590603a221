//! What each identity sees: every tenant table has a fixture, each actor sees only its own
//! organisation, nothing is visible without a verified identity, and the identity does not
//! survive the transaction on a pooled connection.

use crate::fixtures::*;
use crate::schema_support::*;
use crate::world::*;
use keepsake_server::db;
use uuid::Uuid;

#[tokio::test]
async fn every_table_with_organisation_data_has_a_fixture() {
    let w = setup().await;
    assert!(
        w.tables.len() >= 38,
        "found only {} tenant tables",
        w.tables.len()
    );
    // And every fixture names a real table.
    for (t, _) in FIXTURES {
        assert!(
            *t == "auth.users" || w.tables.iter().any(|x| x == t),
            "fixture for unknown table {t}"
        );
    }
}

#[tokio::test]
async fn each_actor_sees_only_its_own_organisation() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let b_users = users_only_in(&w, w.b, w.a).await;
    assert!(!b_users.is_empty());

    for (name, actor) in [
        ("admin", actor_admin(&w)),
        ("member", actor_member(&w)),
        ("emergency_contact", actor_ec(&w)),
        ("agent", actor_agent(&w)),
        ("system", actor_system(&w)),
    ] {
        let t = tx(&mut app, &actor).await;
        let mut own_total = 0;
        for table in w
            .tables
            .iter()
            .chain(std::iter::once(&"public.organizations".to_string()))
        {
            let (own, other) = visible(&t, table, w.a).await;
            assert_eq!(
                other, 0,
                "{name} sees {other} rows of another organisation in {table}"
            );
            own_total += own;
            if name == "admin" || name == "system" {
                assert!(
                    own > 0,
                    "{name} should see its organisation's rows in {table}"
                );
            }
        }
        assert!(own_total > 0, "{name} sees nothing at all");
        for view in &w.views {
            let (own, other) = visible(&t, view, w.a).await;
            assert_eq!(
                other, 0,
                "{name} sees {other} rows of another organisation in view {view}"
            );
            if name == "admin" {
                assert!(own > 0, "admin should see rows in view {view}");
            }
        }
        let leaked = t
            .query_one(
                "SELECT count(*) FROM auth.users WHERE id = ANY($1)",
                &[&b_users],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(leaked, 0, "{name} sees users of another organisation");
        t.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn nothing_is_visible_without_a_verified_identity() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let revoked = w.a2.id("agent");
    w.owner
        .execute(
            "UPDATE agents SET revoked_at = now() WHERE id = $1",
            &[&revoked],
        )
        .await
        .unwrap();
    let raw = |actor: &'static str, org: Uuid, user: Uuid, agent: Uuid| {
        (actor, org.to_string(), user.to_string(), agent.to_string())
    };
    type Settings = (&'static str, String, String, String);
    let cases: Vec<(&str, Option<Settings>)> = vec![
        ("no settings at all", None),
        (
            "anonymous",
            Some(("", String::new(), String::new(), String::new())),
        ),
        (
            "unknown actor",
            Some(("root", w.a.to_string(), String::new(), String::new())),
        ),
        (
            "user of B claiming org A",
            Some(raw("user", w.a, w.b1.id("admin"), Uuid::nil())),
        ),
        (
            "agent of B claiming org A",
            Some(raw("agent", w.a, Uuid::nil(), w.b1.id("agent"))),
        ),
        (
            "revoked agent",
            Some(("agent", w.a.to_string(), String::new(), revoked.to_string())),
        ),
        (
            "user without org",
            Some((
                "user",
                String::new(),
                w.a1.id("admin").to_string(),
                String::new(),
            )),
        ),
        (
            "system without org",
            Some(("system", String::new(), String::new(), String::new())),
        ),
        (
            "system of a non-existent org",
            Some((
                "system",
                Uuid::new_v4().to_string(),
                String::new(),
                String::new(),
            )),
        ),
    ];
    for (name, settings) in cases {
        let t = app.transaction().await.unwrap();
        if let Some((actor, org, user, agent)) = settings {
            t.execute(
                "SELECT set_config('keepsake.actor', $1, true), set_config('keepsake.org_id', $2, true),
                        set_config('keepsake.user_id', $3, true), set_config('keepsake.agent_id', $4, true)",
                &[&actor, &org, &user, &agent],
            )
            .await
            .unwrap();
        }
        let org: Option<Uuid> = t
            .query_one("SELECT auth.org_id()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(org, None, "{name}: auth.org_id()");
        for table in w
            .tables
            .iter()
            .chain(&w.views)
            .chain(["public.organizations".to_string(), "auth.users".to_string()].iter())
        {
            let n = scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await;
            assert_eq!(n, 0, "{name}: {table} shows {n} rows");
        }
        t.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn identity_does_not_survive_the_transaction_on_a_pooled_connection() {
    let w = setup().await;
    let check_clean = |label: &'static str| {
        move |row: tokio_postgres::Row| {
            let uid: Option<Uuid> = row.get(0);
            let org: Option<Uuid> = row.get(1);
            let raw: Option<String> = row.get(2);
            let jobs: i64 = row.get(3);
            assert_eq!(uid, None, "{label}: auth.uid()");
            assert_eq!(org, None, "{label}: auth.org_id()");
            assert!(
                raw.as_deref().unwrap_or("").is_empty(),
                "{label}: keepsake.org_id = {raw:?}"
            );
            assert_eq!(jobs, 0, "{label}: backup_jobs visible");
        }
    };
    const PROBE: &str =
        "SELECT auth.uid(), auth.org_id(), current_setting('keepsake.org_id', true),
                                (SELECT count(*) FROM backup_jobs)";

    // A single connection, as db.app() gives it.
    let mut app = w.db.app().await;
    let t = tx(&mut app, &actor_admin(&w)).await;
    assert!(scalar_i64(&t, "SELECT count(*) FROM backup_jobs").await > 0);
    t.commit().await.unwrap();
    check_clean("after commit")(app.query_one(PROBE, &[]).await.unwrap());
    let t = app.transaction().await.unwrap();
    check_clean("next transaction")(t.query_one(PROBE, &[]).await.unwrap());
    t.rollback().await.unwrap();
    let t = tx(&mut app, &actor_admin(&w)).await;
    t.rollback().await.unwrap();
    check_clean("after rollback")(app.query_one(PROBE, &[]).await.unwrap());

    // The server's own pool with one connection, so the second checkout reuses the first.
    let pool = db::Db::new(w.db.config(), 1).expect("pool");
    {
        let mut c = pool.client().await.unwrap();
        let t = db::begin(&mut c, &actor_admin(&w)).await.unwrap();
        assert!(
            t.query_one("SELECT count(*) FROM backup_jobs", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                > 0
        );
        t.commit().await.unwrap();
    }
    {
        let c = pool.client().await.unwrap();
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, "keepsake_app");
        check_clean("pooled connection reused")(c.query_one(PROBE, &[]).await.unwrap());
    }
}
