//! Validation of what a recovery request names: the target folder on the target machine, the
//! path prefixes to restore (checked and cleaned up by the rules shared with the agent,
//! [`keepsake_common::prefix`], which are the database's `relative_paths_valid`), and what each
//! recovery type requires of the paths and the point.
//!
//! Pure checks: no table, no statement, no state, so nothing here is affected by a crash.

use keepsake_common::api::{NewRecoveryJob, RecoveryType};
use keepsake_common::prefix::PathPrefixes;

use super::{RecoveryError, Result};

/// An absolute folder on the target machine: `/...`, `C:\...` / `C:/...`, or `\\server\share`.
pub fn validate_target_directory(dir: &str) -> Result<()> {
    if dir.is_empty() || dir.len() > 4096 {
        return Err(RecoveryError::Invalid(
            "target_directory must be 1 to 4096 bytes".into(),
        ));
    }
    if dir.chars().any(char::is_control) {
        return Err(RecoveryError::Invalid(
            "target_directory contains control characters".into(),
        ));
    }
    let b = dir.as_bytes();
    let windows_drive =
        b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'\\' | b'/');
    if !(dir.starts_with('/') || windows_drive || dir.starts_with("\\\\")) {
        return Err(RecoveryError::Invalid(format!(
            "target_directory `{dir}` is not an absolute path on the target machine"
        )));
    }
    Ok(())
}

/// The job's path prefixes as it stores them: relative, '/'-separated, without empty, `.` or `..`
/// components (the database's `relative_paths_valid`); a trailing '/' is dropped and duplicates
/// are removed. The rules and messages are the shared ones ([`PathPrefixes::parse`]).
pub fn normalize_prefixes(prefixes: &[String]) -> Result<Vec<String>> {
    PathPrefixes::parse(prefixes)
        .map(PathPrefixes::into_vec)
        .map_err(|e| RecoveryError::Invalid(e.to_string()))
}

/// What each recovery type requires of the paths and the point.
pub(super) fn validate_shape(req: &NewRecoveryJob, prefixes: &[String]) -> Result<()> {
    match req.recovery_type {
        RecoveryType::FullRecovery if !prefixes.is_empty() => Err(RecoveryError::Invalid(
            "a full recovery restores the whole source; use partial_recovery for some folders"
                .into(),
        )),
        RecoveryType::PartialRecovery if prefixes.is_empty() => Err(RecoveryError::Invalid(
            "a partial recovery needs at least one path prefix (path_prefixes)".into(),
        )),
        RecoveryType::FileRecovery if prefixes.len() != 1 => Err(RecoveryError::Invalid(format!(
            "a file recovery restores exactly one file (path_prefixes has {})",
            prefixes.len()
        ))),
        RecoveryType::PointInTimeRecovery
            if req.point_in_time.is_none() && req.recovery_point_id.is_none() =>
        {
            Err(RecoveryError::Invalid(
                "a point-in-time recovery needs point_in_time (or a recovery_point_id)".into(),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_directories_must_be_absolute() {
        for ok in [
            "/Users/ana/Restore",
            "C:\\Restore",
            "d:/restore",
            "\\\\nas\\share",
        ] {
            assert!(validate_target_directory(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Restore", "./x", "C:", "C:Restore", "/tmp/a\nb"] {
            assert!(validate_target_directory(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_are_relative_and_normalised() {
        let p =
            |v: &[&str]| normalize_prefixes(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            p(&["2025/Smith/", "2025/Smith", "a"]).unwrap(),
            vec!["2025/Smith".to_string(), "a".to_string()]
        );
        for bad in ["/abs", "..", "a/../b", "a//b", "./a", "", "/", "a/."] {
            assert!(p(&[bad]).is_err(), "{bad:?}");
        }
    }
}
