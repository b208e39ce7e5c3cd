//! The verifier's work on each XDP program: loads `xdp_lb`, the programs
//! it tail-calls (`xdp_lb_v6`, the NAT programs) and `xdp_decap` into the
//! running kernel and prints how many instructions the verifier
//! processed (the kernel's `verified_insns`, the `processed N insns` of its
//! log; the limit is 1,000,000). `cargo xtask test-kernel` runs it on Debian
//! 12's 6.1 kernel, whose verifier is older than the host's.

use aya::programs::Xdp;
use lb_common::TAIL_PROGRAMS;
use lb_userspace::{config::Config, dataplane::object};

/// The most instructions the verifier may process for one program: half
/// its limit of 1,000,000, so that a kernel whose verifier explores more
/// (Debian 12's 6.1 walks `xdp_lb` about 1.5 times as far as 6.18) and the
/// features to come keep room. `cargo xtask test-kernel` runs this test on
/// 6.1.
const VERIFIER_BUDGET: u32 = 500_000;

/// Small maps: the verifier's work does not depend on their size.
const CONFIG: &str = r#"
[maglev]
table_size = 251
[[vip]]
name = "web"
address = "10.20.0.100"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "10.20.0.21"
"#;

#[test]
#[ignore = "needs root: cargo xtask test"]
fn programs_pass_the_verifier_and_report_its_instruction_count() {
    lb_tests::require_root();
    let config = Config::parse(CONFIG, "verifier-test")
        .expect("valid")
        .config;
    let mut ebpf = object::load_object(&config).expect("load object");
    let tail = TAIL_PROGRAMS.iter().map(|(name, _)| *name);
    for name in std::iter::once("xdp_lb").chain(tail).chain(["xdp_decap"]) {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("xdp");
        // The error's text carries the verifier's log.
        if let Err(e) = object::load_program(prog) {
            panic!("the verifier refuses {name}: {e}");
        }
        let processed = prog
            .info()
            .expect("program info")
            .verified_instruction_count()
            .expect("verified_insns (kernel 5.16 and later)");
        println!("{name}: processed {processed} insns");
        assert!(
            processed < VERIFIER_BUDGET,
            "{name}: the verifier processed {processed} instructions, over the budget of {VERIFIER_BUDGET}"
        );
    }
}
