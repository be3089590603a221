//! Writes across the boundary: writes against another organisation are refused (or affect no
//! row) and change nothing, and agents never delete and never update other machines' rows.

use std::collections::HashMap;

use crate::fixtures::*;
use crate::schema_support::*;
use crate::world::*;

#[tokio::test]
async fn writes_against_another_organisation_are_refused() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let before_b = snapshot(&w, w.b).await;
    let b_users = users_only_in(&w, w.b, w.a).await;
    let b_user_list = b_users
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");

    for (name, actor) in [
        ("admin", actor_admin(&w)),
        ("member", actor_member(&w)),
        ("emergency_contact", actor_ec(&w)),
        ("agent", actor_agent(&w)),
        ("system", actor_system(&w)),
    ] {
        let mut t = tx(&mut app, &actor).await;
        for table in &w.tables {
            let upd = format!(
                "UPDATE {table} SET organization_id = organization_id WHERE organization_id = '{}'",
                w.b
            );
            refused_or_zero(attempt(&mut t, &upd).await, &format!("{name}: {upd}"));
            let del = format!("DELETE FROM {table} WHERE organization_id = '{}'", w.b);
            refused_or_zero(attempt(&mut t, &del).await, &format!("{name}: {del}"));
            // The other organisation's fixture, re-inserted by this actor: refused by the
            // policies (or by missing privileges) — SQLSTATE 42501 either way.
            let (_, sql) = FIXTURES.iter().find(|(f, _)| f == table).unwrap();
            match attempt(&mut t, &w.b1.render(sql)).await {
                Ok(n) => panic!("{name} inserted {n} rows into {table} for another organisation"),
                Err(e) => assert_eq!(
                    sqlstate(&e),
                    "42501",
                    "{name}: insert into {table}: {}",
                    describe(&e)
                ),
            }
            // Moving one of its own rows to the other organisation is refused too.
            let mv = format!(
                "UPDATE {table} SET organization_id = '{}' WHERE organization_id = '{}'",
                w.b, w.a
            );
            refused_or_zero_or_check(attempt(&mut t, &mv).await, &format!("{name}: {mv}"));
        }
        for sql in [
            format!(
                "UPDATE organizations SET name = 'pwned' WHERE id = '{}'",
                w.b
            ),
            format!("DELETE FROM organizations WHERE id = '{}'", w.b),
            format!("UPDATE auth.users SET display_name = 'pwned' WHERE id IN ({b_user_list})"),
            format!("DELETE FROM auth.users WHERE id IN ({b_user_list})"),
        ] {
            refused_or_zero(attempt(&mut t, &sql).await, &format!("{name}: {sql}"));
        }
        let e = attempt(
            &mut t,
            "INSERT INTO organizations (name, slug) VALUES ('Evil', 'evil')",
        )
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{name} created an organisation");
        let e = attempt(
            &mut t,
            "INSERT INTO auth.users (email) VALUES ('evil@example.test')",
        )
        .await
        .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{name} created a user directly");
        t.commit().await.unwrap();
    }
    assert_eq!(snapshot(&w, w.b).await, before_b, "organisation B changed");
}

/// Moving a row to another organisation must never succeed: refused by WITH CHECK (42501), by a
/// guard (42501), by a composite foreign key (23503) or by affecting no row.
fn refused_or_zero_or_check(r: Result<u64, tokio_postgres::Error>, what: &str) {
    match r {
        Ok(n) => assert_eq!(n, 0, "{what} moved {n} rows"),
        Err(e) => assert!(
            ["42501", "23503"].contains(&sqlstate(&e).as_str()),
            "{what}: unexpected error {}",
            describe(&e)
        ),
    }
}

#[tokio::test]
async fn agents_never_delete_and_never_update_other_machines_rows() {
    let w = setup().await;
    let mut app = w.db.app().await;
    let before_a = snapshot(&w, w.a).await;
    let me = w.a1.id("agent");
    let cols: HashMap<String, Vec<String>> = {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for r in w
            .owner
            .query(
                "SELECT n.nspname || '.' || c.relname, a.attname::text FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname IN ('public', 'auth') AND a.attnum > 0 AND NOT a.attisdropped",
                &[],
            )
            .await
            .unwrap()
        {
            m.entry(r.get(0)).or_default().push(r.get(1));
        }
        m
    };

    let mut t = tx(&mut app, &actor_agent(&w)).await;
    for table in w
        .tables
        .iter()
        .chain(std::iter::once(&"public.organizations".to_string()))
    {
        let del = format!("DELETE FROM {table}");
        refused_or_zero(attempt(&mut t, &del).await, &format!("agent: {del}"));
        // Rows that are not this machine's own.
        let c = &cols[table];
        let not_mine = if table == "public.agents" {
            format!("id <> '{me}'")
        } else if table == "public.recovery_jobs" {
            format!("target_agent_id IS DISTINCT FROM '{me}'")
        } else if c.iter().any(|x| x == "agent_id") {
            format!("agent_id IS DISTINCT FROM '{me}'")
        } else {
            "true".to_string()
        };
        let set = if table == "public.organizations" {
            "name = name"
        } else {
            "organization_id = organization_id"
        };
        let upd = format!("UPDATE {table} SET {set} WHERE {not_mine}");
        refused_or_zero(attempt(&mut t, &upd).await, &format!("agent: {upd}"));
    }
    // The other machine's rows in the same organisation are visible (restore onto a replacement)
    // but not writable.
    let other_job = w.a2.id("job");
    let n = t
        .query_one(
            "SELECT count(*) FROM backup_jobs WHERE id = $1",
            &[&other_job],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(n, 1, "an agent reads its organisation's catalog");
    refused_or_zero(
        attempt(
            &mut t,
            &format!("UPDATE backup_jobs SET status = 'cancelled' WHERE id = '{other_job}'"),
        )
        .await,
        "agent cancels another machine's job",
    );
    // Inserting rows in another machine's name is refused.
    let e = attempt(
        &mut t,
        &format!(
            "INSERT INTO backup_logs (organization_id, agent_id, message) VALUES ('{}', '{}', 'forged')",
            w.a,
            w.a2.id("agent")
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.commit().await.unwrap();
    assert_eq!(
        snapshot(&w, w.a).await,
        before_a,
        "the agent changed its organisation's data"
    );

    // Agents do not read secrets: destinations, tokens, integrations, alerting, audit.
    let t = tx(&mut app, &actor_agent(&w)).await;
    for table in [
        "public.backup_destinations",
        "public.api_tokens",
        "public.backup_integrations",
        "public.cloud_backup_integrations",
        "public.monitoring_integrations",
        "public.backup_service_apis",
        "public.wedding_platform_integrations",
        "public.alert_configurations",
        "public.emergency_contacts",
        "public.backup_audit_trail",
        "public.user_profiles",
        "auth.users",
    ] {
        let n = scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(n, 0, "an agent reads {table}");
    }
    // ... but reads the configuration it needs.
    for table in [
        "public.backup_strategies",
        "public.backup_schedules",
        "public.backup_exclusions",
        "public.retention_policies",
        "public.wedding_critical_data",
        "public.vendor_backup_configs",
        "public.failover_configurations",
        "public.backup_encryption_keys",
        "public.backup_files",
        "public.recovery_points",
    ] {
        let n = scalar_i64(&t, &format!("SELECT count(*) FROM {table}")).await;
        assert!(n > 0, "an agent cannot read {table}");
    }
    t.rollback().await.unwrap();
}
