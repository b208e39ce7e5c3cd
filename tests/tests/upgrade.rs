//! An agent upgrade upgrades the data plane: the lab's agent (the
//! default build, outer TTL 64) is killed, and an agent of another build
//! (`$LB_BIN_VARIANT`, whose `xdp_lb` puts TTL 63 on outer headers) adopts
//! the pinned data plane and swaps its program in on the pinned link. 50
//! long-lived connections survive, the connection table is kept (`lb
//! explain` finds every flow), the program id changes, and the packets on
//! the wire after the swap carry the new TTL. Beside them, on the same
//! node, 20 connections through a `mode = "nat"` VIP in front of the same
//! echo servers survive too, their translations kept in the pinned NAT
//! table.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    flows::{LongLived, echo_addr},
    lab::{Lab, Mode, Options, VIP},
    netns::Netns,
};
use lb_userspace::dataplane::upgrade::linked_program;

const CONNECTIONS: usize = 50;
/// Connections through the NAT VIP.
const NAT_CONNECTIONS: usize = 20;
/// The NAT VIP's port: VIP:7001 -> each echo server's port 7000.
const NAT_ECHO_PORT: u16 = 7001;
/// A NAT VIP beside the DSR ones, in front of the same echo servers.
const NAT_VIP: &str = r#"
[[vip]]
name = "echo-nat"
address = "10.30.0.100"
port = 7001
protocol = "tcp"
mode = "nat"
  [[vip.backend]]
  address = "10.30.0.21"
  port = 7000
  [[vip.backend]]
  address = "10.30.0.22"
  port = 7000
  [[vip.backend]]
  address = "10.30.0.23"
  port = 7000
"#;

/// Outer TTLs of IP-in-IP frames seen in a namespace, with when.
type Seen = Arc<Mutex<Vec<(Instant, u8)>>>;

/// Records the outer TTL of every IPv4-in-IPv4 frame on any interface of
/// `ns` (an AF_PACKET socket), until `stop`; at most 120 s.
fn sniff(ns_name: String, stop: Arc<AtomicBool>, seen: Seen) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let ns = Netns { name: ns_name };
        let entered = ns.enter();
        std::mem::forget(ns); // the lab's to delete
        let _entered = entered.expect("enter the switch's namespace");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: a plain socket call; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a new socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid fd and option value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            // Ethernet, then IPv4 (0x0800) with protocol 4 (IP-in-IP).
            if n >= 34 && buf[12..14] == [0x08, 0x00] && buf[23] == 4 {
                seen.lock().expect("lock").push((Instant::now(), buf[22]));
            }
        }
    })
}

fn ttls(seen: &Seen, from: Instant) -> Vec<u8> {
    seen.lock()
        .expect("lock")
        .iter()
        .filter(|(at, _)| *at >= from)
        .map(|(_, ttl)| *ttl)
        .collect()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn an_agent_upgrade_swaps_the_program_and_keeps_every_flow() {
    lb_tests::require_root();
    let Some(variant) = std::env::var_os("LB_BIN_VARIANT").map(PathBuf::from) else {
        println!(
            "skipped: LB_BIN_VARIANT (the variant build of lb) is not set; `cargo xtask test` builds it"
        );
        return;
    };
    let mut lab = Lab::start_with(
        "lbupg",
        Mode::Generic,
        Options {
            echo: true,
            extra: NAT_VIP,
            ..Options::default()
        },
    )
    .expect("lab starts");
    let nat_addr = std::net::SocketAddr::new(VIP.parse().expect("VIP"), NAT_ECHO_PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let sniffer = sniff(format!("{}-sw", lab.prefix), stop.clone(), seen.clone());
    let (mut flows, mut nat_flows) = {
        let _client = lab.client().enter().expect("client namespace");
        (
            LongLived::open(CONNECTIONS).expect("long-lived connections"),
            LongLived::open_to(nat_addr, NAT_CONNECTIONS).expect("NAT connections"),
        )
    };
    thread::sleep(Duration::from_secs(1));
    let before = ttls(&seen, Instant::now() - Duration::from_secs(60));
    assert!(!before.is_empty(), "frames seen before the upgrade");
    assert!(before.iter().all(|&t| t == 64), "{before:?}");
    let old = linked_program(&lab.pin_dir().join("link")).expect("old program");

    // The old agent dies; the new build's agent adopts and upgrades.
    lab.kill_agent();
    let logged = lab.log_count("xdp_lb upgraded on the pinned link");
    lab.start_agent_of(&variant, &[]).expect("variant agent");
    assert!(
        lab.wait_for_log(
            "xdp_lb upgraded on the pinned link",
            logged + 1,
            Duration::from_secs(15)
        ),
        "{}",
        lab.agent_log()
    );
    let swapped = Instant::now();
    let new = linked_program(&lab.pin_dir().join("link")).expect("new program");
    thread::sleep(Duration::from_secs(2));
    let after = ttls(&seen, swapped);
    println!(
        "program {old} -> {new}; outer TTL before {:?}, after {:?} ({} frames)",
        before.first(),
        after.first(),
        after.len()
    );
    assert_ne!(old.id, new.id, "the link runs another program");
    assert_ne!(old.tag, new.tag);
    assert!(!after.is_empty(), "frames seen after the upgrade");
    assert!(after.iter().all(|&t| t == 63), "{after:?}");
    let status = lab
        .api_get("/status", Duration::from_secs(2))
        .expect("/status");
    assert!(
        status.contains(&format!("\"id\":{}", new.id)),
        "/status shows the running program: {status}"
    );
    assert_eq!(flows.survivors(), CONNECTIONS, "{:?}", flows.failures());
    assert_eq!(
        nat_flows.survivors(),
        NAT_CONNECTIONS,
        "NAT flows: {:?}",
        nat_flows.failures()
    );

    // The connection table was kept: every flow is in it.
    let lb = lab.lb_binary().to_path_buf();
    for c in &flows.conns {
        let out = lab
            .lb()
            .command(&lb.display().to_string())
            .args(["explain", "--config"])
            .arg(lab.config_path())
            .args(["--proto", "tcp", "--src", &c.local.to_string()])
            .args(["--dst", &echo_addr().to_string()])
            .output()
            .expect("lb explain");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("connection table: entry -> "), "{text}");
    }
    // The NAT table was kept: every NAT flow has its translation.
    for c in &nat_flows.conns {
        let out = lab
            .lb()
            .command(&lb.display().to_string())
            .args(["explain", "--config"])
            .arg(lab.config_path())
            .args(["--proto", "tcp", "--src", &c.local.to_string()])
            .args(["--dst", &nat_addr.to_string()])
            .output()
            .expect("lb explain");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NAT table: translated to"), "{text}");
    }
    flows.finish();
    nat_flows.finish();
    println!(
        "{CONNECTIONS} of {CONNECTIONS} connections survived ({} exchanges); all in the connection table; {NAT_CONNECTIONS} of {NAT_CONNECTIONS} NAT connections too ({} exchanges), every translation kept",
        flows.exchanges(),
        nat_flows.exchanges()
    );
    stop.store(true, Ordering::Relaxed);
    sniffer.join().expect("sniffer");
}
