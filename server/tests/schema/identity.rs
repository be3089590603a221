//! Tokens, users and organisations: `resolve_token` returns only usable tokens, users see their
//! own organisations, and roles are protected.

use crate::fixtures::*;
use crate::schema_support::*;
use keepsake_server::db::Actor;
use keepsake_server::testkit;
use uuid::Uuid;

#[tokio::test]
async fn resolve_token_returns_only_usable_tokens() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let w = world(&owner, "tokens", "north").await;
    let member = add_user(&owner, w.org.id, "member@tokens.test", "member").await;
    let revoked_agent = add_agent(&owner, w.org.id, "old-laptop").await;
    owner
        .execute(
            "UPDATE agents SET revoked_at = now() WHERE id = $1",
            &[&revoked_agent],
        )
        .await
        .unwrap();

    let tok = |kind: &'static str,
               user: Option<Uuid>,
               agent: Option<Uuid>,
               extra: &'static str,
               seed: &'static str| {
        let owner = &owner;
        let org = w.org.id;
        async move {
            owner
                .query_one(
                    &format!(
                        "INSERT INTO api_tokens (organization_id, kind, user_id, agent_id, token_hash, expires_at, used_at, revoked_at)
                         SELECT $1, '{kind}', $2, $3, $4, e, u, r FROM (SELECT {extra}) AS x(e, u, r) RETURNING id"
                    ),
                    &[&org, &user, &agent, &digest(seed)],
                )
                .await
                .unwrap_or_else(|e| panic!("{seed}: {}", describe(&e)))
                .get::<_, Uuid>(0)
        }
    };
    let none = "NULL::timestamptz, NULL::timestamptz, NULL::timestamptz";
    let user_tok = tok("user", Some(member), None, none, "user").await;
    let agent_tok = tok("agent", None, Some(w.agent), none, "agent").await;
    let enroll_tok = tok(
        "enroll",
        None,
        None,
        "now() + interval '1 hour', NULL::timestamptz, NULL::timestamptz",
        "enroll",
    )
    .await;
    tok(
        "enroll",
        None,
        None,
        "now() + interval '1 hour', now(), NULL::timestamptz",
        "enroll-used",
    )
    .await;
    tok(
        "user",
        Some(member),
        None,
        "now() - interval '1 second', NULL::timestamptz, NULL::timestamptz",
        "expired",
    )
    .await;
    tok(
        "user",
        Some(member),
        None,
        "NULL::timestamptz, NULL::timestamptz, now()",
        "revoked",
    )
    .await;
    tok("agent", None, Some(revoked_agent), none, "revoked-agent").await;

    let mut app = db.app().await;
    let t = tx(&mut app, &Actor::Anonymous).await;
    let resolve = |seed: &'static str| {
        let t = &t;
        async move {
            t.query("SELECT token_id, kind::text, organization_id, user_id, agent_id FROM auth.resolve_token($1)", &[&digest(seed)])
                .await
                .unwrap()
        }
    };
    let r = resolve("user").await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].get::<_, Uuid>(0), user_tok);
    assert_eq!(r[0].get::<_, String>(1), "user");
    assert_eq!(r[0].get::<_, Uuid>(2), w.org.id);
    assert_eq!(r[0].get::<_, Option<Uuid>>(3), Some(member));
    let r = resolve("agent").await;
    assert_eq!(
        (r[0].get::<_, Uuid>(0), r[0].get::<_, Option<Uuid>>(4)),
        (agent_tok, Some(w.agent))
    );
    assert_eq!(resolve("enroll").await[0].get::<_, Uuid>(0), enroll_tok);
    for unusable in [
        "enroll-used",
        "expired",
        "revoked",
        "revoked-agent",
        "unknown",
    ] {
        assert!(
            resolve(unusable).await.is_empty(),
            "{unusable} must not resolve"
        );
    }
    // Anonymous callers see no token rows directly.
    assert_eq!(scalar_i64(&t, "SELECT count(*) FROM api_tokens").await, 0);
    t.commit().await.unwrap();
    let used: bool = owner
        .query_one(
            "SELECT last_used_at IS NOT NULL FROM api_tokens WHERE id = $1",
            &[&user_tok],
        )
        .await
        .unwrap()
        .get(0);
    assert!(used, "last_used_at recorded");

    // A disabled user's token stops working, and so does the user's organisation scope.
    owner
        .execute(
            "UPDATE auth.users SET disabled_at = now() WHERE id = $1",
            &[&member],
        )
        .await
        .unwrap();
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: member,
        },
    )
    .await;
    assert!(t
        .query("SELECT 1 FROM auth.resolve_token($1)", &[&digest("user")])
        .await
        .unwrap()
        .is_empty());
    let org: Option<Uuid> = t
        .query_one("SELECT auth.org_id()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(org, None);
    t.rollback().await.unwrap();

    // Token kinds must carry the right ids; hashes are 32 bytes.
    for (kind, user, agent) in [
        ("user", None, None),
        ("agent", Some(member), None),
        ("enroll", None, Some(w.agent)),
    ] {
        let e = owner
            .execute(
                &format!("INSERT INTO api_tokens (organization_id, kind, user_id, agent_id, token_hash, expires_at) VALUES ($1, '{kind}', $2, $3, $4, now())"),
                &[&w.org.id, &user, &agent, &digest(&format!("bad-{kind}"))],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "23514", "{kind}");
    }
    // A used or revoked token cannot be reactivated, even by an admin.
    let t = tx(
        &mut app,
        &Actor::User {
            org: w.org.id,
            user: w.org.owner,
        },
    )
    .await;
    let e = t
        .execute(
            "UPDATE api_tokens SET used_at = NULL WHERE token_hash = $1",
            &[&digest("enroll-used")],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();
}

#[tokio::test]
async fn users_see_their_organisations_and_roles_are_protected() {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let a = create_org(&owner, "roles-a", "north").await;
    let b = create_org(&owner, "roles-b", "south").await;
    // The owner of A is also a member of B.
    owner
        .execute(
            "INSERT INTO user_profiles (user_id, organization_id, role) VALUES ($1, $2, 'member')",
            &[&a.owner, &b.id],
        )
        .await
        .unwrap();
    let admin = add_user(&owner, a.id, "admin@roles-a.test", "admin").await;
    let mut app = db.app().await;

    let t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: a.owner,
        },
    )
    .await;
    let orgs: Vec<(Uuid, String)> = t
        .query(
            "SELECT organization_id, role::text FROM auth.my_organizations()",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        orgs,
        vec![(a.id, "owner".to_string()), (b.id, "member".to_string())]
    );
    let role: String = t
        .query_one("SELECT auth.org_role()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "owner");
    t.rollback().await.unwrap();

    // An admin cannot make someone owner, nor demote the owner; the owner can.
    let mut t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: admin,
        },
    )
    .await;
    let e = attempt(
        &mut t,
        &format!("UPDATE user_profiles SET role = 'owner' WHERE user_id = '{admin}'"),
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert_eq!(
        attempt(
            &mut t,
            &format!(
                "UPDATE user_profiles SET role = 'member' WHERE user_id = '{}'",
                a.owner
            )
        )
        .await
        .unwrap(),
        0
    );
    // Admins invite users through auth.ensure_user (idempotent).
    let u1: Uuid = t
        .query_one("SELECT auth.ensure_user('New@Roles-A.test')", &[])
        .await
        .unwrap()
        .get(0);
    let u2: Uuid = t
        .query_one("SELECT auth.ensure_user('new@roles-a.test')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(u1, u2);
    t.execute(
        "INSERT INTO user_profiles (user_id, organization_id, role) VALUES ($1, $2, 'member')",
        &[&u1, &a.id],
    )
    .await
    .unwrap();
    t.commit().await.unwrap();
    let t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: a.owner,
        },
    )
    .await;
    assert_eq!(
        t.execute(
            "UPDATE user_profiles SET role = 'owner' WHERE user_id = $1",
            &[&admin]
        )
        .await
        .unwrap(),
        1
    );
    t.rollback().await.unwrap();

    // Members cannot invite.
    let t = tx(
        &mut app,
        &Actor::User {
            org: a.id,
            user: u1,
        },
    )
    .await;
    let e = t
        .query_one("SELECT auth.ensure_user('x@y.test')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    t.rollback().await.unwrap();

    // Emails are stored lower-case only.
    let e = owner
        .execute(
            "INSERT INTO auth.users (email) VALUES ('Upper@Case.test')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23514");
}
