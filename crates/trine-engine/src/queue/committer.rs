//! The queue write path: one thread stores every job change, in order, in group commits.
//!
//! Producers send [`Cmd`]s on a bounded channel (full ⇒ producers wait). The thread takes
//! everything queued, builds one store batch and commits it; an enqueue batch is committed with
//! an fsync and only then are its jobs handed to their queues and the producers answered with
//! their receipts. Settlements (done, attempt counts, dead letters) ride along without forcing
//! an fsync: a crash before they reach the disk only makes a job run again (at least once).
//! Commands that must read what earlier commands wrote (redrive, discard, adopting parked topic
//! messages) first commit the batch built so far.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use trine_store::{for_each, Batch, Space, Store, StoreError};

use super::keys::{self, Attempts, DeadHeader, JobHeader, QueueId, StoredError, Subscription};
use super::sched::{JobRef, QueueRt};
use crate::state::committer::next_batch;
use crate::worker::now_ms;

/// Most commands folded into one batch.
const MAX_COMMANDS_PER_BATCH: usize = 4096;

/// A job to store.
pub(crate) struct NewJob {
    pub rt: Arc<QueueRt>,
    pub header: JobHeader,
    /// The payload's compact JSON.
    pub payload: Vec<u8>,
    pub group: Option<Arc<str>>,
}

/// Which dead letters a redrive or discard addresses.
#[derive(Debug, Clone)]
pub(crate) enum Which {
    All,
    /// A job id or a receipt id.
    One(String),
}

