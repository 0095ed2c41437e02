//! Calls waiting for their `invocationresult`, keyed by `invocation_id`.
//!
//! Each entry remembers the connection generation its frame was sent on, so a dropped connection
//! fails exactly the calls that were sent on it (with [`Error::Disconnected`]) and leaves alone the
//! calls already waiting for the next connection. The mutex is only held for map operations,
//! never across an `.await`; completions are delivered after it is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::Error;

pub(crate) type Outcome = Result<Value, Error>;

struct Entry {
    tx: oneshot::Sender<Outcome>,
    generation: u64,
}

#[derive(Default)]
pub(crate) struct PendingCalls {
    map: Mutex<HashMap<String, Entry>>,
}

impl PendingCalls {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a call about to be sent on connection `generation`, unless that connection is
    /// already being torn down (`alive` false), in which case the sender is handed back.
    ///
    /// Teardown clears `alive` before it calls [`fail_generation`](Self::fail_generation), and both
    /// run under this lock, so a call is either refused here or failed by the teardown: it can never
    /// be left waiting on a dead connection.
    pub(crate) fn insert_if_alive(
        &self,
        invocation_id: String,
        generation: u64,
        alive: &AtomicBool,
        tx: oneshot::Sender<Outcome>,
    ) -> Result<(), oneshot::Sender<Outcome>> {
        let mut map = self.lock();
        if !alive.load(Ordering::Acquire) {
            return Err(tx);
        }
        map.insert(invocation_id, Entry { tx, generation });
        Ok(())
    }

    /// Delivers an answer. Returns false for unknown ids (late answers after a timeout).
    pub(crate) fn complete(&self, invocation_id: &str, outcome: Outcome) -> bool {
        let entry = self.lock().remove(invocation_id);
        match entry {
            // The caller may have given up in the meantime; nothing to do then.
            Some(entry) => {
                let _ = entry.tx.send(outcome);
                true
            }
            None => false,
        }
    }

    /// Forgets a call whose caller gave up (timeout) or whose frame was never sent.
    pub(crate) fn remove(&self, invocation_id: &str) {
        self.lock().remove(invocation_id);
    }

    /// Fails every call sent on connection `generation`.
    pub(crate) fn fail_generation(&self, generation: u64, error: &Error) {
        let failed: Vec<Entry> = {
            let mut map = self.lock();
            let ids: Vec<String> = map
                .iter()
                .filter(|(_, e)| e.generation == generation)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for entry in failed {
            let _ = entry.tx.send(Err(error.clone()));
        }
    }

    /// Fails every call (shutdown).
    pub(crate) fn fail_all(&self, error: &Error) {
        let failed: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        for entry in failed {
            let _ = entry.tx.send(Err(error.clone()));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn completes_and_fails_by_generation() {
        let pending = PendingCalls::default();
        let alive = AtomicBool::new(true);
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        assert!(pending.insert_if_alive("a".into(), 1, &alive, tx1).is_ok());
        assert!(pending.insert_if_alive("b".into(), 1, &alive, tx2).is_ok());
        assert!(pending.insert_if_alive("c".into(), 2, &alive, tx3).is_ok());

        assert!(pending.complete("a", Ok(json!(1))));
        assert!(
            !pending.complete("a", Ok(json!(2))),
            "second answer is ignored"
        );
        assert_eq!(rx1.try_recv().unwrap(), Ok(json!(1)));

        pending.fail_generation(1, &Error::Disconnected);
        assert_eq!(rx2.try_recv().unwrap(), Err(Error::Disconnected));
        assert!(rx3.try_recv().is_err(), "generation 2 untouched");
        assert_eq!(pending.len(), 1);

        pending.fail_all(&Error::Shutdown);
        assert_eq!(rx3.try_recv().unwrap(), Err(Error::Shutdown));
        assert_eq!(pending.len(), 0);
    }

    #[test]
    fn refuses_a_dead_connection() {
        let pending = PendingCalls::default();
        let alive = AtomicBool::new(false);
        let (tx, _rx) = oneshot::channel();
        assert!(pending.insert_if_alive("a".into(), 1, &alive, tx).is_err());
        assert_eq!(pending.len(), 0);
    }
}
