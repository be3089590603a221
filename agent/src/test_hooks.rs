//! Test hooks: the environment variables the end-to-end tests use to reach states a real run
//! cannot easily be brought to (a crash at an exact point, a full disk, fast key sealing). They
//! are read only when the crate is built with the `test-hooks` cargo feature, which only the
//! end-to-end test package turns on; in any other build every function here answers "no hook"
//! and the variables are never looked at. Read nowhere else.
//!
//! Crash behaviour: keeps nothing.

/// `KEEPSAKE_SCRYPT_LOG_N=N`: seal the key bundle at enrolment with scrypt work factor N.
pub const SCRYPT_LOG_N_ENV: &str = "KEEPSAKE_SCRYPT_LOG_N";
/// `KEEPSAKE_FAILPOINT=NAME`: abort the process at the failpoint NAME
/// (see `backup::failpoint`).
pub const FAILPOINT_ENV: &str = "KEEPSAKE_FAILPOINT";
/// `KEEPSAKE_TEST_FREE_BYTES=N`: the restore space check sees N free bytes on every target.
pub const FREE_BYTES_ENV: &str = "KEEPSAKE_TEST_FREE_BYTES";

/// The scrypt work factor set by [`SCRYPT_LOG_N_ENV`] (test builds only).
pub fn scrypt_log_n() -> Option<u8> {
    #[cfg(feature = "test-hooks")]
    {
        std::env::var(SCRYPT_LOG_N_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        None
    }
}

/// Whether [`FAILPOINT_ENV`] names the failpoint `name` (test builds only).
pub fn failpoint_armed(name: &str) -> bool {
    #[cfg(feature = "test-hooks")]
    {
        std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name)
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = name;
        false
    }
}

/// The free bytes set by [`FREE_BYTES_ENV`] (test builds only).
pub fn free_bytes() -> Option<u64> {
    #[cfg(feature = "test-hooks")]
    {
        std::env::var(FREE_BYTES_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
    }
    #[cfg(not(feature = "test-hooks"))]
    {
        None
    }
}
