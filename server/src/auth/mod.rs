//! Bearer tokens: creation, hashing, resolution to a principal, and throttling of failures.
//!
//! Tokens are 32 random bytes, shown once as `ks<kind>_<hex>`; only their BLAKE3 hash is stored
//! (`api_tokens.token_hash`). The database function `auth.resolve_token` turns a hash into the
//! token's organisation and principal before any organisation is known; the query lives in
//! [`crate::db::tokens`].
//!
//! On a crash: nothing here is durable except through the database; the failure throttle is held
//! in memory per process, so a restart forgets the counts (an attacker gains at most one more
//! window of attempts per restart).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

pub use crate::db::tokens::{hash_token, new_token, TokenKind};
use crate::db::{self, Actor, Db, DbError};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: Uuid,
    pub org: Uuid,
    pub who: Who,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    User(Uuid),
    Agent(Uuid),
}

impl Principal {
    pub fn actor(&self) -> Actor {
        match self.who {
            Who::User(user) => Actor::User {
                org: self.org,
                user,
            },
            Who::Agent(agent) => Actor::Agent {
                org: self.org,
                agent,
            },
        }
    }

    pub fn agent_id(&self) -> Option<Uuid> {
        match self.who {
            Who::Agent(a) => Some(a),
            Who::User(_) => None,
        }
    }

    pub fn user_id(&self) -> Option<Uuid> {
        match self.who {
            Who::User(u) => Some(u),
            Who::Agent(_) => None,
        }
    }
}

/// Resolves a presented token to a user or agent principal. Enrolment tokens are not accepted
/// here (they are only good for `POST /v1/enroll`).
pub async fn resolve(db: &Db, token: &str) -> Result<Option<Principal>, DbError> {
    let hash = hash_token(token);
    let mut client = db.client().await?;
    let tx = db::begin(&mut client, &Actor::Anonymous).await?;
    let found = db::tokens::resolve(&tx, &hash).await?;
    tx.commit().await?;
    let Some(t) = found else {
        return Ok(None);
    };
    let who = match t.kind.as_str() {
        "user" => t.user.map(Who::User),
        "agent" => t.agent.map(Who::Agent),
        _ => None,
    };
    Ok(who.map(|who| Principal {
        token_id: t.token_id,
        org: t.org,
        who,
    }))
}

/// Throttles authentication failures per client address: after `limit` failures within
/// `window`, further attempts from that address are refused until the window has passed.
/// Per process; behind a load balancer each server process keeps its own count.
pub struct FailureThrottle {
    limit: u32,
    window: Duration,
    state: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureThrottle {
    pub fn new(limit: u32, window: Duration) -> FailureThrottle {
        FailureThrottle {
            limit,
            window,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until `ip` may try again, when it is currently blocked.
    pub fn blocked(&self, ip: IpAddr) -> Option<u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (count, since) = state.get(&ip)?;
        let elapsed = since.elapsed();
        (*count >= self.limit && elapsed < self.window)
            .then(|| (self.window - elapsed).as_secs().max(1))
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() > 100_000 {
            let window = self.window;
            state.retain(|_, (_, since)| since.elapsed() < window);
        }
        let entry = state.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.remove(&ip);
    }
}
