//! The conformance suite every adapter runs.
//!
//! Each check is a public function taking a fresh, empty store, so an adapter's tests can run one
//! alone; [`run_all`] runs them all, each on a store of its own. Durable adapters also run
//! [`run_durable`], whose checks drop the store and reopen it from its directory. Checks panic on
//! the first violation, naming the key involved.
//!
//! Not covered here, because it needs a process to kill: crash safety of `FileStore`
//! (`tests/crash.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{Batch, Entry, Space, Store};

/// A check of the suite that needs only a fresh store.
pub type Check = fn(&dyn Store);

/// A durability check: a scratch directory and a way to open (and reopen) the store there.
pub type DurableCheck = fn(&Path, &dyn Fn(&Path) -> Box<dyn Store>);

/// Every check [`run_all`] runs, by name.
pub const CHECKS: &[(&str, Check)] = &[
    ("put_get_delete", put_get_delete),
    ("get_many_in_order", get_many_in_order),
    ("overwrite", overwrite),
    ("scan_prefix_boundaries", scan_prefix_boundaries),
    ("scan_prefix_ending_in_ff", scan_prefix_ending_in_ff),
    ("scan_start_after", scan_start_after),
    ("scan_limit_and_paging", scan_limit_and_paging),
    ("scan_ascending_byte_order", scan_ascending_byte_order),
    ("spaces_are_isolated", spaces_are_isolated),
    ("batch_last_op_wins", batch_last_op_wins),
    ("batch_is_atomic_for_readers", batch_is_atomic_for_readers),
    ("empty_batch", empty_batch),
    ("large_values", large_values),
    ("binary_keys", binary_keys),
    ("many_keys", many_keys),
    ("matches_model", matches_model),
];

/// Runs every check in [`CHECKS`], each against a fresh store made by `make`.
pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    for (name, check) in CHECKS {
        // Shown with the test's output if the check fails.
        eprintln!("conformance: {name}");
        let store = make();
        check(store.as_ref());
    }
}

/// Runs the durability checks, each in a scratch directory of its own; `make_at` opens the store
/// in a directory (creating it or reopening what is there).
pub fn run_durable(make_at: &dyn Fn(&Path) -> Box<dyn Store>) {
    let checks: [(&str, DurableCheck); 3] = [
        ("survives_reopen", survives_reopen),
        ("unsynced_then_sync_survives", unsynced_then_sync_survives),
        ("reports_durable", reports_durable),
    ];
    for (name, check) in checks {
        eprintln!("conformance (durable): {name}");
        let dir = ScratchDir::new(name);
        check(&dir.0, make_at);
    }
}

// ---------------------------------------------------------------------------------------------
// Basic operations.

/// `get_many` answers each key in order, `None` for missing ones, and nothing for no keys.
pub fn get_many_in_order(s: &dyn Store) {
    let mut b = Batch::new();
    b.put(Space::StateData, b"a".to_vec(), b"1".to_vec());
    b.put(Space::StateData, b"c".to_vec(), b"3".to_vec());
    b.put(Space::Meta, b"b".to_vec(), b"other space".to_vec());
    s.commit(b, false).expect("commit");
    let keys = vec![b"c".to_vec(), b"b".to_vec(), b"a".to_vec(), b"c".to_vec()];
    assert_eq!(
        s.get_many(Space::StateData, &keys).expect("get_many"),
        vec![
            Some(b"3".to_vec()),
            None,
            Some(b"1".to_vec()),
            Some(b"3".to_vec())
        ]
    );
    assert!(s
        .get_many(Space::StateData, &[])
        .expect("get_many")
        .is_empty());
    let answers = s
        .get_many_spaces(&[
            (Space::StateData, vec![b"a".to_vec(), b"b".to_vec()]),
            (Space::StateOrder, Vec::new()),
            (Space::Meta, vec![b"b".to_vec()]),
        ])
        .expect("get_many_spaces");
    assert_eq!(
        answers,
        vec![
            vec![Some(b"1".to_vec()), None],
            Vec::new(),
            vec![Some(b"other space".to_vec())]
        ]
    );
}

