//! The stream hub: per-group sequence numbers, a bounded retention log for resume, and fan-out
//! of serialized envelopes to client queues.
//!
//! Each published envelope is serialized **once** (with its `seq` and `epoch` appended) and the
//! same bytes are queued for every matching subscription. Client queues are bounded by a byte
//! budget: a client that does not read is cut off (its queue is closed with the resume point),
//! never waited for, so one stalled client cannot delay another.
//!
//! On a follower engine (one that does not own the data set) the hub publishes nothing of its
//! own: it applies the frames of the owner's hub ([`StreamHub::publish_mirrored`], fed by
//! [`super::mirror`]) with the owner's `seq` and `epoch`, so a client resumes on any engine.
//!
//! Invariants:
//! - within a group, `seq` increases by one per published envelope, in commit order (on a
//!   follower: the owner's order; a follower that missed frames resets the group and cuts its
//!   subscribers off rather than skip a `seq`);
//! - a subscription attached under the group lock sees every envelope published after it, and
//!   a resume replays exactly the retained envelopes after the client's `last_seq`, under the
//!   same lock, so nothing is lost or duplicated at the seam.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;

use crate::worker::lock;

/// Bounds of the hub and of each client.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Envelopes kept per group for resume.
    pub retention_events: usize,
    /// Bytes kept per group for resume.
    pub retention_bytes: usize,
    /// Bytes one client may have queued before it is disconnected as a slow consumer.
    pub client_queue_bytes: usize,
    /// Groups whose sequence state is kept; past it, idle groups without subscribers are
    /// forgotten (their next event starts a new epoch).
    pub max_groups: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            retention_events: 8192,
            retention_bytes: 4 << 20,
            client_queue_bytes: 1 << 20,
            max_groups: 100_000,
        }
    }
}

/// Counters exposed by `engine::streams::stats`.
#[derive(Debug, Default)]
pub struct HubStats {
    pub published: AtomicU64,
    pub deliveries: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub resumes: AtomicU64,
    pub snapshots: AtomicU64,
    pub clients: AtomicUsize,
    /// Groups a follower reset because it missed frames of the owner engine (its subscribers
    /// were cut off to resume with a snapshot).
    pub mirror_resets: AtomicU64,
}

type GroupKey = (Arc<str>, Arc<str>);

/// The group and epoch a published frame belongs to (shared by every copy of the frame).
pub struct FrameTag {
    pub group: GroupKey,
    pub epoch: Arc<str>,
}

/// A frame queued for a client, with the group position it carries (for the resume point).
/// Kept small (48 bytes): one is queued per subscriber per envelope.
#[derive(Clone)]
pub struct Frame {
    pub bytes: Bytes,
    pub tag: Option<Arc<FrameTag>>,
    pub seq: u64,
}

/// What a queued frame costs beyond its bytes (the `Frame` itself and the queue slot), counted
/// against the client's budget.
const FRAME_OVERHEAD: usize = 64;

/// Why a client queue was closed by the hub.
#[derive(Debug, Clone)]
pub struct Overflow {
    pub queued_bytes: usize,
}

/// One client connection's bounded outbound queue. The connection's write loop drains it.
pub struct ClientQueue {
    inner: Mutex<QueueInner>,
    notify: Notify,
    /// Cancelled when the hub cuts the client off, so its socket tasks stop waiting at once.
    cut_signal: tokio_util::sync::CancellationToken,
    budget: usize,
    closed: AtomicBool,
    /// Last sequence written to the socket, per group (the resume point after a cut-off).
    written: Mutex<HashMap<GroupKey, (Arc<str>, u64)>>,
}

struct QueueInner {
    frames: VecDeque<Frame>,
    bytes: usize,
    overflow: Option<Overflow>,
    /// The connection is ending: close with this code and reason once the queue is drained.
    finish: Option<(u16, String)>,
}

/// What the write loop should do next.
pub enum Next {
    /// Frames were taken: write them.
    Frames,
    /// Everything queued was written: close the socket with this code and reason.
    Close(u16, String),
    /// The hub cut the client off.
    Cut(Overflow),
}

