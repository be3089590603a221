//! Restore drills (recorded as finished file recoveries) and disaster scenarios: every
//! organisation has the four predefined ones, and starting one restores the lost machine.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::*;
use chrono::Utc;
use keepsake_common::api::*;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn restore_drills_are_recorded_as_finished_file_recoveries() {
    let s = Studio::new("Drill Studio").await;
    let started = Utc::now() - chrono::Duration::minutes(2);
    let (st, v) = s
        .laptop
        .post(
            "/v1/recovery-drills",
            &json!({"recovery_point_id": s.p2, "started_at": started, "files_restored": 5,
                    "bytes_restored": 5000, "validation": validation(5, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let ok: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert_eq!(ok.recovery_type, RecoveryType::FileRecovery);
    assert_eq!(ok.status, "completed");
    assert_eq!(ok.verification_passed, Some(true));
    assert_eq!(ok.progress_percentage, 100);
    assert_eq!(ok.target_agent_id, Some(s.laptop_id));
    assert_eq!(ok.recovery_point_id, Some(s.p2));

    let (st, v) = s
        .laptop
        .post(
            "/v1/recovery-drills",
            &json!({"recovery_point_id": s.p1, "started_at": started, "files_restored": 3,
                    "bytes_restored": 300, "validation": validation(3, 2, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["verification_passed"], false);

    let (st, _) = s
        .laptop
        .post(
            "/v1/recovery-drills",
            &json!({"recovery_point_id": Uuid::new_v4(), "started_at": started, "files_restored": 1,
                    "bytes_restored": 1, "validation": validation(1, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .admin
        .post(
            "/v1/recovery-drills",
            &json!({"recovery_point_id": s.p2, "started_at": started, "files_restored": 1,
                    "bytes_restored": 1, "validation": validation(1, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let org = s.org_id();
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_jobs WHERE organization_id = $1 AND notes = 'restore drill' \
             AND target_agent_id IS NOT NULL AND recovery_type = 'file_recovery'",
            &[&org]
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_validations WHERE organization_id = $1",
            &[&org]
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &s.srv,
            "SELECT total_recoveries FROM recovery_time_analytics WHERE organization_id = $1 AND recovery_type = 'file_recovery'",
            &[&org]
        )
        .await,
        1
    );
    // A drill is never handed out as work.
    assert!(claim(&s.laptop, 60).await.is_none());
    let d = detail(&s.admin, ok.id).await;
    assert_eq!(d.logs.len(), 1);
    assert_eq!(d.logs[0].step, "drill");
}

#[tokio::test]
async fn every_organisation_has_the_four_predefined_scenarios() {
    let s = Studio::new("Prepared Studio").await;
    let (st, v) = s.admin.get("/v1/disaster-scenarios").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let list: Vec<DisasterScenarioInfo> = serde_json::from_value(v).unwrap();
    let by_name: BTreeMap<&str, &DisasterScenarioInfo> =
        list.iter().map(|sc| (sc.name.as_str(), sc)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        vec![
            "Laptop stolen at a venue",
            "NAS disk failure",
            "Primary storage outage",
            "Ransomware on the studio machine"
        ]
    );
    for (name, kind, rtype) in [
        (
            "Laptop stolen at a venue",
            "device_theft",
            RecoveryType::EmergencyRecovery,
        ),
        (
            "NAS disk failure",
            "hardware_failure",
            RecoveryType::FullRecovery,
        ),
        (
            "Ransomware on the studio machine",
            "ransomware",
            RecoveryType::PointInTimeRecovery,
        ),
        (
            "Primary storage outage",
            "destination_outage",
            RecoveryType::FullRecovery,
        ),
    ] {
        let sc = by_name[name];
        assert_eq!(sc.scenario_kind, kind);
        assert_eq!(sc.recovery_type, rtype, "{name}");
        assert!(sc.expected_rto_seconds.unwrap() > 0, "{name}");
        assert!(sc.expected_rpo_seconds.is_some(), "{name}");
        assert!(
            sc.description.as_deref().is_some_and(|d| d.len() > 40),
            "{name}"
        );
        let steps = sc.steps.as_array().unwrap();
        assert!(steps.len() >= 4, "{name}");
        for step in steps {
            for key in ["title", "instructions", "role"] {
                assert!(
                    step[key].as_str().is_some_and(|t| !t.is_empty()),
                    "{name}: {step}"
                );
            }
            let role = step["role"].as_str().unwrap();
            assert!(
                sc.responsible_roles.iter().any(|r| r == role),
                "{name}: step role {role} is not responsible"
            );
        }
        assert!(sc.responsible_roles.iter().any(|r| r == "owner"));
    }
    assert!(by_name["Laptop stolen at a venue"]
        .responsible_roles
        .iter()
        .any(|r| r == "emergency_contact"));

    // A second organisation, created later, has its own four.
    let other = s.srv.create_org("Later Studio").await;
    let (_, v) = Client::new(&s.srv.url(), &other.admin_token)
        .get("/v1/disaster-scenarios")
        .await;
    let theirs: Vec<DisasterScenarioInfo> = serde_json::from_value(v).unwrap();
    assert_eq!(theirs.len(), 4);
    assert!(theirs.iter().all(|t| list.iter().all(|m| m.id != t.id)));
    // Emergency contacts read them; agents do not.
    let ec = user_with_role(
        &s.srv,
        &s.admin,
        s.org_id(),
        "ec@prepared.example",
        "emergency_contact",
    )
    .await;
    let (st, v) = ec.get("/v1/disaster-scenarios").await;
    assert_eq!((st, v.as_array().map(Vec::len)), (StatusCode::OK, Some(4)));
    let (st, _) = s.laptop.get("/v1/disaster-scenarios").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn starting_a_scenario_restores_the_lost_machine() {
    let s = Studio::new("Venue Studio").await;
    add_contacts(&s.srv, s.org_id()).await;
    let editing = register_source(&s.laptop, "/Users/ana/Editing").await;
    let (p_edit, _) = commit_files(&s.laptop, &s.keys, editing, &["Smith/edit.psd"]).await;
    let (spare_id, spare) = s.machine("spare").await;
    // The laptop is stolen: cut it off first.
    let (st, _) = s
        .admin
        .post(&format!("/v1/agents/{}/revoke", s.laptop_id), &json!({}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    let (_, v) = s.admin.get("/v1/disaster-scenarios").await;
    let list: Vec<DisasterScenarioInfo> = serde_json::from_value(v).unwrap();
    let id_of = |name: &str| list.iter().find(|sc| sc.name == name).unwrap().id;
    let stolen = format!(
        "/v1/disaster-scenarios/{}/start",
        id_of("Laptop stolen at a venue")
    );
    let ransomware = format!(
        "/v1/disaster-scenarios/{}/start",
        id_of("Ransomware on the studio machine")
    );
    let body = json!({"target_agent_id": spare_id, "target_directory": "/Volumes/Spare/Restore",
                      "lost_agent_id": s.laptop_id});

    let member = user_with_role(&s.srv, &s.admin, s.org_id(), "m@venue.example", "member").await;
    let (st, v) = member.post(&stolen, &body).await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a member is not responsible: {v}"
    );
    let (st, v) = s
        .admin
        .post(
            &stolen,
            &json!({"target_agent_id": spare_id, "target_directory": "/Volumes/Spare/Restore"}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "the lost machine must be named: {v}"
    );
    let (st, v) = s
        .admin
        .post(
            &stolen,
            &json!({"target_agent_id": s.laptop_id, "target_directory": "/Restore",
                               "lost_agent_id": s.laptop_id}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "the stolen laptop cannot restore: {v}"
    );
    let (st, v) = s
        .admin
        .post(
            &stolen,
            &json!({"target_agent_id": spare_id, "target_directory": "Restore",
                               "lost_agent_id": s.laptop_id}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(s.jobs_in_db().await, 0);

    let (st, v) = s.admin.post(&stolen, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let ids: Vec<Uuid> = v["recovery_job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid_of)
        .collect();
    assert_eq!(ids.len(), 2, "one job per source of the lost machine");
    let mut sources = BTreeSet::new();
    for id in &ids {
        let j = detail(&s.admin, *id).await.job;
        assert!(j.is_emergency);
        assert_eq!(j.recovery_type, RecoveryType::EmergencyRecovery);
        assert_eq!(j.status, "queued");
        assert_eq!(j.target_agent_id, Some(spare_id));
        assert_eq!(
            j.target_directory.as_deref(),
            Some("/Volumes/Spare/Restore")
        );
        assert_eq!(
            j.disaster_scenario_id,
            Some(id_of("Laptop stolen at a venue"))
        );
        let expected_point = if j.source_id == Some(s.source) {
            s.p2
        } else {
            p_edit
        };
        assert_eq!(j.recovery_point_id, Some(expected_point));
        sources.insert(j.source_id.unwrap());
    }
    assert_eq!(sources, BTreeSet::from([s.source, editing]));
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM emergency_notifications WHERE recovery_job_id = ANY($1) \
             AND jsonb_array_length(metadata->'contacts') = 2",
            &[&ids]
        )
        .await,
        2
    );
    let (_, v) = s.admin.get("/v1/disaster-scenarios").await;
    let after: Vec<DisasterScenarioInfo> = serde_json::from_value(v).unwrap();
    assert!(after
        .iter()
        .find(|sc| sc.name == "Laptop stolen at a venue")
        .unwrap()
        .last_executed_at
        .is_some());

    // An emergency contact may run this procedure too.
    let ec = user_with_role(
        &s.srv,
        &s.admin,
        s.org_id(),
        "ec@venue.example",
        "emergency_contact",
    )
    .await;
    let (st, v) = ec.post(&stolen, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["recovery_job_ids"].as_array().unwrap().len(), 2);
    // ... but not the ransomware one.
    let (st, _) = ec
        .post(
            &ransomware,
            &json!({"target_agent_id": spare_id, "target_directory": "/Clean",
                                   "lost_agent_id": s.laptop_id, "point_in_time": s.t2}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Ransomware: the state before the attack, which must be given.
    let (st, v) = s
        .admin
        .post(
            &ransomware,
            &json!({"target_agent_id": spare_id, "target_directory": "/Clean",
                                   "lost_agent_id": s.laptop_id}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("point in time"),
        "{v}"
    );
    let before_attack = midpoint(s.t1, s.t2);
    let (st, v) = s
        .admin
        .post(
            &ransomware,
            &json!({"target_agent_id": spare_id, "target_directory": "/Clean",
                                   "lost_agent_id": s.laptop_id, "point_in_time": before_attack}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let ids: Vec<Uuid> = v["recovery_job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid_of)
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "the editing source had no point before the attack"
    );
    let j = detail(&s.admin, ids[0]).await.job;
    assert_eq!(j.recovery_point_id, Some(s.p1));
    assert_eq!(j.recovery_type, RecoveryType::PointInTimeRecovery);
    assert!(!j.is_emergency);
    let (st, v) = s
        .admin
        .post(
            &ransomware,
            &json!({"target_agent_id": spare_id, "target_directory": "/Clean",
                                   "lost_agent_id": s.laptop_id,
                                   "point_in_time": s.t1 - chrono::Duration::hours(1)}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "nothing backed up by then: {v}");

    // Storage outage prescribes no jobs.
    let (st, v) = s
        .admin
        .post(
            &format!(
                "/v1/disaster-scenarios/{}/start",
                id_of("Primary storage outage")
            ),
            &json!({"target_agent_id": spare_id, "target_directory": "/Restore"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert!(v["recovery_job_ids"].as_array().unwrap().is_empty());

    // The replacement machine works through the emergency jobs first.
    let first = claim(&spare, 600).await.unwrap();
    assert!(first.is_emergency);
    let (st, _) = s
        .admin
        .post(
            &format!("/v1/disaster-scenarios/{}/start", Uuid::new_v4()),
            &body,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
