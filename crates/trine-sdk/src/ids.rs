//! Invocation ids: RFC 4122 version-4 UUID strings without a syscall per call.
//!
//! `Uuid::new_v4()` asks the OS for 16 random bytes on every call, which shows up in a tight call
//! loop. Invocation ids only need to be unique and well-formed (the engine echoes them verbatim,
//! and some SDKs parse them as UUIDs), not unpredictable, so one OS-random seed per worker is
//! stretched with a counter through the SplitMix64 finaliser (a bijection on `u64`, hence no repeats
//! within 2^64 ids before the six fixed version/variant bits are applied).

use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

pub(crate) struct IdGen {
    seed: [u64; 2],
    counter: AtomicU64,
}

impl IdGen {
    pub(crate) fn new() -> Self {
        let seed = Uuid::new_v4().as_u128();
        Self {
            seed: [(seed >> 64) as u64, seed as u64],
            counter: AtomicU64::new(0),
        }
    }

    /// The next id, lowercase and hyphenated (`xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`).
    pub(crate) fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let hi = mix(self.seed[0].wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        let lo = mix(self.seed[1] ^ n);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&hi.to_be_bytes());
        bytes[8..].copy_from_slice(&lo.to_be_bytes());
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut buf = Uuid::encode_buffer();
        id.hyphenated().encode_lower(&mut buf).to_owned()
    }
}

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_v4_uuids() {
        let ids = IdGen::new();
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = ids.next_id();
            let parsed = Uuid::parse_str(&id).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id, id.to_lowercase());
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn two_workers_do_not_share_a_sequence() {
        assert_ne!(IdGen::new().next_id(), IdGen::new().next_id());
    }
}