/// A put is readable; a delete removes it; deleting a missing key is not an error.
pub fn put_get_delete(s: &dyn Store) {
    assert_eq!(get(s, Space::StateData, b"k"), None);
    put(s, Space::StateData, b"k", b"v");
    assert_eq!(get(s, Space::StateData, b"k"), Some(b"v".to_vec()));
    delete(s, Space::StateData, b"k");
    assert_eq!(get(s, Space::StateData, b"k"), None);
    delete(s, Space::StateData, b"never-written");
    assert!(scan_all(s, Space::StateData, b"").is_empty());
}

/// A second put replaces the value (longer and shorter), leaving one entry.
pub fn overwrite(s: &dyn Store) {
    put(s, Space::StateData, b"k", b"first");
    put(s, Space::StateData, b"k", b"a much longer second value");
    assert_eq!(
        get(s, Space::StateData, b"k"),
        Some(b"a much longer second value".to_vec())
    );
    put(s, Space::StateData, b"k", b"3");
    assert_eq!(
        scan_all(s, Space::StateData, b""),
        vec![(b"k".to_vec(), b"3".to_vec())]
    );
}

// ---------------------------------------------------------------------------------------------
// Scans.

/// A prefix scan returns exactly the keys starting with the prefix: not its neighbours on
/// either side, and keys extending it with 0x00 or 0xFF included.
pub fn scan_prefix_boundaries(s: &dyn Store) {
    let keys: [&[u8]; 9] = [
        b"a",
        b"ab",
        b"ab\x00",
        b"ab\xff",
        b"abc",
        b"abd\xff",
        b"ac",
        b"b",
        b"aa\xff\xff",
    ];
    put_keys(s, Space::StateData, &keys);
    let expect = |prefix: &[u8], want: &[&[u8]]| {
        assert_eq!(
            scan_keys(s, Space::StateData, prefix, None, usize::MAX),
            to_vecs(want),
            "prefix {prefix:?}"
        );
    };
    expect(b"ab", &[b"ab", b"ab\x00", b"abc", b"abd\xff", b"ab\xff"]);
    expect(
        b"a",
        &[
            b"a",
            b"aa\xff\xff",
            b"ab",
            b"ab\x00",
            b"abc",
            b"abd\xff",
            b"ab\xff",
            b"ac",
        ],
    );
    expect(b"abc", &[b"abc"]);
    expect(b"abz", &[]);
    expect(b"0", &[]);
    expect(b"c", &[]);
    assert_eq!(scan_all(s, Space::StateData, b"").len(), keys.len());
}

/// Prefixes ending in 0xFF bytes (whose successor must carry into earlier bytes, or does not
/// exist) select exactly their keys.
pub fn scan_prefix_ending_in_ff(s: &dyn Store) {
    let keys: [&[u8]; 13] = [
        &[1, 0xFE],
        &[1, 0xFE, 0xFF],
        &[1, 0xFF],
        &[1, 0xFF, 0],
        &[1, 0xFF, 0xFF],
        &[1, 0xFF, 0xFF, 7],
        &[2],
        &[2, 0],
        &[0xFE, 0xFF, 0xFF],
        &[0xFF],
        &[0xFF, 0xFE],
        &[0xFF, 0xFF],
        &[0xFF, 0xFF, 0xFF],
    ];
    put_keys(s, Space::StateOrder, &keys);
    let expect = |prefix: &[u8], after: Option<&[u8]>, want: &[&[u8]]| {
        assert_eq!(
            scan_keys(s, Space::StateOrder, prefix, after, usize::MAX),
            to_vecs(want),
            "prefix {prefix:?} after {after:?}"
        );
    };
    expect(
        &[1, 0xFF],
        None,
        &[
            &[1, 0xFF],
            &[1, 0xFF, 0],
            &[1, 0xFF, 0xFF],
            &[1, 0xFF, 0xFF, 7],
        ],
    );
    expect(
        &[1, 0xFF, 0xFF],
        None,
        &[&[1, 0xFF, 0xFF], &[1, 0xFF, 0xFF, 7]],
    );
    expect(&[1, 0xFE, 0xFF], None, &[&[1, 0xFE, 0xFF]]);
    expect(&[0xFE, 0xFF], None, &[&[0xFE, 0xFF, 0xFF]]);
    expect(
        &[0xFF],
        None,
        &[&[0xFF], &[0xFF, 0xFE], &[0xFF, 0xFF], &[0xFF, 0xFF, 0xFF]],
    );
    expect(&[0xFF, 0xFF], None, &[&[0xFF, 0xFF], &[0xFF, 0xFF, 0xFF]]);
    expect(&[0xFF, 0xFF, 0xFF, 0xFF], None, &[]);
    expect(
        &[0xFF],
        Some(&[0xFF, 0xFE]),
        &[&[0xFF, 0xFF], &[0xFF, 0xFF, 0xFF]],
    );
    expect(&[1, 0xFF], Some(&[1, 0xFF, 0xFF, 7]), &[]);
    expect(&[1, 0xFF], Some(&[1, 0xFF, 0xFF, 0xFF]), &[]);
}

