//! Real networks: full-size traffic through the VIP on links of
//! MTU 1500 (the load balancer answers "fragmentation needed" for what no
//! longer fits once encapsulated), downloads behind a router whose link
//! toward the client is narrower (its ICMP reaches the backend that serves
//! the flow), `ping` of the VIP, and a VIP's own source list.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

use lb_tests::lab::{BIG_LEN, CLIENT_ADDR, Lab, Mode, OUTSIDE_ADDR, Options, SINK_PORT, VIP};

/// Transfers per direction.
const TRANSFERS: usize = 5;
/// Longest one 1 MiB transfer may take.
const LIMIT: Duration = Duration::from_secs(10);

/// The packets counted for `outcome` by the agent (from `/status`).
fn outcome(lab: &Lab, outcome: &str) -> u64 {
    let status = lab
        .api_get("/status", Duration::from_secs(2))
        .expect("/status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    status["outcomes"][outcome]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no outcome {outcome} in {status}"))
}

/// Sends 1 MiB to the sink VIP and reads its answer; the time it took.
fn upload() -> Result<Duration, String> {
    let addr = SocketAddr::new(VIP.parse().expect("VIP"), SINK_PORT);
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_write_timeout(Some(LIMIT))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(LIMIT)).map_err(|e| e.to_string())?;
    s.write_all(&vec![0x5a; BIG_LEN])
        .map_err(|e| format!("send: {e}"))?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("answer: {e}"))?;
    if answer.trim() != format!("got {BIG_LEN}") {
        return Err(format!("answer {answer:?}"));
    }
    Ok(start.elapsed())
}

/// `ping` of the VIP from the client (from `source` when given): whether a
/// reply came.
fn ping(lab: &Lab, source: Option<&str>) -> bool {
    let mut cmd = lab.client().command("ping");
    cmd.args(["-c", "3", "-i", "0.2", "-W", "1"]);
    if let Some(source) = source {
        cmd.args(["-I", source]);
    }
    cmd.arg(VIP)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A TCP connection to the echo VIP from `source`, and its greeting.
fn echo_from(lab: &Lab, source: &str) -> bool {
    let script = format!(
        "import socket; s = socket.socket(); s.bind(('{source}', 0)); s.settimeout(2); s.connect(('{VIP}', {})); assert s.recv(16)",
        lb_tests::lab::ECHO_PORT
    );
    lab.client()
        .command("python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn uploads_ping_and_a_vip_list_on_links_of_mtu_1500() {
    lb_tests::require_root();
    let mut lab = Lab::start_with(
        "lbmtu",
        Mode::Generic,
        Options {
            echo: true,
            sink: true,
            ..Options::default()
        },
    )
    .expect("lab starts");

    // Full-size uploads: the client's 1500-byte segments do not fit once
    // encapsulated; "fragmentation needed" lowers its path MTU.
    let times: Vec<Duration> = {
        let _client = lab.client().enter().expect("client namespace");
        (0..TRANSFERS)
            .map(|i| upload().unwrap_or_else(|e| panic!("upload {i}: {e}\n{}", lab.agent_log())))
            .collect()
    };
    println!("1 MiB uploads through the VIP: {times:?}");
    assert!(times.iter().all(|t| *t < LIMIT), "{times:?}");
    let sent = outcome(&lab, "too_big_sent");
    println!(
        "too_big_sent = {sent}, forwarded_tx = {}",
        outcome(&lab, "forwarded_tx")
    );
    assert!(sent > 0, "the path MTU was learnt from the load balancer");

    // ping: answered for a private client, not for an outside source.
    let before = outcome(&lab, "echo_replied");
    assert!(ping(&lab, None), "ping of the VIP from {CLIENT_ADDR}");
    assert!(
        !ping(&lab, Some(OUTSIDE_ADDR)),
        "no reply to {OUTSIDE_ADDR}"
    );
    let replied = outcome(&lab, "echo_replied") - before;
    println!("echo_replied += {replied}");
    assert!(replied >= 3);

    // A VIP's own list: echo only for the client's first address.
    let other = "10.30.0.11";
    lab.client()
        .ip(&["addr", "add", &format!("{other}/24"), "dev", "eth0"])
        .expect("second address");
    assert!(
        echo_from(&lab, other),
        "before the list, both addresses reach echo"
    );
    let echo: Vec<(&str, u32)> = lb_tests::lab::BACKENDS.iter().map(|b| (b.0, 1)).collect();
    let text = lab.config_text(&echo, "").replace(
        "name = \"echo\"\n",
        &format!("name = \"echo\"\nallow = [\"{CLIENT_ADDR}/32\"]\n"),
    );
    let reloads = lab.log_count("configuration reloaded");
    lab.write_config(&text).expect("write config");
    assert!(lab.wait_for_log(
        "configuration reloaded",
        reloads + 1,
        Duration::from_secs(10)
    ));
    assert!(echo_from(&lab, CLIENT_ADDR), "the listed /32 reaches echo");
    assert!(
        !echo_from(&lab, other),
        "the other private address does not"
    );
    let web = lab.requests(5, Some(other));
    assert!(
        web.iter().all(Option::is_some),
        "web has no list of its own: {web:?}"
    );
    let metrics = lab
        .api_get("/metrics", Duration::from_secs(2))
        .expect("/metrics");
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("lb_vip_dropped_packets_total{vip=\"echo\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .expect("the per-VIP refusal counter");
    println!("lb_vip_dropped_packets_total{{vip=\"echo\"}} = {refused}");
    assert!(refused > 0);
    lab.stop_agent();
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn downloads_complete_behind_a_narrower_link() {
    lb_tests::require_root();
    let lab = Lab::start_with(
        "lbpmtu",
        Mode::Generic,
        Options {
            router: true,
            ..Options::default()
        },
    )
    .expect("lab starts");
    let mut times = Vec::new();
    for i in 0..TRANSFERS {
        let out = lab
            .client()
            .command("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download} %{time_total}",
            ])
            .args(["--max-time", &LIMIT.as_secs().to_string()])
            .arg(format!("http://{VIP}/big"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        let (size, time) = text.split_once(' ').unwrap_or(("0", "0"));
        assert_eq!(
            size.parse::<usize>().ok(),
            Some(BIG_LEN),
            "download {i}: {text}\n{}",
            lab.agent_log()
        );
        times.push(time.parse::<f64>().unwrap_or(f64::MAX));
    }
    let forwarded = outcome(&lab, "icmp_forwarded");
    println!("1 MiB downloads behind a 1400-byte link: {times:?} s; icmp_forwarded = {forwarded}");
    assert!(times.iter().all(|t| *t < LIMIT.as_secs_f64()));
    assert!(forwarded > 0, "the router's ICMP went to the backend");
}
