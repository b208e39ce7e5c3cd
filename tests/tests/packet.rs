//! Packet tests: frames built with etherparse run through `xdp_lb` and
//! `xdp_decap` with BPF_PROG_TEST_RUN; return code, output bytes and counters
//! checked. The next-hop lookup needs routes and neighbours, so each test
//! makes its own namespace: veth `pt0` (10.20.0.2/24, the load balancer's
//! side, forwarding on) with permanent neighbour entries for backends .21 and
//! .22, and none for .23.

use std::{net::Ipv4Addr, sync::atomic::AtomicBool, time::Instant};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use etherparse::{IpHeaders, Ipv4Header, PacketBuilder};
use lb_common::{
    ConnEvent, ConnValue, FLOW_CACHE_REFRESH, FlowKey, MAP_CONNS, Outcome, flow_hash_v4,
    maglev_slot,
};
use lb_tests::{
    frames::Frame,
    xdp::{LbNamespace, lb_namespace, xdp_md},
};
use lb_userspace::{
    balancer::{Balancer, CONNS_GRACE, ConnsCheck, ConnsVerdict},
    config::Config,
    dataplane::{maps::AyaMaps, object, stats::StatsReader},
};

use lb_common::xdp_action::{DROP as XDP_DROP, PASS as XDP_PASS, TX as XDP_TX};

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const LB_ADDR: [u8; 4] = [10, 20, 0, 2];
const VIP: [u8; 4] = [10, 20, 0, 100];
const VIP_NO_NEIGH: [u8; 4] = [10, 20, 0, 101];
const CLIENT: [u8; 4] = [10, 20, 0, 10];
const OUTSIDE: [u8; 4] = [203, 0, 113, 7];

const CONFIG: &str = r#"
[maglev]
table_size = 251
[[vip]]
name = "web"
address = "10.20.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.20.0.21"
  [[vip.backend]]
  address = "10.20.0.22"
  [[vip.backend]]
  address = "10.20.0.24"
[[vip]]
name = "dns"
address = "10.20.0.100"
port = 53
protocol = "udp"
  [[vip.backend]]
  address = "10.20.0.21"
  [[vip.backend]]
  address = "10.20.0.22"
[[vip]]
name = "unresolved"
address = "10.20.0.101"
port = 0
protocol = "tcp"
  [[vip.backend]]
  address = "10.20.0.23"
"#;

fn backend_mac(addr: [u8; 4]) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, addr[3]]
}

struct Fixture {
    ebpf: Ebpf,
    balancer: Balancer<AyaMaps>,
    stats: StatsReader,
    lb: LbNamespace,
}

impl Fixture {
    fn new(test: &str) -> Self {
        Self::with_config(test, CONFIG)
    }

    /// A fixture whose maps are filled from `config` (TOML).
    fn with_config(test: &str, config: &str) -> Self {
        // .21, .22, .24 and the disruption test's .31 to .41; not .23.
        let mut neighbours: Vec<(String, String)> = [21u8, 22, 24]
            .into_iter()
            .chain(31..=41)
            .map(|b| (format!("10.20.0.{b}"), format!("02:00:00:00:00:{b:02x}")))
            .collect();
        // fd00:20::21 and ::22 (0x21 = 33) and the IPv6 disruption test's
        // ::1f to ::29.
        for b in 31u8..=41 {
            neighbours.push((format!("fd00:20::{b:x}"), format!("02:00:00:00:00:{b:02x}")));
        }
        let lb = lb_namespace(
            &format!("lbpt-{test}"),
            ("pt0", "pt1"),
            "02:00:00:00:00:02",
            "10.20.0.2/24",
            &neighbours,
        )
        .expect("namespace of the load balancer");

        let config = Config::parse(config, "packet-test").expect("valid").config;
        let regions = config.sizing.table_regions;
        let mut ebpf = object::load_object(&config).expect("load object");
        let stats = StatsReader::take(&mut ebpf).expect("stats maps");
        let balancer = Balancer::new(
            AyaMaps::take(&mut ebpf).expect("maps"),
            &config,
            lb_userspace::balancer::Sources {
                v4: Ipv4Addr::from(LB_ADDR),
                v6: std::net::Ipv6Addr::from(LB_V6),
            },
            regions,
        )
        .expect("fill maps");
        for name in ["xdp_lb", "xdp_decap"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("xdp");
            object::load_program(prog).expect("verifier accepts the program");
        }
        Self {
            ebpf,
            balancer,
            stats,
            lb,
        }
    }

    /// Runs `program` on `frame` arriving on pt0: (return code, output frame).
    fn run(&self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog: &Xdp = self
            .ebpf
            .program(program)
            .expect("program")
            .try_into()
            .expect("xdp");
        let ctx = xdp_md(frame.len(), self.lb.ifindex);
        let mut out = vec![0u8; frame.len() + 512];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let result = prog.test_run(opts).expect("test run");
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Applies `config` (TOML) to the maps as a reload does.
    fn reload(&mut self, config: &str) {
        let config = Config::parse(config, "packet-test").expect("valid").config;
        self.balancer
            .apply(
                &config,
                lb_userspace::balancer::Sources {
                    v4: Ipv4Addr::from(LB_ADDR),
                    v6: std::net::Ipv6Addr::from(LB_V6),
                },
            )
            .expect("reload");
    }

    fn count(&self, outcome: Outcome) -> u64 {
        self.stats.outcome(outcome).packets
    }

    /// The backend address userspace computes for a flow to VIP `vip_index`.
    fn expected_backend(
        &self,
        vip_index: usize,
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> [u8; 4] {
        let hash = flow_hash_v4(src, dst, sport.to_be_bytes(), dport.to_be_bytes(), proto);
        let table = self.balancer.table(vip_index);
        let id = table[maglev_slot(hash, table.len() as u32) as usize];
        let vip = &self.balancer.vips()[vip_index];
        let backend = vip
            .backends
            .iter()
            .position(|b| b.id == id)
            .expect("id of this VIP");
        self.backend_addr(vip_index, backend)
    }

    /// The backend (address as in its map entry) userspace computes for a
    /// flow of either family to VIP `vip_index`.
    fn expected_backend_any(&self, vip_index: usize, flow: &Flow6) -> std::net::IpAddr {
        let hash = lb_common::flow_hash(
            flow.family,
            &flow.src,
            &flow.dst,
            flow.sport.to_be_bytes(),
            flow.dport.to_be_bytes(),
            flow.proto,
        );
        let table = self.balancer.table(vip_index);
        let id = table[maglev_slot(hash, table.len() as u32) as usize];
        let vip = &self.balancer.vips()[vip_index];
        vip.backends
            .iter()
            .find(|b| b.id == id)
            .expect("id of this VIP")
            .address
    }

    /// IPv4 address of backend `backend` of VIP `vip` (the lab is IPv4 only).
    fn backend_addr(&self, vip: usize, backend: usize) -> [u8; 4] {
        match self.balancer.vips()[vip].backends[backend].address {
            std::net::IpAddr::V4(a) => a.octets(),
            std::net::IpAddr::V6(_) => unreachable!("IPv4 only"),
        }
    }
}

/// A TCP SYN from the client's MAC to the load balancer's.
fn tcp_syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst)
        .tcp_syn(sport, dport)
        .build()
}

/// A TCP segment of an established connection (ACK): the first such
/// packet of a flow records it in the connection table.
fn tcp_ack(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst)
        .tcp_ack(sport, dport)
        .build()
}

fn udp_datagram(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst)
        .udp(sport, dport)
        .payload(payload)
        .build()
}

/// Checks an encapsulated frame: L2 header of `l2_len` bytes with the given
/// MACs, a valid outer IPv4 header from the LB to `backend`, and `inner`
/// unchanged after it.
#[track_caller]
fn assert_encapsulated(
    out: &[u8],
    l2_len: usize,
    macs: ([u8; 6], [u8; 6]),
    backend: [u8; 4],
    inner: &[u8],
) {
    assert_eq!(&out[0..6], &macs.1, "destination MAC");
    assert_eq!(&out[6..12], &macs.0, "source MAC");
    let (outer, rest) = Ipv4Header::from_slice(&out[l2_len..]).expect("outer IPv4 header");
    assert_eq!(outer.source, LB_ADDR);
    assert_eq!(outer.destination, backend);
    assert_eq!(outer.protocol, etherparse::IpNumber::IPV4, "IP-in-IP");
    assert!(outer.dont_fragment, "outer DF set");
    assert!(!outer.more_fragments);
    assert_eq!(outer.time_to_live, 64);
    assert_eq!(
        outer.header_checksum,
        outer.calc_header_checksum(),
        "outer checksum"
    );
    assert_eq!(usize::from(outer.total_len), 20 + inner.len());
    assert_eq!(rest, inner, "inner packet unchanged");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn tcp_syn_to_vip_is_encapsulated_to_the_backend_userspace_computes() {
    lb_tests::require_root();
    let fx = Fixture::new("syn");
    let mut seen = std::collections::HashSet::new();
    for sport in 40000..40064u16 {
        let frame = tcp_syn(CLIENT, VIP, sport, 80);
        let (action, out) = fx.run("xdp_lb", &frame);
        assert_eq!(action, XDP_TX, "egress is the ingress interface");
        let backend = fx.expected_backend(0, CLIENT, VIP, sport, 80, 6);
        seen.insert(backend);
        assert_encapsulated(
            &out,
            14,
            (LB_MAC, backend_mac(backend)),
            backend,
            &frame[14..],
        );
    }
    assert_eq!(seen.len(), 3, "64 flows reach every backend");
    assert_eq!(fx.count(Outcome::Forwarded), 64);
    let web = &fx.balancer.vips()[0];
    assert_eq!(fx.stats.vip(web.id).packets, 64);
    let per_backend: u64 = web
        .backends
        .iter()
        .map(|b| fx.stats.backend(b.id).packets)
        .sum();
    assert_eq!(per_backend, 64);
}

/// What `xdp_lb` must make of a fixture's frame.
enum Out {
    /// The frame back unchanged.
    Unchanged,
    /// Not looked at (a dropped frame).
    Dropped,
    /// Encapsulated toward the backend userspace computes for the flow in
    /// VIP `vip` (index into the configuration), the L2 header (`l2_len`
    /// bytes, a VLAN tag kept) in front; with `resolved`, the MACs are the
    /// LB's and the backend's, else unchanged (handed to the kernel).
    Encap {
        vip: usize,
        l2_len: usize,
        resolved: bool,
    },
    /// Encapsulated like [`Out::Encap`] (resolved, no VLAN) toward the
    /// backend of the client flow `(client, vip, client port, vip port,
    /// protocol)` the packet is about (an ICMP error).
    EncapFor {
        vip: usize,
        flow: ([u8; 4], [u8; 4], u16, u16, u8),
    },
    /// Exactly this frame.
    Exact(Vec<u8>),
}

/// One rule of the data plane, as Katran's fixtures state them: a frame in,
/// the action and output expected, and the outcome counted once.
struct Row {
    description: &'static str,
    frame: Vec<u8>,
    action: u32,
    out: Out,
    outcome: Outcome,
}

fn fragment(more: bool, offset: u16) -> Vec<u8> {
    let mut header =
        Ipv4Header::new(8, 64, etherparse::IpNumber::UDP, CLIENT, VIP).expect("header");
    header.more_fragments = more;
    header.fragment_offset = etherparse::IpFragOffset::try_new(offset).expect("offset");
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ip(IpHeaders::Ipv4(header, Default::default()))
        .udp(5353, 53)
        .write(&mut frame, b"")
        .expect("build");
    frame
}

fn tagged_syn(vid: u16, sport: u16) -> Vec<u8> {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .vlan(vid)
        .ipv4(CLIENT, VIP)
        .tcp_syn(sport, 80)
        .build()
}

/// An ICMP echo request (TTL 30) or reply (TTL 64), id 7, sequence 1.
fn echo(src: [u8; 4], dst: [u8; 4], macs: ([u8; 6], [u8; 6]), request: bool) -> Vec<u8> {
    Frame::eth(macs.0, macs.1)
        .ipv4(src, dst)
        .ttl(if request { 30 } else { 64 })
        .echo(7, 1, request)
        .payload(b"ping-payload")
        .build()
}

/// A TCP segment client -> VIP:80 of `total` bytes of IPv4, with or
/// without DF.
fn big_segment(total: usize, df: bool) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, CLIENT, VIP).expect("header");
    ip.dont_fragment = df;
    let payload = vec![0x5a; total - 20 - 20];
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40100, 80, 1, 65535)
        .ack(1)
        .write(&mut frame, &payload)
        .expect("build");
    frame
}

