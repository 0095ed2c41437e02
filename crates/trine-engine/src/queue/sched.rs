//! One queue at run time: which of its jobs may run now, and the task that runs them.
//!
//! Jobs live in the store; the scheduler holds only a small [`JobRef`] per job (sequence,
//! group, function, attempts), so a deep queue costs little memory. A standard queue runs its
//! oldest eligible jobs, up to `concurrency` at once. A FIFO queue keeps one line per message
//! group and runs only the head of a line, up to `concurrency` groups at once: a failing head
//! stays at the head (its group waits out the backoff) until it succeeds or is dead-lettered, so
//! order within a group holds across failures and restarts.
//!
//! A unit (a job, or a FIFO group's head) is in exactly one place: ready, in flight, delayed
//! (waiting out a backoff) or parked (its function is not registered; it waits for a
//! registration instead of using attempts).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::config::QueueSettings;
use super::keys::QueueId;
use crate::worker::lock;

/// What the scheduler keeps of one job.
#[derive(Debug, Clone)]
pub(crate) struct JobRef {
    pub seq: u64,
    /// FIFO: the message group.
    pub group: Option<Arc<str>>,
    pub function: Arc<str>,
    /// Captured at enqueue time.
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub attempts: u32,
    /// Since when deliveries found the function unregistered (attempts are not used then).
    pub missing_since: Option<Instant>,
}

impl JobRef {
    /// A job as stored, with `attempts` made so far.
    pub fn from_header(seq: u64, h: &super::keys::JobHeader, attempts: u32) -> Self {
        Self {
            seq,
            group: h.group.as_deref().map(Arc::from),
            function: Arc::from(h.function_id.as_str()),
            max_attempts: h.max_attempts,
            backoff_ms: h.backoff_ms,
            attempts,
            missing_since: None,
        }
    }
}

#[derive(Debug)]
enum Unit {
    Job(JobRef),
    Group(Arc<str>),
}

#[derive(Default)]
struct Sched {
    /// Standard queues: eligible jobs by sequence.
    ready: BTreeMap<u64, JobRef>,
    /// FIFO queues: every job of each group, head first.
    groups: HashMap<Arc<str>, VecDeque<JobRef>>,
    /// FIFO queues: groups whose head may run, by the head's sequence.
    ready_groups: BTreeMap<u64, Arc<str>>,
    /// Units waiting out a backoff: (due unix ms, sequence).
    delayed: BTreeMap<(u64, u64), Unit>,
    /// Units whose function is not registered, by function id.
    parked: HashMap<Arc<str>, Vec<(Instant, Unit)>>,
    parked_count: usize,
    in_flight: usize,
    /// Jobs held in total (every place above).
    jobs: usize,
}

/// Counters of one queue.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub enqueued: AtomicU64,
    pub delivered: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// One queue's run-time state.
pub(crate) struct QueueRt {
    pub id: QueueId,
    settings: Mutex<QueueSettings>,
    /// Topic subscriber queues: the subscription's condition function.
    condition: Mutex<Option<String>>,
    sched: Mutex<Sched>,
    pub wake: Notify,
    /// Jobs admitted and not yet settled (includes enqueues still being committed): the
    /// `max_depth` bound.
    pub depth: AtomicUsize,
    /// Dead letters held for this queue.
    pub dead: AtomicUsize,
    pub counters: QueueCounters,
}

/// Counts for stats.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SchedCounts {
    pub waiting: usize,
    pub delayed: usize,
    pub in_flight: usize,
    pub waiting_for_handler: usize,
}

impl SchedCounts {
    /// Every job not yet settled.
    pub fn pending(&self) -> usize {
        self.waiting + self.delayed + self.in_flight + self.waiting_for_handler
    }

    fn add(&mut self, o: SchedCounts) {
        self.waiting += o.waiting;
        self.delayed += o.delayed;
        self.in_flight += o.in_flight;
        self.waiting_for_handler += o.waiting_for_handler;
    }

