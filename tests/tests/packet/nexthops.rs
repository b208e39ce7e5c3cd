//! Next hops: the agent's cached next hops replace `bpf_fib_lookup` and
//! follow a MAC change.

use super::*;

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
