//! The Grafana dashboard `packaging/grafana/lb-dashboard.json` against the
//! agent's `/metrics`: every metric name its queries use (panel targets and
//! template variables, rows' nested panels included) must be one that a
//! scrape serves. The end-to-end test checks it on a live agent.

use std::collections::BTreeSet;

use serde_json::Value;

/// The dashboard as committed.
pub const DASHBOARD: &str = include_str!("../../packaging/grafana/lb-dashboard.json");

/// Every PromQL query of a dashboard: each `expr` and each template
/// variable's `query` (a string, or an object with a `query` string).
pub fn queries(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(q)) => out.push(q.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        match &var["query"] {
            Value::String(q) => out.push(q.clone()),
            Value::Object(o) => {
                out.extend(o.get("query").and_then(Value::as_str).map(String::from))
            }
            _ => {}
        }
    }
    out
}

/// The metric names in a query: identifiers starting `lb_` (the agent's
/// prefix; no label of ours starts so).
pub fn metric_names(query: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("lb_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if !before.is_some_and(is_ident) {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end.max(3)..];
    }
    names
}

/// The series names a scrape in the Prometheus text format 0.0.4 serves:
/// every sample's name, and every family's from its `# TYPE` line (a family
/// with no sample yet still is served), with `_bucket`, `_sum` and `_count`
/// for histograms.
pub fn served(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The metric names the dashboard queries that `scrape` does not serve.
///
/// # Panics
/// The dashboard is not JSON.
pub fn unserved(dashboard: &str, scrape: &str) -> BTreeSet<String> {
    let dashboard: Value = serde_json::from_str(dashboard).expect("dashboard JSON");
    let served = served(scrape);
    queries(&dashboard)
        .iter()
        .flat_map(|q| metric_names(q))
        .filter(|name| !served.contains(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_promql() {
        let q = r#"histogram_quantile(0.99, sum by (le, vip) (rate(lb_health_check_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval]))) / lb_x:rate5m"#;
        assert_eq!(
            metric_names(q).into_iter().collect::<Vec<_>>(),
            ["lb_health_check_duration_seconds_bucket", "lb_x:rate5m"]
        );
        assert!(metric_names(r#"sum(rate(x_lb_y[1m])) by (lb_label_is_not_ours)"#).len() == 1);
    }

    #[test]
    fn the_dashboard_covers_what_the_issue_asks() {
        let dashboard: Value = serde_json::from_str(DASHBOARD).expect("JSON");
        let used: BTreeSet<String> = queries(&dashboard)
            .iter()
            .flat_map(|q| metric_names(q))
            .collect();
        for name in [
            "lb_vip_packets_total",
            "lb_vip_bytes_total",
            "lb_backend_packets_total",
            "lb_backend_bytes_total",
            "lb_packets_total",
            "lb_vip_dropped_packets_total",
            "lb_backend_healthy",
            "lb_backend_weight",
            "lb_health_check_duration_seconds_bucket",
            "lb_reloads_total",
            "lb_bgp_session_up",
            "lb_bgp_announced",
        ] {
            assert!(used.contains(name), "no panel queries {name}: {used:?}");
        }
    }

    #[test]
    fn a_name_the_scrape_lacks_is_reported() {
        let scrape = "# HELP lb_reloads_total R.\n# TYPE lb_reloads_total counter\nlb_reloads_total{result=\"applied\"} 1\n# TYPE lb_health_check_duration_seconds histogram\n";
        let dashboard = r#"{"panels":[{"targets":[{"expr":"rate(lb_reloads_total[1m]) + lb_health_check_duration_seconds_count + lb_reloads"}]}],
            "templating":{"list":[{"type":"query","query":{"query":"label_values(lb_build_info, instance)"}}]}}"#;
        assert_eq!(
            unserved(dashboard, scrape).into_iter().collect::<Vec<_>>(),
            ["lb_build_info", "lb_reloads"]
        );
    }
}
