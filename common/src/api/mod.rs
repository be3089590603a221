//! JSON types of the `/v1` HTTP API, shared by agent and server.
//!
//! Binary bodies (blob uploads and downloads) use [`crate::framing`]; job deltas use
//! [`crate::delta`]. Every request carries `Authorization: Bearer <token>` except enrolment,
//! which presents the enrolment token in its body.
//!
//! One module per concern, all re-exported here, so every type is `keepsake_common::api::X`:
//! `enrol` (organisations, tokens, enrolment), `keys` (registered data keys), `blobs`
//! (blobs and packs), `jobs` (sources, jobs, commits), `points` (recovery points and
//! browsing), `policy` (policy and heartbeats), `recovery` (recovery jobs and drills) and
//! `scenarios` (disaster scenarios).

use serde::{Deserialize, Serialize};

mod blobs;
mod enrol;
mod jobs;
mod keys;
mod points;
mod policy;
mod recovery;
mod scenarios;

pub use blobs::*;
pub use enrol::*;
pub use jobs::*;
pub use keys::*;
pub use points::*;
pub use policy::*;
pub use recovery::*;
pub use scenarios::*;

/// Version string of the HTTP API.
pub const API_VERSION: &str = "v1";

/// Body of `GET /readyz`: three yes/no answers and nothing else (the reason for a "no" goes to
/// the server's log, never to an unauthenticated caller).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub database: bool,
    pub migrations_current: bool,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}
