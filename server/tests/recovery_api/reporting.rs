//! Reporting on a claimed job: progress is monotonic and capped until finished, a restore that
//! does not validate fails the job, a validated one completes it (and shows in the analytics), and
//! other machines and users cannot report on it.

use crate::support::*;
use keepsake_common::api::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn progress_is_monotonic_and_capped_until_finished() {
    let s = Studio::new("Progress Studio").await;
    let job = s.full_job(s.laptop_id).await;
    let path = format!("/v1/recovery-jobs/{job}/progress");
    let (st, v) = s
        .laptop
        .post(&path, &progress_body("running", (1, 10), (100, 1000)))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "not claimed yet: {v}");
    claim(&s.laptop, 60).await.unwrap();
    let owner = s.srv.db.owner().await;
    owner
        .execute(
            "UPDATE recovery_jobs SET waiting_reason = 'stale', lease_expires_at = now() + interval '5 seconds' WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();

    let report = |status: &str, files: (u64, u64), bytes: (u64, u64)| {
        let laptop = s.laptop.clone();
        let path = path.clone();
        let body = progress_body(status, files, bytes);
        async move {
            let (st, v) = laptop.post(&path, &body).await;
            assert_eq!(st, StatusCode::OK, "{v}");
            serde_json::from_value::<RecoveryJobInfo>(v).unwrap()
        }
    };
    let j = report("running", (5, 10), (500, 1000)).await;
    assert_eq!((j.status.as_str(), j.progress_percentage), ("running", 50));
    assert_eq!((j.files_total, j.bytes_total), (Some(10), Some(1000)));
    assert_eq!((j.files_recovered, j.bytes_recovered), (5, 500));
    assert_eq!(j.waiting_reason, None);
    let lease_left: f64 = owner
        .query_one(
            "SELECT EXTRACT(EPOCH FROM lease_expires_at - now())::float8 FROM recovery_jobs WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        lease_left > 50.0,
        "the lease is extended by its length: {lease_left}"
    );

    let j = report("running", (2, 10), (200, 1000)).await;
    assert_eq!(
        j.progress_percentage, 50,
        "a lower report does not lower it"
    );
    let j = report("verifying", (10, 10), (1000, 1000)).await;
    assert_eq!(
        (j.status.as_str(), j.progress_percentage),
        ("verifying", 99)
    );
    let j = report("verifying", (10, 10), (1000, 1000)).await;
    assert_eq!(j.progress_percentage, 99, "100 only when completed");

    let (st, v) = s
        .laptop
        .post(&path, &progress_body("completed", (10, 10), (1000, 1000)))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    // Without bytes, files count.
    let job2 = s.full_job(s.laptop_id).await;
    claim(&s.laptop, 60).await.unwrap();
    let (st, v) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job2}/progress"),
            &progress_body("running", (1, 4), (0, 0)),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["progress_percentage"], 25);

    // Log lines: the level must be one of the log_level enum.
    let logs = format!("/v1/recovery-jobs/{job}/logs");
    let (st, v) = s
        .laptop
        .post(
            &logs,
            &json!({"step": "restore", "level": "verbose", "message": "x"}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = s
        .laptop
        .post(&logs, &json!({"step": "", "level": "info", "message": "x"}))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = s
        .laptop
        .post(
            &logs,
            &json!({"step": "restore", "level": "warning", "message": "3 files skipped: newer local copies",
                    "details": {"skipped": ["a", "b", "c"]}}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let d = detail(&s.admin, job).await;
    assert_eq!(
        d.logs.last().unwrap().message,
        "3 files skipped: newer local copies"
    );
    assert_eq!(d.logs.last().unwrap().level, "warning");
}

#[tokio::test]
async fn a_restore_that_does_not_validate_fails_the_job() {
    let s = Studio::new("Failing Studio").await;
    let job = s.full_job(s.laptop_id).await;
    claim(&s.laptop, 600).await.unwrap();
    let (st, _) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job}/progress"),
            &progress_body("verifying", (10, 10), (600, 1000)),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let finish = format!("/v1/recovery-jobs/{job}/finish");
    let (st, v) = s
        .laptop
        .post(
            &finish,
            &json!({"restore_ok": true, "files_recovered": 10, "bytes_recovered": 1000,
                    "validation": validation(10, 1, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let j: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert_eq!(j.status, "failed");
    assert_eq!(j.verification_passed, Some(false));
    assert_eq!(j.progress_percentage, 60, "a failed job stays below 100");
    assert!(
        j.error_message
            .as_deref()
            .unwrap()
            .contains("validation failed"),
        "{j:?}"
    );
    assert!(j.completed_at.is_some());
    let d = detail(&s.admin, job).await;
    assert_eq!(d.validations.len(), 1);
    assert!(!d.validations[0].passed);
    assert_eq!(d.validations[0].mismatches, 1);
    assert_eq!(d.logs.last().unwrap().step, "finished");
    assert_eq!(d.logs.last().unwrap().level, "error");

    // Finishing twice, or reporting after the end, is a conflict.
    let (st, v) = s
        .laptop
        .post(
            &finish,
            &json!({"restore_ok": true, "files_recovered": 10, "bytes_recovered": 1000,
                    "validation": validation(10, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, _) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job}/progress"),
            &progress_body("running", (1, 1), (1, 1)),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(detail(&s.admin, job).await.validations.len(), 1);

    // A restore without a validation does not pass; nor does a failed restore.
    for (body, expected_error) in [
        (
            json!({"restore_ok": true, "files_recovered": 3, "bytes_recovered": 30}),
            "without a validation",
        ),
        (
            json!({"restore_ok": false, "error": "target disk full", "files_recovered": 1, "bytes_recovered": 10,
                   "validation": validation(1, 0, 0)}),
            "target disk full",
        ),
    ] {
        let id = s.full_job(s.laptop_id).await;
        claim(&s.laptop, 600).await.unwrap();
        let (st, v) = s
            .laptop
            .post(&format!("/v1/recovery-jobs/{id}/finish"), &body)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "failed");
        assert_eq!(v["verification_passed"], false);
        assert!(v["progress_percentage"].as_i64().unwrap() < 100);
        assert!(
            v["error_message"]
                .as_str()
                .unwrap()
                .contains(expected_error),
            "{v}"
        );
    }
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_time_analytics WHERE organization_id = $1",
            &[&s.org_id()]
        )
        .await,
        0,
        "failed recoveries are not recovery times"
    );
}

#[tokio::test]
async fn a_validated_restore_completes_the_job_and_shows_in_the_analytics() {
    let s = Studio::new("Complete Studio").await;
    let job = s.full_job(s.laptop_id).await;
    claim(&s.laptop, 600).await.unwrap();
    let (st, _) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job}/progress"),
            &progress_body("running", (2, 4), (50, 100)),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job}/logs"),
            &json!({"step": "restore", "level": "info", "message": "4 files written"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, v) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job}/finish"),
            &json!({"restore_ok": true, "files_recovered": 4, "bytes_recovered": 100,
                    "validation": {"files_checked": 4, "bytes_checked": 100, "mismatches": 0, "missing": 0,
                                   "extra": 2, "details": {"extra": ["Thumbs.db", ".DS_Store"]}}}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let j: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert_eq!(j.status, "completed");
    assert_eq!(j.progress_percentage, 100);
    assert_eq!(j.verification_passed, Some(true));
    assert_eq!((j.files_recovered, j.bytes_recovered), (4, 100));
    assert_eq!(j.error_message, None);
    assert!(j.completed_at.unwrap() >= j.started_at.unwrap());

    let d = detail(&s.admin, job).await;
    let steps: Vec<&str> = d.logs.iter().map(|l| l.step.as_str()).collect();
    assert_eq!(
        steps,
        vec!["claimed", "restore", "finished"],
        "oldest first"
    );
    assert_eq!(d.validations.len(), 1);
    assert!(d.validations[0].passed);
    assert_eq!(d.validations[0].extra, 2);

    let owner = s.srv.db.owner().await;
    let row = owner
        .query_one(
            "SELECT total_recoveries, verified_recoveries, avg_recovery_time_seconds IS NOT NULL \
             FROM recovery_time_analytics WHERE organization_id = $1 AND recovery_type = 'full_recovery'",
            &[&s.org_id()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, i64>(1), 1);
    assert!(row.get::<_, bool>(2));
    let (st, _) = s
        .laptop
        .post(
            &format!("/v1/recovery-jobs/{job}/finish"),
            &json!({"restore_ok": true, "files_recovered": 4, "bytes_recovered": 100,
                    "validation": validation(4, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "finishing twice");
}

#[tokio::test]
async fn other_machines_and_users_cannot_report_on_a_job() {
    let s = Studio::new("Guarded Studio").await;
    let (_nas_id, nas) = s.machine("nas").await;
    let job = s.full_job(s.laptop_id).await;
    assert!(claim(&nas, 600).await.is_none(), "not targeted at the NAS");
    claim(&s.laptop, 600).await.unwrap();
    let calls: Vec<(String, Value)> = vec![
        (
            format!("/v1/recovery-jobs/{job}/progress"),
            progress_body("running", (1, 2), (1, 2)),
        ),
        (
            format!("/v1/recovery-jobs/{job}/logs"),
            json!({"step": "restore", "level": "info", "message": "x"}),
        ),
        (
            format!("/v1/recovery-jobs/{job}/finish"),
            json!({"restore_ok": true, "files_recovered": 1, "bytes_recovered": 1,
                   "validation": validation(1, 0, 0)}),
        ),
    ];
    for (path, body) in &calls {
        let (st, v) = nas.post(path, body).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {v}");
        let (st, v) = s.admin.post(path, body).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    let (st, _) = nas.get(&format!("/v1/recovery-jobs/{job}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .admin
        .post(
            "/v1/recovery-jobs/claim",
            &json!({"can_decrypt": true, "lease_seconds": 60}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let d = detail(&s.admin, job).await;
    assert_eq!(d.job.status, "claimed");
    assert_eq!(d.job.progress_percentage, 0);
    assert_eq!(d.logs.len(), 1);
    assert!(d.validations.is_empty());
    // The target machine itself can read its job.
    assert_eq!(detail(&s.laptop, job).await.job.id, job);
}
