//! The BGP announcement on `/metrics` and in `lb status`'s table.

use std::fmt::Write as _;

use prometheus_client::encoding::DescriptorEncoder;

use super::{
    metrics::{counters, gauges},
    shared::Labels,
};
use crate::bgp::status::BgpStatus;

/// BGP metrics: per-peer session state and uptime and routes sent, each VIP
/// address's announcement, the speaker's restarts and errors.
pub(super) fn metrics(e: &mut DescriptorEncoder, s: &BgpStatus) -> Result<(), std::fmt::Error> {
    let peer = |p: &crate::bgp::status::PeerStatus| -> Labels { vec![("peer", p.address.clone())] };
    gauges(
        e,
        "lb_bgp_speaker_up",
        "1 while BIRD runs and answers.",
        &[(vec![], i64::from(s.speaker == "running"))],
    )?;
    counters(
        e,
        "lb_bgp_speaker_restarts",
        "Times BIRD died and was started again.",
        &[(vec![], s.restarts)],
    )?;
    counters(
        e,
        "lb_bgp_control_errors",
        "Commands to BIRD that failed and lines of its answers that could not be read.",
        &[(vec![], s.errors)],
    )?;
    gauges(
        e,
        "lb_bgp_session_up",
        "1 while the BGP session with the peer is established.",
        &s.peers
            .iter()
            .map(|p| (peer(p), i64::from(p.established())))
            .collect::<Vec<_>>(),
    )?;
    gauges(
        e,
        "lb_bgp_session_state",
        "1 for the peer's current BGP state (RFC 4271 section 8.2.2).",
        &s.peers
            .iter()
            .map(|p| {
                let mut labels = peer(p);
                labels.push(("state", p.state.clone()));
                (labels, 1)
            })
            .collect::<Vec<_>>(),
    )?;
    gauges(
        e,
        "lb_bgp_session_uptime_seconds",
        "Seconds since the session with the peer was established (0 while it is not).",
        &s.peers
            .iter()
            .map(|p| (peer(p), p.uptime_seconds.unwrap_or(0.0) as i64))
            .collect::<Vec<_>>(),
    )?;
    gauges(
        e,
        "lb_bgp_session_exported_routes",
        "VIP addresses announced to the peer.",
        &s.peers
            .iter()
            .map(|p| (peer(p), p.exported_routes.unwrap_or(0) as i64))
            .collect::<Vec<_>>(),
    )?;
    gauges(
        e,
        "lb_bgp_announced",
        "1 while the VIP address is announced: held by BIRD, and a session with a peer of its family established.",
        &s.addresses
            .iter()
            .map(|a| (vec![("address", a.address.clone())], i64::from(a.announced)))
            .collect::<Vec<_>>(),
    )?;
    Ok(())
}

/// The BGP part of `lb status`: the speaker, the peers, and each VIP
/// address with whether it is announced and why (not).
pub fn table(s: &BgpStatus) -> String {
    let mut out = String::new();
    let pid = s.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let _ = writeln!(
        out,
        "\nBGP: BIRD {}{pid}, {} restarts, {} errors",
        s.speaker, s.restarts, s.errors
    );
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "  last error: {e}");
    }
    let _ = writeln!(
        out,
        "  {:<40} {:>10} {:<12} {:>10} {:>8}  last error",
        "peer", "AS", "state", "up", "routes"
    );
    for p in &s.peers {
        let up = p
            .uptime_seconds
            .map_or_else(|| "-".into(), |u| format!("{u:.0}s"));
        let _ = writeln!(
            out,
            "  {:<40} {:>10} {:<12} {:>10} {:>8}  {}",
            p.address,
            p.remote_as,
            p.state,
            up,
            p.exported_routes
                .map_or_else(|| "-".into(), |r| r.to_string()),
            p.last_error.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "  {:<40} {:<12}  why", "VIP address", "announced");
    for a in &s.addresses {
        let state = match (a.wanted, a.announced) {
            (true, true) => "yes",
            (false, false) => "no",
            (true, false) => "pending",
            (false, true) => "withdrawing",
        };
        let _ = writeln!(out, "  {:<40} {state:<12}  {}", a.address, a.reason);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::status::{AddressStatus, PeerStatus};

    #[test]
    fn table_says_what_is_announced_and_why_not() {
        let s = BgpStatus {
            speaker: "running".into(),
            pid: Some(42),
            peers: vec![PeerStatus {
                address: "10.77.0.1".into(),
                remote_as: 65000,
                state: "Established".into(),
                uptime_seconds: Some(12.0),
                exported_routes: Some(1),
                last_error: None,
            }],
            addresses: vec![
                AddressStatus {
                    address: "10.1.0.1".into(),
                    wanted: true,
                    announced: true,
                    reason: "web: 2 of 2 backends usable".into(),
                },
                AddressStatus {
                    address: "10.1.0.2".into(),
                    wanted: false,
                    announced: false,
                    reason: "api: 0 of 1 backends usable (1 unhealthy)".into(),
                },
            ],
            ..BgpStatus::default()
        };
        let t = table(&s);
        assert!(t.contains("BGP: BIRD running (pid 42)"), "{t}");
        assert!(t.contains("10.77.0.1") && t.contains("Established") && t.contains("12s"));
        let no = t.lines().find(|l| l.contains("10.1.0.2")).expect("line");
        assert!(no.contains(" no ") && no.contains("(1 unhealthy)"), "{no}");
        let yes = t.lines().find(|l| l.contains("10.1.0.1")).expect("line");
        assert!(yes.contains(" yes "), "{yes}");
    }
}