/// `start_after` inside the prefix resumes strictly after it (present or not); before the
/// prefix it changes nothing; past the prefix it yields nothing.
pub fn scan_start_after(s: &dyn Store) {
    let keys: [&[u8]; 7] = [b"o/9", b"p/", b"p/1", b"p/2", b"p/3", b"p/5", b"q/1"];
    put_keys(s, Space::StateData, &keys);
    let all_p: [&[u8]; 5] = [b"p/", b"p/1", b"p/2", b"p/3", b"p/5"];
    let expect = |after: &[u8], want: &[&[u8]]| {
        assert_eq!(
            scan_keys(s, Space::StateData, b"p/", Some(after), usize::MAX),
            to_vecs(want),
            "after {after:?}"
        );
    };
    expect(b"p/2", &[b"p/3", b"p/5"]);
    expect(b"p/4", &[b"p/5"]);
    expect(b"p/5", &[]);
    expect(b"p/", &all_p[1..]);
    expect(b"p/\x00", &all_p[1..]);
    expect(b"p/5\x00", &[]);
    expect(b"", &all_p);
    expect(b"a", &all_p);
    expect(b"o/9", &all_p);
    expect(b"p", &all_p);
    expect(b"q", &[]);
    expect(b"q/1", &[]);
    expect(b"z", &[]);
}

/// `limit` caps the result; paging with `start_after` = last key returns everything once.
pub fn scan_limit_and_paging(s: &dyn Store) {
    let keys: Vec<Vec<u8>> = (0..50).map(|i| format!("k/{i:03}").into_bytes()).collect();
    let mut b = Batch::new();
    for k in &keys {
        b.put(Space::StateGroups, k.clone(), k.clone());
    }
    commit(s, b, true);
    assert!(s
        .scan(Space::StateGroups, b"k/", None, 0)
        .unwrap()
        .is_empty());
    assert_eq!(scan_keys(s, Space::StateGroups, b"k/", None, 1), keys[..1]);
    assert_eq!(
        scan_keys(s, Space::StateGroups, b"k/", None, 10),
        keys[..10]
    );
    assert_eq!(scan_keys(s, Space::StateGroups, b"k/", None, 1000), keys);
    let mut paged = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = scan_keys(s, Space::StateGroups, b"k/", after.as_deref(), 7);
        assert!(page.len() <= 7);
        let Some(last) = page.last().cloned() else {
            break;
        };
        paged.extend(page);
        after = Some(last);
    }
    assert_eq!(paged, keys);
}

/// Scans return keys in ascending unsigned byte order (0x80 after 0x7F), shorter before
/// longer on a common prefix, whatever the insertion order.
pub fn scan_ascending_byte_order(s: &dyn Store) {
    let keys: [&[u8]; 12] = [
        b"a",
        &[0x80],
        b"aa",
        &[0x7F],
        &[0x00],
        &[0xFF],
        b"A",
        &[0x00, 0x00],
        &[0x01],
        b"a\x00",
        &[0x80, 0x00],
        b"Z",
    ];
    put_keys(s, Space::OutboxEvents, &keys);
    let mut want = to_vecs(&keys);
    want.sort();
    assert_eq!(
        scan_keys(s, Space::OutboxEvents, b"", None, usize::MAX),
        want
    );
}

