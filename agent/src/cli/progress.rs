//! The progress bar the commands show on stderr while they work: one builder, one look per
//! command, hidden with `--json` or when stderr is not a terminal.
//!
//! Crash behaviour: the command keeps no state of its own; it parses, calls and prints, so a crash
//! leaves what the modules it calls leave (see their notes).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// What a bar shows and how often it redraws.
pub(super) struct Look {
    template: &'static str,
    progress_chars: Option<&'static str>,
    tick: Duration,
}

impl Look {
    /// `scan` and `pack`: a spinner, the elapsed time and a message.
    pub(super) const SPINNER: Look = Look {
        template: "{spinner} {elapsed} {msg}",
        progress_chars: None,
        tick: Duration::from_millis(120),
    };
    /// `backup`: the files backed up so far.
    pub(super) const BACKUP: Look = Look {
        template: "{spinner} {pos} files backed up  {elapsed_precise}",
        progress_chars: None,
        tick: Duration::from_millis(200),
    };
    /// `restore`: a message with the files and bytes restored so far.
    pub(super) const RESTORE: Look = Look {
        template: "{spinner} {msg}  {elapsed_precise}",
        progress_chars: None,
        tick: Duration::from_millis(200),
    };
    /// `recover`: the phase, and the bytes done of the job's total.
    pub(super) const RECOVERY: Look = Look {
        template: "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        progress_chars: Some("=> "),
        tick: Duration::from_millis(200),
    };
}

/// A bar drawn on stderr with `look`; hidden (drawing nothing) when `hidden` or when stderr is
/// not a terminal.
pub(super) fn bar(hidden: bool, look: &Look) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    if let Ok(mut style) = ProgressStyle::with_template(look.template) {
        if let Some(chars) = look.progress_chars {
            style = style.progress_chars(chars);
        }
        pb.set_style(style);
    }
    pb.enable_steady_tick(look.tick);
    pb
}

/// Runs `work` on this thread while another thread calls `update` every `every` (to refresh a
/// bar from shared counters); returns what `work` returned once the updater has stopped.
pub(super) fn while_running<T>(
    every: Duration,
    mut update: impl FnMut() + Send,
    work: impl FnOnce() -> T,
) -> T {
    let done = AtomicBool::new(false);
    let done = &done;
    std::thread::scope(|s| {
        s.spawn(move || {
            while !done.load(Ordering::Relaxed) {
                update();
                std::thread::sleep(every);
            }
        });
        let r = work();
        done.store(true, Ordering::Relaxed);
        r
    })
}
