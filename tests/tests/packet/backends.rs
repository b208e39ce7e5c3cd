//! Backends and their flows: health, drain, decapsulation, port-0 VIPs,
//! flows kept through changes, and how many flows move when a backend
//! leaves or joins.

use super::*;

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

/// Makes the fixture's namespace a backend for `xdp_decap`: this host has
/// 10.20.0.2 (an outer destination it accepts) and serves VIP 10.20.0.100.
fn serve_vip_here(fx: &mut Fixture) {
    for (map, addr) in [
        (lb_common::MAP_DECAP_VIPS, VIP),
        (lb_common::MAP_DECAP_LOCAL, LB_ADDR),
    ] {
        let mut m: aya::maps::HashMap<_, lb_common::AddrKey, u32> =
            aya::maps::HashMap::try_from(fx.ebpf.map_mut(map).expect("map")).expect("hash");
        m.insert(lb_common::AddrKey::v4(addr), 1, 0)
            .expect("insert");
    }
}

/// The IPv4 packet `ip` (its header first) with TOS byte `tos` and its
/// header checksum computed again.
fn with_tos(mut ip: Vec<u8>, tos: u8) -> Vec<u8> {
    ip[1] = tos;
    ip[10..12].fill(0);
    let header = Ipv4Header::from_slice(&ip).expect("IPv4 header").0;
    ip[10..12].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
    ip
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn an_outer_congestion_mark_reaches_an_ecn_capable_inner_packet() {
    lb_tests::require_root();
    let mut fx = Fixture::new("decap-ecn");
    serve_vip_here(&mut fx);
    let syn = tcp_syn(CLIENT, VIP, 40000, 80)[14..].to_vec();
    // (outer ECN, inner ECN, inner ECN after): RFC 6040's normal mode for
    // CE outside; anything else leaves the inner packet as it was.
    for (outer, ecn, after) in [
        (3u8, 2u8, 3u8), // CE over ECT(0): CE
        (3, 1, 3),       // CE over ECT(1): CE
        (3, 3, 3),       // CE over CE
        (3, 0, 0),       // CE over Not-ECT: left alone
        (2, 2, 2),       // ECT(0) outside: nothing to copy
        (0, 1, 1),
    ] {
        let inner = with_tos(syn.clone(), 0x28 | ecn);
        let mut frame = ipip(LB_ADDR, &inner);
        let outer_ip = with_tos(frame[14..34].to_vec(), 0x28 | outer);
        frame[14..34].copy_from_slice(&outer_ip);
        let (action, out) = fx.run("xdp_decap", &frame);
        assert_eq!(action, XDP_PASS);
        assert_eq!(
            &out[14..],
            &with_tos(syn.clone(), 0x28 | after)[..],
            "outer ECN {outer}, inner {ecn}: inner becomes {after}, DSCP kept, checksum valid"
        );
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn decap_strips_the_outer_header_for_served_vips_only() {
    lb_tests::require_root();
    let mut fx = Fixture::new("decap");
    serve_vip_here(&mut fx);
    // The fixture takes tunnels from the private ranges, as `lb decap`
    // does by default: the load balancer's 10.20.0.2 is in them.

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
    // The same tunnel from a host outside (198.51.100.10, which reaches the
    // backend directly) would inject a private client's SYN past every
    // filter of the load balancer: dropped and counted.
    let spoofed = Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv4([198, 51, 100, 10], LB_ADDR)
        .ip_in_ip(&inner[14..])
        .build();
    assert_eq!(fx.run("xdp_decap", &spoofed).0, XDP_DROP);
    assert_eq!(fx.count(Outcome::DropDecapSource), 1);
    assert_eq!(fx.count(Outcome::Decapsulated), 1);
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

/// An IPv6 TCP ACK to the IPv6 VIP.
fn ack6(src: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    Frame::eth(CLIENT_MAC, LB_MAC)
        .ipv6(src, VIP_V6)
        .tcp_ack(sport, dport)
        .build()
}

/// A VIP id and a backend id given to another VIP and backend after a
/// reload start their counters at zero, not at the counts of the VIP and
/// backend that had them.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn counters_start_at_zero_when_an_id_is_given_again() {
    lb_tests::require_root();
    let mut fx = Fixture::new("ids");
    let dns = fx
        .balancer
        .vips()
        .iter()
        .find(|v| v.config.name == "dns")
        .expect("VIP dns")
        .clone();
    for sport in 5000..5010 {
        let (action, _) = fx.run("xdp_lb", &udp_datagram(CLIENT, VIP, sport, 53, b"q"));
        assert_eq!(action, XDP_TX);
    }
    assert_eq!(fx.stats.vip(dns.id).packets, 10);
    let used: u64 = dns
        .backends
        .iter()
        .map(|b| fx.stats.backend(b.id).packets)
        .sum();
    assert_eq!(used, 10);
    // dns goes; a new VIP comes with two new backends.
    let start = CONFIG
        .find("[[vip]]\nname = \"dns\"")
        .expect("dns in CONFIG");
    let end = start
        + CONFIG[start..]
            .find("[[vip]]\nname = \"unresolved\"")
            .expect("next VIP");
    let without = format!("{}{}", &CONFIG[..start], &CONFIG[end..]);
    fx.reload(&without);
    let with_new = format!(
        "{without}\n[[vip]]\nname = \"syslog\"\naddress = \"10.20.0.100\"\nport = 514\nprotocol = \"udp\"\n  [[vip.backend]]\n  address = \"10.20.0.21\"\n  [[vip.backend]]\n  address = \"10.20.0.22\"\n"
    );
    fx.reload(&with_new);
    let syslog = fx
        .balancer
        .vips()
        .iter()
        .find(|v| v.config.name == "syslog")
        .expect("VIP syslog")
        .clone();
    assert_eq!(syslog.id, dns.id, "the freed VIP id is given again");
    let reused: Vec<u32> = syslog
        .backends
        .iter()
        .map(|b| b.id)
        .filter(|id| dns.backends.iter().any(|b| b.id == *id))
        .collect();
    assert!(!reused.is_empty(), "a freed backend id is given again");
    assert_eq!(fx.stats.vip(syslog.id).packets, 0, "the new VIP's counter");
    for id in reused {
        assert_eq!(fx.stats.backend(id).packets, 0, "backend id {id}'s counter");
    }
}