/// The same key in different spaces holds different values; deletes and scans stay within
/// their space.
pub fn spaces_are_isolated(s: &dyn Store) {
    let mut b = Batch::new();
    for space in Space::ALL {
        b.put(space, b"k".to_vec(), space.name().as_bytes().to_vec());
    }
    commit(s, b, true);
    for space in Space::ALL {
        assert_eq!(get(s, space, b"k"), Some(space.name().as_bytes().to_vec()));
        assert_eq!(
            scan_all(s, space, b""),
            vec![(b"k".to_vec(), space.name().as_bytes().to_vec())],
            "space {space:?}"
        );
    }
    delete(s, Space::StateData, b"k");
    put(s, Space::DeadLetters, b"only-here", b"x");
    for space in Space::ALL {
        let expect = (space != Space::StateData).then(|| space.name().as_bytes().to_vec());
        assert_eq!(get(s, space, b"k"), expect, "space {space:?}");
        let only_here = (space == Space::DeadLetters).then(|| b"x".to_vec());
        assert_eq!(get(s, space, b"only-here"), only_here, "space {space:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Batches.

/// Within a batch ops apply in order: the last op on a key wins; ops on the same key in other
/// spaces are independent.
pub fn batch_last_op_wins(s: &dyn Store) {
    put(s, Space::StateData, b"c", b"old");
    let mut b = Batch::new();
    b.put(Space::StateData, b"a".to_vec(), b"1".to_vec());
    b.put(Space::StateData, b"a".to_vec(), b"2".to_vec());
    b.put(Space::StateData, b"b".to_vec(), b"1".to_vec());
    b.delete(Space::StateData, b"b".to_vec());
    b.delete(Space::StateData, b"c".to_vec());
    b.put(Space::StateData, b"c".to_vec(), b"new".to_vec());
    b.put(Space::StateData, b"d".to_vec(), b"kept".to_vec());
    b.delete(Space::StateOrder, b"d".to_vec());
    b.put(Space::StateOrder, b"e".to_vec(), b"1".to_vec());
    b.delete(Space::StateOrder, b"e".to_vec());
    b.put(Space::StateOrder, b"e".to_vec(), b"2".to_vec());
    commit(s, b, true);
    assert_eq!(get(s, Space::StateData, b"a"), Some(b"2".to_vec()));
    assert_eq!(get(s, Space::StateData, b"b"), None);
    assert_eq!(get(s, Space::StateData, b"c"), Some(b"new".to_vec()));
    assert_eq!(get(s, Space::StateData, b"d"), Some(b"kept".to_vec()));
    assert_eq!(get(s, Space::StateOrder, b"d"), None);
    assert_eq!(get(s, Space::StateOrder, b"e"), Some(b"2".to_vec()));
}

/// Readers on another thread never observe part of a batch. Each batch writes counter `i` to
/// key `a` (StateData) and key `b` (StateOrder) — in alternating op order — and to keys `c` and
/// `d` (StateGroups), and puts or deletes `e` (present iff `i` is even). A reader checks:
/// reading `a` then `b` never finds `b < a` (nor `a < b` in the other order), since counters
/// only grow; one scan always sees `c == d` and `e` present iff the counter is even.
pub fn batch_is_atomic_for_readers(s: &dyn Store) {
    // At least this many batches, and enough that the reader overlaps them.
    const ROUNDS: u64 = 400;
    const MIN_READS: u64 = 200;
    const MAX_ROUNDS: u64 = 200_000;
    let write = |i: u64, sync: bool| {
        let v = i.to_be_bytes().to_vec();
        let mut b = Batch::new();
        let mut pair = [
            (Space::StateData, b"pair/a"),
            (Space::StateOrder, b"pair/b"),
        ];
        if i % 2 == 1 {
            pair.reverse();
        }
        for (space, key) in pair {
            b.put(space, key.to_vec(), v.clone());
        }
        if i.is_multiple_of(2) {
            b.put(Space::StateGroups, b"pair/e".to_vec(), v.clone());
        } else {
            b.delete(Space::StateGroups, b"pair/e".to_vec());
        }
        b.put(Space::StateGroups, b"pair/c".to_vec(), v.clone());
        b.put(Space::StateGroups, b"pair/d".to_vec(), v);
        commit(s, b, sync);
    };
    write(0, true);
    let done = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let counter = |space, key: &[u8]| decode_u64(&get(s, space, key).expect("pair key"));
            let mut n = 0u64;
            while !done.load(Ordering::Acquire) {
                if n.is_multiple_of(2) {
                    let a = counter(Space::StateData, b"pair/a");
                    let b = counter(Space::StateOrder, b"pair/b");
                    assert!(b >= a, "saw a={a} then b={b}: half a batch");
                } else {
                    let b = counter(Space::StateOrder, b"pair/b");
                    let a = counter(Space::StateData, b"pair/a");
                    assert!(a >= b, "saw b={b} then a={a}: half a batch");
                }
                let entries = s
                    .scan(Space::StateGroups, b"pair/", None, 10)
                    .expect("scan");
                let get = |k: &[u8]| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
                let c = decode_u64(get(b"pair/c").expect("c"));
                let d = decode_u64(get(b"pair/d").expect("d"));
                assert_eq!(c, d, "scan saw c={c} d={d}: half a batch");
                assert_eq!(
                    get(b"pair/e").is_some(),
                    c.is_multiple_of(2),
                    "scan saw e inconsistent with counter {c}"
                );
                n += 1;
                reads.store(n, Ordering::Release);
            }
        });
        // Wait for the reader, so batches are written while it reads (a reader that panicked
        // stops counting; MAX_ROUNDS ends the loop and the scope re-raises its panic).
        while reads.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        let mut i = 1;
        while i <= MAX_ROUNDS && (i <= ROUNDS || reads.load(Ordering::Acquire) < MIN_READS) {
            write(i, i % 16 == 0);
            i += 1;
        }
        done.store(true, Ordering::Release);
        assert_eq!(
            decode_u64(&get(s, Space::StateData, b"pair/a").unwrap()),
            i - 1
        );
    });
    assert!(
        reads.load(Ordering::Acquire) >= MIN_READS,
        "the reader barely ran"
    );
}

