//! The frontend address filter (`XKUBE_FRONTEND_FILTER`): one bit per
//! [`frontend_filter_bit`] of every exact frontend address, so the XDP uplink rules out a
//! destination that is no frontend with an inlined array lookup instead of a hash lookup.
//!
//! The words are derived from the services map (a function of its exact frontends), kept in
//! [`DesiredState::frontend_filter`](super::DesiredState) as the non-zero words. A plan sets
//! the bits of new frontends before it writes them and clears the bits of removed ones after
//! they are gone, so the filter never rules out a frontend the datapath can see.

use std::collections::{BTreeMap, HashMap};

use xkube_common::lb::{FRONTEND_FILTER_WORDS, frontend_filter_bit};

fn locate(addr: u32) -> (u32, u64) {
    let bit = frontend_filter_bit(addr);
    (bit >> 6, 1u64 << (bit & 63))
}

/// The non-zero filter words for `addrs` (exact frontend addresses, network order).
pub fn filter_words(addrs: impl IntoIterator<Item = u32>) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for addr in addrs {
        let (word, mask) = locate(addr);
        *words.entry(word).or_insert(0) |= mask;
    }
    words
}

/// The filter of an incremental programmer: which distinct addresses set each bit.
#[derive(Debug, Clone)]
pub struct FrontendFilter {
    /// Bit -> distinct frontend addresses hashing to it.
    users: HashMap<u32, u32>,
    words: Vec<u64>,
}

impl Default for FrontendFilter {
    fn default() -> Self {
        Self {
            users: HashMap::new(),
            words: vec![0; FRONTEND_FILTER_WORDS],
        }
    }
}

impl FrontendFilter {
    /// `addr` is now an exact frontend (it was not). The previous value of a word that
    /// changes is recorded in `touched` on its first change.
    pub fn insert(&mut self, addr: u32, touched: &mut BTreeMap<u32, u64>) {
        let bit = frontend_filter_bit(addr);
        let users = self.users.entry(bit).or_insert(0);
        *users += 1;
        if *users == 1 {
            let (word, mask) = locate(addr);
            let w = &mut self.words[word as usize];
            touched.entry(word).or_insert(*w);
            *w |= mask;
        }
    }

    /// `addr` is no exact frontend any more (it was).
    pub fn remove(&mut self, addr: u32, touched: &mut BTreeMap<u32, u64>) {
        let bit = frontend_filter_bit(addr);
        let Some(users) = self.users.get_mut(&bit) else {
            return;
        };
        *users -= 1;
        if *users == 0 {
            self.users.remove(&bit);
            let (word, mask) = locate(addr);
            let w = &mut self.words[word as usize];
            touched.entry(word).or_insert(*w);
            *w &= !mask;
        }
    }

    /// The current value of each word in `touched` (zeros included).
    pub fn current(&self, touched: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
        touched
            .keys()
            .map(|w| (*w, self.words[*w as usize]))
            .collect()
    }

    /// The non-zero words.
    pub fn words(&self) -> BTreeMap<u32, u64> {
        self.words
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0)
            .map(|(i, w)| (i as u32, *w))
            .collect()
    }
}

/// Filter words to write: (word index, new bits).
pub type WordWrites = Vec<(u32, u64)>;

/// Filter writes from `actual` to `desired` words (absent = 0): the first list sets the new
/// bits (written before anything else), the second clears the old ones (written last).
pub fn filter_ops(
    actual: &BTreeMap<u32, u64>,
    desired: &BTreeMap<u32, u64>,
) -> (WordWrites, WordWrites) {
    let mut set = Vec::new();
    let mut clear = Vec::new();
    let words: std::collections::BTreeSet<u32> =
        actual.keys().chain(desired.keys()).copied().collect();
    for w in words {
        let a = actual.get(&w).copied().unwrap_or(0);
        let d = desired.get(&w).copied().unwrap_or(0);
        if a | d != a {
            set.push((w, a | d));
        }
        if a | d != d {
            clear.push((w, d));
        }
    }
    (set, clear)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_words_equal_the_whole_function_and_collisions_keep_bits() {
        let mut f = FrontendFilter::default();
        // Find two addresses on one bit, so a removal must keep the other's bit.
        let a = 0x0a60_0001u32;
        let b = (1..u32::MAX)
            .map(|i| a.wrapping_add(i))
            .find(|x| frontend_filter_bit(*x) == frontend_filter_bit(a))
            .expect("a collision");
        let c = 0x0a60_0203u32;
        let mut touched = BTreeMap::new();
        for x in [a, b, c] {
            f.insert(x, &mut touched);
        }
        assert_eq!(f.words(), filter_words([a, b, c]));
        assert!(touched.values().all(|w| *w == 0), "first values recorded");
        let mut touched = BTreeMap::new();
        f.remove(a, &mut touched);
        assert!(touched.is_empty(), "b still uses the bit: {touched:?}");
        assert_eq!(f.words(), filter_words([b, c]));
        f.remove(b, &mut touched);
        f.remove(c, &mut touched);
        assert!(f.words().is_empty());
        assert_eq!(
            f.current(&touched).values().copied().collect::<Vec<_>>(),
            vec![0; touched.len()]
        );
    }

    #[test]
    fn ops_set_new_bits_first_and_clear_old_bits_last() {
        let actual = BTreeMap::from([(1, 0b0011u64), (2, 0b1u64)]);
        let desired = BTreeMap::from([(1, 0b0110u64), (3, 0b1u64)]);
        let (set, clear) = filter_ops(&actual, &desired);
        assert_eq!(set, vec![(1, 0b0111), (3, 0b1)]);
        assert_eq!(clear, vec![(1, 0b0110), (2, 0)]);
        assert_eq!(filter_ops(&desired, &desired), (vec![], vec![]));
    }
}
