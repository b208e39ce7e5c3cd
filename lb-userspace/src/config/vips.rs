//! The rules of each `[[vip]]`: name, address and key unique and usable,
//! its own `allow` list, its health check, and its backends.

use std::{collections::HashSet, net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::{
    schema::*,
    validate::{Validator, usable_address},
    *,
};

impl Validator {
    pub(super) fn vips(&mut self, raw: Vec<RawVip>, allow: &[IpNet], table_size: u32) -> Vec<Vip> {
        if raw.len() > lb_common::MAX_VIPS as usize {
            self.error(
                "vip",
                format!("{} VIPs, at most {}", raw.len(), lb_common::MAX_VIPS),
            );
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut out = Vec::new();
        for (i, vip) in raw.into_iter().enumerate() {
            let key = format!("vip[{i}]");
            if vip.name.is_empty() {
                self.error(format!("{key}.name"), "must not be empty");
            } else if !names.insert(vip.name.clone()) {
                self.error(
                    format!("{key}.name"),
                    format!("{:?} is used by another VIP", vip.name),
                );
            }
            if !keys.insert((vip.address, vip.port, vip.protocol)) {
                self.error(
                    key.clone(),
                    format!(
                        "{} port {} {} is defined twice",
                        vip.address, vip.port, vip.protocol
                    ),
                );
            }
            match vip.address {
                a if !usable_address(a) => {
                    self.error(format!("{key}.address"), format!("{a} cannot be a VIP"));
                }
                addr => {
                    if !allow.iter().any(|net| net.contains(&addr)) {
                        self.error(
                            format!("{key}.address"),
                            format!("{addr} is outside every source_filter.allow prefix: no client could reach it"),
                        );
                    }
                }
            }
            let health_check = self.health_check(&key, &vip);
            let backends = self.backends(&key, &vip, table_size);
            let own_allow = self.vip_allow(&key, &vip, allow);
            self.mode(&key, &vip);
            out.push(Vip {
                name: vip.name,
                address: vip.address,
                port: vip.port,
                protocol: vip.protocol,
                on_no_backend: vip.on_no_backend,
                mode: vip.mode,
                allow: own_allow,
                health_check,
                backends,
            });
        }
        out
    }

    /// A VIP's own `allow` list: prefixes of the VIP's family, host bits
    /// clear, each inside a global prefix (it narrows, never widens).
    pub(super) fn vip_allow(
        &mut self,
        vip_key: &str,
        vip: &RawVip,
        global: &[IpNet],
    ) -> Option<Vec<IpNet>> {
        let texts = vip.allow.as_ref()?;
        let key = format!("{vip_key}.allow");
        if texts.is_empty() {
            self.error(
                &key,
                "is empty: every client would be refused (remove the key to use the global list)",
            );
        }
        let mut out: Vec<IpNet> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let key = format!("{key}[{i}]");
            match text.parse::<IpNet>() {
                Ok(net) if net.trunc() != net => self.error(
                    key,
                    format!("{text:?} has host bits set (did you mean {}?)", net.trunc()),
                ),
                Ok(net) if net.addr().is_ipv4() != vip.address.is_ipv4() => {
                    self.error(key, format!("{text:?} is not of the VIP's address family"));
                }
                Ok(net) if !global.iter().any(|g| g.contains(&net)) => self.error(
                    key,
                    format!(
                        "{text:?} is outside every source_filter.allow prefix: it could never match"
                    ),
                ),
                Ok(net) if out.contains(&net) => {
                    self.error(key, format!("{text:?} is listed twice"));
                }
                Ok(net) => out.push(net),
                Err(_) => self.error(key, format!("{text:?} is not a prefix (address/length)")),
            }
        }
        Some(out)
    }

    pub(super) fn health_check(&mut self, vip_key: &str, vip: &RawVip) -> HealthCheck {
        let key = format!("{vip_key}.health_check");
        let default_kind = if vip.port == 0 {
            HealthCheckKind::None
        } else {
            HealthCheckKind::Tcp
        };
        let Some(raw) = &vip.health_check else {
            return HealthCheck {
                kind: default_kind,
                port: vip.port,
                path: DEFAULT_HTTP_PATH.to_string(),
                expect_status: DEFAULT_EXPECT_STATUS,
                payload: DEFAULT_UDP_PAYLOAD.to_string(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                rise: 2,
                fall: 3,
            };
        };
        // Keys of another kind are errors rather than ignored: a `path` under
        // kind "tcp" is most likely a check someone meant to be "http".
        for (name, given, kind) in [
            ("path", raw.path.is_some(), HealthCheckKind::Http),
            (
                "expect_status",
                raw.expect_status.is_some(),
                HealthCheckKind::Http,
            ),
            ("payload", raw.payload.is_some(), HealthCheckKind::Udp),
        ] {
            if given && raw.kind != kind {
                self.error(
                    format!("{key}.{name}"),
                    format!("applies to kind \"{}\" only", kind.name()),
                );
            }
        }
        let path = raw.path.clone().unwrap_or_else(|| DEFAULT_HTTP_PATH.into());
        if !path.starts_with('/') {
            self.error(
                format!("{key}.path"),
                format!("{path:?} does not start with \"/\""),
            );
        } else if path.bytes().any(|b| !b.is_ascii_graphic() || b == b'#') {
            // An HTTP/1.1 origin-form request target (RFC 9112 section 3.2.1)
            // is visible ASCII only, and has no fragment.
            self.error(
                format!("{key}.path"),
                format!(
                    "{path:?} has a space, a \"#\" or a non-ASCII character (percent-encode it)"
                ),
            );
        }
        let expect_status = raw.expect_status.unwrap_or(DEFAULT_EXPECT_STATUS);
        if !(100..=599).contains(&expect_status) {
            self.error(
                format!("{key}.expect_status"),
                format!("{expect_status} is out of range (100 to 599)"),
            );
        }
        let payload = raw
            .payload
            .clone()
            .unwrap_or_else(|| DEFAULT_UDP_PAYLOAD.into());
        if payload.is_empty() {
            self.error(format!("{key}.payload"), "must not be empty");
        } else if payload.len() > MAX_UDP_PAYLOAD {
            self.error(
                format!("{key}.payload"),
                format!("is {} bytes, at most {MAX_UDP_PAYLOAD}", payload.len()),
            );
        }
        let port = raw.port.unwrap_or(vip.port);
        if port == 0 && raw.kind != HealthCheckKind::None {
            self.error(
                format!("{key}.port"),
                "is required (and not 0) when the VIP's port is 0",
            );
        }
        let interval = self.duration(
            &format!("{key}.interval"),
            raw.interval.as_deref(),
            Duration::from_secs(1),
        );
        let timeout = self.duration(
            &format!("{key}.timeout"),
            raw.timeout.as_deref(),
            Duration::from_millis(500),
        );
        if timeout > interval {
            self.error(
                format!("{key}.timeout"),
                format!(
                    "{} is longer than interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        let rise = raw.rise.unwrap_or(2);
        let fall = raw.fall.unwrap_or(3);
        for (name, value) in [("rise", rise), ("fall", fall)] {
            if !(1..=100).contains(&value) {
                self.error(
                    format!("{key}.{name}"),
                    format!("{value} is out of range (1 to 100)"),
                );
            }
        }
        HealthCheck {
            kind: raw.kind,
            port,
            path,
            expect_status,
            payload,
            interval,
            timeout,
            rise,
            fall,
        }
    }

    pub(super) fn backends(
        &mut self,
        vip_key: &str,
        vip: &RawVip,
        table_size: u32,
    ) -> Vec<BackendConfig> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (j, backend) in vip.backends.iter().enumerate() {
            let key = format!("{vip_key}.backend[{j}]");
            if !seen.insert(backend.address) {
                self.error(
                    format!("{key}.address"),
                    format!("{} is listed twice in VIP {:?}", backend.address, vip.name),
                );
            }
            match backend.address {
                a if !usable_address(a) => {
                    self.error(format!("{key}.address"), format!("{a} cannot be a backend"));
                }
                IpAddr::V4(a) if vip.address.is_ipv6() => self.error(
                    format!("{key}.address"),
                    format!(
                        "{a} is IPv4 but the VIP is IPv6: IPv6-in-IPv4 is not supported (give the VIP IPv6 backends)"
                    ),
                ),
                addr if addr == vip.address => {
                    self.error(format!("{key}.address"), "is the VIP's own address");
                }
                _ => {}
            }
            let weight = backend.weight.unwrap_or(1);
            if weight > MAX_WEIGHT {
                self.error(
                    format!("{key}.weight"),
                    format!("{weight} is out of range (0 to {MAX_WEIGHT})"),
                );
            }
            let port = self.backend_port(&key, vip, backend);
            out.push(BackendConfig {
                address: backend.address,
                weight,
                port,
            });
        }
        if out.len() > MAX_BACKENDS_PER_VIP {
            self.error(
                format!("{vip_key}.backend"),
                format!("{} backends, at most {MAX_BACKENDS_PER_VIP}", out.len()),
            );
        } else if out.len() as u64 * 100 > u64::from(table_size) && !out.is_empty() {
            self.warn(
                "maglev.table_size",
                format!(
                    "{table_size} is less than 100 times the {} backends of VIP {:?}: shares will be uneven",
                    out.len(),
                    vip.name
                ),
            );
        }
        if out.is_empty() {
            self.warn(
                format!("{vip_key}.backend"),
                format!("VIP {:?} has no backend", vip.name),
            );
        } else if out.iter().all(|b| b.weight == 0) {
            self.warn(
                format!("{vip_key}.backend"),
                format!(
                    "every backend of VIP {:?} has weight 0: it takes no new flow",
                    vip.name
                ),
            );
        }
        out
    }
}
