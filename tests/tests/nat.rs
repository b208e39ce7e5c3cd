//! The NAT modes in the namespace lab, through the real XDP path: backends
//! with no VIP, no decapsulation program and the strict reverse-path
//! filter, servers on their own address and port 8080 only, VIP:80 in
//! front (`mode = "nat"`); UDP answered from the VIP; long-lived
//! connections kept across a reload and an agent SIGKILL and restart; and
//! `mode = "dnat"`, where each backend sees the client's own address.

use std::{
    collections::BTreeMap,
    fs,
    process::{Child, Stdio},
    thread,
    time::Duration,
};

use lb_tests::{
    flows::LongLived,
    lab::{BACKENDS, CLIENT_ADDR, LB_ADDR, Lab, Mode, Options, VIP},
};

/// The UDP VIP's backends' port, and its server: answers each datagram
/// with the backend's name (run as `python3 -c SCRIPT NAME ADDR`).
const UDP_PORT: u16 = 5353;
const UDP_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], 5353))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[1].encode() + b" " + data, peer)
"#;
/// The client: `count` requests to VIP:53 on one connected socket each
/// (which takes replies from VIP:53 only), at most 1 s each; prints the
/// name of each answering backend, or `-`.
const UDP_CLIENT: &str = r#"
import socket, sys
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.connect((sys.argv[1], 53))
    s.send(b"q%d" % i)
    try:
        print(s.recv(2048).split()[0].decode())
    except OSError:
        print("-")
    s.close()
"#;

/// NAT flows held open at once while the health checks run.
const MANY: usize = 2000;

