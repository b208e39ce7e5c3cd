//! `/status`: the wire types shared by the agent's API and `lb status`, the
//! client that fetches them, and the table `lb status` prints.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use lb_common::Counter;
use serde::{Deserialize, Serialize};

use crate::dataplane::upgrade::ProgramId;

/// Packets and bytes, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl From<Counter> for Traffic {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// The last health check of a backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastCheck {
    /// Whether it succeeded.
    pub ok: bool,
    /// Latency in milliseconds, on success.
    pub latency_ms: Option<f64>,
    /// Why it failed (`refused`, `timeout after 250ms`, `status 500,
    /// expected 200`, ...), or "ok".
    pub reason: String,
    /// Seconds since it completed.
    pub age_seconds: f64,
}

/// A backend on `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    /// Address.
    pub address: String,
    /// Weight (0: draining).
    pub weight: u32,
    /// `healthy`, `unhealthy` or `draining` (healthy, weight 0).
    pub state: String,
    /// Last health check, if any ran.
    pub last_check: Option<LastCheck>,
    /// Traffic sent to it.
    pub traffic: Traffic,
    /// The port it serves the VIP on (NAT modes map it; DSR: the VIP's).
    #[serde(default)]
    pub port: u16,
    /// NAT modes: its replies translated back to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replies: Option<Traffic>,
}

/// A VIP on `/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VipStatus {
    /// Name.
    pub name: String,
    /// `address:port` (port 0: every port).
    pub address: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Health-check kind.
    pub health_check: String,
    /// Its own source prefixes (`allow`); `None`: the global list alone.
    pub allow: Option<Vec<String>>,
    /// Traffic to it.
    pub traffic: Traffic,
    /// Packets refused by its own `allow` list.
    pub refused: Traffic,
    /// Its backends, in configuration order.
    pub backends: Vec<BackendStatus>,
    /// Its TCP SYNs take the Maglev choice without a connection-table
    /// lookup: its recorded flows agree with its table
    /// (`lb_common::VIP_F_CONNS_MATCH_TABLE`).
    #[serde(default)]
    pub syn_direct: bool,
    /// `dsr`, `nat` or `dnat`.
    #[serde(default = "dsr")]
    pub mode: String,
    /// NAT modes: its translations, SNAT ports and replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<VipNat>,
}

fn dsr() -> String {
    "dsr".to_string()
}

/// The NAT side of a VIP in a NAT mode, as the last sweep of the NAT table
/// counted it (every `dataplane::nat::SWEEP_INTERVAL`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VipNat {
    /// Live translations (flows) of the VIP.
    pub translations: u64,
    /// `nat` mode: the fewest SNAT ports left toward any of its backends
    /// (addresses x ports, less the translations to that backend);
    /// `None` in `dnat`, which takes none.
    pub snat_ports_left: Option<u64>,
    /// Replies translated back to its clients.
    pub replies: Traffic,
}

/// The NAT table as a whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NatSummary {
    /// Packets by NAT event (`lb_common::NatEvent`'s names).
    pub events: BTreeMap<String, u64>,
    /// Translations the agent's sweeps removed as expired.
    pub expired: u64,
    /// Sweeps so far, and whether the last read the whole table.
    pub sweeps: u64,
    /// The last sweep read the whole table.
    pub last_complete: bool,
    /// Entries the last sweep read (two per translation).
    pub entries: u64,
}

/// Reloads so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reloads {
    /// Applied (unchanged files included).
    pub applied: u64,
    /// Rejected (invalid, or not applicable); the running config stayed.
    pub rejected: u64,
    /// Errors of the last rejected configuration, until one is applied.
    pub last_error: Option<String>,
}

/// Walks of the connection table for the VIPs whose TCP SYNs look their
/// flows up (`crate::balancer::ConnsCheck`), so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnsWalks {
    /// Walks that read the whole table.
    pub complete: u64,
    /// Walks stopped early: every VIP checked disagreed, or a bound.
    pub stopped: u64,
    /// Walks that could not read the table.
    pub failed: u64,
    /// VIPs whose SYN shortcut a walk gave back.
    pub flags_set: u64,
    /// Connection-table entries read.
    pub entries: u64,
    /// Time spent walking, in seconds.
    pub seconds: f64,
}

/// `/status`: the running configuration's VIPs and backends with state, last
/// check and counters; per-outcome and connection-table counters; reloads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Agent version.
    pub version: String,
    /// Seconds since the agent started.
    pub uptime_seconds: f64,
    /// Interface the data plane is attached to.
    pub interface: String,
    /// The `xdp_lb` program the interface's link runs.
    pub program: Option<ProgramId>,
    /// VIPs.
    pub vips: Vec<VipStatus>,
    /// Packets and bytes per outcome (`forwarded_tx`, `drop_source_filter`, ...).
    pub outcomes: BTreeMap<String, Traffic>,
    /// Connection-table events ([`lb_common::ConnEvent::label`]): `hit`,
    /// `miss`, `rehash`, `syn`, `limited`, `syn_direct`, `hit_cached`.
    pub conntrack: BTreeMap<String, Traffic>,
    /// Reloads.
    pub reloads: Reloads,
    /// Walks of the connection table.
    #[serde(default)]
    pub conntrack_walks: ConnsWalks,
    /// BGP announcement (`[bgp]`): speaker, peers, addresses; absent
    /// without `[bgp]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<crate::bgp::status::BgpStatus>,
    /// The NAT table, when a VIP is in a NAT mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatSummary>,
}

