//! The agent's picture of the data plane: which VIP has which id and Maglev
//! table region, which backend has which id and health, and the map writes
//! that keep the kernel's maps equal to it.
//!
//! A VIP's Maglev table is replaced by writing the new table into a free
//! region of the Maglev map and then pointing the VIP's entry at it (one map
//! update), so a packet sees either the old table or the new one, never a mix.

use std::net::{IpAddr, Ipv4Addr};

use lb_common::{
    AddrKey, BACKEND_F_ACTIVE, BACKEND_F_HEALTHY, Backend, GLOBAL_F_READY, GLOBAL_F_SCOPE_ALL,
    Globals, LAYOUT_VERSION, MAX_BACKENDS, MAX_VIPS, VIP_F_PASS_ON_NO_BACKEND, VipKey, VipValue,
};

use crate::{
    config::{Config, FilterScope, OnNoBackend, Vip},
    maglev::{self, MaglevBackend},
    maps::{MapWriteError, MapWriter},
};

/// Why the balancer could not apply something.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// A map write failed.
    #[error(transparent)]
    Map(#[from] MapWriteError),
    /// More VIPs, backends or tables than the maps hold.
    #[error("out of {what}: the data plane holds at most {capacity}")]
    Capacity {
        /// Which resource.
        what: &'static str,
        /// Its capacity.
        capacity: u32,
    },
}

/// Number of Maglev table regions to size the map with for `vip_count` VIPs:
/// one per VIP, as many again for replacements and for VIPs added later, and
/// 16 more, so small configurations can grow without a restart.
pub fn table_regions(vip_count: usize) -> u32 {
    (vip_count as u32)
        .saturating_mul(2)
        .saturating_add(16)
        .min(2 * MAX_VIPS + 16)
}

/// A backend of a VIP as the agent tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendState {
    /// Address.
    pub address: IpAddr,
    /// Weight from the configuration.
    pub weight: u32,
    /// Index into the backends map and the per-backend counters.
    pub id: u32,
    /// Result of its health checks.
    pub healthy: bool,
}

/// A VIP as the agent tracks it.
#[derive(Debug, Clone)]
pub struct VipState {
    /// Its configuration.
    pub config: Vip,
    /// Index into the per-VIP counters.
    pub id: u32,
    /// Maglev region holding its current table, if it has one.
    pub region: Option<u32>,
    /// Its backends, in configuration order.
    pub backends: Vec<BackendState>,
}

/// Free-list allocator of ids `0..capacity`, lowest first.
#[derive(Debug)]
struct IdPool {
    free: Vec<u32>,
    capacity: u32,
}

impl IdPool {
    fn new(capacity: u32) -> Self {
        Self {
            free: (0..capacity).rev().collect(),
            capacity,
        }
    }

    fn take(&mut self, what: &'static str) -> Result<u32, BalancerError> {
        self.free.pop().ok_or(BalancerError::Capacity {
            what,
            capacity: self.capacity,
        })
    }

    fn give(&mut self, id: u32) {
        self.free.push(id);
    }
}

/// The agent's state of one data plane, written through a [`MapWriter`].
pub struct Balancer<M: MapWriter> {
    maps: M,
    table_size: u32,
    vips: Vec<VipState>,
    vip_ids: IdPool,
    backend_ids: IdPool,
    regions: IdPool,
    generations: Vec<u32>,
}

/// The map key of a VIP.
pub fn vip_key(vip: &Vip) -> VipKey {
    match vip.address {
        IpAddr::V4(a) => VipKey::v4(a.octets(), vip.port, vip.protocol.number()),
        // Rejected by validation until IPv6 is supported.
        IpAddr::V6(_) => VipKey::default(),
    }
}

fn addr_key(addr: IpAddr) -> AddrKey {
    match addr {
        IpAddr::V4(a) => AddrKey::v4(a.octets()),
        IpAddr::V6(_) => AddrKey::default(),
    }
}