/// The "fragmentation needed" `xdp_lb` must send for `frame` (from the VIP,
/// next-hop MTU `mtu`, quoting the IPv4 header and 8 bytes).
fn too_big_reply(frame: &[u8], mtu: u16) -> Vec<u8> {
    use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
    let quote = &frame[14..14 + 28];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
        .ipv4(VIP, CLIENT, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ))
        .write(&mut out, quote)
        .expect("build");
    out
}

/// An ICMP error from router 10.20.0.1 to the VIP, quoting `quoted` (an
/// IPv4 packet, cut to `quote_len` bytes).
fn icmp_error(kind: etherparse::Icmpv4Type, quoted: &[u8], quote_len: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([10, 20, 0, 1], VIP, 64)
        .icmpv4(kind)
        .write(&mut frame, &quoted[..quote_len.min(quoted.len())])
        .expect("build");
    frame
}

/// A DSR reply VIP:80 -> client:`port` (what a router on the way back
/// quotes), as an IPv4 packet without L2.
fn reply_from_vip(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut packet = Vec::new();
    PacketBuilder::ipv4(src, CLIENT, 64)
        .tcp(80, port, 1, 65535)
        .ack(1)
        .write(&mut packet, &[0u8; 100])
        .expect("build");
    packet
}

fn frag_needed(mtu: u16) -> etherparse::Icmpv4Type {
    etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
    )
}

/// The fixtures of `xdp_lb`'s rules; each new rule is one row.
fn rows() -> Vec<Row> {
    let syn = tcp_syn(CLIENT, VIP, 40000, 80);
    let too_big = big_segment(1500, true);
    let reply = reply_from_vip(VIP, 40200);
    use Out::*;
    vec![
        Row {
            description: "ICMP echo request to a VIP address: answered",
            frame: echo(CLIENT, VIP, (CLIENT_MAC, LB_MAC), true),
            action: XDP_TX,
            out: Exact(echo(VIP, CLIENT, (LB_MAC, CLIENT_MAC), false)),
            outcome: Outcome::EchoReplied,
        },
        Row {
            description: "ICMP echo request from an outside source: dropped by the source filter",
            frame: echo(OUTSIDE, VIP, (CLIENT_MAC, LB_MAC), true),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropSourceFilter,
        },
        Row {
            description: "DF packet that would not fit once encapsulated: fragmentation needed, MTU 1480",
            frame: too_big.clone(),
            action: XDP_TX,
            out: Exact(too_big_reply(&too_big, 1480)),
            outcome: Outcome::TooBigSent,
        },
        Row {
            description: "packet without DF that would not fit: dropped",
            frame: big_segment(1500, false),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropTooBigNoDf,
        },
        Row {
            description: "a packet that fits once encapsulated (1480 bytes): forwarded",
            frame: big_segment(1480, true),
            action: XDP_TX,
            out: Encap {
                vip: 0,
                l2_len: 14,
                resolved: true,
            },
            outcome: Outcome::Forwarded,
        },
        Row {
            description: "fragmentation needed quoting a reply VIP:80 -> client (8-byte quote): to the flow's backend",
            frame: icmp_error(frag_needed(1400), &reply, 28),
            action: XDP_TX,
            out: EncapFor {
                vip: 0,
                flow: (CLIENT, VIP, 40200, 80, 6),
            },
            outcome: Outcome::IcmpForwarded,
        },
        Row {
            description: "fragmentation needed quoting the whole reply: to the flow's backend",
            frame: icmp_error(frag_needed(1400), &reply, reply.len()),
            action: XDP_TX,
            out: EncapFor {
                vip: 0,
                flow: (CLIENT, VIP, 40200, 80, 6),
            },
            outcome: Outcome::IcmpForwarded,
        },
        Row {
            description: "time exceeded about a VIP flow: to the flow's backend",
            frame: icmp_error(
                etherparse::Icmpv4Type::TimeExceeded(
                    etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
                ),
                &reply,
                28,
            ),
            action: XDP_TX,
            out: EncapFor {
                vip: 0,
                flow: (CLIENT, VIP, 40200, 80, 6),
            },
            outcome: Outcome::IcmpForwarded,
        },
        Row {
            description: "ICMP error quoting a packet not sent from the VIP: refused",
            frame: icmp_error(
                frag_needed(1400),
                &reply_from_vip([10, 20, 0, 21], 40200),
                28,
            ),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropIcmpNotFromVip,
        },
        Row {
            description: "ICMP error whose quote is cut inside the L4 header: refused",
            frame: icmp_error(frag_needed(1400), &reply, 24),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropIcmpTruncated,
        },
        Row {
            description: "fragmentation needed with a next-hop MTU below 68: refused",
            frame: icmp_error(frag_needed(60), &reply, 28),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropIcmpBadMtu,
        },
        Row {
            description: "ICMP header cut short: refused",
            frame: echo(CLIENT, VIP, (CLIENT_MAC, LB_MAC), true)[..14 + 20 + 4].to_vec(),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropIcmpTruncated,
        },
        Row {
            description: "UDP datagram to a VIP: encapsulated toward its backend",
            frame: udp_datagram(CLIENT, VIP, 5353, 53, b"query"),
            action: XDP_TX,
            out: Encap {
                vip: 1,
                l2_len: 14,
                resolved: true,
            },
            outcome: Outcome::Forwarded,
        },
        Row {
            description: "802.1Q-tagged SYN: encapsulated, tag kept",
            frame: tagged_syn(42, 40001),
            action: XDP_TX,
            out: Encap {
                vip: 0,
                l2_len: 18,
                resolved: true,
            },
            outcome: Outcome::Forwarded,
        },
        Row {
            description: "no neighbour entry for the backend: encapsulated, handed to the kernel",
            frame: tcp_syn(CLIENT, VIP_NO_NEIGH, 40000, 8080),
            action: XDP_PASS,
            out: Encap {
                vip: 2,
                l2_len: 14,
                resolved: false,
            },
            outcome: Outcome::PassedNoNeighbour,
        },
        Row {
            description: "TCP to the load balancer itself: passed",
            frame: tcp_syn(CLIENT, LB_ADDR, 40000, 22),
            action: XDP_PASS,
            out: Unchanged,
            outcome: Outcome::Passed,
        },
        Row {
            description: "VIP address, a port without a VIP: passed",
            frame: tcp_syn(CLIENT, VIP, 40000, 81),
            action: XDP_PASS,
            out: Unchanged,
            outcome: Outcome::Passed,
        },
        Row {
            description: "UDP to another host: passed",
            frame: udp_datagram(CLIENT, [10, 20, 0, 55], 1, 2, b""),
            action: XDP_PASS,
            out: Unchanged,
            outcome: Outcome::Passed,
        },
        Row {
            description: "outside source to a non-VIP address, scope vip: passed",
            frame: tcp_syn(OUTSIDE, LB_ADDR, 40000, 22),
            action: XDP_PASS,
            out: Unchanged,
            outcome: Outcome::Passed,
        },
        Row {
            description: "outside source to a VIP: dropped by the source filter",
            frame: tcp_syn(OUTSIDE, VIP, 40000, 80),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropSourceFilter,
        },
        Row {
            description: "first fragment to a VIP: dropped",
            frame: fragment(true, 0),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropFragment,
        },
        Row {
            description: "later fragment to a VIP: dropped",
            frame: fragment(false, 185),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropFragment,
        },
        Row {
            // BPF_PROG_TEST_RUN refuses frames under 14 bytes, so the
            // truncated L2 header is an 802.1Q frame cut inside its tag.
            description: "802.1Q tag cut short: dropped as malformed",
            frame: tagged_syn(7, 40000)[..16].to_vec(),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropMalformed,
        },
        Row {
            description: "IPv4 header cut short: dropped as malformed",
            frame: syn[..14 + 12].to_vec(),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropMalformed,
        },
        Row {
            description: "TCP header cut short: dropped as malformed",
            frame: syn[..14 + 20 + 10].to_vec(),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropMalformed,
        },
        Row {
            // The VIP lookup comes before the filter on TCP and UDP; a
            // packet it cannot read still gets the filter's verdict first.
            description: "TCP header cut short, to the load balancer itself: passed",
            frame: tcp_syn(OUTSIDE, LB_ADDR, 40000, 22)[..14 + 20 + 10].to_vec(),
            action: XDP_PASS,
            out: Unchanged,
            outcome: Outcome::Passed,
        },
        Row {
            description: "TCP header cut short, to a VIP from outside: dropped by the filter",
            frame: tcp_syn(OUTSIDE, VIP, 40000, 80)[..14 + 20 + 10].to_vec(),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropSourceFilter,
        },
    ]
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn xdp_lb_fixtures() {
    lb_tests::require_root();
    let fx = Fixture::new("fixtures");
    for row in rows() {
        let what = row.description;
        let before = fx.count(row.outcome);
        let (action, out) = fx.run("xdp_lb", &row.frame);
        assert_eq!(action, row.action, "{what}: action");
        assert_eq!(
            fx.count(row.outcome),
            before + 1,
            "{what}: counted as {}",
            row.outcome.name()
        );
        match row.out {
            Out::Unchanged => assert_eq!(out, row.frame, "{what}: unchanged"),
            Out::Dropped => {}
            Out::Exact(expected) => {
                assert_eq!(out, expected, "{what}: the exact frame");
                // Both checksums of what was sent are valid (etherparse
                // computes them for the expected frame).
                let sent = etherparse::SlicedPacket::from_ethernet(&out).expect("parse");
                assert!(sent.net.is_some(), "{what}");
            }
            Out::EncapFor { vip, flow } => {
                let (client, vip_addr, cport, vport, proto) = flow;
                let backend = fx.expected_backend(vip, client, vip_addr, cport, vport, proto);
                assert_encapsulated(
                    &out,
                    14,
                    (LB_MAC, backend_mac(backend)),
                    backend,
                    &row.frame[14..],
                );
            }
            Out::Encap {
                vip,
                l2_len,
                resolved,
            } => {
                let packet = etherparse::SlicedPacket::from_ethernet(&row.frame).expect("parse");
                let Some(etherparse::NetSlice::Ipv4(ip)) = &packet.net else {
                    panic!("{what}: an IPv4 frame");
                };
                let (sport, dport, proto) = match &packet.transport {
                    Some(etherparse::TransportSlice::Tcp(t)) => {
                        (t.source_port(), t.destination_port(), 6)
                    }
                    Some(etherparse::TransportSlice::Udp(u)) => {
                        (u.source_port(), u.destination_port(), 17)
                    }
                    _ => panic!("{what}: TCP or UDP"),
                };
                let (src, dst) = (ip.header().source(), ip.header().destination());
                let backend = fx.expected_backend(vip, src, dst, sport, dport, proto);
                let macs = if resolved {
                    (LB_MAC, backend_mac(backend))
                } else {
                    (CLIENT_MAC, LB_MAC)
                };
                assert_eq!(&out[12..l2_len], &row.frame[12..l2_len], "{what}: L2 kept");
                assert_encapsulated(&out, l2_len, macs, backend, &row.frame[l2_len..]);
            }
        }
        println!("ok: {what}");
    }
}

/// The "too big" rate limit (`icmp.too_big_per_cpu`, per CPU) and a
/// configured `encap.mtu` below the egress MTU.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn too_big_is_rate_limited_per_cpu_and_follows_encap_mtu() {
    lb_tests::require_root();
    // One CPU, so one bucket.
    pin_to_cpu0();
    let config = format!("[encap]\nmtu = 1000\n[icmp]\ntoo_big_per_cpu = 3\n{CONFIG}");
    let fx = Fixture::with_config("ratelimit", &config);
    // 1000 bytes of IPv4: 1020 encapsulated, over encap.mtu.
    let frame = big_segment(1000, true);
    let mut sent = 0;
    for _ in 0..10 {
        let (action, out) = fx.run("xdp_lb", &frame);
        if action == XDP_TX {
            assert_eq!(
                out,
                too_big_reply(&frame, 980),
                "next-hop MTU: encap.mtu - 20"
            );
            sent += 1;
        } else {
            assert_eq!(action, XDP_DROP);
        }
    }
    assert_eq!(sent, 3, "a full bucket: one second's worth, 3");
    assert_eq!(fx.count(Outcome::TooBigSent), 3);
    assert_eq!(fx.count(Outcome::TooBigSuppressed), 7);
    // 980 bytes fit (1000 encapsulated).
    let (action, _) = fx.run("xdp_lb", &big_segment(980, true));
    assert_eq!(action, XDP_TX);
    assert_eq!(fx.count(Outcome::Forwarded), 1);
}

