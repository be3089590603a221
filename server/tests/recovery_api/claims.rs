//! Claims by the target machine: exactly once across two server processes, again after a lease
//! expires, and never by a machine that cannot decrypt (the job says why it waits).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn claims_are_exactly_once_across_two_servers() {
    let s = Studio::new("Busy Studio").await;
    let (nas_id, nas) = s.machine("nas").await;
    let mut expected: BTreeMap<Uuid, Uuid> = BTreeMap::new();
    for i in 0..12 {
        let target = if i % 2 == 0 { s.laptop_id } else { nas_id };
        expected.insert(s.full_job(target).await, target);
    }
    let second = s.srv.start_another().await;
    let servers = [s.srv.url(), second.url()];
    let agents = [(s.laptop_id, s.laptop.clone()), (nas_id, nas.clone())];

    let mut set = tokio::task::JoinSet::new();
    for i in 0..48usize {
        let (agent_id, agent) = &agents[i % 2];
        let client = agent.on(&servers[(i / 2) % 2]);
        let agent_id = *agent_id;
        set.spawn(async move { (agent_id, claim(&client, 600).await) });
    }
    let mut claimed: BTreeMap<Uuid, Uuid> = BTreeMap::new();
    let mut empty = 0;
    while let Some(r) = set.join_next().await {
        let (agent, job) = r.unwrap();
        match job {
            Some(job) => {
                assert_eq!(job.claimed_by, Some(agent));
                assert_eq!(job.status, "claimed");
                assert_eq!(job.attempts, 1);
                assert!(
                    claimed.insert(job.id, agent).is_none(),
                    "job {} claimed twice",
                    job.id
                );
            }
            None => empty += 1,
        }
    }
    assert_eq!(
        claimed, expected,
        "every job claimed once, by its own machine"
    );
    assert_eq!(empty, 48 - 12);
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_logs WHERE step = 'claimed' AND organization_id = $1",
            &[&s.org_id()]
        )
        .await,
        12
    );
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_jobs WHERE status = 'claimed' AND attempts = 1 AND started_at IS NOT NULL",
            &[]
        )
        .await,
        12
    );
}

#[tokio::test]
async fn an_expired_lease_can_be_claimed_again() {
    let s = Studio::new("Lease Studio").await;
    let job = s.full_job(s.laptop_id).await;
    let (st, v) = s
        .laptop
        .post(
            "/v1/recovery-jobs/claim",
            &json!({"can_decrypt": true, "lease_seconds": 0}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    let first = claim(&s.laptop, 1).await.unwrap();
    assert_eq!((first.id, first.attempts), (job, 1));
    assert!(
        claim(&s.laptop, 1).await.is_none(),
        "held while the lease runs"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = claim(&s.laptop, 600).await.unwrap();
    assert_eq!(
        (again.id, again.attempts, again.status.as_str()),
        (job, 2, "claimed")
    );
    assert_eq!(
        again.started_at, first.started_at,
        "the recovery started with the first claim"
    );
    assert!(claim(&s.laptop, 600).await.is_none());
    let d = detail(&s.admin, job).await;
    let steps: Vec<&str> = d.logs.iter().map(|l| l.step.as_str()).collect();
    assert_eq!(steps, vec!["claimed", "claimed"]);
    assert!(
        d.logs[1].message.contains("expired"),
        "{}",
        d.logs[1].message
    );
    assert_eq!(d.logs[0].agent_id, Some(s.laptop_id));
}

#[tokio::test]
async fn a_machine_that_cannot_decrypt_claims_nothing_and_says_why() {
    let s = Studio::new("Locked Studio").await;
    let a = s.full_job(s.laptop_id).await;
    let b = s.full_job(s.laptop_id).await;
    let locked = json!({"can_decrypt": false, "lease_seconds": 600});
    for _ in 0..2 {
        let (st, v) = s.laptop.post("/v1/recovery-jobs/claim", &locked).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    }
    for id in [a, b] {
        let d = detail(&s.admin, id).await;
        assert_eq!(d.job.status, "queued");
        assert_eq!(d.job.attempts, 0);
        assert_eq!(d.job.claimed_by, None);
        assert_eq!(
            d.job.waiting_reason.as_deref(),
            Some("waiting for the key to be unlocked on laptop")
        );
        assert_eq!(d.logs.len(), 1, "logged once, not on every poll");
        assert_eq!(
            (d.logs[0].step.as_str(), d.logs[0].level.as_str()),
            ("waiting", "warning")
        );
    }
    // Once the key is unlocked the machine claims, and the claimed job no longer waits.
    let job = claim(&s.laptop, 600).await.unwrap();
    assert_eq!(job.id, a);
    assert_eq!(job.waiting_reason, None);
    let other = detail(&s.admin, b).await;
    assert!(other.job.waiting_reason.is_some());
}
