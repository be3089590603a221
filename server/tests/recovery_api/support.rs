//! The callers and fixtures every recovery test uses: an HTTP `Client` with a bearer token,
//! enrolment, committing files to make recovery points, users with a role, and `Studio` — an
//! organisation with an admin, a laptop with one source and two recovery points.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keepsake_common::api::*;
use keepsake_common::delta::{DeltaHeader, DeltaWriter, Entry};
use keepsake_common::ids::ContentHash;
use keepsake_common::keys::OrgKeys;
use keepsake_common::mac::EntryMacKey;
use keepsake_server::testkit::server::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            base: base.to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The same credentials against another server.
    pub fn on(&self, base: &str) -> Client {
        Client::new(base, &self.token)
    }

    pub async fn call(&self, m: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r.send().await.unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
}

pub fn uuid_of(v: &Value) -> Uuid {
    v.as_str()
        .unwrap_or_else(|| panic!("not a uuid: {v}"))
        .parse()
        .unwrap()
}

/// Halfway between two times, to the microsecond (PostgreSQL's precision).
pub fn midpoint(a: DateTime<Utc>, b: DateTime<Utc>) -> DateTime<Utc> {
    a + chrono::Duration::microseconds((b - a).num_microseconds().unwrap() / 2)
}

pub fn time_of(v: &Value) -> DateTime<Utc> {
    serde_json::from_value(v.clone()).unwrap()
}

