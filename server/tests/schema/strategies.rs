//! Strategy protection: the wedding-season optimisation never makes a strategy back up less often
//! than configured; every organisation has exactly one default strategy, which cannot be unset or
//! deleted; every backup job is linked to a strategy (its schedule's, its machine's vendor
//! configuration's, else the default), also the jobs that existed before migration 0011.

use crate::fixtures::*;
use crate::schema_support::*;
use keepsake_server::db::{migrate, Actor};
use keepsake_server::testkit;
use tokio_postgres::Client;
use uuid::Uuid;

async fn strategy_with(
    owner: &Client,
    org: Uuid,
    name: &str,
    frequency: &str,
    season_frequency: &str,
) -> Uuid {
    owner
        .query_one(
            "INSERT INTO backup_strategies (organization_id, name, strategy_type, backup_frequency, retention_period,
                 wedding_season_optimized, wedding_season_frequency)
             VALUES ($1, $2, 'incremental_backup', $3::text::backup_frequency_type, '1 year', true,
                     $4::text::backup_frequency_type) RETURNING id",
            &[&org, &name, &frequency, &season_frequency],
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {}", describe(&e)))
        .get(0)
}

/// `(backup_frequency, configured_frequency)` of a strategy.
async fn frequencies(owner: &Client, id: Uuid) -> (String, String) {
    let r = owner
        .query_one(
            "SELECT backup_frequency::text, configured_frequency::text FROM backup_strategies WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn optimise(app: &mut Client, org: Uuid, date: &str) {
    let t = tx(app, &Actor::System { org }).await;
    t.execute(
        &format!("SELECT optimize_wedding_season_backups(DATE '{date}')"),
        &[],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
}

#[tokio::test]
async fn season_optimisation_never_makes_a_strategy_back_up_less_often_than_configured() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let mut app = db.app().await;
    let w = world(&owner, "season-floor", "north").await;
    let hourly = strategy_with(&owner, w.org.id, "hourly", "hourly", "daily").await;
    let realtime = strategy_with(&owner, w.org.id, "realtime", "real_time", "daily").await;
    let monthly = strategy_with(&owner, w.org.id, "monthly", "monthly", "daily").await;
    let raised = strategy_with(&owner, w.org.id, "raised", "daily", "hourly").await;

    // July is in season in the north, January is not; each run must leave the configuration alone
    // and only ever raise the frequency.
    for (date, expected) in [
        (
            "2025-07-14",
            [
                (hourly, "hourly"),
                (realtime, "real_time"),
                (monthly, "daily"),
                (raised, "hourly"),
            ],
        ),
        (
            "2026-01-10",
            [
                (hourly, "hourly"),
                (realtime, "real_time"),
                (monthly, "weekly"),
                (raised, "daily"),
            ],
        ),
        (
            "2026-06-01",
            [
                (hourly, "hourly"),
                (realtime, "real_time"),
                (monthly, "daily"),
                (raised, "hourly"),
            ],
        ),
    ] {
        optimise(&mut app, w.org.id, date).await;
        for ((id, want), configured) in
            expected
                .iter()
                .zip(["hourly", "real_time", "monthly", "daily"])
        {
            assert_eq!(
                frequencies(&owner, *id).await,
                (want.to_string(), configured.to_string()),
                "{date}"
            );
        }
        assert_eq!(
            scalar_i64(
                &owner,
                "SELECT count(*) FROM backup_strategies
                 WHERE backup_frequency_rank(backup_frequency) > backup_frequency_rank(configured_frequency)"
            )
            .await,
            0,
            "{date}: a strategy backs up less often than configured"
        );
    }

    // An administrator setting the frequency sets the configuration: the monthly strategy made
    // hourly stays hourly off season.
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: w.org.owner,
        },
    )
    .await;
    t.execute(
        "UPDATE backup_strategies SET backup_frequency = 'hourly' WHERE id = $1",
        &[&monthly],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        frequencies(&owner, monthly).await,
        ("hourly".into(), "hourly".into())
    );
    optimise(&mut app, w.org.id, "2026-01-10").await;
    assert_eq!(
        frequencies(&owner, monthly).await,
        ("hourly".into(), "hourly".into())
    );
    // Setting the configured frequency alone resets the current one to it; the next run in
    // season raises it again.
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: w.org.owner,
        },
    )
    .await;
    t.execute(
        "UPDATE backup_strategies SET configured_frequency = 'weekly' WHERE id = $1",
        &[&raised],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        frequencies(&owner, raised).await,
        ("weekly".into(), "weekly".into())
    );
    optimise(&mut app, w.org.id, "2026-07-01").await;
    assert_eq!(
        frequencies(&owner, raised).await,
        ("hourly".into(), "weekly".into())
    );

    // Nobody, owner maintenance included, sets a frequency below the configured one.
    let mut t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: w.org.owner,
        },
    )
    .await;
    let e = attempt(
        &mut t,
        &format!(
            "UPDATE backup_strategies SET backup_frequency = 'weekly', configured_frequency = 'hourly' WHERE id = '{realtime}'"
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "{}", describe(&e));
    t.rollback().await.unwrap();
    exec(&owner, "SET keepsake.definer = 'on'").await;
    let e = owner
        .execute(
            "UPDATE backup_strategies SET backup_frequency = 'monthly' WHERE id = $1",
            &[&hourly],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "{}", describe(&e));
    exec(&owner, "RESET keepsake.definer").await;
    assert_eq!(
        frequencies(&owner, hourly).await,
        ("hourly".into(), "hourly".into())
    );
}

