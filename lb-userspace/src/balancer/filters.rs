//! The filters' map words: the source filter by /16, each VIP's own
//! source list, the VIP flags by id and the VIP-address filter, each
//! written as the difference from what the maps hold.

use super::*;

/// Writes (with `set(index, word)`) the words of `new` that differ from
/// `current`, updating `current` as each write succeeds; how many.
pub(super) fn write_words<T: Copy + PartialEq>(
    current: &mut [T],
    new: &[T],
    mut set: impl FnMut(u32, T) -> Result<(), MapStoreError>,
) -> Result<usize, MapStoreError> {
    let mut written = 0;
    for (index, (&word, old)) in new.iter().zip(current.iter_mut()).enumerate() {
        if word != *old {
            set(index as u32, word)?;
            *old = word;
            written += 1;
        }
    }
    Ok(written)
}

impl<M: MapStore> Balancer<M> {
    /// Makes the source filters by /16 of both families say what prefixes
    /// `allow` say (`lb_common::rules::allow16_mark`), writing the words
    /// that change; how many.
    pub(super) fn write_allow16<'a>(
        &mut self,
        allow: impl Iterator<Item = &'a IpNet>,
    ) -> Result<usize, BalancerError> {
        let mut words = [
            vec![0u64; ALLOW16_WORDS as usize],
            vec![0u64; ALLOW16_WORDS as usize],
        ];
        for net in allow {
            let (family, first, len) = match net {
                IpNet::V4(n) => {
                    let o = n.network().octets();
                    (0, [o[0], o[1]], n.prefix_len())
                }
                IpNet::V6(n) => {
                    let o = n.network().octets();
                    (1, [o[0], o[1]], n.prefix_len())
                }
            };
            allow16_mark(&mut words[family], first, len);
        }
        let mut written = 0;
        for (family, new) in words.iter().enumerate() {
            let maps = &mut self.maps;
            written += write_words(&mut self.allow16[family], new, |i, w| {
                maps.set_allow16(family == 1, i, w)
            })?;
        }
        Ok(written)
    }

    /// Makes `LB_VIP_FLAGS` say, for every VIP id in use, its VIP's flags
    /// with `VIP_LIVE`, and `VIP_SHADOWED` for a port-0 VIP that has a VIP
    /// of a given port on its address and protocol; 0 for the other ids.
    /// Writes the entries that change; how many. Run once a reload's VIPs
    /// are written: a VIP removed meanwhile has its backends retired, so its
    /// flows no longer reach it through them.
    pub(super) fn write_vip_flags(&mut self) -> Result<usize, BalancerError> {
        let mut flags = vec![0u32; MAX_VIPS as usize];
        for vip in &self.vips {
            let c = &vip.config;
            let shadowed = c.port == 0
                && self.vips.iter().any(|other| {
                    let o = &other.config;
                    o.port != 0 && o.address == c.address && o.protocol == c.protocol
                });
            if let Some(entry) = flags.get_mut(vip.id as usize) {
                *entry = vip.flags | VIP_LIVE | if shadowed { VIP_SHADOWED } else { 0 };
            }
        }
        let maps = &mut self.maps;
        Ok(write_words(&mut self.vip_flags, &flags, |i, f| {
            maps.set_vip_flags(i, f)
        })?)
    }

    /// Makes the VIP-address filter hold the bit of every VIP address and
    /// no other (`lb_common::rules::vip_bloom_bit`), writing the words that
    /// change; how many. Run after the VIP addresses are written: a bit set
    /// late or cleared early only passes a packet to the kernel for the
    /// moment between the two writes, as a missing VIP-address entry would.
    pub(super) fn write_vip_bloom(&mut self) -> Result<usize, BalancerError> {
        let mut words = vec![0u64; VIP_BLOOM_WORDS as usize];
        for key in self.addr_counts.keys() {
            let (word, mask) = vip_bloom_bit(key);
            words[word as usize] |= mask;
        }
        let maps = &mut self.maps;
        Ok(write_words(&mut self.vip_bloom, &words, |i, w| {
            maps.set_vip_bloom(i, w)
        })?)
    }

    /// Writes the prefixes of `vip`'s own list (VIP id `id`) not yet in the
    /// map; returns how many.
    pub(super) fn add_own_allow(&mut self, vip: &Vip, id: u32) -> Result<usize, BalancerError> {
        let mut written = 0;
        for entry in own_allow(vip, id) {
            if !self.vip_allow.contains(&entry) {
                self.maps.allow_vip(entry.0, entry.1)?;
                self.vip_allow.insert(entry);
                written += 1;
            }
        }
        Ok(written)
    }

    /// Removes VIP `id`'s prefixes that are not in `keep`; returns how many.
    pub(super) fn drop_own_allow(
        &mut self,
        id: u32,
        keep: &HashSet<(u32, IpNet)>,
    ) -> Result<usize, BalancerError> {
        let stale: Vec<_> = self
            .vip_allow
            .iter()
            .filter(|e| e.0 == id && !keep.contains(e))
            .copied()
            .collect();
        for entry in &stale {
            self.maps.disallow_vip(entry.0, entry.1)?;
            self.vip_allow.remove(entry);
        }
        Ok(stale.len())
    }
}
