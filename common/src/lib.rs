//! Keepsake's shared format and wire types.
//!
//! Nothing in this crate does IO beyond `std::io::Read`/`Write` streams: no tokio, no HTTP, no SQL.
//! The byte-level specification of everything here is `docs/format.md`.
//!
//! The pipeline of one file on the agent:
//!
//! 1. [`chunking`] cuts the file into chunks (content-defined, or page-aligned for SQLite files);
//! 2. [`ids`] names each chunk with its keyed [`ids::BlobId`] and the file with its
//!    [`ids::ContentHash`];
//! 3. [`crypto::seal_blob`] compresses the chunk where it pays ([`compress`]) and age-encrypts it
//!    to the organisation's current recipient ([`keys`]);
//! 4. [`framing`] batches sealed blobs into one upload body;
//! 5. [`delta`] records the job's file changes (with [`path`] rules for names), each entry sealed
//!    with the agent's [`mac`].
//!
//! Recovery jobs name what to restore with path prefixes, whose rules live in [`prefix`].
//!
//! Crash behaviour: nothing in this crate holds state between calls or writes files, so a crash can
//! only lose the call in progress; durability is the agent's and the server's business.

pub mod api;
pub mod chunking;
pub mod compress;
pub mod crypto;
pub mod delta;
pub mod framing;
pub mod ids;
pub mod keys;
pub mod mac;
pub mod path;
pub mod prefix;
