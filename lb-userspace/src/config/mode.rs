//! The rules of a VIP's `mode` (dsr, nat, dnat) and of its backends'
//! ports: DSR backends get the client's own packets, so only the NAT modes
//! map ports, and they translate within one family.

use super::{
    VipMode,
    schema::{RawBackend, RawVip},
    validate::Validator,
};

impl Validator {
    /// The port backend `backend` of `vip` serves it on (`key` names the
    /// backend): the VIP's own port unless `port` maps it, which only the
    /// NAT modes can do (a DSR backend gets the VIP's own packets), and
    /// never for a VIP of every port (each packet keeps its port).
    pub(super) fn backend_port(&mut self, key: &str, vip: &RawVip, backend: &RawBackend) -> u16 {
        let Some(port) = backend.port else {
            return vip.port;
        };
        if port == vip.port {
            return port;
        }
        if vip.port == 0 {
            self.error(
                format!("{key}.port"),
                "the VIP serves every port (port 0): each packet keeps its port, so a backend port cannot map it",
            );
        } else if port == 0 {
            self.error(format!("{key}.port"), "must be 1 to 65535");
        } else if vip.mode == VipMode::Dsr {
            self.error(
                format!("{key}.port"),
                format!(
                    "{port} differs from the VIP's port {}: in mode = \"dsr\" a backend receives the client's own packets, to the VIP's port; mapping ports takes mode = \"nat\" (or \"dnat\")",
                    vip.port
                ),
            );
        }
        port
    }

    /// The rules of a VIP's `mode` beyond its backends' ports: the NAT
    /// modes translate within one family (NAT44, NAT66).
    pub(super) fn mode(&mut self, key: &str, vip: &RawVip) {
        if vip.mode == VipMode::Dsr {
            return;
        }
        for (j, backend) in vip.backends.iter().enumerate() {
            if backend.address.is_ipv4() != vip.address.is_ipv4() {
                self.error(
                    format!("{key}.backend[{j}].address"),
                    format!(
                        "{} is not of the VIP's family: mode = \"{}\" translates within one family (NAT44, NAT66)",
                        backend.address,
                        vip.mode.name()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        Config, VipMode,
        tests::{problems, rejects},
    };

    /// One VIP (`vip`: its extra keys) with the backends `backends`
    /// (each a `[[vip.backend]]` body).
    fn config(vip: &str, backends: &[&str]) -> String {
        let mut text = format!(
            "[[vip]]\nname = \"web\"\naddress = \"10.0.0.100\"\nport = 80\nprotocol = \"tcp\"\n{vip}\n"
        );
        for b in backends {
            text.push_str(&format!("  [[vip.backend]]\n  {b}\n"));
        }
        text
    }

    #[test]
    fn dsr_is_the_default_and_a_backend_port_equal_to_the_vip_s_is_accepted() {
        let text = config("", &["address = \"10.0.0.21\"\n  port = 80"]);
        let c = Config::parse(&text, "t").expect("valid").config;
        assert_eq!(c.vips[0].mode, VipMode::Dsr);
        assert_eq!(c.vips[0].backends[0].port, 80);
        let text = config("", &["address = \"10.0.0.21\""]);
        let c = Config::parse(&text, "t").expect("valid").config;
        assert_eq!(c.vips[0].backends[0].port, 80, "the VIP's port by default");
    }

    #[test]
    fn a_dsr_backend_on_another_port_is_refused_naming_the_nat_modes() {
        rejects(
            &config("", &["address = \"10.0.0.21\"\n  port = 8080"]),
            "vip[0].backend[0].port: 8080 differs from the VIP's port 80: in mode = \"dsr\" a backend receives the client's own packets, to the VIP's port; mapping ports takes mode = \"nat\" (or \"dnat\")",
        );
    }

    #[test]
    fn a_vip_of_every_port_cannot_map_ports() {
        let text = config("", &["address = \"10.0.0.21\"\n  port = 8080"])
            .replace("port = 80\n", "port = 0\n");
        rejects(
            &text,
            "vip[0].backend[0].port: the VIP serves every port (port 0): each packet keeps its port, so a backend port cannot map it",
        );
    }

    #[test]
    fn nat_modes_translate_within_one_family_and_map_ports() {
        let text = config(
            "mode = \"nat\"",
            &[
                "address = \"10.0.0.21\"\n  port = 8080",
                "address = \"fd00::21\"\n  port = 8080",
            ],
        );
        rejects(
            &text,
            "vip[0].backend[1].address: fd00::21 is not of the VIP's family: mode = \"nat\" translates within one family (NAT44, NAT66)",
        );
        // A mapped port is no error in a NAT mode; the NAT table is sized
        // only when a VIP translates.
        for mode in ["nat", "dnat"] {
            let c = Config::parse(
                &config(
                    &format!("mode = \"{mode}\""),
                    &["address = \"10.0.0.21\"\n  port = 8080"],
                ),
                "t",
            )
            .expect("valid")
            .config;
            assert_eq!(c.vips[0].mode.name(), mode);
            assert_eq!(c.vips[0].backends[0].port, 8080);
            assert_eq!(c.sizing.nat_entries, 2 * c.nat.max_entries);
        }
        let dsr = Config::parse(&config("", &["address = \"10.0.0.21\""]), "t")
            .expect("valid")
            .config;
        assert_eq!(dsr.sizing.nat_entries, 2);
        let unknown = problems(&config("mode = \"fullnat\"", &["address = \"10.0.0.21\""]));
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert!(unknown[0].contains("fullnat"), "{unknown:?}");
    }
}
