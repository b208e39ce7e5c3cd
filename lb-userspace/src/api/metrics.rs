//! `/metrics`: the collector that reads the counters at each scrape, and the
//! two text formats (Prometheus 0.0.4 and OpenMetrics 1.0), chosen by the
//! client's `Accept` header.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::{
    Api,
    shared::{Labels, Shared},
    status::{BackendStatus, Status, Traffic},
};

/// The scrape-time collector of everything but the latency histogram.
#[derive(Debug)]
pub(crate) struct LbCollector(pub(crate) Arc<Shared>);

pub(super) fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &impl prometheus_client::encoding::EncodeMetric,
) -> Result<(), std::fmt::Error> {
    value.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

pub(super) fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// One value per backend, labelled (vip, backend).
fn per_backend<T>(s: &Status, f: impl Fn(&BackendStatus) -> T) -> Vec<(Labels, T)> {
    s.vips
        .iter()
        .flat_map(|v| {
            v.backends.iter().map(|b| {
                (
                    vec![("vip", v.name.clone()), ("backend", b.address.clone())],
                    f(b),
                )
            })
        })
        .collect()
}

impl Collector for LbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.status();
        let e = &mut encoder;
        data_plane(e, &s)?;
        vips_and_backends(e, &s)?;
        agent(e, &s)?;
        nat(e, &s)?;
        if let Some(bgp) = &s.bgp {
            super::bgp::metrics(e, bgp)?;
        }
        Ok(())
    }
}

/// The data plane's counters: packets and bytes by outcome, connection-table
/// events.
fn data_plane(e: &mut DescriptorEncoder, s: &Status) -> Result<(), std::fmt::Error> {
    let each = |f: fn(&Traffic) -> u64| -> Vec<(Labels, u64)> {
        s.outcomes
            .iter()
            .map(|(o, t)| (vec![("outcome", o.clone())], f(t)))
            .collect()
    };
    counters(
        e,
        "lb_packets",
        "Packets by outcome in xdp_lb, summed over CPUs.",
        &each(|t| t.packets),
    )?;
    counters(
        e,
        "lb_bytes",
        "Bytes by outcome in xdp_lb, summed over CPUs.",
        &each(|t| t.bytes),
    )?;
    let conn: Vec<(Labels, u64)> = s
        .conntrack
        .iter()
        .map(|(ev, t)| (vec![("event", ev.clone())], t.packets))
        .collect();
    counters(
        e,
        "lb_conntrack_events",
        "What the connection table did for VIP packets: hit, miss, rehash, syn, limited, syn_direct, hit_cached (a hit served by the CPU's flow cache).",
        &conn,
    )?;
    Ok(())
}

