//! The reader stage: one attempt at reading one file, and the chunk loop shared with
//! [`super::Pipeline::chunk_stream`].
//!
//! An attempt opens the file (never following a symlink), `fstat`s it, streams it through the
//! chunker while hashing (whole-file content hash and per-chunk blob IDs), hands every chunk
//! that is neither known to the sink nor already sealed in this run to the sealers, and then
//! checks that what was read is one consistent version of the file:
//!
//! * `fstat` after reading equals `fstat` before (size, mtime, ctime, inode), checked again every
//!   `restat_every` bytes so a big file that changes is abandoned early;
//! * the number of bytes read equals the size;
//! * the path still names the same file (`lstat`: not replaced by a rename, not deleted);
//! * the file's ctime (and a past mtime) is older than the start of the read by more than the
//!   racy window: file-system timestamps are coarse (a clock tick, or 2 s on FAT), so a write
//!   landing in the same tick as the read could leave size and times unchanged. Such a file is
//!   read again once the window has passed ("racy" in git's sense).
//!
//! Any failed check makes the attempt a retry; the result of a failed attempt is discarded (its
//! blobs, already emitted, are harmless: nothing references them).
//!
//! Crash behaviour: a reader only reads the file and hands chunks on; a crash mid-file leaves the
//! file untouched and the read to be redone by the next run.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keepsake_common::chunking::{chunk_with, ChunkStop, Window, DEFAULT_CONFIG};
use keepsake_common::delta::ChunkRef;
use keepsake_common::ids::{BlobId, ContentHash};

use super::queue::SealJob;
use super::{FileErrorKind, FileResult, FileTask, Shared};
use crate::detect::Stat;

/// Files of at most this many bytes are one chunk (the format's rule): read in one go into a
/// buffer of their size, which goes to the sealers as it is.
pub(crate) const SINGLE_CHUNK_MAX: usize = DEFAULT_CONFIG.min;

fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    let mut o = fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A fifo that appeared in the file's place must not block the reader.
        o.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    o.open(path)
}

#[cfg(target_os = "linux")]
fn advise_sequential(f: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: advisory call on a descriptor we own; failure is harmless.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_sequential(_f: &File) {}

/// How one attempt ended.
pub(crate) enum Attempt {
    /// A consistent version was read.
    Done(FileResult),
    /// The file changed (or may have): read it again, not before `not_before` if given.
    Retry {
        why: String,
        not_before: Option<Instant>,
    },
    /// A failure retrying will not fix.
    Failed {
        kind: FileErrorKind,
        message: String,
        os_error: Option<i32>,
    },
}

fn failed(kind: FileErrorKind, e: &io::Error, what: &str) -> Attempt {
    Attempt::Failed {
        kind,
        message: format!("{what}: {e}"),
        os_error: e.raw_os_error(),
    }
}

fn open_failure(e: &io::Error) -> Attempt {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return Attempt::Failed {
            kind: FileErrorKind::NotAFile,
            message: "replaced by a symbolic link".into(),
            os_error: e.raw_os_error(),
        };
    }
    match e.kind() {
        io::ErrorKind::NotFound => failed(FileErrorKind::Vanished, e, "gone before it was read"),
        io::ErrorKind::PermissionDenied => failed(FileErrorKind::Unreadable, e, "cannot open"),
        _ => failed(FileErrorKind::Io, e, "cannot open"),
    }
}

/// Why the chunk loop stopped early.
pub(crate) enum Stop {
    /// The file changed under the reader.
    Changed(String),
    /// A read failed.
    Io(io::Error),
    /// The pipeline is stopping.
    Aborted,
}

/// Per-read timing (nanoseconds), folded into the pipeline's counters.
#[derive(Default)]
pub(crate) struct Timing {
    pub read: Cell<u64>,
    pub hash: Cell<u64>,
    pub dispatch: Cell<u64>,
    pub wait: Cell<u64>,
}

fn bump(c: &Cell<u64>, since: Instant) {
    c.set(c.get() + since.elapsed().as_nanos() as u64);
}

/// A reader that adds the time spent in `read` to a counter.
pub(crate) struct TimedRead<'a, R> {
    pub inner: R,
    pub ns: &'a Cell<u64>,
}

impl<R: Read> Read for TimedRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = Instant::now();
        let r = self.inner.read(buf);
        self.ns.set(self.ns.get() + t.elapsed().as_nanos() as u64);
        r
    }
}

