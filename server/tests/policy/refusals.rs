//! Every refusal of the policy endpoints: agents cannot manage rules and users cannot act as
//! agents, organisations cannot see or touch each other's rules, and invalid rules are refused
//! with clear messages — each leaving the stored rules unchanged.

use crate::support::*;
use chrono::Datelike;
use keepsake_common::api::*;
use keepsake_server::testkit::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

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
