//! Source filters: the global list by /16 and its trie, each VIP's own
//! list, the VIP-address filter's shared bits, and `lb explain` agreeing
//! with the kernel.

use super::*;

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
                Verdict::DropSourceFilter
                | Verdict::DropVipSourceFilter(_)
                | Verdict::DropNoVip => XDP_DROP,
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
