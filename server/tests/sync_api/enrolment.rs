//! Enrolment and keys: enrolment tokens are single-use and failures are throttled; keys are
//! registered once and rotated only by admins.

use crate::sync_support::*;
use keepsake_common::keys::{BundleParams, KeyBundle};
use keepsake_server::testkit::server::TestServer;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn enrolment_tokens_are_single_use_and_failures_are_throttled() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Throttle Test").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "nas").await;
    // Used once: refused.
    let http = reqwest::Client::new();
    let again = http
        .post(format!("{}/v1/enroll", srv.url()))
        .json(&serde_json::json!({"enroll_token": org.enroll_token, "name": "other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    // A second machine with the same name is refused clearly.
    let t2 = srv.enroll_token(org.organization_id).await;
    let dup = http
        .post(format!("{}/v1/enroll", srv.url()))
        .json(&serde_json::json!({"enroll_token": t2, "name": "nas"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), StatusCode::CONFLICT);
    // The agent token works; a revoked one does not.
    assert_eq!(a.get_json("/v1/whoami").await.0, StatusCode::OK);
    let admin = user(&srv, &org.admin_token);
    let (_, agents) = admin.get_json("/v1/agents").await;
    let agent_id = agents[0]["id"].as_str().unwrap().to_string();
    let (s, _) = admin
        .post_json(&format!("/v1/agents/{agent_id}/revoke"), &Value::Null)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(a.get_json("/v1/whoami").await.0, StatusCode::UNAUTHORIZED);
    // Tokens are stored only as hashes.
    let plain = db_count(
        &srv,
        &format!(
            "SELECT count(*) FROM api_tokens WHERE position('{}'::bytea IN token_hash) > 0",
            &a.token[4..20]
        ),
    )
    .await;
    assert_eq!(plain, 0);
    // Repeated failures from one address are throttled.
    let bad = user(&srv, "ksu_0000");
    let mut last = StatusCode::OK;
    for _ in 0..25 {
        last = bad.get_json("/v1/whoami").await.0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn keys_are_registered_once_and_rotated_only_by_admins() {
    let srv = TestServer::start().await;
    let org = srv.create_org("Keys Org").await;
    let (_, a) = enroll(&srv, &org.enroll_token, "first").await;
    let (s, v) = a.get_json("/v1/keys").await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["active"].is_null());
    let keys = test_keys();
    let bundle = KeyBundle::seal_with(
        &keys,
        "correct horse",
        &[],
        BundleParams { scrypt_log_n: 4 },
    )
    .unwrap();
    let reg = serde_json::json!({
        "key_id": keys.key_id(),
        "recipient": keys.current_recipient().to_string(),
        "bundle": bundle.to_json(),
    });
    let (s, v) = a.post_json("/v1/keys", &reg).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = a.get_json("/v1/keys").await;
    let back = KeyBundle::from_json(v["active"]["bundle"].as_str().unwrap()).unwrap();
    let unsealed = back.unseal_with_passphrase("correct horse").unwrap();
    assert_eq!(unsealed.key_id(), keys.key_id());
    // A second machine cannot replace it.
    let t2 = srv.enroll_token(org.organization_id).await;
    let (_, b) = enroll(&srv, &t2, "second").await;
    let other = test_keys();
    let bundle2 = KeyBundle::seal_with(&other, "x", &[], BundleParams { scrypt_log_n: 4 }).unwrap();
    let mut reg2 = serde_json::json!({
        "key_id": other.key_id(),
        "recipient": other.current_recipient().to_string(),
        "bundle": bundle2.to_json(),
    });
    let (s, v) = b.post_json("/v1/keys", &reg2).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["code"], "key_exists");
    // Rotation: refused for agents, allowed for the admin.
    let mut rotated = keys.clone();
    rotated.rotate();
    let bundle3 = KeyBundle::seal_with(
        &rotated,
        "correct horse",
        &[],
        BundleParams { scrypt_log_n: 4 },
    )
    .unwrap();
    reg2 = serde_json::json!({
        "key_id": rotated.key_id(),
        "recipient": rotated.current_recipient().to_string(),
        "bundle": bundle3.to_json(),
        "replaces_key_id": keys.key_id(),
    });
    assert_eq!(
        b.post_json("/v1/keys", &reg2).await.0,
        StatusCode::FORBIDDEN
    );
    let admin = user(&srv, &org.admin_token);
    let (s, v) = admin.post_json("/v1/keys", &reg2).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = a.get_json("/v1/keys").await;
    assert_eq!(v["active"]["key_id"], rotated.key_id());
    // A bundle that carries a plaintext secret key is refused.
    let leak = serde_json::json!({
        "key_id": keys.key_id(),
        "recipient": keys.current_recipient().to_string(),
        "bundle": bundle.to_json().replace("\"envelopes\"", "\"AGE-SECRET-KEY-1XYZ\": 1, \"envelopes\""),
    });
    assert_eq!(
        a.post_json("/v1/keys", &leak).await.0,
        StatusCode::BAD_REQUEST
    );
}
