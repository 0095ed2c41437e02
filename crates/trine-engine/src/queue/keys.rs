//! How queue jobs are laid out in the store.
//!
//! | space | key | value |
//! |---|---|---|
//! | `QueueJobs` | queue key · sequence (u64 BE) | [`JobHeader`] length (u32 BE) · header JSON · payload JSON |
//! | `QueueAttempts` | queue key · sequence | [`Attempts`] (JSON) |
//! | `QueueDead` | queue key · sequence | header length · [`DeadHeader`] JSON · payload JSON |
//! | `QueueTopics` | topic length (u16 BE) · topic · function id | [`Subscription`] (JSON) |
//! | `Meta` | `queue_seq` | last job sequence (u64 LE) |
//!
//! A *queue key* is the length-prefixed (u16 BE) internal name of a queue: `n` · name for a
//! named queue, `t` · topic · NUL · function id for a topic subscriber's queue, `p` · topic for
//! messages parked on a topic without subscribers. Names cannot contain NUL, so two queues never
//! share keys (the reference's `a` + `b::c` / `a::b` + `c` collision cannot happen). The
//! sequence is global and increasing, so a queue's jobs scan in enqueue order. A job's payload
//! is written once; retries only rewrite its small attempts record.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trine_store::StoreError;

/// Key of the last job sequence in `Meta`.
pub const META_QUEUE_SEQ: &[u8] = b"queue_seq";

/// Which queue a job is on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueId {
    Named(String),
    Topic { topic: String, function_id: String },
    Parked(String),
}

impl QueueId {
    /// The internal name, without the length prefix.
    fn internal(&self) -> Vec<u8> {
        let mut v = Vec::new();
        match self {
            QueueId::Named(n) => {
                v.push(b'n');
                v.extend_from_slice(n.as_bytes());
            }
            QueueId::Topic { topic, function_id } => {
                v.push(b't');
                v.extend_from_slice(topic.as_bytes());
                v.push(0);
                v.extend_from_slice(function_id.as_bytes());
            }
            QueueId::Parked(t) => {
                v.push(b'p');
                v.extend_from_slice(t.as_bytes());
            }
        }
        v
    }

    /// The key prefix of this queue's records.
    pub fn prefix(&self) -> Vec<u8> {
        let name = self.internal();
        let mut k = Vec::with_capacity(2 + name.len() + 8);
        k.extend_from_slice(&(name.len() as u16).to_be_bytes());
        k.extend_from_slice(&name);
        k
    }

    /// Decodes a queue key prefix; returns the id and the rest of the key.
    pub fn split(key: &[u8]) -> Option<(QueueId, &[u8])> {
        let len = u16::from_be_bytes(key.get(0..2)?.try_into().ok()?) as usize;
        let name = key.get(2..2 + len)?;
        let rest = key.get(2 + len..)?;
        let (kind, body) = name.split_first()?;
        let id = match kind {
            b'n' => QueueId::Named(String::from_utf8(body.to_vec()).ok()?),
            b'p' => QueueId::Parked(String::from_utf8(body.to_vec()).ok()?),
            b't' => {
                let at = body.iter().position(|b| *b == 0)?;
                QueueId::Topic {
                    topic: String::from_utf8(body[..at].to_vec()).ok()?,
                    function_id: String::from_utf8(body[at + 1..].to_vec()).ok()?,
                }
            }
            _ => return None,
        };
        Some((id, rest))
    }

    /// The name shown to users: the queue name, or the topic.
    pub fn display_name(&self) -> &str {
        match self {
            QueueId::Named(n) => n,
            QueueId::Topic { topic, .. } | QueueId::Parked(topic) => topic,
        }
    }
}

/// `(queue, seq)` key.
pub fn job_key(queue: &QueueId, seq: u64) -> Vec<u8> {
    let mut k = queue.prefix();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a job key into its queue and sequence.
pub fn split_job_key(key: &[u8]) -> Result<(QueueId, u64), StoreError> {
    let corrupt = || StoreError::Corrupt("queue job key".into());
    let (q, rest) = QueueId::split(key).ok_or_else(corrupt)?;
    let seq = u64::from_be_bytes(rest.try_into().map_err(|_| corrupt())?);
    Ok((q, seq))
}

/// Key of a durable topic subscription.
pub fn topic_key(topic: &str, function_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + topic.len() + function_id.len());
    k.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(function_id.as_bytes());
    k
}

