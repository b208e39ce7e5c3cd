//! Next hop of an encapsulated packet, from the kernel's FIB and neighbour
//! table (`bpf_fib_lookup`, include/uapi/linux/bpf.h).

use aya_ebpf::{
    bindings::bpf_fib_lookup, helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
};
use lb_common::PROTO_IPIP;

const AF_INET: u8 = 2;
// Return codes of bpf_fib_lookup (enum in include/uapi/linux/bpf.h).
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// Where to send a packet.
pub enum NextHop {
    /// Out of `ifindex` to `dmac`, from `smac`.
    Resolved {
        /// Egress interface.
        ifindex: u32,
        /// Source MAC of the egress interface.
        smac: [u8; 6],
        /// MAC of the next hop.
        dmac: [u8; 6],
    },
    /// A route exists but the kernel has no neighbour entry for the next hop.
    NoNeighbour,
    /// The packet of `tot_len` bytes exceeds the egress MTU, `mtu` bytes.
    FragNeeded {
        /// The egress MTU (`mtu_result`).
        mtu: u16,
    },
    /// No route (unreachable, blackhole, prohibited, forwarding disabled, …).
    NoRoute,
}

/// Looks up the next hop of an IPv4 packet `src` -> `dst` (network byte
/// order) of `tot_len` bytes, as if it arrived on the ingress interface.
#[inline(always)]
pub fn lookup_v4(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4], tot_len: u16) -> NextHop {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = PROTO_IPIP;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: params is a valid, writable bpf_fib_lookup of the given size.
    let ret = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match ret {
        BPF_FIB_LKUP_RET_SUCCESS => NextHop::Resolved {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::NoNeighbour,
        // SAFETY: on FRAG_NEEDED the kernel stores the MTU in this union
        // member (net/core/filter.c, bpf_fib_lookup).
        BPF_FIB_LKUP_RET_FRAG_NEEDED => NextHop::FragNeeded {
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
        },
        _ => NextHop::NoRoute,
    }
}
