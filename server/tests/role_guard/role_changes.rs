//! Role changes: only an admin or owner changes a role, never their own, only of a user whose
//! role ranks at or below theirs and only to a role at or below theirs (an admin never touches
//! the owner and never grants `owner`; the owner may grant it).

use crate::schema_support::*;
use crate::support::*;
use keepsake_server::db::Actor;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

fn may_change(caller: &str, target: &str, new: &str) -> bool {
    is_manager(caller) && rank(target) <= rank(caller) && rank(new) <= rank(caller)
}

#[tokio::test]
async fn http_role_changes_for_each_pair_of_roles() {
    let st = Studio::new().await;
    for c in ROLES {
        for t in ROLES {
            for n in ROLES {
                let (caller, target) = st.pair(c, t);
                let (s, v) = st
                    .call(
                        &caller.token,
                        Method::PUT,
                        &format!("/v1/users/{}/role", target.id),
                        Some(json!({ "role": n })),
                    )
                    .await;
                if may_change(c, t, n) {
                    assert_eq!(s, StatusCode::OK, "{c} sets {t} to {n}: {v}");
                    assert_eq!(v["role"], n);
                    assert_eq!(v["user_id"], target.id.to_string());
                    assert_eq!(st.role_of(target.id).await, n, "{c} sets {t} to {n}");
                    st.reset_role(target.id, t).await;
                } else {
                    assert_eq!(s, StatusCode::FORBIDDEN, "{c} sets {t} to {n}: {v}");
                    assert!(
                        v["error"].as_str().is_some_and(|m| !m.is_empty()),
                        "a clear message: {v}"
                    );
                    assert_eq!(st.role_of(target.id).await, t, "{c} sets {t} to {n}");
                }
            }
        }
    }
    let (admin, owner) = st.pair("admin", "owner");
    let (member, _) = st.pair("member", "member");
    for (target, role, message) in [
        (
            owner.id,
            "member",
            "a user whose role is admin cannot change the role of a user whose role is owner",
        ),
        (
            member.id,
            "owner",
            "a user whose role is admin cannot grant the role owner",
        ),
    ] {
        let (s, v) = st
            .call(
                &admin.token,
                Method::PUT,
                &format!("/v1/users/{target}/role"),
                Some(json!({ "role": role })),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(v["error"], message);
    }
}

#[tokio::test]
async fn nobody_changes_their_own_role() {
    let st = Studio::new().await;
    let org = st.org.organization_id;
    let mut app = st.srv.db.app().await;
    for u in &st.users {
        for n in ROLES.into_iter().filter(|n| *n != u.role) {
            let (s, v) = st
                .call(
                    &u.token,
                    Method::PUT,
                    &format!("/v1/users/{}/role", u.id),
                    Some(json!({ "role": n })),
                )
                .await;
            assert_eq!(
                s,
                StatusCode::FORBIDDEN,
                "{} sets own role to {n}: {v}",
                u.role
            );
            let mut t_x = tx(&mut app, &Actor::User { org, user: u.id }).await;
            let r = attempt(
                &mut t_x,
                &format!(
                    "UPDATE user_profiles SET role = '{n}' WHERE user_id = '{}'",
                    u.id
                ),
            )
            .await;
            match r {
                Err(e) => assert_eq!(sqlstate(&e), "42501", "{}", describe(&e)),
                Ok(rows) => assert_eq!(rows, 0, "{} set own role to {n} in SQL", u.role),
            }
            t_x.rollback().await.unwrap();
            assert_eq!(st.role_of(u.id).await, u.role);
        }
    }
    // For an owner it is the database's own rule that refuses (the policies would allow it).
    let owner = &st.users[0];
    let mut t_x = tx(
        &mut app,
        &Actor::User {
            org,
            user: owner.id,
        },
    )
    .await;
    let e = attempt(
        &mut t_x,
        &format!(
            "UPDATE user_profiles SET role = 'admin' WHERE user_id = '{}'",
            owner.id
        ),
    )
    .await
    .unwrap_err();
    assert!(
        describe(&e).contains("nobody can change their own role"),
        "{}",
        describe(&e)
    );
    t_x.rollback().await.unwrap();
}

#[tokio::test]
async fn sql_role_changes_for_each_pair_of_roles() {
    let st = Studio::new().await;
    let org = st.org.organization_id;
    let mut app = st.srv.db.app().await;
    for c in ROLES {
        for t in ROLES {
            for n in ROLES.into_iter().filter(|n| *n != t) {
                let (caller, target) = st.pair(c, t);
                let mut t_x = tx(
                    &mut app,
                    &Actor::User {
                        org,
                        user: caller.id,
                    },
                )
                .await;
                let r = attempt(
                    &mut t_x,
                    &format!(
                        "UPDATE user_profiles SET role = '{n}' WHERE user_id = '{}'",
                        target.id
                    ),
                )
                .await;
                if may_change(c, t, n) {
                    assert_eq!(r.map_err(|e| describe(&e)), Ok(1), "{c} sets {t} to {n}");
                    t_x.commit().await.unwrap();
                    assert_eq!(st.role_of(target.id).await, n);
                    st.reset_role(target.id, t).await;
                } else {
                    // Refused by a policy (no row visible to change) or by the guard.
                    match r {
                        Err(e) => assert_eq!(sqlstate(&e), "42501", "{}", describe(&e)),
                        Ok(rows) => assert_eq!(rows, 0, "{c} set {t} to {n} in SQL"),
                    }
                    t_x.commit().await.unwrap();
                    assert_eq!(st.role_of(target.id).await, t, "{c} sets {t} to {n}");
                }
            }
        }
    }
}

#[tokio::test]
async fn sql_new_members_and_profiles_follow_the_ranks() {
    let st = Studio::new().await;
    let org = st.org.organization_id;
    let owner_db = st.srv.db.owner().await;
    let newcomer: Uuid = owner_db
        .query_one(
            "INSERT INTO auth.users (email) VALUES ('newcomer@roles.example') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut app = st.srv.db.app().await;
    let profiles = |role: &str| {
        format!(
            "INSERT INTO user_profiles (user_id, organization_id, role) \
             VALUES ('{newcomer}', '{org}', '{role}')"
        )
    };
    for c in ROLES {
        for n in ROLES {
            let (caller, _) = st.pair(c, c);
            let mut t_x = tx(
                &mut app,
                &Actor::User {
                    org,
                    user: caller.id,
                },
            )
            .await;
            let r = attempt(&mut t_x, &profiles(n)).await;
            if is_manager(c) && rank(n) <= rank(c) {
                assert_eq!(r.map_err(|e| describe(&e)), Ok(1), "{c} adds a {n}");
            } else {
                let e = r.expect_err(&format!("{c} must not add a {n}"));
                assert_eq!(sqlstate(&e), "42501", "{c} adds a {n}: {}", describe(&e));
            }
            t_x.rollback().await.unwrap();
        }
    }
    // A profile cannot be handed to someone else (here: an admin moving a member's profile to
    // the newcomer).
    let (admin, member) = st.pair("admin", "member");
    let mut t_x = tx(
        &mut app,
        &Actor::User {
            org,
            user: admin.id,
        },
    )
    .await;
    let e = attempt(
        &mut t_x,
        &format!(
            "UPDATE user_profiles SET user_id = '{newcomer}' WHERE user_id = '{}'",
            member.id
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", describe(&e));
    t_x.rollback().await.unwrap();
    let n: i64 = owner_db
        .query_one(
            "SELECT count(*) FROM user_profiles WHERE user_id = $1",
            &[&newcomer],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn bad_role_change_requests() {
    let st = Studio::new().await;
    let owner = &st.users[0];
    let (_, member) = st.pair("owner", "member");
    let (s, v) = st
        .put_role(&owner.token, member.id, json!({ "role": "superuser" }))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("unknown role"), "{v}");
    let (s, v) = st
        .put_role(&owner.token, member.id, json!({ "role": "Owner" }))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = st
        .put_role(&owner.token, Uuid::new_v4(), json!({ "role": "member" }))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // A user of another organisation is not found here, and keeps their role.
    let other = st.srv.create_org("Other Studio").await;
    let (s, v) = st
        .put_role(
            &owner.token,
            other.admin_user_id,
            json!({ "role": "member" }),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let role: String = st
        .srv
        .db
        .owner()
        .await
        .query_one(
            "SELECT role::text FROM user_profiles WHERE user_id = $1",
            &[&other.admin_user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "owner");
    assert_eq!(st.role_of(member.id).await, "member");
    // An agent is no user.
    let enroll = st.srv.enroll_token(st.org.organization_id).await;
    let r = st
        .http
        .post(format!("{}/v1/enroll", st.srv.url()))
        .json(&json!({"enroll_token": enroll, "name": "laptop", "hostname": "h", "platform": "linux"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let agent: keepsake_common::api::EnrollResponse = r.json().await.unwrap();
    let (s, v) = st
        .call(
            &agent.agent_token,
            Method::PUT,
            &format!("/v1/users/{}/role", member.id),
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(st.role_of(member.id).await, "member");
}
