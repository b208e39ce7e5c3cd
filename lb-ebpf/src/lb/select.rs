//! Backend selection: VIP lookup, the connection table, and the Maglev
//! table read.

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use lb_common::{
    Backend, ConnEvent, ConnValue, FlowKey, VipKey, VipValue, maglev_slot,
    rules::{backend_usable, match_vip, take_token},
};

use crate::maps::{LB_BACKENDS, LB_CONN_BUCKET, LB_CONNS, LB_MAGLEV, LB_VIPS};

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
/// `max_new_per_cpu` new flows in the last second. Returns the backend with
/// what the connection table did (a hit when `entry` turned out usable,
/// miss, re-hash, SYN or limited), which the packet's counter records.
#[inline(always)]
pub fn flow_backend(
    vip: &VipValue,
    flow: &FlowKey,
    entry: Option<ConnValue>,
    flow_hash: u32,
    syn: bool,
    max_new_per_cpu: u32,
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
    } else if !may_record(max_new_per_cpu) {
        ConnEvent::Limited
    } else {
        // A full LRU evicts its oldest flow; a failed insert only costs a
        // later miss.
        let _ = LB_CONNS.insert(
            flow,
            ConnValue {
                backend_id: id,
                generation: backend.generation,
            },
            0,
        );
        event
    };
    Some((id, backend, event))
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
