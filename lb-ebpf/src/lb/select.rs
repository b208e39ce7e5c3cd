//! Backend selection: VIP lookup, the connection table, and the Maglev
//! table read.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use lb_common::{
    Backend, ConnEvent, ConnValue, FLOW_CACHE_REFRESH, FlowCacheEntry, FlowKey, VipKey, VipValue,
    maglev_slot,
    rules::{backend_usable, match_vip, take_token},
};

use crate::maps::{LB_BACKENDS, LB_CONN_BUCKET, LB_CONNS, LB_FLOW_CACHE, LB_MAGLEV, LB_VIPS};

/// The VIP for (address, port, protocol) of `family` (address as in map
/// keys), falling back to the port-0 wildcard VIP of that address and
/// protocol. Ports in network byte order. Copied out (16 bytes): `LB_VIPS`
/// is a preallocated hash map, whose update hands the old element to the
/// next update on that CPU without waiting for readers, so the flags and
/// the table a packet uses come from one version of the entry.
#[inline(always)]
pub fn find_vip(family: u8, dst: &[u8; 16], port: [u8; 2], proto: u8) -> Option<VipValue> {
    let mut key = VipKey {
        addr: *dst,
        port: [0, 0],
        proto,
        family,
    };
    let value = match_vip(port, |port| {
        key.port = port;
        LB_VIPS.get_ptr(key)
    })?;
    // SAFETY: a map value pointer, valid during this program run; copied.
    Some(unsafe { *value })
}

/// Backend `id` when it is in its VIP's set and healthy.
#[inline(always)]
fn usable_backend(id: u32) -> Option<&'static Backend> {
    let backend = LB_BACKENDS.get(id)?;
    backend_usable(backend.flags).then_some(backend)
}

/// The backend a flow hash selects in a VIP's Maglev table: one array read
/// and one backend read. `None` when the VIP has no table, or when the
/// entry's backend is not usable (the agent is between updates).
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
    Some((id, usable_backend(id)?))
}

/// The connection-table entry of `flow`, copied out.
#[inline(always)]
pub fn connection(flow: &FlowKey) -> Option<ConnValue> {
    // SAFETY: a map value pointer, valid during this program run; copied.
    LB_CONNS.get_ptr(flow).map(|entry| unsafe { *entry })
}

/// Whether two flow keys are equal: five 8-byte compares, no byte loop.
#[inline(always)]
fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    // SAFETY: a FlowKey is 40 bytes of plain data aligned to 8.
    let (a, b) = unsafe {
        (
            &*(a as *const FlowKey).cast::<[u64; 5]>(),
            &*(b as *const FlowKey).cast::<[u64; 5]>(),
        )
    };
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
}

/// This CPU's flow-cache slot of a flow (`lb_common::FlowCacheEntry`, at
/// `FlowKey::cache_slot`).
#[inline(always)]
fn cache_slot(flow: &FlowKey) -> Option<&'static mut FlowCacheEntry> {
    let slot = LB_FLOW_CACHE.get_ptr_mut(flow.cache_slot())?;
    // SAFETY: a per-CPU value: no other writer on this CPU while we run.
    Some(unsafe { &mut *slot })
}