/// A VIP's own `allow` narrows the perimeter for that VIP only, in one
/// lookup keyed by VIP id and source; refusals are counted for the VIP.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_vip_list_narrows_the_sources_of_that_vip() {
    lb_tests::require_root();
    let config = CONFIG.replacen(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\nallow = [\"10.20.0.10/32\"]\n",
        1,
    );
    let fx = Fixture::with_config("vipallow", &config);
    let other = [10, 20, 0, 11];
    let (action, _) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 40000, 80));
    assert_eq!(action, XDP_TX, "the listed /32 reaches the VIP");
    let (action, _) = fx.run("xdp_lb", &tcp_syn(other, VIP, 40000, 80));
    assert_eq!(action, XDP_DROP, "another private source does not");
    assert_eq!(fx.count(Outcome::DropVipSourceFilter), 1);
    let web = fx.balancer.vips()[0].id;
    assert_eq!(fx.stats.vip_refused(web).packets, 1);
    // The UDP VIP on the same address has no list of its own.
    let (action, _) = fx.run("xdp_lb", &udp_datagram(other, VIP, 5353, 53, b"q"));
    assert_eq!(action, XDP_TX);

    // An established flow (it reaches its VIP through its backend, without
    // the VIP lookup) is still held to the VIP's list, as a reload changes
    // it, and still counted for its VIP.
    let mut fx = fx;
    let ack = tcp_ack(CLIENT, VIP, 40010, 80);
    assert_eq!(fx.run("xdp_lb", &ack).0, XDP_TX, "recorded");
    let before = fx.stats.vip(web).packets;
    assert_eq!(fx.run("xdp_lb", &ack).0, XDP_TX, "established");
    assert_eq!(established_hits(&fx), 1);
    assert_eq!(fx.stats.vip(web).packets, before + 1);
    let narrower = config.replace("10.20.0.10/32", "10.20.0.11/32");
    fx.reload(&narrower);
    assert_eq!(fx.run("xdp_lb", &ack).0, XDP_DROP, "no longer listed");
    assert_eq!(fx.count(Outcome::DropVipSourceFilter), 2);
    assert_eq!(fx.run("xdp_lb", &tcp_ack(other, VIP, 40011, 80)).0, XDP_TX);
}

/// An address that is not a VIP address but shares the VIP's bit in the
/// VIP-address filter (`LB_VIP_BLOOM`, the lookup `xdp_lb` makes before
/// any hash lookup) is treated exactly like any other non-VIP address:
/// what would drop or answer a packet because it is for a VIP address is
/// confirmed in `LB_VIP_ADDRS` first.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn an_address_sharing_the_vip_filter_bit_is_not_vip_traffic() {
    lb_tests::require_root();
    use lb_common::{AddrKey, rules::vip_bloom_bit};
    let bit = vip_bloom_bit(&AddrKey::v4(VIP));
    // About one address in 2^18 shares it: search 10.0.0.0/8, bounded.
    let twin = (0x0a00_0000u32..0x0b00_0000)
        .map(u32::to_be_bytes)
        .find(|&a| a != VIP && a != VIP_NO_NEIGH && vip_bloom_bit(&AddrKey::v4(a)) == bit)
        .expect("an address of 10.0.0.0/8 shares the VIP's bit");
    let fx = Fixture::new("bloomtwin");

    // An outside source: dropped toward the VIP, passed toward the twin
    // (scope "vip": the filter applies to VIP addresses only).
    let (action, _) = fx.run("xdp_lb", &tcp_syn(OUTSIDE, VIP, 40000, 80));
    assert_eq!(action, XDP_DROP);
    let (action, out) = fx.run("xdp_lb", &tcp_syn(OUTSIDE, twin, 40000, 80));
    assert_eq!(action, XDP_PASS, "twin {twin:?}");
    assert_eq!(out, tcp_syn(OUTSIDE, twin, 40000, 80), "untouched");
    assert_eq!(fx.count(Outcome::DropSourceFilter), 1);

    // ICMP echo: answered for the VIP, passed to the kernel for the twin.
    let (action, _) = fx.run("xdp_lb", &echo(CLIENT, VIP, (CLIENT_MAC, LB_MAC), true));
    assert_eq!(action, XDP_TX);
    let request = echo(CLIENT, twin, (CLIENT_MAC, LB_MAC), true);
    let (action, out) = fx.run("xdp_lb", &request);
    assert_eq!((action, out), (XDP_PASS, request));
    assert_eq!(fx.count(Outcome::EchoReplied), 1);

    // A fragment: dropped for the VIP (no ports to hash), passed for the twin.
    let mut header =
        Ipv4Header::new(8, 64, etherparse::IpNumber::UDP, CLIENT, twin).expect("header");
    header.more_fragments = true;
    let mut frag = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ip(IpHeaders::Ipv4(header, Default::default()))
        .udp(5353, 53)
        .write(&mut frag, b"")
        .expect("build");
    assert_eq!(fx.run("xdp_lb", &fragment(true, 0)).0, XDP_DROP);
    assert_eq!(fx.run("xdp_lb", &frag).0, XDP_PASS);
    assert_eq!(fx.count(Outcome::DropFragment), 1);

    // An allowed source's TCP to the twin: passed, as to any address.
    let (action, _) = fx.run("xdp_lb", &tcp_ack(CLIENT, twin, 40001, 80));
    assert_eq!(action, XDP_PASS);
    assert_eq!(fx.count(Outcome::Passed), 4);
}

/// The IPv4 source filter decides by /16 in one array read where an allowed
/// prefix covers the /16, and asks the trie where the /16 only holds longer
/// prefixes: both answers match the configured list.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_source_filter_by_slash16_falls_back_to_the_trie() {
    lb_tests::require_root();
    let config = format!(
        "[source_filter]\nallow = [\"10.20.0.0/24\", \"192.168.0.0/16\", \"198.51.100.7/32\"]\n{CONFIG}"
    );
    let mut fx = Fixture::with_config("allow16", &config);
    let cases: [([u8; 4], u32); 6] = [
        (CLIENT, XDP_TX),              // in the /24: the trie says yes
        ([10, 20, 1, 10], XDP_DROP),   // same /16, outside the /24
        ([192, 168, 5, 5], XDP_TX),    // a whole /16
        ([198, 51, 100, 7], XDP_TX),   // a /32
        ([198, 51, 100, 8], XDP_DROP), // its neighbour
        ([172, 16, 0, 1], XDP_DROP),   // a private range not listed
    ];
    for (i, (src, want)) in cases.into_iter().enumerate() {
        let port = 41000 + i as u16;
        assert_eq!(
            fx.run("xdp_lb", &tcp_ack(src, VIP, port, 80)).0,
            want,
            "{src:?}"
        );
    }
    assert_eq!(fx.count(Outcome::DropSourceFilter), 3);
    // A reload that narrows the list: the /16 goes, the /24 stays.
    let narrower = config.replace("\"192.168.0.0/16\", ", "");
    fx.reload(&narrower);
    assert_eq!(
        fx.run("xdp_lb", &tcp_ack([192, 168, 5, 5], VIP, 42000, 80))
            .0,
        XDP_DROP
    );
    assert_eq!(fx.run("xdp_lb", &tcp_ack(CLIENT, VIP, 42001, 80)).0, XDP_TX);
}

/// An established flow of a port-0 VIP meets, after a reload adds a VIP of
/// its port on the same address and protocol, that VIP's own `allow` list
/// (as a new flow would): the established path does not bypass the VIP its
/// packets now match.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_vip_of_a_port_added_beside_a_port_0_vip_applies_to_its_flows() {
    lb_tests::require_root();
    let mut fx = Fixture::new("shadow");
    // The "unresolved" VIP: 10.20.0.101, every TCP port; its backend has no
    // neighbour entry, so its packets go to the kernel encapsulated.
    let ack = tcp_ack(CLIENT, VIP_NO_NEIGH, 40020, 8443);
    let (first, _) = fx.run("xdp_lb", &ack);
    assert_eq!(fx.stats.conn(ConnEvent::Miss).packets, 1, "recorded");
    assert_eq!(fx.run("xdp_lb", &ack).0, first);
    assert_eq!(established_hits(&fx), 1, "established");
    let with_port = format!(
        "{CONFIG}[[vip]]\nname = \"tls\"\naddress = \"10.20.0.101\"\nport = 8443\nprotocol = \"tcp\"\nallow = [\"10.20.0.11/32\"]\n  [[vip.backend]]\n  address = \"10.20.0.24\"\n"
    );
    fx.reload(&with_port);
    assert_eq!(
        fx.run("xdp_lb", &ack).0,
        XDP_DROP,
        "the port's VIP refuses it"
    );
    assert_eq!(fx.count(Outcome::DropVipSourceFilter), 1);
    let tls = fx.balancer.vips()[3].id;
    assert_eq!(fx.stats.vip_refused(tls).packets, 1, "counted for that VIP");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn unhealthy_backends_are_skipped_and_no_backend_drops() {
    lb_tests::require_root();
    let mut fx = Fixture::new("health");
    fx.balancer.set_health(0, 0, false).expect("mark down");
    fx.balancer.set_health(0, 2, false).expect("mark down");
    let healthy = fx.backend_addr(0, 1);
    for sport in 41000..41016u16 {
        let (action, out) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, sport, 80));
        assert_eq!(action, XDP_TX);
        assert_eq!(
            outer_destination(&out),
            healthy,
            "every flow on the healthy backend"
        );
    }
    fx.balancer.set_health(0, 1, false).expect("mark down");
    let (action, _) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 41000, 80));
    assert_eq!(action, XDP_DROP);
    assert_eq!(fx.count(Outcome::DropNoBackend), 1);
}

