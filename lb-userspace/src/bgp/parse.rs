//! Reading BIRD's answers: `birdc show protocols all` (sessions) and
//! `birdc show route protocol P` (what BIRD holds to announce). BIRD's text
//! is a human format: lines that do not fit are skipped and counted, never
//! fatal, so a BIRD that words things differently degrades the status
//! shown, not the agent.

use std::net::IpAddr;

use ipnet::IpNet;

/// One BGP protocol of `show protocols all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// BIRD's protocol name (`lb_peer_...`).
    pub name: String,
    /// Protocol state: `up`, `start`, `down`, ...
    pub state: String,
    /// When the protocol last changed state, in seconds since the epoch
    /// (the configuration sets `timeformat protocol "%s"`).
    pub since: Option<u64>,
    /// BGP state (RFC 4271 section 8.2.2): `Established`, `Active`,
    /// `Connect`, `OpenSent`, `OpenConfirm`, `Idle`.
    pub bgp_state: Option<String>,
    /// `Neighbor address`.
    pub neighbor: Option<IpAddr>,
    /// Routes exported to the peer, over the channels.
    pub exported: Option<u64>,
    /// `Last error`, as BIRD words it.
    pub last_error: Option<String>,
}

impl Session {
    /// Whether the session is established.
    pub fn established(&self) -> bool {
        self.bgp_state.as_deref() == Some("Established")
    }
}

/// What a parse kept, and how many lines it could not read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed<T> {
    /// What was read.
    pub items: Vec<T>,
    /// Lines that did not fit the expected shape.
    pub unreadable: usize,
}

/// Whether `line` is birdc's greeting (`BIRD 2.0.12 ready.`).
fn greeting(line: &str) -> bool {
    line.starts_with("BIRD ") && line.trim_end().ends_with("ready.")
}

/// The BGP protocols of `show protocols all` output.
pub fn protocols(text: &str) -> Parsed<Session> {
    let mut out = Parsed::default();
    let mut current: Option<Session> = None;
    let mut is_bgp = false;
    for line in text.lines() {
        if line.trim().is_empty() || greeting(line) || line.starts_with("Name ") {
            continue;
        }
        if !line.starts_with(char::is_whitespace) {
            // "NAME  PROTO  TABLE  STATE  SINCE  INFO..."
            if let Some(s) = current.take().filter(|_| is_bgp) {
                out.items.push(s);
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 5 {
                out.unreadable += 1;
                is_bgp = false;
                continue;
            }
            is_bgp = fields[1] == "BGP";
            current = Some(Session {
                name: fields[0].to_string(),
                state: fields[3].to_string(),
                since: fields[4].parse().ok(),
                bgp_state: fields.get(5).map(|s| (*s).to_string()),
                ..Session::default()
            });
            continue;
        }
        let (Some(s), true) = (current.as_mut(), is_bgp) else {
            continue;
        };
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "BGP state" => s.bgp_state = Some(value.to_string()),
            "Neighbor address" => match value.parse() {
                Ok(a) => s.neighbor = Some(a),
                Err(_) => out.unreadable += 1,
            },
            "Last error" => s.last_error = Some(value.to_string()),
            "Routes" => {
                // "0 imported, 2 exported, 0 preferred"
                let exported = value.split(',').find_map(|part| {
                    part.trim()
                        .strip_suffix(" exported")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                });
                match exported {
                    Some(n) => *s.exported.get_or_insert(0) += n,
                    None => out.unreadable += 1,
                }
            }
            _ => {}
        }
    }
    if let Some(s) = current.filter(|_| is_bgp) {
        out.items.push(s);
    }
    out
}

