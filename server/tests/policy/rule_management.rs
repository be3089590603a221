//! Managing rules: a deleted exclusion leaves the next policy (and the deletion is audited), and
//! concurrent first schedules all succeed with one default strategy.

use crate::support::*;
use keepsake_server::testkit::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

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