async fn job_strategy(app: &mut Client, w: &World, agent: Uuid, schedule: Option<Uuid>) -> Uuid {
    let t = tx(
        app,
        &Actor::Agent {
            org: w.org.id,
            agent,
        },
    )
    .await;
    let s: Uuid = t
        .query_one(
            "INSERT INTO backup_jobs (organization_id, agent_id, job_type, status, schedule_id)
             VALUES ($1, $2, 'incremental', 'running', $3) RETURNING strategy_id",
            &[&w.org.id, &agent, &schedule],
        )
        .await
        .unwrap_or_else(|e| panic!("job insert: {}", describe(&e)))
        .get(0);
    t.commit().await.unwrap();
    s
}

#[tokio::test]
async fn every_job_is_linked_to_a_strategy_and_the_default_is_always_there() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let mut app = db.app().await;
    let w = world(&owner, "linked", "north").await;
    let other = world(&owner, "linked-other", "north").await;

    // Each organisation has exactly one default, from its creation.
    let default = default_strategy(&owner, w.org.id).await;
    let r = owner
        .query_one(
            "SELECT name, backup_frequency::text, (SELECT count(*) FROM backup_strategies s2
                 WHERE s2.organization_id = s.organization_id AND s2.is_default)
             FROM backup_strategies s WHERE id = $1",
            &[&default],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2)
        ),
        ("default".into(), "real_time".into(), 1)
    );
    assert_ne!(default, default_strategy(&owner, other.org.id).await);

    // A job started without a strategy gets the default ...
    assert_eq!(job_strategy(&mut app, &w, w.agent, None).await, default);
    // ... or the strategy of the vendor configuration that applies to its machine (its own
    // before the organisation-wide one), or of its schedule.
    let org_wide = strategy(&owner, w.org.id, "photographers", false).await;
    let own = strategy(&owner, w.org.id, "laptop", false).await;
    let scheduled = strategy(&owner, w.org.id, "nightly", false).await;
    owner
        .execute(
            "INSERT INTO vendor_backup_configs (organization_id, supplier_type, strategy_id) VALUES ($1, 'photographer', $2)",
            &[&w.org.id, &org_wide],
        )
        .await
        .unwrap();
    let second = add_agent(&owner, w.org.id, "linked-studio").await;
    assert_eq!(job_strategy(&mut app, &w, w.agent, None).await, org_wide);
    owner
        .execute(
            "INSERT INTO vendor_backup_configs (organization_id, supplier_type, agent_id, strategy_id)
             VALUES ($1, 'photographer', $2, $3)",
            &[&w.org.id, &w.agent, &own],
        )
        .await
        .unwrap();
    assert_eq!(job_strategy(&mut app, &w, w.agent, None).await, own);
    assert_eq!(job_strategy(&mut app, &w, second, None).await, org_wide);
    let schedule: Uuid = owner
        .query_one(
            "INSERT INTO backup_schedules (organization_id, strategy_id, name, cron_expression) VALUES ($1, $2, 'nightly', '0 3 * * *') RETURNING id",
            &[&w.org.id, &scheduled],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        job_strategy(&mut app, &w, w.agent, Some(schedule)).await,
        scheduled
    );

    // The administrator moves the default: the mark moves, there is still exactly one.
    let admin = Actor::User {
        org: w.org.id,
        user: w.org.owner,
    };
    let t = tx(&mut app, &admin).await;
    t.execute(
        "UPDATE backup_strategies SET is_default = true WHERE id = $1",
        &[&scheduled],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    assert_eq!(default_strategy(&owner, w.org.id).await, scheduled);
    let jobs_of_old_default = scalar_i64(
        &owner,
        &format!("SELECT count(*) FROM backup_jobs WHERE strategy_id = '{default}'"),
    )
    .await;
    assert_eq!(jobs_of_old_default, 1);
    // Deleting a strategy that is not the default moves its jobs to the default.
    let t = tx(&mut app, &admin).await;
    t.execute("DELETE FROM backup_strategies WHERE id = $1", &[&default])
        .await
        .unwrap();
    t.commit().await.unwrap();
    assert_eq!(
        scalar_i64(
            &owner,
            &format!("SELECT count(*) FROM backup_jobs WHERE strategy_id = '{scheduled}'"),
        )
        .await,
        2,
        "the deleted strategy's job now runs under the default"
    );

    // Refusals, each with a clear error and nothing changed.
    let job: Uuid = owner
        .query_one(
            "SELECT id FROM backup_jobs WHERE organization_id = $1 LIMIT 1",
            &[&w.org.id],
        )
        .await
        .unwrap()
        .get(0);
    let mut t = tx(&mut app, &admin).await;
    for (sql, state, words) in [
        (
            format!("UPDATE backup_strategies SET is_default = false WHERE id = '{scheduled}'"),
            "42501",
            "cannot be unset",
        ),
        (
            format!("DELETE FROM backup_strategies WHERE id = '{scheduled}'"),
            "42501",
            "cannot be deleted",
        ),
        (
            format!(
                "UPDATE backup_strategies SET organization_id = '{}' WHERE id = '{org_wide}'",
                other.org.id
            ),
            "42501",
            "another organisation",
        ),
        (
            format!("UPDATE backup_jobs SET strategy_id = NULL WHERE id = '{job}'"),
            "23502",
            "strategy_id",
        ),
    ] {
        let e = attempt(&mut t, &sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), state, "{sql}: {}", describe(&e));
        assert!(describe(&e).contains(words), "{sql}: {}", describe(&e));
    }
    t.rollback().await.unwrap();
    // Another organisation's strategy cannot be given to a job, even by the schema owner.
    let e = owner
        .execute(
            "INSERT INTO backup_jobs (organization_id, strategy_id, job_type) VALUES ($1, $2, 'full')",
            &[&w.org.id, &default_strategy(&owner, other.org.id).await],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23503", "{}", describe(&e));
    assert_eq!(default_strategy(&owner, w.org.id).await, scheduled);
    assert_eq!(
        scalar_i64(
            &owner,
            "SELECT count(*) FROM backup_jobs WHERE strategy_id IS NULL"
        )
        .await,
        0
    );

    // Deleting the organisation takes its default strategy and jobs with it.
    let gone: bool = owner
        .query_one("SELECT delete_organization($1)", &[&w.org.id])
        .await
        .unwrap_or_else(|e| panic!("delete_organization: {}", describe(&e)))
        .get(0);
    assert!(gone);
    assert_eq!(
        scalar_i64(
            &owner,
            &format!(
                "SELECT (SELECT count(*) FROM backup_strategies WHERE organization_id = '{0}')
                      + (SELECT count(*) FROM backup_jobs WHERE organization_id = '{0}')",
                w.org.id
            ),
        )
        .await,
        0
    );
}