/// What the chunk loop produced.
pub(crate) struct Content {
    pub bytes: u64,
    pub content_hash: ContentHash,
    pub chunks: Vec<ChunkRef>,
}

impl Shared {
    /// Whether a chunk must be sealed: neither known to the sink nor sealed earlier in this run
    /// (claims it for sealing when it must).
    pub(crate) fn wants(&self, id: &BlobId) -> bool {
        let c = &self.counters;
        if self.sink.known(id) {
            c.add(&c.chunks_known, 1);
            return false;
        }
        if !self.claim(id) {
            c.add(&c.chunks_deduped, 1);
            return false;
        }
        true
    }

    /// Queues a claimed chunk for the sealers (waits while the memory budget is used up).
    fn queue_seal(&self, id: BlobId, data: Vec<u8>, t: &Timing) -> Result<(), Stop> {
        match self.seal.push(SealJob { id, data }) {
            Ok(waited) => {
                t.wait.set(t.wait.get() + waited.as_nanos() as u64);
                Ok(())
            }
            Err(_) => Err(Stop::Aborted),
        }
    }

    /// Streams `reader` through the chunker (or the single-chunk path when `small`), hashing
    /// and dispatching. `limit`: stop as soon as more than this many bytes come (the file grew).
    /// `check` is called every `restat_every` bytes and may stop the loop.
    pub(crate) fn chunk_loop<R: Read>(
        &self,
        reader: R,
        small: bool,
        limit: Option<u64>,
        window: &mut Window,
        t: &Timing,
        check: &mut dyn FnMut() -> Result<(), Stop>,
    ) -> Result<Content, Stop> {
        let mut hasher = self.content_hasher.clone();
        let mut chunks = Vec::new();
        let mut bytes: u64 = 0;
        let counters = &self.counters;
        if small {
            let mut buf = Vec::with_capacity(limit.unwrap_or(0) as usize + 1);
            let mut r = TimedRead {
                inner: reader,
                ns: &t.read,
            };
            (&mut r)
                .take(SINGLE_CHUNK_MAX as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(Stop::Io)?;
            bytes = buf.len() as u64;
            counters.add(&counters.bytes_read, bytes);
            if buf.len() > SINGLE_CHUNK_MAX || limit.is_some_and(|l| bytes > l) {
                return Err(Stop::Changed("grew while being read".into()));
            }
            if !buf.is_empty() {
                let h = Instant::now();
                hasher.update(&buf);
                let id = BlobId::of(&self.key, &buf);
                bump(&t.hash, h);
                chunks.push(ChunkRef {
                    id,
                    len: buf.len() as u32,
                });
                counters.add(&counters.chunks, 1);
                let d = Instant::now();
                if self.wants(&id) {
                    self.queue_seal(id, buf, t)?;
                }
                bump(&t.dispatch, d);
            }
        } else {
            let timed = TimedRead {
                inner: reader,
                ns: &t.read,
            };
            let restat = self.opts.restat_every.max(1);
            let mut next_check = restat;
            let r = chunk_with(
                &self.cuts,
                window,
                timed,
                |data: &[u8]| -> Result<(), Stop> {
                    let len = data.len() as u64;
                    bytes += len;
                    counters.add(&counters.bytes_read, len);
                    if limit.is_some_and(|l| bytes > l) {
                        return Err(Stop::Changed("grew while being read".into()));
                    }
                    if self.is_aborted() {
                        return Err(Stop::Aborted);
                    }
                    let h = Instant::now();
                    hasher.update(data);
                    let id = BlobId::of(&self.key, data);
                    bump(&t.hash, h);
                    chunks.push(ChunkRef {
                        id,
                        len: data.len() as u32,
                    });
                    counters.add(&counters.chunks, 1);
                    let d = Instant::now();
                    if self.wants(&id) {
                        self.queue_seal(id, data.to_vec(), t)?;
                    }
                    bump(&t.dispatch, d);
                    if bytes >= next_check {
                        next_check = bytes + restat;
                        check()?;
                    }
                    Ok(())
                },
            );
            match r {
                Ok(_) => {}
                Err(ChunkStop::Io(e)) => return Err(Stop::Io(e)),
                Err(ChunkStop::Callback(stop)) => return Err(stop),
            }
        }
        Ok(Content {
            bytes,
            content_hash: hasher.finalize(),
            chunks,
        })
    }

    /// One attempt at reading `task` (see the module docs).
    pub(crate) fn read_attempt(&self, task: &FileTask, window: &mut Window) -> Attempt {
        let started = Instant::now();
        let file = match open_nofollow(&task.path) {
            Ok(f) => f,
            Err(e) => return open_failure(&e),
        };
        let before = match file.metadata() {
            Ok(md) => Stat::of(&md),
            Err(e) => return failed(FileErrorKind::Io, &e, "cannot stat"),
        };
        if !before.is_file {
            return Attempt::Failed {
                kind: FileErrorKind::NotAFile,
                message: "no longer a regular file".into(),
                os_error: None,
            };
        }
        advise_sequential(&file);
        let read_start_ns = now_ns();
        let timing = Timing::default();
        let small = before.size <= SINGLE_CHUNK_MAX as u64;
        let mut check = || -> Result<(), Stop> {
            match file.metadata() {
                Ok(md) if Stat::of(&md).same_version(&before) => Ok(()),
                Ok(_) => Err(Stop::Changed("changed while being read".into())),
                Err(e) => Err(Stop::Io(e)),
            }
        };
        let res = self.chunk_loop(&file, small, Some(before.size), window, &timing, &mut check);
        let total = started.elapsed().as_nanos() as u64;
        self.add_timing(&timing, total);
        let content = match res {
            Ok(c) => c,
            Err(Stop::Changed(why)) => {
                return Attempt::Retry {
                    why,
                    not_before: None,
                }
            }
            Err(Stop::Io(e)) => return failed(FileErrorKind::Io, &e, "read failed"),
            Err(Stop::Aborted) => {
                return Attempt::Failed {
                    kind: FileErrorKind::Aborted,
                    message: "the backup was stopped".into(),
                    os_error: None,
                }
            }
        };
        let after = match file.metadata() {
            Ok(md) => Stat::of(&md),
            Err(e) => return failed(FileErrorKind::Io, &e, "cannot stat"),
        };
        drop(file);
        if !after.same_version(&before) {
            return Attempt::Retry {
                why: "changed while being read".into(),
                not_before: None,
            };
        }
        if content.bytes != after.size {
            return Attempt::Retry {
                why: format!(
                    "read {} bytes but the file has {}",
                    content.bytes, after.size
                ),
                not_before: None,
            };
        }
        match fs::symlink_metadata(&task.path) {
            Ok(md) => {
                if !Stat::of(&md).same_version(&after) {
                    return Attempt::Retry {
                        why: "replaced while being read".into(),
                        not_before: None,
                    };
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return failed(FileErrorKind::Vanished, &e, "deleted while being read")
            }
            Err(e) => return failed(FileErrorKind::Io, &e, "cannot stat"),
        }
        if let Some(wait) = self.racy_wait(&after, read_start_ns) {
            return Attempt::Retry {
                why: "modified just before it was read".into(),
                not_before: Some(Instant::now() + wait),
            };
        }
        Attempt::Done(FileResult {
            rel: task.rel.clone(),
            size: after.size,
            mtime_ns: after.mtime_ns,
            ctime_ns: after.ctime_ns,
            inode: after.inode,
            mode: after.mode,
            hard_link: task.hard_link.filter(|&(_, ino)| ino == after.inode),
            content_hash: content.content_hash,
            chunks: content.chunks,
            attempts: 0,
        })
    }

    /// `Some(wait)` when the file's newest timestamp is too close to the start of the read for
    /// the stat comparison to prove that nothing changed during it.
    fn racy_wait(&self, st: &Stat, read_start_ns: i64) -> Option<Duration> {
        if !cfg!(unix) {
            // Elsewhere `ctime_ns` is the creation time: the check would prove nothing.
            return None;
        }
        let window = i64::try_from(self.opts.racy_window.as_nanos()).unwrap_or(i64::MAX);
        if window == 0 {
            return None;
        }
        // ctime is always set by the kernel from its clock; an mtime in the future (a camera
        // with a wrong date) is ignored rather than making the file wait for years.
        let mut newest = st.ctime_ns;
        if st.mtime_ns <= read_start_ns {
            newest = newest.max(st.mtime_ns);
        }
        let safe_after = newest.saturating_add(window);
        if safe_after < read_start_ns {
            return None;
        }
        let wait_ns = safe_after.saturating_sub(now_ns()).max(0) as u64 + 1_000_000;
        Some(Duration::from_nanos(wait_ns).min(self.opts.racy_window * 2))
    }
}
