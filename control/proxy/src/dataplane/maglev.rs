//! Maglev lookup-table population (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4).
//!
//! Each backend gets a permutation of the table positions from two hashes of a stable name
//! (`"addr:port"`): `offset = h1 % M`, `skip = h2 % (M - 1) + 1`, `permutation[j] = (offset + j *
//! skip) % M`. Backends take turns claiming their next unclaimed preferred position until the
//! table is full, so every backend owns `floor(M/N)` or `ceil(M/N)` entries and removing one
//! backend moves few entries that belonged to the others. `M` must be prime (so every `skip`
//! generates a full permutation); the datapath uses [`MAGLEV_TABLE_SIZE`].
//!
//! Pure: no I/O, deterministic across processes and releases (the hashes are defined here, not
//! `std`'s `DefaultHasher`), and independent of the order backends are given in.

use xkube_common::lb::MAGLEV_TABLE_SIZE;

/// A backend as Maglev sees it: a stable name (hashed) and the id written into the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MaglevBackend<'a> {
    pub name: &'a str,
    pub id: u32,
}

/// The service's lookup table of [`MAGLEV_TABLE_SIZE`] backend ids; empty without backends.
pub fn table(backends: &[MaglevBackend<'_>]) -> Vec<u32> {
    populate(backends, MAGLEV_TABLE_SIZE)
}

/// The lookup table of `size` (prime) entries; empty without backends or with `size` 0.
pub fn populate(backends: &[MaglevBackend<'_>], size: u32) -> Vec<u32> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = u64::from(size);
    // The algorithm's turn order decides ties: sort by name so the input order does not matter.
    let mut sorted: Vec<MaglevBackend<'_>> = backends.to_vec();
    sorted.sort_unstable();
    sorted.dedup_by(|a, b| a.name == b.name);
    let perms: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let offset = hash(b.name.as_bytes(), SEED_OFFSET) % m;
            let skip = if m > 1 {
                hash(b.name.as_bytes(), SEED_SKIP) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut entry: Vec<Option<u32>> = vec![None; size as usize];
    let mut filled = 0usize;
    loop {
        for (i, b) in sorted.iter().enumerate() {
            let (offset, skip) = perms[i];
            // Each backend's permutation visits every position once (m is prime), so this
            // terminates: there is a free position while filled < size.
            let mut c = ((offset + next[i] * skip) % m) as usize;
            while entry[c].is_some() {
                next[i] += 1;
                c = ((offset + next[i] * skip) % m) as usize;
            }
            entry[c] = Some(b.id);
            next[i] += 1;
            filled += 1;
            if filled == entry.len() {
                return entry.into_iter().map(|e| e.unwrap_or(0)).collect();
            }
        }
    }
}

const SEED_OFFSET: u64 = 0x6d61_676c_6576_0001;
const SEED_SKIP: u64 = 0x6d61_676c_6576_0002;

/// FNV-1a (64-bit) over the seed and the bytes, finished with the splitmix64 finaliser so
/// similar names ("10.0.0.1:80", "10.0.0.2:80") spread over the whole range.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.to_le_bytes().iter().chain(bytes) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 2))
            .collect()
    }

    fn backends(names: &[String]) -> Vec<MaglevBackend<'_>> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| MaglevBackend {
                name,
                id: i as u32 + 1,
            })
            .collect()
    }

    fn counts(t: &[u32]) -> BTreeMap<u32, usize> {
        let mut c = BTreeMap::new();
        for id in t {
            *c.entry(*id).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn table_size_is_prime() {
        let m = MAGLEV_TABLE_SIZE;
        assert!(
            (2..m)
                .take_while(|d| d * d <= m)
                .all(|d| !m.is_multiple_of(d)),
            "MAGLEV_TABLE_SIZE {m} must be prime"
        );
    }

    #[test]
    fn every_entry_is_filled_with_a_given_backend() {
        for n in 1..=12 {
            let names = names(n);
            let bs = backends(&names);
            let t = table(&bs);
            assert_eq!(t.len(), MAGLEV_TABLE_SIZE as usize, "{n} backends");
            assert!(
                t.iter().all(|id| *id >= 1 && *id as usize <= n),
                "{n} backends: every entry names one of the backends"
            );
        }
    }

    #[test]
    fn no_backends_give_an_empty_table() {
        assert!(table(&[]).is_empty(), "no backends, no table");
    }

    #[test]
    fn balance_is_within_one_entry_for_2_to_10_backends() {
        for n in 2..=10 {
            let names = names(n);
            let t = table(&backends(&names));
            let c = counts(&t);
            assert_eq!(c.len(), n, "{n} backends all appear");
            let min = c.values().min().copied().unwrap_or(0);
            let max = c.values().max().copied().unwrap_or(0);
            let ideal = MAGLEV_TABLE_SIZE as f64 / n as f64;
            assert!(
                max - min <= 1,
                "{n} backends: counts {min}..{max} (ideal {ideal:.1})"
            );
            assert!(
                (max as f64 - ideal).abs() / ideal < 0.03,
                "{n} backends: max {max} vs ideal {ideal:.1} is more than 3% off"
            );
        }
    }

    #[test]
    fn input_order_does_not_change_the_table() {
        let names = names(7);
        let bs = backends(&names);
        let mut rev = bs.clone();
        rev.reverse();
        assert_eq!(table(&bs), table(&rev), "table depends only on the set");
    }

    #[test]
    fn removing_one_backend_moves_about_one_nth_of_the_other_entries() {
        for n in [3usize, 5, 10] {
            let names = names(n);
            let bs = backends(&names);
            let before = table(&bs);
            for removed in 0..n {
                let removed_id = removed as u32 + 1;
                let rest: Vec<_> = bs.iter().copied().filter(|b| b.id != removed_id).collect();
                let after = table(&rest);
                let moved_others = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| **b != removed_id && b != a)
                    .count();
                let bound = MAGLEV_TABLE_SIZE as usize / n;
                assert!(
                    moved_others <= bound,
                    "{n} backends, removing #{removed}: {moved_others} entries of the remaining \
                     backends moved (bound M/N = {bound})"
                );
                assert!(
                    after.iter().all(|id| *id != removed_id),
                    "the removed backend is gone from the table"
                );
            }
        }
    }

    #[test]
    fn adding_a_backend_takes_entries_mostly_from_others_evenly() {
        let names = names(6);
        let bs = backends(&names);
        let before = table(&bs[..5]);
        let after = table(&bs);
        let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let new_share = after.iter().filter(|id| **id == 6).count();
        // Every change should be an entry handed to the new backend, plus a small churn.
        assert!(
            changed <= new_share + MAGLEV_TABLE_SIZE as usize / 6,
            "adding one of 6: {changed} changed, {new_share} went to the new backend"
        );
    }
}