#[tokio::test]
async fn migration_0011_links_existing_jobs_and_gives_existing_organisations_a_default() {
    let db = testkit::empty_db().await;
    let mut owner = db.owner().await;
    // The database as the previous release left it: migrations up to 0010.
    exec(
        &owner,
        "CREATE TABLE public.keepsake_migrations (name text PRIMARY KEY, checksum text NOT NULL,
                                                  applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await;
    for (name, sql) in migrate::MIGRATIONS.iter().filter(|(n, _)| *n < "0011") {
        let t = owner.transaction().await.unwrap();
        t.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{name}: {}", describe(&e)));
        t.execute(
            "INSERT INTO public.keepsake_migrations (name, checksum) VALUES ($1, $2)",
            &[name, &migrate::checksum(sql)],
        )
        .await
        .unwrap();
        t.commit().await.unwrap();
    }
    // Studio A added a schedule (the server then created a strategy named 'default'); studio B
    // never did. Both have jobs without a strategy.
    let a = create_org(&owner, "legacy-a", "north").await;
    let b = create_org(&owner, "legacy-b", "south").await;
    let a_default: Uuid = owner
        .query_one(
            "INSERT INTO backup_strategies (organization_id, name, strategy_type, backup_frequency, retention_period)
             VALUES ($1, 'default', 'continuous_backup', 'real_time', interval '10 years') RETURNING id",
            &[&a.id],
        )
        .await
        .unwrap()
        .get(0);
    let optimised = strategy(&owner, a.id, "optimised", true).await;
    for org in [a.id, b.id] {
        owner
            .execute(
                "INSERT INTO backup_jobs (organization_id, job_type, status) VALUES ($1, 'full', 'completed')",
                &[&org],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        scalar_i64(
            &owner,
            "SELECT count(*) FROM backup_jobs WHERE strategy_id IS NULL"
        )
        .await,
        2
    );

    let applied = migrate::apply(&mut owner).await.expect("apply 0011");
    assert_eq!(
        applied.first().map(String::as_str),
        Some("0011_strategy_protection.sql")
    );
    assert_eq!(
        default_strategy(&owner, a.id).await,
        a_default,
        "the existing 'default' strategy is adopted"
    );
    let b_default = default_strategy(&owner, b.id).await;
    for (org, strategy) in [(a.id, a_default), (b.id, b_default)] {
        let linked: Uuid = owner
            .query_one(
                "SELECT strategy_id FROM backup_jobs WHERE organization_id = $1",
                &[&org],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(linked, strategy);
    }
    assert_eq!(
        frequencies(&owner, optimised).await,
        ("monthly".into(), "monthly".into()),
        "existing strategies keep their frequency as their configuration"
    );
    let e = owner
        .execute(
            "INSERT INTO backup_jobs (organization_id, strategy_id, job_type) VALUES ($1, NULL, 'full')",
            &[&a.id],
        )
        .await;
    assert!(e.is_ok(), "a job without strategy is linked, not refused");
    assert_eq!(
        scalar_i64(
            &owner,
            "SELECT count(*) FROM backup_jobs WHERE strategy_id IS NULL"
        )
        .await,
        0
    );
    assert!(
        owner
            .query_one(
                "SELECT attnotnull FROM pg_attribute
                 WHERE attrelid = 'public.backup_jobs'::regclass AND attname = 'strategy_id'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0),
        "backup_jobs.strategy_id is NOT NULL"
    );
}
