//! The callers and probes the policy tests share: an HTTP `Caller` with an optional bearer token,
//! enrolment, sources, creating rules as an admin, and reading or changing the database as its
//! owner (row counts, today's date, season settings).

use chrono::NaiveDate;
use keepsake_common::api::*;
use keepsake_server::testkit::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// An HTTP caller with a bearer token (agent or user), or none.
pub struct Caller {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Caller {
    /// Sends `body` as JSON (if any); answers the status and the body text.
    pub async fn call(&self, m: Method, path: &str, body: Option<&Value>) -> (StatusCode, String) {
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        (s, r.text().await.unwrap())
    }

    /// Like [`Caller::call`], the body parsed as JSON (`Null` when empty or not JSON).
    pub async fn json(&self, m: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let (s, text) = self.call(m, path, body).await;
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /v1/policy`, which must succeed.
    pub async fn policy(&self) -> AgentPolicy {
        let (s, text) = self.call(Method::GET, "/v1/policy", None).await;
        assert_eq!(s, StatusCode::OK, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("policy {text}: {e}"))
    }
}

pub fn caller(srv: &TestServer, token: &str) -> Caller {
    Caller {
        base: srv.url(),
        token: Some(token.to_string()),
        http: reqwest::Client::new(),
    }
}

pub async fn enroll(srv: &TestServer, token: &str, name: &str) -> (Uuid, Caller) {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/enroll", srv.url()))
        .json(
            &json!({"enroll_token": token, "name": name, "hostname": "host", "platform": "linux"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "enrol {name}");
    let e: EnrollResponse = r.json().await.unwrap();
    let agent = Caller {
        base: srv.url(),
        token: Some(e.agent_token),
        http,
    };
    (e.agent_id, agent)
}

pub async fn source(agent: &Caller, root: &str) -> Uuid {
    let (s, v) = agent
        .json(
            Method::POST,
            "/v1/sources",
            Some(&json!({"root_path": root})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["id"].as_str().unwrap().parse().unwrap()
}

/// POSTs a rule as an admin; it must be created. Answers its id.
pub async fn create(admin: &Caller, path: &str, body: Value) -> Uuid {
    let (s, v) = admin.json(Method::POST, path, Some(&body)).await;
    assert_eq!(s, StatusCode::CREATED, "{path} {body}: {v}");
    v["id"].as_str().unwrap().parse().unwrap()
}

pub async fn put_vendor(admin: &Caller, body: Value) {
    let (s, text) = admin
        .call(Method::PUT, "/v1/vendor-config", Some(&body))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{body}: {text}");
}

pub async fn db_count(srv: &TestServer, sql: &str) -> i64 {
    srv.db
        .owner()
        .await
        .query_one(sql, &[])
        .await
        .unwrap()
        .get(0)
}

/// Runs one statement as the schema owner.
pub async fn owner_exec(
    srv: &TestServer,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) {
    srv.db
        .owner()
        .await
        .execute(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The database's today (what `CURRENT_DATE` means to the server's sessions).
pub async fn db_today(srv: &TestServer) -> NaiveDate {
    srv.db
        .owner()
        .await
        .query_one("SELECT CURRENT_DATE", &[])
        .await
        .unwrap()
        .get(0)
}

/// Replaces the organisation's season settings (`hemisphere`, `wedding_season_months`) as the
/// owner — there is no API for them.
pub async fn set_season(srv: &TestServer, org: Uuid, season: Value) {
    owner_exec(
        srv,
        "UPDATE organizations SET settings = (settings - 'hemisphere' - 'wedding_season_months') || $2::jsonb \
         WHERE id = $1",
        &[&org, &season],
    )
    .await;
}

/// Row counts of every table the policy endpoints write (to prove a refusal changed nothing).
pub async fn rule_counts(srv: &TestServer) -> Vec<i64> {
    let row = srv
        .db
        .owner()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM backup_exclusions), (SELECT count(*) FROM wedding_critical_data), \
                    (SELECT count(*) FROM backup_schedules), (SELECT count(*) FROM vendor_backup_configs), \
                    (SELECT count(*) FROM backup_strategies)",
            &[],
        )
        .await
        .unwrap();
    (0..5).map(|i| row.get(i)).collect()
}

pub fn excl(pattern: &str, scope: &str, source_id: Option<Uuid>) -> ExclusionRule {
    ExclusionRule {
        pattern: pattern.into(),
        scope: scope.into(),
        source_id,
    }
}
