//! Adoption: the balancer's state rebuilt from maps an earlier agent left
//! pinned ([`Balancer::adopt`]).

use super::{apply::clear_under_gone_port_vips, *};

impl<M: MapStore> Balancer<M> {
    /// Takes over maps filled by an earlier agent (pinned, with the same
    /// layout): rebuilds the ids, regions, generations and health from them,
    /// then applies `config` as a difference. With the configuration the
    /// maps were filled from, nothing is written; flows in the connection
    /// table keep their backends. Backends keep the health the maps hold.
    /// `regions` is the capacity of the Maglev map in tables.
    ///
    /// # Errors
    /// The maps cannot be read or written, or `config` does not fit them
    /// ([`BalancerError::Immutable`] when its table size differs).
    pub fn adopt(
        maps: M,
        config: &Config,
        sources: impl Into<Sources>,
        regions: u32,
    ) -> Result<(Self, Changes), BalancerError> {
        let globals = maps.globals()?;
        let table_size = globals.table_size;
        if table_size != config.table_size {
            return Err(BalancerError::Immutable {
                key: "maglev.table_size",
                old: table_size.to_string(),
                new: config.table_size.to_string(),
            });
        }
        let backends = maps.backends()?;
        let map_vips = maps.vips()?;
        let wanted: HashMap<VipKey, &Vip> = config.vips.iter().map(|v| (vip_key(v), v)).collect();
        let mut b = Self::empty(maps, table_size, regions);
        b.globals = globals;
        b.allow = b.maps.allowed()?.into_iter().collect();
        b.vip_allow = b.maps.allowed_vip()?.into_iter().collect();
        b.addr_counts = b.maps.vip_addrs()?.into_iter().collect();
        b.vip_bloom = b.maps.vip_bloom()?;
        b.vip_flags = b.maps.vip_flags()?;
        b.nat_sources = b.maps.nat_sources()?;
        b.allow16 = [b.maps.allow16(false)?, b.maps.allow16(true)?];
        for (id, backend) in &backends {
            b.generations[*id as usize] = backend.generation;
        }
        let mut changes = Changes::default();
        let (mut used_vips, mut used_regions, mut used_backends) =
            (HashSet::new(), HashSet::new(), HashSet::new());
        // A VIP of a port gone from the configuration hands its flows back
        // to the port-0 VIP under it: that VIP's flag goes first.
        let map_vips = clear_under_gone_port_vips(&mut b.maps, map_vips, &wanted)?;
        for (key, value) in map_vips {
            let members = backends.iter().filter(|(_, be)| {
                be.flags & BACKEND_F_ACTIVE != 0 && u32::from(be.vip_id) == value.vip_id
            });
            let Some(vip) = wanted.get(&key) else {
                // Gone from the configuration: remove it now, with its own
                // source list, so that a VIP given its id later does not
                // inherit those prefixes.
                b.maps.remove_vip(&key)?;
                b.drop_own_allow(value.vip_id, &HashSet::new())?;
                for (id, be) in members {
                    b.maps.set_backend(*id, &Backend { flags: 0, ..*be })?;
                    changes.backends_removed += 1;
                }
                changes.vips_removed += 1;
                continue;
            };
            used_vips.insert(value.vip_id);
            let region = (value.table_size > 0).then(|| value.table_offset / table_size);
            used_regions.extend(region);
            let states = members
                .map(|(id, be)| {
                    used_backends.insert(*id);
                    let address = backend_address(be);
                    BackendState {
                        address,
                        weight: vip
                            .backends
                            .iter()
                            .find(|c| c.address == address)
                            .map_or(0, |c| c.weight),
                        id: *id,
                        healthy: be.flags & BACKEND_F_HEALTHY != 0,
                        // Unreadable: written again by the apply below.
                        port: b.maps.backend_port(*id).unwrap_or(u32::MAX),
                    }
                })
                .collect();
            let epoch = b.next_epoch();
            b.vips.push(VipState {
                config: (*vip).clone(),
                id: value.vip_id,
                region,
                backends: states,
                published: None,
                flags: value.flags & !VIP_F_CONNS_MATCH_TABLE,
                conns_match: value.flags & VIP_F_CONNS_MATCH_TABLE != 0,
                epoch,
                changed_at: Instant::now(),
            });
        }
        // Active entries of no VIP: an agent stopped between writes.
        for (id, be) in &backends {
            if be.flags & BACKEND_F_ACTIVE != 0 && !used_backends.contains(id) {
                b.maps.set_backend(*id, &Backend { flags: 0, ..*be })?;
            }
        }
        b.vip_ids = IdPool::new(MAX_VIPS, &used_vips);
        b.backend_ids = IdPool::new(MAX_BACKENDS, &used_backends);
        b.regions = IdPool::fifo(regions, &used_regions);
        let more = b.apply(config, sources)?;
        changes.vips_added += more.vips_added;
        changes.vips_removed += more.vips_removed;
        changes.backends_added += more.backends_added;
        changes.backends_removed += more.backends_removed;
        changes.weights_changed += more.weights_changed;
        changes.tables_written += more.tables_written;
        changes.other_writes += more.other_writes;
        Ok((b, changes))
    }
}