impl ClientQueue {
    fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(QueueInner {
                frames: VecDeque::new(),
                bytes: 0,
                overflow: None,
                finish: None,
            }),
            notify: Notify::new(),
            cut_signal: tokio_util::sync::CancellationToken::new(),
            budget,
            closed: AtomicBool::new(false),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Queues a live frame. Returns false when the client is over its budget (it is then
    /// closed and its queued frames dropped; the caller counts the overflow). The budget bounds
    /// the live backlog: one frame is always admitted when no live frame is waiting, however
    /// large it is, so a big item never cuts off a client that keeps up.
    pub fn push(&self, frame: Frame) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        let mut q = lock(&self.inner);
        let cost = frame.bytes.len() + FRAME_OVERHEAD;
        if q.bytes > 0 && q.bytes + cost > self.budget {
            drop(q);
            self.cut();
            return false;
        }
        q.bytes += cost;
        q.frames.push_back(frame);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Queues a frame outside the budget: a snapshot, a resume backlog (bounded by the retention
    /// log) or a notice, which the client asked for by connecting.
    pub fn push_unbudgeted(&self, frame: Frame) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        lock(&self.inner).frames.push_back(frame);
        self.notify.notify_one();
    }

    /// Cuts the client off (over its budget): its queued frames are dropped and its socket
    /// tasks are woken.
    pub fn cut(&self) {
        let mut q = lock(&self.inner);
        q.overflow = Some(Overflow {
            queued_bytes: q.bytes,
        });
        q.frames = VecDeque::new();
        q.bytes = 0;
        drop(q);
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
        self.cut_signal.cancel();
    }

    /// Cancelled once the client is cut off.
    pub fn cut_signal(&self) -> &tokio_util::sync::CancellationToken {
        &self.cut_signal
    }

    /// Asks the write loop to close the socket with `code` and `reason` after what is queued.
    pub fn finish(&self, code: u16, reason: impl Into<String>) {
        lock(&self.inner).finish = Some((code, reason.into()));
        self.notify.notify_one();
    }

    /// Takes every queued frame into `out` (waits for at least one), or says to close.
    pub async fn next_batch(&self, out: &mut Vec<Frame>) -> Next {
        loop {
            {
                let mut q = lock(&self.inner);
                if let Some(o) = &q.overflow {
                    return Next::Cut(o.clone());
                }
                if !q.frames.is_empty() {
                    out.extend(q.frames.drain(..));
                    q.bytes = 0;
                    // Give back what a burst grew, so idle clients stay small.
                    if q.frames.capacity() > 1024 {
                        q.frames.shrink_to(64);
                    }
                    return Next::Frames;
                }
                if let Some((code, reason)) = q.finish.take() {
                    return Next::Close(code, reason);
                }
            }
            self.notify.notified().await;
        }
    }

    /// Records that `frame` reached the socket.
    pub fn mark_written(&self, frame: &Frame) {
        if let Some(tag) = &frame.tag {
            lock(&self.written).insert(tag.group.clone(), (tag.epoch.clone(), frame.seq));
        }
    }

    /// Last written (stream, group, epoch, seq) of every group this client received.
    pub fn resume_points(&self) -> Vec<(String, String, String, u64)> {
        lock(&self.written)
            .iter()
            .map(|((s, g), (e, q))| (s.to_string(), g.to_string(), e.to_string(), *q))
            .collect()
    }

    /// The client's budget in bytes.
    pub fn client_budget(&self) -> usize {
        self.budget
    }

    /// Whether the hub cut this client off.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

struct Subscriber {
    client: Arc<ClientQueue>,
    client_id: u64,
    sub_id: Arc<str>,
    item: Option<Arc<str>>,
    /// While the join is being authorized, envelopes wait here (bounded by the client budget).
    held: Option<(Vec<Frame>, usize)>,
}

struct GroupState {
    epoch: Arc<str>,
    seq: u64,
    log: VecDeque<Frame>,
    log_bytes: usize,
    subs: Vec<Subscriber>,
}

impl GroupState {
    fn new(epoch: Arc<str>) -> Self {
        Self {
            epoch,
            seq: 0,
            log: VecDeque::new(),
            log_bytes: 0,
            subs: Vec::new(),
        }
    }
}

/// What [`StreamHub::publish_mirrored`] did with a frame from the owner engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mirrored {
    /// The group had no event yet: it took the frame's epoch and seq, and the frame was
    /// appended and fanned out.
    Adopted,
    /// The group's next frame: appended and fanned out.
    Appended,
    /// Already applied: ignored.
    Duplicate,
    /// Frames were missed (a gap or another epoch): the group was reset, its subscribers cut
    /// off, and the frame starts the new retention log.
    Reset,
    /// Not a frame of the hub (unparseable, no position): ignored.
    Malformed,
}

/// The fields of a mirrored frame the follower's hub needs.
#[derive(serde::Deserialize)]
struct MirroredPosition<'a> {
    #[serde(rename = "streamName", borrow)]
    stream: Cow<'a, str>,
    #[serde(rename = "groupId", borrow)]
    group: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    seq: u64,
    #[serde(borrow)]
    epoch: Cow<'a, str>,
}

/// Where a client wants to resume from.
#[derive(Debug, Clone)]
pub struct Resume {
    pub epoch: String,
    pub last_seq: u64,
}

/// What attaching a subscription did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// Retained envelopes after `last_seq` were queued (`count` of them).
    Resumed { count: usize },
    /// No resume asked, or it cannot be served: the caller sends a snapshot.
    Fresh { epoch: String, seq: u64 },
}

