//! Policy from the server's side, over real HTTP on 127.0.0.1 with real PostgreSQL: what an agent
//! is told (exclusions by scope, wedding-critical windows, schedules with their wedding-season
//! variant, vendor settings), heartbeats, the admin endpoints that manage the rules — and every
//! refusal: agents managing rules, users reading agent policy, other organisations, bad input.

mod agent_policy;
mod heartbeats;
mod refusals;
mod rule_management;
mod support;
