//! Shared harness for Keepsake's end-to-end tests.