fn ipip(outer_dst: [u8; 4], inner: &[u8]) -> Vec<u8> {
    Frame::eth(LB_MAC, [0x02, 0, 0, 0, 0, 0x21])
        .ipv4(LB_ADDR, outer_dst)
        .ip_in_ip(inner)
        .build()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn decap_strips_the_outer_header_for_served_vips_only() {
    lb_tests::require_root();
    let mut fx = Fixture::new("decap");
    // This host (the namespace) has 10.20.0.2; it serves VIP 10.20.0.100.
    let mut vips: aya::maps::HashMap<_, lb_common::AddrKey, u32> =
        aya::maps::HashMap::try_from(fx.ebpf.map_mut(lb_common::MAP_DECAP_VIPS).expect("map"))
            .expect("hash");
    vips.insert(lb_common::AddrKey::v4(VIP), 1, 0)
        .expect("insert");
    let mut locals: aya::maps::HashMap<_, lb_common::AddrKey, u32> =
        aya::maps::HashMap::try_from(fx.ebpf.map_mut(lb_common::MAP_DECAP_LOCAL).expect("map"))
            .expect("hash");
    locals
        .insert(lb_common::AddrKey::v4(LB_ADDR), 1, 0)
        .expect("insert");

    let inner = tcp_syn(CLIENT, VIP, 40000, 80);
    let frame = ipip(LB_ADDR, &inner[14..]);
    let (action, out) = fx.run("xdp_decap", &frame);
    assert_eq!(action, XDP_PASS);
    assert_eq!(&out[..14], &frame[..14], "Ethernet header kept");
    assert_eq!(&out[14..], &inner[14..], "inner packet, outer header gone");

    // Inner destination is another VIP: unchanged.
    let other = tcp_syn(CLIENT, VIP_NO_NEIGH, 40000, 80);
    let frame = ipip(LB_ADDR, &other[14..]);
    let (action, out) = fx.run("xdp_decap", &frame);
    assert_eq!((action, out), (XDP_PASS, frame));
    // Outer destination is not this host: unchanged.
    let frame = ipip([10, 20, 0, 99], &inner[14..]);
    let (action, out) = fx.run("xdp_decap", &frame);
    assert_eq!((action, out), (XDP_PASS, frame));
    assert_eq!(fx.count(Outcome::Decapsulated), 1);
}

/// The backend an encapsulated frame goes to (outer destination).
fn outer_destination(out: &[u8]) -> [u8; 4] {
    out[14 + 16..14 + 20].try_into().expect("4 bytes")
}

/// Sends the next packet of each flow (source ports `ports`) and returns the
/// backend each went to.
fn send(fx: &Fixture, ports: &[u16]) -> Vec<[u8; 4]> {
    ports
        .iter()
        .map(|&sport| {
            let (action, out) = fx.run("xdp_lb", &tcp_ack(CLIENT, VIP, sport, 80));
            assert_eq!(action, XDP_TX);
            outer_destination(&out)
        })
        .collect()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn flows_keep_their_backend_through_changes_until_it_leaves() {
    lb_tests::require_root();
    let mut fx = Fixture::new("conntrack");
    let ports: Vec<u16> = (42000..42600).collect();
    let first = send(&fx, &ports);
    assert_eq!(fx.stats.conn(ConnEvent::Miss).packets, ports.len() as u64);
    let addr = |i: usize| fx.backend_addr(0, i);
    let (be21, be22, be24) = (addr(0), addr(1), addr(2));

    // 1. Another backend's weight changes: Maglev would move some flows, the
    // connection table keeps every one.
    fx.balancer.set_weight(0, 1, 10).expect("weight");
    let moved_by_maglev = ports
        .iter()
        .zip(&first)
        .filter(|(p, b)| fx.expected_backend(0, CLIENT, VIP, **p, 80, 6) != **b)
        .count();
    assert!(
        moved_by_maglev > 0,
        "the weight change moves some flows in the Maglev table"
    );
    assert_eq!(
        send(&fx, &ports),
        first,
        "after a weight change: same backends"
    );
    assert_eq!(established_hits(&fx), ports.len() as u64);

    // 2. Another backend (.24) is removed: flows elsewhere stay, its own move.
    fx.balancer.remove_backend(0, 2).expect("remove");
    let after_remove = send(&fx, &ports);
    for ((port, before), after) in ports.iter().zip(&first).zip(&after_remove) {
        if *before == be24 {
            assert_eq!(
                *after,
                fx.expected_backend(0, CLIENT, VIP, *port, 80, 6),
                "re-hashed by Maglev"
            );
            assert_ne!(*after, be24);
        } else {
            assert_eq!(
                after, before,
                "flow on {before:?} kept after another backend left"
            );
        }
    }
    let on_24 = first.iter().filter(|b| **b == be24).count() as u64;
    assert!(on_24 > 0);
    assert_eq!(fx.stats.conn(ConnEvent::Rehash).packets, on_24);

    // 3. Its own backend (.21) is marked unhealthy: its flows move to .22, the rest stay.
    fx.balancer.set_health(0, 0, false).expect("unhealthy");
    let after_down = send(&fx, &ports);
    for (before, after) in after_remove.iter().zip(&after_down) {
        if *before == be21 {
            assert_eq!(*after, be22, "flow of an unhealthy backend moves");
        } else {
            assert_eq!(after, before);
        }
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn drained_backend_keeps_its_flows_and_takes_no_new_ones() {
    lb_tests::require_root();
    let mut fx = Fixture::new("drain");
    let ports: Vec<u16> = (43000..43300).collect();
    let first = send(&fx, &ports);
    let drained = fx.backend_addr(0, 0);
    assert!(first.contains(&drained));
    fx.balancer.set_weight(0, 0, 0).expect("drain");
    assert_eq!(
        send(&fx, &ports),
        first,
        "existing flows stay, on the drained backend too"
    );
    let new_flows: Vec<u16> = (44000..44300).collect();
    assert!(
        !send(&fx, &new_flows).contains(&drained),
        "no new flow on a drained backend"
    );
}

/// The configuration of the disruption test: VIP `many` over backends
/// 10.20.0.31 onwards (`count` of them, skipping `skip`), M = 65537.
fn many_backends(v6: bool, first: u8, count: u8, skip: Option<u8>) -> String {
    let (vip, prefix) = if v6 {
        ("fd00:20::100", "fd00:20::")
    } else {
        ("10.20.0.100", "10.20.0.")
    };
    let mut text = format!(
        "[maglev]\ntable_size = 65537\n[conntrack]\nmax_entries = 262144\nmax_new_per_cpu = 100000000\n[[vip]]\nname = \"many\"\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\n",
    );
    for b in (first..first + count).filter(|b| Some(*b) != skip) {
        // IPv6 backends end in the same byte as the IPv4 ones (.31 is ::1f).
        let b = if v6 { format!("{b:x}") } else { b.to_string() };
        text += &format!("  [[vip.backend]]\n  address = \"{prefix}{b}\"\n");
    }
    text
}

/// Sends one ACK (a packet that records the flow) of each of `n` flows (flow `i`: a distinct source address
/// and port) to the VIP of `many_backends`; returns the backend each went
/// to.
fn send_flows(fx: &Fixture, v6: bool, n: u32) -> Vec<std::net::IpAddr> {
    (0..n)
        .map(|i| {
            let sport = 1024 + (i >> 16) as u16;
            let frame = if v6 {
                let mut src = [0u8; 16];
                src[..4].copy_from_slice(&[0xfd, 0, 0, 0x21]);
                src[14..].copy_from_slice(&(i as u16).to_be_bytes());
                ack6(src, sport, 80)
            } else {
                tcp_ack([10, 21, (i >> 8) as u8, i as u8], VIP, sport, 80)
            };
            let (action, out) = fx.run("xdp_lb", &frame);
            assert_eq!(action, XDP_TX, "flow {i}");
            if v6 {
                std::net::IpAddr::from(<[u8; 16]>::try_from(&out[14 + 24..14 + 40]).expect("16"))
            } else {
                std::net::IpAddr::from(outer_destination(&out))
            }
        })
        .collect()
}

/// Empties the connection table (and retires the flow caches' copies of its
/// entries), so the next packets show Maglev's choice.
fn flush_connection_table(fx: &mut Fixture) {
    let mut conns: aya::maps::HashMap<_, lb_common::FlowKey, lb_common::ConnValue> =
        aya::maps::HashMap::try_from(fx.ebpf.map_mut(MAP_CONNS).expect("connection table"))
            .expect("hash map");
    let keys: Vec<_> = conns.keys().filter_map(Result::ok).collect();
    for key in keys {
        conns.remove(&key).expect("remove entry");
    }
    // And the flow caches' copies of those entries.
    fx.balancer.retire_flow_caches().expect("globals write");
}

/// Share of flows whose backend differs between `a` and `b`, among the
/// flows `which` selects (by their backend in `a`).
fn moved<T: PartialEq>(a: &[T], b: &[T], which: impl Fn(&T) -> bool) -> (usize, usize) {
    let pairs = a.iter().zip(b).filter(|(x, _)| which(x));
    let total = pairs.clone().count();
    (pairs.filter(|(x, y)| x != y).count(), total)
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn disruption_of_100k_flows_when_a_backend_leaves_or_joins() {
    lb_tests::require_root();
    disruption(false);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn disruption_of_100k_ipv6_flows_when_a_backend_leaves_or_joins() {
    lb_tests::require_root();
    disruption(true);
}

/// 100 000 flows of one family over ten backends: one leaves, then one
/// joins; with the connection table no flow moves but the removed
/// backend's, and Maglev alone moves close to 1/N.
fn disruption(v6: bool) {
    const FLOWS: u32 = 100_000;
    let name = if v6 { "disrupt6" } else { "disrupt" };
    let family = if v6 { "IPv6" } else { "IPv4" };
    let mut fx = Fixture::with_config(name, &many_backends(v6, 31, 10, None));
    let backend = |last: u8| -> std::net::IpAddr {
        if v6 {
            std::net::Ipv6Addr::new(0xfd00, 0x20, 0, 0, 0, 0, 0, u16::from(last)).into()
        } else {
            Ipv4Addr::new(10, 20, 0, last).into()
        }
    };
    let source = Ipv4Addr::from(LB_ADDR);
    let share = |(m, t): (usize, usize)| m as f64 / t.max(1) as f64;

    // Ten backends; every flow enters the connection table.
    let before = send_flows(&fx, v6, FLOWS);
    // Balance: each of the ten backends takes 10% of the flows, within 1.5
    // points (Maglev's table is balanced within 1%; the rest is the hash).
    let mut per_backend = std::collections::BTreeMap::<std::net::IpAddr, u32>::new();
    for b in &before {
        *per_backend.entry(*b).or_default() += 1;
    }
    println!("{family}: flows per backend {per_backend:?}");
    assert_eq!(per_backend.len(), 10, "{per_backend:?}");
    for (b, n) in &per_backend {
        let share = f64::from(*n) / f64::from(FLOWS);
        assert!((0.085..0.115).contains(&share), "{b}: {n} flows of {FLOWS}");
    }
    assert_eq!(fx.stats.conn(ConnEvent::Miss).packets, u64::from(FLOWS));
    let removed = backend(34);

    // One of N = 10 leaves (a reload without .34).
    let config = Config::parse(&many_backends(v6, 31, 10, Some(34)), "t")
        .expect("valid")
        .config;
    fx.balancer.apply(&config, source).expect("reload");
    let kept = send_flows(&fx, v6, FLOWS);
    let (on_removed, others) = (
        |b: &std::net::IpAddr| *b == removed,
        |b: &std::net::IpAddr| *b != removed,
    );
    let kept_moved = moved(&before, &kept, others);
    let removed_moved = moved(&before, &kept, on_removed);
    flush_connection_table(&mut fx);
    let maglev = send_flows(&fx, v6, FLOWS);
    let maglev_all = moved(&before, &maglev, |_| true);
    let maglev_others = moved(&before, &maglev, others);
    println!(
        "{family}: remove 1 of 10: Maglev alone moves {:.2}% of all flows ({:.2}% of those not on the removed backend); \
         with the connection table {:.2}% of flows not on it move, {:.1}% of its own",
        100.0 * share(maglev_all),
        100.0 * share(maglev_others),
        100.0 * share(kept_moved),
        100.0 * share(removed_moved),
    );
    assert_eq!(
        kept_moved.0, 0,
        "flows in the connection table stay: {kept_moved:?}"
    );
    assert_eq!(
        removed_moved.0, removed_moved.1,
        "the removed backend's flows all move"
    );
    assert!(
        (0.08..0.13).contains(&share(maglev_all)),
        "close to 1/N: {maglev_all:?}"
    );
    assert!(
        share(maglev_others) < 0.03,
        "Maglev is nearly minimal: {maglev_others:?}"
    );

    // One joins (nine to ten, .41 new); the table now holds `maglev`'s choices.
    let config = Config::parse(&many_backends(v6, 31, 11, Some(34)), "t")
        .expect("valid")
        .config;
    fx.balancer.apply(&config, source).expect("reload");
    let added = backend(41);
    let kept = send_flows(&fx, v6, FLOWS);
    let kept_moved = moved(&maglev, &kept, |_| true);
    flush_connection_table(&mut fx);
    let after = send_flows(&fx, v6, FLOWS);
    let maglev_all = moved(&maglev, &after, |_| true);
    let to_new = after
        .iter()
        .zip(&maglev)
        .filter(|(a, m)| a != m && **a == added)
        .count();
    println!(
        "{family}: add 1 to 9: Maglev alone moves {:.2}% of all flows ({:.1}% of those to the new backend); \
         with the connection table {:.2}% move",
        100.0 * share(maglev_all),
        100.0 * to_new as f64 / maglev_all.0.max(1) as f64,
        100.0 * share(kept_moved),
    );
    assert_eq!(kept_moved.0, 0, "flows in the connection table stay");
    assert!(
        (0.08..0.13).contains(&share(maglev_all)),
        "close to 1/N: {maglev_all:?}"
    );
    assert!(
        to_new as f64 > 0.8 * maglev_all.0 as f64,
        "moved flows go mostly to the new backend"
    );
}

/// `lb explain` says what the kernel does with the source filter and its
/// scope: for each scope, allowed and outside sources to a VIP, to a VIP
/// address on another port, and to a host that is not a VIP.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn explain_and_the_kernel_agree_on_the_source_filter_scope() {
    lb_tests::require_root();
    use lb_userspace::{
        config::Protocol,
        explain::{Verdict, verdict},
    };
    for (name, scope) in [("scopevip", "vip"), ("scopeall", "all")] {
        let text = format!("[source_filter]\nscope = \"{scope}\"\n{CONFIG}");
        let fx = Fixture::with_config(name, &text);
        let config = Config::parse(&text, "t").expect("valid").config;
        for (src, dst, dport) in [
            (CLIENT, VIP, 80),
            (OUTSIDE, VIP, 80),
            (CLIENT, VIP, 81),
            (OUTSIDE, VIP, 81),
            (CLIENT, LB_ADDR, 22),
            (OUTSIDE, LB_ADDR, 22),
        ] {
            let (action, _) = fx.run("xdp_lb", &tcp_syn(src, dst, 40000, dport));
            let said = verdict(
                &config,
                Protocol::Tcp,
                (Ipv4Addr::from(src), 40000).into(),
                (Ipv4Addr::from(dst), dport).into(),
            );
            let expected = match said {
                Verdict::DropSourceFilter | Verdict::DropVipSourceFilter(_) => XDP_DROP,
                Verdict::Pass => XDP_PASS,
                Verdict::Vip(_) => XDP_TX,
            };
            assert_eq!(
                action, expected,
                "scope {scope}: {src:?} -> {dst:?}:{dport}: explain says {said:?}"
            );
        }
    }
}

// ---- IPv6 and GUE ----

/// A flow of either family, addresses as in map keys.
struct Flow6 {
    family: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    proto: u8,
}

const LB_V6: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP_V6: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const CLIENT_V6: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const OUTSIDE_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

const CONFIG_V6: &str = r#"
[encap]
source_v6 = "fd00:20::2"
[maglev]
table_size = 251
[[vip]]
name = "web6"
address = "fd00:20::100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "fd00:20::21"
  [[vip.backend]]
  address = "fd00:20::22"
[[vip]]
name = "dns6"
address = "fd00:20::100"
port = 53
protocol = "udp"
  [[vip.backend]]
  address = "fd00:20::21"
[[vip]]
name = "web4over6"
address = "10.20.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "fd00:20::21"
  [[vip.backend]]
  address = "fd00:20::22"
[[vip]]
name = "gue4"
address = "10.20.0.101"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.20.0.21"
  [[vip.backend]]
  address = "10.20.0.22"
"#;

fn key4(a: [u8; 4]) -> [u8; 16] {
    lb_common::AddrKey::v4(a).addr
}

/// The IPv6 address of an IPv6 backend.
fn v6(a: std::net::IpAddr) -> std::net::Ipv6Addr {
    match a {
        std::net::IpAddr::V6(a) => a,
        std::net::IpAddr::V4(_) => panic!("an IPv6 backend"),
    }
}

fn v6_frame(
    src: [u8; 16],
    dst: [u8; 16],
    l4: impl FnOnce(etherparse::PacketBuilderStep<etherparse::IpHeaders>) -> Vec<u8>,
) -> Vec<u8> {
    l4(PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv6(src, dst, 64))
}

/// An IPv6 TCP ACK to the IPv6 VIP.
fn ack6(src: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv6(src, VIP_V6)
        .tcp_ack(sport, dport)
        .build()
}

fn syn6(src: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv6(src, VIP_V6)
        .tcp_syn(sport, dport)
        .build()
}

/// The frame `xdp_lb` must send for `frame` (its IP packet from `l3`)
/// toward IPv6 backend `backend`: MACs, outer IPv6 (next header 41 or 4,
/// hop limit 64, flow label from the flow hash), the packet unchanged.
fn six_in_six(frame: &[u8], backend: std::net::Ipv6Addr, hash: u32, inner_v6: bool) -> Vec<u8> {
    let inner = &frame[14..];
    let mut out = Vec::new();
    out.extend_from_slice(&backend_mac_v6(backend));
    out.extend_from_slice(&LB_MAC);
    out.extend_from_slice(&[0x86, 0xdd]);
    let mut h = etherparse::Ipv6Header {
        traffic_class: 0,
        flow_label: etherparse::Ipv6FlowLabel::try_new(hash & 0xfffff).expect("20 bits"),
        payload_length: inner.len() as u16,
        next_header: if inner_v6 {
            etherparse::IpNumber::IPV6
        } else {
            etherparse::IpNumber::IPV4
        },
        hop_limit: 64,
        source: LB_V6,
        destination: backend.octets(),
    };
    if !inner_v6 {
        h.traffic_class = inner[1];
    }
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(inner);
    out
}

fn backend_mac_v6(addr: std::net::Ipv6Addr) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, addr.octets()[15]]
}

fn flow6(src: [u8; 16], sport: u16, dport: u16, proto: u8) -> Flow6 {
    Flow6 {
        family: lb_common::FAMILY_V6,
        src,
        dst: VIP_V6,
        sport,
        dport,
        proto,
    }
}

fn hash_of(f: &Flow6) -> u32 {
    lb_common::flow_hash(
        f.family,
        &f.src,
        &f.dst,
        f.sport.to_be_bytes(),
        f.dport.to_be_bytes(),
        f.proto,
    )
}

/// IPv6: an address sharing the IPv6 VIP's filter bit is not VIP traffic
/// (ICMPv6 echo and an outside source pass, not answered or dropped), and
/// the source filter by first 16 bits asks the trie for a slot that holds
/// only a longer prefix.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn ipv6_filter_bit_twins_and_the_slash16_trie_fallback() {
    lb_tests::require_root();
    use lb_common::{AddrKey, rules::vip_bloom_bit};
    let bit = vip_bloom_bit(&AddrKey::v6(VIP_V6));
    // About one address in 2^18 shares it: search fd00:20::/64, bounded.
    let twin = (0u32..1 << 24)
        .map(|i| {
            let mut a = VIP_V6;
            a[12..].copy_from_slice(&(0x0100_0000 + i).to_be_bytes());
            a
        })
        .find(|&a| a != VIP_V6 && vip_bloom_bit(&AddrKey::v6(a)) == bit)
        .expect("an address of fd00:20::/64 shares the VIP's bit");
    // The global list: fd00:20::/64 only (a prefix longer than /16, so its
    // slot fd00::/16 asks the trie) and 2001:db8:1::/48.
    let config = format!(
        "[source_filter]\nallow = [\"fd00:20::/64\", \"10.20.0.0/24\", \"2001:db8:1::/48\"]\n{CONFIG_V6}"
    );
    let fx = Fixture::with_config("v6twin", &config);
    let echo = |dst: [u8; 16]| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT_V6, dst, 30)
            .icmpv6_echo_request(9, 2)
            .write(&mut f, b"ping6")
            .expect("build");
        f
    };
    assert_eq!(fx.run("xdp_lb", &echo(VIP_V6)).0, XDP_TX, "the VIP answers");
    let request = echo(twin);
    assert_eq!(
        fx.run("xdp_lb", &request),
        (XDP_PASS, request),
        "the twin does not"
    );
    let to = |src: [u8; 16], dst: [u8; 16]| {
        v6_frame(src, dst, |b| {
            let mut f = Vec::new();
            b.tcp(40000, 80, 1000, 65535)
                .ack(1)
                .write(&mut f, &[])
                .expect("build");
            f
        })
    };
    // An outside source: dropped toward the VIP, passed toward the twin.
    assert_eq!(fx.run("xdp_lb", &to(OUTSIDE_V6, VIP_V6)).0, XDP_DROP);
    assert_eq!(fx.run("xdp_lb", &to(OUTSIDE_V6, twin)).0, XDP_PASS);
    // The trie decides inside fd00::/16 and 2001:db8::/16.
    let mut other_64 = CLIENT_V6;
    other_64[7] = 0x21; // fd00:20:0:21::10: same /16, outside the /64
    let mut listed_48 = OUTSIDE_V6;
    listed_48[5] = 1; // 2001:db8:1::7
    for (src, want) in [
        (CLIENT_V6, XDP_TX),
        (other_64, XDP_DROP),
        (listed_48, XDP_TX),
        (
            [0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            XDP_DROP,
        ),
    ] {
        assert_eq!(fx.run("xdp_lb", &to(src, VIP_V6)).0, want, "{src:?}");
    }
    assert_eq!(fx.count(Outcome::DropSourceFilter), 3);
    assert_eq!(fx.count(Outcome::EchoReplied), 1);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn ipv6_vips_and_ipv4_over_ipv6() {
    lb_tests::require_root();
    let mut fx = Fixture::with_config("ipv6", CONFIG_V6);
    // 64 TCP flows to the IPv6 VIP: each 6in6 to the backend userspace
    // computes, both backends used.
    let mut seen = std::collections::HashSet::new();
    for sport in 40000..40064u16 {
        let frame = syn6(CLIENT_V6, sport, 80);
        let (action, out) = fx.run("xdp_lb", &frame);
        assert_eq!(action, XDP_TX, "flow {sport}");
        let f = flow6(CLIENT_V6, sport, 80, 6);
        let backend = v6(fx.expected_backend_any(0, &f));
        seen.insert(backend);
        assert_eq!(
            out,
            six_in_six(&frame, backend, hash_of(&f), true),
            "flow {sport}"
        );
    }
    assert_eq!(seen.len(), 2);
    // UDP to the IPv6 VIP.
    let frame = v6_frame(CLIENT_V6, VIP_V6, |b| {
        let mut f = Vec::new();
        b.udp(5353, 53).write(&mut f, b"query").expect("build");
        f
    });
    let (action, out) = fx.run("xdp_lb", &frame);
    assert_eq!(action, XDP_TX);
    let f = flow6(CLIENT_V6, 5353, 53, 17);
    assert_eq!(
        out,
        six_in_six(
            &frame,
            v6(fx.expected_backend_any(1, &f)),
            hash_of(&f),
            true
        )
    );
    // An IPv4 VIP over IPv6 backends: 4in6, EtherType IPv6.
    let frame = tcp_syn(CLIENT, VIP, 40000, 80);
    let (action, out) = fx.run("xdp_lb", &frame);
    assert_eq!(action, XDP_TX);
    let f = Flow6 {
        family: lb_common::FAMILY_V4,
        src: key4(CLIENT),
        dst: key4(VIP),
        sport: 40000,
        dport: 80,
        proto: 6,
    };
    assert_eq!(
        out,
        six_in_six(
            &frame,
            v6(fx.expected_backend_any(2, &f)),
            hash_of(&f),
            false
        )
    );
    // Extension headers are walked: hop-by-hop + destination options.
    let mut ext = Vec::new();
    {
        use etherparse::*;
        let mut ip = Ipv6Header {
            source: CLIENT_V6,
            destination: VIP_V6,
            hop_limit: 64,
            next_header: IpNumber::IPV6_HEADER_HOP_BY_HOP,
            ..Default::default()
        };
        let hbh =
            Ipv6RawExtHeader::new_raw(IpNumber::IPV6_DESTINATION_OPTIONS, &[0; 6]).expect("hbh");
        let dst = Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[0; 6]).expect("dst");
        let tcp = TcpHeader::new(40001, 80, 1, 1000);
        ip.payload_length = (hbh.header_len() + dst.header_len() + tcp.header_len()) as u16;
        ext.extend_from_slice(
            &Ethernet2Header {
                source: CLIENT_MAC,
                destination: LB_MAC,
                ether_type: EtherType::IPV6,
            }
            .to_bytes(),
        );
        ext.extend_from_slice(&ip.to_bytes());
        ext.extend_from_slice(&hbh.to_bytes());
        ext.extend_from_slice(&dst.to_bytes());
        ext.extend_from_slice(&tcp.to_bytes());
    }
    let (action, out) = fx.run("xdp_lb", &ext);
    assert_eq!(action, XDP_TX, "extension headers walked");
    let f = flow6(CLIENT_V6, 40001, 80, 6);
    assert_eq!(
        out,
        six_in_six(&ext, v6(fx.expected_backend_any(0, &f)), hash_of(&f), true)
    );
    // Five extension headers (one more than the program walks): the
    // documented rule, dropped and counted as drop_ipv6_ext.
    let mut deep = Vec::new();
    {
        use etherparse::*;
        let opts: Vec<Ipv6RawExtHeader> = (0..5)
            .map(|i| {
                let next = if i == 4 {
                    IpNumber::TCP
                } else {
                    IpNumber::IPV6_DESTINATION_OPTIONS
                };
                Ipv6RawExtHeader::new_raw(next, &[0; 6]).expect("options")
            })
            .collect();
        let tcp = TcpHeader::new(40002, 80, 1, 1000);
        let ip = Ipv6Header {
            source: CLIENT_V6,
            destination: VIP_V6,
            hop_limit: 64,
            next_header: IpNumber::IPV6_DESTINATION_OPTIONS,
            payload_length: (5 * 8 + tcp.header_len()) as u16,
            ..Default::default()
        };
        deep.extend_from_slice(&ext[..14]);
        deep.extend_from_slice(&ip.to_bytes());
        for o in &opts {
            deep.extend_from_slice(&o.to_bytes());
        }
        deep.extend_from_slice(&tcp.to_bytes());
    }
    let before = fx.count(Outcome::DropIpv6Ext);
    assert_eq!(
        fx.run("xdp_lb", &deep).0,
        XDP_DROP,
        "too many extension headers"
    );
    assert_eq!(fx.count(Outcome::DropIpv6Ext), before + 1);
    // Malformed IPv6: wrong version, payload length past the frame, cut
    // inside the header: dropped and counted as drop_malformed.
    let good = syn6(CLIENT_V6, 40003, 80);
    let mut version4 = good.clone();
    version4[14] = 0x40 | (version4[14] & 0x0f);
    let mut too_long = good.clone();
    let len = u16::from_be_bytes([too_long[18], too_long[19]]) + 1;
    too_long[18..20].copy_from_slice(&len.to_be_bytes());
    let cut = good[..14 + 30].to_vec();
    for (what, frame) in [
        ("version 4", version4),
        ("payload length past the frame", too_long),
        ("cut header", cut),
    ] {
        let before = fx.count(Outcome::DropMalformed);
        assert_eq!(fx.run("xdp_lb", &frame).0, XDP_DROP, "{what}");
        assert_eq!(fx.count(Outcome::DropMalformed), before + 1, "{what}");
    }
    // From 2001:db8::7: dropped by the IPv6 source filter.
    let before = fx.count(Outcome::DropSourceFilter);
    let (action, _) = fx.run("xdp_lb", &syn6(OUTSIDE_V6, 40000, 80));
    assert_eq!(action, XDP_DROP);
    assert_eq!(fx.count(Outcome::DropSourceFilter), before + 1);
    // A fragment header on VIP traffic: dropped.
    let mut frag = Vec::new();
    {
        use etherparse::*;
        let fh = Ipv6FragmentHeader::new(IpNumber::TCP, IpFragOffset::ZERO, true, 7);
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ip(IpHeaders::Ipv6(
                Ipv6Header {
                    source: CLIENT_V6,
                    destination: VIP_V6,
                    hop_limit: 64,
                    ..Default::default()
                },
                Ipv6Extensions {
                    fragment: Some(fh),
                    ..Default::default()
                },
            ))
            .tcp(40002, 80, 1, 1000)
            .write(&mut frag, &[])
            .expect("build");
    }
    let before = fx.count(Outcome::DropFragment);
    let (action, _) = fx.run("xdp_lb", &frag);
    assert_eq!(action, XDP_DROP);
    assert_eq!(fx.count(Outcome::DropFragment), before + 1);
    // Neighbour solicitation for the load balancer: passed unchanged.
    let ns = {
        use etherparse::*;
        let mut f = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT_V6, LB_V6, 255)
            .icmpv6(Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0; 4],
            })
            .write(&mut f, &LB_V6)
            .expect("build");
        f
    };
    let (action, out) = fx.run("xdp_lb", &ns);
    assert_eq!((action, out), (XDP_PASS, ns.clone()));
    // ICMPv6 echo to the VIP: answered.
    let echo6 = |src: [u8; 16], dst: [u8; 16], macs: ([u8; 6], [u8; 6]), request: bool| {
        let ip =
            PacketBuilder::ethernet2(macs.0, macs.1).ipv6(src, dst, if request { 30 } else { 64 });
        let b = if request {
            ip.icmpv6_echo_request(9, 2)
        } else {
            ip.icmpv6_echo_reply(9, 2)
        };
        let mut f = Vec::new();
        b.write(&mut f, b"ping6").expect("build");
        f
    };
    let (action, out) = fx.run(
        "xdp_lb",
        &echo6(CLIENT_V6, VIP_V6, (CLIENT_MAC, LB_MAC), true),
    );
    assert_eq!(action, XDP_TX);
    assert_eq!(out, echo6(VIP_V6, CLIENT_V6, (LB_MAC, CLIENT_MAC), false));
    // Too big: a 1500-byte IPv6 packet does not fit 6in6 on a 1500 link:
    // packet too big, MTU 1460, quoting 1232 bytes, from the VIP.
    let big = v6_frame(CLIENT_V6, VIP_V6, |b| {
        let mut f = Vec::new();
        b.tcp(40003, 80, 1, 65535)
            .ack(1)
            .write(&mut f, &vec![0x5a; 1500 - 40 - 20])
            .expect("build");
        f
    });
    let (action, out) = fx.run("xdp_lb", &big);
    assert_eq!(action, XDP_TX);
    let mut expected = Vec::new();
    PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC)
        .ipv6(VIP_V6, CLIENT_V6, 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1460 })
        .write(&mut expected, &big[14..14 + 1232])
        .expect("build");
    assert_eq!(out, expected, "packet too big");
    // Inbound packet too big about a reply VIP:80 -> client:40200: to the
    // flow's backend.
    let mut reply = Vec::new();
    PacketBuilder::ipv6(VIP_V6, CLIENT_V6, 64)
        .tcp(80, 40200, 1, 65535)
        .ack(1)
        .write(&mut reply, &[0u8; 100])
        .expect("build");
    let router: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let ptb = v6_frame(router, VIP_V6, |b| {
        let mut f = Vec::new();
        b.icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1400 })
            .write(&mut f, &reply[..48])
            .expect("build");
        f
    });
    let (action, out) = fx.run("xdp_lb", &ptb);
    assert_eq!(action, XDP_TX);
    let f = flow6(CLIENT_V6, 40200, 80, 6);
    assert_eq!(
        out,
        six_in_six(&ptb, v6(fx.expected_backend_any(0, &f)), hash_of(&f), true)
    );
    assert_eq!(fx.count(Outcome::IcmpForwarded), 1);
    // A packet too big announcing less than 1280: refused.
    let small = v6_frame(router, VIP_V6, |b| {
        let mut f = Vec::new();
        b.icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1000 })
            .write(&mut f, &reply[..48])
            .expect("build");
        f
    });
    let (action, _) = fx.run("xdp_lb", &small);
    assert_eq!(action, XDP_DROP);
    assert_eq!(fx.count(Outcome::DropIcmpBadMtu), 1);

    // The backend side strips 6in6 and 4in6 for served VIPs.
    use lb_userspace::dataplane::maps::take;
    let mut vips: aya::maps::HashMap<aya::maps::MapData, lb_common::AddrKey, u32> =
        take(&mut fx.ebpf, lb_common::MAP_DECAP_VIPS).expect("decap VIPs");
    let mut locals: aya::maps::HashMap<aya::maps::MapData, lb_common::AddrKey, u32> =
        take(&mut fx.ebpf, lb_common::MAP_DECAP_LOCAL).expect("decap locals");
    vips.insert(lb_common::AddrKey::v6(VIP_V6), 1, 0)
        .expect("vip");
    vips.insert(lb_common::AddrKey::v4(VIP), 1, 0).expect("vip");
    for last in [0x21u8, 0x22] {
        let mut be = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        be[15] = last;
        locals
            .insert(lb_common::AddrKey::v6(be), 1, 0)
            .expect("local");
    }
    for (what, inner) in [
        ("6in6", syn6(CLIENT_V6, 40010, 80)),
        ("4in6", tcp_syn(CLIENT, VIP, 40010, 80)),
    ] {
        let (_, tunnelled) = fx.run("xdp_lb", &inner);
        let (action, out) = fx.run("xdp_decap", &tunnelled);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_eq!(
            &out[12..],
            &inner[12..],
            "{what}: EtherType and packet restored"
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn gue_spreads_source_ports_and_decapsulates() {
    lb_tests::require_root();
    let config = CONFIG_V6.replace("[encap]\n", "[encap]\nkind = \"gue\"\ngue_port = 6080\n");
    let mut fx = Fixture::with_config("gue", &config);
    let mut ports = std::collections::HashSet::new();
    for sport in 41000..41016u16 {
        let frame = tcp_syn(CLIENT, [10, 20, 0, 101], sport, 80);
        let (action, out) = fx.run("xdp_lb", &frame);
        assert_eq!(action, XDP_TX);
        // Exactly: MACs, outer IPv4 (DF, TTL 64, protocol UDP), UDP from the
        // flow's port to 6080 with checksum 0, then the inner packet.
        let hash = flow_hash_v4(CLIENT, [10, 20, 0, 101], sport.to_be_bytes(), [0, 80], 6);
        let backend = fx.expected_backend(3, CLIENT, [10, 20, 0, 101], sport, 80, 6);
        let port = lb_common::rules::gue_source_port(hash);
        let mut expected = Vec::new();
        PacketBuilder::ethernet2(LB_MAC, backend_mac(backend))
            .ip(etherparse::IpHeaders::Ipv4(
                {
                    let mut h = Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, LB_ADDR, backend)
                        .expect("header");
                    h.dont_fragment = true;
                    h
                },
                Default::default(),
            ))
            .udp(port, 6080)
            .write(&mut expected, &frame[14..])
            .expect("build");
        // The builder computes the UDP checksum; GUE sends 0.
        expected[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(out, expected, "GUE over IPv4, flow {sport}");
        let (again_action, again) = fx.run("xdp_lb", &frame);
        assert_eq!(again_action, XDP_TX);
        assert_eq!(again, out, "one flow, one source port");
        ports.insert(port);
    }
    assert!(ports.len() > 8, "flows spread over source ports: {ports:?}");
    // GUE over IPv6 for the IPv6 VIP, exactly: outer IPv6 (next header UDP,
    // hop limit 64, flow label from the hash), UDP checksum 0.
    for sport in 41100..41108u16 {
        let frame = syn6(CLIENT_V6, sport, 80);
        let (action, out) = fx.run("xdp_lb", &frame);
        assert_eq!(action, XDP_TX);
        let f = flow6(CLIENT_V6, sport, 80, 6);
        let backend = v6(fx.expected_backend_any(0, &f));
        let hash = hash_of(&f);
        let inner = &frame[14..];
        let mut expected = Vec::new();
        expected.extend_from_slice(&backend_mac_v6(backend));
        expected.extend_from_slice(&LB_MAC);
        expected.extend_from_slice(&[0x86, 0xdd]);
        let outer = etherparse::Ipv6Header {
            traffic_class: 0,
            flow_label: etherparse::Ipv6FlowLabel::try_new(hash & 0xfffff).expect("20 bits"),
            payload_length: (8 + inner.len()) as u16,
            next_header: etherparse::IpNumber::UDP,
            hop_limit: 64,
            source: LB_V6,
            destination: backend.octets(),
        };
        expected.extend_from_slice(&outer.to_bytes());
        let port = lb_common::rules::gue_source_port(hash);
        expected.extend_from_slice(&port.to_be_bytes());
        expected.extend_from_slice(&6080u16.to_be_bytes());
        expected.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
        expected.extend_from_slice(&[0, 0]);
        expected.extend_from_slice(inner);
        assert_eq!(out, expected, "GUE over IPv6, flow {sport}");
    }

    // Decapsulation of each kind, for a served VIP only.
    use lb_userspace::dataplane::maps::take;
    let mut vips: aya::maps::HashMap<aya::maps::MapData, lb_common::AddrKey, u32> =
        take(&mut fx.ebpf, lb_common::MAP_DECAP_VIPS).expect("decap VIPs");
    let mut locals: aya::maps::HashMap<aya::maps::MapData, lb_common::AddrKey, u32> =
        take(&mut fx.ebpf, lb_common::MAP_DECAP_LOCAL).expect("decap locals");
    let mut cfg: aya::maps::Array<aya::maps::MapData, u32> =
        take(&mut fx.ebpf, lb_common::MAP_DECAP_CONFIG).expect("decap config");
    cfg.set(0, 6080, 0).expect("gue port");
    vips.insert(lb_common::AddrKey::v6(VIP_V6), 1, 0)
        .expect("vip");
    vips.insert(lb_common::AddrKey::v4([10, 20, 0, 101]), 1, 0)
        .expect("vip");
    locals
        .insert(lb_common::AddrKey::v4([10, 20, 0, 21]), 1, 0)
        .expect("local");
    locals
        .insert(lb_common::AddrKey::v4([10, 20, 0, 22]), 1, 0)
        .expect("local");
    let be: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21];
    let be2: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x22];
    locals
        .insert(lb_common::AddrKey::v6(be), 1, 0)
        .expect("local");
    locals
        .insert(lb_common::AddrKey::v6(be2), 1, 0)
        .expect("local");
    for (what, frame) in [
        (
            "GUE over IPv4",
            fx.run("xdp_lb", &tcp_syn(CLIENT, [10, 20, 0, 101], 41000, 80))
                .1,
        ),
        (
            "GUE over IPv6",
            fx.run("xdp_lb", &syn6(CLIENT_V6, 41100, 80)).1,
        ),
    ] {
        let (action, out) = fx.run("xdp_decap", &frame);
        assert_eq!(action, XDP_PASS, "{what}");
        let inner_start = frame.len() - out.len() + 14;
        assert_eq!(
            &out[14..],
            &frame[inner_start..],
            "{what}: the inner packet"
        );
        assert!(fx.count(Outcome::Decapsulated) > 0);
    }
    // Not a served VIP: untouched.
    vips.remove(&lb_common::AddrKey::v6(VIP_V6))
        .expect("remove");
    let frame = fx.run("xdp_lb", &syn6(CLIENT_V6, 41100, 80)).1;
    let (_, out) = fx.run("xdp_decap", &frame);
    assert_eq!(out, frame, "not a served VIP: passed untouched");
}

