//! Requesting recovery jobs: jobs of every type resolve their recovery point, and invalid
//! requests are refused and create nothing.

use crate::support::*;
use keepsake_common::api::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

#[tokio::test]
async fn jobs_of_every_type_resolve_their_recovery_point() {
    let s = Studio::new("Resolve Studio").await;
    let target = s.laptop_id;
    let create = |body: Value| {
        let admin = s.admin.clone();
        async move { admin.post("/v1/recovery-jobs", &body).await }
    };

    // Full: the source alone means its newest point.
    let (st, v) = create(json!({"recovery_type": "full_recovery", "source_id": s.source,
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let full: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert_eq!(full.recovery_type, RecoveryType::FullRecovery);
    assert_eq!(full.recovery_point_id, Some(s.p2));
    assert_eq!(full.source_id, Some(s.source));
    assert_eq!(full.status, "queued");
    assert_eq!(full.target_agent_id, Some(target));
    assert_eq!(full.target_directory.as_deref(), Some("/Users/ana/Restore"));
    assert!(!full.overwrite && !full.is_emergency);
    assert!(full.path_prefixes.is_empty());
    assert_eq!((full.progress_percentage, full.attempts), (0, 0));
    assert_eq!(full.started_at, None, "not started before it is claimed");

    // Partial: a given point, folders (a trailing '/' is dropped), overwrite.
    let (st, v) = create(json!({"recovery_type": "partial_recovery", "recovery_point_id": s.p1,
                                 "path_prefixes": ["2025/Smith/", "2025/Jones"], "overwrite": true,
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let partial: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert_eq!(partial.recovery_point_id, Some(s.p1));
    assert_eq!(partial.path_prefixes, vec!["2025/Smith", "2025/Jones"]);
    assert!(partial.overwrite);

    // File: exactly one path; a point id with its source is accepted.
    let (st, v) = create(json!({"recovery_type": "file_recovery", "recovery_point_id": s.p1, "source_id": s.source,
                                 "path_prefixes": ["2025/Smith/IMG_0001.CR3"],
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(uuid_of(&v["recovery_point_id"]), s.p1);

    // Point in time: the newest point at or before the time.
    let mid = midpoint(s.t1, s.t2);
    for (at, expected) in [
        (mid, s.p1),
        (s.t1, s.p1),
        (s.t2, s.p2),
        (s.t2 + chrono::Duration::days(1), s.p2),
    ] {
        let (st, v) = create(
            json!({"recovery_type": "point_in_time_recovery", "source_id": s.source,
                                     "point_in_time": at, "target_agent_id": target,
                                     "target_directory": "/Users/ana/Restore"}),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(uuid_of(&v["recovery_point_id"]), expected, "at {at}");
        assert_eq!(
            time_of(&v["point_in_time"]),
            at,
            "the requested time is kept"
        );
    }
    let before = s.jobs_in_db().await;
    let (st, v) = create(json!({"recovery_type": "point_in_time_recovery", "source_id": s.source,
                                 "point_in_time": s.t1 - chrono::Duration::minutes(1),
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at or before"), "{v}");
    let (st, v) = create(json!({"recovery_type": "point_in_time_recovery", "source_id": s.source,
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "a point-in-time recovery needs a time: {v}"
    );
    assert_eq!(s.jobs_in_db().await, before);

    // Emergency.
    let (st, v) = create(json!({"recovery_type": "emergency_recovery", "source_id": s.source,
                                 "path_prefixes": ["2025/Brown"], "notes": "client delivery tomorrow",
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let emergency: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert!(emergency.is_emergency);
    assert_eq!(emergency.recovery_point_id, Some(s.p2));

    // Listed newest first; each one readable with (still empty) log and validations.
    let (st, list) = s.admin.get("/v1/recovery-jobs").await;
    assert_eq!(st, StatusCode::OK);
    let list: Vec<RecoveryJobInfo> = serde_json::from_value(list).unwrap();
    assert_eq!(list.len(), 8);
    assert_eq!(list[0].id, emergency.id);
    assert_eq!(list[7].id, full.id);
    let (_, queued) = s.admin.get("/v1/recovery-jobs?status=queued&limit=3").await;
    assert_eq!(queued.as_array().unwrap().len(), 3);
    let d = detail(&s.admin, partial.id).await;
    assert_eq!(d.job, partial);
    assert!(d.logs.is_empty() && d.validations.is_empty());
    let (st, _) = s
        .admin
        .get(&format!("/v1/recovery-jobs/{}", Uuid::new_v4()))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_jobs WHERE initiated_by = $1 AND target_location = 'laptop:/Users/ana/Restore'",
            &[&s.org.admin_user_id]
        )
        .await,
        8
    );
}

#[tokio::test]
async fn invalid_requests_are_refused_and_create_nothing() {
    let s = Studio::new("Strict Studio").await;
    let other = s.srv.create_org("Other Studio").await;
    let (other_agent, other_laptop) = enroll(&s.srv, &other.enroll_token, "their-laptop").await;
    let other_source = register_source(&other_laptop, "/Users/them/Shoots").await;
    let (other_point, _) = commit_files(&other_laptop, &s.keys, other_source, &["x.jpg"]).await;
    let (spare, _) = s.machine("spare").await;
    let (st, _) = s
        .admin
        .post(&format!("/v1/agents/{spare}/revoke"), &json!({}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    let base = json!({"recovery_type": "full_recovery", "source_id": s.source,
                      "target_agent_id": s.laptop_id, "target_directory": "/Restore"});
    let with = |changes: Value| {
        let mut b = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let cases: Vec<(&str, Value, StatusCode)> = vec![
        (
            "relative target directory",
            with(json!({"target_directory": "Restore"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "'..' prefix",
            with(json!({"recovery_type": "partial_recovery", "path_prefixes": ["2025/../etc"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "absolute prefix",
            with(json!({"recovery_type": "partial_recovery", "path_prefixes": ["/etc"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "file recovery with two paths",
            with(json!({"recovery_type": "file_recovery",
            "path_prefixes": ["2025/Smith/IMG_0001.CR3", "2025/Smith/IMG_0002.CR3"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "partial without prefixes",
            with(json!({"recovery_type": "partial_recovery"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "full with prefixes",
            with(json!({"path_prefixes": ["2025"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a prefix that is not in the point",
            with(json!({"recovery_type": "partial_recovery",
            "recovery_point_id": s.p1, "source_id": null, "path_prefixes": ["2025/Brown"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another organisation's machine",
            with(json!({"target_agent_id": other_agent})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an unknown machine",
            with(json!({"target_agent_id": Uuid::new_v4()})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a revoked machine",
            with(json!({"target_agent_id": spare})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another organisation's point",
            with(json!({"recovery_point_id": other_point, "source_id": null})),
            StatusCode::NOT_FOUND,
        ),
        (
            "another organisation's source",
            with(json!({"source_id": other_source})),
            StatusCode::NOT_FOUND,
        ),
        (
            "a point of another source",
            with(json!({"recovery_point_id": s.p1, "source_id": other_source})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "point and time",
            with(json!({"recovery_point_id": s.p1, "point_in_time": s.t2})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "nothing to restore",
            with(json!({"source_id": null})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, body, expected) in cases {
        let (st, v) = s.admin.post("/v1/recovery-jobs", &body).await;
        assert_eq!(st, expected, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
    }
    // Agents do not request restores.
    let (st, v) = s.laptop.post("/v1/recovery-jobs", &base).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(s.jobs_in_db().await, 0);
    assert_eq!(
        count(&s.srv, "SELECT count(*) FROM recovery_jobs", &[]).await,
        0
    );
    // And the base request itself is fine.
    let (st, v) = s.admin.post("/v1/recovery-jobs", &base).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}
