//! The database's own guarantees: the application role is unprivileged and owns nothing, and
//! every organisation table forces row-level security with policies.

use crate::schema_support::*;
use crate::world::*;
use keepsake_server::testkit;

#[tokio::test]
async fn the_application_role_is_unprivileged_and_owns_nothing() {
    let w = setup().await;
    let r = w
        .owner
        .query_one(
            "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolcanlogin, rolinherit FROM pg_roles WHERE rolname = 'keepsake_app'",
            &[],
        )
        .await
        .unwrap();
    for (i, attr) in [
        "SUPERUSER",
        "BYPASSRLS",
        "CREATEROLE",
        "CREATEDB",
        "LOGIN",
        "INHERIT",
    ]
    .iter()
    .enumerate()
    {
        assert!(!r.get::<_, bool>(i), "keepsake_app has {attr}");
    }
    for (what, sql) in [
        (
            "relations",
            "SELECT count(*) FROM pg_class WHERE relowner = 'keepsake_app'::regrole",
        ),
        (
            "functions",
            "SELECT count(*) FROM pg_proc WHERE proowner = 'keepsake_app'::regrole",
        ),
        (
            "types",
            "SELECT count(*) FROM pg_type WHERE typowner = 'keepsake_app'::regrole",
        ),
        (
            "schemas",
            "SELECT count(*) FROM pg_namespace WHERE nspowner = 'keepsake_app'::regrole",
        ),
    ] {
        assert_eq!(
            scalar_i64(&w.owner, sql).await,
            0,
            "keepsake_app owns {what}"
        );
    }
    // No privilege beyond SELECT/INSERT/UPDATE/DELETE on any table, and no CREATE anywhere.
    let extra = scalar_i64(
        &w.owner,
        "SELECT count(*) FROM information_schema.role_table_grants
         WHERE grantee = 'keepsake_app' AND privilege_type NOT IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')",
    )
    .await;
    assert_eq!(
        extra, 0,
        "keepsake_app holds TRUNCATE/REFERENCES/TRIGGER somewhere"
    );
    let create = w
        .owner
        .query_one(
            "SELECT has_schema_privilege('keepsake_app', 'public', 'CREATE') OR has_schema_privilege('keepsake_app', 'auth', 'CREATE')",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0);
    assert!(!create);
    let app = w.db.app().await;
    let who: String = app
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "keepsake_app");
    let e = app
        .batch_execute("ALTER TABLE backup_jobs DISABLE ROW LEVEL SECURITY")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let e = app
        .batch_execute("SET row_security = off; SELECT count(*) FROM backup_jobs")
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "42501",
        "row_security=off must error, not bypass: {}",
        describe(&e)
    );
}

#[tokio::test]
async fn every_organisation_table_forces_row_level_security_with_policies() {
    let db = testkit::test_db().await;
    let c = db.owner().await;
    let mut tables = tenant_tables(&c).await;
    tables.push("public.organizations".into());
    tables.push("auth.users".into());
    assert!(tables.len() >= 40);
    for t in &tables {
        let r = c
            .query_one(
                "SELECT c.relrowsecurity, c.relforcerowsecurity,
                        (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND 'keepsake_app'::regrole = ANY (p.polroles)),
                        (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND 'keepsake_app'::regrole = ANY (p.polroles)
                            AND coalesce(pg_get_expr(p.polqual, p.polrelid), '') NOT LIKE '%auth.org_id()%'
                            AND coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '') NOT LIKE '%auth.org_id()%'),
                        (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid AND 0::oid = ANY (p.polroles))
                 FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[t],
            )
            .await
            .unwrap();
        assert!(r.get::<_, bool>(0), "{t}: row-level security not enabled");
        assert!(r.get::<_, bool>(1), "{t}: row-level security not forced");
        assert!(r.get::<_, i64>(2) > 0, "{t}: no policies for keepsake_app");
        assert_eq!(
            r.get::<_, i64>(3),
            0,
            "{t}: a keepsake_app policy is not scoped by auth.org_id()"
        );
        assert_eq!(r.get::<_, i64>(4), 0, "{t}: a policy applies to PUBLIC");
    }
    // Policies exist per command (not FOR ALL) so each command is decided explicitly.
    let all = scalar_i64(
        &c,
        "SELECT count(*) FROM pg_policies WHERE 'keepsake_app' = ANY (roles) AND cmd = 'ALL'",
    )
    .await;
    assert_eq!(all, 0);
    // Views read with the caller's rights.
    let rows = c
        .query(
            "SELECT c.relname::text, coalesce(c.reloptions::text, '') FROM pg_class c
             WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() >= 3);
    for r in rows {
        let (v, opts): (String, String) = (r.get(0), r.get(1));
        assert!(
            opts.contains("security_invoker=true"),
            "view {v} is not security_invoker ({opts})"
        );
    }
}
