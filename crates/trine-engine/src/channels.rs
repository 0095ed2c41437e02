//! Channels: one-way, bounded frame pipes between two parties that each hold a ref
//! `{channel_id, access_key, direction}` (protocol.md §4.2). Workers attach over
//! `/ws/channels/{id}?key=…&dir=read|write`; the engine itself holds one end for HTTP request
//! bodies (it writes) and streamed HTTP responses (it reads).
//!
//! Each end can be taken once. The writer closing (dropping its sender) ends the reader's stream.
//! Channels are swept `ttl` after creation whether or not they were used, so abandoned ones never
//! accumulate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::worker::lock;

/// One message through a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelFrame {
    Text(String),
    Binary(Vec<u8>),
}

pub struct Channel {
    pub id: String,
    key: String,
    created: Instant,
    size: usize,
    ends: Mutex<Ends>,
    writer_attached: watch::Sender<bool>,
}

/// The queue is made only when an end is first taken: most HTTP requests never touch their
/// channels, so they cost no queue allocation.
#[derive(Default)]
struct Ends {
    made: bool,
    tx: Option<mpsc::Sender<ChannelFrame>>,
    rx: Option<mpsc::Receiver<ChannelFrame>>,
    writer_taken: bool,
    reader_taken: bool,
}

impl Ends {
    fn ensure(&mut self, size: usize) {
        if !self.made {
            let (tx, rx) = mpsc::channel(size);
            self.made = true;
            // A writer closed before the queue existed leaves the reader an ended stream.
            self.tx = (!self.writer_taken).then_some(tx);
            self.rx = Some(rx);
        }
    }
}

impl Channel {
    /// The `{channel_id, access_key, direction}` ref handed to a worker.
    pub fn reference(&self, direction: &str) -> Value {
        json!({"channel_id": self.id, "access_key": self.key, "direction": direction})
    }

    /// Resolves once a writer has attached (a worker opened the write end).
    pub fn writer_attached(&self) -> watch::Receiver<bool> {
        self.writer_attached.subscribe()
    }
}

/// Which end of a channel a party wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "read" => Some(Direction::Read),
            "write" => Some(Direction::Write),
            _ => None,
        }
    }
}

/// A taken end.
pub enum ChannelEnd {
    Reader(mpsc::Receiver<ChannelFrame>),
    Writer(mpsc::Sender<ChannelFrame>),
}

struct Table {
    channels: HashMap<String, Arc<Channel>>,
    last_sweep: Instant,
}

pub struct ChannelHub {
    ttl: Duration,
    table: Mutex<Table>,
}

impl ChannelHub {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            table: Mutex::new(Table {
                channels: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Creates a channel holding up to `buffer` frames (clamped to 1..=1024, default 64).
    pub fn create(&self, buffer: Option<u64>) -> Arc<Channel> {
        let size = buffer.unwrap_or(64).clamp(1, 1024) as usize;
        let (attached, _) = watch::channel(false);
        let ch = Arc::new(Channel {
            id: uuid::Uuid::new_v4().to_string(),
            key: uuid::Uuid::new_v4().to_string(),
            created: Instant::now(),
            size,
            ends: Mutex::new(Ends::default()),
            writer_attached: attached,
        });
        let mut table = lock(&self.table);
        let now = ch.created;
        // Sweep expired channels at most once a second (not on every create: this is on the
        // HTTP hot path).
        if now.duration_since(table.last_sweep) >= Duration::from_secs(1).min(self.ttl) {
            let ttl = self.ttl;
            table
                .channels
                .retain(|_, c| now.duration_since(c.created) < ttl);
            table.last_sweep = now;
        }
        table.channels.insert(ch.id.clone(), ch.clone());
        ch
    }

    /// Takes one end, checking the access key. `None`: unknown id, wrong key, or already taken.
    pub fn take(&self, id: &str, key: &str, dir: Direction) -> Option<ChannelEnd> {
        let ch = lock(&self.table).channels.get(id).cloned()?;
        if ch.key != key || ch.created.elapsed() >= self.ttl {
            return None;
        }
        Self::take_end(&ch, dir)
    }

    /// Takes an end of a channel the engine created for itself.
    pub fn take_end(ch: &Channel, dir: Direction) -> Option<ChannelEnd> {
        let mut ends = lock(&ch.ends);
        match dir {
            Direction::Read => {
                if ends.reader_taken {
                    return None;
                }
                ends.reader_taken = true;
                ends.ensure(ch.size);
                ends.rx.take().map(ChannelEnd::Reader)
            }
            Direction::Write => {
                if ends.writer_taken {
                    return None;
                }
                ends.ensure(ch.size);
                ends.writer_taken = true;
                let tx = ends.tx.take()?;
                drop(ends);
                ch.writer_attached.send_replace(true);
                Some(ChannelEnd::Writer(tx))
            }
        }
    }

    /// Takes the write end and closes it at once without writing (an empty request body):
    /// a reader that attaches later sees an ended stream. Allocates nothing.
    pub fn close_writer(ch: &Channel) {
        let mut ends = lock(&ch.ends);
        ends.writer_taken = true;
        ends.tx = None;
    }

    /// Forgets a channel (its taken ends keep working until dropped).
    pub fn remove(&self, id: &str) {
        lock(&self.table).channels.remove(id);
    }

    pub fn len(&self) -> usize {
        lock(&self.table).channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ends_are_taken_once_with_the_right_key() {
        let hub = ChannelHub::new(Duration::from_secs(300));
        let ch = hub.create(Some(4));
        let r = ch.reference("read");
        assert_eq!(r["direction"], "read");
        let key = r["access_key"].as_str().unwrap();
        assert!(hub.take(&ch.id, "wrong", Direction::Write).is_none());
        let Some(ChannelEnd::Writer(tx)) = hub.take(&ch.id, key, Direction::Write) else {
            panic!("writer")
        };
        assert!(*ch.writer_attached().borrow());
        assert!(hub.take(&ch.id, key, Direction::Write).is_none());
        let Some(ChannelEnd::Reader(mut rx)) = hub.take(&ch.id, key, Direction::Read) else {
            panic!("reader")
        };
        tx.send(ChannelFrame::Text("a".into())).await.unwrap();
        tx.send(ChannelFrame::Binary(vec![1])).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(ChannelFrame::Text("a".into())));
        assert_eq!(rx.recv().await, Some(ChannelFrame::Binary(vec![1])));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn writer_closed_before_any_reader_ends_the_stream() {
        let hub = ChannelHub::new(Duration::from_secs(300));
        let ch = hub.create(None);
        ChannelHub::close_writer(&ch);
        let Some(ChannelEnd::Reader(mut rx)) = ChannelHub::take_end(&ch, Direction::Read) else {
            panic!("reader")
        };
        assert_eq!(rx.recv().await, None);
        assert!(ChannelHub::take_end(&ch, Direction::Write).is_none());
    }

    #[test]
    fn expired_channels_are_refused_and_swept() {
        let hub = ChannelHub::new(Duration::from_millis(0));
        let a = hub.create(None);
        let key = a.reference("read")["access_key"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(hub.take(&a.id, &key, Direction::Read).is_none());
        let _b = hub.create(None);
        assert_eq!(
            hub.len(),
            1,
            "the expired channel was swept when the next one was created"
        );
    }
}