/// The next hops the agent resolves replace the FIB lookup: a cached entry
/// decides the MACs, a stale generation or an emptied entry sends the
/// packet through `bpf_fib_lookup` again, the entry's MTU takes the "too
/// big" rule; then the agent's own task (netlink, in the fixture's
/// namespace) follows a backend's MAC change under traffic.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn cached_next_hops_replace_the_fib_lookup_and_follow_a_mac_change() {
    lb_tests::require_root();
    use std::{
        collections::HashMap,
        time::{Duration, Instant},
    };

    use lb_userspace::dataplane::{
        nexthops::{self, NextHopWriter},
        resolve::{self, Resolved},
    };

    let mut fx = Fixture::new("nhcache");
    let frame = tcp_syn(CLIENT, VIP, 40000, 80);
    let backend = fx.expected_backend(0, CLIENT, VIP, 40000, 80, 6);
    let address = std::net::IpAddr::from(backend);
    let targets = fx.balancer.next_hop_targets();
    // The writer opens the map through a pin, as the agent does; the test
    // reads the same map through the object.
    let pins = PinDir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/lbpt-nhcache-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&pins.0).expect("pin directory");
    fx.ebpf
        .map_mut(lb_common::MAP_NEXTHOPS)
        .expect("next-hop map")
        .pin(pins.0.join(lb_common::MAP_NEXTHOPS))
        .expect("pin");
    let mut writer = NextHopWriter::from_pin(&pins.0).expect("writer");
    let id = targets
        .iter()
        .find(|t| t.address == address)
        .expect("target")
        .id;
    let entry = |fx: &Fixture| -> lb_common::CachedNextHop {
        let map: aya::maps::Array<_, lb_common::CachedNextHop> =
            aya::maps::Array::try_from(fx.ebpf.map(lb_common::MAP_NEXTHOPS).expect("map"))
                .expect("array");
        map.get(&id, 0).expect("entry")
    };
    let dmac = |out: &[u8]| <[u8; 6]>::try_from(&out[..6]).expect("6 bytes");
    let send = |fx: &Fixture| {
        let (action, out) = fx.run("xdp_lb", &frame);
        assert_eq!(action, XDP_TX);
        dmac(&out)
    };
    assert_eq!(
        send(&fx),
        backend_mac(backend),
        "no cache: the FIB's neighbour"
    );

    // A cached entry decides the MACs.
    let cached = [0x02, 0, 0, 0, 0, 0xee];
    // Every backend resolved alike.
    let resolved = |dmac: [u8; 6], mtu: u32| -> HashMap<_, _> {
        targets
            .iter()
            .map(|t| {
                let r = Resolved {
                    ifindex: fx.lb.ifindex,
                    smac: LB_MAC,
                    dmac,
                    mtu,
                };
                (t.address, Some(r))
            })
            .collect()
    };
    let applied = writer.apply(&targets, &resolved(cached, 1500));
    assert_eq!(applied.failed, 0);
    assert!(applied.written >= 1);
    assert_eq!(send(&fx), cached, "the cached next hop is used");
    // Resolved for an earlier user of the id: ignored.
    let stale: Vec<_> = targets
        .iter()
        .map(|t| nexthops::NextHopTarget {
            generation: t.generation.wrapping_add(1),
            ..*t
        })
        .collect();
    writer.apply(&stale, &resolved(cached, 1500));
    assert_eq!(send(&fx), backend_mac(backend), "a stale entry is not used");
    // The entry's MTU: a 1200-byte DF packet does not fit 1000.
    writer.apply(&targets, &resolved(cached, 1000));
    let sent = fx.count(Outcome::TooBigSent);
    let (action, _) = fx.run("xdp_lb", &big_segment(1200, true));
    assert_eq!(action, XDP_TX);
    assert_eq!(
        fx.count(Outcome::TooBigSent),
        sent + 1,
        "too big by the cached MTU"
    );
    // A restarted agent's writer finds the entries a killed one left, and
    // empties them.
    let emptied = NextHopWriter::from_pin(&pins.0)
        .expect("second writer")
        .clear();
    assert_eq!(
        emptied.emptied,
        targets.len(),
        "every entry left is emptied"
    );
    assert_eq!(
        send(&fx),
        backend_mac(backend),
        "an emptied entry is not used"
    );
    // Emptied: the FIB again.
    writer.apply(&targets, &resolved(cached, 1500));
    assert_eq!(send(&fx), cached);
    writer.clear();
    assert_eq!(
        send(&fx),
        backend_mac(backend),
        "an emptied entry is not used"
    );

    // The agent's task, in this namespace, under traffic: it resolves the
    // neighbour, then follows a MAC change within a second.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (targets_tx, targets_rx) = tokio::sync::watch::channel(targets.clone());
    let task = {
        let _in_runtime = runtime.enter();
        let (handle, notifications) = resolve::connect().expect("netlink");
        runtime.spawn(nexthops::maintain(
            handle,
            notifications,
            writer,
            targets_rx,
        ))
    };
    let wait_for = |fx: &Fixture, mac: [u8; 6]| -> Option<(u32, Duration)> {
        let start = Instant::now();
        let mut others = 0;
        while start.elapsed() < Duration::from_secs(3) {
            if send(fx) == mac {
                return Some((others, start.elapsed()));
            }
            others += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    };
    // The task resolved the permanent neighbour and wrote it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while entry(&fx).dmac != backend_mac(backend) {
        assert!(
            Instant::now() < deadline,
            "the task writes the entry: {:?}",
            entry(&fx)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let written = entry(&fx);
    assert_eq!(
        (written.ifindex, written.smac, written.mtu),
        (fx.lb.ifindex, LB_MAC, 1500)
    );
    assert!(wait_for(&fx, backend_mac(backend)).is_some());
    let new_mac = [0x02, 0, 0, 0, 0, 0x77];
    lb_tests::netns::ip(&[
        "-n",
        "lbpt-nhcache",
        "neigh",
        "replace",
        &address.to_string(),
        "lladdr",
        "02:00:00:00:00:77",
        "dev",
        "pt0",
        "nud",
        "permanent",
    ])
    .expect("neighbour change");
    let (old, took) = wait_for(&fx, new_mac).expect("the new MAC within 3 s");
    println!("MAC change: {old} packets to the old MAC, new MAC used after {took:?}");
    assert!(took < Duration::from_secs(1), "within one second: {took:?}");
    assert_eq!(
        entry(&fx).dmac,
        new_mac,
        "the cached entry follows the change"
    );
    drop(targets_tx);
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await })
        .expect("the task ends when its targets close")
        .expect("task");
    assert_eq!(
        entry(&fx).ifindex,
        0,
        "the task empties the cache when it ends"
    );
    assert_eq!(send(&fx), new_mac, "the FIB has the new MAC too");
}

