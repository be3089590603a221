//! What the organisation decides, applied without a restart: the policy pulled from the server
//! every `policy_interval` (exclusions and wedding-critical rules, read by each run; the settle
//! window, bandwidth limit and daily upload window [`in_window`] of the vendor settings; the
//! reconciliation schedules), the recovery requests handled on each pull, and the scheduled
//! restore drill.
//!
//! Crash behaviour: a changed policy is also kept in the home (`policy.json`, replaced
//! atomically) for the commands that run without the server; the daemon itself starts without
//! a policy and pulls it on its first turn, so until the server answers it runs on the command
//! line's settings and the home's local rules (no organisation exclusions, wedding-critical
//! rules or upload window). Schedules and the drill timer live in memory: after a restart the
//! next occurrence is computed from the new start (an occurrence missed while the daemon was
//! down is not caught up; every source is reconciled at start anyway), and the first drill comes
//! one `drill_interval` after the start. A recovery job is claimed under a lease on the server:
//! when the daemon dies during one, the job is claimed again once the lease runs out. A drill
//! killed midway reports nothing and leaves its scratch folder in `<home>/tmp`.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::client;
use crate::home::TMP_DIR;

use super::{Daemon, BACKUP_RETRY, QUICK};

/// Whether `now` (local time) is inside the daily window `start`–`end` (`HH:MM`, may wrap).
pub fn in_window(start: &str, end: &str, now: chrono::NaiveTime) -> bool {
    let parse = |s: &str| chrono::NaiveTime::parse_from_str(s, "%H:%M").ok();
    match (parse(start), parse(end)) {
        (Some(s), Some(e)) if s <= e => now >= s && now < e,
        (Some(s), Some(e)) => now >= s || now < e,
        _ => true,
    }
}

impl Daemon {
    /// How long a file must stay unchanged: the organisation's vendor setting, unless
    /// `KEEPSAKE_SETTLE_SECS` forces the daemon's own value.
    pub(super) fn settle(&self) -> Duration {
        match self.policy.as_ref().and_then(|p| p.vendor.as_ref()) {
            Some(v) if std::env::var_os("KEEPSAKE_SETTLE_SECS").is_none() => {
                Duration::from_secs(u64::from(v.settle_window_seconds))
            }
            _ => self.opts.settle,
        }
    }

    /// The upload limit: the command line's, else the organisation's vendor setting.
    pub(super) fn bandwidth_kbps(&self) -> Option<u32> {
        self.opts.bandwidth_kbps.or_else(|| {
            self.policy
                .as_ref()
                .and_then(|p| p.vendor.as_ref())
                .and_then(|v| v.bandwidth_limit_kbps)
        })
    }

    /// Whether uploads may run now (the vendor's daily window, local time; open without one).
    pub(super) fn upload_window_open(&self) -> bool {
        let Some(v) = self.policy.as_ref().and_then(|p| p.vendor.as_ref()) else {
            return true;
        };
        match (&v.schedule_window_start, &v.schedule_window_end) {
            (Some(s), Some(e)) => in_window(s, e, chrono::Local::now().time()),
            _ => true,
        }
    }

    /// Pulls the policy (one quick try); a changed one replaces the schedules, is kept in the
    /// home and marks every source for a rescan now. Then the recovery requests.
    pub(super) fn refresh_policy(&mut self) {
        let client = match client::connect(&self.home, Some(QUICK)) {
            Ok((_, c)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the API client");
                return;
            }
        };
        match client.policy() {
            Ok(p) => {
                if self.policy.as_ref() != Some(&p) {
                    tracing::info!(
                        exclusions = p.exclusions.len(),
                        critical = p.critical.len(),
                        schedules = p.schedules.len(),
                        "policy updated"
                    );
                    self.schedules = p
                        .schedules
                        .iter()
                        .filter_map(|s| {
                            let c: croner::Cron = s.cron.parse().ok()?;
                            let next = c.find_next_occurrence(&Utc::now(), false).ok()?;
                            Some((c, next))
                        })
                        .collect();
                    // Rules changed: rescan now so they apply to what is already there (and a
                    // paused source resumes as soon as its upload window opens).
                    for s in &mut self.sources {
                        s.dirty = true;
                        s.next_run = Instant::now();
                    }
                    if let Err(e) = self.home.save_policy(&p) {
                        tracing::warn!(error = %e, "cannot keep the policy in the home");
                    }
                    self.policy = Some(p);
                }
                // Recovery requests go before backup work (the runs due come after this).
                self.recovery_requests();
            }
            Err(e) => tracing::debug!(error = %e, "policy not refreshed (offline?)"),
        }
    }