/// Fan-out of envelopes to subscribed clients.
pub struct StreamHub {
    groups: Mutex<HashMap<GroupKey, GroupState>>,
    options: HubOptions,
    pub stats: HubStats,
    epoch_prefix: String,
    epochs: AtomicU64,
    client_ids: AtomicU64,
}

impl StreamHub {
    pub fn new(options: HubOptions) -> Self {
        let boot = uuid::Uuid::new_v4().simple().to_string();
        Self {
            groups: Mutex::new(HashMap::new()),
            options,
            stats: HubStats::default(),
            epoch_prefix: boot[..12].to_owned(),
            epochs: AtomicU64::new(0),
            client_ids: AtomicU64::new(0),
        }
    }

    pub fn options(&self) -> &HubOptions {
        &self.options
    }

    /// A new client queue; `id` identifies it in [`StreamHub::detach_client`].
    pub fn client(&self) -> (u64, Arc<ClientQueue>) {
        self.stats.clients.fetch_add(1, Ordering::Relaxed);
        (
            self.client_ids.fetch_add(1, Ordering::Relaxed),
            Arc::new(ClientQueue::new(self.options.client_queue_bytes)),
        )
    }

    /// A new epoch of this hub (a group that starts counting here).
    fn new_epoch(&self) -> Arc<str> {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.epoch_prefix).into()
    }

    fn new_group(&self) -> GroupState {
        GroupState::new(self.new_epoch())
    }

    fn group_key(stream: &str, group: &str) -> GroupKey {
        (Arc::from(stream), Arc::from(group))
    }

    /// The state of the group an event is published to, created with `epoch` when unknown.
    /// Past `max_groups`, groups without subscribers are forgotten first.
    fn event_group<'a>(
        &self,
        groups: &'a mut HashMap<GroupKey, GroupState>,
        key: &GroupKey,
        epoch: impl FnOnce() -> Arc<str>,
    ) -> &'a mut GroupState {
        if !groups.contains_key(key) {
            if groups.len() >= self.options.max_groups {
                groups.retain(|_, g| !g.subs.is_empty());
            }
            groups.insert(key.clone(), GroupState::new(epoch()));
        }
        groups.get_mut(key).expect("inserted above")
    }

    /// Publishes committed envelopes, in order. Called by the committer thread. Returns the
    /// frames queued to clients, in the same order (each carries its `seq` and `epoch`), for the
    /// mirror to other engines.
    pub fn publish(&self, envelopes: Vec<Arc<Value>>) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(envelopes.len());
        let mut groups = lock(&self.groups);
        for env in envelopes {
            let (Some(stream), Some(group)) = (
                env.get("streamName").and_then(Value::as_str),
                env.get("groupId").and_then(Value::as_str),
            ) else {
                continue;
            };
            let key = Self::group_key(stream, group);
            let g = self.event_group(&mut groups, &key, || self.new_epoch());
            g.seq += 1;
            let frame = Frame {
                bytes: serialize_with_position(&env, &g.epoch, g.seq),
                tag: Some(Arc::new(FrameTag {
                    group: key,
                    epoch: g.epoch.clone(),
                })),
                seq: g.seq,
            };
            out.push(frame.bytes.clone());
            self.append(g, frame, env.get("id").and_then(Value::as_str));
        }
        out
    }

    /// Applies one frame published by the owner engine's hub (this hub is a follower's): the
    /// group takes the owner's `seq` and `epoch`, so a client can resume on any engine.
    ///
    /// - unknown or fresh group (no event yet): the owner's position is adopted;
    /// - the next `seq` of the same epoch: appended and fanned out as by [`StreamHub::publish`];
    /// - an older `seq` of the same epoch: a duplicate, ignored;
    /// - a gap or another epoch: this engine missed frames, so the group is reset — its
    ///   retention log is cleared and every subscriber is cut off (counted in
    ///   `mirror_resets`), so clients reconnect and, finding no gap-free resume, get a snapshot.
    ///   The frame becomes the first entry of the new log.
    pub fn publish_mirrored(&self, frame: Bytes) -> Mirrored {
        let pos = match serde_json::from_slice::<MirroredPosition>(&frame) {
            Ok(p) if p.seq > 0 => p,
            Ok(_) => {
                tracing::warn!("stream mirror: frame with seq 0 ignored");
                return Mirrored::Malformed;
            }
            Err(e) => {
                tracing::warn!(error = %e, bytes = frame.len(), "stream mirror: malformed frame ignored");
                return Mirrored::Malformed;
            }
        };
        let key = Self::group_key(&pos.stream, &pos.group);
        let mut groups = lock(&self.groups);
        let g = self.event_group(&mut groups, &key, || Arc::from(pos.epoch.as_ref()));
        let same_epoch = g.epoch.as_ref() == pos.epoch.as_ref();
        let outcome = if g.seq == 0 && g.log.is_empty() {
            Mirrored::Adopted
        } else if same_epoch && pos.seq == g.seq + 1 {
            Mirrored::Appended
        } else if same_epoch && pos.seq <= g.seq {
            return Mirrored::Duplicate;
        } else {
            Mirrored::Reset
        };
        if !same_epoch {
            g.epoch = Arc::from(pos.epoch.as_ref());
        }
        g.seq = pos.seq;
        if outcome == Mirrored::Reset {
            tracing::debug!(stream = %pos.stream, group = %pos.group, seq = pos.seq,
                subscribers = g.subs.len(), "stream mirror: frames were missed; group reset");
            self.stats.mirror_resets.fetch_add(1, Ordering::Relaxed);
            g.log.clear();
            g.log_bytes = 0;
            for s in g.subs.drain(..) {
                s.client.cut();
            }
        }
        let frame = Frame {
            // A reference count, not a copy (`pos` borrows from the original).
            bytes: frame.clone(),
            tag: Some(Arc::new(FrameTag {
                group: key,
                epoch: g.epoch.clone(),
            })),
            seq: pos.seq,
        };
        // After a reset there is no subscriber left: this only starts the new log.
        self.append(g, frame, pos.id.as_deref());
        outcome
    }

    /// Retains a group's next frame for resume and queues it for the matching subscriptions;
    /// those over their budget are cut off and removed.
    fn append(&self, g: &mut GroupState, frame: Frame, id: Option<&str>) {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let mut cut = Vec::new();
        for s in &mut g.subs {
            if let Some(item) = &s.item {
                if id != Some(item.as_ref()) {
                    continue;
                }
            }
            if let Some((held, bytes)) = &mut s.held {
                *bytes += frame.bytes.len();
                if *bytes > self.options.client_queue_bytes && *bytes > frame.bytes.len() {
                    s.client.cut();
                    cut.push(s.client_id);
                } else {
                    held.push(frame.clone());
                }
                continue;
            }
            self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
            if !s.client.push(frame.clone()) {
                cut.push(s.client_id);
            }
        }
        if !cut.is_empty() {
            self.stats
                .slow_consumer_disconnects
                .fetch_add(cut.len() as u64, Ordering::Relaxed);
            g.subs.retain(|s| !cut.contains(&s.client_id));
        }
        // Retention for resume.
        g.log_bytes += frame.bytes.len();
        g.log.push_back(frame);
        while g.log.len() > self.options.retention_events
            || (g.log_bytes > self.options.retention_bytes && g.log.len() > 1)
        {
            if let Some(old) = g.log.pop_front() {
                g.log_bytes -= old.bytes.len();
            }
        }
    }

    /// Attaches a subscription. With `held`, envelopes wait until [`StreamHub::release`]
    /// (the join is being authorized). With a `resume` whose epoch matches and whose
    /// `last_seq` is still retained, the missed envelopes are queued first.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        &self,
        client_id: u64,
        client: &Arc<ClientQueue>,
        sub_id: &str,
        stream: &str,
        group: &str,
        item: Option<&str>,
        resume: Option<&Resume>,
        held: bool,
    ) -> Attach {
        let mut groups = lock(&self.groups);
        let key = Self::group_key(stream, group);
        if !groups.contains_key(&key) {
            groups.insert(key.clone(), self.new_group());
        }
        let g = groups.get_mut(&key).expect("inserted above");
        g.subs
            .retain(|s| !(s.client_id == client_id && s.sub_id.as_ref() == sub_id));
        let mut backlog: Vec<Frame> = Vec::new();
        let outcome = match resume {
            Some(r) if r.epoch == g.epoch.as_ref() && r.last_seq <= g.seq => {
                let oldest = g.log.front().map_or(g.seq + 1, |f| f.seq);
                if r.last_seq + 1 >= oldest {
                    backlog.extend(
                        g.log
                            .iter()
                            .filter(|f| f.seq > r.last_seq)
                            .filter(|f| item.is_none() || frame_id_is(f, item))
                            .cloned(),
                    );
                    self.stats.resumes.fetch_add(1, Ordering::Relaxed);
                    Attach::Resumed {
                        count: backlog.len(),
                    }
                } else {
                    Attach::Fresh {
                        epoch: g.epoch.to_string(),
                        seq: g.seq,
                    }
                }
            }
            _ => Attach::Fresh {
                epoch: g.epoch.to_string(),
                seq: g.seq,
            },
        };
        let mut sub = Subscriber {
            client: client.clone(),
            client_id,
            sub_id: Arc::from(sub_id),
            item: item.map(Arc::from),
            held: None,
        };
        if held {
            // The resume backlog is bounded by the retention log; only live frames that arrive
            // during the hold count against the client's budget.
            sub.held = Some((backlog, 0));
        } else {
            for f in backlog {
                client.push_unbudgeted(f);
            }
        }
        g.subs.push(sub);
        outcome
    }

    /// Ends the hold of a subscription: `first` (e.g. a sync envelope) is queued, then what was
    /// held. Returns false if the subscription is gone (cut off meanwhile).
    pub fn release(
        &self,
        client_id: u64,
        sub_id: &str,
        stream: &str,
        group: &str,
        first: Option<Frame>,
    ) -> bool {
        let mut groups = lock(&self.groups);
        let Some(g) = groups.get_mut(&Self::group_key(stream, group)) else {
            return false;
        };
        let Some(s) = g
            .subs
            .iter_mut()
            .find(|s| s.client_id == client_id && s.sub_id.as_ref() == sub_id)
        else {
            return false;
        };
        let held = s.held.take().map(|(f, _)| f).unwrap_or_default();
        if let Some(f) = first {
            s.client.push_unbudgeted(f);
        }
        for f in held {
            s.client.push_unbudgeted(f);
        }
        true
    }

    /// Removes one subscription.
    pub fn detach(&self, client_id: u64, sub_id: &str, stream: &str, group: &str) {
        let mut groups = lock(&self.groups);
        if let Some(g) = groups.get_mut(&Self::group_key(stream, group)) {
            g.subs
                .retain(|s| !(s.client_id == client_id && s.sub_id.as_ref() == sub_id));
        }
    }

    /// Removes every subscription of a client (it disconnected).
    pub fn detach_client(&self, client_id: u64) {
        self.stats.clients.fetch_sub(1, Ordering::Relaxed);
        let mut groups = lock(&self.groups);
        for g in groups.values_mut() {
            g.subs.retain(|s| s.client_id != client_id);
        }
    }

    /// The group's current epoch and last sequence (creating the group's state if needed).
    pub fn position(&self, stream: &str, group: &str) -> (String, u64) {
        let mut groups = lock(&self.groups);
        let key = Self::group_key(stream, group);
        if !groups.contains_key(&key) {
            groups.insert(key.clone(), self.new_group());
        }
        let g = &groups[&key];
        (g.epoch.to_string(), g.seq)
    }

    /// Subscriptions attached right now.
    pub fn subscriptions(&self) -> usize {
        lock(&self.groups).values().map(|g| g.subs.len()).sum()
    }

    /// Builds a frame for a client-specific envelope (sync, unauthorized) carrying a position.
    pub fn frame_for(envelope: &Value, position: Option<(&str, u64)>) -> Frame {
        let bytes = match position {
            Some((epoch, seq)) => serialize_with_position(envelope, epoch, seq),
            None => Bytes::from(serde_json::to_vec(envelope).unwrap_or_default()),
        };
        Frame {
            bytes,
            tag: None,
            seq: 0,
        }
    }
}

