//! The in-memory adapter: one `BTreeMap` per space behind a read-write lock. Nothing is kept
//! across restarts (iii's `store_method: in_memory`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use crate::{Batch, BatchOp, Entry, Space, Store, StoreError, StoreInfo};

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

/// Ordered maps in memory; batches apply under one write lock, so they are atomic for readers.
#[derive(Default)]
pub struct MemoryStore {
    spaces: RwLock<BTreeMap<Space, Table>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn commit(&self, batch: Batch, _sync: bool) -> Result<(), StoreError> {
        let mut spaces = self.spaces.write().unwrap_or_else(|e| e.into_inner());
        for op in batch.ops {
            match op {
                BatchOp::Put { space, key, value } => {
                    spaces.entry(space).or_default().insert(key, value);
                }
                BatchOp::Delete { space, key } => {
                    if let Some(t) = spaces.get_mut(&space) {
                        t.remove(&key);
                    }
                }
            }
        }
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner());
        Ok(spaces.get(&space).and_then(|t| t.get(key)).cloned())
    }

    fn scan(
        &self,
        space: Space,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let spaces = self.spaces.read().unwrap_or_else(|e| e.into_inner());
        let Some(t) = spaces.get(&space) else {
            return Ok(Vec::new());
        };
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        Ok(t.range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            adapter: "in_memory",
            durable: false,
            path: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        crate::conformance::run_all(&|| Box::new(super::MemoryStore::new()));
    }
}
