//! Emergency recovery: emergency jobs notify the emergency contacts and jump the queue, and
//! emergency contacts request and see only emergency jobs.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test]
async fn emergency_jobs_notify_contacts_and_jump_the_queue() {
    let s = Studio::new("Urgent Studio").await;
    add_contacts(&s.srv, s.org_id()).await;
    let normal = s.full_job(s.laptop_id).await;
    let (st, v) = s
        .admin
        .post(
            "/v1/recovery-jobs",
            &json!({"recovery_type": "emergency_recovery", "recovery_point_id": s.p1,
                    "path_prefixes": ["2025/Smith"],
                    "target_agent_id": s.laptop_id, "target_directory": "/Urgent"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let urgent = uuid_of(&v["id"]);

    let owner = s.srv.db.owner().await;
    let rows = owner
        .query(
            "SELECT notification_type, severity::text, message, metadata, delivery_status \
             FROM emergency_notifications WHERE organization_id = $1",
            &[&s.org_id()],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "one notification, for the emergency job only"
    );
    let r = &rows[0];
    assert_eq!(r.get::<_, String>(0), "emergency_recovery");
    assert_eq!(r.get::<_, String>(1), "critical");
    let message: String = r.get(2);
    assert!(message.contains(&urgent.to_string()), "{message}");
    assert!(message.contains("laptop:/Urgent"), "{message}");
    assert_eq!(r.get::<_, String>(4), "pending");
    let meta: Value = r.get(3);
    assert_eq!(uuid_of(&meta["recovery_job_id"]), urgent);
    let names: Vec<&str> = meta["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["Second Shooter", "Best Friend"],
        "active contacts, by priority"
    );
    assert_eq!(meta["contacts"][0]["phone"], "+44 20 1234 5678");
    assert_eq!(meta["contacts"][1]["email"], "bf@contacts.example");
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM emergency_notifications WHERE recovery_job_id = $1",
            &[&normal]
        )
        .await,
        0
    );

    // The emergency job was requested later but is claimed first.
    assert_eq!(claim(&s.laptop, 600).await.unwrap().id, urgent);
    assert_eq!(claim(&s.laptop, 600).await.unwrap().id, normal);
    assert!(claim(&s.laptop, 600).await.is_none());
}

#[tokio::test]
async fn emergency_contacts_request_and_see_only_emergency_jobs() {
    let s = Studio::new("Contact Studio").await;
    let normal = s.full_job(s.laptop_id).await;
    let ec = user_with_role(
        &s.srv,
        &s.admin,
        s.org_id(),
        "friend@contact.example",
        "emergency_contact",
    )
    .await;
    let member = user_with_role(
        &s.srv,
        &s.admin,
        s.org_id(),
        "assistant@contact.example",
        "member",
    )
    .await;

    let body = |t: &str| {
        json!({"recovery_type": t, "source_id": s.source,
               "target_agent_id": s.laptop_id, "target_directory": "/Restore"})
    };
    for t in [
        "full_recovery",
        "partial_recovery",
        "point_in_time_recovery",
    ] {
        let (st, v) = ec.post("/v1/recovery-jobs", &body(t)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{t}: {v}");
        assert!(v["error"].as_str().unwrap().contains("emergency"), "{v}");
    }
    assert_eq!(s.jobs_in_db().await, 1);
    let (st, v) = ec
        .post("/v1/recovery-jobs", &body("emergency_recovery"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let urgent = uuid_of(&v["id"]);
    assert!(v["is_emergency"].as_bool().unwrap());

    let (st, list) = ec.get("/v1/recovery-jobs").await;
    assert_eq!(st, StatusCode::OK);
    let ids: Vec<Uuid> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| uuid_of(&j["id"]))
        .collect();
    assert_eq!(
        ids,
        vec![urgent],
        "an emergency contact sees the emergency jobs only"
    );
    let (st, _) = ec.get(&format!("/v1/recovery-jobs/{normal}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(detail(&ec, urgent).await.job.id, urgent);
    // Members see everything and may request any type.
    let (_, list) = member.get("/v1/recovery-jobs").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (st, v) = member
        .post("/v1/recovery-jobs", &body("full_recovery"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // Nobody but admins and owners cancels.
    for who in [&ec, &member] {
        let (st, v) = who
            .post(&format!("/v1/recovery-jobs/{urgent}/cancel"), &json!({}))
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    }
}
