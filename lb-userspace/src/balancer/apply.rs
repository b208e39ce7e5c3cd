//! A configuration applied as a difference ([`Balancer::apply`]): VIPs
//! matched by address, port and protocol, backends by address within their
//! VIP; what is unchanged is not written.

use super::*;

/// Clears [`VIP_F_CONNS_MATCH_TABLE`] in the map entry of every port-0 VIP
/// of `map_vips` that stays in `wanted` while a VIP of a port on its
/// address and protocol goes; returns the VIPs as they are then.
pub(super) fn clear_under_gone_port_vips<M: MapStore>(
    maps: &mut M,
    map_vips: Vec<(VipKey, VipValue)>,
    wanted: &HashMap<VipKey, &Vip>,
) -> Result<Vec<(VipKey, VipValue)>, BalancerError> {
    let gone: HashSet<([u8; 16], u8, u8)> = map_vips
        .iter()
        .filter(|(k, _)| k.port != [0, 0] && !wanted.contains_key(k))
        .map(|(k, _)| (k.addr, k.proto, k.family))
        .collect();
    let mut out = Vec::with_capacity(map_vips.len());
    for (key, mut value) in map_vips {
        if key.port == [0, 0]
            && value.flags & VIP_F_CONNS_MATCH_TABLE != 0
            && wanted.contains_key(&key)
            && gone.contains(&(key.addr, key.proto, key.family))
        {
            value.flags &= !VIP_F_CONNS_MATCH_TABLE;
            maps.set_vip(&key, &value)?;
        }
        out.push((key, value));
    }
    Ok(out)
}

