//! Recovery management from the server's side, over real HTTP on 127.0.0.1 with real
//! PostgreSQL: recovery jobs requested by users and resolved to recovery points, emergency jobs
//! paging the emergency contacts, claims by the target machine (exactly once, across two server
//! processes, with leases), progress, logs, finishing with a validation, restore drills, disaster
//! scenarios and the `keepsake-server admin recovery|scenario` commands.

use std::collections::{BTreeMap, BTreeSet};
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

const BIN: &str = env!("CARGO_BIN_EXE_keepsake-server");

#[derive(Clone)]
struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    fn new(base: &str, token: &str) -> Client {
        Client {
            base: base.to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// The same credentials against another server.
    fn on(&self, base: &str) -> Client {
        Client::new(base, &self.token)
    }

    async fn call(&self, m: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
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

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
}

fn uuid_of(v: &Value) -> Uuid {
    v.as_str()
        .unwrap_or_else(|| panic!("not a uuid: {v}"))
        .parse()
        .unwrap()
}

/// Halfway between two times, to the microsecond (PostgreSQL's precision).
fn midpoint(a: DateTime<Utc>, b: DateTime<Utc>) -> DateTime<Utc> {
    a + chrono::Duration::microseconds((b - a).num_microseconds().unwrap() / 2)
}

fn time_of(v: &Value) -> DateTime<Utc> {
    serde_json::from_value(v.clone()).unwrap()
}

async fn enroll(srv: &TestServer, token: &str, name: &str) -> (Uuid, Client) {
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

async fn register_source(agent: &Client, root: &str) -> Uuid {
    let (s, v) = agent.post("/v1/sources", &json!({"root_path": root})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    uuid_of(&v["id"])
}

/// Commits empty files at `paths` (no blobs needed) and answers the recovery point and its time.
async fn commit_files(
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
async fn user_with_role(
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

async fn count(
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
struct Studio {
    srv: TestServer,
    org: CreateOrgResponse,
    admin: Client,
    keys: OrgKeys,
    laptop_id: Uuid,
    laptop: Client,
    source: Uuid,
    p1: Uuid,
    t1: DateTime<Utc>,
    p2: Uuid,
    t2: DateTime<Utc>,
}

impl Studio {
    async fn new(name: &str) -> Studio {
        let srv = TestServer::start().await;
        Studio::on(srv, name).await
    }

    async fn on(srv: TestServer, name: &str) -> Studio {
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

    fn org_id(&self) -> Uuid {
        self.org.organization_id
    }

    /// Another machine of the organisation.
    async fn machine(&self, name: &str) -> (Uuid, Client) {
        let token = self.srv.enroll_token(self.org_id()).await;
        enroll(&self.srv, &token, name).await
    }

    async fn jobs_in_db(&self) -> i64 {
        count(
            &self.srv,
            "SELECT count(*) FROM recovery_jobs WHERE organization_id = $1",
            &[&self.org.organization_id],
        )
        .await
    }

    /// A queued full recovery of the laptop's source onto `target`.
    async fn full_job(&self, target: Uuid) -> Uuid {
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

async fn claim(agent: &Client, lease: u32) -> Option<RecoveryJobInfo> {
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

async fn detail(c: &Client, id: Uuid) -> RecoveryJobDetail {
    let (s, v) = c.get(&format!("/v1/recovery-jobs/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

fn progress_body(status: &str, files: (u64, u64), bytes: (u64, u64)) -> Value {
    json!({"status": status, "files_total": files.1, "files_recovered": files.0,
           "bytes_total": bytes.1, "bytes_recovered": bytes.0})
}

fn validation(checked: u64, mismatches: u32, missing: u32) -> Value {
    json!({"files_checked": checked, "bytes_checked": checked * 100, "mismatches": mismatches,
           "missing": missing, "extra": 0})
}

async fn add_contacts(srv: &TestServer, org: Uuid) {
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

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn jobs_of_every_type_resolve_their_recovery_point() {
    let s = Studio::new("Resolve Studio").await;
    let target = s.laptop_id;
    let create = |body: Value| {
        let admin = s.admin.clone();
        async move { admin.post("/v1/recovery-jobs", &body).await }
    };

    // Full: the source alone means its newest point.
    let (st, v) = create(json!({"recovery_type": "full_recovery", "source_id": s.source,
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let full: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert_eq!(full.recovery_type, RecoveryType::FullRecovery);
    assert_eq!(full.recovery_point_id, Some(s.p2));
    assert_eq!(full.source_id, Some(s.source));
    assert_eq!(full.status, "queued");
    assert_eq!(full.target_agent_id, Some(target));
    assert_eq!(full.target_directory.as_deref(), Some("/Users/ana/Restore"));
    assert!(!full.overwrite && !full.is_emergency);
    assert!(full.path_prefixes.is_empty());
    assert_eq!((full.progress_percentage, full.attempts), (0, 0));
    assert_eq!(full.started_at, None, "not started before it is claimed");

    // Partial: a given point, folders (a trailing '/' is dropped), overwrite.
    let (st, v) = create(json!({"recovery_type": "partial_recovery", "recovery_point_id": s.p1,
                                 "path_prefixes": ["2025/Smith/", "2025/Jones"], "overwrite": true,
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let partial: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert_eq!(partial.recovery_point_id, Some(s.p1));
    assert_eq!(partial.path_prefixes, vec!["2025/Smith", "2025/Jones"]);
    assert!(partial.overwrite);

    // File: exactly one path; a point id with its source is accepted.
    let (st, v) = create(json!({"recovery_type": "file_recovery", "recovery_point_id": s.p1, "source_id": s.source,
                                 "path_prefixes": ["2025/Smith/IMG_0001.CR3"],
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(uuid_of(&v["recovery_point_id"]), s.p1);

    // Point in time: the newest point at or before the time.
    let mid = midpoint(s.t1, s.t2);
    for (at, expected) in [
        (mid, s.p1),
        (s.t1, s.p1),
        (s.t2, s.p2),
        (s.t2 + chrono::Duration::days(1), s.p2),
    ] {
        let (st, v) = create(
            json!({"recovery_type": "point_in_time_recovery", "source_id": s.source,
                                     "point_in_time": at, "target_agent_id": target,
                                     "target_directory": "/Users/ana/Restore"}),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(uuid_of(&v["recovery_point_id"]), expected, "at {at}");
        assert_eq!(
            time_of(&v["point_in_time"]),
            at,
            "the requested time is kept"
        );
    }
    let before = s.jobs_in_db().await;
    let (st, v) = create(json!({"recovery_type": "point_in_time_recovery", "source_id": s.source,
                                 "point_in_time": s.t1 - chrono::Duration::minutes(1),
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("at or before"), "{v}");
    let (st, v) = create(json!({"recovery_type": "point_in_time_recovery", "source_id": s.source,
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "a point-in-time recovery needs a time: {v}"
    );
    assert_eq!(s.jobs_in_db().await, before);

    // Emergency.
    let (st, v) = create(json!({"recovery_type": "emergency_recovery", "source_id": s.source,
                                 "path_prefixes": ["2025/Brown"], "notes": "client delivery tomorrow",
                                 "target_agent_id": target, "target_directory": "/Users/ana/Restore"}))
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let emergency: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert!(emergency.is_emergency);
    assert_eq!(emergency.recovery_point_id, Some(s.p2));

    // Listed newest first; each one readable with (still empty) log and validations.
    let (st, list) = s.admin.get("/v1/recovery-jobs").await;
    assert_eq!(st, StatusCode::OK);
    let list: Vec<RecoveryJobInfo> = serde_json::from_value(list).unwrap();
    assert_eq!(list.len(), 8);
    assert_eq!(list[0].id, emergency.id);
    assert_eq!(list[7].id, full.id);
    let (_, queued) = s.admin.get("/v1/recovery-jobs?status=queued&limit=3").await;
    assert_eq!(queued.as_array().unwrap().len(), 3);
    let d = detail(&s.admin, partial.id).await;
    assert_eq!(d.job, partial);
    assert!(d.logs.is_empty() && d.validations.is_empty());
    let (st, _) = s
        .admin
        .get(&format!("/v1/recovery-jobs/{}", Uuid::new_v4()))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_jobs WHERE initiated_by = $1 AND target_location = 'laptop:/Users/ana/Restore'",
            &[&s.org.admin_user_id]
        )
        .await,
        8
    );
}

#[tokio::test]
async fn invalid_requests_are_refused_and_create_nothing() {
    let s = Studio::new("Strict Studio").await;
    let other = s.srv.create_org("Other Studio").await;
    let (other_agent, other_laptop) = enroll(&s.srv, &other.enroll_token, "their-laptop").await;
    let other_source = register_source(&other_laptop, "/Users/them/Shoots").await;
    let (other_point, _) = commit_files(&other_laptop, &s.keys, other_source, &["x.jpg"]).await;
    let (spare, _) = s.machine("spare").await;
    let (st, _) = s
        .admin
        .post(&format!("/v1/agents/{spare}/revoke"), &json!({}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    let base = json!({"recovery_type": "full_recovery", "source_id": s.source,
                      "target_agent_id": s.laptop_id, "target_directory": "/Restore"});
    let with = |changes: Value| {
        let mut b = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let cases: Vec<(&str, Value, StatusCode)> = vec![
        (
            "relative target directory",
            with(json!({"target_directory": "Restore"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "'..' prefix",
            with(json!({"recovery_type": "partial_recovery", "path_prefixes": ["2025/../etc"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "absolute prefix",
            with(json!({"recovery_type": "partial_recovery", "path_prefixes": ["/etc"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "file recovery with two paths",
            with(json!({"recovery_type": "file_recovery",
            "path_prefixes": ["2025/Smith/IMG_0001.CR3", "2025/Smith/IMG_0002.CR3"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "partial without prefixes",
            with(json!({"recovery_type": "partial_recovery"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "full with prefixes",
            with(json!({"path_prefixes": ["2025"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a prefix that is not in the point",
            with(json!({"recovery_type": "partial_recovery",
            "recovery_point_id": s.p1, "source_id": null, "path_prefixes": ["2025/Brown"]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another organisation's machine",
            with(json!({"target_agent_id": other_agent})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "an unknown machine",
            with(json!({"target_agent_id": Uuid::new_v4()})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a revoked machine",
            with(json!({"target_agent_id": spare})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "another organisation's point",
            with(json!({"recovery_point_id": other_point, "source_id": null})),
            StatusCode::NOT_FOUND,
        ),
        (
            "another organisation's source",
            with(json!({"source_id": other_source})),
            StatusCode::NOT_FOUND,
        ),
        (
            "a point of another source",
            with(json!({"recovery_point_id": s.p1, "source_id": other_source})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "point and time",
            with(json!({"recovery_point_id": s.p1, "point_in_time": s.t2})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "nothing to restore",
            with(json!({"source_id": null})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, body, expected) in cases {
        let (st, v) = s.admin.post("/v1/recovery-jobs", &body).await;
        assert_eq!(st, expected, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
    }
    // Agents do not request restores.
    let (st, v) = s.laptop.post("/v1/recovery-jobs", &base).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(s.jobs_in_db().await, 0);
    assert_eq!(
        count(&s.srv, "SELECT count(*) FROM recovery_jobs", &[]).await,
        0
    );
    // And the base request itself is fine.
    let (st, v) = s.admin.post("/v1/recovery-jobs", &base).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn emergency_jobs_notify_contacts_and_jump_the_queue() {
    let s = Studio::new("Urgent Studio").await;
    add_contacts(&s.srv, s.org_id()).await;
    let normal = s.full_job(s.laptop_id).await;
    let (st, v) = s
        .admin
        .post(
            "/v1/recovery-jobs",
            &json!({"recovery_type": "emergency_recovery", "recovery_point_id": s.p1,
                    "path_prefixes": ["2025/Smith"],
                    "target_agent_id": s.laptop_id, "target_directory": "/Urgent"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let urgent = uuid_of(&v["id"]);

    let owner = s.srv.db.owner().await;
    let rows = owner
        .query(
            "SELECT notification_type, severity::text, message, metadata, delivery_status \
             FROM emergency_notifications WHERE organization_id = $1",
            &[&s.org_id()],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "one notification, for the emergency job only"
    );
    let r = &rows[0];
    assert_eq!(r.get::<_, String>(0), "emergency_recovery");
    assert_eq!(r.get::<_, String>(1), "critical");
    let message: String = r.get(2);
    assert!(message.contains(&urgent.to_string()), "{message}");
    assert!(message.contains("laptop:/Urgent"), "{message}");
    assert_eq!(r.get::<_, String>(4), "pending");
    let meta: Value = r.get(3);
    assert_eq!(uuid_of(&meta["recovery_job_id"]), urgent);
    let names: Vec<&str> = meta["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["Second Shooter", "Best Friend"],
        "active contacts, by priority"
    );
    assert_eq!(meta["contacts"][0]["phone"], "+44 20 1234 5678");
    assert_eq!(meta["contacts"][1]["email"], "bf@contacts.example");
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM emergency_notifications WHERE recovery_job_id = $1",
            &[&normal]
        )
        .await,
        0
    );

    // The emergency job was requested later but is claimed first.
    assert_eq!(claim(&s.laptop, 600).await.unwrap().id, urgent);
    assert_eq!(claim(&s.laptop, 600).await.unwrap().id, normal);
    assert!(claim(&s.laptop, 600).await.is_none());
}

#[tokio::test]
async fn emergency_contacts_request_and_see_only_emergency_jobs() {
    let s = Studio::new("Contact Studio").await;
    let normal = s.full_job(s.laptop_id).await;
    let ec = user_with_role(
        &s.srv,
        &s.admin,
        s.org_id(),
        "friend@contact.example",
        "emergency_contact",
    )
    .await;
    let member = user_with_role(
        &s.srv,
        &s.admin,
        s.org_id(),
        "assistant@contact.example",
        "member",
    )
    .await;

    let body = |t: &str| {
        json!({"recovery_type": t, "source_id": s.source,
               "target_agent_id": s.laptop_id, "target_directory": "/Restore"})
    };
    for t in [
        "full_recovery",
        "partial_recovery",
        "point_in_time_recovery",
    ] {
        let (st, v) = ec.post("/v1/recovery-jobs", &body(t)).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{t}: {v}");
        assert!(v["error"].as_str().unwrap().contains("emergency"), "{v}");
    }
    assert_eq!(s.jobs_in_db().await, 1);
    let (st, v) = ec
        .post("/v1/recovery-jobs", &body("emergency_recovery"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let urgent = uuid_of(&v["id"]);
    assert!(v["is_emergency"].as_bool().unwrap());

    let (st, list) = ec.get("/v1/recovery-jobs").await;
    assert_eq!(st, StatusCode::OK);
    let ids: Vec<Uuid> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| uuid_of(&j["id"]))
        .collect();
    assert_eq!(
        ids,
        vec![urgent],
        "an emergency contact sees the emergency jobs only"
    );
    let (st, _) = ec.get(&format!("/v1/recovery-jobs/{normal}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(detail(&ec, urgent).await.job.id, urgent);
    // Members see everything and may request any type.
    let (_, list) = member.get("/v1/recovery-jobs").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (st, v) = member
        .post("/v1/recovery-jobs", &body("full_recovery"))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // Nobody but admins and owners cancels.
    for who in [&ec, &member] {
        let (st, v) = who
            .post(&format!("/v1/recovery-jobs/{urgent}/cancel"), &json!({}))
            .await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    }
}

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

#[tokio::test]
async fn restore_drills_are_recorded_as_finished_file_recoveries() {
    let s = Studio::new("Drill Studio").await;
    let started = Utc::now() - chrono::Duration::minutes(2);
    let (st, v) = s
        .laptop
        .post(
            "/v1/recovery-drills",
            &json!({"recovery_point_id": s.p2, "started_at": started, "files_restored": 5,
                    "bytes_restored": 5000, "validation": validation(5, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let ok: RecoveryJobInfo = serde_json::from_value(v).unwrap();
    assert_eq!(ok.recovery_type, RecoveryType::FileRecovery);
    assert_eq!(ok.status, "completed");
    assert_eq!(ok.verification_passed, Some(true));
    assert_eq!(ok.progress_percentage, 100);
    assert_eq!(ok.target_agent_id, Some(s.laptop_id));
    assert_eq!(ok.recovery_point_id, Some(s.p2));

    let (st, v) = s
        .laptop
        .post(
            "/v1/recovery-drills",
            &json!({"recovery_point_id": s.p1, "started_at": started, "files_restored": 3,
                    "bytes_restored": 300, "validation": validation(3, 2, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "failed");
    assert_eq!(v["verification_passed"], false);

    let (st, _) = s
        .laptop
        .post(
            "/v1/recovery-drills",
            &json!({"recovery_point_id": Uuid::new_v4(), "started_at": started, "files_restored": 1,
                    "bytes_restored": 1, "validation": validation(1, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .admin
        .post(
            "/v1/recovery-drills",
            &json!({"recovery_point_id": s.p2, "started_at": started, "files_restored": 1,
                    "bytes_restored": 1, "validation": validation(1, 0, 0)}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let org = s.org_id();
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_jobs WHERE organization_id = $1 AND notes = 'restore drill' \
             AND target_agent_id IS NOT NULL AND recovery_type = 'file_recovery'",
            &[&org]
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM recovery_validations WHERE organization_id = $1",
            &[&org]
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &s.srv,
            "SELECT total_recoveries FROM recovery_time_analytics WHERE organization_id = $1 AND recovery_type = 'file_recovery'",
            &[&org]
        )
        .await,
        1
    );
    // A drill is never handed out as work.
    assert!(claim(&s.laptop, 60).await.is_none());
    let d = detail(&s.admin, ok.id).await;
    assert_eq!(d.logs.len(), 1);
    assert_eq!(d.logs[0].step, "drill");
}

#[tokio::test]
async fn every_organisation_has_the_four_predefined_scenarios() {
    let s = Studio::new("Prepared Studio").await;
    let (st, v) = s.admin.get("/v1/disaster-scenarios").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let list: Vec<DisasterScenarioInfo> = serde_json::from_value(v).unwrap();
    let by_name: BTreeMap<&str, &DisasterScenarioInfo> =
        list.iter().map(|sc| (sc.name.as_str(), sc)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        vec![
            "Laptop stolen at a venue",
            "NAS disk failure",
            "Primary storage outage",
            "Ransomware on the studio machine"
        ]
    );
    for (name, kind, rtype) in [
        (
            "Laptop stolen at a venue",
            "device_theft",
            RecoveryType::EmergencyRecovery,
        ),
        (
            "NAS disk failure",
            "hardware_failure",
            RecoveryType::FullRecovery,
        ),
        (
            "Ransomware on the studio machine",
            "ransomware",
            RecoveryType::PointInTimeRecovery,
        ),
        (
            "Primary storage outage",
            "destination_outage",
            RecoveryType::FullRecovery,
        ),
    ] {
        let sc = by_name[name];
        assert_eq!(sc.scenario_kind, kind);
        assert_eq!(sc.recovery_type, rtype, "{name}");
        assert!(sc.expected_rto_seconds.unwrap() > 0, "{name}");
        assert!(sc.expected_rpo_seconds.is_some(), "{name}");
        assert!(
            sc.description.as_deref().is_some_and(|d| d.len() > 40),
            "{name}"
        );
        let steps = sc.steps.as_array().unwrap();
        assert!(steps.len() >= 4, "{name}");
        for step in steps {
            for key in ["title", "instructions", "role"] {
                assert!(
                    step[key].as_str().is_some_and(|t| !t.is_empty()),
                    "{name}: {step}"
                );
            }
            let role = step["role"].as_str().unwrap();
            assert!(
                sc.responsible_roles.iter().any(|r| r == role),
                "{name}: step role {role} is not responsible"
            );
        }
        assert!(sc.responsible_roles.iter().any(|r| r == "owner"));
    }
    assert!(by_name["Laptop stolen at a venue"]
        .responsible_roles
        .iter()
        .any(|r| r == "emergency_contact"));

    // A second organisation, created later, has its own four.
    let other = s.srv.create_org("Later Studio").await;
    let (_, v) = Client::new(&s.srv.url(), &other.admin_token)
        .get("/v1/disaster-scenarios")
        .await;
    let theirs: Vec<DisasterScenarioInfo> = serde_json::from_value(v).unwrap();
    assert_eq!(theirs.len(), 4);
    assert!(theirs.iter().all(|t| list.iter().all(|m| m.id != t.id)));
    // Emergency contacts read them; agents do not.
    let ec = user_with_role(
        &s.srv,
        &s.admin,
        s.org_id(),
        "ec@prepared.example",
        "emergency_contact",
    )
    .await;
    let (st, v) = ec.get("/v1/disaster-scenarios").await;
    assert_eq!((st, v.as_array().map(Vec::len)), (StatusCode::OK, Some(4)));
    let (st, _) = s.laptop.get("/v1/disaster-scenarios").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn starting_a_scenario_restores_the_lost_machine() {
    let s = Studio::new("Venue Studio").await;
    add_contacts(&s.srv, s.org_id()).await;
    let editing = register_source(&s.laptop, "/Users/ana/Editing").await;
    let (p_edit, _) = commit_files(&s.laptop, &s.keys, editing, &["Smith/edit.psd"]).await;
    let (spare_id, spare) = s.machine("spare").await;
    // The laptop is stolen: cut it off first.
    let (st, _) = s
        .admin
        .post(&format!("/v1/agents/{}/revoke", s.laptop_id), &json!({}))
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    let (_, v) = s.admin.get("/v1/disaster-scenarios").await;
    let list: Vec<DisasterScenarioInfo> = serde_json::from_value(v).unwrap();
    let id_of = |name: &str| list.iter().find(|sc| sc.name == name).unwrap().id;
    let stolen = format!(
        "/v1/disaster-scenarios/{}/start",
        id_of("Laptop stolen at a venue")
    );
    let ransomware = format!(
        "/v1/disaster-scenarios/{}/start",
        id_of("Ransomware on the studio machine")
    );
    let body = json!({"target_agent_id": spare_id, "target_directory": "/Volumes/Spare/Restore",
                      "lost_agent_id": s.laptop_id});

    let member = user_with_role(&s.srv, &s.admin, s.org_id(), "m@venue.example", "member").await;
    let (st, v) = member.post(&stolen, &body).await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "a member is not responsible: {v}"
    );
    let (st, v) = s
        .admin
        .post(
            &stolen,
            &json!({"target_agent_id": spare_id, "target_directory": "/Volumes/Spare/Restore"}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "the lost machine must be named: {v}"
    );
    let (st, v) = s
        .admin
        .post(
            &stolen,
            &json!({"target_agent_id": s.laptop_id, "target_directory": "/Restore",
                               "lost_agent_id": s.laptop_id}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "the stolen laptop cannot restore: {v}"
    );
    let (st, v) = s
        .admin
        .post(
            &stolen,
            &json!({"target_agent_id": spare_id, "target_directory": "Restore",
                               "lost_agent_id": s.laptop_id}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(s.jobs_in_db().await, 0);

    let (st, v) = s.admin.post(&stolen, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let ids: Vec<Uuid> = v["recovery_job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid_of)
        .collect();
    assert_eq!(ids.len(), 2, "one job per source of the lost machine");
    let mut sources = BTreeSet::new();
    for id in &ids {
        let j = detail(&s.admin, *id).await.job;
        assert!(j.is_emergency);
        assert_eq!(j.recovery_type, RecoveryType::EmergencyRecovery);
        assert_eq!(j.status, "queued");
        assert_eq!(j.target_agent_id, Some(spare_id));
        assert_eq!(
            j.target_directory.as_deref(),
            Some("/Volumes/Spare/Restore")
        );
        assert_eq!(
            j.disaster_scenario_id,
            Some(id_of("Laptop stolen at a venue"))
        );
        let expected_point = if j.source_id == Some(s.source) {
            s.p2
        } else {
            p_edit
        };
        assert_eq!(j.recovery_point_id, Some(expected_point));
        sources.insert(j.source_id.unwrap());
    }
    assert_eq!(sources, BTreeSet::from([s.source, editing]));
    assert_eq!(
        count(
            &s.srv,
            "SELECT count(*) FROM emergency_notifications WHERE recovery_job_id = ANY($1) \
             AND jsonb_array_length(metadata->'contacts') = 2",
            &[&ids]
        )
        .await,
        2
    );
    let (_, v) = s.admin.get("/v1/disaster-scenarios").await;
    let after: Vec<DisasterScenarioInfo> = serde_json::from_value(v).unwrap();
    assert!(after
        .iter()
        .find(|sc| sc.name == "Laptop stolen at a venue")
        .unwrap()
        .last_executed_at
        .is_some());

    // An emergency contact may run this procedure too.
    let ec = user_with_role(
        &s.srv,
        &s.admin,
        s.org_id(),
        "ec@venue.example",
        "emergency_contact",
    )
    .await;
    let (st, v) = ec.post(&stolen, &body).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["recovery_job_ids"].as_array().unwrap().len(), 2);
    // ... but not the ransomware one.
    let (st, _) = ec
        .post(
            &ransomware,
            &json!({"target_agent_id": spare_id, "target_directory": "/Clean",
                                   "lost_agent_id": s.laptop_id, "point_in_time": s.t2}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Ransomware: the state before the attack, which must be given.
    let (st, v) = s
        .admin
        .post(
            &ransomware,
            &json!({"target_agent_id": spare_id, "target_directory": "/Clean",
                                   "lost_agent_id": s.laptop_id}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("point in time"),
        "{v}"
    );
    let before_attack = midpoint(s.t1, s.t2);
    let (st, v) = s
        .admin
        .post(
            &ransomware,
            &json!({"target_agent_id": spare_id, "target_directory": "/Clean",
                                   "lost_agent_id": s.laptop_id, "point_in_time": before_attack}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let ids: Vec<Uuid> = v["recovery_job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(uuid_of)
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "the editing source had no point before the attack"
    );
    let j = detail(&s.admin, ids[0]).await.job;
    assert_eq!(j.recovery_point_id, Some(s.p1));
    assert_eq!(j.recovery_type, RecoveryType::PointInTimeRecovery);
    assert!(!j.is_emergency);
    let (st, v) = s
        .admin
        .post(
            &ransomware,
            &json!({"target_agent_id": spare_id, "target_directory": "/Clean",
                                   "lost_agent_id": s.laptop_id,
                                   "point_in_time": s.t1 - chrono::Duration::hours(1)}),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "nothing backed up by then: {v}");

    // Storage outage prescribes no jobs.
    let (st, v) = s
        .admin
        .post(
            &format!(
                "/v1/disaster-scenarios/{}/start",
                id_of("Primary storage outage")
            ),
            &json!({"target_agent_id": spare_id, "target_directory": "/Restore"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert!(v["recovery_job_ids"].as_array().unwrap().is_empty());

    // The replacement machine works through the emergency jobs first.
    let first = claim(&spare, 600).await.unwrap();
    assert!(first.is_emergency);
    let (st, _) = s
        .admin
        .post(
            &format!("/v1/disaster-scenarios/{}/start", Uuid::new_v4()),
            &body,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

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
