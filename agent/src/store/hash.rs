//! A fast hasher for the label sets the tick hashes many times over (the history, the rules):
//! the multiply-rotate hash of rustc's `FxHasher`. Label sets are the agent's own series, not
//! input from the network, so no keyed hash is needed against collisions made on purpose.

use std::hash::{BuildHasherDefault, Hasher};

/// The multiply-rotate hasher, 8 bytes at a time.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`FxHasher`]s.
pub type FxBuild = BuildHasherDefault<FxHasher>;
/// A hash map keyed by label sets (or anything else the tick hashes often).
pub type HashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
/// A hash set of label sets.
pub type HashSet<K> = std::collections::HashSet<K, FxBuild>;

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hash};

    use super::*;

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        let h = |v: &dyn Fn(&mut FxHasher)| {
            let mut x = FxBuild::default().build_hasher();
            v(&mut x);
            x.finish()
        };
        let a = h(&|x| "port".hash(x));
        assert_eq!(a, h(&|x| "port".hash(x)));
        assert_ne!(a, h(&|x| "pors".hash(x)));
        assert_ne!(h(&|x| ("ab", "c").hash(x)), h(&|x| ("a", "bc").hash(x)));
        let set: HashSet<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(set.len(), 1000);
    }
}
