//! Policy from the server's side, over real HTTP on 127.0.0.1 with real PostgreSQL: what an agent
//! is told (exclusions by scope, wedding-critical windows, schedules with their wedding-season
//! variant, vendor settings), heartbeats, the admin endpoints that manage the rules — and every
//! refusal: agents managing rules, users reading agent policy, other organisations, bad input.

use chrono::{Datelike, NaiveDate};
use keepsake_common::api::*;
use keepsake_server::testkit::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// An HTTP caller with a bearer token (agent or user), or none.
struct Caller {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Caller {
    /// Sends `body` as JSON (if any); answers the status and the body text.
    async fn call(&self, m: Method, path: &str, body: Option<&Value>) -> (StatusCode, String) {
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        (s, r.text().await.unwrap())
    }

    /// Like [`Caller::call`], the body parsed as JSON (`Null` when empty or not JSON).
    async fn json(&self, m: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let (s, text) = self.call(m, path, body).await;
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /v1/policy`, which must succeed.
    async fn policy(&self) -> AgentPolicy {
        let (s, text) = self.call(Method::GET, "/v1/policy", None).await;
        assert_eq!(s, StatusCode::OK, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("policy {text}: {e}"))
    }
}

fn caller(srv: &TestServer, token: &str) -> Caller {
    Caller {
        base: srv.url(),
        token: Some(token.to_string()),
        http: reqwest::Client::new(),
    }
}

async fn enroll(srv: &TestServer, token: &str, name: &str) -> (Uuid, Caller) {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/enroll", srv.url()))
        .json(
            &json!({"enroll_token": token, "name": name, "hostname": "host", "platform": "linux"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "enrol {name}");
    let e: EnrollResponse = r.json().await.unwrap();
    let agent = Caller {
        base: srv.url(),
        token: Some(e.agent_token),
        http,
    };
    (e.agent_id, agent)
}

async fn source(agent: &Caller, root: &str) -> Uuid {
    let (s, v) = agent
        .json(
            Method::POST,
            "/v1/sources",
            Some(&json!({"root_path": root})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["id"].as_str().unwrap().parse().unwrap()
}

/// POSTs a rule as an admin; it must be created. Answers its id.
async fn create(admin: &Caller, path: &str, body: Value) -> Uuid {
    let (s, v) = admin.json(Method::POST, path, Some(&body)).await;
    assert_eq!(s, StatusCode::CREATED, "{path} {body}: {v}");
    v["id"].as_str().unwrap().parse().unwrap()
}

async fn put_vendor(admin: &Caller, body: Value) {
    let (s, text) = admin
        .call(Method::PUT, "/v1/vendor-config", Some(&body))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}: {text}");
}

async fn db_count(srv: &TestServer, sql: &str) -> i64 {
    srv.db
        .owner()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// Runs one statement as the schema owner.
async fn owner_exec(
    srv: &TestServer,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) {
    srv.db
        .owner()
        .await
        .execute(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The database's today (what `CURRENT_DATE` means to the server's sessions).
async fn db_today(srv: &TestServer) -> NaiveDate {
    srv.db
        .owner()
        .await
        .query_one("SELECT CURRENT_DATE", &[])
        .await
        .unwrap()
        .get(0)
}

/// Replaces the organisation's season settings (`hemisphere`, `wedding_season_months`) as the
/// owner — there is no API for them.
async fn set_season(srv: &TestServer, org: Uuid, season: Value) {
    owner_exec(
        srv,
        "UPDATE organizations SET settings = (settings - 'hemisphere' - 'wedding_season_months') || $2::jsonb \
         WHERE id = $1",
        &[&org, &season],
    )
    .await;
}

/// Row counts of every table the policy endpoints write (to prove a refusal changed nothing).
async fn rule_counts(srv: &TestServer) -> Vec<i64> {
    let row = srv
        .db
        .owner()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM backup_exclusions), (SELECT count(*) FROM wedding_critical_data), \
                    (SELECT count(*) FROM backup_schedules), (SELECT count(*) FROM vendor_backup_configs), \
                    (SELECT count(*) FROM backup_strategies)",
            &[],
        )
        .await
        .unwrap();
    (0..5).map(|i| row.get(i)).collect()
}

fn excl(pattern: &str, scope: &str, source_id: Option<Uuid>) -> ExclusionRule {
    ExclusionRule {
        pattern: pattern.into(),
        scope: scope.into(),
        source_id,
    }
}

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

#[tokio::test]
async fn heartbeats_are_stored_on_the_calling_agent() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Heartbeat Studio").await;
    let (laptop_id, laptop) = enroll(&srv, &org.enroll_token, "laptop").await;
    let t2 = srv.enroll_token(org.organization_id).await;
    let (nas_id, _nas) = enroll(&srv, &t2, "nas").await;
    owner_exec(
        &srv,
        "UPDATE agents SET last_seen_at = now() - interval '3 days'",
        &[],
    )
    .await;

    let stored = |id: Uuid| {
        let srv = &srv;
        async move {
            let r = srv
                .db
                .owner()
                .await
                .query_one(
                    "SELECT last_heartbeat, last_seen_at > now() - interval '1 minute' FROM agents WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (r.get::<_, Option<Value>>(0), r.get::<_, bool>(1))
        }
    };

    let hb = Heartbeat {
        state: "backing_up".into(),
        queue_critical: 12,
        queue_normal: 3400,
        last_success_at: Some("2025-06-14T18:30:00Z".parse().unwrap()),
        recovery_point_age_seconds: Some(95),
        last_error: Some("disk full on /Volumes/Card".into()),
        agent_version: "0.1.0".into(),
    };
    let (s, text) = laptop
        .call(
            Method::POST,
            "/v1/heartbeat",
            Some(&serde_json::to_value(&hb).unwrap()),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
    let (doc, fresh) = stored(laptop_id).await;
    let doc = doc.expect("last_heartbeat stored");
    assert_eq!(
        serde_json::from_value::<Heartbeat>(doc.clone()).unwrap(),
        hb
    );
    assert_eq!(doc["queue_critical"], 12);
    assert_eq!(doc["last_error"], "disk full on /Volumes/Card");
    assert!(fresh, "last_seen_at moves to now");
    // The other machine is untouched.
    assert_eq!(stored(nas_id).await, (None, false));

    // The next heartbeat replaces the document (the error is gone).
    let hb2 = Heartbeat {
        state: "idle".into(),
        queue_critical: 0,
        queue_normal: 0,
        last_error: None,
        ..hb.clone()
    };
    let (s, text) = laptop
        .call(
            Method::POST,
            "/v1/heartbeat",
            Some(&serde_json::to_value(&hb2).unwrap()),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
    let doc = stored(laptop_id).await.0.unwrap();
    assert_eq!(
        serde_json::from_value::<Heartbeat>(doc.clone()).unwrap(),
        hb2
    );
    assert_eq!(doc["last_error"], Value::Null);

    // A malformed heartbeat is refused and changes nothing.
    let (s, text) = laptop
        .call(
            Method::POST,
            "/v1/heartbeat",
            Some(&json!({"state": "idle", "queue_critical": -1})),
        )
        .await;
    assert!(s.is_client_error(), "{s} {text}");
    assert_eq!(
        serde_json::from_value::<Heartbeat>(stored(laptop_id).await.0.unwrap()).unwrap(),
        hb2
    );

    // A heartbeat is a status line: a huge error text is cut, not stored whole.
    let hb3 = Heartbeat {
        last_error: Some("é".repeat(50_000)),
        ..hb2.clone()
    };
    let (s, text) = laptop
        .call(
            Method::POST,
            "/v1/heartbeat",
            Some(&serde_json::to_value(&hb3).unwrap()),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
    let doc = stored(laptop_id).await.0.unwrap();
    let kept = doc["last_error"].as_str().unwrap();
    assert!(
        kept.len() <= 2000 && kept.len() >= 1998,
        "{} bytes kept",
        kept.len()
    );
}

#[tokio::test]
async fn agents_cannot_manage_rules_and_users_cannot_act_as_agents() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Roles Studio").await;
    let admin = caller(&srv, &org.admin_token);
    let (agent_id, agent) = enroll(&srv, &org.enroll_token, "laptop").await;
    let excl_id = create(&admin, "/v1/exclusions", json!({"pattern": "*.tmp"})).await;
    create(
        &admin,
        "/v1/schedules",
        json!({"name": "nightly", "cron_expression": "0 3 * * *"}),
    )
    .await;
    put_vendor(
        &admin,
        json!({"supplier_type": "photographer", "settle_window_seconds": 60}),
    )
    .await;
    let before = rule_counts(&srv).await;

    // A member (not an admin) of the organisation.
    let member_user: Uuid = srv
        .db
        .owner()
        .await
        .query_one(
            "INSERT INTO auth.users (email) VALUES ('assistant@roles.example') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    owner_exec(
        &srv,
        "INSERT INTO user_profiles (user_id, organization_id, role) VALUES ($1, $2, 'member')",
        &[&member_user, &org.organization_id],
    )
    .await;
    let (s, v) = admin
        .json(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"user_email": "assistant@roles.example"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let member = caller(&srv, v["token"].as_str().unwrap());
    let anonymous = Caller {
        base: srv.url(),
        token: None,
        http: reqwest::Client::new(),
    };

    let today = db_today(&srv).await;
    let writes: Vec<(Method, String, Value)> = vec![
        (
            Method::POST,
            "/v1/exclusions".into(),
            json!({"pattern": "*.psd", "agent_id": agent_id}),
        ),
        (
            Method::POST,
            "/v1/wedding-critical".into(),
            json!({"wedding_name": "Mine", "wedding_date": today, "path_patterns": ["x/**"]}),
        ),
        (
            Method::POST,
            "/v1/schedules".into(),
            json!({"name": "every minute", "cron_expression": "* * * * *"}),
        ),
        (
            Method::PUT,
            "/v1/vendor-config".into(),
            json!({"supplier_type": "photographer", "settle_window_seconds": 0}),
        ),
        (
            Method::DELETE,
            format!("/v1/exclusions/{excl_id}"),
            Value::Null,
        ),
    ];
    for (m, path, body) in &writes {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = agent.json(m.clone(), path, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "agent {m} {path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("users"), "{v}");
        let (s, v) = member.json(m.clone(), path, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "member {m} {path}: {v}");
        assert!(v["error"].as_str().unwrap().contains("admin"), "{v}");
        let (s, v) = anonymous.json(m.clone(), path, body).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "anonymous {m} {path}: {v}");
    }
    assert_eq!(rule_counts(&srv).await, before, "refusals change nothing");
    let settle: i32 = srv
        .db
        .owner()
        .await
        .query_one(
            "SELECT settle_window_seconds FROM vendor_backup_configs",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(settle, 60);

    // Policy and heartbeats are for agents only.
    for who in [&admin, &member] {
        let (s, v) = who.json(Method::GET, "/v1/policy", None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert!(v["error"].as_str().unwrap().contains("agents"), "{v}");
        let hb = serde_json::to_value(Heartbeat {
            state: "idle".into(),
            agent_version: "0.1.0".into(),
            ..Heartbeat::default()
        })
        .unwrap();
        let (s, v) = who.json(Method::POST, "/v1/heartbeat", Some(&hb)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }
    assert_eq!(
        anonymous.json(Method::GET, "/v1/policy", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        db_count(
            &srv,
            "SELECT count(*) FROM agents WHERE last_heartbeat IS NOT NULL"
        )
        .await,
        0
    );
    // The agent itself still reads its policy.
    assert_eq!(
        agent.policy().await.exclusions,
        vec![excl("*.tmp", "organization", None)]
    );
}

#[tokio::test]
async fn organisations_cannot_see_or_touch_each_others_rules() {
    let srv = TestServer::start().await;
    let a_org = srv.create_org("Org A").await;
    let b_org = srv.create_org("Org B").await;
    let a_admin = caller(&srv, &a_org.admin_token);
    let b_admin = caller(&srv, &b_org.admin_token);
    let (a_agent_id, a_agent) = enroll(&srv, &a_org.enroll_token, "a-laptop").await;
    let (_, b_agent) = enroll(&srv, &b_org.enroll_token, "b-laptop").await;

    let a_rule = create(&a_admin, "/v1/exclusions", json!({"pattern": "*.tmp"})).await;
    create(
        &a_admin,
        "/v1/schedules",
        json!({"name": "a nightly", "cron_expression": "0 3 * * *"}),
    )
    .await;
    create(
        &a_admin,
        "/v1/wedding-critical",
        json!({"wedding_name": "A wedding", "wedding_date": db_today(&srv).await,
               "path_patterns": ["A/**"]}),
    )
    .await;
    put_vendor(
        &a_admin,
        json!({"supplier_type": "venue", "settle_window_seconds": 10}),
    )
    .await;
    let before = rule_counts(&srv).await;

    // B's admin cannot delete A's rule: not found, and the rule stays.
    let (s, v) = b_admin
        .json(Method::DELETE, &format!("/v1/exclusions/{a_rule}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Nor attach rules to A's machine.
    for (path, body) in [
        (
            "/v1/exclusions",
            json!({"pattern": "*", "agent_id": a_agent_id}),
        ),
        (
            "/v1/schedules",
            json!({"name": "x", "cron_expression": "* * * * *", "agent_id": a_agent_id}),
        ),
        (
            "/v1/wedding-critical",
            json!({"wedding_name": "x", "wedding_date": "2030-01-01", "path_patterns": ["**"],
                   "agent_id": a_agent_id}),
        ),
    ] {
        let (s, v) = b_admin.json(Method::POST, path, Some(&body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
    }
    // The failed schedule's transaction also rolled back B's default strategy.
    assert_eq!(rule_counts(&srv).await, before, "nothing changed");
    assert_eq!(
        a_agent.policy().await.exclusions,
        vec![excl("*.tmp", "organization", None)]
    );

    // B's machine gets none of A's configuration.
    let p = b_agent.policy().await;
    assert!(p.exclusions.is_empty(), "{p:?}");
    assert!(p.critical.is_empty(), "{p:?}");
    assert!(p.schedules.is_empty(), "{p:?}");
    assert_eq!(p.vendor, None);

    // Each organisation's season is its own.
    let month = db_today(&srv).await.month();
    set_season(
        &srv,
        a_org.organization_id,
        json!({"hemisphere": "south", "wedding_season_months": [month]}),
    )
    .await;
    let others: Vec<u32> = (1..=12).filter(|m| *m != month).collect();
    set_season(
        &srv,
        b_org.organization_id,
        json!({"wedding_season_months": others}),
    )
    .await;
    let (pa, pb) = (a_agent.policy().await, b_agent.policy().await);
    assert!(pa.in_wedding_season && !pb.in_wedding_season);
    assert_eq!(
        (pa.hemisphere.as_str(), pb.hemisphere.as_str()),
        ("south", "north")
    );
}

#[tokio::test]
async fn invalid_rules_are_refused_with_clear_messages() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Strict Studio").await;
    let admin = caller(&srv, &org.admin_token);
    let (agent_id, _agent) = enroll(&srv, &org.enroll_token, "laptop").await;
    let before = rule_counts(&srv).await;

    // (path, method, body, status, a word the message must contain)
    let cases: Vec<(&str, Method, Value, StatusCode, &str)> = vec![
        (
            "/v1/schedules",
            Method::POST,
            json!({"name": "bad", "cron_expression": "61 * * * *"}),
            StatusCode::BAD_REQUEST,
            "cron",
        ),
        (
            "/v1/schedules",
            Method::POST,
            json!({"name": "bad", "cron_expression": "every night"}),
            StatusCode::BAD_REQUEST,
            "cron",
        ),
        (
            "/v1/schedules",
            Method::POST,
            json!({"name": "bad", "cron_expression": "0 3 * * *", "wedding_season_cron": "0 3 * *"}),
            StatusCode::BAD_REQUEST,
            "cron",
        ),
        (
            "/v1/schedules",
            Method::POST,
            json!({"name": "bad", "cron_expression": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}),
            StatusCode::BAD_REQUEST,
            "timezone",
        ),
        (
            "/v1/exclusions",
            Method::POST,
            json!({"pattern": ""}),
            StatusCode::BAD_REQUEST,
            "pattern",
        ),
        (
            "/v1/exclusions",
            Method::POST,
            json!({"pattern": "   ", "agent_id": agent_id}),
            StatusCode::BAD_REQUEST,
            "pattern",
        ),
        (
            "/v1/exclusions",
            Method::POST,
            json!({"pattern": "# a comment"}),
            StatusCode::BAD_REQUEST,
            "pattern",
        ),
        (
            "/v1/exclusions",
            Method::POST,
            json!({"pattern": "*.tmp", "scope": "organization"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `scope`",
        ),
        (
            "/v1/schedules",
            Method::POST,
            json!({"name": "x", "cron_expression": "0 3 * * *", "cron": "0 3 * * *"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `cron`",
        ),
        (
            "/v1/wedding-critical",
            Method::POST,
            json!({"wedding_name": "x", "wedding_date": "2030-06-01", "path_patterns": ["a/**"],
                   "window_days": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `window_days`",
        ),
        (
            "/v1/wedding-critical",
            Method::POST,
            json!({"wedding_name": "x", "wedding_date": "2030-06-01", "path_patterns": []}),
            StatusCode::BAD_REQUEST,
            "path_patterns",
        ),
        (
            "/v1/wedding-critical",
            Method::POST,
            json!({"wedding_name": "x", "wedding_date": "2030-06-01", "path_patterns": ["a/**"],
                   "priority": 9}),
            StatusCode::BAD_REQUEST,
            "priority",
        ),
        (
            "/v1/vendor-config",
            Method::PUT,
            json!({"supplier_type": "florist", "settle_window_seconds": 60}),
            StatusCode::BAD_REQUEST,
            "florist",
        ),
        (
            "/v1/vendor-config",
            Method::PUT,
            json!({"supplier_type": "photographer", "settle_window_seconds": 60,
                   "schedule_window_start": "22:00"}),
            StatusCode::BAD_REQUEST,
            "window",
        ),
        (
            "/v1/vendor-config",
            Method::PUT,
            json!({"supplier_type": "photographer", "settle_window_seconds": 60,
                   "schedule_window_start": "25:00", "schedule_window_end": "06:00"}),
            StatusCode::BAD_REQUEST,
            "25:00",
        ),
        (
            "/v1/vendor-config",
            Method::PUT,
            json!({"supplier_type": "photographer", "settle_window_seconds": 4_294_967_295u64}),
            StatusCode::BAD_REQUEST,
            "settle_window_seconds",
        ),
        (
            // A misspelt machine id must not change every machine's settings.
            "/v1/vendor-config",
            Method::PUT,
            json!({"supplier_type": "photographer", "settle_window_seconds": 60,
                   "agent": "00000000-0000-0000-0000-000000000000"}),
            StatusCode::BAD_REQUEST,
            "unknown field `agent`",
        ),
        (
            "/v1/vendor-config",
            Method::PUT,
            json!({"supplier_type": "photographer", "settle_window_seconds": 60,
                   "agent_id": "not-a-uuid"}),
            StatusCode::BAD_REQUEST,
            "agent_id",
        ),
    ];
    for (path, m, body, status, word) in cases {
        let (s, text) = admin.call(m.clone(), path, Some(&body)).await;
        assert_eq!(s, status, "{m} {path} {body}: {text}");
        // Handler errors are JSON `{"error": ...}`; body rejections are axum's plain text.
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        assert!(
            message.contains(word),
            "{m} {path} {body}: message {message:?} does not mention {word:?}"
        );
    }
    assert_eq!(rule_counts(&srv).await, before, "nothing was stored");
}

#[tokio::test]
async fn a_deleted_exclusion_leaves_the_next_policy() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Delete Studio").await;
    let admin = caller(&srv, &org.admin_token);
    let (agent_id, agent) = enroll(&srv, &org.enroll_token, "laptop").await;
    let tmp = create(&admin, "/v1/exclusions", json!({"pattern": "*.tmp"})).await;
    let previews = create(
        &admin,
        "/v1/exclusions",
        json!({"pattern": "Previews/", "agent_id": agent_id}),
    )
    .await;
    assert_eq!(
        agent.policy().await.exclusions,
        vec![
            excl("*.tmp", "organization", None),
            excl("Previews/", "agent", None)
        ]
    );

    let (s, text) = admin
        .call(Method::DELETE, &format!("/v1/exclusions/{tmp}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
    assert_eq!(
        agent.policy().await.exclusions,
        vec![excl("Previews/", "agent", None)]
    );
    let (s, text) = admin
        .call(Method::DELETE, &format!("/v1/exclusions/{previews}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{text}");
    assert!(agent.policy().await.exclusions.is_empty());
    assert_eq!(
        db_count(&srv, "SELECT count(*) FROM backup_exclusions").await,
        0
    );
    // The deletion is audited with who did it.
    assert_eq!(
        db_count(
            &srv,
            "SELECT count(*) FROM backup_audit_trail WHERE resource_type = 'backup_exclusions' \
             AND action = 'delete' AND actor = 'user' AND user_id IS NOT NULL"
        )
        .await,
        2
    );

    // Deleting again, or something that never existed: not found; a malformed id: bad request.
    for id in [tmp, Uuid::new_v4()] {
        let (s, v) = admin
            .json(Method::DELETE, &format!("/v1/exclusions/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        assert!(v["error"].as_str().unwrap().contains("exclusion"), "{v}");
    }
    let (s, _) = admin
        .call(Method::DELETE, "/v1/exclusions/not-a-uuid", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// The first schedules of an organisation create its default strategy; racing requests must all
/// succeed and share one (they used to fail with 409 on the strategy's unique name).
#[tokio::test]
async fn concurrent_first_schedules_all_succeed_with_one_strategy() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Race Studio").await;
    let admin = caller(&srv, &org.admin_token);
    let bodies: Vec<Value> = (0..8)
        .map(|i| json!({"name": format!("scan {i}"), "cron_expression": "0 3 * * *"}))
        .collect();
    let results = futures::future::join_all(
        bodies
            .iter()
            .map(|b| admin.json(Method::POST, "/v1/schedules", Some(b))),
    )
    .await;
    for (s, v) in &results {
        assert_eq!(*s, StatusCode::CREATED, "{v}");
    }
    assert_eq!(
        db_count(&srv, "SELECT count(*) FROM backup_strategies").await,
        1
    );
    assert_eq!(
        db_count(&srv, "SELECT count(*) FROM backup_schedules").await,
        8
    );
}