    /// Recovery requests for this machine ([`crate::recovery::daemon_tick`]): executed when the
    /// home keeps an unsealed key (`keepsake unlock --remember`) and the organisation's policy
    /// allows it (`agents_keep_unsealed_key`); otherwise the server is told they wait for the
    /// key to be unlocked here.
    fn recovery_requests(&mut self) {
        let Some(policy) = self.policy.clone() else {
            return;
        };
        let Ok((_, client)) = client::connect(&self.home, Some(BACKUP_RETRY)) else {
            return;
        };
        let done = crate::recovery::daemon_tick(&self.home, &client, &policy, &self.stop);
        if !done.is_empty() {
            let failed = done.iter().filter(|o| !o.succeeded()).count();
            tracing::info!(jobs = done.len(), failed, "recovery requests executed");
        }
    }

    /// The scheduled restore drill: only with a kept key the organisation allows (a drill
    /// needs to decrypt); the result is recorded on the server by [`crate::recovery::drill`].
    pub(super) fn scheduled_drill(&mut self) {
        if !self
            .policy
            .as_ref()
            .is_some_and(|p| p.agents_keep_unsealed_key)
        {
            return;
        }
        let keys = match self.home.stored_secret_keys() {
            Ok(Some(k)) => k,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kept key; no restore drill");
                return;
            }
        };
        let Ok((cfg, client)) = client::connect(&self.home, Some(BACKUP_RETRY)) else {
            return;
        };
        match crate::recovery::drill(&client, &keys, cfg.agent_id, &self.home.path(TMP_DIR), 20) {
            Ok(o) => tracing::info!(
                files = o.files_restored,
                passed = o.validation.passed(),
                "restore drill recorded"
            ),
            Err(e) => tracing::warn!(error = %e, "restore drill failed"),
        }
    }

    /// Marks every source for a reconciliation scan when a schedule of the policy is due.
    pub(super) fn check_schedules(&mut self) {
        let now = Utc::now();
        let mut fire = false;
        for (cron, next) in &mut self.schedules {
            if now >= *next {
                fire = true;
                if let Ok(n) = cron.find_next_occurrence(&now, false) {
                    *next = n;
                }
            }
        }
        if fire {
            tracing::info!("scheduled reconciliation scan");
            for s in &mut self.sources {
                s.dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::in_window;
    use chrono::NaiveTime;

    fn t(s: &str) -> NaiveTime {
        NaiveTime::parse_from_str(s, "%H:%M").unwrap()
    }

    #[test]
    fn upload_windows_within_a_day_and_across_midnight() {
        assert!(in_window("09:00", "17:00", t("09:00")));
        assert!(in_window("09:00", "17:00", t("16:59")));
        assert!(!in_window("09:00", "17:00", t("17:00")));
        assert!(!in_window("09:00", "17:00", t("08:59")));
        // Overnight at the venue: 22:00 to 06:30.
        assert!(in_window("22:00", "06:30", t("23:15")));
        assert!(in_window("22:00", "06:30", t("00:00")));
        assert!(in_window("22:00", "06:30", t("06:29")));
        assert!(!in_window("22:00", "06:30", t("06:30")));
        assert!(!in_window("22:00", "06:30", t("12:00")));
        // A window the daemon cannot read never stops uploads.
        assert!(in_window("25:00", "06:30", t("12:00")));
    }
}
