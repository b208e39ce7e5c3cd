//! The fixture table of `xdp_lb`'s rules (input frame, XDP action, output
//! frame, outcome), the first SYN checked against userspace's choice, and
//! the rate limit of "too big" answers.

use super::*;

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

fn tagged_syn(vid: u16, sport: u16) -> Vec<u8> {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .vlan(vid)
        .ipv4(CLIENT, VIP)
        .tcp_syn(sport, 80)
        .build()
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
            description: "VIP address, a port without a VIP: dropped (the node would route it back out)",
            frame: tcp_syn(CLIENT, VIP, 40000, 81),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropNoVip,
        },
        Row {
            description: "VIP address, UDP to a port without a VIP, not a SYN's path: dropped",
            frame: udp_datagram(CLIENT, VIP, 5000, 9999, b"x"),
            action: XDP_DROP,
            out: Dropped,
            outcome: Outcome::DropNoVip,
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

/// An ICMP error is never answered with an ICMP error (RFC 1122 3.2.2): a
/// router's error about a VIP flow that would not fit toward its backend
/// once encapsulated is dropped and counted, not answered with
/// "fragmentation needed".
#[test]
#[ignore = "needs root: cargo xtask test"]
fn an_icmp_error_too_big_to_forward_is_dropped_not_answered() {
    lb_tests::require_root();
    pin_to_cpu0();
    let config = format!("[encap]\nmtu = 576\n{CONFIG}");
    let fx = Fixture::with_config("icmperr", &config);
    // A 548-byte DSR reply quoted whole: a 576-byte ICMP error (DF set),
    // 596 bytes once encapsulated.
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(VIP, CLIENT, 64)
        .tcp(80, 40300, 1, 65535)
        .ack(1)
        .write(&mut quoted, &[0u8; 508])
        .expect("build");
    let error = icmp_error(frag_needed(1400), &quoted, quoted.len());
    assert_eq!(error.len(), 14 + 576);
    let (action, out) = fx.run("xdp_lb", &error);
    assert_eq!(action, XDP_DROP, "no ICMP answer: {out:?}");
    assert_eq!(fx.count(Outcome::TooBigSent), 0);
    assert_eq!(fx.count(Outcome::DropEncap), 1);
    // The same error with a short quote fits and follows the flow.
    let small = icmp_error(frag_needed(1400), &quoted, 100);
    assert_eq!(fx.run("xdp_lb", &small).0, XDP_TX);
    assert_eq!(fx.count(Outcome::IcmpForwarded), 1);
}
