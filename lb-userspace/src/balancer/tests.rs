//! The balancer's bookkeeping against in-memory maps: fills, health,
//! drains, table regions, adoption and reloads as differences.

use std::time::Instant;

use lb_common::{ConnValue, FlowKey};

use super::fake::FakeMaps;
use super::*;
use crate::config::Config;

const CONFIG: &str = r#"
[maglev]
table_size = 251
max_vips = 8
[[vip]]
name = "web"
address = "10.0.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.0.0.21"
  [[vip.backend]]
  address = "10.0.0.22"
  [[vip.backend]]
  address = "10.0.0.23"
  weight = 0
[[vip]]
name = "dns"
address = "10.0.0.100"
port = 53
protocol = "udp"
on_no_backend = "pass"
  [[vip.backend]]
  address = "10.0.0.31"
"#;

fn balancer() -> Balancer<FakeMaps> {
    let config = Config::parse(CONFIG, "t").expect("valid").config;
    Balancer::new(
        FakeMaps::default(),
        &config,
        Ipv4Addr::new(10, 0, 0, 2),
        config.sizing.table_regions,
    )
    .expect("fills")
}

fn table_in_maps(b: &Balancer<FakeMaps>, key: &VipKey) -> Vec<u32> {
    let v = b.maps().vips[key];
    (0..v.table_size)
        .map(|i| b.maps().maglev[&(v.table_offset + i)])
        .collect()
}

#[test]
fn fills_every_map_and_sets_ready_last_state() {
    let b = balancer();
    let m = b.maps();
    assert_eq!(m.globals.flags & GLOBAL_F_READY, GLOBAL_F_READY);
    assert_eq!(m.globals.encap_src_v4, [10, 0, 0, 2]);
    assert_eq!(m.globals.layout_version, LAYOUT_FINGERPRINT);
    assert_eq!(m.allow.len(), 5, "the default prefixes, fc00::/7 included");
    assert_eq!(m.vips.len(), 2);
    assert_eq!(m.vip_addrs[&AddrKey::v4([10, 0, 0, 100])], 2);
    assert_eq!(m.backends.len(), 4);
    let web = VipKey::v4([10, 0, 0, 100], 80, 6);
    let table = table_in_maps(&b, &web);
    assert_eq!(table.len(), 251);
    assert_eq!(table, b.table(0));
    // The weight-0 backend (drained) takes no entry.
    let drained = b.vips()[0].backends[2].id;
    assert!(!table.contains(&drained));
    assert_eq!(
        m.vips[&VipKey::v4([10, 0, 0, 100], 53, 17)].flags,
        VIP_F_PASS_ON_NO_BACKEND | VIP_F_CONNS_MATCH_TABLE,
        "a new VIP's recorded flows agree with its first table"
    );
}

#[test]
fn unhealthy_backend_leaves_the_table_and_returns() {
    let mut b = balancer();
    let web = VipKey::v4([10, 0, 0, 100], 80, 6);
    let first = b.vips()[0].backends[0].id;
    let second = b.vips()[0].backends[1].id;
    assert!(b.set_health(0, 0, false).unwrap());
    assert!(!b.set_health(0, 0, false).unwrap(), "no change, no write");
    let table = table_in_maps(&b, &web);
    assert!(table.iter().all(|&id| id == second));
    assert_eq!(b.maps().backends[&first].flags, BACKEND_F_ACTIVE);
    assert!(b.set_health(0, 0, true).unwrap());
    let table = table_in_maps(&b, &web);
    assert!(table.contains(&first) && table.contains(&second));
    assert_eq!(
        b.maps().backends[&first].flags,
        BACKEND_F_ACTIVE | BACKEND_F_HEALTHY
    );
}

