//! Crash safety of `FileStore`: a child process (this test binary, re-executed with
//! `TRINE_STORE_CRASH_CHILD` set) commits batches in a loop and prints each acknowledged sequence
//! number; the parent kills it with SIGKILL at a random moment, reopens the store and checks
//! that every acknowledged batch is there, that every batch is all-or-nothing, and that the
//! surviving batches are a prefix of the sequence. Ten rounds on the same store.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use trine_store::{Batch, FileStore, FileStoreOptions, Space, Store};

const CHILD_DIR_ENV: &str = "TRINE_STORE_CRASH_CHILD";
const CHILD_START_ENV: &str = "TRINE_STORE_CRASH_START";
const ACK: &str = "crash-ack ";
const DATA_KEYS: u64 = 4;
const ROUNDS: usize = 10;

fn seq_key(seq: u64) -> Vec<u8> {
    [b"seq/".as_slice(), &seq.to_be_bytes()].concat()
}

fn data_key(seq: u64, i: u64) -> Vec<u8> {
    format!("batch/{seq:010}/{i}").into_bytes()
}

fn data_value(seq: u64, i: u64) -> Vec<u8> {
    let mut v = format!("{seq}:{i}:").into_bytes();
    v.resize(300, b'x');
    v
}

/// Batch `seq`: a marker, four data keys, an overwrite of `last` and a delete of the previous
/// batch's `pending` key, so a torn batch shows up in several ways.
fn batch(seq: u64) -> Batch {
    let mut b = Batch::new();
    b.put(Space::Meta, seq_key(seq), b"done".to_vec());
    for i in 0..DATA_KEYS {
        b.put(Space::StateData, data_key(seq, i), data_value(seq, i));
    }
    b.put(
        Space::StateOrder,
        b"last".to_vec(),
        seq.to_be_bytes().to_vec(),
    );
    if let Some(prev) = seq.checked_sub(1) {
        b.delete(Space::StateGroups, prev.to_be_bytes().to_vec());
    }
    b.put(
        Space::StateGroups,
        seq.to_be_bytes().to_vec(),
        b"pending".to_vec(),
    );
    b
}

/// The child's body; a no-op in a normal test run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let mut seq: u64 = std::env::var(CHILD_START_ENV)
        .expect("start seq")
        .parse()
        .expect("start seq");
    let store = FileStore::open(Path::new(&dir), FileStoreOptions::default()).expect("open");
    let mut out = std::io::stdout();
    loop {
        // Three ways to make a batch durable: synced commit; unsynced + sync(); unsynced +
        // synced empty batch.
        match seq % 3 {
            0 => store.commit(batch(seq), true).expect("commit"),
            1 => {
                store.commit(batch(seq), false).expect("commit");
                store.sync().expect("sync");
            }
            _ => {
                store.commit(batch(seq), false).expect("commit");
                store.commit(Batch::new(), true).expect("commit empty");
            }
        }
        writeln!(out, "{ACK}{seq}").expect("stdout");
        out.flush().expect("stdout");
        seq += 1;
    }
}

#[test]
fn acknowledged_batches_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut next_seq = 0u64;
    let mut total_acked = 0usize;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_START_ENV, next_seq.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print its own text on the same line first.
                if let Some(n) = line
                    .find(ACK)
                    .and_then(|p| line[p + ACK.len()..].parse().ok())
                {
                    acked.push(n);
                }
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(50 + random() % 251));
        child.kill().expect("SIGKILL child"); // std sends SIGKILL on Unix
        child.wait().expect("reap child");
        let acked: Vec<u64> = reader.join().expect("reader thread");
        total_acked += acked.len();

        let store = FileStore::open(dir.path(), FileStoreOptions::default()).expect("reopen");
        let present = check_store(&store, round);
        for seq in &acked {
            assert!(
                *seq < present,
                "round {round}: batch {seq} was acknowledged but is missing (store ends at {present})"
            );
        }
        assert!(
            present >= next_seq,
            "round {round}: earlier batches vanished"
        );
        eprintln!("round {round}: acked {} present {present}", acked.len());
        next_seq = present;
    }
    assert!(total_acked > 0, "the child never acknowledged a batch");
}

/// Checks the invariants of a recovered store; returns the number of batches present.
fn check_store(store: &FileStore, round: usize) -> u64 {
    // Present batches are exactly 0..n: commits are ordered, so none is missing before the last.
    let markers = store
        .scan(Space::Meta, b"seq/", None, usize::MAX)
        .expect("scan");
    for (i, (k, _)) in markers.iter().enumerate() {
        assert_eq!(
            *k,
            seq_key(i as u64),
            "round {round}: batches are not a prefix"
        );
    }
    let n = markers.len() as u64;
    // Every present batch is whole, and nothing of batch n (or later) exists.
    for seq in 0..=n {
        for i in 0..DATA_KEYS {
            let value = store.get(Space::StateData, &data_key(seq, i)).expect("get");
            if seq < n {
                assert_eq!(
                    value,
                    Some(data_value(seq, i)),
                    "round {round}: batch {seq} torn"
                );
            } else {
                assert_eq!(value, None, "round {round}: batch {seq} torn (no marker)");
            }
        }
    }
    let data = store
        .scan(Space::StateData, b"batch/", None, usize::MAX)
        .expect("scan");
    assert_eq!(
        data.len() as u64,
        n * DATA_KEYS,
        "round {round}: stray data keys"
    );
    let last = store.get(Space::StateOrder, b"last").expect("get");
    let pending = store
        .scan(Space::StateGroups, b"", None, usize::MAX)
        .expect("scan");
    match n.checked_sub(1) {
        None => {
            assert_eq!(last, None);
            assert!(pending.is_empty());
        }
        Some(top) => {
            assert_eq!(
                last,
                Some(top.to_be_bytes().to_vec()),
                "round {round}: `last` torn"
            );
            assert_eq!(
                pending,
                vec![(top.to_be_bytes().to_vec(), b"pending".to_vec())],
                "round {round}: `pending` torn"
            );
        }
    }
    n
}

fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}
