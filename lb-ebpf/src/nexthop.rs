//! Next hop of an encapsulated packet: the one the agent resolved for the
//! backend ([`cached`], from `LB_NEXTHOPS`), else the kernel's FIB and
//! neighbour table (`bpf_fib_lookup`, include/uapi/linux/bpf.h).

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::{PROTO_IPIP, PROTO_IPV6};

use crate::{maps::LB_NEXTHOPS, parse::L3};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
// Return codes of bpf_fib_lookup (enum in include/uapi/linux/bpf.h).
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// What the FIB says of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
#[expect(
    clippy::enum_variant_names,
    reason = "NoRoute is the kernel's own name (BPF_FIB_LKUP_RET_NO_ROUTE)"
)]
pub enum Route {
    /// Out of [`NextHop::ifindex`] to [`NextHop::dmac`].
    Resolved,
    /// A route exists but the kernel has no neighbour entry for the next hop.
    NoNeighbour,
    /// The packet exceeds the egress MTU, [`NextHop::mtu`] bytes.
    FragNeeded,
    /// No route (unreachable, blackhole, prohibited, forwarding disabled, ...).
    NoRoute,
}

/// Where to send a packet. Every field is set whatever the route (zero
/// when it does not apply), so no field is ever read undefined: the
/// verifier refuses a register spilled before it was written.
#[derive(Clone, Copy)]
pub struct NextHop {
    /// The answer.
    pub route: Route,
    /// Egress interface.
    pub ifindex: u32,
    /// Source MAC of the egress interface.
    pub smac: [u8; 6],
    /// MAC of the next hop.
    pub dmac: [u8; 6],
    /// The egress MTU, with [`Route::FragNeeded`].
    pub mtu: u16,
}

/// Zeroes lookup parameters in place with eight 8-byte stores. Plain
/// zeroing (`mem::zeroed`, a zero array transmuted, or a zeroed value
/// moved) compiles to a call of a byte-by-byte `memset` subprogram, slow
/// and hard on the verifier; volatile stores in place cannot be merged
/// into one.
#[inline(always)]
fn zero_params(params: &mut MaybeUninit<bpf_fib_lookup>) -> &mut bpf_fib_lookup {
    const _: () = assert!(size_of::<bpf_fib_lookup>() == 64);
    let words = params.as_mut_ptr().cast::<u64>();
    // SAFETY: `words` points at the 8 words of `params`, which is 8-byte
    // aligned (it holds u64-aligned unions); all-zero is a valid
    // bpf_fib_lookup, so it is initialised once every word is written.
    unsafe {
        words.add(0).write_volatile(0);
        words.add(1).write_volatile(0);
        words.add(2).write_volatile(0);
        words.add(3).write_volatile(0);
        words.add(4).write_volatile(0);
        words.add(5).write_volatile(0);
        words.add(6).write_volatile(0);
        words.add(7).write_volatile(0);
        params.assume_init_mut()
    }
}

/// The next hop the agent resolved for backend `backend_id` of generation
/// `generation`, for an outer packet of `tot_len` bytes; `None` when there
/// is no valid entry (empty, or resolved for an earlier user of the id).
/// A packet larger than the entry's MTU gets [`Route::FragNeeded`], as
/// from the FIB.
#[inline(always)]
pub fn cached(backend_id: u32, generation: u32, tot_len: u16) -> Option<NextHop> {
    let entry = LB_NEXTHOPS.get(backend_id)?;
    if entry.ifindex == 0 || entry.generation != generation {
        return None;
    }
    let route = if tot_len > entry.mtu {
        Route::FragNeeded
    } else {
        Route::Resolved
    };
    Some(NextHop {
        route,
        ifindex: entry.ifindex,
        smac: entry.smac,
        dmac: entry.dmac,
        mtu: entry.mtu,
    })
}

/// Looks up the next hop of an outer packet `src` -> `dst` of family
/// `family` (addresses as in map keys: IPv4 in the first 4 bytes) and
/// `tot_len` bytes, as if it arrived on the ingress interface.
#[inline(always)]
pub fn lookup(
    ctx: &XdpContext,
    family: L3,
    src: &[u8; 16],
    dst: &[u8; 16],
    tot_len: u16,
) -> NextHop {
    let mut slot = MaybeUninit::uninit();
    let params = zero_params(&mut slot);
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    match family {
        L3::V4 => {
            params.family = AF_INET;
            params.l4_protocol = PROTO_IPIP;
            params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
            params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
        }
        L3::V6 => {
            params.family = AF_INET6;
            params.l4_protocol = PROTO_IPV6;
            // SAFETY: both are 16 bytes of plain data.
            unsafe {
                params.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(*src);
                params.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(*dst);
            }
        }
    }
    // SAFETY: params is a valid, writable bpf_fib_lookup of the given size.
    let ret = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let route = match ret {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Resolved,
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeighbour,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Route::FragNeeded,
        _ => Route::NoRoute,
    };
    NextHop {
        route,
        ifindex: params.ifindex,
        smac: params.smac,
        dmac: params.dmac,
        // SAFETY: plain data; on FRAG_NEEDED the kernel stores the MTU in
        // this union member (net/core/filter.c, bpf_fib_lookup).
        mtu: unsafe { params.__bindgen_anon_1.mtu_result },
    }
}