pub fn split_topic_key(key: &[u8]) -> Result<(String, String), StoreError> {
    let corrupt = || StoreError::Corrupt("queue topic key".into());
    let len = u16::from_be_bytes(
        key.get(0..2)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    ) as usize;
    let topic = key.get(2..2 + len).ok_or_else(corrupt)?;
    let function = key.get(2 + len..).ok_or_else(corrupt)?;
    Ok((
        String::from_utf8(topic.to_vec()).map_err(|_| corrupt())?,
        String::from_utf8(function.to_vec()).map_err(|_| corrupt())?,
    ))
}

/// Everything about a job except its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobHeader {
    /// Job id (UUID): what `dlq_messages` shows as `id`.
    pub id: String,
    /// The producer's `messageReceiptId`.
    pub receipt: String,
    pub function_id: String,
    /// Attempts and backoff captured at enqueue time.
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
}

/// Attempts made so far and the last error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attempts {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<StoredError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredError {
    pub code: String,
    pub message: String,
}

/// A dead-lettered job: its header plus why and when it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadHeader {
    pub job: JobHeader,
    pub attempts: u32,
    pub error: StoredError,
    pub failed_at_ms: u64,
}

/// A durable topic subscription (kept while the subscriber's worker is away).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    #[serde(default)]
    pub fifo: bool,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_function_id: Option<String>,
}

/// Encodes a header and an already-serialized payload into one record.
pub fn encode<H: Serialize>(header: &H, payload: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap_or_default();
    let mut v = Vec::with_capacity(4 + h.len() + payload.len());
    v.extend_from_slice(&(h.len() as u32).to_be_bytes());
    v.extend_from_slice(&h);
    v.extend_from_slice(payload);
    v
}

/// Splits a record into its header bytes and payload bytes.
fn split(record: &[u8]) -> Result<(&[u8], &[u8]), StoreError> {
    let corrupt = || StoreError::Corrupt("queue record".into());
    let len = u32::from_be_bytes(
        record
            .get(0..4)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    ) as usize;
    let h = record.get(4..4 + len).ok_or_else(corrupt)?;
    let p = record.get(4 + len..).ok_or_else(corrupt)?;
    Ok((h, p))
}

/// Decodes only the header of a record (the payload is not parsed).
pub fn decode_header<H: serde::de::DeserializeOwned>(record: &[u8]) -> Result<H, StoreError> {
    let (h, _) = split(record)?;
    serde_json::from_slice(h).map_err(|e| StoreError::Corrupt(format!("queue record header: {e}")))
}

/// Decodes a whole record.
pub fn decode<H: serde::de::DeserializeOwned>(record: &[u8]) -> Result<(H, Value), StoreError> {
    let (h, p) = split(record)?;
    let header = serde_json::from_slice(h)
        .map_err(|e| StoreError::Corrupt(format!("queue record header: {e}")))?;
    let payload = serde_json::from_slice(p)
        .map_err(|e| StoreError::Corrupt(format!("queue record payload: {e}")))?;
    Ok((header, payload))
}

/// The payload bytes of a record.
pub fn payload_bytes(record: &[u8]) -> Result<&[u8], StoreError> {
    split(record).map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_keys_round_trip_and_never_collide() {
        let ids = [
            QueueId::Named("a".into()),
            QueueId::Topic {
                topic: "a".into(),
                function_id: "b::c".into(),
            },
            QueueId::Topic {
                topic: "a::b".into(),
                function_id: "c".into(),
            },
            QueueId::Parked("a".into()),
        ];
        let keys: Vec<Vec<u8>> = ids.iter().map(|q| job_key(q, 7)).collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(split_job_key(k).unwrap(), (ids[i].clone(), 7));
            for (j, other) in keys.iter().enumerate() {
                if i != j {
                    assert_ne!(k, other);
                    assert!(!other.starts_with(&ids[i].prefix()));
                }
            }
        }
        // Sequence order is key order within a queue.
        let q = QueueId::Named("q".into());
        assert!(job_key(&q, 255) < job_key(&q, 256));
    }

    #[test]
    fn records_keep_header_and_payload_apart() {
        let h = Attempts {
            attempts: 2,
            last_error: None,
        };
        let rec = encode(&h, br#"{"x":1}"#);
        let (back, payload): (Attempts, Value) = decode(&rec).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, json!({"x": 1}));
        assert_eq!(decode_header::<Attempts>(&rec).unwrap(), h);
        assert!(decode_header::<Attempts>(&rec[..3]).is_err());
        let (t, f) = split_topic_key(&topic_key("orders", "f::g")).unwrap();
        assert_eq!((t.as_str(), f.as_str()), ("orders", "f::g"));
    }
}
