//! `keepsake-server`: the central sync server.
//!
//! The binary is a thin wrapper around [`cli::main`], so tests can run the server in-process with
//! [`app::start`].
//!
//! Crash behaviour: the server keeps its state in PostgreSQL and on its destinations; each module's
//! note says what a crash leaves.

pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod destinations;
pub mod http;
pub mod packs;
pub mod recovery;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
