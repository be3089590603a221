//! Heartbeats: stored on the calling agent (and only there), each replacing the last, the
//! malformed ones refused and a huge error text cut to a status line.

use crate::support::*;
use keepsake_common::api::*;
use keepsake_server::testkit::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

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