/// An empty batch commits (synced or not) and changes nothing.
pub fn empty_batch(s: &dyn Store) {
    put(s, Space::Meta, b"x", b"1");
    commit(s, Batch::new(), true);
    commit(s, Batch::new(), false);
    assert_eq!(get(s, Space::Meta, b"x"), Some(b"1".to_vec()));
    assert_eq!(scan_all(s, Space::Meta, b"").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Sizes and shapes.

/// Values of several MiB round-trip through put, get, scan, overwrite and delete.
pub fn large_values(s: &dyn Store) {
    let big = pattern(4 * 1024 * 1024 + 123, 1);
    let bigger = pattern(5 * 1024 * 1024, 2);
    let mut b = Batch::new();
    b.put(Space::StateData, b"big".to_vec(), big.clone());
    b.put(Space::StateData, b"bigger".to_vec(), bigger.clone());
    b.put(Space::StateData, b"small".to_vec(), b"s".to_vec());
    commit(s, b, true);
    assert!(get(s, Space::StateData, b"big") == Some(big.clone()));
    let entries = scan_all(s, Space::StateData, b"big");
    assert_eq!(entries.len(), 2);
    assert!(entries[0] == (b"big".to_vec(), big) && entries[1] == (b"bigger".to_vec(), bigger));
    put(s, Space::StateData, b"big", b"now small");
    assert_eq!(
        get(s, Space::StateData, b"big"),
        Some(b"now small".to_vec())
    );
    delete(s, Space::StateData, b"bigger");
    assert_eq!(get(s, Space::StateData, b"bigger"), None);
}

/// Keys (including the empty key) and values with 0x00 and 0xFF bytes round-trip and sort as
/// bytes.
pub fn binary_keys(s: &dyn Store) {
    let keys: [&[u8]; 9] = [
        &[],
        &[0],
        &[0, 0],
        &[0, 1],
        &[0, 0xFF],
        &[0xFF],
        &[0xFF, 0],
        &[0xFF, 0xFF],
        &[0x7F, 0x00, 0x80],
    ];
    let mut b = Batch::new();
    for (i, k) in keys.iter().enumerate() {
        b.put(
            Space::StateData,
            k.to_vec(),
            vec![0xFF, 0x00, i as u8, 0x00],
        );
    }
    commit(s, b, true);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            get(s, Space::StateData, k),
            Some(vec![0xFF, 0x00, i as u8, 0x00]),
            "key {k:?}"
        );
    }
    let mut want = to_vecs(&keys);
    want.sort();
    assert_eq!(scan_keys(s, Space::StateData, b"", None, usize::MAX), want);
    assert_eq!(
        scan_keys(s, Space::StateData, &[0], None, usize::MAX),
        to_vecs(&[&[0], &[0, 0], &[0, 1], &[0, 0xFF]])
    );
    delete(s, Space::StateData, &[]);
    assert_eq!(get(s, Space::StateData, &[]), None);
    assert_eq!(
        get(s, Space::StateData, &[0]),
        Some(vec![0xFF, 0x00, 1, 0x00])
    );
}