/// Raises this process's soft open-file limit to its hard limit (the
/// [`MANY`] connections).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Processes this test started, ended by pid when dropped.
struct Started(Vec<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The UDP VIP over the three backends' port 5353.
fn udp_vip() -> String {
    let mut text = format!(
        "\n[[vip]]\nname = \"dns\"\naddress = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\nmode = \"nat\"\n  [vip.health_check]\n  kind = \"none\"\n"
    );
    for (_, addr) in BACKENDS {
        text.push_str(&format!(
            "\n  [[vip.backend]]\n  address = \"{addr}\"\n  port = {UDP_PORT}\n"
        ));
    }
    text
}

/// Requests per answering backend, and failures.
fn tally(answers: &[Option<String>]) -> (BTreeMap<String, usize>, usize) {
    let mut per = BTreeMap::new();
    let mut failed = 0;
    for a in answers {
        match a {
            Some(name) => *per.entry(name.clone()).or_default() += 1,
            None => failed += 1,
        }
    }
    (per, failed)
}

/// The peer address of each `GET /whoami` in backend `name`'s HTTP server
/// log (python's http.server logs each request with the peer's address
/// first; the lab's readiness checks are HEAD requests).
fn http_peers(lab: &Lab, name: &str) -> Vec<String> {
    fs::read_to_string(lab.dir.join(format!("http-{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"GET /whoami"))
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect()
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn nat_serves_backends_that_need_nothing_and_keeps_their_flows() {
    lb_tests::require_root();
    let mut lab = Lab::start_with(
        "lbnat",
        Mode::Native,
        Options {
            nat: Some("nat"),
            echo: true,
            ..Options::default()
        },
    )
    .expect("lab starts");
    for (name, _) in BACKENDS {
        let be = lab
            .ns
            .iter()
            .find(|n| n.name == format!("lbnat-{name}"))
            .expect("backend namespace");
        assert!(!be.xdp_attached("eth0"), "{name}: no XDP program");
        assert_eq!(be.sysctl_value("net.ipv4.conf.eth0.rp_filter"), "1");
    }

    // 300 requests to VIP:80, each on a new connection: every one served,
    // spread over the three backends, which see the LB's SNAT address.
    let (per, failed) = tally(&lab.requests(300, None));
    println!("300 HTTP requests through mode = \"nat\": {per:?}, {failed} failed");
    assert_eq!(failed, 0, "{per:?}");
    assert_eq!(per.len(), 3, "spread over be1..be3: {per:?}");
    for (name, _) in BACKENDS {
        let peers = http_peers(&lab, name);
        assert!(
            peers.len() >= per[name] && peers.iter().all(|p| p == LB_ADDR),
            "{name} sees the SNAT address, never the client's: {peers:?}"
        );
    }

    // UDP: 200 requests to VIP:53 answered from VIP:53.
    let mut servers = Started(Vec::new());
    for (name, addr) in BACKENDS {
        let be = lab
            .ns
            .iter()
            .find(|n| n.name == format!("lbnat-{name}"))
            .expect("backend namespace");
        servers.0.push(
            be.command("python3")
                .args(["-c", UDP_SERVER, name, addr])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("UDP server"),
        );
    }
    lab.reload(&lab.config_text(&[("be1", 1), ("be2", 1), ("be3", 1)], &udp_vip()));
    thread::sleep(Duration::from_millis(300));
    let out = lab
        .client()
        .command("python3")
        .args(["-c", UDP_CLIENT, VIP, "200"])
        .output()
        .expect("UDP client");
    let answers: Vec<Option<String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| (l != "-").then(|| l.to_string()))
        .collect();
    assert_eq!(answers.len(), 200);
    let (per, failed) = tally(&answers);
    println!("200 UDP requests through mode = \"nat\": {per:?}, {failed} unanswered");
    assert_eq!(failed, 0, "{per:?}");
    assert_eq!(per.len(), 3, "{per:?}");

    // 20 long-lived connections through the echo VIP (nat, port 7000).
    let client = lab.client().enter().expect("enter the client's namespace");
    let mut flows = LongLived::open(20).expect("long-lived connections");
    drop(client);
    let soak = |flows: &LongLived, what: &str, lab: &Lab| {
        let before = flows.exchanges();
        thread::sleep(Duration::from_millis(1500));
        assert!(flows.exchanges() > before, "{what}: exchanges went on");
        assert!(
            flows.failures().is_empty(),
            "{what}: {:?}; agent log:\n{}",
            flows.failures(),
            lab.agent_log()
        );
    };
    soak(&flows, "open", &lab);
    // A reload that changes another VIP.
    lab.reload(&lab.config_text(&[("be1", 1), ("be2", 1), ("be3", 1)], ""));
    soak(&flows, "reload removing the UDP VIP", &lab);
    // The agent killed and started again: it adopts the pinned data plane,
    // the NAT table with it.
    lab.kill_agent();
    soak(&flows, "agent killed", &lab);
    let before = lab.log_count("adopted the data plane");
    lab.start_agent(&[]).expect("agent starts");
    assert!(
        lab.wait_for_log(
            "adopted the data plane",
            before + 1,
            Duration::from_secs(15)
        ),
        "log:\n{}",
        lab.agent_log()
    );
    soak(&flows, "agent restarted", &lab);
    assert_eq!(flows.survivors(), 20);
    println!(
        "20 long-lived NAT connections on {:?}: {} exchanges, all alive after a reload and an agent SIGKILL and restart",
        flows.per_backend(),
        flows.exchanges()
    );
    flows.finish();
    drop(flows);

    // 2,000 NAT flows open at once: the agent's own health checks (TCP
    // connects from the host, whose source ports are outside the SNAT
    // ports) keep working.
    raise_open_file_limit();
    let client = lab.client().enter().expect("enter the client's namespace");
    let mut open = Vec::with_capacity(MANY);
    for _ in 0..MANY {
        match lb_tests::flows::connect() {
            Ok(conn) => open.push(conn),
            Err(e) => panic!("connection {} of {MANY}: {e}", open.len() + 1),
        }
    }
    drop(client);
    // A sweep of the NAT table (every 5 s) has counted them.
    thread::sleep(Duration::from_secs(6));
    let status: serde_json::Value = serde_json::from_str(
        &lab.api_get("/status", Duration::from_secs(2))
            .expect("/status"),
    )
    .expect("JSON");
    let echo = status["vips"]
        .as_array()
        .expect("vips")
        .iter()
        .find(|v| v["name"] == "echo")
        .expect("VIP echo");
    for b in echo["backends"].as_array().expect("backends") {
        assert_eq!(b["state"], "healthy", "{b}");
        assert_eq!(b["last_check"]["ok"], true, "{b}");
        assert!(
            b["last_check"]["age_seconds"].as_f64().unwrap_or(99.0) < 2.0,
            "{b}"
        );
    }
    let translations = echo["nat"]["translations"].as_u64().unwrap_or(0);
    println!(
        "{MANY} NAT flows open ({translations} translations at the last sweep): every backend healthy, each last checked under 2 s ago"
    );
    assert!(translations >= MANY as u64, "{echo}");
    drop(open);

    // What the agent shows: the mode, translations, replies.
    let status = lab
        .api_get("/status", Duration::from_secs(2))
        .expect("/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let web = status["vips"]
        .as_array()
        .expect("vips")
        .iter()
        .find(|v| v["name"] == "web")
        .expect("VIP web");
    assert_eq!(web["mode"], "nat");
    assert!(web["nat"]["replies"]["packets"].as_u64().unwrap_or(0) > 300);
    let metrics = lab
        .api_get("/metrics", Duration::from_secs(2))
        .expect("/metrics");
    assert!(
        metrics.contains("lb_nat_translations{vip=\"web\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("lb_nat_events_total{event=\"nat_allocated\"}"));
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn dnat_serves_every_request_and_backends_see_the_client() {
    lb_tests::require_root();
    let lab = Lab::start_with(
        "lbdnat",
        Mode::Native,
        Options {
            nat: Some("dnat"),
            ..Options::default()
        },
    )
    .expect("lab starts");
    let (per, failed) = tally(&lab.requests(150, None));
    println!("150 HTTP requests through mode = \"dnat\": {per:?}, {failed} failed");
    assert_eq!(failed, 0, "{per:?}");
    assert_eq!(per.len(), 3, "{per:?}");
    for (name, _) in BACKENDS {
        let peers = http_peers(&lab, name);
        assert!(
            peers.len() >= per[name] && peers.iter().all(|p| p == CLIENT_ADDR),
            "{name} sees the client's own address: {peers:?}"
        );
    }
}