/// The bytes that name a backend in Maglev permutations: its address.
pub fn backend_name(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn backend_value(addr: IpAddr, flags: u8, generation: u32) -> Backend {
    let mut b = Backend {
        flags,
        generation,
        ..Backend::default()
    };
    match addr {
        IpAddr::V4(a) => {
            b.addr[..4].copy_from_slice(&a.octets());
            b.family = lb_common::FAMILY_V4;
        }
        IpAddr::V6(a) => {
            b.addr = a.octets();
            b.family = lb_common::FAMILY_V6;
        }
    }
    b
}

impl<M: MapWriter> Balancer<M> {
    /// Fills empty maps from `config`: backends, Maglev tables, VIPs, the
    /// source filter, and last the globals with the ready flag, so the
    /// program forwards nothing before everything is in place. Every backend
    /// starts healthy (its first check decides, see [`crate::health`]).
    /// `regions` is the capacity of the Maglev map in tables.
    ///
    /// # Errors
    /// A map write fails, or the maps are too small.
    pub fn new(
        maps: M,
        config: &Config,
        encap_source_v4: Ipv4Addr,
        regions: u32,
    ) -> Result<Self, BalancerError> {
        let mut balancer = Self {
            maps,
            table_size: config.table_size,
            vips: Vec::new(),
            vip_ids: IdPool::new(MAX_VIPS),
            backend_ids: IdPool::new(MAX_BACKENDS),
            regions: IdPool::new(regions),
            generations: vec![0; MAX_BACKENDS as usize],
        };
        for vip in &config.vips {
            balancer.add_vip(vip)?;
        }
        for net in &config.allow {
            if let ipnet::IpNet::V4(net) = net {
                balancer.maps.allow_v4(net.network(), net.prefix_len())?;
            }
        }
        let mut flags = GLOBAL_F_READY;
        if config.scope == FilterScope::All {
            flags |= GLOBAL_F_SCOPE_ALL;
        }
        balancer.maps.set_globals(&Globals {
            encap_src_v4: encap_source_v4.octets(),
            flags,
            layout_version: LAYOUT_VERSION,
            ..Globals::default()
        })?;
        Ok(balancer)
    }

    fn add_vip(&mut self, vip: &Vip) -> Result<(), BalancerError> {
        let id = self.vip_ids.take("VIP ids")?;
        let mut backends = Vec::with_capacity(vip.backends.len());
        for b in &vip.backends {
            let id = self.backend_ids.take("backend ids")?;
            self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
            let value = backend_value(
                b.address,
                BACKEND_F_ACTIVE | BACKEND_F_HEALTHY,
                self.generations[id as usize],
            );
            self.maps.set_backend(id, &value)?;
            backends.push(BackendState {
                address: b.address,
                weight: b.weight,
                id,
                healthy: true,
            });
        }
        self.vips.push(VipState {
            config: vip.clone(),
            id,
            region: None,
            backends,
        });
        let index = self.vips.len() - 1;
        self.publish_table(index)?;
        let count = self
            .vips
            .iter()
            .filter(|v| v.config.address == vip.address)
            .count() as u32;
        self.maps.set_vip_addr(&addr_key(vip.address), count)?;
        Ok(())
    }

    /// The VIPs, in configuration order.
    pub fn vips(&self) -> &[VipState] {
        &self.vips
    }

    /// The Maglev table of VIP `vip` (index into [`Self::vips`]) over its
    /// healthy backends: `table_size` backend ids, or empty when none is usable.
    pub fn table(&self, vip: usize) -> Vec<u32> {
        let state = &self.vips[vip];
        let names: Vec<Vec<u8>> = state
            .backends
            .iter()
            .map(|b| backend_name(b.address))
            .collect();
        let members: Vec<MaglevBackend<'_>> = state
            .backends
            .iter()
            .zip(&names)
            .filter(|(b, _)| b.healthy)
            .map(|(b, name)| MaglevBackend {
                id: b.id,
                name,
                weight: b.weight,
            })
            .collect();
        maglev::build(&members, self.table_size)
    }

    /// Builds VIP `vip`'s table, writes it into a free region and points the
    /// VIP at it; the old region is freed.
    fn publish_table(&mut self, vip: usize) -> Result<(), BalancerError> {
        let table = self.table(vip);
        let new_region = if table.is_empty() {
            None
        } else {
            let region = self.regions.take("Maglev table regions")?;
            if let Err(e) = self.maps.write_table(region * self.table_size, &table) {
                self.regions.give(region);
                return Err(e.into());
            }
            Some(region)
        };
        let state = &self.vips[vip];
        let mut flags = 0;
        if state.config.on_no_backend == OnNoBackend::Pass {
            flags |= VIP_F_PASS_ON_NO_BACKEND;
        }
        let value = VipValue {
            vip_id: state.id,
            table_offset: new_region.map_or(0, |r| r * self.table_size),
            table_size: if new_region.is_some() {
                self.table_size
            } else {
                0
            },
            flags,
        };
        self.maps.set_vip(&vip_key(&state.config), &value)?;
        let old = std::mem::replace(&mut self.vips[vip].region, new_region);
        // A packet that read the old offset just before the update may still
        // be reading the old region; it is only rewritten by a later update,
        // which takes at least a table build (milliseconds) to come.
        if let Some(old) = old {
            self.regions.give(old);
        }
        Ok(())
    }

    /// Records a health-check result for backend `backend` of VIP `vip`
    /// (indices into [`Self::vips`] and its backends). When the state
    /// changes, writes the backend's flags and republishes the VIP's table.
    /// Returns whether anything changed.
    ///
    /// # Errors
    /// A map write fails; the agent's state is left as before the call.
    pub fn set_health(
        &mut self,
        vip: usize,
        backend: usize,
        healthy: bool,
    ) -> Result<bool, BalancerError> {
        let b = &self.vips[vip].backends[backend];
        if b.healthy == healthy {
            return Ok(false);
        }
        let (id, address) = (b.id, b.address);
        let mut flags = BACKEND_F_ACTIVE;
        if healthy {
            flags |= BACKEND_F_HEALTHY;
        }
        self.vips[vip].backends[backend].healthy = healthy;
        let result = self
            .maps
            .set_backend(
                id,
                &backend_value(address, flags, self.generations[id as usize]),
            )
            .map_err(BalancerError::from)
            .and_then(|()| self.publish_table(vip));
        if result.is_err() {
            self.vips[vip].backends[backend].healthy = !healthy;
        }
        result.map(|()| true)
    }

    /// Sets the weight of backend `backend` of VIP `vip` and republishes the
    /// VIP's table. Weight 0 drains: the backend takes no new flow, and flows
    /// in the connection table stay on it. Returns whether it changed.
    ///
    /// # Errors
    /// A map write fails; the agent's state is left as before the call.
    pub fn set_weight(
        &mut self,
        vip: usize,
        backend: usize,
        weight: u32,
    ) -> Result<bool, BalancerError> {
        let old = std::mem::replace(&mut self.vips[vip].backends[backend].weight, weight);
        if old == weight {
            return Ok(false);
        }
        if let Err(e) = self.publish_table(vip) {
            self.vips[vip].backends[backend].weight = old;
            return Err(e);
        }
        Ok(true)
    }

    /// Removes backend `backend` from VIP `vip`: the VIP's table is
    /// republished without it, then its entry is marked inactive (so flows
    /// in the connection table are hashed again) and its id freed.
    ///
    /// # Errors
    /// A map write fails.
    pub fn remove_backend(&mut self, vip: usize, backend: usize) -> Result<(), BalancerError> {
        let removed = self.vips[vip].backends.remove(backend);
        if let Err(e) = self.publish_table(vip) {
            self.vips[vip].backends.insert(backend, removed);
            return Err(e);
        }
        let generation = self.generations[removed.id as usize];
        self.maps
            .set_backend(removed.id, &backend_value(removed.address, 0, generation))?;
        self.backend_ids.give(removed.id);
        Ok(())
    }

    /// The map writer (for tests and for reading back).
    pub fn maps(&self) -> &M {
        &self.maps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, maps::FakeMaps};

    const CONFIG: &str = r#"
[maglev]
table_size = 251
[[vip]]
name = "web"
address = "10.0.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.0.0.21"
  [[vip.backend]]
  address = "10.0.0.22"
  [[vip.backend]]
  address = "10.0.0.23"
  weight = 0
[[vip]]
name = "dns"
address = "10.0.0.100"
port = 53
protocol = "udp"
on_no_backend = "pass"
  [[vip.backend]]
  address = "10.0.0.31"
"#;

    fn balancer() -> Balancer<FakeMaps> {
        let config = Config::parse(CONFIG, "t").expect("valid").config;
        Balancer::new(
            FakeMaps::default(),
            &config,
            Ipv4Addr::new(10, 0, 0, 2),
            table_regions(2),
        )
        .expect("fills")
    }

    fn table_in_maps(b: &Balancer<FakeMaps>, key: &VipKey) -> Vec<u32> {
        let v = b.maps().vips[key];
        (0..v.table_size)
            .map(|i| b.maps().maglev[&(v.table_offset + i)])
            .collect()
    }

    #[test]
    fn fills_every_map_and_sets_ready_last_state() {
        let b = balancer();
        let m = b.maps();
        assert_eq!(m.globals.flags & GLOBAL_F_READY, GLOBAL_F_READY);
        assert_eq!(m.globals.encap_src_v4, [10, 0, 0, 2]);
        assert_eq!(m.globals.layout_version, LAYOUT_VERSION);
        assert_eq!(m.allow_v4.len(), 4, "the IPv4 default prefixes");
        assert_eq!(m.vips.len(), 2);
        assert_eq!(m.vip_addrs[&AddrKey::v4([10, 0, 0, 100])], 2);
        assert_eq!(m.backends.len(), 4);
        let web = VipKey::v4([10, 0, 0, 100], 80, 6);
        let table = table_in_maps(&b, &web);
        assert_eq!(table.len(), 251);
        assert_eq!(table, b.table(0));
        // The weight-0 backend (drained) takes no entry.
        let drained = b.vips()[0].backends[2].id;
        assert!(!table.contains(&drained));
        assert_eq!(
            m.vips[&VipKey::v4([10, 0, 0, 100], 53, 17)].flags,
            VIP_F_PASS_ON_NO_BACKEND
        );
    }

    #[test]
    fn unhealthy_backend_leaves_the_table_and_returns() {
        let mut b = balancer();
        let web = VipKey::v4([10, 0, 0, 100], 80, 6);
        let first = b.vips()[0].backends[0].id;
        let second = b.vips()[0].backends[1].id;
        assert!(b.set_health(0, 0, false).unwrap());
        assert!(!b.set_health(0, 0, false).unwrap(), "no change, no write");
        let table = table_in_maps(&b, &web);
        assert!(table.iter().all(|&id| id == second));
        assert_eq!(b.maps().backends[&first].flags, BACKEND_F_ACTIVE);
        assert!(b.set_health(0, 0, true).unwrap());
        let table = table_in_maps(&b, &web);
        assert!(table.contains(&first) && table.contains(&second));
        assert_eq!(
            b.maps().backends[&first].flags,
            BACKEND_F_ACTIVE | BACKEND_F_HEALTHY
        );
    }

    #[test]
    fn tables_move_to_a_fresh_region_and_regions_are_reused() {
        let mut b = balancer();
        let web = VipKey::v4([10, 0, 0, 100], 80, 6);
        let before = b.maps().vips[&web].table_offset;
        b.set_health(0, 0, false).unwrap();
        let after = b.maps().vips[&web].table_offset;
        assert_ne!(before, after, "a new table never overwrites the one in use");
        for i in 0..100 {
            b.set_health(0, 0, i % 2 == 0).unwrap();
        }
        // Only ever two regions for this VIP plus one for the other.
        let regions: std::collections::HashSet<u32> =
            b.maps().maglev.keys().map(|k| k / 251).collect();
        assert!(regions.len() <= 3, "{regions:?}");
    }

    #[test]
    fn drain_and_removal() {
        let mut b = balancer();
        let web = VipKey::v4([10, 0, 0, 100], 80, 6);
        let first = b.vips()[0].backends[0].id;
        assert!(b.set_weight(0, 0, 0).unwrap());
        assert!(
            !table_in_maps(&b, &web).contains(&first),
            "drained: no new flow"
        );
        assert_eq!(
            b.maps().backends[&first].flags,
            BACKEND_F_ACTIVE | BACKEND_F_HEALTHY,
            "still usable by its flows"
        );
        b.remove_backend(0, 0).unwrap();
        assert_eq!(
            b.maps().backends[&first].flags,
            0,
            "removed: its flows are hashed again"
        );
        assert_eq!(b.vips()[0].backends.len(), 2);
        // The freed id is given out again with a new generation.
        let old_generation = b.maps().backends[&first].generation;
        let config = Config::parse(CONFIG, "t").expect("valid").config;
        b.add_vip(&Vip {
            name: "more".into(),
            port: 81,
            ..config.vips[0].clone()
        })
        .unwrap();
        let reused = b.vips()[2].backends[0].id;
        assert_eq!(reused, first);
        assert_ne!(b.maps().backends[&reused].generation, old_generation);
    }

    #[test]
    fn no_healthy_backend_empties_the_table() {
        let mut b = balancer();
        let dns = VipKey::v4([10, 0, 0, 100], 53, 17);
        b.set_health(1, 0, false).unwrap();
        assert_eq!(b.maps().vips[&dns].table_size, 0);
        b.set_health(1, 0, true).unwrap();
        assert_eq!(b.maps().vips[&dns].table_size, 251);
    }
}