/// 20,000 keys written in shuffled order round-trip by get, full scan and paged scan; deleting
/// half of them in one batch leaves the other half.
pub fn many_keys(s: &dyn Store) {
    const N: u64 = 20_000;
    let key = |i: u64| format!("many/{i:08}").into_bytes();
    // 7919 is prime and coprime with N: a permutation of 0..N.
    for chunk in 0..20 {
        let mut b = Batch::new();
        for j in 0..N / 20 {
            let i = (chunk * (N / 20) + j) * 7919 % N;
            b.put(Space::StateData, key(i), i.to_le_bytes().to_vec());
        }
        commit(s, b, chunk % 5 == 4);
    }
    for i in 0..N {
        assert_eq!(
            get(s, Space::StateData, &key(i)),
            Some(i.to_le_bytes().to_vec())
        );
    }
    let all = scan_all(s, Space::StateData, b"many/");
    assert_eq!(all.len() as u64, N);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, (k, _))| *k == key(i as u64)));
    let page = scan_keys(s, Space::StateData, b"many/", Some(&key(9_999)), 1000);
    assert_eq!(page.len(), 1000);
    assert_eq!(page[0], key(10_000));

    let mut b = Batch::new();
    for i in (0..N).step_by(2) {
        b.delete(Space::StateData, key(i));
    }
    commit(s, b, true);
    let left = scan_all(s, Space::StateData, b"many/");
    assert_eq!(left.len() as u64, N / 2);
    assert!(left
        .iter()
        .enumerate()
        .all(|(i, (k, _))| *k == key(2 * i as u64 + 1)));
}

