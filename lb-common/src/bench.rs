//! Names and layouts shared by the benchmark programs of `lb-ebpf` (module
//! `bench`) and `lb-bench`: the baselines (`bench_drop`, `bench_parse_drop`)
//! and the frame-restoring wrapper (`bench_restore`) that `cargo xtask bench`
//! runs through `BPF_PROG_TEST_RUN`. The agent never uses them.

/// Program: returns XDP_DROP at once (the cheapest possible XDP program).
pub const PROG_BENCH_DROP: &str = "bench_drop";
/// Program: parses Ethernet, IPv4 and TCP with the balancer's own parser,
/// then drops: the cost every packet pays before any lookup.
pub const PROG_BENCH_PARSE_DROP: &str = "bench_parse_drop";
/// Program: restores the frame from [`MAP_BENCH_TEMPLATE`] and tail-calls
/// slot 0 of [`MAP_BENCH_PROGS`]. With `repeat > 1` the kernel reruns a
/// program on the same buffer, so a program that rewrites the frame would
/// otherwise measure its own output from the second repetition on.
pub const PROG_BENCH_RESTORE: &str = "bench_restore";

/// Template of the frame to restore: array of one [`BenchTemplate`].
pub const MAP_BENCH_TEMPLATE: &str = "BENCH_TEMPLATE";
/// The program under test: program array, slot 0 ([`BENCH_PROGS_LEN`] slots).
pub const MAP_BENCH_PROGS: &str = "BENCH_PROGS";
/// Repetition counter of the wrapper: per-CPU array of one `u32`, bumped on
/// every run; with [`BENCH_F_VARY_FLOW`] it numbers the flows.
pub const MAP_BENCH_SEQ: &str = "BENCH_SEQ";
/// Slots of [`MAP_BENCH_PROGS`].
pub const BENCH_PROGS_LEN: u32 = 1;

/// Length of every frame the wrapper restores: an untagged Ethernet frame
/// with an IPv4 or IPv6 header and a TCP or UDP header (callers pad the
/// payload to fit; 80 holds an IPv6 TCP segment).
pub const BENCH_FRAME_LEN: usize = 80;
/// Offset of the IPv4 source address in a template frame (Ethernet 14 +
/// 12); the wrapper writes the flow number's high half into its last two bytes.
pub const BENCH_SRC_ADDR_OFFSET: usize = 26;
/// Offset of the TCP/UDP source port in a template frame (Ethernet 14 +
/// IPv4 20); the wrapper writes the flow number's low half there.
pub const BENCH_SPORT_OFFSET: usize = 34;

/// [`BenchTemplate::flags`]: make every repetition a different flow, so a
/// "new flow" really misses the connection table. Writes the repetition
/// number into the source port and the last two bytes of the source address
/// (2^32 flows; the inner IPv4 checksum is not updated, which the balancer
/// does not check).
pub const BENCH_F_VARY_FLOW: u32 = 1;

/// Value of [`MAP_BENCH_TEMPLATE`]. 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchTemplate {
    /// `BENCH_F_*` bits.
    pub flags: u32,
    /// Zero.
    pub _pad: u32,
    /// The frame, as 8-byte words so the wrapper copies it in 8 stores.
    pub frame: [u64; BENCH_FRAME_LEN / 8],
}
const _: () = assert!(size_of::<BenchTemplate>() == 8 + BENCH_FRAME_LEN);

impl BenchTemplate {
    /// A template holding `frame` (exactly [`BENCH_FRAME_LEN`] bytes).
    pub fn new(frame: &[u8; BENCH_FRAME_LEN], flags: u32) -> Self {
        let mut words = [0u64; BENCH_FRAME_LEN / 8];
        for (word, bytes) in words.iter_mut().zip(frame.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            // Native order: the wrapper stores the words as they are.
            *word = u64::from_ne_bytes(b);
        }
        Self {
            flags,
            _pad: 0,
            frame: words,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers only, no implicit padding (size asserted).
unsafe impl aya::Pod for BenchTemplate {}

/// Program: the floor of any encapsulating load balancer, the reference
/// every forwarding class of `xdp_lb` is reported against: parses Ethernet,
/// IPv4 and TCP/UDP, one hash lookup of (VIP address, port, protocol) in
/// [`MAP_BENCH_VIPS`], IPv4-in-IPv4 encapsulation toward the entry's
/// backend with its fixed MACs (outer checksum computed), XDP_TX. No
/// connection table, no Maglev, no FIB lookup, no counters.
pub const PROG_BENCH_LOOKUP_ENCAP: &str = "bench_lookup_encap";
/// The VIPs of [`PROG_BENCH_LOOKUP_ENCAP`]: hash map of [`BenchVipKey`] to
/// [`BenchBackend`], [`BENCH_VIPS_LEN`] entries.
pub const MAP_BENCH_VIPS: &str = "BENCH_VIPS";
/// Capacity of [`MAP_BENCH_VIPS`].
pub const BENCH_VIPS_LEN: u32 = 64;

/// Key of [`MAP_BENCH_VIPS`]: an IPv4 VIP. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchVipKey {
    /// VIP address, network byte order.
    pub addr: [u8; 4],
    /// Port, network byte order.
    pub port: [u8; 2],
    /// IANA protocol number.
    pub proto: u8,
    /// Zero.
    pub _pad: u8,
}
const _: () = assert!(size_of::<BenchVipKey>() == 8);

/// Value of [`MAP_BENCH_VIPS`]: where to send a VIP's packets. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchBackend {
    /// Outer destination (the backend), network byte order.
    pub dst: [u8; 4],
    /// Outer source, network byte order.
    pub src: [u8; 4],
    /// Destination MAC (the backend's).
    pub dmac: [u8; 6],
    /// Source MAC.
    pub smac: [u8; 6],
}
const _: () = assert!(size_of::<BenchBackend>() == 20);

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, byte arrays only, no padding (size asserted).
unsafe impl aya::Pod for BenchVipKey {}
#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, byte arrays only, no padding (size asserted).
unsafe impl aya::Pod for BenchBackend {}

/// Program: the live-frames traffic generator of the veth rows. Run by
/// `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on a veth, it puts
/// back the words of the frame that differ from [`MAP_BENCH_TEMPLATE`] (the
/// receiver may have rewritten the bytes in place: the kernel resets a live
/// frame's pointers, not its contents) and returns XDP_TX, which live-frames
/// mode turns into a redirect out of the run's ingress interface. The caller
/// writes the template of each run (the same frame as the run's input).
pub const PROG_BENCH_TX: &str = "bench_tx";
/// Flows the veth rows' generator cycles through, one per test run:
/// consecutive source ports. Its templates' UDP checksum is 0 (none, RFC
/// 768).
pub const BENCH_TX_FLOWS: u16 = 64;
