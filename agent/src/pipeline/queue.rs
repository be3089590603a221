//! The two queues between the pipeline's threads.
//!
//! * [`TaskQueue`]: files waiting to be read, highest priority first (first come, first served
//!   within a priority class), plus retries parked until their due time. Its length is bounded by
//!   the submitter, which never has more than `max_outstanding_files` files in flight.
//! * [`SealQueue`]: chunks waiting to be sealed, bounded in **bytes**: a reader blocks while the
//!   plaintext queued or being sealed would exceed the memory budget (one chunk is always let
//!   through, so a chunk larger than the budget cannot dead-lock).
//!
//! Crash behaviour: in-memory only; a crash loses the queued files and chunks, which the next run
//! plans again.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keepsake_common::ids::BlobId;

use super::FileTask;

/// A file to read, with the number of attempts already made.
#[derive(Debug)]
pub(crate) struct Job {
    pub task: FileTask,
    pub attempts: u32,
}

struct Ready {
    priority: u8,
    seq: u64,
    job: Job,
}

impl PartialEq for Ready {
    fn eq(&self, o: &Self) -> bool {
        self.priority == o.priority && self.seq == o.seq
    }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ready {
    // BinaryHeap pops the greatest: the lowest priority number, then the oldest.
    fn cmp(&self, o: &Self) -> Ordering {
        Reverse((self.priority, self.seq)).cmp(&Reverse((o.priority, o.seq)))
    }
}

struct Delayed {
    due: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due && self.seq == o.seq
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> Ordering {
        Reverse((self.due, self.seq)).cmp(&Reverse((o.due, o.seq)))
    }
}

#[derive(Default)]
struct TaskState {
    ready: BinaryHeap<Ready>,
    delayed: BinaryHeap<Delayed>,
    seq: u64,
    closed: bool,
    aborted: bool,
}

/// Files to read (see the module docs).
#[derive(Default)]
pub(crate) struct TaskQueue {
    state: Mutex<TaskState>,
    cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskQueue {
    /// Adds a job now.
    pub fn push(&self, job: Job) {
        let mut s = lock(&self.state);
        s.seq += 1;
        let seq = s.seq;
        let priority = job.task.priority as u8;
        s.ready.push(Ready { priority, seq, job });
        drop(s);
        self.cv.notify_one();
    }

    /// Adds a job that must not start before `due` (a retry).
    pub fn push_delayed(&self, job: Job, due: Instant) {
        let mut s = lock(&self.state);
        s.seq += 1;
        let seq = s.seq;
        if s.aborted {
            let priority = job.task.priority as u8;
            s.ready.push(Ready { priority, seq, job });
        } else {
            s.delayed.push(Delayed { due, seq, job });
        }
        drop(s);
        // Every waiter recomputes its timeout.
        self.cv.notify_all();
    }

    /// The next job to run: blocks until one is due; `None` once closed and empty.
    pub fn pop(&self) -> Option<Job> {
        let mut s = lock(&self.state);
        loop {
            let now = Instant::now();
            while s.delayed.peek().is_some_and(|d| d.due <= now || s.aborted) {
                if let Some(d) = s.delayed.pop() {
                    let priority = d.job.task.priority as u8;
                    s.ready.push(Ready {
                        priority,
                        seq: d.seq,
                        job: d.job,
                    });
                }
            }
            if let Some(r) = s.ready.pop() {
                return Some(r.job);
            }
            match s.delayed.peek().map(|d| d.due) {
                Some(due) => {
                    let wait = due
                        .saturating_duration_since(now)
                        .max(Duration::from_micros(50));
                    s = self
                        .cv
                        .wait_timeout(s, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                None if s.closed => return None,
                None => s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// No more jobs will be submitted (retries still may be).
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.cv.notify_all();
    }

    /// Makes every parked retry due at once (they are then answered as aborted).
    pub fn abort(&self) {
        lock(&self.state).aborted = true;
        self.cv.notify_all();
    }
}

/// A chunk to seal.
pub(crate) struct SealJob {
    pub id: BlobId,
    pub data: Vec<u8>,
}

struct SealState {
    queue: VecDeque<SealJob>,
    in_use: usize,
    peak: usize,
    closed: bool,
    aborted: bool,
}

/// Chunks to seal, bounded in bytes (see the module docs).
pub(crate) struct SealQueue {
    state: Mutex<SealState>,
    not_empty: Condvar,
    space: Condvar,
    budget: usize,
    max_queued: usize,
}

/// The pipeline was aborted while a reader waited for room.
#[derive(Debug)]
pub(crate) struct Aborted;

impl SealQueue {
    /// A queue holding at most `budget` bytes (queued or being sealed) and at most
    /// `max_queued` chunks waiting (small chunks cost per-chunk overhead, and a long queue of
    /// them does not make the sealers faster).
    pub fn new(budget: usize, max_queued: usize) -> SealQueue {
        SealQueue {
            state: Mutex::new(SealState {
                queue: VecDeque::new(),
                in_use: 0,
                peak: 0,
                closed: false,
                aborted: false,
            }),
            not_empty: Condvar::new(),
            space: Condvar::new(),
            budget: budget.max(1),
            max_queued: max_queued.max(1),
        }
    }

    /// Queues a chunk, waiting while the budget is used up. Returns how long it waited.
    pub fn push(&self, job: SealJob) -> Result<Duration, Aborted> {
        let len = job.data.len();
        let mut s = lock(&self.state);
        let mut waited = Duration::ZERO;
        while !s.aborted
            && s.in_use > 0
            && (s.in_use + len > self.budget || s.queue.len() >= self.max_queued)
        {
            let t = Instant::now();
            s = self.space.wait(s).unwrap_or_else(|p| p.into_inner());
            waited += t.elapsed();
        }
        if s.aborted {
            return Err(Aborted);
        }
        s.in_use += len;
        s.peak = s.peak.max(s.in_use);
        s.queue.push_back(job);
        drop(s);
        self.not_empty.notify_one();
        Ok(waited)
    }

    /// The next chunk; `None` once closed and drained. After abort, queued chunks are dropped.
    pub fn pop(&self) -> Option<SealJob> {
        let mut s = lock(&self.state);
        loop {
            if s.aborted {
                let dropped: usize = s.queue.drain(..).map(|j| j.data.len()).sum();
                s.in_use -= dropped;
                self.space.notify_all();
                return None;
            }
            if let Some(j) = s.queue.pop_front() {
                drop(s);
                // A reader may be waiting for the queue to get shorter.
                self.space.notify_all();
                return Some(j);
            }
            if s.closed {
                return None;
            }
            s = self.not_empty.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A popped chunk of `len` bytes is done (sealed and handed to the sink, or dropped).
    pub fn release(&self, len: usize) {
        let mut s = lock(&self.state);
        s.in_use = s.in_use.saturating_sub(len);
        drop(s);
        self.space.notify_all();
    }

    /// No more chunks will be queued.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.not_empty.notify_all();
    }

    /// Stops everything: waiting readers return, queued chunks are dropped.
    pub fn abort(&self) {
        lock(&self.state).aborted = true;
        self.not_empty.notify_all();
        self.space.notify_all();
    }

    /// Highest number of plaintext bytes queued or being sealed at once.
    pub fn peak(&self) -> usize {
        lock(&self.state).peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Priority;
    use crate::relpath::RelPath;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn job(name: &str, priority: Priority) -> Job {
        Job {
            task: FileTask {
                rel: RelPath::from_bytes(name.as_bytes().to_vec()).unwrap(),
                path: PathBuf::from(name),
                size: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                inode: 0,
                mode: 0o100644,
                hard_link: None,
                priority,
            },
            attempts: 0,
        }
    }

    fn name(j: &Job) -> String {
        j.task.rel.to_string()
    }

    #[test]
    fn priority_then_fifo_and_delays() {
        let q = TaskQueue::default();
        q.push(job("n1", Priority::Normal));
        q.push(job("l1", Priority::Low));
        q.push(job("c1", Priority::Critical));
        q.push(job("n2", Priority::Normal));
        q.push_delayed(
            job("late", Priority::Critical),
            Instant::now() + Duration::from_millis(80),
        );
        let order: Vec<String> = (0..4).map(|_| name(&q.pop().unwrap())).collect();
        assert_eq!(order, ["c1", "n1", "n2", "l1"]);
        q.close();
        let t = Instant::now();
        assert_eq!(name(&q.pop().unwrap()), "late");
        assert!(t.elapsed() >= Duration::from_millis(60));
        assert!(q.pop().is_none());
    }

    #[test]
    fn seal_queue_is_bounded_in_bytes() {
        let q = Arc::new(SealQueue::new(100, 1000));
        let chunk = |n: usize| SealJob {
            id: BlobId([0; 32]),
            data: vec![0; n],
        };
        q.push(chunk(60)).unwrap();
        // A second chunk would exceed the budget: the push waits for a release.
        let q2 = q.clone();
        let pusher = std::thread::spawn(move || q2.push(chunk(60)).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!pusher.is_finished());
        let j = q.pop().unwrap();
        q.release(j.data.len());
        let waited = pusher.join().unwrap();
        assert!(waited >= Duration::from_millis(30));
        assert_eq!(q.peak(), 60);
        // A chunk larger than the whole budget still passes when nothing else is in use.
        let j = q.pop().unwrap();
        q.release(j.data.len());
        q.push(chunk(500)).unwrap();
        q.close();
        assert_eq!(q.pop().unwrap().data.len(), 500);
        assert!(q.pop().is_none());
    }

    #[test]
    fn seal_queue_is_bounded_in_chunks() {
        let q = Arc::new(SealQueue::new(1 << 20, 3));
        let chunk = || SealJob {
            id: BlobId([0; 32]),
            data: vec![0; 10],
        };
        for _ in 0..3 {
            q.push(chunk()).unwrap();
        }
        let q2 = q.clone();
        let pusher = std::thread::spawn(move || q2.push(chunk()).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(!pusher.is_finished(), "a fourth small chunk waits");
        let j = q.pop().unwrap();
        pusher.join().unwrap();
        q.release(j.data.len());
    }
}
