//! The test hooks are read only in builds with the `test-hooks` feature: a normal build ignores
//! the variables even when they are set. One test per build kind, each in its own process (the
//! variables are process-wide).

use keepsake_agent::test_hooks::{self, FAILPOINT_ENV, FREE_BYTES_ENV, SCRYPT_LOG_N_ENV};

fn set_all(dir: &std::path::Path) {
    std::env::set_var(SCRYPT_LOG_N_ENV, "4");
    std::env::set_var(FAILPOINT_ENV, "hook_test_point");
    std::env::set_var(FREE_BYTES_ENV, "7");
    assert!(dir.exists());
}

#[cfg(not(feature = "test-hooks"))]
#[test]
fn a_normal_build_ignores_the_test_hooks() {
    let dir = tempfile::tempdir().unwrap();
    set_all(dir.path());
    assert_eq!(test_hooks::scrypt_log_n(), None);
    assert!(!test_hooks::failpoint_armed("hook_test_point"));
    // Would abort this test process if the hook were read.
    keepsake_agent::backup::failpoint("hook_test_point");
    let free = keepsake_agent::recovery::free_space(dir.path()).unwrap();
    assert_ne!(free, 7, "the real free space, not the hook's");
}

#[cfg(feature = "test-hooks")]
#[test]
fn a_test_build_reads_the_test_hooks() {
    let dir = tempfile::tempdir().unwrap();
    set_all(dir.path());
    assert_eq!(test_hooks::scrypt_log_n(), Some(4));
    assert!(test_hooks::failpoint_armed("hook_test_point"));
    assert!(!test_hooks::failpoint_armed("another_point"));
    assert_eq!(keepsake_agent::recovery::free_space(dir.path()).unwrap(), 7);
}