#[test]
fn a_just_freed_region_is_written_last() {
    let mut b = balancer();
    let web = VipKey::v4([10, 0, 0, 100], 80, 6);
    // 8 VIPs at most: 16 regions, 2 in use.
    let regions = b.regions.capacity;
    assert_eq!(regions, 16);
    let mut offsets = vec![b.maps().vips[&web].table_offset];
    for i in 0..regions {
        b.set_health(0, 0, i % 2 == 1).unwrap();
        offsets.push(b.maps().vips[&web].table_offset);
    }
    // Every replacement goes to a region other than the one in use, and
    // the region just freed comes back only after all the other free
    // ones (14 here) were written.
    for pair in offsets.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "a new table never overwrites the one in use"
        );
    }
    let free = regions as usize - 2;
    for (i, offset) in offsets.iter().enumerate() {
        let next_use = offsets[i + 1..].iter().position(|o| o == offset);
        if let Some(gap) = next_use {
            assert!(
                gap >= free,
                "region at {offset} reused after {gap} writes: {offsets:?}"
            );
        }
    }
    assert!(
        offsets.iter().collect::<HashSet<_>>().len() > free,
        "every free region was used: {offsets:?}"
    );
}

#[test]
fn drain_and_removal() {
    let mut b = balancer();
    let web = VipKey::v4([10, 0, 0, 100], 80, 6);
    let first = b.vips()[0].backends[0].id;
    assert!(b.set_weight(0, 0, 0).unwrap());
    assert!(
        !table_in_maps(&b, &web).contains(&first),
        "drained: no new flow"
    );
    assert_eq!(
        b.maps().backends[&first].flags,
        BACKEND_F_ACTIVE | BACKEND_F_HEALTHY,
        "still usable by its flows"
    );
    b.remove_backend(0, 0).unwrap();
    assert_eq!(
        b.maps().backends[&first].flags,
        0,
        "removed: its flows are hashed again"
    );
    assert_eq!(b.vips()[0].backends.len(), 2);
    // The freed id is given out again with a new generation.
    let old_generation = b.maps().backends[&first].generation;
    let config = Config::parse(CONFIG, "t").expect("valid").config;
    b.add_vip(&Vip {
        name: "more".into(),
        port: 81,
        ..config.vips[0].clone()
    })
    .unwrap();
    let reused = b.vips()[2].backends[0].id;
    assert_eq!(reused, first);
    assert_ne!(b.maps().backends[&reused].generation, old_generation);
}

#[test]
fn no_healthy_backend_empties_the_table() {
    let mut b = balancer();
    let dns = VipKey::v4([10, 0, 0, 100], 53, 17);
    b.set_health(1, 0, false).unwrap();
    assert_eq!(b.maps().vips[&dns].table_size, 0);
    b.set_health(1, 0, true).unwrap();
    assert_eq!(b.maps().vips[&dns].table_size, 251);
}

fn config(text: &str) -> Config {
    Config::parse(text, "t").expect("valid").config
}

#[test]
fn adopting_maps_of_the_same_config_writes_nothing_and_keeps_ids() {
    let mut before = balancer();
    before.set_health(0, 1, false).unwrap();
    let maps = before.maps().clone();
    let (adopted, changes) = Balancer::adopt(
        maps.clone(),
        &config(CONFIG),
        Ipv4Addr::new(10, 0, 0, 2),
        config(CONFIG).sizing.table_regions,
    )
    .unwrap();
    assert!(changes.is_empty(), "{changes}");
    assert_eq!(adopted.maps().writes, maps.writes, "no map write");
    for (a, b) in adopted.vips().iter().zip(before.vips()) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.region, b.region);
        assert_eq!(a.backends, b.backends, "ids, weights and health kept");
    }
}

#[test]
fn adopting_with_another_config_applies_only_the_difference() {
    let before = balancer();
    let web = VipKey::v4([10, 0, 0, 100], 80, 6);
    let dns = VipKey::v4([10, 0, 0, 100], 53, 17);
    let web_before = before.maps().vips[&web];
    // dns gone, a backend added to web.
    let text = CONFIG
        .split("[[vip]]\nname = \"dns\"")
        .next()
        .unwrap()
        .to_string()
        + "  [[vip.backend]]\n  address = \"10.0.0.24\"\n";
    let (adopted, changes) = Balancer::adopt(
        before.maps().clone(),
        &config(&text),
        Ipv4Addr::new(10, 0, 0, 2),
        config(CONFIG).sizing.table_regions,
    )
    .unwrap();
    assert_eq!(
        (changes.vips_removed, changes.backends_added),
        (1, 1),
        "{changes}"
    );
    let m = adopted.maps();
    assert!(!m.vips.contains_key(&dns));
    assert_eq!(m.vips[&web].vip_id, web_before.vip_id);
    assert_ne!(
        m.vips[&web].table_offset, web_before.table_offset,
        "new table, new region"
    );
    let dns_backend = IpAddr::from([10, 0, 0, 31]);
    assert!(
        m.backends
            .values()
            .all(|b| b.flags == 0 || backend_address(b) != dns_backend),
        "dns's backend retired"
    );
    assert_eq!(m.vip_addrs[&AddrKey::v4([10, 0, 0, 100])], 1);
}