    /// The summed counts of several queues (a topic's subscriber queues), and their dead letters.
    pub fn total(rts: &[Arc<QueueRt>]) -> (SchedCounts, usize) {
        let mut sum = SchedCounts::default();
        let mut dead = 0;
        for rt in rts {
            sum.add(rt.counts());
            dead += rt.dead.load(Ordering::Acquire);
        }
        (sum, dead)
    }
}

impl QueueRt {
    pub fn new(id: QueueId, settings: QueueSettings, condition: Option<String>) -> Self {
        Self {
            id,
            settings: Mutex::new(settings),
            condition: Mutex::new(condition),
            sched: Mutex::new(Sched::default()),
            wake: Notify::new(),
            depth: AtomicUsize::new(0),
            dead: AtomicUsize::new(0),
            counters: QueueCounters::default(),
        }
    }

    pub fn settings(&self) -> QueueSettings {
        lock(&self.settings).clone()
    }

    pub fn set_settings(&self, s: QueueSettings, condition: Option<String>) {
        *lock(&self.settings) = s;
        *lock(&self.condition) = condition;
        self.wake.notify_one();
    }

    pub fn condition(&self) -> Option<String> {
        lock(&self.condition).clone()
    }

    pub fn is_fifo(&self) -> bool {
        lock(&self.settings).fifo
    }

