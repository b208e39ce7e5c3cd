//! The NAT modes through `xdp_lb` and its NAT programs: exact
//! frames both ways for TCP and UDP over IPv4 and IPv6 (checksums are
//! etherparse's: the expected frames are built by it), the same client
//! port on every reply, a reply with no translation passed untouched, SNAT
//! port exhaustion, FIN/RST shortening, `dnat`, and a DSR VIP beside NAT
//! VIPs.

use std::sync::atomic::AtomicBool;

use aya::maps::HashMap as AyaHashMap;
use lb_common::{
    FAMILY_V6, NAT_F_ANSWERED, NAT_F_CLOSING, NAT_F_REPLY, NatEntry, NatTimeouts, expired,
    flow_hash, snat_port,
};

use super::*;

const NAT_CONFIG: &str = r#"
[maglev]
table_size = 251
[nat]
max_entries = 1024
[[vip]]
name = "web"
address = "10.20.0.100"
port = 80
protocol = "tcp"
mode = "nat"
  [[vip.backend]]
  address = "10.20.0.21"
  port = 8080
  [[vip.backend]]
  address = "10.20.0.22"
  port = 8080
[[vip]]
name = "dns"
address = "10.20.0.100"
port = 53
protocol = "udp"
mode = "nat"
  [[vip.backend]]
  address = "10.20.0.21"
  port = 5353
[[vip]]
name = "web6"
address = "fd00:20::100"
port = 80
protocol = "tcp"
mode = "nat"
  [[vip.backend]]
  address = "fd00:20::21"
  port = 8080
[[vip]]
name = "dns6"
address = "fd00:20::100"
port = 53
protocol = "udp"
mode = "nat"
  [[vip.backend]]
  address = "fd00:20::22"
  port = 5353
[[vip]]
name = "kept"
address = "10.20.0.100"
port = 443
protocol = "tcp"
mode = "dnat"
  [[vip.backend]]
  address = "10.20.0.24"
  port = 8443
[[vip]]
name = "dsr"
address = "10.20.0.100"
port = 22
protocol = "tcp"
  [[vip.backend]]
  address = "10.20.0.22"
"#;

/// The SNAT ports of the fixture's sources (`sources()`): 1024-32767.
const PORT_FIRST: u32 = 1024;
const PORT_COUNT: u32 = 32767 - 1024 + 1;

const V6_VIP: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const V6_WEB: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x21];
const V6_DNS: [u8; 16] = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x22];

/// An IPv4 address as in map keys.
fn key4(a: [u8; 4]) -> [u8; 16] {
    let mut k = [0; 16];
    k[..4].copy_from_slice(&a);
    k
}

/// The NAT table's entry of `key`.
fn nat_entry(fx: &Fixture, key: &FlowKey) -> Option<NatEntry> {
    let map: AyaHashMap<_, FlowKey, NatEntry> =
        AyaHashMap::try_from(fx.ebpf.map("LB_NAT").expect("LB_NAT")).expect("hash map");
    map.get(key, 0).ok()
}

/// The SNAT port of the forward entry of `key`, checked against the
/// shared rule's first try.
#[track_caller]
fn snat_port_of(fx: &Fixture, key: &FlowKey) -> u16 {
    let e = nat_entry(fx, key).expect("forward entry");
    assert_eq!(e.flags & NAT_F_REPLY, 0);
    let port = u16::from_be_bytes(e.sport);
    assert_eq!(port, snat_port(PORT_FIRST, PORT_COUNT, key.hash(), 0));
    port
}

