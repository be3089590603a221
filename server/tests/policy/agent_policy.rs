//! What an agent is told: the policy merges exclusions by scope, wedding-critical windows and
//! vendor settings, and schedules switch to their wedding-season cron in season.

use crate::support::*;
use chrono::Datelike;
use keepsake_common::api::*;
use keepsake_server::testkit::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn policy_merges_rule_scopes_critical_windows_and_vendor_settings() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Policy Studio").await;
    let admin = caller(&srv, &org.admin_token);
    let (laptop_id, laptop) = enroll(&srv, &org.enroll_token, "laptop").await;
    let t2 = srv.enroll_token(org.organization_id).await;
    let (nas_id, nas) = enroll(&srv, &t2, "nas").await;
    let src = source(&laptop, "/Users/ana/Weddings").await;

    // Nothing configured yet.
    let p = laptop.policy().await;
    assert!(p.exclusions.is_empty(), "{p:?}");
    assert!(p.critical.is_empty(), "{p:?}");
    assert!(p.schedules.is_empty(), "{p:?}");
    assert_eq!(p.vendor, None);

    // Exclusions: organisation rules (by rule_order), then the agent's own, then its source rules;
    // another machine's rules and disabled rules are not sent.
    create(
        &admin,
        "/v1/exclusions",
        json!({"pattern": "*.tmp", "rule_order": 2, "reason": "scratch files"}),
    )
    .await;
    create(
        &admin,
        "/v1/exclusions",
        json!({"pattern": ".DS_Store", "rule_order": 1}),
    )
    .await;
    create(
        &admin,
        "/v1/exclusions",
        json!({"pattern": "Lightroom Previews.lrdata/", "agent_id": laptop_id}),
    )
    .await;
    create(
        &admin,
        "/v1/exclusions",
        json!({"pattern": "!keep.tmp", "agent_id": laptop_id, "source_id": src}),
    )
    .await;
    create(
        &admin,
        "/v1/exclusions",
        json!({"pattern": "/Volumes/Scratch/", "agent_id": nas_id}),
    )
    .await;
    let disabled = create(&admin, "/v1/exclusions", json!({"pattern": "*.bak"})).await;
    owner_exec(
        &srv,
        "UPDATE backup_exclusions SET enabled = false WHERE id = $1",
        &[&disabled],
    )
    .await;
    // A source rule must name its agent.
    let (s, v) = admin
        .json(
            Method::POST,
            "/v1/exclusions",
            Some(&json!({"pattern": "x", "source_id": src})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("agent"), "{v}");

    assert_eq!(
        laptop.policy().await.exclusions,
        vec![
            excl(".DS_Store", "organization", None),
            excl("*.tmp", "organization", None),
            excl("Lightroom Previews.lrdata/", "agent", None),
            excl("!keep.tmp", "source", Some(src)),
        ]
    );
    assert_eq!(
        nas.policy().await.exclusions,
        vec![
            excl(".DS_Store", "organization", None),
            excl("*.tmp", "organization", None),
            excl("/Volumes/Scratch/", "agent", None),
        ]
    );
    let reason: Option<String> = srv
        .db
        .owner()
        .await
        .query_one(
            "SELECT reason FROM backup_exclusions WHERE pattern = '*.tmp'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason.as_deref(), Some("scratch files"));

    // Wedding-critical rules: active exactly inside critical_from..=critical_until (both ends
    // included); other machines' rules and delivered weddings are not sent.
    let today = db_today(&srv).await;
    let d = |days: i64| today + chrono::Duration::days(days);
    let smith = create(
        &admin,
        "/v1/wedding-critical",
        json!({"wedding_name": "Smith & Jones", "couple_names": "Ana & Ben", "wedding_date": today,
               "path_patterns": ["2025/Smith/**", "Exports/Smith/**"], "priority": 2}),
    )
    .await;
    let starts_today = create(
        &admin,
        "/v1/wedding-critical",
        json!({"wedding_name": "Starts today", "wedding_date": d(3), "window_before_days": 3,
               "window_after_days": 0, "path_patterns": ["Edge/**"]}),
    )
    .await;
    let later = create(
        &admin,
        "/v1/wedding-critical",
        json!({"wedding_name": "Later", "wedding_date": d(100), "path_patterns": ["Later/**"]}),
    )
    .await;
    let past = create(
        &admin,
        "/v1/wedding-critical",
        json!({"wedding_name": "Past", "wedding_date": d(-60), "window_after_days": 30,
               "path_patterns": ["Past/**"], "priority": 3}),
    )
    .await;
    let ends_today = create(
        &admin,
        "/v1/wedding-critical",
        json!({"wedding_name": "Ends today", "wedding_date": d(-5), "window_before_days": 0,
               "window_after_days": 5, "path_patterns": ["Until/**"], "priority": 4}),
    )
    .await;
    let nas_wedding = create(
        &admin,
        "/v1/wedding-critical",
        json!({"wedding_name": "NAS only", "wedding_date": today, "agent_id": nas_id,
               "path_patterns": ["NAS/**"]}),
    )
    .await;
    let delivered = create(
        &admin,
        "/v1/wedding-critical",
        json!({"wedding_name": "Delivered", "wedding_date": today, "path_patterns": ["Done/**"]}),
    )
    .await;
    owner_exec(
        &srv,
        "UPDATE wedding_critical_data SET status = 'delivered' WHERE id = $1",
        &[&delivered],
    )
    .await;

    let rule =
        |id, name: &str, date, patterns: &[&str], from, until, priority, active| CriticalRule {
            id,
            wedding_name: name.into(),
            wedding_date: date,
            path_patterns: patterns.iter().map(|s| s.to_string()).collect(),
            source_id: None,
            critical_from: from,
            critical_until: until,
            priority,
            active,
        };
    // Ordered by priority, then wedding date.
    assert_eq!(
        laptop.policy().await.critical,
        vec![
            rule(
                starts_today,
                "Starts today",
                d(3),
                &["Edge/**"],
                today,
                d(3),
                1,
                true
            ),
            rule(
                later,
                "Later",
                d(100),
                &["Later/**"],
                d(93),
                d(130),
                1,
                false
            ),
            rule(
                smith,
                "Smith & Jones",
                today,
                &["2025/Smith/**", "Exports/Smith/**"],
                d(-7),
                d(30),
                2,
                true
            ),
            rule(past, "Past", d(-60), &["Past/**"], d(-67), d(-30), 3, false),
            rule(
                ends_today,
                "Ends today",
                d(-5),
                &["Until/**"],
                d(-5),
                today,
                4,
                true
            ),
        ]
    );
    let nas_critical: Vec<(Uuid, bool)> = nas
        .policy()
        .await
        .critical
        .iter()
        .map(|c| (c.id, c.active))
        .collect();
    assert_eq!(
        nas_critical,
        vec![
            (nas_wedding, true),
            (starts_today, true),
            (later, false),
            (smith, true),
            (past, false),
            (ends_today, true),
        ]
    );

    // Vendor settings: the organisation default for every machine ...
    let photographer = VendorSettings {
        supplier_type: "photographer".into(),
        settle_window_seconds: 120,
        bandwidth_limit_kbps: Some(5000),
        schedule_window_start: Some("22:00".into()),
        schedule_window_end: Some("06:30".into()),
        realtime_enabled: false,
        max_file_size_bytes: Some(200_000_000_000),
        priority_extensions: vec!["cr3".into(), "nef".into()],
    };
    put_vendor(&admin, serde_json::to_value(&photographer).unwrap()).await;
    assert_eq!(laptop.policy().await.vendor.as_ref(), Some(&photographer));
    assert_eq!(nas.policy().await.vendor.as_ref(), Some(&photographer));
    // ... a machine's own configuration (PUT with its agent_id) wins over it ...
    put_vendor(
        &admin,
        json!({"supplier_type": "videographer", "settle_window_seconds": 15, "agent_id": laptop_id}),
    )
    .await;
    let videographer = VendorSettings {
        supplier_type: "videographer".into(),
        settle_window_seconds: 15,
        bandwidth_limit_kbps: None,
        schedule_window_start: None,
        schedule_window_end: None,
        realtime_enabled: true,
        max_file_size_bytes: None,
        priority_extensions: Vec::new(),
    };
    assert_eq!(laptop.policy().await.vendor.as_ref(), Some(&videographer));
    assert_eq!(nas.policy().await.vendor.as_ref(), Some(&photographer));
    // ... and a second PUT of the same supplier type updates the default in place.
    let photographer2 = VendorSettings {
        settle_window_seconds: 300,
        bandwidth_limit_kbps: None,
        schedule_window_start: None,
        schedule_window_end: None,
        realtime_enabled: true,
        ..photographer.clone()
    };
    put_vendor(&admin, serde_json::to_value(&photographer2).unwrap()).await;
    assert_eq!(
        db_count(
            &srv,
            "SELECT count(*) FROM vendor_backup_configs WHERE agent_id IS NULL"
        )
        .await,
        1,
        "PUT is an upsert of the organisation default"
    );
    assert_eq!(nas.policy().await.vendor, Some(photographer2));
    assert_eq!(laptop.policy().await.vendor, Some(videographer));
}

#[tokio::test]
async fn schedules_switch_to_their_wedding_season_cron_in_season() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Season Studio").await;
    let admin = caller(&srv, &org.admin_token);
    let (_, laptop) = enroll(&srv, &org.enroll_token, "laptop").await;
    let t2 = srv.enroll_token(org.organization_id).await;
    let (nas_id, nas) = enroll(&srv, &t2, "nas").await;
    let month = db_today(&srv).await.month();

    let nightly = create(
        &admin,
        "/v1/schedules",
        json!({"name": "nightly", "cron_expression": "0 3 * * *", "wedding_season_cron": "*/30 * * * *"}),
    )
    .await;
    let weekly = create(
        &admin,
        "/v1/schedules",
        json!({"name": "weekly", "cron_expression": "0 4 * * sun", "timezone": "Europe/London",
               "full_scan": false}),
    )
    .await;
    let nas_hourly = create(
        &admin,
        "/v1/schedules",
        json!({"name": "nas hourly", "cron_expression": "0 * * * *", "wedding_season_cron": "*/5 * * * *",
               "agent_id": nas_id}),
    )
    .await;
    let off = create(
        &admin,
        "/v1/schedules",
        json!({"name": "disabled", "cron_expression": "0 0 * * *"}),
    )
    .await;
    owner_exec(
        &srv,
        "UPDATE backup_schedules SET enabled = false WHERE id = $1",
        &[&off],
    )
    .await;
    assert_eq!(
        db_count(&srv, "SELECT count(*) FROM backup_strategies").await,
        1,
        "schedules share one default strategy"
    );

    let sched = |id, name: &str, cron: &str, tz: &str, full_scan| ScheduleRule {
        id,
        name: name.into(),
        cron: cron.into(),
        timezone: tz.into(),
        full_scan,
        source_id: None,
    };

    // In season: the organisation's season is exactly this month.
    set_season(
        &srv,
        org.organization_id,
        json!({"hemisphere": "south", "wedding_season_months": [month]}),
    )
    .await;
    let p = laptop.policy().await;
    assert!(p.in_wedding_season);
    assert_eq!(p.hemisphere, "south");
    assert_eq!(
        p.schedules,
        vec![
            sched(nightly, "nightly", "*/30 * * * *", "UTC", true),
            sched(weekly, "weekly", "0 4 * * sun", "Europe/London", false),
        ]
    );
    let p = nas.policy().await;
    assert!(p.in_wedding_season);
    assert_eq!(
        p.schedules,
        vec![
            sched(nas_hourly, "nas hourly", "*/5 * * * *", "UTC", true),
            sched(nightly, "nightly", "*/30 * * * *", "UTC", true),
            sched(weekly, "weekly", "0 4 * * sun", "Europe/London", false),
        ]
    );

    // Out of season: every month but this one.
    let others: Vec<u32> = (1..=12).filter(|m| *m != month).collect();
    set_season(
        &srv,
        org.organization_id,
        json!({"hemisphere": "south", "wedding_season_months": others}),
    )
    .await;
    let p = laptop.policy().await;
    assert!(!p.in_wedding_season);
    assert_eq!(p.hemisphere, "south");
    assert_eq!(
        p.schedules,
        vec![
            sched(nightly, "nightly", "0 3 * * *", "UTC", true),
            sched(weekly, "weekly", "0 4 * * sun", "Europe/London", false),
        ]
    );
    let crons: Vec<String> = nas
        .policy()
        .await
        .schedules
        .into_iter()
        .map(|s| s.cron)
        .collect();
    assert_eq!(crons, vec!["0 * * * *", "0 3 * * *", "0 4 * * sun"]);

    // Without an explicit month list the hemisphere decides: May–October in the north,
    // November–April in the south; no hemisphere at all means north.
    let north_season = (5..=10).contains(&month);
    for (settings, hemisphere, in_season) in [
        (json!({"hemisphere": "north"}), "north", north_season),
        (json!({"hemisphere": "south"}), "south", !north_season),
        (json!({}), "north", north_season),
    ] {
        set_season(&srv, org.organization_id, settings.clone()).await;
        let p = laptop.policy().await;
        assert_eq!(p.hemisphere, hemisphere, "{settings}");
        assert_eq!(
            p.in_wedding_season, in_season,
            "{settings} in month {month}"
        );
        assert_eq!(
            p.schedules[0].cron,
            if in_season {
                "*/30 * * * *"
            } else {
                "0 3 * * *"
            },
            "{settings}"
        );
    }
}