/// The prefixes of `show route` output (`10.1.0.1/32  blackhole [...]`).
pub fn routes(text: &str) -> Parsed<IpNet> {
    let mut out = Parsed::default();
    for line in text.lines() {
        if line.trim().is_empty()
            || greeting(line)
            || line.starts_with(char::is_whitespace)
            || line.starts_with("Table ")
        {
            continue;
        }
        match line.split_whitespace().next().map(str::parse::<IpNet>) {
            Some(Ok(net)) => out.items.push(net),
            _ => out.unreadable += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `birdc show protocols all` of BIRD 2.0.12 (Debian bookworm), one
    /// session up and one connecting.
    const PROTOCOLS: &str = "BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
lb_device  Device     ---        up     1796120034    

lb_vips4   Static     master4    up     1796120034    
  Channel ipv4
    State:          UP
    Table:          master4
    Preference:     200
    Input filter:   ACCEPT
    Output filter:  REJECT
    Routes:         2 imported, 0 exported, 2 preferred

lb_peer_10_99_0_1 BGP        ---        up     1796120038    Established   
  BGP state:          Established
    Neighbor address: 10.99.0.1
    Neighbor AS:      65000
    Local AS:         65001
    Neighbor ID:      10.99.0.1
    Session:          external AS4
    Source address:   10.99.0.2
    Hold timer:       5.501/9
    Keepalive timer:  0.908/3
  Channel ipv4
    State:          UP
    Table:          master4
    Preference:     100
    Input filter:   REJECT
    Output filter:  (unnamed)
    Routes:         0 imported, 2 exported, 0 preferred
    Route change stats:     received   rejected   filtered    ignored   accepted
      Import updates:              0          0          0          0          0
    BGP Next hop:   10.99.0.2
  Channel ipv6
    State:          DOWN
    Table:          master6

lb_peer_10_99_0_3 BGP        ---        start  1796120034    Active        Socket: Connection refused
  BGP state:          Active
    Neighbor address: 10.99.0.3
    Neighbor AS:      65000
    Local AS:         65001
    Connect delay:    0.518/5
    Last error:       Socket: Connection refused
  Channel ipv4
    State:          DOWN
";

    #[test]
    fn sessions_are_read_from_show_protocols_all() {
        let p = protocols(PROTOCOLS);
        assert_eq!(p.unreadable, 0);
        assert_eq!(p.items.len(), 2, "BGP protocols only: {:?}", p.items);
        let up = &p.items[0];
        assert_eq!(up.name, "lb_peer_10_99_0_1");
        assert!(up.established());
        assert_eq!(up.since, Some(1_796_120_038));
        assert_eq!(up.neighbor, Some("10.99.0.1".parse().unwrap()));
        assert_eq!(up.exported, Some(2));
        let down = &p.items[1];
        assert!(!down.established());
        assert_eq!(down.bgp_state.as_deref(), Some("Active"));
        assert_eq!(down.exported, None, "no Routes line while down");
        assert_eq!(
            down.last_error.as_deref(),
            Some("Socket: Connection refused")
        );
    }

    #[test]
    fn unexpected_text_is_counted_not_fatal() {
        let p = protocols("BIRD 2.0.12 ready.\ngarbage\nx BGP\n  Routes: many\n");
        assert!(p.items.is_empty());
        assert_eq!(p.unreadable, 2);
        let odd = "p1 BGP --- up notatime Established\n  Routes: lots exported\n  Neighbor address: nowhere\n";
        let p = protocols(odd);
        assert_eq!(p.items.len(), 1);
        assert_eq!((p.items[0].since, p.items[0].neighbor), (None, None));
        assert_eq!(p.unreadable, 2);
        assert_eq!(protocols(""), Parsed::default());
    }

    #[test]
    fn prefixes_are_read_from_show_route() {
        let text = "BIRD 2.0.12 ready.
Table master4:
10.99.1.101/32       blackhole [lb_vips4 10:13:54.171] * (200)
10.99.1.100/32       blackhole [lb_vips4 10:13:54.171] * (200)
\tvia 10.99.0.2 on v0

Table master6:
fd00:99::100/128     blackhole [lb_vips6 10:13:54.171] * (200)
";
        let r = routes(text);
        assert_eq!(r.unreadable, 0);
        assert_eq!(
            r.items,
            ["10.99.1.101/32", "10.99.1.100/32", "fd00:99::100/128"]
                .map(|s| s.parse::<IpNet>().unwrap())
        );
        let bad = routes("Network not found\n");
        assert_eq!((bad.items.len(), bad.unreadable), (0, 1));
    }
}
