//! Backend selection: VIP lookup and the Maglev table read.

use lb_common::{BACKEND_F_ACTIVE, BACKEND_F_HEALTHY, Backend, VipKey, VipValue, maglev_slot};

use crate::maps::{LB_BACKENDS, LB_MAGLEV, LB_VIPS};

/// The VIP for (IPv4 address, port, protocol), falling back to the port-0
/// wildcard VIP of that address and protocol. Ports in network byte order.
#[inline(always)]
pub fn find_vip_v4(dst: [u8; 4], port: [u8; 2], proto: u8) -> Option<&'static VipValue> {
    let mut key = VipKey::v4(dst, 0, proto);
    key.port = port;
    let value = LB_VIPS.get_ptr(key).or_else(|| {
        key.port = [0, 0];
        LB_VIPS.get_ptr(key)
    })?;
    // SAFETY: map values live as long as the program runs; entries are only
    // replaced by the agent, never freed under a running program (RCU).
    Some(unsafe { &*value })
}

/// The backend a flow hash selects in a VIP's Maglev table: one array read
/// and one backend read. `None` when the VIP has no table yet, or when the
/// entry's backend is not active and healthy (the agent is between updates).
#[inline(always)]
pub fn maglev_backend(vip: &VipValue, flow_hash: u32) -> Option<(u32, &'static Backend)> {
    if vip.table_size == 0 {
        return None;
    }
    let index = vip
        .table_offset
        .wrapping_add(maglev_slot(flow_hash, vip.table_size));
    // Array::get checks `index` against the map's capacity, so a bad offset
    // written by the agent cannot read outside the map.
    let id = *LB_MAGLEV.get(index)?;
    let backend = LB_BACKENDS.get(id)?;
    let usable = BACKEND_F_ACTIVE | BACKEND_F_HEALTHY;
    if backend.flags & usable != usable {
        return None;
    }
    Some((id, backend))
}