impl<M: MapStore> Balancer<M> {
    /// Makes the maps say what `config` says, writing only the difference
    /// from what they say now. Checks everything that could refuse
    /// the configuration (immutable settings, capacity) before the first
    /// write, so a refused configuration leaves the maps untouched.
    /// Backends new to a VIP start healthy; kept backends keep their
    /// health, id and connection-table entries.
    ///
    /// # Errors
    /// [`BalancerError::Immutable`] or [`BalancerError::Capacity`] with
    /// nothing written; a map write failure part way (logged by the caller;
    /// the agent's state matches what was written).
    pub fn apply(
        &mut self,
        config: &Config,
        sources: impl Into<Sources>,
    ) -> Result<Changes, BalancerError> {
        let sources = sources.into();
        self.check_fits(config)?;
        let mut changes = Changes::default();
        // The SNAT addresses and ports before any NAT VIP can take a flow.
        if sources.nat != self.nat_sources {
            self.maps.set_nat_sources(&sources.nat)?;
            self.nat_sources = sources.nat;
            changes.other_writes += 1;
        }

        let allow: HashSet<IpNet> = config.allow.iter().copied().collect();
        for &net in allow.difference(&self.allow) {
            self.maps.allow(net)?;
            changes.other_writes += 1;
        }
        // The /16 filter widens now (old and new prefixes) and narrows with
        // the trie at the end, so no source is refused by either on the way.
        let both: Vec<IpNet> = allow.union(&self.allow).copied().collect();
        changes.other_writes += self.write_allow16(both.iter())?;

        // VIPs gone, then VIPs kept (updated) or new, in configuration order.
        let wanted: HashSet<VipKey> = config.vips.iter().map(vip_key).collect();
        let mut i = 0;
        while i < self.vips.len() {
            if wanted.contains(&vip_key(&self.vips[i].config)) {
                i += 1;
            } else {
                changes.backends_removed += self.vips[i].backends.len();
                self.remove_vip(i)?;
                changes.vips_removed += 1;
            }
        }
        let mut ordered = Vec::with_capacity(config.vips.len());
        for vip in &config.vips {
            let key = vip_key(vip);
            match self.vips.iter().position(|v| vip_key(&v.config) == key) {
                Some(i) => {
                    self.update_vip(i, vip, &mut changes)?;
                    ordered.push(self.vips[i].id);
                }
                None => {
                    self.add_vip(vip)?;
                    changes.vips_added += 1;
                    changes.backends_added += vip.backends.len();
                    changes.tables_written += 1;
                    ordered.push(self.vips[self.vips.len() - 1].id);
                }
            }
        }
        self.vips
            .sort_by_key(|v| ordered.iter().position(|&id| id == v.id));

        let mut counts: HashMap<AddrKey, u32> = HashMap::new();
        for vip in &self.vips {
            *counts.entry(addr_key(vip.config.address)).or_default() += 1;
        }
        let keys: HashSet<AddrKey> = counts
            .keys()
            .chain(self.addr_counts.keys())
            .copied()
            .collect();
        for key in keys {
            let new = counts.get(&key).copied().unwrap_or(0);
            if self.addr_counts.get(&key).copied().unwrap_or(0) != new {
                self.maps.set_vip_addr(&key, new)?;
                changes.other_writes += 1;
            }
        }
        self.addr_counts = counts;
        changes.other_writes += self.write_vip_bloom()?;
        changes.other_writes += self.write_vip_flags()?;
        // Prefixes a VIP no longer lists, now that its flags by id (which
        // established flows read) say whether it has a list at all: the
        // other order would refuse its flows in between.
        let lists: Vec<(u32, HashSet<(u32, IpNet)>)> = self
            .vips
            .iter()
            .map(|v| (v.id, own_allow(&v.config, v.id)))
            .collect();
        for (id, keep) in lists {
            changes.other_writes += self.drop_own_allow(id, &keep)?;
        }

        let wanted: Vec<IpNet> = allow.iter().copied().collect();
        changes.other_writes += self.write_allow16(wanted.iter())?;
        let stale: Vec<IpNet> = self.allow.difference(&allow).copied().collect();
        for net in stale {
            self.maps.disallow(net)?;
            changes.other_writes += 1;
        }
        self.allow = allow;

        let mut flags = GLOBAL_F_READY;
        if config.scope == FilterScope::All {
            flags |= GLOBAL_F_SCOPE_ALL;
        }
        if config.encap == EncapKind::Gue {
            flags |= GLOBAL_F_GUE;
        }
        if config.vips.iter().any(|v| v.mode != VipMode::Dsr) {
            flags |= lb_common::GLOBAL_F_NAT;
        }
        if config.vips.iter().any(|v| v.mode == VipMode::Dnat) {
            flags |= lb_common::GLOBAL_F_DNAT;
        }
        let globals = Globals {
            encap_src_v4: sources.v4.octets(),
            encap_src_v6: sources.v6.octets(),
            gue_port: u32::from(config.gue_port),
            flags,
            layout_version: LAYOUT_FINGERPRINT,
            table_size: self.table_size,
            encap_mtu: config.encap_mtu.map_or(0, u32::from),
            too_big_per_cpu: config.too_big_per_cpu,
            max_new_per_cpu: config.max_new_per_cpu,
            conns_epoch: self.globals.conns_epoch,
            _reserved: 0,
        };
        if globals != self.globals {
            self.maps.set_globals(&globals)?;
            self.globals = globals;
            changes.other_writes += 1;
        }
        Ok(changes)
    }

    /// Refuses, before any write, a configuration the maps cannot take.
    pub(super) fn check_fits(&self, config: &Config) -> Result<(), BalancerError> {
        if config.table_size != self.table_size {
            return Err(BalancerError::Immutable {
                key: "maglev.table_size",
                old: self.table_size.to_string(),
                new: config.table_size.to_string(),
            });
        }
        let mut new_backends = 0;
        let mut freed_backends = 0;
        let mut kept_vips = 0;
        for vip in &config.vips {
            let key = vip_key(vip);
            match self.vips.iter().find(|v| vip_key(&v.config) == key) {
                Some(old) => {
                    kept_vips += 1;
                    new_backends += vip
                        .backends
                        .iter()
                        .filter(|b| !old.backends.iter().any(|o| o.address == b.address))
                        .count();
                }
                None => new_backends += vip.backends.len(),
            }
        }
        for old in &self.vips {
            if !config
                .vips
                .iter()
                .any(|v| vip_key(v) == vip_key(&old.config))
            {
                freed_backends += old.backends.len();
            }
        }
        if new_backends > self.backend_ids.free.len() + freed_backends {
            return Err(BalancerError::Capacity {
                what: "backend ids",
                capacity: MAX_BACKENDS,
            });
        }
        let max_vips = sizing::max_vips_of(self.regions.capacity);
        if config.vips.len() > max_vips as usize {
            return Err(BalancerError::Capacity {
                what: "VIPs (maglev.max_vips of the running data plane)",
                capacity: max_vips,
            });
        }
        // Every VIP may need a new region while its old one is still in use.
        let in_use = self.vips.iter().filter(|v| v.region.is_some()).count();
        let needed = config.vips.len() - kept_vips + 1;
        let free = self.regions.capacity as usize - in_use
            + self
                .vips
                .iter()
                .filter(|v| {
                    v.region.is_some()
                        && !config.vips.iter().any(|c| vip_key(c) == vip_key(&v.config))
                })
                .count();
        if needed > free {
            return Err(BalancerError::Capacity {
                what: "spare Maglev table regions",
                capacity: self.regions.capacity,
            });
        }
        self.check_own_allow_fits(config)
    }

