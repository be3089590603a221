//! Administration: admins cancel jobs (and the machine stops), decide whether agents keep an
//! unsealed key, and the `keepsake-server admin recovery|scenario` commands request, list, show
//! and start scenarios.

use crate::support::*;
use keepsake_common::api::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_keepsake-server");

#[tokio::test]
async fn admins_cancel_jobs_and_the_machine_stops() {
    let s = Studio::new("Cancel Studio").await;
    let member = user_with_role(&s.srv, &s.admin, s.org_id(), "m@cancel.example", "member").await;
    let job = s.full_job(s.laptop_id).await;
    claim(&s.laptop, 600).await.unwrap();
    let cancel = format!("/v1/recovery-jobs/{job}/cancel");
    let (st, _) = member.post(&cancel, &json!({})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s.laptop.post(&cancel, &json!({})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) = s.admin.post(&cancel, &json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled");
    let (st, _) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job}/progress"),
            &progress_body("running", (1, 2), (1, 2)),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job}/finish"),
            &json!({"restore_ok": true, "files_recovered": 1, "bytes_recovered": 1,
                    "validation": validation(1, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = s.admin.post(&cancel, &json!({})).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = s
        .admin
        .post(
            &format!("/v1/recovery-jobs/{}/cancel", Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(claim(&s.laptop, 600).await.is_none());
    let d = detail(&s.admin, job).await;
    assert_eq!(d.logs.last().unwrap().step, "cancelled");
}

#[tokio::test]
async fn admins_decide_whether_agents_keep_an_unsealed_key() {
    let s = Studio::new("Key Studio").await;
    let member = user_with_role(&s.srv, &s.admin, s.org_id(), "m@key.example", "member").await;
    let policy = |c: Client| async move {
        let (st, v) = c.get("/v1/policy").await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v["agents_keep_unsealed_key"].as_bool().unwrap()
    };
    assert!(!policy(s.laptop.clone()).await);
    let path = "/v1/org-settings/unsealed-key";
    for who in [&member, &s.laptop] {
        let (st, _) = who
            .call(Method::PUT, path, Some(&json!({"allowed": true})))
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN);
    }
    assert!(!policy(s.laptop.clone()).await);
    let (st, v) = s
        .admin
        .call(Method::PUT, path, Some(&json!({"allowed": true})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["allowed"], true);
    assert!(policy(s.laptop.clone()).await);
    let settings: Value = s
        .srv
        .db
        .owner()
        .await
        .query_one(
            "SELECT settings FROM organizations WHERE id = $1",
            &[&s.org_id()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(settings["allow_unsealed_key_on_disk"], true);
    let (st, _) = s
        .admin
        .call(Method::PUT, path, Some(&json!({"allowed": false})))
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!policy(s.laptop.clone()).await);
}

async fn admin_cli(s: &Studio, args: &[&str]) -> Result<String, String> {
    let data = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(BIN)
        .arg("--database-url")
        .arg(s.srv.db.url())
        .arg("--data-dir")
        .arg(data.path())
        .arg("admin")
        .args(args)
        .env_remove("KEEPSAKE_CONFIG")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_admin_command_requests_lists_shows_and_starts_scenarios() {
    let s = Studio::new("Console Studio").await;
    let org = s.org.slug.clone();
    let out = admin_cli(
        &s,
        &[
            "recovery",
            "create",
            "--org",
            &org,
            "--type",
            "partial",
            "--target-agent",
            "laptop",
            "--to",
            "/Restore",
            "--from-agent",
            "laptop",
            "--path",
            "2025/Smith",
            "--overwrite",
            "--json",
        ],
    )
    .await
    .unwrap();
    let partial: RecoveryJobInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(partial.recovery_point_id, Some(s.p2));
    assert_eq!(partial.path_prefixes, vec!["2025/Smith"]);
    assert!(partial.overwrite);
    assert_eq!(partial.target_agent_id, Some(s.laptop_id));

    let mid = (midpoint(s.t1, s.t2)).to_rfc3339();
    let source = s.source.to_string();
    let out = admin_cli(
        &s,
        &[
            "recovery",
            "create",
            "--org",
            &org,
            "--type",
            "point-in-time",
            "--target-agent",
            "laptop",
            "--to",
            "/Restore",
            "--source",
            &source,
            "--at",
            &mid,
            "--json",
        ],
    )
    .await
    .unwrap();
    let pit: RecoveryJobInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(pit.recovery_point_id, Some(s.p1));

    let err = admin_cli(
        &s,
        &[
            "recovery",
            "create",
            "--org",
            &org,
            "--type",
            "file",
            "--target-agent",
            "laptop",
            "--to",
            "/Restore",
            "--source",
            &source,
            "--path",
            "a",
            "--path",
            "b",
        ],
    )
    .await
    .unwrap_err();
    assert!(err.contains("exactly one file"), "{err}");

    let out = admin_cli(&s, &["recovery", "list", "--org", &org, "--json"])
        .await
        .unwrap();
    let list: Vec<RecoveryJobInfo> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        list.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![pit.id, partial.id]
    );

    // The machine works on it; `show` has the log and the validation.
    claim(&s.laptop, 600).await.unwrap();
    let (st, _) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{}/finish", partial.id),
            &json!({"restore_ok": true, "files_recovered": 2, "bytes_recovered": 0,
                    "validation": validation(2, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let id = partial.id.to_string();
    let out = admin_cli(&s, &["recovery", "show", &id, "--org", &org, "--json"])
        .await
        .unwrap();
    let d: RecoveryJobDetail = serde_json::from_str(&out).unwrap();
    assert_eq!(d.job.status, "completed");
    assert_eq!(d.logs.len(), 2);
    assert_eq!(d.validations.len(), 1);
    let text = admin_cli(&s, &["recovery", "show", &id, "--org", &org])
        .await
        .unwrap();
    assert!(
        text.contains(&id) && text.contains("validation passed") && text.contains("claimed"),
        "{text}"
    );

    let out = admin_cli(&s, &["scenario", "list", "--org", &org, "--json"])
        .await
        .unwrap();
    let scenarios: Vec<DisasterScenarioInfo> = serde_json::from_str(&out).unwrap();
    assert_eq!(scenarios.len(), 4);
    let text = admin_cli(&s, &["scenario", "list", "--org", &org])
        .await
        .unwrap();
    assert!(
        text.contains("Laptop stolen at a venue") && text.contains("1. Revoke the stolen laptop"),
        "{text}"
    );

    let (spare_id, _) = s.machine("spare").await;
    let out = admin_cli(
        &s,
        &[
            "scenario",
            "start",
            "laptop stolen at a venue",
            "--org",
            &org,
            "--target-agent",
            "spare",
            "--to",
            "/Restore",
            "--lost-agent",
            "laptop",
            "--json",
        ],
    )
    .await
    .unwrap();
    let started: StartScenarioResponse = serde_json::from_str(&out).unwrap();
    assert_eq!(started.recovery_job_ids.len(), 1);
    let j = detail(&s.admin, started.recovery_job_ids[0]).await.job;
    assert_eq!(j.target_agent_id, Some(spare_id));
    assert!(j.is_emergency);
    let err = admin_cli(
        &s,
        &[
            "scenario",
            "start",
            "Ransomware on the studio machine",
            "--org",
            &org,
            "--target-agent",
            "spare",
            "--to",
            "/Restore",
            "--lost-agent",
            "laptop",
        ],
    )
    .await
    .unwrap_err();
    assert!(err.contains("point in time"), "{err}");
}