/// A bpffs directory of pins, removed on drop.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Entries in the fixture's connection table.
fn conntrack_entries(fx: &Fixture) -> usize {
    let conns: aya::maps::HashMap<_, lb_common::FlowKey, lb_common::ConnValue> =
        aya::maps::HashMap::try_from(fx.ebpf.map(MAP_CONNS).expect("connection table"))
            .expect("hash map");
    conns.keys().filter(Result::is_ok).count()
}

/// A SYN takes the Maglev choice without being recorded; the flow's first
/// packet that is not a SYN records it; above `conntrack.max_new_per_cpu`
/// new flows keep their Maglev choice unrecorded and are counted.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn syns_are_not_recorded_and_new_flows_are_rate_limited() {
    lb_tests::require_root();
    // One CPU, so one bucket.
    pin_to_cpu0();
    // The section goes before the first VIP (TOML tables after arrays of
    // tables would belong to the last VIP).
    let at = CONFIG.find("[[vip]]").expect("a VIP");
    let config = format!(
        "{}[conntrack]\nmax_new_per_cpu = 5\n\n{}",
        &CONFIG[..at],
        &CONFIG[at..]
    );
    let fx = Fixture::with_config("synflood", &config);

    // 200 SYNs of distinct flows: each to its Maglev backend, none recorded.
    for sport in 20000..20200u16 {
        let (action, out) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, sport, 80));
        assert_eq!(action, XDP_TX);
        assert_eq!(
            outer_destination(&out),
            fx.expected_backend(0, CLIENT, VIP, sport, 80, 6),
            "a SYN goes to the Maglev choice"
        );
    }
    // A new VIP's recorded flows agree with its table: no lookup either.
    assert_eq!(fx.stats.conn(ConnEvent::SynDirect).packets, 200);
    assert_eq!(
        conntrack_entries(&fx),
        0,
        "SYNs never fill the connection table"
    );

    // The handshake's ACK records the flow, with the SYN's backend.
    let (_, syn_out) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 20000, 80));
    let (_, ack_out) = fx.run("xdp_lb", &tcp_ack(CLIENT, VIP, 20000, 80));
    assert_eq!(outer_destination(&ack_out), outer_destination(&syn_out));
    assert_eq!(fx.stats.conn(ConnEvent::Miss).packets, 1);
    assert_eq!(conntrack_entries(&fx), 1);

    // New UDP flows: 4 more tokens in this second (5 a second, one taken
    // by the ACK), then counted as limited and not recorded.
    for sport in 30000..30020u16 {
        let (action, _) = fx.run("xdp_lb", &udp_datagram(CLIENT, VIP, sport, 53, b"q"));
        assert_eq!(action, XDP_TX);
    }
    let recorded = conntrack_entries(&fx) - 1;
    let limited = fx.stats.conn(ConnEvent::Limited).packets;
    println!("20 new UDP flows at max_new_per_cpu = 5: {recorded} recorded, {limited} limited");
    assert!((4..=5).contains(&recorded), "recorded {recorded}");
    assert_eq!(limited as usize, 20 - recorded);
}