    /// The VIPs' own source prefixes fit their tries at the change's peak:
    /// a VIP's new prefixes go in before its old ones go (so no source it
    /// keeps is refused on the way), so kept VIPs hold both lists for a
    /// moment. Refused before anything is written, so a change never stops
    /// part way with both lists in place, wider than either.
    fn check_own_allow_fits(&self, config: &Config) -> Result<(), BalancerError> {
        let ids: HashMap<VipKey, u32> = self
            .vips
            .iter()
            .map(|v| (vip_key(&v.config), v.id))
            .collect();
        let mut kept = HashSet::new();
        let mut peak: HashSet<(u32, IpNet)> = HashSet::new();
        let mut new_vips = 0;
        for vip in &config.vips {
            match ids.get(&vip_key(vip)) {
                Some(&id) => {
                    kept.insert(id);
                    peak.extend(own_allow(vip, id));
                }
                None => new_vips += vip.allow.as_ref().map_or(0, Vec::len),
            }
        }
        // The kept VIPs' current prefixes stay until the end of the change.
        peak.extend(self.vip_allow.iter().filter(|e| kept.contains(&e.0)));
        if peak.len() + new_vips > MAX_VIP_SOURCE_PREFIXES as usize {
            return Err(BalancerError::Capacity {
                what: "VIP source prefixes while old and new lists are both in place",
                capacity: MAX_VIP_SOURCE_PREFIXES,
            });
        }
        Ok(())
    }

    pub(super) fn new_backend(
        &mut self,
        address: IpAddr,
        weight: u32,
        vip_id: u32,
        port: u32,
    ) -> Result<BackendState, BalancerError> {
        let id = self.backend_ids.take("backend ids")?;
        // Its port before its entry and table: the first NAT packet to
        // reach it goes to the right port; its counters from zero, not
        // from the backend that had the id before.
        let prepared = self
            .maps
            .set_backend_port(id, port)
            .and_then(|()| self.maps.reset_backend_counters(id));
        if let Err(e) = prepared {
            self.backend_ids.give(id);
            return Err(e.into());
        }
        let generation = self.generations[id as usize].wrapping_add(1);
        self.generations[id as usize] = generation;
        let value = backend_value(
            address,
            BACKEND_F_ACTIVE | BACKEND_F_HEALTHY,
            generation,
            vip_id,
        );
        if let Err(e) = self.maps.set_backend(id, &value) {
            self.backend_ids.give(id);
            return Err(e.into());
        }
        Ok(BackendState {
            address,
            weight,
            id,
            healthy: true,
            port,
        })
    }

    /// Marks backend entry `b` inactive (its flows are hashed again) and frees its id.
    pub(super) fn retire_backend(
        &mut self,
        b: &BackendState,
        vip_id: u32,
    ) -> Result<(), BalancerError> {
        let generation = self.generations[b.id as usize];
        self.maps
            .set_backend(b.id, &backend_value(b.address, 0, generation, vip_id))?;
        self.backend_ids.give(b.id);
        Ok(())
    }

