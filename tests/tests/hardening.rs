//! Outside input never stops forwarding nor wipes the running configuration
//!: a flood of idle API clients under a 1024 open-file limit, an
//! empty, truncated, FIFO or huge configuration file, a ConfigMap-style
//! symlink swap and a burst of SIGHUPs, and two agents on `eth0` in two
//! network namespaces. Each test runs the real agent in a namespace lab.

use std::{
    fs,
    io::Read as _,
    net::TcpStream,
    os::unix::fs::symlink,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    flows::LongLived,
    lab::{Lab, Mode, Options},
};

/// Idle API clients opened at once.
const IDLE_CLIENTS: usize = 1100;
/// How long they are held.
const HOLD: Duration = Duration::from_secs(10);
/// Long-lived connections kept through each test.
const FLOWS: usize = 20;

fn echo_lab(prefix: &str, options: Options) -> Lab {
    Lab::start_with(
        prefix,
        Mode::Generic,
        Options {
            echo: true,
            ..options
        },
    )
    .expect("lab starts")
}

/// Every request of `count` through the VIP succeeded.
fn all_succeed(lab: &Lab, count: usize) -> bool {
    lab.requests(count, None).iter().all(Option::is_some)
}

/// `promtool`: `$LB_PROMTOOL` (set by `cargo xtask test`), else on PATH.
fn promtool() -> String {
    std::env::var("LB_PROMTOOL").unwrap_or_else(|_| "promtool".into())
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn idle_api_clients_under_a_low_file_limit_stop_no_flow() {
    lb_tests::require_root();
    // This process holds the idle clients: it needs more than 1024 files.
    let (_, limit) = lb_userspace::agent::raise_open_file_limit().expect("rlimit");
    assert!(limit as usize > IDLE_CLIENTS + 100, "hard limit {limit}");
    let lab = echo_lab(
        "lbhapi",
        Options {
            agent_nofile: Some(1024),
            ..Options::default()
        },
    );
    assert!(
        lab.log_count("open-file limit 1024") == 1,
        "the agent logs its limit:\n{}",
        lab.agent_log()
    );
    let mut flows = {
        let _client = lab.client().enter().expect("client namespace");
        LongLived::open(FLOWS).expect("long-lived connections")
    };

    // 1,100 idle clients of the API, from the LB's namespace.
    let clients: Vec<TcpStream> = {
        let _lb = lab.lb().enter().expect("LB namespace");
        (0..IDLE_CLIENTS)
            .filter_map(|_| {
                TcpStream::connect_timeout(
                    &"127.0.0.1:9470".parse().expect("addr"),
                    Duration::from_secs(1),
                )
                .ok()
            })
            .collect()
    };
    println!("{} of {IDLE_CLIENTS} API connections opened", clients.len());
    assert!(
        clients.len() > 1000,
        "connections opened: {}",
        clients.len()
    );
    thread::sleep(Duration::from_millis(1000));
    // The server keeps at most api.max_connections (256) of them: the rest
    // were answered 503 or closed at once.
    let mut refused = 0;
    let mut busy_answers = 0;
    for c in &clients {
        c.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 512];
        match (&*c).read(&mut buf) {
            Ok(0) => refused += 1,
            Ok(n) => {
                refused += 1;
                if buf[..n].starts_with(b"HTTP/1.1 503") {
                    busy_answers += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => refused += 1,
        }
    }
    println!("refused at once: {refused} ({busy_answers} with a 503)");
    assert!(
        refused >= clients.len() - 256,
        "at most 256 held: {refused} of {} refused",
        clients.len()
    );

    // While they are held: requests through the VIP succeed, no backend
    // goes down.
    let start = Instant::now();
    let (mut sent, mut ok) = (0, 0);
    while start.elapsed() < HOLD {
        let results = lab.requests(5, None);
        sent += results.len();
        ok += results.iter().filter(|r| r.is_some()).count();
        thread::sleep(Duration::from_millis(500));
    }
    drop(clients);
    println!("during the hold: {ok} of {sent} VIP requests succeeded");
    assert_eq!(ok, sent, "agent log:\n{}", lab.agent_log());
    assert_eq!(lab.log_count("is unhealthy"), 0, "{}", lab.agent_log());
    let started = Instant::now();
    let healthz = lab.api_get("/healthz", Duration::from_secs(1));
    assert_eq!(healthz.as_deref(), Some("ok\n"));
    println!("/healthz answered in {:?}", started.elapsed());
    assert_eq!(flows.survivors(), FLOWS, "{:?}", flows.failures());
    flows.finish();

    // /metrics reads cleanly: promtool, and Python's prometheus_client
    // parser sees every counter's samples.
    let text = lab
        .api_get("/metrics", Duration::from_secs(2))
        .expect("/metrics");
    let file = lab.dir.join("metrics.txt");
    fs::write(&file, &text).expect("write metrics");
    let out = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(fs::File::open(&file).expect("metrics file"))
        .output()
        .expect("promtool (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
names = set()
for family in text_string_to_metric_families(open(sys.argv[1]).read()):
    if family.type == "counter":
        for s in family.samples:
            names.add(s.name)
print("\n".join(sorted(names)))
"#;
    // Debian's Python, where `cargo xtask setup` installs prometheus_client.
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = String::from_utf8_lossy(&out.stdout);
    for counter in [
        "lb_packets_total",
        "lb_bytes_total",
        "lb_conntrack_events_total",
        "lb_vip_packets_total",
        "lb_backend_packets_total",
        "lb_reloads_total",
    ] {
        assert!(
            seen.lines().any(|l| l == counter),
            "the Python parser sees {counter}: {seen}"
        );
    }
}

/// Replaces the configuration file by `write` (which writes `tmp`, then
/// renames it over the file) and waits until the agent rejects it.
fn refused(lab: &Lab, what: &str, write: impl FnOnce(&Path), expected: &str) {
    let before = lab.log_count("configuration rejected");
    let tmp = lab.dir.join("lb.toml.new");
    let _ = fs::remove_file(&tmp);
    write(&tmp);
    fs::rename(&tmp, lab.config_path()).expect("rename into place");
    assert!(
        lab.wait_for_log(
            "configuration rejected",
            before + 1,
            Duration::from_secs(10)
        ),
        "{what}: not rejected; log:\n{}",
        lab.agent_log()
    );
    let log = lab.agent_log();
    let line = log
        .lines()
        .rfind(|l| l.contains("configuration rejected"))
        .expect("line");
    assert!(line.contains(expected), "{what}: {line}");
    let status = lab
        .api_get("/status", Duration::from_secs(2))
        .expect("/status");
    assert!(
        status.contains(&expected.replace('"', "\\\"")),
        "{what}: /status shows the refusal: {status}"
    );
    assert!(all_succeed(lab, 10), "{what}: requests fail");
    println!("{what}: refused ({expected}); requests succeed");
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn empty_truncated_fifo_and_huge_configs_are_refused() {
    lb_tests::require_root();
    let mut lab = echo_lab("lbhcfg", Options::default());
    let mut flows = {
        let _client = lab.client().enter().expect("client namespace");
        LongLived::open(FLOWS).expect("long-lived connections")
    };
    let good = fs::read_to_string(lab.config_path()).expect("config");

    refused(
        &lab,
        "empty file",
        |p| fs::write(p, "").expect("write"),
        "has no VIP and would remove the 2 VIPs",
    );
    // Cut inside a string: not TOML any more.
    let cut = good.find("address = \"10.30.0.2").expect("a backend") + 15;
    refused(
        &lab,
        "truncated file",
        |p| fs::write(p, &good[..cut]).expect("write"),
        "lb.toml: TOML parse error",
    );
    refused(
        &lab,
        "FIFO",
        |p| {
            let c = std::ffi::CString::new(p.display().to_string()).expect("path");
            // SAFETY: a valid C string path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        },
        "is a FIFO, not a regular file",
    );
    refused(
        &lab,
        "100 MB file",
        |p| {
            let f = fs::File::create(p).expect("create");
            f.set_len(100 << 20).expect("grow");
        },
        "above the limit of 1048576 bytes",
    );
    assert_eq!(flows.survivors(), FLOWS, "{:?}", flows.failures());
    flows.finish();

    let pid = lab.agent_pid().expect("agent runs");
    let started = Instant::now();
    lab.stop_agent();
    let took = started.elapsed();
    println!("SIGTERM: the agent (pid {pid}) stopped in {took:?}");
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert_eq!(lab.log_count("detached from"), 1, "{}", lab.agent_log());
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn configmap_swap_reloads_once_and_sighup_bursts_coalesce() {
    lb_tests::require_root();
    let lab = Lab::start("lbhwatch", Mode::Generic).expect("lab starts");
    let dir = &lab.dir;
    let text = fs::read_to_string(lab.config_path()).expect("config");
    // Lay the file out as a ConfigMap volume does:
    // lb.toml -> ..data/lb.toml, ..data -> ..v1.
    fs::create_dir_all(dir.join("..v1")).expect("v1");
    fs::write(dir.join("..v1/lb.toml"), &text).expect("v1 file");
    symlink("..v1", dir.join("..data")).expect("..data");
    symlink("..data/lb.toml", dir.join("lb.toml.link")).expect("link");
    let before = lab.log_count("configuration reloaded");
    fs::rename(dir.join("lb.toml.link"), lab.config_path()).expect("swap in the link");
    assert!(
        lab.wait_for_log("configuration reloaded", before + 1, Duration::from_secs(5)),
        "{}",
        lab.agent_log()
    );
    thread::sleep(Duration::from_secs(1));

    // The update: a new directory, ..data swapped by rename, the old one gone.
    let before = lab.log_count("configuration reloaded");
    fs::create_dir_all(dir.join("..v2")).expect("v2");
    fs::write(
        dir.join("..v2/lb.toml"),
        text.replacen(
            "address = \"10.30.0.23\"",
            "address = \"10.30.0.23\"\n  weight = 2",
            1,
        ),
    )
    .expect("v2 file");
    symlink("..v2", dir.join("..data_tmp")).expect("..data_tmp");
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    fs::remove_dir_all(dir.join("..v1")).expect("remove v1");
    thread::sleep(Duration::from_secs(3));
    let reloads = lab.log_count("configuration reloaded") - before;
    println!("ConfigMap swap: {reloads} reload(s)");
    assert_eq!(reloads, 1, "{}", lab.agent_log());
    assert!(
        lab.agent_log()
            .lines()
            .rfind(|l| l.contains("configuration reloaded"))
            .is_some_and(|l| l.contains("weights changed 1")),
        "{}",
        lab.agent_log()
    );

    // 50 SIGHUPs within a second.
    let pid = lab.agent_pid().expect("agent runs") as i32;
    let before = lab.log_count("configuration reloaded");
    for _ in 0..50 {
        // SAFETY: signalling the agent this test started.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_secs(3));
    let reloads = lab.log_count("configuration reloaded") - before;
    println!("50 SIGHUPs in 1 s: {reloads} reload(s)");
    assert!((1..=2).contains(&reloads), "{}", lab.agent_log());
    assert!(all_succeed(&lab, 10));
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn two_agents_in_two_namespaces_on_eth0() {
    lb_tests::require_root();
    let eth0 = Options {
        lb_iface: Some("eth0"),
        ..Options::default()
    };
    let first = Lab::start_with("lbhns1", Mode::Generic, eth0).expect("first lab");
    let second = Lab::start_with("lbhns2", Mode::Generic, eth0).expect("second lab");
    assert_ne!(first.pin_dir(), second.pin_dir());
    for lab in [&first, &second] {
        assert!(lab.pin_dir().join("link").exists(), "{:?}", lab.pin_dir());
        assert!(all_succeed(lab, 10), "{}", lab.agent_log());
        println!(
            "{}: forwarding, pins in {}",
            lab.prefix,
            lab.pin_dir().display()
        );
    }
}