fn frame_id_is(f: &Frame, item: Option<&str>) -> bool {
    // Retained frames are serialized; parse only the id (resume of item subscriptions is rare).
    let Some(item) = item else { return true };
    serde_json::from_slice::<Value>(&f.bytes)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_str).map(|s| s == item))
        .unwrap_or(false)
}

/// Serializes an envelope object with `"seq"` and `"epoch"` appended, in one pass.
fn serialize_with_position(envelope: &Value, epoch: &str, seq: u64) -> Bytes {
    let mut out = serde_json::to_vec(envelope).unwrap_or_default();
    if out.last() == Some(&b'}') {
        out.pop();
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"seq\":");
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(b",\"epoch\":");
        out.extend_from_slice(&serde_json::to_vec(epoch).unwrap_or_default());
        out.push(b'}');
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(stream: &str, group: &str, id: Option<&str>, n: i64) -> Arc<Value> {
        Arc::new(
            json!({"type": "stream", "timestamp": 1, "streamName": stream, "groupId": group, "id": id, "event": {"type": "update", "data": n}}),
        )
    }

    fn drain(q: &ClientQueue) -> Vec<Value> {
        let mut out = Vec::new();
        let mut inner = lock(&q.inner);
        for f in inner.frames.drain(..) {
            out.push(serde_json::from_slice(&f.bytes).unwrap());
        }
        inner.bytes = 0;
        out
    }

    #[test]
    fn envelopes_carry_sequence_and_epoch_and_reach_matching_subscriptions() {
        let hub = StreamHub::new(HubOptions::default());
        let (id, q) = hub.client();
        hub.attach(id, &q, "s1", "chat", "room", None, None, false);
        hub.attach(id, &q, "s2", "chat", "room", Some("a"), None, false);
        hub.publish(vec![
            env("chat", "room", Some("a"), 1),
            env("chat", "room", Some("b"), 2),
            env("chat", "other", None, 3),
        ]);
        let got = drain(&q);
        // Group subscription gets both; the item subscription only `a` (a duplicate, as in iii).
        assert_eq!(got.len(), 3);
        assert_eq!(got[0]["seq"], 1);
        assert_eq!(got[2]["seq"], 2);
        assert_eq!(got[0]["epoch"], got[2]["epoch"]);
        assert_eq!(got[0]["event"]["data"], 1);
    }

    #[test]
    fn resume_replays_what_was_missed_or_asks_for_a_snapshot() {
        let hub = StreamHub::new(HubOptions {
            retention_events: 3,
            ..HubOptions::default()
        });
        let (epoch, _) = hub.position("s", "g");
        hub.publish((1..=5).map(|n| env("s", "g", None, n)).collect());
        let (id, q) = hub.client();
        let r = Resume {
            epoch: epoch.clone(),
            last_seq: 3,
        };
        assert_eq!(
            hub.attach(id, &q, "x", "s", "g", None, Some(&r), false),
            Attach::Resumed { count: 2 }
        );
        let got: Vec<u64> = drain(&q)
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(got, [4, 5]);
        // Too old: only 3..=5 are retained.
        let r = Resume {
            epoch: epoch.clone(),
            last_seq: 1,
        };
        assert!(matches!(
            hub.attach(id, &q, "y", "s", "g", None, Some(&r), false),
            Attach::Fresh { seq: 5, .. }
        ));
        // Another epoch.
        let r = Resume {
            epoch: "other".into(),
            last_seq: 4,
        };
        assert!(matches!(
            hub.attach(id, &q, "z", "s", "g", None, Some(&r), false),
            Attach::Fresh { .. }
        ));
    }

    #[test]
    fn a_slow_client_is_cut_off_without_affecting_others() {
        let hub = StreamHub::new(HubOptions {
            client_queue_bytes: 1000,
            ..HubOptions::default()
        });
        let (slow_id, slow) = hub.client();
        let (fast_id, fast) = hub.client();
        // One frame larger than the whole budget still reaches a client that keeps up.
        let (big_id, big) = hub.client();
        hub.attach(big_id, &big, "b", "s", "big", None, None, false);
        hub.publish(vec![Arc::new(json!({"streamName": "s", "groupId": "big", "id": null, "event": {"data": "x".repeat(5000)}}))]);
        assert!(!big.is_closed());
        hub.attach(slow_id, &slow, "s", "s", "g", None, None, false);
        hub.attach(fast_id, &fast, "s", "s", "g", None, None, false);
        for n in 0..50 {
            hub.publish(vec![env("s", "g", None, n)]);
            drain(&fast);
        }
        assert!(slow.is_closed());
        assert!(!fast.is_closed());
        assert_eq!(
            hub.stats.slow_consumer_disconnects.load(Ordering::Relaxed),
            1
        );
        // The slow one is gone; the fast and the big-frame subscriptions remain.
        assert_eq!(hub.subscriptions(), 2);
    }

    #[test]
    fn held_subscriptions_release_in_order_after_the_first_frame() {
        let hub = StreamHub::new(HubOptions::default());
        let (id, q) = hub.client();
        hub.attach(id, &q, "s", "s", "g", None, None, true);
        hub.publish(vec![env("s", "g", None, 1)]);
        assert!(drain(&q).is_empty());
        let first =
            StreamHub::frame_for(&json!({"type": "stream", "event": {"type": "sync"}}), None);
        assert!(hub.release(id, "s", "s", "g", Some(first)));
        let got = drain(&q);
        assert_eq!(got[0]["event"]["type"], "sync");
        assert_eq!(got[1]["seq"], 1);
    }

    #[test]
    fn publish_returns_the_frames_queued_to_clients_in_order() {
        let hub = StreamHub::new(HubOptions::default());
        let (id, q) = hub.client();
        hub.attach(id, &q, "s", "s", "g", None, None, false);
        let frames = hub.publish(vec![
            env("s", "g", None, 1),
            Arc::new(json!({"no": "address"})),
            env("s", "other", None, 2),
            env("s", "g", None, 3),
        ]);
        assert_eq!(frames.len(), 3);
        let queued: Vec<Bytes> = lock(&q.inner)
            .frames
            .iter()
            .map(|f| f.bytes.clone())
            .collect();
        assert_eq!(queued, [frames[0].clone(), frames[2].clone()]);
        let v: Value = serde_json::from_slice(&frames[2]).unwrap();
        assert_eq!(v["seq"], 2);
    }

    /// Frames of an owner hub for `n` events of group `s/g` (item ids `i1`, `i2`, …).
    fn owner_frames(owner: &StreamHub, n: i64) -> Vec<Bytes> {
        owner.publish(
            (1..=n)
                .map(|k| env("s", "g", Some(&format!("i{k}")), k))
                .collect(),
        )
    }

    fn seqs(got: &[Value]) -> Vec<u64> {
        got.iter().map(|v| v["seq"].as_u64().unwrap()).collect()
    }

    #[test]
    fn a_follower_adopts_the_owners_position_in_a_fresh_group() {
        let owner = StreamHub::new(HubOptions::default());
        let frames = owner_frames(&owner, 5);
        let (owner_epoch, _) = owner.position("s", "g");
        let follower = StreamHub::new(HubOptions::default());
        // A client attached before any event (it got a snapshot at the follower's own epoch).
        let (id, q) = follower.client();
        let Attach::Fresh { epoch, seq: 0 } =
            follower.attach(id, &q, "x", "s", "g", None, None, false)
        else {
            panic!("a new group is fresh");
        };
        assert_ne!(epoch, owner_epoch);
        // The follower starts in the middle of the owner's sequence.
        assert_eq!(
            follower.publish_mirrored(frames[2].clone()),
            Mirrored::Adopted
        );
        assert_eq!(follower.position("s", "g"), (owner_epoch.clone(), 3));
        let got = drain(&q);
        assert_eq!(seqs(&got), [3]);
        assert_eq!(got[0]["epoch"], owner_epoch.as_str());
        assert!(!q.is_closed());
        // A group the follower never heard of is adopted the same way.
        let other = owner.publish(vec![env("s", "h", None, 1), env("s", "h", None, 2)]);
        assert_eq!(
            follower.publish_mirrored(other[1].clone()),
            Mirrored::Adopted
        );
        assert_eq!(follower.position("s", "h"), owner.position("s", "h"));
        assert_eq!(follower.stats.mirror_resets.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn mirrored_frames_fan_out_in_order_and_resume_with_the_owners_epoch() {
        let owner = StreamHub::new(HubOptions::default());
        let frames = owner_frames(&owner, 5);
        let (owner_epoch, _) = owner.position("s", "g");
        let follower = StreamHub::new(HubOptions::default());
        let (id, q) = follower.client();
        follower.attach(id, &q, "all", "s", "g", None, None, false);
        follower.attach(id, &q, "one", "s", "g", Some("i4"), None, false);
        let outcomes: Vec<Mirrored> = frames
            .iter()
            .map(|f| follower.publish_mirrored(f.clone()))
            .collect();
        assert_eq!(outcomes[0], Mirrored::Adopted);
        assert!(outcomes[1..].iter().all(|o| *o == Mirrored::Appended));
        // The group subscription gets every frame, byte for byte; the item one only `i4`.
        let queued: Vec<Frame> = lock(&q.inner).frames.iter().cloned().collect();
        let bytes: Vec<Bytes> = queued.iter().map(|f| f.bytes.clone()).collect();
        let mut want = frames.clone();
        want.insert(4, frames[3].clone());
        assert_eq!(bytes, want);
        // The written position is the owner's, so the resume notice names the owner's epoch.
        q.mark_written(&queued[5]);
        assert_eq!(
            q.resume_points(),
            [("s".into(), "g".into(), owner_epoch.clone(), 5)]
        );
        // A client of the owner (or of another follower) resumes here from the retention log.
        let (id2, q2) = follower.client();
        let r = Resume {
            epoch: owner_epoch,
            last_seq: 2,
        };
        assert_eq!(
            follower.attach(id2, &q2, "r", "s", "g", None, Some(&r), false),
            Attach::Resumed { count: 3 }
        );
        assert_eq!(seqs(&drain(&q2)), [3, 4, 5]);
        assert_eq!(follower.stats.published.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_mirrored_duplicate_is_ignored() {
        let owner = StreamHub::new(HubOptions::default());
        let frames = owner_frames(&owner, 3);
        let follower = StreamHub::new(HubOptions::default());
        let (id, q) = follower.client();
        follower.attach(id, &q, "x", "s", "g", None, None, false);
        for f in &frames {
            follower.publish_mirrored(f.clone());
        }
        drain(&q);
        assert_eq!(
            follower.publish_mirrored(frames[1].clone()),
            Mirrored::Duplicate
        );
        assert_eq!(
            follower.publish_mirrored(frames[2].clone()),
            Mirrored::Duplicate
        );
        assert!(drain(&q).is_empty());
        assert_eq!(follower.position("s", "g").1, 3);
        assert!(!q.is_closed());
    }

    #[test]
    fn a_gap_in_mirrored_frames_resets_the_group_and_cuts_its_subscribers() {
        let owner = StreamHub::new(HubOptions::default());
        let frames = owner_frames(&owner, 5);
        let (owner_epoch, _) = owner.position("s", "g");
        let follower = StreamHub::new(HubOptions::default());
        for f in &frames[..3] {
            follower.publish_mirrored(f.clone());
        }
        let (id, q) = follower.client();
        let (held_id, held) = follower.client();
        let (other_id, other) = follower.client();
        follower.attach(id, &q, "x", "s", "g", None, None, false);
        follower.attach(held_id, &held, "x", "s", "g", None, None, true);
        follower.attach(other_id, &other, "x", "s", "elsewhere", None, None, false);
        // Frame 4 never arrives.
        assert_eq!(
            follower.publish_mirrored(frames[4].clone()),
            Mirrored::Reset
        );
        assert!(q.is_closed() && held.is_closed());
        assert!(!other.is_closed());
        assert_eq!(follower.subscriptions(), 1);
        assert_eq!(follower.stats.mirror_resets.load(Ordering::Relaxed), 1);
        assert_eq!(
            follower
                .stats
                .slow_consumer_disconnects
                .load(Ordering::Relaxed),
            0
        );
        assert_eq!(follower.position("s", "g"), (owner_epoch.clone(), 5));
        // The missed range cannot be replayed: the client gets a snapshot…
        let (id2, q2) = follower.client();
        let r = Resume {
            epoch: owner_epoch.clone(),
            last_seq: 3,
        };
        assert_eq!(
            follower.attach(id2, &q2, "a", "s", "g", None, Some(&r), false),
            Attach::Fresh {
                epoch: owner_epoch.clone(),
                seq: 5
            }
        );
        // …while a client that has seq 4 (from the owner) resumes from the new log.
        let r = Resume {
            epoch: owner_epoch,
            last_seq: 4,
        };
        assert_eq!(
            follower.attach(id2, &q2, "b", "s", "g", None, Some(&r), false),
            Attach::Resumed { count: 1 }
        );
        assert_eq!(seqs(&drain(&q2)), [5]);
    }

    #[test]
    fn a_new_owner_epoch_resets_the_group_and_its_log() {
        let owner = StreamHub::new(HubOptions::default());
        let frames = owner_frames(&owner, 3);
        let (old_epoch, _) = owner.position("s", "g");
        let follower = StreamHub::new(HubOptions::default());
        for f in &frames {
            follower.publish_mirrored(f.clone());
        }
        let (id, q) = follower.client();
        follower.attach(id, &q, "x", "s", "g", None, None, false);
        // The data set moved to another engine (or the owner restarted): its seq starts over.
        let new_owner = StreamHub::new(HubOptions::default());
        let next = owner_frames(&new_owner, 2);
        let (new_epoch, _) = new_owner.position("s", "g");
        assert_eq!(follower.publish_mirrored(next[0].clone()), Mirrored::Reset);
        assert!(q.is_closed());
        assert_eq!(follower.stats.mirror_resets.load(Ordering::Relaxed), 1);
        assert_eq!(follower.position("s", "g"), (new_epoch.clone(), 1));
        assert_eq!(
            follower.publish_mirrored(next[1].clone()),
            Mirrored::Appended
        );
        // The old epoch's log is gone; the new one holds only the new owner's frames.
        let (id2, q2) = follower.client();
        let old = Resume {
            epoch: old_epoch,
            last_seq: 2,
        };
        assert!(matches!(
            follower.attach(id2, &q2, "a", "s", "g", None, Some(&old), false),
            Attach::Fresh { .. }
        ));
        let new = Resume {
            epoch: new_epoch,
            last_seq: 0,
        };
        assert_eq!(
            follower.attach(id2, &q2, "b", "s", "g", None, Some(&new), false),
            Attach::Resumed { count: 2 }
        );
        assert_eq!(seqs(&drain(&q2)), [1, 2]);
    }

    #[test]
    fn held_subscriptions_get_mirrored_frames_on_release_and_malformed_frames_are_ignored() {
        let owner = StreamHub::new(HubOptions::default());
        let frames = owner_frames(&owner, 2);
        let follower = StreamHub::new(HubOptions::default());
        let (id, q) = follower.client();
        follower.attach(id, &q, "x", "s", "g", None, None, true);
        for bad in [
            &b"not json"[..],
            br#"{"streamName":"s","groupId":"g","event":{}}"#,
            br#"{"streamName":"s","groupId":"g","seq":0,"epoch":"e"}"#,
        ] {
            assert_eq!(
                follower.publish_mirrored(Bytes::from_static(bad)),
                Mirrored::Malformed
            );
        }
        for f in &frames {
            follower.publish_mirrored(f.clone());
        }
        assert!(drain(&q).is_empty());
        assert!(follower.release(id, "x", "s", "g", None));
        assert_eq!(seqs(&drain(&q)), [1, 2]);
    }
}
