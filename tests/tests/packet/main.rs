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

/// The load balancer's addresses: outer sources, and SNAT addresses
/// (10.20.0.2, fd00:20::2) with the ports outside Linux's default
/// `ip_local_port_range` (1024-32767).
fn sources() -> lb_userspace::balancer::Sources {
    let mut s = lb_userspace::balancer::Sources::from(Ipv4Addr::from(LB_ADDR));
    s.v6 = std::net::Ipv6Addr::from(LB_V6);
    s.nat.v6[0] = LB_V6;
    s.nat.v6_count = 1;
    s
}

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
        // The client (.10, where NAT replies go), .21, .22, .24 and the
        // disruption test's .31 to .41; not .23.
        let mut neighbours: Vec<(String, String)> = [21u8, 22, 24]
            .into_iter()
            .chain(31..=41)
            .map(|b| (format!("10.20.0.{b}"), format!("02:00:00:00:00:{b:02x}")))
            .collect();
        neighbours.push(("10.20.0.10".into(), "02:00:00:00:00:10".into()));
        // fd00:20::21 and ::22 (0x21 = 33) and the IPv6 disruption test's
        // ::1f to ::29.
        for b in std::iter::once(0x10).chain(31u8..=41) {
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
            sources(),
            regions,
        )
        .expect("fill maps");
        object::load_tail_programs(&mut ebpf).expect("xdp_lb_v6 in LB_PROGS");
        // xdp_decap takes tunnels from the outer sources `lb decap` takes
        // by default: the private ranges, which hold the lab's addresses.
        lb_userspace::cli::decap::allow_tunnels_from(
            &mut ebpf,
            &lb_userspace::cli::decap::default_sources(),
        )
        .expect("outer sources");
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
        self.balancer.apply(&config, sources()).expect("reload");
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

/// Share of flows whose backend differs between `a` and `b`, among the
/// flows `which` selects (by their backend in `a`).
fn moved<T: PartialEq>(a: &[T], b: &[T], which: impl Fn(&T) -> bool) -> (usize, usize) {
    let pairs = a.iter().zip(b).filter(|(x, _)| which(x));
    let total = pairs.clone().count();
    (pairs.filter(|(x, y)| x != y).count(), total)
}

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

/// Packets of established flows: read from the connection table, or from
/// the CPU's flow cache (which of the two depends on the CPU a test run
/// lands on).
fn established_hits(fx: &Fixture) -> u64 {
    fx.stats.conn(ConnEvent::Hit).packets + fx.stats.conn(ConnEvent::HitCached).packets
}

/// Pins the calling thread to CPU 0, so every test run meets the same
/// per-CPU state (token buckets, flow cache).
fn pin_to_cpu0() {
    lb_tests::pin_to_cpu(0, 0).expect("pinning to CPU 0");
}

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

mod backends;
mod conntrack;
mod filters;
mod fixtures;
mod ipv6_gue;
mod nat;
mod nexthops;
