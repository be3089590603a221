//! One daemon per home: the lock file `<home>/daemon.lock`, held with an exclusive `flock` by
//! the running daemon for its whole life, with the daemon's process id written into it (for the
//! message a second daemon prints). `keepsake status` probes the same lock to tell whether a
//! daemon runs.
//!
//! Crash behaviour: the lock is the `flock`, not the file. The kernel releases it when the
//! process ends in any way (exit, panic, `kill -9`, a crash), so a daemon started after a crash
//! takes it at once; the file stays behind with the old process id, which is only informational
//! and is overwritten by the next daemon. Nothing here needs cleaning up.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::home::{Home, DAEMON_LOCK};

use super::DaemonError;

/// Opens the daemon's lock file and tries to take its exclusive lock without waiting:
/// `Some(file)` holding it, `None` when another process holds it.
pub(super) fn try_lock_file(path: &Path) -> Result<Option<std::fs::File>, DaemonError> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| DaemonError::Other(format!("{}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(f))
}

/// Takes the one-daemon-per-home lock and writes this process's id into it. A lock held only
/// for a moment (a `keepsake status` checking whether a daemon runs) is waited for, up to two
/// seconds; a lock held longer is another daemon.
pub(super) fn lock_daemon(home: &Home) -> Result<std::fs::File, DaemonError> {
    home.ensure_dir()
        .map_err(|e| DaemonError::Other(e.to_string()))?;
    let path = home.path(DAEMON_LOCK);
    for attempt in 0..20 {
        if let Some(mut f) = try_lock_file(&path)? {
            let _ = f.set_len(0);
            let _ = write!(f, "{}", std::process::id());
            return Ok(f);
        }
        if attempt < 19 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let pid = std::fs::read_to_string(&path).unwrap_or_default();
    Err(DaemonError::AlreadyRunning(format!("pid {}", pid.trim())))
}

/// Whether a daemon holds this home's lock. The probe takes the lock for an instant and writes
/// nothing (a starting daemon waits such a probe out, see [`lock_daemon`]).
pub fn daemon_running(home: &Home) -> bool {
    let path = home.path(DAEMON_LOCK);
    if !path.exists() {
        return false;
    }
    matches!(try_lock_file(&path), Ok(None))
}

#[cfg(test)]
mod tests {
    /// A `keepsake status` probing the lock at the moment the daemon starts must not make the
    /// daemon give up; a daemon that really holds the lock is reported, and its pid kept.
    #[test]
    fn a_status_probe_never_stops_a_starting_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::home::Home::new(dir.path());
        let path = home.path(crate::home::DAEMON_LOCK);
        assert!(!super::daemon_running(&home));
        // A probe holds the lock for a moment while the daemon starts.
        let probe = super::try_lock_file(&path).unwrap().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(probe);
        });
        let held = super::lock_daemon(&home).expect("the daemon waits the probe out");
        release.join().unwrap();
        assert!(super::daemon_running(&home));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            std::process::id().to_string(),
            "probing does not overwrite the daemon's pid"
        );
        // A second daemon is refused, naming the first.
        match super::lock_daemon(&home) {
            Err(super::DaemonError::AlreadyRunning(m)) => {
                assert!(m.contains(&std::process::id().to_string()), "{m}")
            }
            other => panic!("{other:?}"),
        }
        drop(held);
        assert!(!super::daemon_running(&home));
    }
}
