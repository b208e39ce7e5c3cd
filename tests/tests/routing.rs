//! No routing loop for VIP traffic no VIP takes: in a routed lab (a router
//! in front of the client, the load balancer's default route via it, the
//! VIP routed to the load balancer), UDP datagrams to a port of the VIP
//! address that no VIP serves reach the load balancer's interface once
//! each, and are dropped and counted (`drop_no_vip`), instead of being
//! routed back out to the router and in again until their TTL runs out.

use std::time::Duration;

use lb_common::Outcome;
use lb_tests::lab::{LB_ADDR, Lab, Mode, Options, ROUTER_ADDR, if_counters};
use lb_userspace::dataplane::stats::StatsReader;

/// Datagrams sent.
const DATAGRAMS: u64 = 100;
/// A VIP address outside the node's own subnet (the lab's VIP is on the
/// node's link, where the kernel would resolve it rather than route it),
/// routed to the node by the router.
const ROUTED_VIP: &str = "10.32.0.100";
/// Its VIP: TCP port 80, in front of the lab's backends.
const ROUTED_VIP_CONFIG: &str = r#"
[[vip]]
name = "routed"
address = "10.32.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.30.0.21"
"#;

/// Sends `DATAGRAMS` UDP datagrams from the client to VIP:9999 (no VIP).
const SEND: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"x" * 32, (sys.argv[1], 9999))
    time.sleep(0.002)
"#;

#[test]
#[ignore = "needs root: cargo xtask test"]
fn datagrams_to_a_vip_address_without_a_vip_reach_the_node_once() {
    lb_tests::require_root();
    let lab = Lab::start_with(
        "lbloop",
        Mode::Generic,
        Options {
            router: true,
            extra: ROUTED_VIP_CONFIG,
            ..Options::default()
        },
    )
    .expect("lab starts");
    // The node's default route goes to the router, as on a routed network,
    // and the router checks no reverse path (a router with several paths
    // cannot): a packet the node sends back to it is routed to the node
    // again.
    lab.lb()
        .ip(&["route", "add", "default", "via", ROUTER_ADDR])
        .expect("default route");
    let router = lab
        .ns
        .iter()
        .find(|n| n.name == "lbloop-rt")
        .expect("the router's namespace");
    for key in ["all", "default", "eth0", "rc"] {
        router
            .sysctl(&format!("net.ipv4.conf.{key}.rp_filter=0"))
            .expect("rp_filter");
    }
    router
        .ip(&["route", "add", &format!("{ROUTED_VIP}/32"), "via", LB_ADDR])
        .expect("the router's route to the VIP");
    let stats = StatsReader::from_pins(&lab.pin_dir()).expect("pinned counters");
    let dropped = stats.outcome(Outcome::DropNoVip).packets;
    let before = if_counters(lab.lb(), &lab.lb_iface).expect("counters");
    let status = lab
        .client()
        .command("python3")
        .args(["-c", SEND, ROUTED_VIP, &DATAGRAMS.to_string()])
        .status()
        .expect("sender");
    assert!(status.success());
    // Long enough for a loop of ~30 round trips to show.
    std::thread::sleep(Duration::from_secs(2));
    let after = if_counters(lab.lb(), &lab.lb_iface).expect("counters");
    let received = after.rx_packets - before.rx_packets;
    let dropped = stats.outcome(Outcome::DropNoVip).packets - dropped;
    println!(
        "{DATAGRAMS} datagrams to {ROUTED_VIP}:9999 (no VIP): the node's interface received {received} packets, {dropped} dropped as drop_no_vip"
    );
    assert_eq!(dropped, DATAGRAMS, "each datagram dropped and counted once");
    // The health checks' and ARP's few packets aside: no loop (it made
    // about 32 per datagram).
    assert!(
        received < DATAGRAMS + 50,
        "{received} packets received for {DATAGRAMS} datagrams"
    );
}