#[test]
fn reload_touches_only_what_changed() {
    let mut b = balancer();
    let web = VipKey::v4([10, 0, 0, 100], 80, 6);
    let dns = VipKey::v4([10, 0, 0, 100], 53, 17);
    let dns_before = b.maps().vips[&dns];
    let web_ids: Vec<u32> = b.vips()[0].backends.iter().map(|x| x.id).collect();
    // Weight of one web backend changes; a new VIP appears.
    let text = CONFIG.replace(
        "  [[vip.backend]]\n  address = \"10.0.0.22\"\n",
        "  [[vip.backend]]\n  address = \"10.0.0.22\"\n  weight = 3\n",
    ) + "[[vip]]\nname = \"extra\"\naddress = \"10.0.0.101\"\nport = 80\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"10.0.0.41\"\n";
    let changes = b.apply(&config(&text), Ipv4Addr::new(10, 0, 0, 2)).unwrap();
    assert_eq!(
        (
            changes.vips_added,
            changes.weights_changed,
            changes.tables_written
        ),
        (1, 1, 2),
        "{changes}"
    );
    assert_eq!(b.maps().vips[&dns], dns_before, "untouched VIP, same table");
    let ids: Vec<u32> = b.vips()[0].backends.iter().map(|x| x.id).collect();
    assert_eq!(ids, web_ids, "kept backends keep their ids");
    assert_eq!(b.vips()[2].config.name, "extra");
    // The same configuration again writes nothing.
    let writes = b.maps().writes;
    let again = b.apply(&config(&text), Ipv4Addr::new(10, 0, 0, 2)).unwrap();
    assert!(again.is_empty(), "{again}");
    assert_eq!(b.maps().writes, writes);
    // Back to the first configuration: the extra VIP and its backend go.
    let back = b
        .apply(&config(CONFIG), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap();
    assert_eq!((back.vips_removed, back.backends_removed), (1, 1), "{back}");
    assert!(
        !b.maps()
            .vips
            .contains_key(&VipKey::v4([10, 0, 0, 101], 80, 6))
    );
    assert!(
        !b.maps()
            .vip_addrs
            .contains_key(&AddrKey::v4([10, 0, 0, 101]))
    );
    assert_eq!(table_in_maps(&b, &web), b.table(0));
}

/// The VIP-address filter holds exactly the bits of the VIP addresses,
/// through additions and removals.
#[test]
fn the_vip_address_filter_follows_the_vip_addresses() {
    let bits = |b: &Balancer<FakeMaps>| {
        let mut bits: Vec<(u32, u64)> = b.maps().vip_bloom.iter().map(|(&w, &m)| (w, m)).collect();
        bits.sort_unstable();
        bits
    };
    let expect = |addrs: &[[u8; 4]]| {
        let mut words = std::collections::BTreeMap::<u32, u64>::new();
        for &a in addrs {
            let (word, mask) = lb_common::rules::vip_bloom_bit(&AddrKey::v4(a));
            *words.entry(word).or_default() |= mask;
        }
        words.into_iter().collect::<Vec<_>>()
    };
    let mut b = balancer();
    assert_eq!(bits(&b), expect(&[[10, 0, 0, 100]]));
    let extra = CONFIG.to_string()
        + "[[vip]]\nname = \"extra\"\naddress = \"10.0.0.101\"\nport = 80\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"10.0.0.41\"\n";
    b.apply(&config(&extra), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap();
    assert_eq!(bits(&b), expect(&[[10, 0, 0, 100], [10, 0, 0, 101]]));
    b.apply(&config(CONFIG), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap();
    assert_eq!(bits(&b), expect(&[[10, 0, 0, 100]]));
}

/// `LB_VIP_FLAGS` holds every live VIP's flags with `VIP_LIVE`; a port-0
/// VIP is marked shadowed while a VIP of a given port shares its address
/// and protocol; a removed VIP's id goes back to 0.
#[test]
fn vip_flags_by_id_follow_reloads() {
    let mut b = balancer();
    let web = b.vips()[0].id;
    let dns = b.vips()[1].id;
    let flags = |b: &Balancer<FakeMaps>, id: u32| b.maps().vip_flags.get(&id).copied().unwrap_or(0);
    assert_eq!(flags(&b, web), VIP_LIVE);
    assert_eq!(flags(&b, dns), VIP_LIVE | VIP_F_PASS_ON_NO_BACKEND);
    let any_port = "[[vip]]\nname = \"any\"\naddress = \"10.0.0.100\"\nport = 0\nprotocol = \"tcp\"\nallow = [\"10.0.0.0/24\"]\n  [[vip.backend]]\n  address = \"10.0.0.41\"\n";
    b.apply(
        &config(&(CONFIG.to_string() + any_port)),
        Ipv4Addr::new(10, 0, 0, 2),
    )
    .unwrap();
    let any = b.vips()[2].id;
    assert_eq!(flags(&b, any), VIP_LIVE | VIP_F_OWN_ALLOW | VIP_SHADOWED);
    // Without the port-80 VIP, the port-0 one is no longer shadowed (the
    // UDP VIP on the address is of another protocol).
    let without_web = CONFIG
        .replacen("port = 80", "port = 8080", 1)
        .replace("10.0.0.100\"\nport = 8080", "10.0.0.99\"\nport = 8080");
    b.apply(
        &config(&(without_web + any_port)),
        Ipv4Addr::new(10, 0, 0, 2),
    )
    .unwrap();
    assert_eq!(flags(&b, any), VIP_LIVE | VIP_F_OWN_ALLOW);
    b.apply(&config(CONFIG), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap();
    // Exactly the live VIPs' ids are set (a removed VIP's id was freed,
    // or given to a new VIP with that VIP's flags).
    let live: std::collections::HashMap<u32, u32> = b
        .vips()
        .iter()
        .map(|v| (v.id, v.flags | VIP_LIVE))
        .collect();
    assert_eq!(b.maps().vip_flags, live);
}

#[test]
fn a_refused_config_writes_nothing() {
    let mut b = balancer();
    let writes = b.maps().writes;
    let bigger = CONFIG.replace("table_size = 251", "table_size = 257");
    let err = b
        .apply(&config(&bigger), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap_err();
    assert!(
        err.to_string().contains("maglev.table_size cannot change"),
        "{err}"
    );
    // More VIPs than maglev.max_vips of the running data plane.
    let mut many = CONFIG.replace("max_vips = 8", "max_vips = 64");
    for i in 0..30 {
        many += &format!(
            "[[vip]]\nname = \"v{i}\"\naddress = \"10.0.1.{i}\"\nport = 80\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"10.0.0.41\"\n"
        );
    }
    let err = b
        .apply(&config(&many), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "out of VIPs (maglev.max_vips of the running data plane): the data plane holds at most 8"
    );
    assert_eq!(b.maps().writes, writes, "nothing written");
}

/// A port-0 TCP VIP "any" on web's address, with one backend (.41).
const ANY_PORT: &str = "[[vip]]\nname = \"any\"\naddress = \"10.0.0.100\"\nport = 0\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"10.0.0.41\"\n";

/// A configuration of "any" alone.
fn only_any() -> String {
    format!("[maglev]\ntable_size = 251\nmax_vips = 8\n{ANY_PORT}")
}

/// A balancer filled from `text` over in-memory maps.
fn balancer_of(text: &str) -> Balancer<FakeMaps> {
    Balancer::new(
        FakeMaps::default(),
        &config(text),
        Ipv4Addr::new(10, 0, 0, 2),
        8,
    )
    .unwrap()
}

/// Whether VIP `name`'s map entry carries `VIP_F_CONNS_MATCH_TABLE`.
fn conns_match(b: &Balancer<FakeMaps>, name: &str) -> bool {
    let vip = b
        .vips()
        .iter()
        .find(|v| v.config.name == name)
        .expect("VIP");
    let flags = b.maps().vips[&vip_key(&vip.config)].flags;
    assert_eq!(flags & VIP_F_CONNS_MATCH_TABLE != 0, vip.conns_match);
    vip.conns_match
}

/// The ids of the VIPs a walk found in agreement.
fn in_agreement(verdict: &ConnsVerdict) -> Vec<u32> {
    verdict.agree.iter().map(|&(id, _)| id).collect()
}

/// A walk prepared now that may set flags (past the grace).
fn check(b: &Balancer<FakeMaps>) -> Option<ConnsCheck> {
    b.conns_check(Instant::now() + CONNS_GRACE)
}

/// The flag that lets SYNs skip the connection table: set on a VIP's
/// first table, cleared by every change that could make a recorded flow
/// disagree, set again only by a complete walk prepared after the last
/// change; kept by adoption.
#[test]
fn the_syn_shortcut_flag_follows_changes_and_walks() {
    let mut b = balancer();
    assert!(conns_match(&b, "web") && conns_match(&b, "dns"));
    assert!(check(&b).is_none(), "no VIP waits for a walk");

    // A drain changes web's table: cleared, and not in a walk within the grace.
    b.set_weight(0, 0, 0).unwrap();
    assert!(!conns_match(&b, "web") && conns_match(&b, "dns"));
    assert!(b.conns_check(Instant::now()).is_none(), "inside the grace");
    let web = b.vips()[0].id;
    let walk = check(&b).expect("web waits");
    let verdict = walk.walk(std::iter::empty(), 10);
    assert!(verdict.complete);
    assert_eq!(in_agreement(&verdict), vec![web]);
    // A change between the walk's start and its end: nothing set, and the
    // flow caches' copies keep serving (the epoch stays).
    let epoch = |b: &Balancer<FakeMaps>| b.maps().globals.conns_epoch;
    let before = epoch(&b);
    b.set_weight(0, 0, 1).unwrap();
    assert!(b.conns_checked(&verdict).unwrap().is_empty());
    assert!(!conns_match(&b, "web"));
    // An incomplete walk sets nothing either.
    let verdict = check(&b).unwrap().walk(std::iter::empty(), 10);
    let cut = ConnsVerdict {
        complete: false,
        ..verdict.clone()
    };
    assert!(b.conns_checked(&cut).unwrap().is_empty());
    assert_eq!(epoch(&b), before);
    // A flag set retires every flow-cache copy first (the epoch moves).
    assert_eq!(b.conns_checked(&verdict).unwrap(), vec!["web".to_string()]);
    assert!(conns_match(&b, "web"));
    assert_eq!(epoch(&b), before.wrapping_add(1));
    // A reload that rewrites the globals (another encapsulation source)
    // keeps the epoch: old copies are not revived by a reset.
    b.apply(&config(CONFIG), Ipv4Addr::new(10, 0, 0, 3))
        .unwrap();
    assert_eq!(b.maps().globals.encap_src_v4, [10, 0, 0, 3]);
    assert_eq!(epoch(&b), before.wrapping_add(1));
    b.apply(&config(CONFIG), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap();

    // A backend usable again clears it (its recorded flows come back),
    // and so does its going unhealthy (a new table).
    b.set_health(0, 1, false).unwrap();
    assert!(!conns_match(&b, "web"));
    let verdict = check(&b).unwrap().walk(std::iter::empty(), 10);
    b.conns_checked(&verdict).unwrap();
    assert!(conns_match(&b, "web"));
    b.set_health(0, 1, true).unwrap();
    assert!(!conns_match(&b, "web"));

    // Adoption keeps what the maps say.
    let (adopted, _) = Balancer::adopt(
        b.maps().clone(),
        &config(CONFIG),
        Ipv4Addr::new(10, 0, 0, 2),
        8,
    )
    .unwrap();
    assert!(!conns_match(&adopted, "web") && conns_match(&adopted, "dns"));
    assert_eq!(epoch(&adopted), epoch(&b), "adoption keeps the epoch");
}

/// A VIP of a port added over a port-0 VIP starts without the flag (flows of
/// that port recorded for the port-0 VIP keep their backends), and removing
/// it clears the port-0 VIP's (those flows are the port-0 VIP's again).
#[test]
fn a_vip_of_a_port_over_a_port_0_vip_starts_without_the_flag() {
    let any_port = ANY_PORT;
    let only_any = only_any();
    let mut b = balancer_of(&only_any);
    assert!(conns_match(&b, "any"));
    b.apply(
        &config(&(CONFIG.to_string() + any_port)),
        Ipv4Addr::new(10, 0, 0, 2),
    )
    .unwrap();
    assert!(!conns_match(&b, "web"), "over the port-0 VIP");
    assert!(conns_match(&b, "dns"), "another protocol");
    assert!(conns_match(&b, "any"));
    b.apply(&config(&only_any), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap();
    assert!(!conns_match(&b, "any"), "web's port is any's again");
}

/// The walk's rule: an entry of a backend in its VIP's set (with the
/// entry's generation) disagrees when the VIP its flow matches (port VIP
/// first, then port 0) names another backend for it; entries of backends
/// no longer in a set (removed, or the id reused with a new generation)
/// never disagree.
#[test]
fn a_walk_finds_the_entries_that_disagree() {
    let any_port = "[[vip]]\nname = \"any\"\naddress = \"10.0.0.100\"\nport = 0\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"10.0.0.41\"\n  [[vip.backend]]\n  address = \"10.0.0.42\"\n";
    let mut b = Balancer::new(
        FakeMaps::default(),
        &config(&(CONFIG.to_string() + any_port)),
        Ipv4Addr::new(10, 0, 0, 2),
        8,
    )
    .unwrap();
    // Clear every flag: every VIP under check.
    for i in 0..b.vips().len() {
        b.conns_changed(i).unwrap();
    }
    let walk = check(&b).expect("all wait");
    let ids: Vec<u32> = b.vips().iter().map(|v| v.id).collect();
    let (web, any) = (ids[0], ids[2]);
    let flow = |sport: u16, dport: u16| {
        FlowKey::v4(
            [10, 1, 0, 1],
            [10, 0, 0, 100],
            sport.to_be_bytes(),
            dport.to_be_bytes(),
            6,
        )
    };
    let choice = |vip: usize, key: &FlowKey| {
        let t = b.table(vip);
        let h = lb_common::flow_hash(
            key.family, &key.src, &key.dst, key.sport, key.dport, key.proto,
        );
        t[lb_common::maglev_slot(h, t.len() as u32) as usize]
    };
    let entry = |id: u32| ConnValue {
        backend_id: id,
        generation: b.generations[id as usize],
    };
    let other = |vip: usize, id: u32| {
        b.vips()[vip]
            .backends
            .iter()
            .map(|x| x.id)
            .find(|&x| x != id && b.table(vip).contains(&x))
            .expect("another member")
    };
    let (k80, k8080) = (flow(1000, 80), flow(1000, 8080));
    let (c80, c8080) = (choice(0, &k80), choice(2, &k8080));
    let agreeing = vec![(k80, entry(c80)), (k8080, entry(c8080))];
    let v = walk.walk(agreeing.clone(), 100);
    assert_eq!(v.entries, 2);
    assert!(in_agreement(&v).contains(&web) && in_agreement(&v).contains(&any));
    // Port 80 is web's: an entry naming another web backend disagrees.
    let mut e = agreeing.clone();
    e[0].1 = entry(other(0, c80));
    let v = walk.walk(e, 100);
    assert!(!in_agreement(&v).contains(&web) && in_agreement(&v).contains(&any));
    // A stale generation (the id reused) is not usable: no disagreement.
    let mut e = agreeing.clone();
    e[1].1 = ConnValue {
        generation: entry(c8080).generation.wrapping_add(1),
        ..entry(other(2, c8080))
    };
    assert!(in_agreement(&walk.walk(e, 100)).contains(&any));
    // A backend id in no VIP's set (removed): no disagreement.
    let mut e = agreeing.clone();
    e[1].1 = ConnValue {
        backend_id: 999,
        generation: 1,
    };
    assert!(in_agreement(&walk.walk(e, 100)).contains(&any));
    // Bounded: a walk cut short finds no VIP in agreement.
    let v = walk.walk(agreeing, 1);
    assert!(!v.complete && v.agree.is_empty());
}

/// Flows of a port recorded by a port-0 VIP before a VIP of that port came
/// keep their backend; while it is unhealthy a walk still counts them for
/// the port VIP (they are usable again once it recovers, with no change
/// to the port VIP's table), so the port VIP's SYNs keep looking flows up.
#[test]
fn a_walk_counts_entries_of_unhealthy_backends() {
    let any_port = ANY_PORT;
    let only_any = only_any();
    let mut b = balancer_of(&only_any);
    let b41 = b.vips()[0].backends[0].id;
    // A port-80 flow recorded for "any" (on .41), then "web" on port 80.
    let flow = FlowKey::v4(
        [10, 1, 0, 1],
        [10, 0, 0, 100],
        1000u16.to_be_bytes(),
        80u16.to_be_bytes(),
        6,
    );
    let recorded = ConnValue {
        backend_id: b41,
        generation: b.generations[b41 as usize],
    };
    b.apply(
        &config(&(CONFIG.to_string() + any_port)),
        Ipv4Addr::new(10, 0, 0, 2),
    )
    .unwrap();
    assert!(!conns_match(&b, "web"));
    // .41 goes down: a walk still finds the flow disagreeing with web's table.
    let any = b
        .vips()
        .iter()
        .position(|v| v.config.name == "any")
        .unwrap();
    b.set_health(any, 0, false).unwrap();
    let walk = check(&b).expect("web waits");
    let v = walk.walk(vec![(flow, recorded)], 10);
    assert!(v.complete || v.agree.is_empty());
    let web = b.vips()[0].id;
    assert!(!in_agreement(&v).contains(&web), "{v:?}");
    assert!(b.conns_checked(&v).unwrap().iter().all(|n| n != "web"));
    assert!(!conns_match(&b, "web"));
}

/// An agent that adopts maps whose configuration dropped a VIP of a port
/// clears the flag of the port-0 VIP under it before removing it.
#[test]
fn adoption_that_drops_a_port_vip_clears_the_port_0_vips_flag() {
    let any_port = ANY_PORT;
    let b = Balancer::new(
        FakeMaps::default(),
        &config(&(CONFIG.to_string() + any_port)),
        Ipv4Addr::new(10, 0, 0, 2),
        8,
    )
    .unwrap();
    // "web" came first, so "any" is new and flagged.
    assert!(conns_match(&b, "any") && conns_match(&b, "web"));
    let without_web = format!("[maglev]\ntable_size = 251\nmax_vips = 8\n{any_port}");
    let (adopted, changes) = Balancer::adopt(
        b.maps().clone(),
        &config(&without_web),
        Ipv4Addr::new(10, 0, 0, 2),
        8,
    )
    .unwrap();
    assert!(changes.vips_removed >= 1, "{changes}");
    assert!(!conns_match(&adopted, "any"), "web's port is any's again");
    // Keeping web keeps any's flag.
    let (kept, _) = Balancer::adopt(
        b.maps().clone(),
        &config(&(CONFIG.to_string() + any_port)),
        Ipv4Addr::new(10, 0, 0, 2),
        8,
    )
    .unwrap();
    assert!(conns_match(&kept, "any"));
}

/// Adoption removes a VIP gone from the configuration with its own `allow`
/// list: a new VIP that takes its id must not inherit those prefixes (a
/// VIP's list only ever narrows who reaches it).
#[test]
fn a_vip_gone_at_adoption_takes_its_own_allow_list_with_it() {
    let with_allow = CONFIG.replace(
        "on_no_backend = \"pass\"",
        "on_no_backend = \"pass\"\nallow = [\"10.9.0.0/16\"]",
    );
    let regions = config(CONFIG).sizing.table_regions;
    let before = Balancer::new(
        FakeMaps::default(),
        &config(&with_allow),
        Ipv4Addr::new(10, 0, 0, 2),
        regions,
    )
    .unwrap();
    let dns = VipKey::v4([10, 0, 0, 100], 53, 17);
    let dns_id = before.maps().vips[&dns].vip_id;
    let nine: IpNet = "10.9.0.0/16".parse().unwrap();
    assert!(before.maps().allow_vip.contains(&(dns_id, nine)));
    // dns gone; a new VIP with its own list takes the freed id.
    let text = CONFIG
        .split("[[vip]]\nname = \"dns\"")
        .next()
        .unwrap()
        .to_string()
        + "[[vip]]\nname = \"ntp\"\naddress = \"10.0.0.100\"\nport = 123\nprotocol = \"udp\"\nallow = [\"10.8.0.0/16\"]\n  [[vip.backend]]\n  address = \"10.0.0.31\"\n";
    let (adopted, _) = Balancer::adopt(
        before.maps().clone(),
        &config(&text),
        Ipv4Addr::new(10, 0, 0, 2),
        regions,
    )
    .unwrap();
    let ntp = VipKey::v4([10, 0, 0, 100], 123, 17);
    let ntp_id = adopted.maps().vips[&ntp].vip_id;
    assert_eq!(ntp_id, dns_id, "the freed id is given out again");
    let list: Vec<IpNet> = adopted
        .maps()
        .allow_vip
        .iter()
        .filter(|(id, _)| *id == ntp_id)
        .map(|(_, net)| *net)
        .collect();
    assert_eq!(list, vec!["10.8.0.0/16".parse::<IpNet>().unwrap()]);
}

/// A reload that removes a VIP's own `allow` list clears the VIP's flag
/// (in `LB_VIP_FLAGS`, which established flows read) before it removes the
/// prefixes: the other order refuses the VIP's established flows for the
/// rest of the reload.
#[test]
fn removing_a_vip_s_own_list_clears_its_flag_before_its_prefixes() {
    let with_allow = CONFIG.replace(
        "on_no_backend = \"pass\"",
        "on_no_backend = \"pass\"\nallow = [\"10.9.0.0/16\"]",
    );
    let mut b = Balancer::new(
        FakeMaps::default(),
        &config(&with_allow),
        Ipv4Addr::new(10, 0, 0, 2),
        config(CONFIG).sizing.table_regions,
    )
    .unwrap();
    let dns_id = b.maps().vips[&VipKey::v4([10, 0, 0, 100], 53, 17)].vip_id;
    let start = b.maps().vip_log.len();
    b.apply(&config(CONFIG), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap();
    let log = &b.maps().vip_log[start..];
    let flag_cleared = log
        .iter()
        .position(|&(op, id, flags)| {
            op == "set_vip_flags" && id == dns_id && flags & VIP_F_OWN_ALLOW == 0
        })
        .expect("the VIP's flag written without its own list");
    let prefix_gone = log
        .iter()
        .position(|&(op, id, _)| op == "disallow_vip" && id == dns_id)
        .expect("the VIP's prefix removed");
    assert!(flag_cleared < prefix_gone, "{log:?}");
    assert!(b.maps().allow_vip.iter().all(|&(id, _)| id != dns_id));
}

/// A reload that swaps a VIP's own list for another whose union with it
/// does not fit the tries is refused before anything is written: stopping
/// part way would leave both lists in place, wider than either.
#[test]
fn a_swap_of_own_lists_that_cannot_fit_side_by_side_is_refused_whole() {
    // 9,000 /32s each: either list fits (16,384), both together do not.
    let list = |second: u8| {
        let prefixes: Vec<String> = (0..9000u32)
            .map(|i| format!("\"10.{second}.{}.{}/32\"", i / 250, i % 250))
            .collect();
        CONFIG.replace(
            "on_no_backend = \"pass\"",
            &format!(
                "on_no_backend = \"pass\"\nallow = [{}]",
                prefixes.join(", ")
            ),
        )
    };
    let mut b = Balancer::new(
        FakeMaps::default(),
        &config(&list(1)),
        Ipv4Addr::new(10, 0, 0, 2),
        config(CONFIG).sizing.table_regions,
    )
    .unwrap();
    let before = b.maps().clone();
    let refused = b.apply(&config(&list(2)), Ipv4Addr::new(10, 0, 0, 2));
    assert!(
        matches!(refused, Err(BalancerError::Capacity { .. })),
        "{refused:?}"
    );
    assert_eq!(b.maps().allow_vip, before.allow_vip, "no prefix written");
    assert_eq!(b.maps().writes, before.writes, "nothing written");
    // A swap that fits side by side goes through.
    let small = CONFIG.replace(
        "on_no_backend = \"pass\"",
        "on_no_backend = \"pass\"\nallow = [\"10.3.0.0/16\"]",
    );
    b.apply(&config(&small), Ipv4Addr::new(10, 0, 0, 2))
        .unwrap();
    let dns_id = b.maps().vips[&VipKey::v4([10, 0, 0, 100], 53, 17)].vip_id;
    let list_now: Vec<IpNet> = b
        .maps()
        .allow_vip
        .iter()
        .filter(|(id, _)| *id == dns_id)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(list_now, vec!["10.3.0.0/16".parse::<IpNet>().unwrap()]);
}