#[track_caller]
fn assert_checksums_valid(frame: &[u8]) {
    let p = etherparse::SlicedPacket::from_ethernet(frame).expect("parse");
    let payload = match &p.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => t.payload().to_vec(),
        Some(etherparse::TransportSlice::Udp(u)) => u.payload().to_vec(),
        _ => panic!("TCP or UDP"),
    };
    match (&p.net, &p.transport) {
        (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(t))) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            let c = t.to_header().calc_checksum_ipv4(&h, &payload).expect("sum");
            assert_eq!(t.checksum(), c, "TCP checksum");
        }
        (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Udp(u))) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            let c = u.to_header().calc_checksum_ipv4(&h, &payload).expect("sum");
            assert_eq!(u.checksum(), c, "UDP checksum");
        }
        (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Tcp(t))) => {
            let h = ip.header().to_header();
            let c = t.to_header().calc_checksum_ipv6(&h, &payload).expect("sum");
            assert_eq!(t.checksum(), c, "TCP checksum");
        }
        (Some(etherparse::NetSlice::Ipv6(ip)), Some(etherparse::TransportSlice::Udp(u))) => {
            let h = ip.header().to_header();
            let c = u.to_header().calc_checksum_ipv6(&h, &payload).expect("sum");
            assert_eq!(u.checksum(), c, "UDP checksum");
        }
        _ => panic!("IP and TCP or UDP"),
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nat_tcp_v4_translates_both_ways_with_exact_frames() {
    lb_tests::require_root();
    let fx = Fixture::with_config("nat-tcp4", NAT_CONFIG);
    let backend = fx.expected_backend(0, CLIENT, VIP, 40000, 80, 6);
    let key = FlowKey::v4(CLIENT, VIP, 40000u16.to_be_bytes(), 80u16.to_be_bytes(), 6);

    // SYN client -> VIP:80 becomes LB:snat -> backend:8080.
    let (action, out) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 40000, 80));
    assert_eq!(action, XDP_TX);
    let port = snat_port_of(&fx, &key);
    let expected = Frame::eth(LB_MAC, backend_mac(backend))
        .ipv4(LB_ADDR, backend)
        .tcp_syn(port, 8080)
        .build();
    assert_eq!(out, expected, "the translated SYN, exact");
    assert_checksums_valid(&out);
    assert_eq!(fx.count(Outcome::NatForwarded), 1);

    // The backend's answer to LB:snat becomes VIP:80 -> client:40000.
    let reply = Frame::eth(backend_mac(backend), LB_MAC)
        .ipv4(backend, LB_ADDR)
        .tcp_ack(8080, port)
        .payload(b"HTTP/1.1 200 OK\r\n")
        .build();
    for _ in 0..3 {
        let (action, out) = fx.run("xdp_lb", &reply);
        assert_eq!(action, XDP_TX);
        let expected = Frame::eth(LB_MAC, CLIENT_MAC)
            .ipv4(VIP, CLIENT)
            .tcp_ack(80, 40000)
            .payload(b"HTTP/1.1 200 OK\r\n")
            .build();
        assert_eq!(
            out, expected,
            "the translated reply, exact: the same client port each time"
        );
        assert_checksums_valid(&out);
    }
    assert_eq!(fx.count(Outcome::NatReplied), 3);

    // The flow's next packet keeps its SNAT port and backend.
    let (action, out) = fx.run("xdp_lb", &tcp_ack(CLIENT, VIP, 40000, 80));
    assert_eq!(action, XDP_TX);
    let expected = Frame::eth(LB_MAC, backend_mac(backend))
        .ipv4(LB_ADDR, backend)
        .tcp_ack(port, 8080)
        .build();
    assert_eq!(out, expected);

    // The reply entry records that the backend answered.
    let reply_key = FlowKey::v4(
        backend,
        LB_ADDR,
        8080u16.to_be_bytes(),
        port.to_be_bytes(),
        6,
    );
    let r = nat_entry(&fx, &reply_key).expect("reply entry");
    assert_eq!(
        r.flags & (NAT_F_REPLY | NAT_F_ANSWERED),
        NAT_F_REPLY | NAT_F_ANSWERED
    );
    assert_eq!((r.src, r.dst), (key4(VIP), key4(CLIENT)));
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nat_udp_v4_and_both_protocols_over_ipv6_translate_both_ways() {
    lb_tests::require_root();
    let fx = Fixture::with_config("nat-udp", NAT_CONFIG);
    let backend = [10, 20, 0, 21];
    let (action, out) = fx.run("xdp_lb", &udp_datagram(CLIENT, VIP, 5000, 53, b"query"));
    assert_eq!(action, XDP_TX);
    let key = FlowKey::v4(CLIENT, VIP, 5000u16.to_be_bytes(), 53u16.to_be_bytes(), 17);
    let port = snat_port_of(&fx, &key);
    let expected = Frame::eth(LB_MAC, backend_mac(backend))
        .ipv4(LB_ADDR, backend)
        .udp(port, 5353)
        .payload(b"query")
        .build();
    assert_eq!(out, expected);
    assert_checksums_valid(&out);
    let reply = Frame::eth(backend_mac(backend), LB_MAC)
        .ipv4(backend, LB_ADDR)
        .udp(5353, port)
        .payload(b"answer")
        .build();
    let (action, out) = fx.run("xdp_lb", &reply);
    assert_eq!(action, XDP_TX);
    let expected = Frame::eth(LB_MAC, CLIENT_MAC)
        .ipv4(VIP, CLIENT)
        .udp(53, 5000)
        .payload(b"answer")
        .build();
    assert_eq!(out, expected);
    assert_checksums_valid(&out);

    // IPv6: TCP to web6 (fd00:20::21:8080), UDP to dns6 (fd00:20::22:5353).
    for (proto, vport, backend, bport) in [(6u8, 80u16, V6_WEB, 8080u16), (17, 53, V6_DNS, 5353)] {
        let bmac = [0x02, 0, 0, 0, 0, backend[15]];
        let client_frame = |f: Frame| -> Frame {
            if proto == 6 {
                f.tcp_syn(41000, vport)
            } else {
                f.udp(41000, vport).payload(b"q6")
            }
        };
        let frame = client_frame(Frame::eth(CLIENT_MAC, LB_MAC).ipv6(CLIENT_V6, V6_VIP)).build();
        let (action, out) = fx.run("xdp_lb", &frame);
        assert_eq!(action, XDP_TX, "IPv6 proto {proto}");
        let key = FlowKey::new(
            FAMILY_V6,
            CLIENT_V6,
            V6_VIP,
            41000u16.to_be_bytes(),
            vport.to_be_bytes(),
            proto,
        );
        let port = snat_port_of(&fx, &key);
        assert_eq!(
            flow_hash(
                FAMILY_V6,
                &CLIENT_V6,
                &V6_VIP,
                41000u16.to_be_bytes(),
                vport.to_be_bytes(),
                proto
            ),
            key.hash()
        );
        let to_backend = Frame::eth(LB_MAC, bmac).ipv6(LB_V6, backend);
        let expected = if proto == 6 {
            to_backend.tcp_syn(port, bport)
        } else {
            to_backend.udp(port, bport).payload(b"q6")
        }
        .build();
        assert_eq!(out, expected, "IPv6 proto {proto}: exact");
        assert_checksums_valid(&out);
        let back = Frame::eth(bmac, LB_MAC).ipv6(backend, LB_V6);
        let reply = if proto == 6 {
            back.tcp_ack(bport, port)
        } else {
            back.udp(bport, port).payload(b"a6")
        }
        .build();
        let (action, out) = fx.run("xdp_lb", &reply);
        assert_eq!(action, XDP_TX);
        let to_client = Frame::eth(LB_MAC, CLIENT_MAC).ipv6(V6_VIP, CLIENT_V6);
        let expected = if proto == 6 {
            to_client.tcp_ack(vport, 41000)
        } else {
            to_client.udp(vport, 41000).payload(b"a6")
        }
        .build();
        assert_eq!(out, expected, "IPv6 proto {proto}: the reply, exact");
        assert_checksums_valid(&out);
    }
    assert_eq!(fx.count(Outcome::NatForwarded), 3);
    assert_eq!(fx.count(Outcome::NatReplied), 3);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_packet_to_a_snat_port_with_no_translation_is_passed_untouched() {
    lb_tests::require_root();
    let fx = Fixture::with_config("nat-miss", NAT_CONFIG);
    // To a SNAT port of the LB's address, from a backend, never translated:
    // perhaps the host's own connection.
    let frame = Frame::eth(backend_mac([10, 20, 0, 21]), LB_MAC)
        .ipv4([10, 20, 0, 21], LB_ADDR)
        .tcp_ack(8080, 2000)
        .build();
    let before = fx.count(Outcome::Passed);
    let (action, out) = fx.run("xdp_lb", &frame);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, frame, "untouched");
    assert_eq!(fx.count(Outcome::Passed), before + 1);
    // Outside the SNAT ports (the host's own range): passed, never looked up.
    let frame = Frame::eth(backend_mac([10, 20, 0, 21]), LB_MAC)
        .ipv4([10, 20, 0, 21], LB_ADDR)
        .tcp_ack(8080, 40000)
        .build();
    let (action, out) = fx.run("xdp_lb", &frame);
    assert_eq!((action, out), (XDP_PASS, frame));
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_new_flow_whose_snat_ports_are_all_taken_is_dropped_and_counted() {
    lb_tests::require_root();
    let mut fx = Fixture::with_config("nat-exhaust", NAT_CONFIG);
    let backend = fx.expected_backend(0, CLIENT, VIP, 40001, 80, 6);
    let key = FlowKey::v4(CLIENT, VIP, 40001u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
    {
        // Every port the flow may try is taken toward its backend.
        let mut map: AyaHashMap<_, FlowKey, NatEntry> =
            AyaHashMap::try_from(fx.ebpf.map_mut("LB_NAT").expect("LB_NAT")).expect("hash map");
        for attempt in 0..lb_common::SNAT_PORT_TRIES {
            let port = snat_port(PORT_FIRST, PORT_COUNT, key.hash(), attempt);
            let taken = FlowKey::v4(
                backend,
                LB_ADDR,
                8080u16.to_be_bytes(),
                port.to_be_bytes(),
                6,
            );
            let entry = NatEntry {
                flags: NAT_F_REPLY,
                ..NatEntry::default()
            };
            map.insert(taken, entry, 0).expect("insert");
        }
    }
    let (action, _) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 40001, 80));
    assert_eq!(action, XDP_DROP);
    assert_eq!(fx.count(Outcome::DropNatNoPort), 1);
    assert!(nat_entry(&fx, &key).is_none(), "no half translation left");
    // Another client port finds a free SNAT port.
    let (action, _) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 40002, 80));
    assert_eq!(action, XDP_TX);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn fin_and_rst_shorten_a_translation() {
    lb_tests::require_root();
    let fx = Fixture::with_config("nat-fin", NAT_CONFIG);
    let backend = fx.expected_backend(0, CLIENT, VIP, 40003, 80, 6);
    let key = FlowKey::v4(CLIENT, VIP, 40003u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
    fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 40003, 80));
    let port = snat_port_of(&fx, &key);
    let reply_key = FlowKey::v4(
        backend,
        LB_ADDR,
        8080u16.to_be_bytes(),
        port.to_be_bytes(),
        6,
    );
    fx.run(
        "xdp_lb",
        &Frame::eth(backend_mac(backend), LB_MAC)
            .ipv4(backend, LB_ADDR)
            .tcp_ack(8080, port)
            .build(),
    );
    let t = NatTimeouts::new(3600);
    let open = |fx: &Fixture| {
        let (f, r) = (
            nat_entry(fx, &key).expect("fwd"),
            nat_entry(fx, &reply_key).expect("rev"),
        );
        let now = f.last_seen.max(r.last_seen);
        // Still live 30 s on while open; gone 10 s on once closing.
        (
            expired(6, Some(&f), Some(&r), now + 30, &t),
            expired(6, Some(&f), Some(&r), now + 10, &t),
            (f.flags | r.flags) & NAT_F_CLOSING != 0,
        )
    };
    assert_eq!(open(&fx), (false, false, false), "established: an hour");
    // The client's FIN marks the forward entry.
    let (action, _) = fx.run(
        "xdp_lb",
        &Frame::eth(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT, VIP)
            .tcp_end(40003, 80, false)
            .build(),
    );
    assert_eq!(action, XDP_TX);
    assert_eq!(open(&fx), (true, true, true), "closing: 10 s");
    assert_ne!(nat_entry(&fx, &key).expect("fwd").flags & NAT_F_CLOSING, 0);
    // The backend's RST marks the reply entry.
    let (action, out) = fx.run(
        "xdp_lb",
        &Frame::eth(backend_mac(backend), LB_MAC)
            .ipv4(backend, LB_ADDR)
            .tcp_end(8080, port, true)
            .build(),
    );
    assert_eq!(action, XDP_TX);
    assert_checksums_valid(&out);
    assert_ne!(
        nat_entry(&fx, &reply_key).expect("rev").flags & NAT_F_CLOSING,
        0
    );
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn dnat_keeps_the_client_s_address_and_translates_the_reply() {
    lb_tests::require_root();
    let fx = Fixture::with_config("nat-dnat", NAT_CONFIG);
    let backend = [10, 20, 0, 24];
    let (action, out) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 40010, 443));
    assert_eq!(action, XDP_TX);
    let expected = Frame::eth(LB_MAC, backend_mac(backend))
        .ipv4(CLIENT, backend)
        .tcp_syn(40010, 8443)
        .build();
    assert_eq!(
        out, expected,
        "client -> backend:8443, the client's address kept"
    );
    assert_checksums_valid(&out);
    // The backend answers the client itself, routed through the LB.
    let reply = Frame::eth(backend_mac(backend), LB_MAC)
        .ipv4(backend, CLIENT)
        .tcp_ack(8443, 40010)
        .build();
    let (action, out) = fx.run("xdp_lb", &reply);
    assert_eq!(action, XDP_TX);
    let expected = Frame::eth(LB_MAC, CLIENT_MAC)
        .ipv4(VIP, CLIENT)
        .tcp_ack(443, 40010)
        .build();
    assert_eq!(out, expected, "VIP:443 -> client");
    assert_checksums_valid(&out);
    // Traffic of the host that is no reply passes untouched.
    let other = Frame::eth(backend_mac(backend), LB_MAC)
        .ipv4(backend, CLIENT)
        .tcp_ack(9999, 40010)
        .build();
    let (action, out) = fx.run("xdp_lb", &other);
    assert_eq!((action, out), (XDP_PASS, other));
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_dsr_vip_beside_nat_vips_still_encapsulates() {
    lb_tests::require_root();
    let fx = Fixture::with_config("nat-dsr", NAT_CONFIG);
    let frame = tcp_syn(CLIENT, VIP, 40020, 22);
    let (action, out) = fx.run("xdp_lb", &frame);
    assert_eq!(action, XDP_TX);
    assert_eq!(outer_destination(&out), [10, 20, 0, 22]);
    assert_eq!(
        &out[14 + 20..],
        &frame[14..],
        "the client's packet inside, untouched"
    );
    assert_eq!(fx.count(Outcome::Forwarded), 1);
    assert_eq!(fx.count(Outcome::NatForwarded), 0);
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_agent_s_sweep_counts_live_translations_and_removes_expired_ones_whole() {
    lb_tests::require_root();
    let mut fx = Fixture::with_config("nat-sweep", NAT_CONFIG);
    // Two open flows and one closed by the client's FIN.
    for sport in [40100u16, 40101, 40102] {
        let (action, _) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, sport, 80));
        assert_eq!(action, XDP_TX);
    }
    let closed = FlowKey::v4(CLIENT, VIP, 40102u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
    fx.run(
        "xdp_lb",
        &Frame::eth(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT, VIP)
            .tcp_end(40102, 80, false)
            .build(),
    );
    let last = nat_entry(&fx, &closed).expect("forward entry").last_seen;
    let t = NatTimeouts::new(3600);
    let stop = AtomicBool::new(false);
    let web = u16::try_from(fx.balancer.vips()[0].id).expect("VIP id");
    let sweep = |fx: &mut Fixture, now: u32| {
        let mut map: AyaHashMap<_, FlowKey, NatEntry> =
            AyaHashMap::try_from(fx.ebpf.map_mut("LB_NAT").expect("LB_NAT")).expect("hash map");
        lb_userspace::dataplane::nat::sweep_map(&mut map, &t, now, 2048, &stop)
    };
    // Soon after: every translation lives (unanswered ones for 60 s).
    let s = sweep(&mut fx, last + 1);
    assert!(s.complete);
    assert_eq!((s.entries, s.expired), (6, 0));
    assert_eq!(s.by_vip.get(&web), Some(&3));
    // 11 units on: the closing one is gone, both of its entries.
    let s = sweep(&mut fx, last + 11);
    assert_eq!(s.expired, 1);
    assert_eq!(s.by_vip.get(&web), Some(&2));
    assert!(nat_entry(&fx, &closed).is_none());
    let s = sweep(&mut fx, last + 12);
    assert_eq!(
        s.entries, 4,
        "the closed translation's reply entry went with it"
    );
    // 60 s on, never answered: the rest go too.
    let s = sweep(&mut fx, last + 60);
    assert_eq!((s.expired, s.by_vip.get(&web)), (2, None));
    assert_eq!(sweep(&mut fx, last + 61).entries, 0);
}

