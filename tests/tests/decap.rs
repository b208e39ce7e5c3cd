//! `lb decap` follows this host's addresses: an address added to a backend
//! after `lb decap` started is an outer destination it accepts within
//! seconds, so a load balancer that sends the backend's tunnels to it is
//! served.

use std::time::Duration;

use lb_tests::lab::{Lab, Mode, Options};

#[test]
#[ignore = "needs root: cargo xtask test"]
fn an_address_added_after_start_is_an_outer_destination() {
    lb_tests::require_root();
    let lab = Lab::start_with("lbdcp", Mode::Generic, Options::default()).expect("lab starts");
    let be1 = lab
        .ns
        .iter()
        .find(|n| n.name == "lbdcp-be1")
        .expect("be1's namespace");
    be1.ip(&["addr", "add", "10.30.0.121/24", "dev", "eth0"])
        .expect("a new address on be1");
    // `lb decap` reads the host's addresses every 2 s.
    std::thread::sleep(Duration::from_secs(3));
    let before = lab.log_count("configuration reloaded");
    let text = lab
        .config_text(&[("be1", 1), ("be2", 1), ("be3", 1)], "")
        .replacen("address = \"10.30.0.21\"", "address = \"10.30.0.121\"", 1);
    lab.write_config(&text).expect("write config");
    assert!(lab.wait_for_log(
        "configuration reloaded",
        before + 1,
        Duration::from_secs(10)
    ));
    let answers = lab.requests(60, None);
    let be1_served = answers
        .iter()
        .filter(|a| a.as_deref() == Some("be1"))
        .count();
    let failed = answers.iter().filter(|a| a.is_none()).count();
    println!(
        "60 requests with be1 at its new address 10.30.0.121: {be1_served} served by be1, {failed} failed"
    );
    assert_eq!(failed, 0, "every request served");
    assert!(be1_served > 0, "be1 serves at its new address");
    let log = std::fs::read_to_string(lab.dir.join("decap-be1.log")).unwrap_or_default();
    assert!(log.contains("outer destinations now"), "{log}");
}