/// An established flow's backend ([`established_flow`]): its id, its
/// entry, the flow's connection-table entry, what served it, and the flow
/// hash.
pub type Established = (u32, &'static Backend, ConnValue, ConnEvent, u32);

/// What [`established_flow`] found instead: the flow's connection-table
/// entry, if any (its backend no longer usable), and the flow hash.
pub type LookedUp = (Option<ConnValue>, u32);

/// The backend of an established flow (`flow`), through this CPU's flow
/// cache: `Ok` with the backend, its id, the entry and the flow hash while
/// the entry's backend is usable ([`established`]) and with what served it
/// ([`ConnEvent::HitCached`]: the cache; [`ConnEvent::Hit`]: the
/// connection table); else `Err` with the connection-table entry, if any,
/// and the flow hash, for [`flow_backend`]. A copy serves while it was
/// made under `epoch` (`Globals::conns_epoch`) and fewer than
/// `FLOW_CACHE_REFRESH` times, with the flow hash it keeps; otherwise the
/// hash is computed, the table read and the copy made again.
#[inline(always)]
pub fn established_flow(flow: &FlowKey, epoch: u32) -> Result<Established, LookedUp> {
    let mut slot = cache_slot(flow);
    if let Some(copy) = slot.as_mut()
        && copy.epoch == epoch
        && copy.hits < FLOW_CACHE_REFRESH
        && same_flow(&copy.key, flow)
        && let Some((id, backend)) = established(copy.conn)
    {
        copy.hits += 1;
        return Ok((id, backend, copy.conn, ConnEvent::HitCached, copy.flow_hash));
    }
    let hash = flow.hash();
    let Some(conn) = connection(flow) else {
        return Err((None, hash));
    };
    if let Some(slot) = slot {
        remember(slot, flow, conn, epoch, hash);
    }
    match established(conn) {
        Some((id, backend)) => Ok((id, backend, conn, ConnEvent::Hit, hash)),
        None => Err((Some(conn), hash)),
    }
}

/// Makes `slot` the copy of `flow`'s connection-table entry `conn`.
#[inline(always)]
fn remember(slot: &mut FlowCacheEntry, flow: &FlowKey, conn: ConnValue, epoch: u32, hash: u32) {
    *slot = FlowCacheEntry {
        key: *flow,
        conn,
        epoch,
        hits: 0,
        flow_hash: hash,
        _reserved: 0,
    };
}

/// Drops this CPU's copy of `flow`'s entry, if its slot holds one: a TCP
/// SYN starts the flow afresh (a client reusing the 5-tuple of a flow whose
/// entry left the table must not meet the old copy).
#[inline(always)]
pub fn forget_flow(flow: &FlowKey) {
    if let Some(slot) = cache_slot(flow)
        && same_flow(&slot.key, flow)
    {
        slot.hits = FLOW_CACHE_REFRESH;
    }
}

/// The backend of a connection-table entry while it is still in its VIP's
/// set and healthy, and still the backend the entry was recorded for
/// (same generation): the flow keeps it, whatever else changed (a drained
/// backend keeps its flows).
#[inline(always)]
pub fn established(entry: ConnValue) -> Option<(u32, &'static Backend)> {
    let backend = usable_backend(entry.backend_id)?;
    (backend.generation == entry.generation).then_some((entry.backend_id, backend))
}

/// The backend of a flow of VIP `vip` whose connection-table entry
/// (`entry`, looked up by the caller) is missing or no longer usable: the
/// Maglev choice. The choice is recorded unless the packet is a TCP SYN
/// (`syn`: the flow is recorded by its first packet that is not a SYN, so
/// spoofed SYNs never fill the table) or this CPU has recorded
/// `limits.max_new_per_cpu` new flows in the last second. A recorded flow
/// also gets this CPU's flow-cache copy. Returns the backend with
/// what the connection table did (a hit when `entry` turned out usable,
/// miss, re-hash, SYN or limited), which the packet's counter records.
#[inline(always)]
pub fn flow_backend(
    vip: &VipValue,
    flow: &FlowKey,
    entry: Option<ConnValue>,
    flow_hash: u32,
    syn: bool,
    limits: Limits,
) -> Option<(u32, &'static Backend, ConnEvent)> {
    let event = match entry {
        Some(entry) => {
            if let Some((id, backend)) = established(entry) {
                return Some((id, backend, ConnEvent::Hit));
            }
            ConnEvent::Rehash
        }
        None => ConnEvent::Miss,
    };
    let (id, backend) = maglev_backend(vip, flow_hash)?;
    let event = if syn {
        ConnEvent::Syn
    } else if !may_record(limits.max_new_per_cpu) {
        ConnEvent::Limited
    } else {
        let conn = ConnValue {
            backend_id: id,
            generation: backend.generation,
        };
        // A full LRU evicts its oldest flow; a failed insert only costs a
        // later miss.
        if LB_CONNS.insert(flow, conn, 0).is_ok()
            && let Some(slot) = cache_slot(flow)
        {
            remember(slot, flow, conn, limits.conns_epoch, flow_hash);
        }
        event
    };
    Some((id, backend, event))
}

/// What [`flow_backend`] needs of `Globals`.
#[derive(Clone, Copy)]
pub struct Limits {
    /// `Globals::max_new_per_cpu`.
    pub max_new_per_cpu: u32,
    /// `Globals::conns_epoch`, for the flow-cache copy of a recorded flow.
    pub conns_epoch: u32,
}

/// Whether this CPU may record one more new flow: a token from its bucket
/// of `per_second` (`lb_common::rules::take_token`).
#[inline(always)]
fn may_record(per_second: u32) -> bool {
    let Some(bucket) = LB_CONN_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a helper without arguments; the per-CPU value has no other
    // writer on this CPU while we run.
    take_token(
        unsafe { &mut *bucket },
        unsafe { bpf_ktime_get_ns() },
        per_second,
    )
}

/// The backend of a flow for a packet that must not change the connection
/// table (an ICMP error about the flow): the connection-table entry while
/// its backend is usable, else the Maglev choice; nothing recorded or
/// counted.
#[inline(always)]
pub fn lookup_backend(
    vip: &VipValue,
    flow: &FlowKey,
    flow_hash: u32,
) -> Option<(u32, &'static Backend)> {
    connection(flow)
        .and_then(established)
        .or_else(|| maglev_backend(vip, flow_hash))
}