pub(crate) enum Cmd {
    /// Store jobs durably, then hand them to their queues and answer.
    Enqueue {
        jobs: Vec<NewJob>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A job is settled: remove it.
    Done {
        queue: QueueId,
        seq: u64,
    },
    /// A job failed and will run again: remember the attempts.
    Attempt {
        queue: QueueId,
        seq: u64,
        attempts: Attempts,
    },
    /// A job exhausted its attempts: once the dead letter is stored, the job leaves its
    /// queue (so counts and listings never disagree, and a FIFO group moves on only then).
    Dead {
        rt: Arc<QueueRt>,
        job: JobRef,
        attempts: u32,
        error: StoredError,
    },
    /// Move dead letters of a queue back to its line (end of the line, attempts reset).
    Redrive {
        rt: Arc<QueueRt>,
        which: Which,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Delete dead letters of a queue.
    Discard {
        rt: Arc<QueueRt>,
        which: Which,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Record a topic subscription; optionally move the topic's parked messages to the
    /// subscriber's queue.
    Subscribe {
        topic: String,
        function_id: String,
        sub: Subscription,
        adopt: Option<(Arc<QueueRt>, Arc<QueueRt>)>,
    },
    Unsubscribe {
        topic: String,
        function_id: String,
    },
    Sync {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

type After = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// A stored record with its key.
type Entry = (Vec<u8>, Vec<u8>);

#[derive(Default)]
struct Pending {
    batch: Batch,
    sync: bool,
    /// Run after the commit, in order, with its outcome.
    after: Vec<After>,
}

pub(crate) struct Committer {
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Cmd>,
    seq: u64,
    seq_dirty: bool,
}

impl Committer {
    pub fn new(store: Arc<dyn Store>, rx: mpsc::Receiver<Cmd>, seq: u64) -> Self {
        Self {
            store,
            rx,
            seq,
            seq_dirty: false,
        }
    }

    pub fn run(mut self) {
        while let Some(cmds) = next_batch(&mut self.rx, MAX_COMMANDS_PER_BATCH) {
            if self.process(cmds) {
                return;
            }
        }
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "queue store: final sync failed");
        }
    }

    fn process(&mut self, cmds: Vec<Cmd>) -> bool {
        let mut p = Pending::default();
        let mut stop = None;
        for cmd in cmds {
            match cmd {
                Cmd::Enqueue { jobs, reply } => self.enqueue(&mut p, jobs, reply),
                Cmd::Done { queue, seq } => {
                    let k = keys::job_key(&queue, seq);
                    p.batch.delete(Space::QueueJobs, k.clone());
                    p.batch.delete(Space::QueueAttempts, k);
                }
                Cmd::Attempt {
                    queue,
                    seq,
                    attempts,
                } => {
                    let k = keys::job_key(&queue, seq);
                    let v = serde_json::to_vec(&attempts).unwrap_or_default();
                    p.batch.put(Space::QueueAttempts, k, v);
                }
                Cmd::Dead {
                    rt,
                    job,
                    attempts,
                    error,
                } => {
                    if let Err(e) = self.dead(&mut p, &rt.id, job.seq, attempts, error) {
                        tracing::error!(queue = %rt.id.display_name(), seq = job.seq, error = %e, "queue: could not dead-letter a job; it stays queued and runs again after a restart");
                    }
                    p.after.push(Box::new(move |r| {
                        if r.is_ok() {
                            rt.dead.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        }
                        rt.finish(&job);
                    }));
                }
                Cmd::Redrive { rt, which, reply } => {
                    self.flush(&mut p);
                    let r = self.redrive(&mut p, &rt, &which);
                    reply_after(&mut p, reply, r);
                }
                Cmd::Discard { rt, which, reply } => {
                    self.flush(&mut p);
                    let r = self.discard(&mut p, &rt, &which);
                    reply_after(&mut p, reply, r);
                }
                Cmd::Subscribe {
                    topic,
                    function_id,
                    sub,
                    adopt,
                } => {
                    let v = serde_json::to_vec(&sub).unwrap_or_default();
                    p.batch
                        .put(Space::QueueTopics, keys::topic_key(&topic, &function_id), v);
                    p.sync = true;
                    if let Some((parked, target)) = adopt {
                        self.flush(&mut p);
                        if let Err(e) = self.adopt(&mut p, &parked, &target, &function_id) {
                            tracing::error!(topic = %topic, error = %e, "queue: could not hand parked topic messages to the new subscriber");
                        }
                    }
                }
                Cmd::Unsubscribe { topic, function_id } => {
                    p.batch
                        .delete(Space::QueueTopics, keys::topic_key(&topic, &function_id));
                    p.sync = true;
                }
                Cmd::Sync { reply } => {
                    p.sync = true;
                    p.after.push(Box::new(move |r| {
                        let _ = reply.send(r.map_err(str::to_owned));
                    }));
                }
                Cmd::Stop { reply } => {
                    p.sync = true;
                    stop = Some(reply);
                }
            }
        }
        self.flush(&mut p);
        if let Some(reply) = stop {
            let _ = reply.send(());
            return true;
        }
        false
    }

    /// Commits what `p` holds and runs its follow-ups.
    fn flush(&mut self, p: &mut Pending) {
        if self.seq_dirty {
            p.batch.put(
                Space::Meta,
                keys::META_QUEUE_SEQ,
                self.seq.to_le_bytes().to_vec(),
            );
            self.seq_dirty = false;
        }
        let result = if !p.batch.is_empty() {
            self.store.commit(std::mem::take(&mut p.batch), p.sync)
        } else if p.sync {
            self.store.sync()
        } else {
            Ok(())
        };
        p.sync = false;
        let msg = result.as_ref().err().map(|e| e.to_string());
        if let Some(m) = &msg {
            tracing::error!(error = %m, "queue store commit failed; the batch's enqueues are refused");
        }
        for f in std::mem::take(&mut p.after) {
            f(match &msg {
                None => Ok(()),
                Some(m) => Err(m.as_str()),
            });
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq_dirty = true;
        self.seq
    }

    fn enqueue(
        &mut self,
        p: &mut Pending,
        jobs: Vec<NewJob>,
        reply: oneshot::Sender<Result<(), String>>,
    ) {
        let mut placed = Vec::with_capacity(jobs.len());
        for job in jobs {
            let seq = self.next_seq();
            p.batch.put(
                Space::QueueJobs,
                keys::job_key(&job.rt.id, seq),
                keys::encode(&job.header, &job.payload),
            );
            let mut r = JobRef::from_header(seq, &job.header, 0);
            r.group = job.group;
            placed.push((job.rt, r));
        }
        p.sync = true;
        p.after.push(Box::new(move |r| {
            match r {
                Ok(()) => {
                    for (rt, job) in placed {
                        // Parked topic messages have no consumer: they only count.
                        if !matches!(rt.id, QueueId::Parked(_)) {
                            rt.add([job]);
                        }
                    }
                    let _ = reply.send(Ok(()));
                }
                Err(e) => {
                    for (rt, _) in placed {
                        rt.depth.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    }
                    let _ = reply.send(Err(e.to_owned()));
                }
            }
        }));
    }

    fn dead(
        &mut self,
        p: &mut Pending,
        queue: &QueueId,
        seq: u64,
        attempts: u32,
        error: StoredError,
    ) -> Result<(), StoreError> {
        let k = keys::job_key(queue, seq);
        let Some(record) = self.store.get(Space::QueueJobs, &k)? else {
            return Ok(());
        };
        let job: JobHeader = keys::decode_header(&record)?;
        let payload = keys::payload_bytes(&record)?;
        let dead = DeadHeader {
            job,
            attempts,
            error,
            failed_at_ms: now_ms(),
        };
        p.batch
            .put(Space::QueueDead, k.clone(), keys::encode(&dead, payload));
        p.batch.delete(Space::QueueJobs, k.clone());
        p.batch.delete(Space::QueueAttempts, k);
        Ok(())
    }

    /// Dead letters of `rt` matching `which`, oldest first: (key, record).
    fn dead_letters(&self, rt: &QueueRt, which: &Which) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        for_each(
            self.store.as_ref(),
            Space::QueueDead,
            &rt.id.prefix(),
            1024,
            |k, v| {
                let keep = match which {
                    Which::All => true,
                    Which::One(id) => {
                        let h: DeadHeader = keys::decode_header(&v)?;
                        &h.job.id == id || &h.job.receipt == id
                    }
                };
                if keep {
                    out.push((k, v));
                    if matches!(which, Which::One(_)) {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        Ok(out)
    }

    fn redrive(
        &mut self,
        p: &mut Pending,
        rt: &Arc<QueueRt>,
        which: &Which,
    ) -> Result<u64, String> {
        let found = self.dead_letters(rt, which).map_err(|e| e.to_string())?;
        let mut placed = Vec::with_capacity(found.len());
        for (k, record) in found {
            let dead: DeadHeader = keys::decode_header(&record).map_err(|e| e.to_string())?;
            let payload = keys::payload_bytes(&record).map_err(|e| e.to_string())?;
            let seq = self.next_seq();
            p.batch.delete(Space::QueueDead, k);
            p.batch.put(
                Space::QueueJobs,
                keys::job_key(&rt.id, seq),
                keys::encode(&dead.job, payload),
            );
            placed.push(JobRef::from_header(seq, &dead.job, 0));
        }
        let n = placed.len() as u64;
        rt.depth
            .fetch_add(placed.len(), std::sync::atomic::Ordering::AcqRel);
        rt.dead
            .fetch_sub(placed.len(), std::sync::atomic::Ordering::AcqRel);
        p.sync = true;
        let rt = rt.clone();
        p.after.push(Box::new(move |r| {
            if r.is_ok() {
                rt.add(placed);
            }
        }));
        Ok(n)
    }

    fn discard(
        &mut self,
        p: &mut Pending,
        rt: &Arc<QueueRt>,
        which: &Which,
    ) -> Result<u64, String> {
        let found = self.dead_letters(rt, which).map_err(|e| e.to_string())?;
        for (k, _) in &found {
            p.batch.delete(Space::QueueDead, k.clone());
        }
        rt.dead
            .fetch_sub(found.len(), std::sync::atomic::Ordering::AcqRel);
        p.sync = true;
        Ok(found.len() as u64)
    }

    /// Moves a topic's parked messages, in order, to a new subscriber's queue.
    fn adopt(
        &mut self,
        p: &mut Pending,
        parked: &Arc<QueueRt>,
        target: &Arc<QueueRt>,
        function_id: &str,
    ) -> Result<(), StoreError> {
        let mut placed = Vec::new();
        let mut moves = Vec::new();
        for_each(
            self.store.as_ref(),
            Space::QueueJobs,
            &parked.id.prefix(),
            1024,
            |k, v| {
                moves.push((k, v));
                Ok(true)
            },
        )?;
        for (k, record) in moves {
            let mut h: JobHeader = keys::decode_header(&record)?;
            let payload = keys::payload_bytes(&record)?;
            h.function_id = function_id.to_owned();
            let seq = self.next_seq();
            p.batch.delete(Space::QueueJobs, k);
            p.batch.put(
                Space::QueueJobs,
                keys::job_key(&target.id, seq),
                keys::encode(&h, payload),
            );
            placed.push(JobRef::from_header(seq, &h, 0));
        }
        if placed.is_empty() {
            return Ok(());
        }
        tracing::info!(topic = %parked.id.display_name(), function_id, messages = placed.len(),
            "queue: messages published before any subscriber existed go to the first subscriber");
        parked
            .depth
            .fetch_sub(placed.len(), std::sync::atomic::Ordering::AcqRel);
        target
            .depth
            .fetch_add(placed.len(), std::sync::atomic::Ordering::AcqRel);
        p.sync = true;
        let target = target.clone();
        p.after.push(Box::new(move |r| {
            if r.is_ok() {
                target.add(placed);
            }
        }));
        Ok(())
    }
}

fn reply_after(
    p: &mut Pending,
    reply: oneshot::Sender<Result<u64, String>>,
    r: Result<u64, String>,
) {
    match r {
        Err(e) => {
            let _ = reply.send(Err(e));
        }
        Ok(n) => p.after.push(Box::new(move |c| {
            let _ = reply.send(c.map(|()| n).map_err(str::to_owned));
        })),
    }
}
