//! The organisation every test starts from: two users of each role (so a caller and a target of
//! the same role are different people), each with a user token, and the probes the tests share
//! (HTTP calls, role and token counts read as the schema owner, the expected rule written out).

use keepsake_common::api::CreateOrgResponse;
use keepsake_server::testkit::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

pub const ROLES: [&str; 4] = ["owner", "admin", "member", "emergency_contact"];

/// The rank the rules compare (written out here, independent of the server's code).
pub fn rank(role: &str) -> u8 {
    match role {
        "owner" => 3,
        "admin" => 2,
        "member" | "emergency_contact" => 1,
        other => panic!("unknown role {other}"),
    }
}

pub fn is_manager(role: &str) -> bool {
    rank(role) >= 2
}

pub struct User {
    pub role: &'static str,
    pub email: String,
    pub id: Uuid,
    pub token: String,
}

pub struct Studio {
    pub srv: TestServer,
    pub org: CreateOrgResponse,
    /// Two users per role, in the order of [`ROLES`]: `users[2 * i]` and `users[2 * i + 1]`.
    pub users: Vec<User>,
    pub http: reqwest::Client,
}

impl Studio {
    pub async fn new() -> Studio {
        let srv = TestServer::start().await;
        let org = srv.create_org("Roles Studio").await;
        let http = reqwest::Client::new();
        let owner_db = srv.db.owner().await;
        let first_email: String = owner_db
            .query_one(
                "SELECT email FROM auth.users WHERE id = $1",
                &[&org.admin_user_id],
            )
            .await
            .unwrap()
            .get(0);
        let mut users = vec![User {
            role: "owner",
            email: first_email,
            id: org.admin_user_id,
            token: org.admin_token.clone(),
        }];
        let mut studio = Studio {
            srv,
            org,
            users: Vec::new(),
            http,
        };
        for role in ROLES {
            for n in 1..=2 {
                if role == "owner" && n == 1 {
                    continue;
                }
                let email = format!("{role}{n}@roles.example");
                let id = crate::schema_support::add_user(
                    &owner_db,
                    studio.org.organization_id,
                    &email,
                    role,
                )
                .await;
                // The first owner makes everyone's token (an owner may, for every role).
                let (s, v) = studio
                    .call(
                        &studio.org.admin_token,
                        Method::POST,
                        "/v1/tokens",
                        Some(serde_json::json!({ "user_email": email })),
                    )
                    .await;
                assert_eq!(s, StatusCode::CREATED, "token for {email}: {v}");
                users.push(User {
                    role,
                    email,
                    id,
                    token: v["token"].as_str().unwrap().to_string(),
                });
            }
        }
        studio.users = users;
        studio
    }

    /// The first user with `role`, and one with `target` who is someone else.
    pub fn pair(&self, role: &str, target: &str) -> (&User, &User) {
        let caller = self.users.iter().find(|u| u.role == role).unwrap();
        let other = self
            .users
            .iter()
            .find(|u| u.role == target && u.id != caller.id)
            .unwrap();
        (caller, other)
    }

    pub async fn call(
        &self,
        token: &str,
        m: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.srv.url()))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        let text = r.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `PUT /v1/users/{user}/role` with `body`.
    pub async fn put_role(&self, token: &str, user: Uuid, body: Value) -> (StatusCode, Value) {
        let path = format!("/v1/users/{user}/role");
        self.call(token, Method::PUT, &path, Some(body)).await
    }

    /// The role of `user` in the organisation, read as the schema owner.
    pub async fn role_of(&self, user: Uuid) -> String {
        self.srv
            .db
            .owner()
            .await
            .query_one(
                "SELECT role::text FROM user_profiles WHERE user_id = $1 AND organization_id = $2",
                &[&user, &self.org.organization_id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Puts `user`'s role back to `role` as the schema owner (between cases).
    pub async fn reset_role(&self, user: Uuid, role: &str) {
        self.srv
            .db
            .owner()
            .await
            .execute(
                "UPDATE user_profiles SET role = $3::text::user_role \
                 WHERE user_id = $1 AND organization_id = $2",
                &[&user, &self.org.organization_id, &role],
            )
            .await
            .unwrap();
    }

    /// How many user tokens `user` has, read as the schema owner.
    pub async fn tokens_of(&self, user: Uuid) -> i64 {
        self.srv
            .db
            .owner()
            .await
            .query_one(
                "SELECT count(*) FROM api_tokens WHERE user_id = $1",
                &[&user],
            )
            .await
            .unwrap()
            .get(0)
    }
}
