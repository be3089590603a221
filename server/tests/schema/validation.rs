//! Validation in the schema: cron expressions, timezones, exclusion patterns (and the derived
//! negation flag), `storage_analytics` uniqueness, and encryption keys that may hold only public
//! recipients and sealed bundles.

use crate::fixtures::*;
use crate::schema_support::*;
use keepsake_server::db::Actor;
use keepsake_server::testkit;
use uuid::Uuid;

#[tokio::test]
async fn cron_expressions_are_validated() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let good = [
        "* * * * *",
        "0 3 * * *",
        "*/15 * * * *",
        "0 0-23/2 * * *",
        "5,35 9-17 * * mon-fri",
        "0 23 1,15 * *",
        "30 2 * jan,jun,DEC sun",
        "0 0 * * 7",
        "0 0 * * 0",
        "5/10 * * * *",
        "0 12 1-31/2 feb-nov SAT",
        "  0  1 * * 1  ",
    ];
    let bad = [
        "",
        "garbage",
        "* * * *",
        "* * * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "1,,2 * * * *",
        "* * * foo *",
        "* * * * fun",
        "@daily",
        "0 23 L * *",
        "0 0 ? * *",
        "-1 * * * *",
        "0 0 * * mon-",
        "0 0 * jan-mon *",
        "0 0 * * 1#2",
    ];
    for e in good {
        let ok: bool = owner
            .query_one("SELECT is_valid_cron($1)", &[&e])
            .await
            .unwrap()
            .get(0);
        assert!(ok, "{e:?} should be valid");
    }
    for e in bad {
        let ok: bool = owner
            .query_one("SELECT is_valid_cron($1)", &[&e])
            .await
            .unwrap()
            .get(0);
        assert!(!ok, "{e:?} should be invalid");
    }

    let org = create_org(&owner, "cron", "north").await;
    let strat = strategy(&owner, org.id, "s", false).await;
    let insert = |cron: &'static str, tz: &'static str| {
        let owner = &owner;
        async move {
            owner
                .execute(
                    "INSERT INTO backup_schedules (organization_id, strategy_id, name, cron_expression, timezone)
                     VALUES ($1, $2, 'nightly', $3, $4)",
                    &[&org.id, &strat, &cron, &tz],
                )
                .await
        }
    };
    insert("0 3 * * *", "Europe/London")
        .await
        .expect("valid schedule");
    insert("0 3 * * *", "Australia/Sydney")
        .await
        .expect("valid schedule");
    let e = insert("0 3 * *", "UTC").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514", "CHECK rejects a malformed cron");
    assert!(
        describe(&e).contains("backup_schedules_cron_valid"),
        "{}",
        describe(&e)
    );
    let e = insert("0 3 * * *", "Mars/Olympus_Mons").await.unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    assert!(
        describe(&e).contains("backup_schedules_timezone_valid"),
        "{}",
        describe(&e)
    );
    let e = owner
        .execute(
            "INSERT INTO backup_schedules (organization_id, strategy_id, name, cron_expression, wedding_season_cron)
             VALUES ($1, $2, 'season', '0 3 * * *', '*/5 * * * * *')",
            &[&org.id, &strat],
        )
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "23514",
        "the wedding-season override is validated too"
    );
}