/// The NAT modes: translations and SNAT ports per VIP (from the agent's
/// last sweep of the NAT table), NAT events and expiries, and the reply
/// direction's traffic per VIP and backend. Only when a VIP is in a NAT
/// mode.
fn nat(e: &mut DescriptorEncoder, s: &Status) -> Result<(), std::fmt::Error> {
    let Some(nat) = &s.nat else {
        return Ok(());
    };
    let nat_vips = || s.vips.iter().filter_map(|v| v.nat.as_ref().map(|n| (v, n)));
    let label = |v: &super::status::VipStatus| vec![("vip", v.name.clone())];
    gauges(
        e,
        "lb_nat_translations",
        "Live NAT translations (flows) per VIP, as the agent's last sweep of the NAT table counted them (every 5 s).",
        &nat_vips()
            .map(|(v, n)| (label(v), n.translations as i64))
            .collect::<Vec<_>>(),
    )?;
    gauges(
        e,
        "lb_nat_snat_ports_left",
        "mode = \"nat\": SNAT address and port pairs left toward the VIP's busiest backend.",
        &nat_vips()
            .filter_map(|(v, n)| n.snat_ports_left.map(|p| (label(v), p as i64)))
            .collect::<Vec<_>>(),
    )?;
    counters(
        e,
        "lb_nat_reply_packets",
        "Replies of backends translated back to clients, per VIP.",
        &nat_vips()
            .map(|(v, n)| (label(v), n.replies.packets))
            .collect::<Vec<_>>(),
    )?;
    counters(
        e,
        "lb_nat_reply_bytes",
        "Bytes of replies translated back to clients, per VIP.",
        &nat_vips()
            .map(|(v, n)| (label(v), n.replies.bytes))
            .collect::<Vec<_>>(),
    )?;
    counters(
        e,
        "lb_nat_backend_reply_packets",
        "Replies translated back to clients, per VIP and backend.",
        &per_backend(s, |b| b.replies.as_ref().map(|r| r.packets))
            .into_iter()
            .filter_map(|(l, p)| p.map(|p| (l, p)))
            .collect::<Vec<_>>(),
    )?;
    counters(
        e,
        "lb_nat_backend_reply_bytes",
        "Bytes of replies translated back to clients, per VIP and backend.",
        &per_backend(s, |b| b.replies.as_ref().map(|r| r.bytes))
            .into_iter()
            .filter_map(|(l, p)| p.map(|p| (l, p)))
            .collect::<Vec<_>>(),
    )?;
    counters(
        e,
        "lb_nat_events",
        "What the NAT table did: hit, allocated (a new translation), moved (a flow's backend changed), reply_hit, reply_miss (passed untouched), closing (FIN or RST).",
        &nat.events
            .iter()
            .map(|(ev, n)| (vec![("event", ev.clone())], *n))
            .collect::<Vec<_>>(),
    )?;
    counters(
        e,
        "lb_nat_expired",
        "NAT translations removed by the agent's sweeps as idle past their timeout.",
        &[(Vec::new(), nat.expired)],
    )?;
    Ok(())
}

/// Per VIP and per backend: traffic, refusals, the SYN shortcut, health and
/// weight.
fn vips_and_backends(e: &mut DescriptorEncoder, s: &Status) -> Result<(), std::fmt::Error> {
    let vip = |f: fn(&Traffic) -> u64| -> Vec<(Labels, u64)> {
        s.vips
            .iter()
            .map(|v| (vec![("vip", v.name.clone())], f(&v.traffic)))
            .collect()
    };
    counters(
        e,
        "lb_vip_packets",
        "Packets forwarded per VIP.",
        &vip(|t| t.packets),
    )?;
    counters(
        e,
        "lb_vip_bytes",
        "Bytes forwarded per VIP.",
        &vip(|t| t.bytes),
    )?;
    counters(
        e,
        "lb_vip_dropped_packets",
        "Packets to a VIP refused by its own allow list, by reason.",
        &s.vips
            .iter()
            .map(|v| {
                let labels = vec![
                    ("vip", v.name.clone()),
                    ("reason", "source_filter".to_string()),
                ];
                (labels, v.refused.packets)
            })
            .collect::<Vec<_>>(),
    )?;
    counters(
        e,
        "lb_backend_packets",
        "Packets sent per backend.",
        &per_backend(s, |b| b.traffic.packets),
    )?;
    counters(
        e,
        "lb_backend_bytes",
        "Bytes sent per backend.",
        &per_backend(s, |b| b.traffic.bytes),
    )?;
    gauges(
        e,
        "lb_vip_syn_direct",
        "1 while the VIP's TCP SYNs take the Maglev choice without a connection-table lookup (its recorded flows agree with its table).",
        &s.vips
            .iter()
            .map(|v| (vec![("vip", v.name.clone())], i64::from(v.syn_direct)))
            .collect::<Vec<_>>(),
    )?;
    gauges(
        e,
        "lb_backend_healthy",
        "1 when the backend passes its health check.",
        &per_backend(s, |b| i64::from(b.state != "unhealthy")),
    )?;
    gauges(
        e,
        "lb_backend_weight",
        "Configured weight (0: draining).",
        &per_backend(s, |b| i64::from(b.weight)),
    )?;
    Ok(())
}

