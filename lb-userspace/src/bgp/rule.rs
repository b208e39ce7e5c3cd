//! The announcement rule: a VIP address is announced while at
//! least one VIP on it has a usable backend, one the data plane would give
//! new flows (healthy, weight above 0: [`lb_common::rules::maglev_member`]).
//! Pure: the agent feeds it the balancer's state after every health change
//! and reload.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::rules::maglev_member;

use crate::balancer::VipState;

/// What the rule decides for one VIP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The address, announced as a /32 or /128.
    pub address: IpAddr,
    /// Whether it is announced.
    pub announce: bool,
    /// Why, per VIP on the address: `web: 2 of 3 backends usable`, or
    /// `web: 0 of 3 backends usable (2 unhealthy, 1 at weight 0)`.
    pub reason: String,
}

/// A VIP as the rule sees it: its name, its address, and the health and
/// weight of each backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipHealth {
    /// Name (for the reason).
    pub name: String,
    /// Address.
    pub address: IpAddr,
    /// (healthy, weight) of each backend.
    pub backends: Vec<(bool, u32)>,
}

impl VipHealth {
    /// The balancer's view of every VIP.
    pub fn of(vips: &[VipState]) -> Vec<Self> {
        vips.iter()
            .map(|v| Self {
                name: v.config.name.clone(),
                address: v.config.address,
                backends: v.backends.iter().map(|b| (b.healthy, b.weight)).collect(),
            })
            .collect()
    }

    fn usable(&self) -> usize {
        self.backends
            .iter()
            .filter(|&&(healthy, weight)| maglev_member(healthy, weight))
            .count()
    }

    fn reason(&self) -> String {
        let total = self.backends.len();
        let usable = self.usable();
        let mut text = format!("{}: {usable} of {total} backends usable", self.name);
        if usable == 0 && total > 0 {
            let unhealthy = self.backends.iter().filter(|b| !b.0).count();
            let drained = self.backends.iter().filter(|b| b.0 && b.1 == 0).count();
            let parts: Vec<String> = [(unhealthy, "unhealthy"), (drained, "at weight 0")]
                .into_iter()
                .filter(|(n, _)| *n > 0)
                .map(|(n, what)| format!("{n} {what}"))
                .collect();
            text.push_str(&format!(" ({})", parts.join(", ")));
        }
        text
    }
}

/// The decision for every VIP address of `vips`, ordered by address.
pub fn decide(vips: &[VipHealth]) -> Vec<Decision> {
    let mut by_address: BTreeMap<IpAddr, Vec<&VipHealth>> = BTreeMap::new();
    for vip in vips {
        by_address.entry(vip.address).or_default().push(vip);
    }
    by_address
        .into_iter()
        .map(|(address, on)| Decision {
            address,
            announce: on.iter().any(|v| v.usable() > 0),
            reason: on.iter().map(|v| v.reason()).collect::<Vec<_>>().join("; "),
        })
        .collect()
}

/// The addresses `decisions` announce, in order.
pub fn announced(decisions: &[Decision]) -> Vec<IpAddr> {
    decisions
        .iter()
        .filter(|d| d.announce)
        .map(|d| d.address)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(name: &str, address: &str, backends: &[(bool, u32)]) -> VipHealth {
        VipHealth {
            name: name.into(),
            address: address.parse().expect("address"),
            backends: backends.to_vec(),
        }
    }

    fn announce_of(vips: &[VipHealth]) -> Vec<(String, bool)> {
        decide(vips)
            .into_iter()
            .map(|d| (d.address.to_string(), d.announce))
            .collect()
    }

    #[test]
    fn one_vip_per_address_over_every_backend_combination() {
        // Every (healthy, weight) of two backends: announced exactly when
        // one is healthy with a weight above 0.
        let states = [(true, 1), (true, 0), (false, 1), (false, 0)];
        for a in states {
            for b in states {
                let vips = [vip("web", "10.0.0.1", &[a, b])];
                let expected = (a.0 && a.1 > 0) || (b.0 && b.1 > 0);
                assert_eq!(
                    announce_of(&vips),
                    [("10.0.0.1".to_string(), expected)],
                    "{a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn an_address_is_announced_while_any_vip_on_it_has_a_usable_backend() {
        let vips = [
            vip("web", "10.0.0.1", &[(false, 1), (false, 1)]),
            vip("dns", "10.0.0.1", &[(true, 1)]),
            vip("api", "10.0.0.2", &[(false, 1), (true, 0)]),
            vip("empty", "10.0.0.3", &[]),
            vip("v6", "fd00::1", &[(true, 5)]),
        ];
        let d = decide(&vips);
        assert_eq!(
            d.iter()
                .map(|d| (d.address.to_string(), d.announce))
                .collect::<Vec<_>>(),
            [
                ("10.0.0.1".to_string(), true),
                ("10.0.0.2".to_string(), false),
                ("10.0.0.3".to_string(), false),
                ("fd00::1".to_string(), true),
            ]
        );
        assert_eq!(
            d[0].reason,
            "web: 0 of 2 backends usable (2 unhealthy); dns: 1 of 1 backends usable"
        );
        assert_eq!(
            d[1].reason,
            "api: 0 of 2 backends usable (1 unhealthy, 1 at weight 0)"
        );
        assert_eq!(d[2].reason, "empty: 0 of 0 backends usable");
        assert_eq!(
            announced(&d),
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn losing_the_last_usable_backend_of_the_last_vip_withdraws() {
        let mut vips = vec![
            vip("web", "10.0.0.1", &[(true, 1)]),
            vip("echo", "10.0.0.1", &[(true, 1)]),
        ];
        assert!(decide(&vips)[0].announce);
        vips[0].backends[0].0 = false;
        assert!(decide(&vips)[0].announce, "echo still serves the address");
        vips[1].backends[0].1 = 0;
        assert!(!decide(&vips)[0].announce, "echo drained: nothing serves");
        vips[0].backends[0].0 = true;
        assert!(decide(&vips)[0].announce, "web recovered");
        assert!(decide(&[]).is_empty(), "no VIP, nothing announced");
    }
}