#[tokio::test]
async fn exclusion_patterns_are_validated_and_negation_is_derived() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "excl", "north").await;
    for (p, neg) in [
        (".DS_Store", false),
        ("!keep.lrcat", true),
        ("**/Lightroom Previews.lrdata/", false),
        ("\\#raw", false),
    ] {
        let got: bool = owner
            .query_one(
                "INSERT INTO backup_exclusions (organization_id, pattern, rule_order) VALUES ($1, $2, 1) RETURNING is_negation",
                &[&w.org.id, &p],
            )
            .await
            .unwrap_or_else(|e| panic!("{p}: {}", describe(&e)))
            .get(0);
        assert_eq!(got, neg, "{p}");
    }
    for p in ["", "   ", "# comment", "!", "a\nb", "tab\there"] {
        let e = owner
            .execute(
                "INSERT INTO backup_exclusions (organization_id, pattern) VALUES ($1, $2)",
                &[&w.org.id, &p],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{p:?}");
    }
    // Scope must match the ids given.
    let e = owner
        .execute(
            "INSERT INTO backup_exclusions (organization_id, scope, pattern) VALUES ($1, 'agent', '*.tmp')",
            &[&w.org.id],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    owner
        .execute(
            "INSERT INTO backup_exclusions (organization_id, scope, agent_id, source_id, pattern) VALUES ($1, 'source', $2, $3, '*.tmp')",
            &[&w.org.id, &w.agent, &w.source],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn storage_analytics_rejects_duplicate_organisation_wide_rows() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "analytics", "north").await;
    let ins = "INSERT INTO storage_analytics (organization_id, destination_id, measurement_date, total_storage_bytes,
               used_storage_bytes, available_storage_bytes) VALUES ($1, $2, DATE '2025-06-01', 10, 5, 5)";
    let none: Option<Uuid> = None;
    owner.execute(ins, &[&w.org.id, &none]).await.unwrap();
    let e = owner.execute(ins, &[&w.org.id, &none]).await.unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "23505",
        "NULL destination no longer lets duplicates through"
    );
    owner
        .execute(ins, &[&w.org.id, &Some(w.destination)])
        .await
        .unwrap();
    let e = owner
        .execute(ins, &[&w.org.id, &Some(w.destination)])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
}

#[tokio::test]
async fn encryption_keys_hold_only_public_recipients_and_sealed_bundles() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "keys", "north").await;
    let mut app = db.app().await;
    let recipient = age_recipient("keys-1");
    let sealed = b"age-encryption.org/v1\n-> scrypt salt 18\nbody".to_vec();
    let ins = "INSERT INTO backup_encryption_keys (organization_id, key_name, recipient, key_hash, key_bundle,
               next_rotation_date, created_by_agent_id) VALUES ($1, 'data', $2, 'a1b2c3d4e5f60718', $3, current_date + 365, $4)";

    // A plaintext identity in the bundle is refused, even inside an age header.
    let leaked = b"age-encryption.org/v1\nAGE-SECRET-KEY-1QQQQ".to_vec();
    let e = owner
        .execute(ins, &[&w.org.id, &recipient, &leaked, &w.agent])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    let e = owner
        .execute(
            ins,
            &[&w.org.id, &recipient, &b"not age".to_vec(), &w.agent],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
    let e = owner
        .execute(ins, &[&w.org.id, &"age1notvalid", &sealed, &w.agent])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");

    // The first machine registers the key (generated there).
    let t = tx(
        &mut app,
        &Actor::Agent {
            org: w.org.id,
            agent: w.agent,
        },
    )
    .await;
    t.execute(ins, &[&w.org.id, &recipient, &sealed, &w.agent])
        .await
        .unwrap();
    t.commit().await.unwrap();
    // Only one active key at a time: a second active key is refused until the first is retired.
    let second = age_recipient("keys-2");
    let e = owner
        .execute(ins, &[&w.org.id, &second, &sealed, &w.agent])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    // An agent cannot retire a key (rotation is an admin decision).
    let t = tx(
        &mut app,
        &Actor::Agent {
            org: w.org.id,
            agent: w.agent,
        },
    )
    .await;
    let n = t
        .execute(
            "UPDATE backup_encryption_keys SET is_active = false, retired_at = now()",
            &[],
        )
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    t.rollback().await.unwrap();
    // The owner rotates: retire + add.
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: w.org.owner,
        },
    )
    .await;
    t.execute(
        "UPDATE backup_encryption_keys SET is_active = false, retired_at = now()",
        &[],
    )
    .await
    .unwrap();
    t.execute(
        "INSERT INTO backup_encryption_keys (organization_id, key_name, recipient, key_hash, key_bundle, next_rotation_date, created_by_user_id)
         VALUES ($1, 'data-2', $2, 'a1b2c3d4e5f60719', $3, current_date + 365, $4)",
        &[&w.org.id, &second, &sealed, &w.org.owner],
    )
    .await
    .unwrap();
    // The recipient of a registered key never changes.
    let e = t
        .execute(
            "UPDATE backup_encryption_keys SET recipient = $1 WHERE key_name = 'data-2'",
            &[&age_recipient("x")],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();
}