/// Random batches of puts and deletes over a small alphabet of awkward bytes, checked after
/// every batch against a `BTreeMap` model with a random scan (prefix, start_after, limit).
pub fn matches_model(s: &dyn Store) {
    const ALPHABET: [u8; 6] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF];
    const SPACES: [Space; 2] = [Space::OutboxTargets, Space::DeadLetters];
    let mut rng = Rng(0x5EED);
    let mut model: BTreeMap<(usize, Vec<u8>), Vec<u8>> = BTreeMap::new();
    let random_key = |rng: &mut Rng, max_len: u64| -> Vec<u8> {
        (0..rng.below(max_len + 1))
            .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
            .collect()
    };
    for round in 0..300 {
        let mut b = Batch::new();
        for _ in 0..1 + rng.below(8) {
            let sp = rng.below(2) as usize;
            let key = random_key(&mut rng, 3);
            if rng.below(4) == 0 {
                b.delete(SPACES[sp], key.clone());
                model.remove(&(sp, key));
            } else {
                let value = rng.next().to_le_bytes()[..1 + rng.below(8) as usize].to_vec();
                b.put(SPACES[sp], key.clone(), value.clone());
                model.insert((sp, key), value);
            }
        }
        commit(s, b, round % 50 == 0);

        let sp = rng.below(2) as usize;
        let prefix = random_key(&mut rng, 2);
        let after = (rng.below(2) == 0).then(|| random_key(&mut rng, 4));
        let limit = [1, 3, usize::MAX][rng.below(3) as usize];
        let want: Vec<Entry> = model
            .range((sp, Vec::new())..)
            .take_while(|((space, _), _)| *space == sp)
            .filter(|((_, k), _)| k.starts_with(&prefix))
            .filter(|((_, k), _)| after.as_ref().is_none_or(|a| k > a))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        let got = s
            .scan(SPACES[sp], &prefix, after.as_deref(), limit)
            .expect("scan");
        assert_eq!(
            got, want,
            "round {round}: scan {:?} prefix {prefix:?} after {after:?} limit {limit}",
            SPACES[sp]
        );
    }
    for (sp, space) in SPACES.iter().enumerate() {
        let want: Vec<Entry> = model
            .iter()
            .filter(|((s, _), _)| *s == sp)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(scan_all(s, *space, b""), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Durability (adapters whose `info().durable` is true).

/// Synced batches (puts in every space, overwrites, deletes, a 1 MiB value) survive dropping
/// and reopening the store; writes after a reopen survive the next one.
pub fn survives_reopen(dir: &Path, make_at: &dyn Fn(&Path) -> Box<dyn Store>) {
    let big = pattern(1024 * 1024, 3);
    {
        let s = make_at(dir);
        let mut b = Batch::new();
        for space in Space::ALL {
            b.put(space, b"k".to_vec(), space.name().as_bytes().to_vec());
            b.put(space, b"gone".to_vec(), b"x".to_vec());
        }
        b.put(Space::StateData, b"big".to_vec(), big.clone());
        commit(s.as_ref(), b, true);
        let mut b = Batch::new();
        for space in Space::ALL {
            b.delete(space, b"gone".to_vec());
        }
        b.put(Space::StateData, b"k".to_vec(), b"overwritten".to_vec());
        commit(s.as_ref(), b, true);
    }
    let check_first = |s: &dyn Store| {
        for space in Space::ALL {
            let want = if space == Space::StateData {
                b"overwritten".to_vec()
            } else {
                space.name().as_bytes().to_vec()
            };
            assert_eq!(get(s, space, b"k"), Some(want), "space {space:?}");
            assert_eq!(get(s, space, b"gone"), None, "space {space:?}");
        }
        assert!(get(s, Space::StateData, b"big") == Some(big.clone()));
    };
    {
        let s = make_at(dir);
        check_first(s.as_ref());
        put(s.as_ref(), Space::Meta, b"second", b"2");
    }
    let s = make_at(dir);
    check_first(s.as_ref());
    assert_eq!(get(s.as_ref(), Space::Meta, b"second"), Some(b"2".to_vec()));
    assert_eq!(
        scan_keys(s.as_ref(), Space::StateData, b"", None, usize::MAX),
        to_vecs(&[b"big", b"k"])
    );
}

/// Unsynced batches made durable by `sync()`, or by a synced empty batch, survive a reopen.
pub fn unsynced_then_sync_survives(dir: &Path, make_at: &dyn Fn(&Path) -> Box<dyn Store>) {
    {
        let s = make_at(dir);
        for i in 0u8..5 {
            let mut b = Batch::new();
            b.put(Space::OutboxEvents, vec![i], vec![i; 10]);
            commit(s.as_ref(), b, false);
        }
        s.sync().expect("sync");
        let mut b = Batch::new();
        b.put(Space::OutboxEvents, vec![5], vec![5; 10]);
        commit(s.as_ref(), b, false);
        commit(s.as_ref(), Batch::new(), true);
        s.sync().expect("sync with nothing to do");
    }
    let s = make_at(dir);
    for i in 0u8..6 {
        assert_eq!(
            get(s.as_ref(), Space::OutboxEvents, &[i]),
            Some(vec![i; 10])
        );
    }
}

/// The adapter says it is durable and where it lives.
pub fn reports_durable(dir: &Path, make_at: &dyn Fn(&Path) -> Box<dyn Store>) {
    let s = make_at(dir);
    let info = s.info();
    assert!(info.durable);
    assert_eq!(info.path.as_deref(), Some(dir));
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn commit(s: &dyn Store, b: Batch, sync: bool) {
    s.commit(b, sync).expect("commit");
}

fn put(s: &dyn Store, space: Space, key: &[u8], value: &[u8]) {
    let mut b = Batch::new();
    b.put(space, key, value);
    commit(s, b, true);
}

fn delete(s: &dyn Store, space: Space, key: &[u8]) {
    let mut b = Batch::new();
    b.delete(space, key);
    commit(s, b, true);
}

fn put_keys(s: &dyn Store, space: Space, keys: &[&[u8]]) {
    let mut b = Batch::new();
    for k in keys {
        b.put(space, k.to_vec(), b"v".to_vec());
    }
    commit(s, b, true);
}

fn get(s: &dyn Store, space: Space, key: &[u8]) -> Option<Vec<u8>> {
    s.get(space, key).expect("get")
}

fn scan_all(s: &dyn Store, space: Space, prefix: &[u8]) -> Vec<Entry> {
    s.scan(space, prefix, None, usize::MAX).expect("scan")
}

fn scan_keys(
    s: &dyn Store,
    space: Space,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
) -> Vec<Vec<u8>> {
    s.scan(space, prefix, after, limit)
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn to_vecs(keys: &[&[u8]]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.to_vec()).collect()
}

fn decode_u64(v: &[u8]) -> u64 {
    u64::from_be_bytes(v.try_into().expect("8-byte counter"))
}

/// Deterministic bytes of length `len`, different per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A directory under the system temp dir, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "trine-store-conformance-{}-{}-{nanos}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