/// Walks the fixture's connection table for `check`, as the agent does.
fn walk_conns(fx: &Fixture, check: &ConnsCheck) -> ConnsVerdict {
    let conns: aya::maps::HashMap<_, FlowKey, ConnValue> =
        aya::maps::HashMap::try_from(fx.ebpf.map(MAP_CONNS).expect("connection table"))
            .expect("hash map");
    lb_userspace::dataplane::conns::walk_map(&conns, check, 1 << 16, &AtomicBool::new(false))
}

/// A TCP SYN takes the Maglev choice without a connection-table lookup only
/// while the VIP's recorded flows all agree with its table: after a table
/// change a SYN that reuses the 5-tuple of a moved flow goes where the rest
/// of that flow goes, and a walk of the connection table restores the
/// shortcut once no entry disagrees.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_syn_skips_the_connection_table_only_while_recorded_flows_agree() {
    lb_tests::require_root();
    let mut fx = Fixture::new("syndirect");
    let direct = |fx: &Fixture| fx.stats.conn(ConnEvent::SynDirect).packets;
    let syn_to = |fx: &Fixture, port: u16| {
        outer_destination(&fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, port, 80)).1)
    };

    // A new VIP: the SYN takes the table's choice with no lookup.
    assert_eq!(
        syn_to(&fx, 41000),
        fx.expected_backend(0, CLIENT, VIP, 41000, 80, 6)
    );
    assert_eq!(direct(&fx), 1);
    let ports: Vec<u16> = (41000..41064).collect();
    let recorded: Vec<[u8; 4]> = ports
        .iter()
        .map(|&p| outer_destination(&fx.run("xdp_lb", &tcp_ack(CLIENT, VIP, p, 80)).1))
        .collect();
    assert_eq!(fx.stats.conn(ConnEvent::Miss).packets, 64);

    // Drain .24: the table changes, its recorded flows stay on it.
    let (drained, moved, kept) = drain_24(&mut fx, &ports, &recorded);
    for &port in &moved {
        assert_ne!(fx.expected_backend(0, CLIENT, VIP, port, 80, 6), drained);
        assert_eq!(
            syn_to(&fx, port),
            drained,
            "a SYN reusing a moved flow's 5-tuple meets its recorded backend"
        );
    }
    assert_eq!(direct(&fx), 1, "after the change, SYNs look their flows up");

    // A walk finds the moved flows: nothing set.
    let check = fx
        .balancer
        .conns_check(Instant::now() + CONNS_GRACE)
        .expect("web waits for a walk");
    let verdict = walk_conns(&fx, &check);
    // It stops at the first disagreeing entry: web was its only candidate.
    assert!(!verdict.complete && verdict.entries <= 64, "{verdict:?}");
    assert!(verdict.agree.is_empty(), "{verdict:?}");
    assert!(
        fx.balancer
            .conns_checked(&verdict)
            .expect("write")
            .is_empty()
    );
    assert_eq!(syn_to(&fx, moved[0]), drained);

    // The moved flows end and leave the table: the next walk sets the flag.
    remove_flows(&mut fx, &moved);
    let check = fx
        .balancer
        .conns_check(Instant::now() + CONNS_GRACE)
        .expect("web still waits");
    let verdict = walk_conns(&fx, &check);
    assert!(verdict.complete);
    assert_eq!(verdict.entries, 64 - moved.len());
    assert_eq!(
        fx.balancer.conns_checked(&verdict).expect("write"),
        vec!["web".to_string()]
    );
    assert!(
        fx.balancer
            .conns_check(Instant::now() + CONNS_GRACE)
            .is_none()
    );
    assert_eq!(
        syn_to(&fx, kept),
        fx.expected_backend(0, CLIENT, VIP, kept, 80, 6)
    );
    assert_eq!(
        syn_to(&fx, 42000),
        fx.expected_backend(0, CLIENT, VIP, 42000, 80, 6)
    );
    assert_eq!(direct(&fx), 3, "the shortcut is back");

    // A health change clears it: SYNs look their flows up again.
    let looked_up = fx.stats.conn(ConnEvent::Syn).packets;
    assert!(fx.balancer.set_health(0, 0, false).expect("health"));
    assert_eq!(
        syn_to(&fx, 42001),
        fx.expected_backend(0, CLIENT, VIP, 42001, 80, 6)
    );
    assert_eq!(direct(&fx), 3);
    assert_eq!(fx.stats.conn(ConnEvent::Syn).packets, looked_up + 1);
}