/// The IP packet of `frame` (after its Ethernet header), cut to `len`
/// bytes: what an ICMP error quotes.
fn quote(frame: &[u8], len: usize) -> Vec<u8> {
    frame[14..14 + len].to_vec()
}

/// An ICMPv4 "fragmentation needed" (next-hop MTU 1400) from `src` to
/// `dst` quoting `quoted`, between the given MACs.
fn frag_needed(macs: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut out, quoted)
        .expect("build");
    out
}

/// An ICMPv6 "packet too big" (MTU 1280) from `src` to `dst` quoting
/// `quoted`.
fn too_big6(macs: ([u8; 6], [u8; 6]), src: [u8; 16], dst: [u8; 16], quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src, dst, 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut out, quoted)
        .expect("build");
    out
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn icmp_errors_about_a_nat_flow_are_translated_both_ways() {
    lb_tests::require_root();
    let fx = Fixture::with_config("nat-icmp", NAT_CONFIG);
    let router = [10, 20, 0, 1];
    let backend = fx.expected_backend(0, CLIENT, VIP, 40200, 80, 6);
    let key = FlowKey::v4(CLIENT, VIP, 40200u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
    let (action, _) = fx.run("xdp_lb", &tcp_syn(CLIENT, VIP, 40200, 80));
    assert_eq!(action, XDP_TX);
    let port = snat_port_of(&fx, &key);
    let payload = [0x42u8; 100];

    // From the client's side: a router says our reply VIP:80 -> client
    // was too big. The backend gets it about its own packet, backend:8080
    // -> LB:snat, 28 bytes quoted (IPv4 header and 8 bytes: TCP ports and
    // sequence number).
    let reply_to_client = Frame::eth(LB_MAC, CLIENT_MAC)
        .ipv4(VIP, CLIENT)
        .tcp_ack(80, 40200)
        .payload(&payload)
        .build();
    let from_backend = Frame::eth(LB_MAC, CLIENT_MAC)
        .ipv4(backend, LB_ADDR)
        .tcp_ack(8080, port)
        .payload(&payload)
        .build();
    for len in [28, 60] {
        let error = frag_needed(
            (CLIENT_MAC, LB_MAC),
            router,
            VIP,
            &quote(&reply_to_client, len),
        );
        let before = fx.count(Outcome::IcmpForwarded);
        let (action, out) = fx.run("xdp_lb", &error);
        assert_eq!(action, XDP_TX, "quote of {len} bytes");
        let expected = frag_needed(
            (LB_MAC, backend_mac(backend)),
            router,
            backend,
            &quote(&from_backend, len),
        );
        assert_eq!(
            out, expected,
            "quote of {len} bytes: the backend's own packet quoted, exact"
        );
        assert_eq!(fx.count(Outcome::IcmpForwarded), before + 1);
    }

    // From the backend's side: a router says our packet LB:snat ->
    // backend:8080 was too big. The client gets it about its own packet,
    // client:40200 -> VIP:80, from the router's address.
    let to_backend = Frame::eth(LB_MAC, LB_MAC)
        .ipv4(LB_ADDR, backend)
        .tcp_ack(port, 8080)
        .payload(&payload)
        .build();
    let from_client = Frame::eth(LB_MAC, LB_MAC)
        .ipv4(CLIENT, VIP)
        .tcp_ack(40200, 80)
        .payload(&payload)
        .build();
    for len in [28, 60] {
        let error = frag_needed(
            (backend_mac(backend), LB_MAC),
            router,
            LB_ADDR,
            &quote(&to_backend, len),
        );
        let (action, out) = fx.run("xdp_lb", &error);
        assert_eq!(action, XDP_TX, "quote of {len} bytes");
        let expected = frag_needed(
            (LB_MAC, CLIENT_MAC),
            router,
            CLIENT,
            &quote(&from_client, len),
        );
        assert_eq!(
            out, expected,
            "quote of {len} bytes: the client's own packet quoted, exact"
        );
    }

    // An error quoting a SNAT port with no translation: the host's.
    let stranger = Frame::eth(LB_MAC, LB_MAC)
        .ipv4(LB_ADDR, backend)
        .tcp_ack(port.wrapping_add(1), 8080)
        .build();
    let error = frag_needed(
        (backend_mac(backend), LB_MAC),
        router,
        LB_ADDR,
        &quote(&stranger, 28),
    );
    let (action, out) = fx.run("xdp_lb", &error);
    assert_eq!((action, out), (XDP_PASS, error));

    // IPv6, UDP: a "packet too big" from the client's side about the
    // VIP's reply, and one from the backend's side.
    let router6 = [0xfd, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let (action, _) = fx.run(
        "xdp_lb",
        &Frame::eth(CLIENT_MAC, LB_MAC)
            .ipv6(CLIENT_V6, V6_VIP)
            .udp(42000, 53)
            .payload(b"q")
            .build(),
    );
    assert_eq!(action, XDP_TX);
    let key6 = FlowKey::new(
        FAMILY_V6,
        CLIENT_V6,
        V6_VIP,
        42000u16.to_be_bytes(),
        53u16.to_be_bytes(),
        17,
    );
    let port6 = snat_port_of(&fx, &key6);
    let bmac = [0x02, 0, 0, 0, 0, V6_DNS[15]];
    let vip_reply = Frame::eth(LB_MAC, CLIENT_MAC)
        .ipv6(V6_VIP, CLIENT_V6)
        .udp(53, 42000)
        .payload(&payload)
        .build();
    let backend_view = Frame::eth(LB_MAC, LB_MAC)
        .ipv6(V6_DNS, LB_V6)
        .udp(5353, port6)
        .payload(&payload)
        .build();
    let error = too_big6(
        (CLIENT_MAC, LB_MAC),
        router6,
        V6_VIP,
        &quote(&vip_reply, 48 + 100),
    );
    let (action, out) = fx.run("xdp_lb", &error);
    assert_eq!(action, XDP_TX);
    let expected = too_big6(
        (LB_MAC, bmac),
        router6,
        V6_DNS,
        &quote(&backend_view, 48 + 100),
    );
    assert_eq!(
        out, expected,
        "IPv6: the backend's own datagram quoted, its UDP checksum too"
    );
    let to_backend6 = Frame::eth(LB_MAC, LB_MAC)
        .ipv6(LB_V6, V6_DNS)
        .udp(port6, 5353)
        .payload(&payload)
        .build();
    let client_view = Frame::eth(LB_MAC, LB_MAC)
        .ipv6(CLIENT_V6, V6_VIP)
        .udp(42000, 53)
        .payload(&payload)
        .build();
    let error = too_big6(
        (bmac, LB_MAC),
        router6,
        LB_V6,
        &quote(&to_backend6, 48 + 100),
    );
    let (action, out) = fx.run("xdp_lb", &error);
    assert_eq!(action, XDP_TX);
    let expected = too_big6(
        (LB_MAC, CLIENT_MAC),
        router6,
        CLIENT_V6,
        &quote(&client_view, 48 + 100),
    );
    assert_eq!(out, expected, "IPv6: the client's own datagram quoted");
}
