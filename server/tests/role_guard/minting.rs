//! User tokens: a caller makes one for another user only when they are an admin or owner and the
//! target's role ranks at or below theirs (an admin for another admin yes, for the owner never);
//! everyone makes their own; nobody makes one for someone outside the organisation.

use crate::schema_support::*;
use crate::support::*;
use keepsake_common::api::WhoAmI;
use keepsake_server::db::Actor;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

fn may_mint(caller: &str, target: &str) -> bool {
    is_manager(caller) && rank(target) <= rank(caller)
}

#[tokio::test]
async fn http_minting_for_each_pair_of_roles() {
    let st = Studio::new().await;
    for c in ROLES {
        for t in ROLES {
            let (caller, target) = st.pair(c, t);
            let before = st.tokens_of(target.id).await;
            let (s, v) = st
                .call(
                    &caller.token,
                    Method::POST,
                    "/v1/tokens",
                    Some(json!({ "user_email": target.email, "label": "pair" })),
                )
                .await;
            if may_mint(c, t) {
                assert_eq!(s, StatusCode::CREATED, "{c} mints for {t}: {v}");
                assert_eq!(st.tokens_of(target.id).await, before + 1, "{c} → {t}");
                // The new token acts as the target, not as the caller.
                let (s, who) = st
                    .call(
                        v["token"].as_str().unwrap(),
                        Method::GET,
                        "/v1/whoami",
                        None,
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{who}");
                let who: WhoAmI = serde_json::from_value(who).unwrap();
                assert_eq!(who.user_id, Some(target.id), "{c} → {t}");
            } else {
                assert_eq!(s, StatusCode::FORBIDDEN, "{c} mints for {t}: {v}");
                assert!(
                    v["error"].as_str().is_some_and(|m| !m.is_empty()),
                    "a clear message: {v}"
                );
                assert_eq!(st.tokens_of(target.id).await, before, "{c} → {t}");
            }
        }
    }
    // The message says why an admin cannot mint for the owner.
    let (admin, owner) = st.pair("admin", "owner");
    let (s, v) = st
        .call(
            &admin.token,
            Method::POST,
            "/v1/tokens",
            Some(json!({ "user_email": owner.email })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        v["error"],
        "a user whose role is admin cannot make a token for a user whose role is owner"
    );
    // Everyone makes their own.
    for u in &st.users {
        let before = st.tokens_of(u.id).await;
        let (s, v) = st.call(&u.token, Method::POST, "/v1/tokens", None).await;
        assert_eq!(s, StatusCode::CREATED, "{} for themself: {v}", u.role);
        assert_eq!(st.tokens_of(u.id).await, before + 1);
    }
}

/// A user token for `target` inserted by the caller itself.
fn insert_token(org: Uuid, target: Uuid, created_by: Uuid) -> String {
    format!(
        "INSERT INTO api_tokens (organization_id, kind, user_id, token_hash, created_by) \
         VALUES ('{org}', 'user', '{target}', sha256(gen_random_uuid()::text::bytea), '{created_by}')"
    )
}

#[tokio::test]
async fn sql_minting_for_each_pair_of_roles() {
    let st = Studio::new().await;
    let org = st.org.organization_id;
    let mut app = st.srv.db.app().await;
    for c in ROLES {
        for t in ROLES {
            let (caller, target) = st.pair(c, t);
            let before = st.tokens_of(target.id).await;
            let mut t_x = tx(
                &mut app,
                &Actor::User {
                    org,
                    user: caller.id,
                },
            )
            .await;
            let r = attempt(&mut t_x, &insert_token(org, target.id, caller.id)).await;
            if may_mint(c, t) {
                assert_eq!(r.map_err(|e| describe(&e)), Ok(1), "{c} → {t}");
                t_x.commit().await.unwrap();
                assert_eq!(st.tokens_of(target.id).await, before + 1, "{c} → {t}");
            } else {
                let e = r.expect_err(&format!("{c} must not mint for {t}"));
                assert_eq!(sqlstate(&e), "42501", "{c} → {t}: {}", describe(&e));
                t_x.rollback().await.unwrap();
                assert_eq!(st.tokens_of(target.id).await, before, "{c} → {t}");
            }
        }
    }
    // The database names the rule when an admin tries for the owner.
    let (admin, owner) = st.pair("admin", "owner");
    let mut t_x = tx(
        &mut app,
        &Actor::User {
            org,
            user: admin.id,
        },
    )
    .await;
    let e = attempt(&mut t_x, &insert_token(org, owner.id, admin.id))
        .await
        .unwrap_err();
    assert!(
        describe(&e).contains("cannot make a token for a user whose role is owner"),
        "{}",
        describe(&e)
    );
    t_x.rollback().await.unwrap();
    // Everyone inserts their own.
    for u in &st.users {
        let mut t_x = tx(&mut app, &Actor::User { org, user: u.id }).await;
        let r = attempt(&mut t_x, &insert_token(org, u.id, u.id)).await;
        assert_eq!(
            r.map_err(|e| describe(&e)),
            Ok(1),
            "{} for themself",
            u.role
        );
        t_x.commit().await.unwrap();
    }
}

#[tokio::test]
async fn no_tokens_for_people_outside_the_organisation() {
    let st = Studio::new().await;
    let org = st.org.organization_id;
    let other = st.srv.create_org("Other Studio").await;
    let stranger = other.admin_user_id;
    let before = st.tokens_of(stranger).await;
    let owner = &st.users[0];
    assert_eq!(owner.role, "owner");

    let (s, v) = st
        .call(
            &owner.token,
            Method::POST,
            "/v1/tokens",
            Some(json!({ "user_email": "owner@other-studio.example" })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");

    let mut app = st.srv.db.app().await;
    let mut t_x = tx(
        &mut app,
        &Actor::User {
            org,
            user: owner.id,
        },
    )
    .await;
    // The role lookup does not reach into another organisation.
    let role: Option<String> = t_x
        .query_one("SELECT auth.member_role($1)::text", &[&stranger])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, None);
    let e = attempt(&mut t_x, &insert_token(org, stranger, owner.id))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    assert!(
        describe(&e).contains("member of the organisation"),
        "{}",
        describe(&e)
    );
    t_x.rollback().await.unwrap();
    assert_eq!(st.tokens_of(stranger).await, before);
}