/// Packets of established flows: read from the connection table, or from
/// the CPU's flow cache (which of the two depends on the CPU a test run
/// lands on).
fn established_hits(fx: &Fixture) -> u64 {
    fx.stats.conn(ConnEvent::Hit).packets + fx.stats.conn(ConnEvent::HitCached).packets
}

/// Drains backend .24 (weight 0) of `CONFIG`'s first VIP: its address, the
/// ports of the flows (`ports`, recorded on `recorded`) that were on it (at
/// least 8), and the port of one that was not.
fn drain_24(fx: &mut Fixture, ports: &[u16], recorded: &[[u8; 4]]) -> ([u8; 4], Vec<u16>, u16) {
    fx.reload(&CONFIG.replacen(
        "  address = \"10.20.0.24\"\n",
        "  address = \"10.20.0.24\"\n  weight = 0\n",
        1,
    ));
    let drained = [10, 20, 0, 24];
    let moved: Vec<u16> = ports
        .iter()
        .zip(recorded)
        .filter(|(_, b)| **b == drained)
        .map(|(p, _)| *p)
        .collect();
    assert!(moved.len() >= 8, "{} of 64 flows on .24", moved.len());
    let kept = ports
        .iter()
        .zip(recorded)
        .find(|(_, b)| **b != drained)
        .map(|(p, _)| *p)
        .expect("a flow not on .24");
    (drained, moved, kept)
}

/// Removes the connection-table entries of the TCP flows from `CLIENT`'s
/// `ports` to the VIP's port 80 (as the LRU evicts them; their flow-cache
/// copies stay).
fn remove_flows(fx: &mut Fixture, ports: &[u16]) {
    let mut conns: aya::maps::HashMap<_, FlowKey, ConnValue> =
        aya::maps::HashMap::try_from(fx.ebpf.map_mut(MAP_CONNS).expect("connection table"))
            .expect("hash map");
    for &port in ports {
        conns
            .remove(&FlowKey::v4(
                CLIENT,
                VIP,
                port.to_be_bytes(),
                80u16.to_be_bytes(),
                6,
            ))
            .expect("remove a flow's entry");
    }
}

/// Sends a SYN from `CLIENT`'s `port` to the VIP's port 80 and checks it
/// went to the table's choice, which is not `drained`; that choice.
fn syn_to_table_choice(fx: &Fixture, port: u16, drained: [u8; 4]) -> [u8; 4] {
    let fresh = fx.expected_backend(0, CLIENT, VIP, port, 80, 6);
    assert_ne!(fresh, drained);
    assert_eq!(
        outer_destination(&fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, port, 80)).1),
        fresh
    );
    fresh
}

/// Pins the calling thread to CPU 0, so every test run meets the same
/// per-CPU state (token buckets, flow cache).
fn pin_to_cpu0() {
    lb_tests::pin_to_cpu(0, 0).expect("pinning to CPU 0");
}

/// The flow cache (`LB_FLOW_CACHE`): a recorded flow's packets use this
/// CPU's copy of its entry, and read the connection table again once per
/// `FLOW_CACHE_REFRESH` uses. A copy outlives its entry only until a SYN
/// of the flow looks it up (the SYN drops it) or the agent moves the epoch
/// before a walk lets SYNs skip the table: a client reusing the 5-tuple of
/// a flow that left the table is not split between two backends.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_flow_cache_serves_established_flows_and_yields_to_syns_and_walks() {
    lb_tests::require_root();
    // One CPU, so one flow cache.
    pin_to_cpu0();
    let mut fx = Fixture::new("flowcache");
    let cached = |fx: &Fixture| fx.stats.conn(ConnEvent::HitCached).packets;
    let from_table = |fx: &Fixture| fx.stats.conn(ConnEvent::Hit).packets;
    let ack_to = |fx: &Fixture, port: u16| {
        outer_destination(&fx.run("xdp_lb", &tcp_ack(CLIENT, VIP, port, 80)).1)
    };

    // A recorded flow: its copy serves FLOW_CACHE_REFRESH packets, then the
    // table is read again.
    let first = ack_to(&fx, 43000);
    assert_eq!(fx.stats.conn(ConnEvent::Miss).packets, 1);
    for _ in 0..FLOW_CACHE_REFRESH {
        assert_eq!(ack_to(&fx, 43000), first);
    }
    assert_eq!(cached(&fx), u64::from(FLOW_CACHE_REFRESH));
    assert_eq!(from_table(&fx), 0);
    assert_eq!(ack_to(&fx, 43000), first);
    assert_eq!(from_table(&fx), 1, "the refresh reads the connection table");
    assert_eq!(ack_to(&fx, 43000), first);
    assert_eq!(cached(&fx), u64::from(FLOW_CACHE_REFRESH) + 1);

    // 64 flows, then .24 drained: its flows keep it, new ones avoid it.
    let ports: Vec<u16> = (43100..43164).collect();
    let recorded: Vec<[u8; 4]> = ports.iter().map(|&p| ack_to(&fx, p)).collect();
    let (drained, moved, kept) = drain_24(&mut fx, &ports, &recorded);
    // Their entries leave the table (as the LRU evicts them), and the
    // first flow's (it may be on .24 too); the copies still serve.
    remove_flows(&mut fx, &[&moved[..], &[43000]].concat());
    let before = cached(&fx);
    assert_eq!(ack_to(&fx, moved[0]), drained);
    assert_eq!(ack_to(&fx, moved[1]), drained);
    assert_eq!(cached(&fx), before + 2, "served by the copies");

    // A client reuses moved[0]'s 5-tuple: its SYN (the flag is clear since
    // the drain) finds no entry, takes the table's choice and drops the
    // copy; the flow's next packet follows the SYN.
    let fresh = syn_to_table_choice(&fx, moved[0], drained);
    assert_eq!(fx.stats.conn(ConnEvent::Syn).packets, 1);
    let misses = fx.stats.conn(ConnEvent::Miss).packets;
    assert_eq!(ack_to(&fx, moved[0]), fresh, "the copy is gone");
    assert_eq!(fx.stats.conn(ConnEvent::Miss).packets, misses + 1);

    // A walk finds every remaining entry in agreement and sets the flag;
    // the epoch moved first, so moved[1]'s copy no longer serves: its SYN
    // skips the table and its next packet follows it.
    let check = fx
        .balancer
        .conns_check(Instant::now() + CONNS_GRACE)
        .expect("web waits for a walk");
    let verdict = walk_conns(&fx, &check);
    assert!(verdict.complete, "{verdict:?}");
    assert_eq!(
        fx.balancer.conns_checked(&verdict).expect("write"),
        vec!["web".to_string()]
    );
    let fresh = syn_to_table_choice(&fx, moved[1], drained);
    assert_eq!(fx.stats.conn(ConnEvent::SynDirect).packets, 1);
    let before = cached(&fx);
    assert_eq!(ack_to(&fx, moved[1]), fresh, "the copy was retired");
    assert_eq!(cached(&fx), before);
    // Every flow's next packet reads the table once, then its copy serves.
    let hits = from_table(&fx);
    assert_eq!(
        ack_to(&fx, kept),
        fx.expected_backend(0, CLIENT, VIP, kept, 80, 6)
    );
    assert_eq!(from_table(&fx), hits + 1);
    assert_eq!(
        ack_to(&fx, kept),
        fx.expected_backend(0, CLIENT, VIP, kept, 80, 6)
    );
    assert_eq!(cached(&fx), before + 1);
}