pub async fn enroll(srv: &TestServer, token: &str, name: &str) -> (Uuid, Client) {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/enroll", srv.url()))
        .json(&json!({"enroll_token": token, "name": name, "hostname": name, "platform": "linux"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "enrol {name}");
    let e: EnrollResponse = r.json().await.unwrap();
    (e.agent_id, Client::new(&srv.url(), &e.agent_token))
}

pub async fn register_source(agent: &Client, root: &str) -> Uuid {
    let (s, v) = agent.post("/v1/sources", &json!({"root_path": root})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    uuid_of(&v["id"])
}

/// Commits empty files at `paths` (no blobs needed) and answers the recovery point and its time.
pub async fn commit_files(
    agent: &Client,
    keys: &OrgKeys,
    source: Uuid,
    paths: &[&str],
) -> (Uuid, DateTime<Utc>) {
    let (s, v) = agent
        .post(
            "/v1/jobs",
            &json!({"source_id": source, "kind": "incremental"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let job = uuid_of(&v["job_id"]);
    let empty = ContentHash::of(&keys.chunk_id_key, b"");
    let mut w = DeltaWriter::new(
        Vec::new(),
        &DeltaHeader::new(source.to_string(), None),
        &EntryMacKey::derive(&keys.chunk_id_key),
    )
    .unwrap();
    for p in paths {
        w.write(&mut Entry::Upsert {
            path: p.to_string(),
            raw_path: None,
            size: 0,
            mtime_ns: 1_700_000_000_000_000_000,
            mode: 0o644,
            content_hash: empty,
            chunks: Vec::new(),
            link: None,
            mac: None,
        })
        .unwrap();
    }
    let r = agent
        .http
        .put(format!("{}/v1/jobs/{job}/parts/0", agent.base))
        .bearer_auth(&agent.token)
        .body(w.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, v) = agent
        .post(&format!("/v1/jobs/{job}/commit"), &json!({"parts": 1}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let point = uuid_of(&v["recovery_point_id"]);
    let (s, p) = agent.get(&format!("/v1/points/{point}")).await;
    assert_eq!(s, StatusCode::OK, "{p}");
    (point, time_of(&p["point_in_time"]))
}

/// A user of the organisation with `role`, and a token for them (issued by the admin).
pub async fn user_with_role(
    srv: &TestServer,
    admin: &Client,
    org: Uuid,
    email: &str,
    role: &str,
) -> Client {
    let owner = srv.db.owner().await;
    let user: Uuid = owner
        .query_one(
            "INSERT INTO auth.users (email) VALUES ($1) RETURNING id",
            &[&email],
        )
        .await
        .unwrap()
        .get(0);
    owner
        .execute(
            "INSERT INTO user_profiles (user_id, organization_id, role) VALUES ($1, $2, $3::text::user_role)",
            &[&user, &org, &role],
        )
        .await
        .unwrap();
    let (s, v) = admin
        .post("/v1/tokens", &json!({"user_email": email}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    Client::new(&srv.url(), v["token"].as_str().unwrap())
}

pub async fn count(
    srv: &TestServer,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    srv.db
        .owner()
        .await
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// An organisation with an admin, a laptop with one source and two recovery points:
/// p1 (three files) and, a little later, p2 (one more file).
pub struct Studio {
    pub srv: TestServer,
    pub org: CreateOrgResponse,
    pub admin: Client,
    pub keys: OrgKeys,
    pub laptop_id: Uuid,
    pub laptop: Client,
    pub source: Uuid,
    pub p1: Uuid,
    pub t1: DateTime<Utc>,
    pub p2: Uuid,
    pub t2: DateTime<Utc>,
}

impl Studio {
    pub async fn new(name: &str) -> Studio {
        let srv = TestServer::start().await;
        Studio::on(srv, name).await
    }

    pub async fn on(srv: TestServer, name: &str) -> Studio {
        let org = srv.create_org(name).await;
        let admin = Client::new(&srv.url(), &org.admin_token);
        let (laptop_id, laptop) = enroll(&srv, &org.enroll_token, "laptop").await;
        let keys = OrgKeys::generate().unwrap();
        let source = register_source(&laptop, "/Users/ana/Weddings").await;
        let (p1, t1) = commit_files(
            &laptop,
            &keys,
            source,
            &[
                "2025/Smith/IMG_0001.CR3",
                "2025/Smith/IMG_0002.CR3",
                "2025/Jones/IMG_0100.CR3",
            ],
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (p2, t2) = commit_files(&laptop, &keys, source, &["2025/Brown/IMG_0200.CR3"]).await;
        assert!(t2 > t1);
        Studio {
            srv,
            org,
            admin,
            keys,
            laptop_id,
            laptop,
            source,
            p1,
            t1,
            p2,
            t2,
        }
    }

    pub fn org_id(&self) -> Uuid {
        self.org.organization_id
    }

    /// Another machine of the organisation.
    pub async fn machine(&self, name: &str) -> (Uuid, Client) {
        let token = self.srv.enroll_token(self.org_id()).await;
        enroll(&self.srv, &token, name).await
    }

    pub async fn jobs_in_db(&self) -> i64 {
        count(
            &self.srv,
            "SELECT count(*) FROM recovery_jobs WHERE organization_id = $1",
            &[&self.org.organization_id],
        )
        .await
    }

    /// A queued full recovery of the laptop's source onto `target`.
    pub async fn full_job(&self, target: Uuid) -> Uuid {
        let (s, v) = self
            .admin
            .post(
                "/v1/recovery-jobs",
                &json!({"recovery_type": "full_recovery", "source_id": self.source,
                        "target_agent_id": target, "target_directory": "/Restore"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        uuid_of(&v["id"])
    }
}

pub async fn claim(agent: &Client, lease: u32) -> Option<RecoveryJobInfo> {
    let (s, v) = agent
        .post(
            "/v1/recovery-jobs/claim",
            &json!({"can_decrypt": true, "lease_seconds": lease}),
        )
        .await;
    match s {
        StatusCode::OK => Some(serde_json::from_value(v).unwrap()),
        StatusCode::NO_CONTENT => None,
        other => panic!("claim answered {other}: {v}"),
    }
}

pub async fn detail(c: &Client, id: Uuid) -> RecoveryJobDetail {
    let (s, v) = c.get(&format!("/v1/recovery-jobs/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

pub fn progress_body(status: &str, files: (u64, u64), bytes: (u64, u64)) -> Value {
    json!({"status": status, "files_total": files.1, "files_recovered": files.0,
           "bytes_total": bytes.1, "bytes_recovered": bytes.0})
}

pub fn validation(checked: u64, mismatches: u32, missing: u32) -> Value {
    json!({"files_checked": checked, "bytes_checked": checked * 100, "mismatches": mismatches,
           "missing": missing, "extra": 0})
}

pub async fn add_contacts(srv: &TestServer, org: Uuid) {
    let owner = srv.db.owner().await;
    owner
        .execute(
            "INSERT INTO emergency_contacts (organization_id, name, email, phone, priority_order, is_active) VALUES
                ($1, 'Best Friend', 'bf@contacts.example', NULL, 2, true),
                ($1, 'Second Shooter', NULL, '+44 20 1234 5678', 1, true),
                ($1, 'Former Assistant', 'old@contacts.example', NULL, 3, false)",
            &[&org],
        )
        .await
        .unwrap();
}
