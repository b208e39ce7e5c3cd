//! An in-memory [`MapStore`] for unit tests (compiled for tests only).

use std::collections::HashMap as StdHashMap;

use ipnet::IpNet;

use lb_common::{AddrKey, Backend, Globals, VipKey, VipValue};

use super::store::{MapStore, MapStoreError};

/// In-memory [`MapStore`] for tests: what the maps would hold, and how
/// many writes were made.
#[derive(Debug, Default, Clone)]
pub struct FakeMaps {
    /// The globals entry.
    pub globals: Globals,
    /// Allowed prefixes.
    pub allow: Vec<IpNet>,
    /// Every VIP's own source prefixes, with the VIP id.
    pub allow_vip: Vec<(u32, IpNet)>,
    /// VIPs.
    pub vips: StdHashMap<VipKey, VipValue>,
    /// VIP addresses.
    pub vip_addrs: StdHashMap<AddrKey, u32>,
    /// Non-zero entries of the VIP flags by id.
    pub vip_flags: StdHashMap<u32, u32>,
    /// Non-zero words of the VIP-address filter by index.
    pub vip_bloom: StdHashMap<u32, u64>,
    /// Non-zero words of the source filters by /16, by (IPv6, index).
    pub allow16: StdHashMap<(bool, u32), u64>,
    /// Backends by id.
    pub backends: StdHashMap<u32, Backend>,
    /// Maglev map entries by index.
    pub maglev: StdHashMap<u32, u32>,
    /// Non-zero backend ports by backend id.
    pub backend_ports: StdHashMap<u32, u32>,
    /// The SNAT addresses and ports.
    pub nat_sources: lb_common::NatSources,
    /// Counter resets, in order: (`"vip"` or `"backend"`, id).
    pub counter_resets: Vec<(&'static str, u32)>,
    /// Number of write calls of any kind so far.
    pub writes: usize,
    /// The writes to VIPs' own source lists and flags, in order: the map
    /// name and the VIP id, with the flags written for `LB_VIP_FLAGS`.
    pub vip_log: Vec<(&'static str, u32, u32)>,
}

impl MapStore for FakeMaps {
    fn allow(&mut self, net: IpNet) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.allow.push(net);
        Ok(())
    }

    fn disallow(&mut self, net: IpNet) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.allow.retain(|&n| n != net);
        Ok(())
    }

    fn allow_vip(&mut self, vip_id: u32, net: IpNet) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.allow_vip.push((vip_id, net));
        Ok(())
    }

    fn disallow_vip(&mut self, vip_id: u32, net: IpNet) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.vip_log.push(("disallow_vip", vip_id, 0));
        self.allow_vip.retain(|&p| p != (vip_id, net));
        Ok(())
    }

    fn allowed(&self) -> Result<Vec<IpNet>, MapStoreError> {
        Ok(self.allow.clone())
    }

    fn allowed_vip(&self) -> Result<Vec<(u32, IpNet)>, MapStoreError> {
        Ok(self.allow_vip.clone())
    }

    fn set_globals(&mut self, globals: &Globals) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.globals = *globals;
        Ok(())
    }
    fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.vips.insert(*key, *value);
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.vips.remove(key);
        Ok(())
    }
    fn set_vip_addr(&mut self, key: &AddrKey, count: u32) -> Result<(), MapStoreError> {
        self.writes += 1;
        if count == 0 {
            self.vip_addrs.remove(key);
        } else {
            self.vip_addrs.insert(*key, count);
        }
        Ok(())
    }
    fn set_vip_bloom(&mut self, index: u32, bits: u64) -> Result<(), MapStoreError> {
        self.writes += 1;
        if bits == 0 {
            self.vip_bloom.remove(&index);
        } else {
            self.vip_bloom.insert(index, bits);
        }
        Ok(())
    }
    fn vip_bloom(&self) -> Result<Vec<u64>, MapStoreError> {
        Ok((0..lb_common::VIP_BLOOM_WORDS)
            .map(|i| self.vip_bloom.get(&i).copied().unwrap_or(0))
            .collect())
    }
    fn set_vip_flags(&mut self, id: u32, flags: u32) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.vip_log.push(("set_vip_flags", id, flags));
        if flags == 0 {
            self.vip_flags.remove(&id);
        } else {
            self.vip_flags.insert(id, flags);
        }
        Ok(())
    }
    fn vip_flags(&self) -> Result<Vec<u32>, MapStoreError> {
        Ok((0..lb_common::MAX_VIPS)
            .map(|i| self.vip_flags.get(&i).copied().unwrap_or(0))
            .collect())
    }
    fn set_allow16(&mut self, v6: bool, index: u32, bits: u64) -> Result<(), MapStoreError> {
        self.writes += 1;
        if bits == 0 {
            self.allow16.remove(&(v6, index));
        } else {
            self.allow16.insert((v6, index), bits);
        }
        Ok(())
    }
    fn allow16(&self, v6: bool) -> Result<Vec<u64>, MapStoreError> {
        Ok((0..lb_common::ALLOW16_WORDS)
            .map(|i| self.allow16.get(&(v6, i)).copied().unwrap_or(0))
            .collect())
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.backends.insert(id, *backend);
        Ok(())
    }
    fn set_backend_port(&mut self, id: u32, port: u32) -> Result<(), MapStoreError> {
        self.writes += 1;
        if port == 0 {
            self.backend_ports.remove(&id);
        } else {
            self.backend_ports.insert(id, port);
        }
        Ok(())
    }
    fn backend_port(&self, id: u32) -> Result<u32, MapStoreError> {
        Ok(self.backend_ports.get(&id).copied().unwrap_or(0))
    }
    fn reset_vip_counters(&mut self, id: u32) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.counter_resets.push(("vip", id));
        Ok(())
    }
    fn reset_backend_counters(&mut self, id: u32) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.counter_resets.push(("backend", id));
        Ok(())
    }
    fn nat_sources(&self) -> Result<lb_common::NatSources, MapStoreError> {
        Ok(self.nat_sources)
    }
    fn set_nat_sources(&mut self, sources: &lb_common::NatSources) -> Result<(), MapStoreError> {
        self.writes += 1;
        self.nat_sources = *sources;
        Ok(())
    }
    fn write_table(&mut self, offset: u32, entries: &[u32]) -> Result<(), MapStoreError> {
        self.writes += 1;
        for (i, id) in entries.iter().enumerate() {
            self.maglev.insert(offset + i as u32, *id);
        }
        Ok(())
    }
    fn globals(&self) -> Result<Globals, MapStoreError> {
        Ok(self.globals)
    }
    fn vips(&self) -> Result<Vec<(VipKey, VipValue)>, MapStoreError> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn vip_addrs(&self) -> Result<Vec<(AddrKey, u32)>, MapStoreError> {
        Ok(self.vip_addrs.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapStoreError> {
        Ok((0..lb_common::MAX_BACKENDS)
            .map(|id| (id, self.backends.get(&id).copied().unwrap_or_default()))
            .collect())
    }
    fn table(&self, offset: u32, len: u32) -> Result<Vec<u32>, MapStoreError> {
        Ok((offset..offset + len)
            .map(|i| self.maglev.get(&i).copied().unwrap_or(0))
            .collect())
    }
}
