//! The world every isolation test starts from: two organisations (A with two machines, B with
//! one) loaded with every fixture, the catalog-derived list of tenant tables and views, the
//! actors of organisation A, and the probes (`visible`, `snapshot`, `refused_or_zero`).

use std::collections::BTreeMap;

use crate::fixtures::*;
use crate::schema_support::*;
use keepsake_server::db::Actor;
use keepsake_server::testkit::{self, TestDb};
use tokio_postgres::Client;
use uuid::Uuid;

pub struct World {
    pub db: TestDb,
    pub owner: Client,
    pub a: Uuid,
    pub b: Uuid,
    pub a1: Inst,
    pub a2: Inst,
    pub b1: Inst,
    /// Catalog-derived: every table (schema-qualified) with organization_id.
    pub tables: Vec<String>,
    pub views: Vec<String>,
}

pub async fn tenant_tables(c: &Client) -> Vec<String> {
    c.query(
        "SELECT n.nspname || '.' || c.relname
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('public', 'auth')
           AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'organization_id' AND NOT a.attisdropped)
         ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

pub async fn setup() -> World {
    let db = testkit::test_db().await;
    let owner = db.owner().await;
    let tables = tenant_tables(&owner).await;
    let missing: Vec<&String> = tables
        .iter()
        .filter(|t| !FIXTURES.iter().any(|(f, _)| f == t))
        .collect();
    assert!(
        missing.is_empty(),
        "tables with organisation data but no isolation fixture (add one to FIXTURES): {missing:?}"
    );
    let views: Vec<String> = owner
        .query(
            "SELECT 'public.' || viewname FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(views.len() >= 3);

    let a = create_org(&owner, "iso-a", "north").await.id;
    let b = create_org(&owner, "iso-b", "south").await.id;
    let (a1, a2, b1) = (Inst::new(a, "a1"), Inst::new(a, "a2"), Inst::new(b, "b1"));
    for inst in [&a1, &a2, &b1] {
        for (table, sql) in FIXTURES {
            let sql = inst.render(sql);
            owner
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("fixture {table} ({}): {}", inst.tag, describe(&e)));
        }
    }
    World {
        db,
        owner,
        a,
        b,
        a1,
        a2,
        b1,
        tables,
        views,
    }
}

pub fn actor_admin(w: &World) -> Actor {
    Actor::User {
        org: w.a,
        user: w.a1.id("admin"),
    }
}
pub fn actor_member(w: &World) -> Actor {
    Actor::User {
        org: w.a,
        user: w.a1.id("member"),
    }
}
pub fn actor_ec(w: &World) -> Actor {
    Actor::User {
        org: w.a,
        user: w.a1.id("ec"),
    }
}
pub fn actor_agent(w: &World) -> Actor {
    Actor::Agent {
        org: w.a,
        agent: w.a1.id("agent"),
    }
}
pub fn actor_system(w: &World) -> Actor {
    Actor::System { org: w.a }
}

/// (rows of org A, rows of any other organisation) visible in `table` in this transaction.
pub async fn visible(t: &tokio_postgres::Transaction<'_>, table: &str, a: Uuid) -> (i64, i64) {
    let col = if table == "public.organizations" {
        "id"
    } else {
        "organization_id"
    };
    let r = t
        .query_one(
            &format!("SELECT count(*) FILTER (WHERE {col} = $1), count(*) FILTER (WHERE {col} IS DISTINCT FROM $1) FROM {table}"),
            &[&a],
        )
        .await
        .unwrap_or_else(|e| panic!("select {table}: {}", describe(&e)));
    (r.get(0), r.get(1))
}

/// A digest of every row of `org` in every tenant table (taken as the owner), to prove that
/// refused or zero-row writes changed nothing.
pub async fn snapshot(w: &World, org: Uuid) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for t in w
        .tables
        .iter()
        .chain(std::iter::once(&"public.organizations".to_string()))
    {
        let col = if t == "public.organizations" {
            "id"
        } else {
            "organization_id"
        };
        let d: String = w
            .owner
            .query_one(
                &format!("SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x WHERE {col} = $1"),
                &[&org],
            )
            .await
            .unwrap()
            .get(0);
        out.insert(t.clone(), d);
    }
    let users: String = w
        .owner
        .query_one(
            "SELECT md5(coalesce(string_agg(u::text, '|' ORDER BY u::text), '')) FROM auth.users u",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.insert("auth.users".into(), users);
    out
}

/// Users that belong only to organisation B.
pub async fn users_only_in(w: &World, org: Uuid, other: Uuid) -> Vec<Uuid> {
    w.owner
        .query(
            "SELECT user_id FROM user_profiles WHERE organization_id = $1
             EXCEPT SELECT user_id FROM user_profiles WHERE organization_id = $2",
            &[&org, &other],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

pub fn refused_or_zero(r: Result<u64, tokio_postgres::Error>, what: &str) {
    match r {
        Ok(n) => assert_eq!(n, 0, "{what} affected {n} rows"),
        Err(e) => assert_eq!(
            sqlstate(&e),
            "42501",
            "{what}: unexpected error {}",
            describe(&e)
        ),
    }
}
