//! Shared helpers of the schema and isolation tests (included with `mod schema_support;`, from a
//! folder test with `#[path = "../schema_support/mod.rs"]`).
#![allow(dead_code)]

use keepsake_server::db::{set_identity, Actor};
use tokio_postgres::{Client, Transaction};
use uuid::Uuid;

/// The SQLSTATE of a database error ("" for other errors).
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

pub fn describe(e: &tokio_postgres::Error) -> String {
    keepsake_server::db::describe(e)
}

/// Starts a transaction acting as `actor` (the server's own `set_identity`).
pub async fn tx<'a>(client: &'a mut Client, actor: &Actor) -> Transaction<'a> {
    let t = client.transaction().await.expect("begin");
    set_identity(&t, actor).await.expect("set identity");
    t
}

/// Runs `sql` in a savepoint and returns its outcome, leaving the transaction usable.
pub async fn attempt(t: &mut Transaction<'_>, sql: &str) -> Result<u64, tokio_postgres::Error> {
    let sp = t.savepoint("attempt").await.expect("savepoint");
    let r = sp.execute(sql, &[]).await;
    match r {
        Ok(n) => {
            sp.commit().await.expect("release savepoint");
            Ok(n)
        }
        Err(e) => {
            sp.rollback().await.expect("rollback to savepoint");
            Err(e)
        }
    }
}

pub async fn scalar_i64(c: &impl tokio_postgres::GenericClient, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)))
        .get(0)
}

pub async fn exec(c: &impl tokio_postgres::GenericClient, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
}

/// One organisation with an owner, created through `create_organization` (as the schema owner).
pub struct Org {
    pub id: Uuid,
    pub owner: Uuid,
}

pub async fn create_org(owner: &Client, slug: &str, hemisphere: &str) -> Org {
    let settings =
        serde_json::json!({ "hemisphere": hemisphere, "allow_unsealed_key_on_disk": false });
    let id: Uuid = owner
        .query_one(
            "SELECT public.create_organization($1, $2, $3, NULL, $4)",
            &[
                &format!("Studio {slug}"),
                &slug,
                &format!("owner@{slug}.test"),
                &settings,
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("create_organization: {}", describe(&e)))
        .get(0);
    let user: Uuid = owner
        .query_one(
            "SELECT id FROM auth.users WHERE email = $1",
            &[&format!("owner@{slug}.test")],
        )
        .await
        .unwrap()
        .get(0);
    Org { id, owner: user }
}

/// Adds a user with `role` ('admin', 'owner', 'member', 'emergency_contact') to `org`.
pub async fn add_user(owner: &Client, org: Uuid, email: &str, role: &str) -> Uuid {
    let id: Uuid = owner
        .query_one(
            "INSERT INTO auth.users (email) VALUES ($1) RETURNING id",
            &[&email],
        )
        .await
        .unwrap_or_else(|e| panic!("add user: {}", describe(&e)))
        .get(0);
    owner
        .execute(
            "INSERT INTO public.user_profiles (user_id, organization_id, role) VALUES ($1, $2, $3::text::public.user_role)",
            &[&id, &org, &role],
        )
        .await
        .unwrap_or_else(|e| panic!("add profile: {}", describe(&e)));
    id
}

pub async fn add_agent(owner: &Client, org: Uuid, name: &str) -> Uuid {
    owner
        .query_one(
            "INSERT INTO public.agents (organization_id, name, platform) VALUES ($1, $2, 'linux') RETURNING id",
            &[&org, &name],
        )
        .await
        .unwrap_or_else(|e| panic!("add agent: {}", describe(&e)))
        .get(0)
}

pub async fn add_source(owner: &Client, org: Uuid, agent: Uuid, root: &str) -> Uuid {
    owner
        .query_one(
            "INSERT INTO public.backup_sources (organization_id, agent_id, root_path) VALUES ($1, $2, $3) RETURNING id",
            &[&org, &agent, &root],
        )
        .await
        .unwrap_or_else(|e| panic!("add source: {}", describe(&e)))
        .get(0)
}

pub async fn add_destination(owner: &Client, org: Uuid, name: &str) -> Uuid {
    owner
        .query_one(
            "INSERT INTO public.backup_destinations (organization_id, name, destination_type, connection_config) \
             VALUES ($1, $2, 'local_storage', '{\"kind\": \"local\"}') RETURNING id",
            &[&org, &name],
        )
        .await
        .unwrap_or_else(|e| panic!("add destination: {}", describe(&e)))
        .get(0)
}

/// A 32-byte digest-shaped value derived from `seed` (for content hashes and token hashes).
pub fn digest(seed: &str) -> Vec<u8> {
    blake3_like(seed)
}

fn blake3_like(seed: &str) -> Vec<u8> {
    // Not cryptographic: just 32 distinct bytes per seed (FNV-1a, 4 lanes).
    let mut out = Vec::with_capacity(32);
    for lane in 0u64..4 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ lane.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in seed.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.extend_from_slice(&h.to_be_bytes());
    }
    out
}

/// A syntactically valid age X25519 recipient derived from `seed` (bech32 alphabet).
pub fn age_recipient(seed: &str) -> String {
    const ALPHABET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let bytes = blake3_like(seed);
    let mut s = String::from("age1");
    for i in 0..58 {
        let b = bytes[i % 32] as usize + i * 7;
        s.push(ALPHABET[b % 32] as char);
    }
    s
}
