//! Recovery management from the server's side, over real HTTP on 127.0.0.1 with real
//! PostgreSQL: recovery jobs requested by users and resolved to recovery points, emergency jobs
//! paging the emergency contacts, claims by the target machine (exactly once, across two server
//! processes, with leases), progress, logs, finishing with a validation, restore drills, disaster
//! scenarios and the `keepsake-server admin recovery|scenario` commands.

mod admin;
mod claims;
mod drills_and_scenarios;
mod emergency;
mod reporting;
mod requests;
mod support;
