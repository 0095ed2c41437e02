//! How state records are laid out in the store's key spaces.
//!
//! | space | key | value |
//! |---|---|---|
//! | `StateData` | scope length (u16 BE) · scope · key | [`Record`]: version, order, compact JSON |
//! | `StateOrder` | scope length (u16 BE) · scope · order (u64 BE) | key |
//! | `StateGroups` | scope | [`Group`]: key count, next order |
//! | `Meta` | `seq` | last committed sequence (u64 LE) |
//! | `OutboxEvents` | sequence (u64 BE) | trigger payload (JSON) |
//! | `OutboxTargets` | sequence (u64 BE) · trigger id | [`super::delivery::Target`] (JSON) |
//! | `DeadLetters` | sequence (u64 BE) · trigger id | dead-letter record (JSON) |
//!
//! The length prefix keeps scopes opaque (any bytes, no separator to escape) while a scope's
//! keys stay contiguous, so one prefix scan lists a scope. Big-endian numbers sort numerically.

use trine_store::{Space, Store, StoreError};

/// Key of the last committed sequence number in `Meta`.
pub const META_SEQ: &[u8] = b"seq";

/// Prefix shared by every key of `scope` in `StateData` and `StateOrder` (a scope is a state
/// scope's UTF-8, or a stream group's [`stream_scope`]).
pub fn scope_prefix(scope: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + scope.len() + 16);
    // Scopes are validated (state: 256 bytes; streams: 2 + 256 + 256), so the length fits.
    k.extend_from_slice(&(scope.len() as u16).to_be_bytes());
    k.extend_from_slice(scope);
    k
}

/// The scope of a stream group: stream length (u16 BE) · stream · group. All groups of one stream
/// share the prefix [`stream_prefix`], so `StreamGroups` lists them with one scan.
pub fn stream_scope(stream: &str, group: &str) -> Vec<u8> {
    let mut k = stream_prefix(stream);
    k.extend_from_slice(group.as_bytes());
    k
}

/// Prefix of every group of `stream` in `StreamGroups`.
pub fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + stream.len() + 32);
    k.extend_from_slice(&(stream.len() as u16).to_be_bytes());
    k.extend_from_slice(stream.as_bytes());
    k
}

/// Splits a [`stream_scope`] back into stream and group.
pub fn split_stream_scope(scope: &[u8]) -> Option<(String, String)> {
    let len = u16::from_be_bytes(scope.get(0..2)?.try_into().ok()?) as usize;
    let stream = std::str::from_utf8(scope.get(2..2 + len)?).ok()?;
    let group = std::str::from_utf8(scope.get(2 + len..)?).ok()?;
    Some((stream.to_owned(), group.to_owned()))
}

/// Data key of `(scope, key)`.
pub fn data_key(scope: &[u8], key: &str) -> Vec<u8> {
    let mut k = scope_prefix(scope);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Order key of a scope's `order`-th inserted key.
pub fn order_key(scope: &[u8], order: u64) -> Vec<u8> {
    let mut k = scope_prefix(scope);
    k.extend_from_slice(&order.to_be_bytes());
    k
}

/// Outbox / dead-letter key: sequence, then (optionally) the trigger id.
pub fn seq_key(seq: u64, trigger_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + trigger_id.len());
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(trigger_id.as_bytes());
    k
}

/// Splits an outbox / dead-letter key into its sequence and trigger id.
pub fn split_seq_key(k: &[u8]) -> Result<(u64, String), StoreError> {
    if k.len() < 8 {
        return Err(StoreError::Corrupt(
            "outbox key shorter than 8 bytes".into(),
        ));
    }
    let (seq, id) = k.split_at(8);
    let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
    let id = String::from_utf8(id.to_vec())
        .map_err(|_| StoreError::Corrupt("outbox trigger id is not UTF-8".into()))?;
    Ok((seq, id))
}

