//! IPv6 VIPs and backends (IPv6-in-IPv6, IPv4-over-IPv6, packet too big),
//! and GUE encapsulation.

use super::*;

fn key4(a: [u8; 4]) -> [u8; 16] {
    lb_common::AddrKey::v4(a).addr
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