    /// Adds stored jobs (in sequence order) and wakes the consumer.
    pub fn add(&self, jobs: impl IntoIterator<Item = JobRef>) {
        let fifo = self.is_fifo();
        let mut s = lock(&self.sched);
        for mut job in jobs {
            s.jobs += 1;
            if fifo {
                let g: Arc<str> = job.group.get_or_insert_with(|| Arc::from("")).clone();
                let line = s.groups.entry(g.clone()).or_default();
                line.push_back(job);
                if line.len() == 1 {
                    let seq = line[0].seq;
                    s.ready_groups.insert(seq, g);
                }
            } else {
                s.ready.insert(job.seq, job);
            }
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Takes the jobs that may start now (moving due delayed units back first). Returns them
    /// and the due time of the next delayed unit.
    pub fn take(&self, now_ms: u64) -> (Vec<JobRef>, Option<u64>) {
        let (fifo, concurrency) = {
            let st = lock(&self.settings);
            (st.fifo, st.concurrency.max(1))
        };
        let mut s = lock(&self.sched);
        while let Some(entry) = s.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let unit = entry.remove();
            s.make_ready(unit);
        }
        let mut out = Vec::new();
        while s.in_flight < concurrency {
            let job = if fifo {
                let Some((_, g)) = s.ready_groups.pop_first() else {
                    break;
                };
                match s.groups.get(&g).and_then(|l| l.front()) {
                    Some(head) => head.clone(),
                    None => continue,
                }
            } else {
                match s.ready.pop_first() {
                    Some((_, j)) => j,
                    None => break,
                }
            };
            s.in_flight += 1;
            out.push(job);
        }
        let next = s.delayed.first_key_value().map(|((due, _), _)| *due);
        (out, next)
    }

    /// A job finished for good (delivered, skipped, or dead-lettered).
    pub fn finish(&self, job: &JobRef) {
        let mut s = lock(&self.sched);
        s.in_flight = s.in_flight.saturating_sub(1);
        s.jobs = s.jobs.saturating_sub(1);
        if let Some(g) = &job.group {
            if let Some(line) = s.groups.get_mut(g) {
                if line.front().is_some_and(|h| h.seq == job.seq) {
                    line.pop_front();
                }
                match line.front() {
                    Some(next) => {
                        let seq = next.seq;
                        s.ready_groups.insert(seq, g.clone());
                    }
                    None => {
                        s.groups.remove(g);
                    }
                }
            }
        }
        drop(s);
        self.depth.fetch_sub(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// A job failed and runs again at `due_ms`.
    pub fn retry_at(&self, job: JobRef, due_ms: u64) {
        let mut s = lock(&self.sched);
        s.in_flight = s.in_flight.saturating_sub(1);
        let unit = s.put_back(job);
        let seq = unit_seq(&s, &unit);
        s.delayed.insert((due_ms, seq), unit);
        drop(s);
        self.wake.notify_one();
    }

    /// A job found its function unregistered: it waits for a registration.
    pub fn park(&self, job: JobRef) {
        let since = job.missing_since.unwrap_or_else(Instant::now);
        let function = job.function.clone();
        let mut s = lock(&self.sched);
        s.in_flight = s.in_flight.saturating_sub(1);
        let unit = s.put_back(job);
        s.parked.entry(function).or_default().push((since, unit));
        s.parked_count += 1;
        drop(s);
        self.wake.notify_one();
    }

    /// Makes parked units runnable again when their function is registered (per `registered`)
    /// or when they have waited longer than `grace`. Returns whether anything is still parked.
    pub fn unpark(&self, registered: impl Fn(&str) -> bool, grace: Duration) -> bool {
        // Look the functions up without holding the scheduler lock (`registered` takes the
        // registry lock; the scheduler lock is never held while taking another).
        let functions: Vec<Arc<str>> = {
            let s = lock(&self.sched);
            if s.parked_count == 0 {
                return false;
            }
            s.parked.keys().cloned().collect()
        };
        let available: Vec<(Arc<str>, bool)> = functions
            .into_iter()
            .map(|f| {
                let ok = registered(&f);
                (f, ok)
            })
            .collect();
        let mut s = lock(&self.sched);
        let mut moved = false;
        for (f, available) in available {
            let Some(list) = s.parked.remove(&f) else {
                continue;
            };
            let mut keep = Vec::new();
            for (since, unit) in list {
                if available || since.elapsed() >= grace {
                    s.parked_count -= 1;
                    s.make_ready(unit);
                    moved = true;
                } else {
                    keep.push((since, unit));
                }
            }
            if !keep.is_empty() {
                s.parked.insert(f, keep);
            }
        }
        let still = s.parked_count > 0;
        drop(s);
        if moved {
            self.wake.notify_one();
        }
        still
    }

    pub fn counts(&self) -> SchedCounts {
        let s = lock(&self.sched);
        let delayed = s.delayed.len();
        let parked = s.parked_count;
        SchedCounts {
            waiting: s.jobs.saturating_sub(s.in_flight + delayed + parked),
            delayed,
            in_flight: s.in_flight,
            waiting_for_handler: parked,
        }
    }
}

impl Sched {
    fn make_ready(&mut self, unit: Unit) {
        match unit {
            Unit::Job(j) => {
                self.ready.insert(j.seq, j);
            }
            Unit::Group(g) => {
                if let Some(seq) = self.groups.get(&g).and_then(|l| l.front()).map(|h| h.seq) {
                    self.ready_groups.insert(seq, g);
                }
            }
        }
    }

    /// The unit a returned job becomes: itself (standard), or its group with the head's
    /// attempts updated (FIFO).
    fn put_back(&mut self, job: JobRef) -> Unit {
        match job.group.clone() {
            Some(g) => {
                if let Some(head) = self.groups.get_mut(&g).and_then(|l| l.front_mut()) {
                    if head.seq == job.seq {
                        *head = job;
                    }
                }
                Unit::Group(g)
            }
            None => Unit::Job(job),
        }
    }
}

fn unit_seq(s: &Sched, unit: &Unit) -> u64 {
    match unit {
        Unit::Job(j) => j.seq,
        Unit::Group(g) => s.groups.get(g).and_then(|l| l.front()).map_or(0, |h| h.seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(seq: u64, group: Option<&str>) -> JobRef {
        JobRef {
            seq,
            group: group.map(Arc::from),
            function: Arc::from("f"),
            max_attempts: 3,
            backoff_ms: 10,
            attempts: 0,
            missing_since: None,
        }
    }

    fn fifo(concurrency: usize) -> QueueRt {
        QueueRt::new(
            QueueId::Named("f".into()),
            QueueSettings {
                fifo: true,
                group_field: Some("g".into()),
                concurrency,
                ..QueueSettings::default()
            },
            None,
        )
    }

    fn seqs(v: &[JobRef]) -> Vec<u64> {
        v.iter().map(|j| j.seq).collect()
    }

    #[test]
    fn standard_runs_oldest_first_up_to_concurrency() {
        let q = QueueRt::new(
            QueueId::Named("q".into()),
            QueueSettings {
                concurrency: 2,
                ..QueueSettings::default()
            },
            None,
        );
        q.add((1..=5).map(|s| job(s, None)));
        let (a, _) = q.take(0);
        assert_eq!(seqs(&a), vec![1, 2]);
        assert!(q.take(0).0.is_empty());
        // A failed job comes back at its due time, ahead of younger jobs.
        q.retry_at(a[0].clone(), 100);
        assert_eq!(seqs(&q.take(50).0), vec![3]);
        q.finish(&a[1]);
        q.finish(&job(3, None));
        assert_eq!(seqs(&q.take(100).0), vec![1, 4]);
        let c = q.counts();
        assert_eq!((c.in_flight, c.waiting, c.delayed), (2, 1, 0));
    }

    #[test]
    fn fifo_head_blocks_its_group_but_not_others() {
        let q = fifo(2);
        q.add([
            job(1, Some("a")),
            job(2, Some("a")),
            job(3, Some("b")),
            job(4, Some("a")),
        ]);
        let (first, _) = q.take(0);
        assert_eq!(seqs(&first), vec![1, 3]);
        // a's head fails: group a waits; b goes on.
        q.retry_at(first[0].clone(), 1000);
        q.finish(&first[1]);
        assert!(q.take(10).0.is_empty(), "b is done, a is delayed");
        let (again, next) = q.take(1000);
        assert_eq!(seqs(&again), vec![1]);
        assert_eq!(next, None);
        q.finish(&again[0]);
        let (n, _) = q.take(1000);
        assert_eq!(seqs(&n), vec![2]);
        q.finish(&n[0]);
        assert_eq!(seqs(&q.take(1000).0), vec![4]);
    }

    #[test]
    fn fifo_concurrency_one_is_total_order() {
        let q = fifo(1);
        q.add([job(1, Some("a")), job(2, Some("b")), job(3, Some("a"))]);
        let mut order = Vec::new();
        loop {
            let (v, _) = q.take(0);
            let Some(j) = v.first() else { break };
            order.push(j.seq);
            q.finish(j);
        }
        assert_eq!(order, vec![1, 2, 3]);
    }

    #[test]
    fn parked_units_return_when_their_function_is_registered() {
        let q = fifo(1);
        q.add([job(1, Some("a")), job(2, Some("a"))]);
        let (v, _) = q.take(0);
        let mut j = v[0].clone();
        j.missing_since = Some(Instant::now());
        q.park(j);
        assert!(q.take(0).0.is_empty(), "the group waits for its head");
        assert_eq!(q.counts().waiting_for_handler, 1);
        assert!(q.unpark(|_| false, Duration::from_secs(60)));
        assert!(q.take(0).0.is_empty());
        assert!(!q.unpark(|f| f == "f", Duration::from_secs(60)));
        assert_eq!(seqs(&q.take(0).0), vec![1]);
    }

    #[test]
    fn parked_units_return_after_the_grace() {
        let q = QueueRt::new(QueueId::Named("q".into()), QueueSettings::default(), None);
        q.add([job(1, None)]);
        let (v, _) = q.take(0);
        let mut j = v[0].clone();
        j.missing_since = Some(Instant::now());
        q.park(j);
        assert!(!q.unpark(|_| false, Duration::ZERO));
        assert_eq!(seqs(&q.take(0).0), vec![1]);
    }
}