/// A stored state value with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Sequence number of the write that produced this value (the key's version).
    pub version: u64,
    /// Insertion position within the scope (kept on overwrite).
    pub order: u64,
    /// Compact JSON of the value.
    pub json: Vec<u8>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.json.len());
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&self.order.to_le_bytes());
        v.extend_from_slice(&self.json);
        v
    }

    pub fn decode(bytes: Vec<u8>) -> Result<Self, StoreError> {
        if bytes.len() < 16 {
            return Err(StoreError::Corrupt(
                "state record shorter than 16 bytes".into(),
            ));
        }
        let version = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let order = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let mut json = bytes;
        json.drain(..16);
        Ok(Record {
            version,
            order,
            json,
        })
    }
}

/// Decodes a stored record into its JSON value and version.
pub fn decode_value(bytes: Vec<u8>) -> Result<(serde_json::Value, u64), StoreError> {
    let r = Record::decode(bytes)?;
    let v = serde_json::from_slice(&r.json)
        .map_err(|e| StoreError::Corrupt(format!("stored value: {e}")))?;
    Ok((v, r.version))
}

/// The value (and version) stored under a data key; `None` when absent.
pub fn read_value(
    store: &dyn Store,
    data: Space,
    key: &[u8],
) -> Result<Option<(serde_json::Value, u64)>, StoreError> {
    store.get(data, key)?.map(decode_value).transpose()
}

/// [`read_value`] for a caller on the async runtime (a remote store answers over its async
/// connection instead of blocking a runtime thread).
pub async fn read_value_async(
    store: &dyn Store,
    data: Space,
    key: Vec<u8>,
) -> Result<Option<(serde_json::Value, u64)>, StoreError> {
    store
        .get_async(data, key)
        .await?
        .map(decode_value)
        .transpose()
}

/// A scope's values in insertion order (state `list`, stream `list` and group syncs). A key
/// deleted between the order scan and its read is simply left out.
pub fn read_scope(
    store: &dyn Store,
    order: Space,
    data: Space,
    scope: &[u8],
) -> Result<Vec<serde_json::Value>, StoreError> {
    let prefix = scope_prefix(scope);
    let mut values = Vec::new();
    trine_store::for_each(store, order, &prefix, 1024, |_, key| {
        let mut dk = prefix.clone();
        dk.extend_from_slice(&key);
        if let Some((v, _)) = read_value(store, data, &dk)? {
            values.push(v);
        }
        Ok(true)
    })?;
    Ok(values)
}

/// Per-scope bookkeeping: how many keys it holds and the next insertion position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Group {
    pub count: u64,
    pub next_order: u64,
}

impl Group {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.count.to_le_bytes());
        v.extend_from_slice(&self.next_order.to_le_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        if bytes.len() != 16 {
            return Err(StoreError::Corrupt("scope record is not 16 bytes".into()));
        }
        Ok(Group {
            count: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
            next_order: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        })
    }
}

/// Decodes a little-endian u64 counter.
pub fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("counter is not 8 bytes".into()))?;
    Ok(u64::from_le_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keys_stay_contiguous_and_distinct() {
        // "ab"+"c" and "a"+"bc" must not collide.
        assert_ne!(data_key(b"ab", "c"), data_key(b"a", "bc"));
        assert!(data_key(b"s", "k").starts_with(&scope_prefix(b"s")));
        assert!(!data_key(b"s2", "k").starts_with(&scope_prefix(b"s")));
        assert!(order_key(b"s", 1) < order_key(b"s", 256));
        assert_ne!(stream_scope("ab", "c"), stream_scope("a", "bc"));
        assert!(stream_scope("s", "g").starts_with(&stream_prefix("s")));
        assert_eq!(
            split_stream_scope(&stream_scope("chat", "room:1")),
            Some(("chat".into(), "room:1".into()))
        );
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            version: 7,
            order: 3,
            json: b"{\"a\":1}".to_vec(),
        };
        assert_eq!(Record::decode(r.encode()).unwrap(), r);
        let g = Group {
            count: 2,
            next_order: 9,
        };
        assert_eq!(Group::decode(&g.encode()).unwrap(), g);
        assert_eq!(
            split_seq_key(&seq_key(42, "t-1")).unwrap(),
            (42, "t-1".into())
        );
        assert!(Record::decode(vec![1, 2]).is_err());
    }
}
