//! A backend whose neighbour entry is gone is reached again: with no
//! health check (nothing of the node's own talks to the backend), the
//! load balancer's neighbour entries flushed, `xdp_lb` hands its
//! encapsulated packets to the kernel, which drops them (their source is
//! the node's own address) without resolving anything; the agent solicits
//! the neighbour of every unresolved backend, so requests are served again
//! within seconds.

use std::time::{Duration, Instant};

use lb_tests::lab::{Lab, Mode, Options};

#[test]
#[ignore = "needs root: cargo xtask test"]
fn a_flushed_neighbour_is_resolved_again_without_health_checks() {
    lb_tests::require_root();
    let lab = Lab::start_with("lbneigh", Mode::Generic, Options::default()).expect("lab starts");
    // No health check: nothing but forwarded traffic goes to the backends.
    let before = lab.log_count("configuration reloaded");
    let text = lab
        .config_text(&[("be1", 1), ("be2", 1), ("be3", 1)], "")
        .replace("kind = \"tcp\"", "kind = \"none\"");
    lab.write_config(&text).expect("write config");
    assert!(lab.wait_for_log(
        "configuration reloaded",
        before + 1,
        Duration::from_secs(10)
    ));
    assert!(lab.requests(6, None).iter().all(Option::is_some));
    lab.lb()
        .ip(&["neigh", "flush", "dev", &lab.lb_iface])
        .expect("flush the neighbours");
    let flushed = Instant::now();
    // The agent's next-hop cache follows the flush (its entries emptied:
    // xdp_lb looks next hops up per packet, and finds no neighbour).
    std::thread::sleep(Duration::from_secs(1));
    let served = lb_tests::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        lab.requests(6, None)
            .iter()
            .all(Option::is_some)
            .then_some(())
    });
    println!(
        "neighbours flushed: every backend served again after {:.1} s",
        flushed.elapsed().as_secs_f64()
    );
    assert!(
        served.is_some(),
        "requests still fail 10 s after the flush; agent log:\n{}",
        lab.agent_log()
    );
}