/// The agent's own figures: reloads, connection-table walks, uptime, build.
fn agent(e: &mut DescriptorEncoder, s: &Status) -> Result<(), std::fmt::Error> {
    counters(
        e,
        "lb_reloads",
        "Configuration reloads by result.",
        &[
            (vec![("result", "applied".into())], s.reloads.applied),
            (vec![("result", "rejected".into())], s.reloads.rejected),
        ],
    )?;
    let w = &s.conntrack_walks;
    counters(
        e,
        "lb_conntrack_walks",
        "Walks of the connection table for VIPs whose TCP SYNs look their flows up, by result.",
        &[
            (vec![("result", "complete".into())], w.complete),
            (vec![("result", "stopped".into())], w.stopped),
            (vec![("result", "failed".into())], w.failed),
        ],
    )?;
    counter(
        e,
        "lb_conntrack_walk_entries",
        "Connection-table entries read by walks.",
        &ConstCounter::new(w.entries),
    )?;
    counter(
        e,
        "lb_conntrack_walk_flags_set",
        "VIPs whose TCP SYNs a walk let skip the connection table again.",
        &ConstCounter::new(w.flags_set),
    )?;
    counter(
        e,
        "lb_conntrack_walk_seconds",
        "Time spent walking the connection table.",
        &ConstCounter::new(w.seconds),
    )?;
    gauges(
        e,
        "lb_uptime_seconds",
        "Seconds since the agent started.",
        &[(vec![], s.uptime_seconds as i64)],
    )?;
    gauges(
        e,
        "lb_build_info",
        "The agent's version.",
        &[(vec![("version", s.version.clone())], 1)],
    )?;
    Ok(())
}

/// Content type of the OpenMetrics text format (OpenMetrics 1.0).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics: it names
/// `application/openmetrics-text` with a quality above 0 and at least that
/// of `text/plain` (Prometheus sends both, OpenMetrics first).
pub fn wants_openmetrics(accept: &str) -> bool {
    let quality = |wanted: &str| -> Option<f32> {
        accept
            .split(',')
            .filter_map(|item| {
                let mut parts = item.split(';').map(str::trim);
                let media = parts.next()?;
                if !media.eq_ignore_ascii_case(wanted) {
                    return None;
                }
                let q = parts
                    .find_map(|p| p.strip_prefix("q="))
                    .and_then(|q| q.parse().ok())
                    .unwrap_or(1.0);
                Some(q)
            })
            .reduce(f32::max)
    };
    match (
        quality("application/openmetrics-text"),
        quality("text/plain"),
    ) {
        (Some(om), Some(text)) => om > 0.0 && om >= text,
        (Some(om), None) => om > 0.0,
        _ => false,
    }
}

/// Rewrites OpenMetrics text (as prometheus-client encodes it) into the
/// Prometheus text format 0.0.4: a counter family is named by its samples
/// (`x_total`), `# UNIT` and `# EOF` lines go, `unknown` becomes `untyped`.
/// Sample lines are the same in both formats.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            let tail = if *prefix == "# TYPE " && tail == "unknown" {
                "untyped"
            } else {
                tail
            };
            let suffix = if counters.contains(name) {
                "_total"
            } else {
                ""
            };
            Some(format!("{prefix}{name}{suffix} {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

pub(crate) async fn metrics(
    State(api): State<Arc<Api>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let mut body = String::new();
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(wants_openmetrics);
    match prometheus_client::encoding::text::encode(&mut body, &api.registry) {
        Ok(()) if openmetrics => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            body,
        ),
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            openmetrics_to_prometheus(&body),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "encoding failed\n".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_picks_the_format() {
        // What Prometheus 2.x sends: OpenMetrics first.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(
            "application/openmetrics-text;q=0.2,text/plain;q=0.9"
        ));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));
    }

    #[test]
    fn openmetrics_becomes_the_0_0_4_text_format() {
        let openmetrics = "# HELP lb_packets Packets.\n# TYPE lb_packets counter\nlb_packets_total{outcome=\"pass\"} 3\n# HELP lb_up Up.\n# TYPE lb_up gauge\n# UNIT lb_up seconds\nlb_up 1\n# HELP lb_x X.\n# TYPE lb_x unknown\nlb_x 2\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(openmetrics),
            "# HELP lb_packets_total Packets.\n# TYPE lb_packets_total counter\nlb_packets_total{outcome=\"pass\"} 3\n# HELP lb_up Up.\n# TYPE lb_up gauge\nlb_up 1\n# HELP lb_x X.\n# TYPE lb_x untyped\nlb_x 2\n"
        );
    }
}