    pub(super) fn add_vip(&mut self, vip: &Vip) -> Result<(), BalancerError> {
        let id = self.vip_ids.take("VIP ids")?;
        // Its counters from zero, not from the VIP that had the id before.
        if let Err(e) = self.maps.reset_vip_counters(id) {
            self.vip_ids.give(id);
            return Err(e.into());
        }
        // The VIP's own list before its entry: no moment with the flag set
        // and the list empty.
        self.add_own_allow(vip, id)?;
        let mut backends = Vec::with_capacity(vip.backends.len());
        for b in &vip.backends {
            backends.push(self.new_backend(b.address, b.weight, id, backend_port(vip, b))?);
        }
        // Its backends are new (new generations), so no recorded flow can
        // name them: its flows agree with its first table. Except a VIP of
        // a port over a port-0 VIP: flows of that port recorded for the
        // port-0 VIP keep their backends (see `write_vip_flags`).
        let over_port_0 = vip.port != 0 && self.port_0_vip(vip).is_some();
        let epoch = self.next_epoch();
        self.vips.push(VipState {
            config: vip.clone(),
            id,
            region: None,
            backends,
            published: None,
            flags: vip_flags(vip),
            conns_match: !over_port_0,
            epoch,
            changed_at: Instant::now(),
        });
        let index = self.vips.len() - 1;
        self.write_table(index)
    }

    /// The index of the port-0 VIP on `vip`'s address and protocol.
    pub(super) fn port_0_vip(&self, vip: &Vip) -> Option<usize> {
        self.vips.iter().position(|o| {
            let o = &o.config;
            o.port == 0 && o.address == vip.address && o.protocol == vip.protocol
        })
    }

    /// Brings kept VIP `i` to `vip`: new backends, weights, flags, then the
    /// table (only when its members changed), then retires removed backends.
    pub(super) fn update_vip(
        &mut self,
        i: usize,
        vip: &Vip,
        changes: &mut Changes,
    ) -> Result<(), BalancerError> {
        let id = self.vips[i].id;
        changes.other_writes += self.add_own_allow(vip, id)?;
        let mut old = std::mem::take(&mut self.vips[i].backends);
        let mut backends = Vec::with_capacity(vip.backends.len());
        for b in &vip.backends {
            match old.iter().position(|o| o.address == b.address) {
                Some(p) => {
                    let mut kept = old.remove(p);
                    let port = backend_port(vip, b);
                    if kept.port != port {
                        if let Err(e) = self.maps.set_backend_port(kept.id, port) {
                            backends.push(kept);
                            backends.append(&mut old);
                            self.vips[i].backends = backends;
                            return Err(e.into());
                        }
                        kept.port = port;
                        changes.other_writes += 1;
                    }
                    if kept.weight != b.weight {
                        kept.weight = b.weight;
                        changes.weights_changed += 1;
                    }
                    backends.push(kept);
                }
                None => match self.new_backend(b.address, b.weight, id, backend_port(vip, b)) {
                    Ok(state) => {
                        backends.push(state);
                        changes.backends_added += 1;
                    }
                    Err(e) => {
                        backends.append(&mut old);
                        self.vips[i].backends = backends;
                        return Err(e);
                    }
                },
            }
        }
        self.vips[i].config = vip.clone();
        // Removed backends stay in the state until the new table is out.
        let removed = old;
        self.vips[i].backends = backends;
        if self.table_changed(i)? {
            self.publish_table(i)?;
            changes.tables_written += 1;
        } else if self.vips[i].flags != vip_flags(vip) {
            self.write_vip(i)?;
            changes.other_writes += 1;
        }
        for b in &removed {
            self.retire_backend(b, id)?;
            changes.backends_removed += 1;
        }
        // Prefixes the VIP no longer lists go in `apply`, once both of its
        // entries (the VIP's and its flags by id) say so.
        Ok(())
    }

    pub(super) fn remove_vip(&mut self, i: usize) -> Result<(), BalancerError> {
        // Flows of this port recorded for the port-0 VIP before this VIP
        // came are that VIP's again.
        if self.vips[i].config.port != 0
            && let Some(any) = self.port_0_vip(&self.vips[i].config.clone())
        {
            self.conns_changed(any)?;
        }
        let vip = self.vips.remove(i);
        self.maps.remove_vip(&vip_key(&vip.config))?;
        self.drop_own_allow(vip.id, &HashSet::new())?;
        for b in &vip.backends {
            self.retire_backend(b, vip.id)?;
        }
        if let Some(region) = vip.region {
            self.regions.give(region);
        }
        self.vip_ids.give(vip.id);
        Ok(())
    }
}
