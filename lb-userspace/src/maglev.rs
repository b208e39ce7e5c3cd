//! Maglev table builder: fills a VIP's lookup table from its backends'
//! permutations, honouring weights. From Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, section 3.4
//! (Pseudocode 1), with weights as in Katran's second Maglev variant: in each
//! round a backend of weight `w` takes `w / max_weight` turns, so its share of
//! the table is proportional to its weight.

use lb_common::maglev_permutation;

/// One backend as the builder sees it.
#[derive(Debug, Clone, Copy)]
pub struct MaglevBackend<'a> {
    /// The value written to the table for this backend (its backend id).
    pub id: u32,
    /// Bytes that name the backend the same way on every node (its address),
    /// from which its permutation is derived.
    pub name: &'a [u8],
    /// Relative share; 0 takes no entry.
    pub weight: u32,
}

/// [`MaglevBackend`]s borrowing owned (backend id, name, weight) triples.
pub fn borrowed(input: &[(u32, Vec<u8>, u32)]) -> Vec<MaglevBackend<'_>> {
    input
        .iter()
        .map(|(id, name, weight)| MaglevBackend {
            id: *id,
            name,
            weight: *weight,
        })
        .collect()
}

/// Builds a table of `table_size` entries (`M`, prime, at least 2): ring of
/// backend ids, each backend's share proportional to its weight. The result
/// does not depend on the order of `backends` (they are sorted by name), so
/// nodes with the same configuration build the same table. Returns an empty
/// vector when no backend has a weight above 0.
pub fn build(backends: &[MaglevBackend<'_>], table_size: u32) -> Vec<u32> {
    let mut live: Vec<&MaglevBackend<'_>> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    live.sort_by(|a, b| a.name.cmp(b.name));
    let m = u64::from(table_size);
    let max_weight = u64::from(live.iter().map(|b| b.weight).max().unwrap_or(1));
    // Next preferred slot and step of each backend's permutation.
    let mut cursor: Vec<(u64, u64)> = live
        .iter()
        .map(|b| {
            let (offset, skip) = maglev_permutation(b.name, table_size);
            (u64::from(offset), u64::from(skip))
        })
        .collect();
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; table_size as usize];
    let mut filled = 0u64;
    let mut round = 0u64;
    loop {
        for (i, backend) in live.iter().enumerate() {
            let w = u64::from(backend.weight);
            let turns = (round + 1) * w / max_weight - round * w / max_weight;
            for _ in 0..turns {
                // The permutation visits every slot (skip is in 1..M, M prime),
                // so this finds a free one while the table is not full.
                let (pos, skip) = &mut cursor[i];
                while table[*pos as usize] != EMPTY {
                    *pos = (*pos + *skip) % m;
                }
                table[*pos as usize] = backend.id;
                *pos = (*pos + *skip) % m;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
        round += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn names(n: u32) -> Vec<[u8; 4]> {
        (0..n)
            .map(|i| [10, 0, (i / 250) as u8, (i % 250 + 1) as u8])
            .collect()
    }

    fn shares(table: &[u32]) -> HashMap<u32, usize> {
        let mut counts = HashMap::new();
        for id in table {
            *counts.entry(*id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn hundred_equal_backends_are_balanced_within_one_percent() {
        let names = names(100);
        let backends: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| MaglevBackend {
                id: i as u32,
                name: n,
                weight: 1,
            })
            .collect();
        let table = build(&backends, 65537);
        let counts = shares(&table);
        assert_eq!(counts.len(), 100);
        let mean = 65537.0 / 100.0;
        for (id, count) in counts {
            let deviation = (count as f64 - mean).abs() / mean;
            assert!(
                deviation <= 0.01,
                "backend {id}: {count} entries, {:.2}% from the mean",
                deviation * 100.0
            );
        }
    }

    #[test]
    fn removing_one_of_ten_moves_about_a_tenth() {
        let names = names(10);
        let all: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| MaglevBackend {
                id: i as u32,
                name: n,
                weight: 1,
            })
            .collect();
        let before = build(&all, 65537);
        let after = build(&all[1..], 65537);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let share = moved as f64 / 65537.0;
        assert!(
            share <= 0.1 + 0.02,
            "removing 1 of 10 moved {:.2}% of entries",
            share * 100.0
        );
        // Entries of the removed backend must all move; those are ~10%.
        assert!(share >= 0.09, "moved {:.2}%", share * 100.0);
        assert!(!after.contains(&0));
    }

    #[test]
    fn weights_set_shares() {
        let names = names(3);
        let backends = [
            MaglevBackend {
                id: 0,
                name: &names[0],
                weight: 1,
            },
            MaglevBackend {
                id: 1,
                name: &names[1],
                weight: 2,
            },
            MaglevBackend {
                id: 2,
                name: &names[2],
                weight: 0,
            },
        ];
        let counts = shares(&build(&backends, 65537));
        assert_eq!(counts.get(&2), None, "weight 0 takes no entry");
        let ratio = counts[&1] as f64 / counts[&0] as f64;
        assert!(
            (1.95..=2.05).contains(&ratio),
            "weight 2 : weight 1 = {ratio}"
        );
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let names = names(5);
        let mut backends: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| MaglevBackend {
                id: i as u32,
                name: n,
                weight: 1,
            })
            .collect();
        let a = build(&backends, 251);
        backends.reverse();
        assert_eq!(a, build(&backends, 251));
    }

    #[test]
    fn no_live_backend_gives_no_table() {
        assert!(build(&[], 251).is_empty());
        assert!(
            build(
                &[MaglevBackend {
                    id: 0,
                    name: &[1],
                    weight: 0
                }],
                251
            )
            .is_empty()
        );
    }
}
