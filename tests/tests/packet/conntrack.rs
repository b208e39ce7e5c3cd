//! The connection table: SYNs not recorded, new flows rate-limited, the
//! SYN shortcut while recorded flows agree, and the flow cache.

use super::*;

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

/// Sends flow `sport`'s next ACK and returns the backend it went to.
fn ack_backend(fx: &Fixture, sport: u16) -> [u8; 4] {
    let (action, out) = fx.run("xdp_lb", &tcp_ack(CLIENT, VIP, sport, 80));
    assert_eq!(action, XDP_TX);
    outer_destination(&out)
}

/// Runs a slow flow (one packet per 100 new flows) while 2,000 new flows
/// fill a connection table of 512, then changes the Maglev table so that
/// the slow flow's Maglev choice moves; returns whether it kept its
/// backend for the next `FLOW_CACHE_REFRESH` + 1 packets (so the table is
/// read at least once). With `refresh`, the flow caches' copies are retired between
/// the slow flow's packets, as the agent does every
/// `lb_common::FLOW_CACHE_MAX_AGE_SECS`.
fn slow_flow_keeps_its_backend(name: &str, refresh: bool) -> bool {
    let config = format!("[conntrack]\nmax_entries = 512\nmax_new_per_cpu = 100000000\n{CONFIG}");
    let mut fx = Fixture::with_config(name, &config);
    // A flow whose Maglev choice moves when be 0 of VIP web weighs 4.
    let ports: Vec<u16> = (41000..41200).collect();
    let before: Vec<[u8; 4]> = ports
        .iter()
        .map(|&p| fx.expected_backend(0, CLIENT, VIP, p, 80, 6))
        .collect();
    assert!(fx.balancer.set_weight(0, 0, 4).expect("weight"));
    let slow = ports
        .iter()
        .zip(&before)
        .find(|&(&p, b)| fx.expected_backend(0, CLIENT, VIP, p, 80, 6) != *b)
        .map(|(&p, _)| p)
        .expect("a flow the change moves");
    assert!(fx.balancer.set_weight(0, 0, 1).expect("weight"));
    let home = ack_backend(&fx, slow);
    assert_eq!(home, fx.expected_backend(0, CLIENT, VIP, slow, 80, 6));
    for round in 0..20u16 {
        for j in 0..100u16 {
            ack_backend(&fx, 50000 + round * 100 + j);
        }
        if refresh {
            fx.balancer.retire_flow_caches().expect("epoch");
        }
        assert_eq!(ack_backend(&fx, slow), home, "round {round}");
    }
    assert!(fx.balancer.set_weight(0, 0, 4).expect("weight"));
    // Past FLOW_CACHE_REFRESH packets: the copy gives way to the table.
    (0..=lb_common::FLOW_CACHE_REFRESH).all(|_| ack_backend(&fx, slow) == home)
}

/// A slow flow's packets, served by the flow cache, do not touch its
/// connection-table entry: in a full LRU table it is evicted and a table
/// change then moves it to another backend (a reset). The agent retires
/// the copies every `FLOW_CACHE_MAX_AGE_SECS`, so such a flow's packets
/// read the table again and keep its entry in the LRU.
#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_slow_flow_keeps_its_entry_while_the_table_fills() {
    lb_tests::require_root();
    assert!(
        !slow_flow_keeps_its_backend("ctslow0", false),
        "without the refresh the slow flow's entry is evicted (what this guards against)"
    );
    assert!(
        slow_flow_keeps_its_backend("ctslow1", true),
        "with the copies retired between its packets, the slow flow keeps its backend"
    );
}