/// Fetches `/status` from an agent's API at `api` (for `lb status`).
///
/// # Errors
/// No answer within `timeout`, a status other than 200, or a body that is
/// not a [`Status`].
pub async fn fetch_status(api: SocketAddr, timeout: Duration) -> anyhow::Result<Status> {
    use anyhow::Context as _;
    use http_body_util::{BodyExt as _, Empty};
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(api)
            .await
            .with_context(|| format!("connecting to the agent's API at {api}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get("/status")
            .header(hyper::header::HOST, api.to_string())
            .body(Empty::<hyper::body::Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let code = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        conn.abort();
        anyhow::ensure!(
            code == hyper::StatusCode::OK,
            "{api}/status answered {code}"
        );
        serde_json::from_slice(&body).context("parsing /status")
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {api} within {timeout:?}"))?
}

/// `lb status` as a table: VIPs, backends with state, weight, traffic and
/// last check; outcomes with packets; reloads.
pub fn render_table(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lb {} on {}, up {:.0}s; reloads: {} applied, {} rejected",
        s.version, s.interface, s.uptime_seconds, s.reloads.applied, s.reloads.rejected
    );
    if let Some(p) = &s.program {
        let _ = writeln!(out, "program xdp_lb {p}");
    }
    if let Some(e) = &s.reloads.last_error {
        let _ = writeln!(out, "last rejected configuration: {e}");
    }
    for v in &s.vips {
        let _ = writeln!(
            out,
            "\nVIP {} {} {} mode {} (check {}): {} packets, {} bytes",
            v.name,
            v.address,
            v.protocol,
            v.mode,
            v.health_check,
            v.traffic.packets,
            v.traffic.bytes
        );
        if let Some(n) = &v.nat {
            let ports = n
                .snat_ports_left
                .map_or_else(String::new, |p| format!(", {p} SNAT ports left"));
            let _ = writeln!(
                out,
                "  NAT: {} translations{ports}; {} replies, {} bytes back to clients",
                n.translations, n.replies.packets, n.replies.bytes
            );
        }
        if let Some(allow) = &v.allow {
            let _ = writeln!(
                out,
                "  allow {} (own list; {} packets refused)",
                allow.join(", "),
                v.refused.packets
            );
        }
        let _ = writeln!(
            out,
            "  {:<40} {:<10} {:>6} {:>12} {:>14}  last check",
            "backend", "state", "weight", "packets", "bytes"
        );
        for b in &v.backends {
            let check = b.last_check.as_ref().map_or_else(
                || "-".to_string(),
                |c| match c.latency_ms {
                    Some(ms) => format!("ok in {ms:.1} ms"),
                    None => c.reason.clone(),
                },
            );
            // A NAT VIP's backends with their port (the port they serve on).
            let address = if v.mode == "dsr" {
                b.address.clone()
            } else if b.address.contains(':') {
                format!("[{}]:{}", b.address, b.port)
            } else {
                format!("{}:{}", b.address, b.port)
            };
            let _ = writeln!(
                out,
                "  {:<40} {:<10} {:>6} {:>12} {:>14}  {check}",
                address, b.state, b.weight, b.traffic.packets, b.traffic.bytes
            );
        }
    }
    let _ = writeln!(out, "\n{:<24} {:>12} {:>14}", "outcome", "packets", "bytes");
    for (name, t) in &s.outcomes {
        if t.packets > 0 {
            let _ = writeln!(out, "{name:<24} {:>12} {:>14}", t.packets, t.bytes);
        }
    }
    let c = |k: &str| s.conntrack.get(k).map_or(0, |t| t.packets);
    let _ = writeln!(
        out,
        "connection table: {} hits ({} of them from the flow caches), {} misses, {} rehashes; SYNs: {} looked up, {} by the Maglev table alone; {} new flows over the rate limit",
        c("hit") + c("hit_cached"),
        c("hit_cached"),
        c("miss"),
        c("rehash"),
        c("syn"),
        c("syn_direct"),
        c("limited")
    );
    if let Some(nat) = &s.nat {
        let e = |k: &str| nat.events.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "NAT table: {} translations made, {} moved to another backend, {} closing; replies: {} translated, {} passed untranslated; {} expired by the agent's sweeps",
            e("nat_allocated"),
            e("nat_moved"),
            e("nat_closing"),
            e("nat_reply_hit"),
            e("nat_reply_miss"),
            nat.expired
        );
    }
    if let Some(bgp) = &s.bgp {
        out.push_str(&super::bgp::table(bgp));
    }
    out
}
