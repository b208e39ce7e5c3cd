//! The report as a picture: `target/bench/report.svg` beside report.md
//! (plotters' SVG backend, text laid out without system fonts). Two bar
//! charts from the report's rows: the per-packet classes of `xdp_lb` beside
//! the baseline and reference programs of the same run (ns per packet), and
//! the HTTP rows, `xdp_lb` beside HAProxy (requests per second).

use std::path::Path;

use anyhow::Context as _;
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::report::Row;

/// One bar: a row of the report whose figure is a number with a unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// The row's section (`per-packet`, `HTTP`, ...).
    pub section: String,
    /// What was measured.
    pub case: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`ns`, `req/s`, ...).
    pub unit: String,
    /// The row's ratio column (may be empty).
    pub ratio: String,
}

/// `278.0 ns` -> (278.0, "ns").
fn parse_value(value: &str) -> Option<(f64, String)> {
    let (number, unit) = value.trim().split_once(' ')?;
    Some((number.parse().ok()?, unit.trim().to_string()))
}

/// The bars of the report's rows (rows whose figure is not a number are
/// left out).
pub fn bars_from_rows(rows: &[Row]) -> Vec<Bar> {
    rows.iter()
        .filter_map(|r| {
            let (value, unit) = parse_value(&r.value)?;
            Some(Bar {
                section: r.section.to_string(),
                case: r.case.clone(),
                value,
                unit,
                ratio: r.ratio.clone(),
            })
        })
        .collect()
}

/// The bars of a report as `Report::markdown` writes it (its table rows
/// `| section | case | result | ratio | notes |`), so an SVG can be made
/// again from a kept report.md.
pub fn bars_from_markdown(markdown: &str) -> Vec<Bar> {
    markdown
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.strip_prefix('|')?.split('|').map(str::trim).collect();
            let [section, case, value, ratio, ..] = cells[..] else {
                return None;
            };
            let (value, unit) = parse_value(value)?;
            Some(Bar {
                section: section.to_string(),
                case: case.to_string(),
                value,
                unit,
                ratio: ratio.to_string(),
            })
        })
        .collect()
}

const WIDTH: u32 = 1100;
const BAR_HEIGHT: u32 = 30;
const CHART_EXTRA: u32 = 90;
const LABEL_AREA: u32 = 470;
const OURS: RGBColor = RGBColor(31, 119, 180);
const REFERENCE: RGBColor = RGBColor(160, 160, 160);
const HAPROXY: RGBColor = RGBColor(255, 127, 14);

/// Bars of `section` in `unit`, each with its colour.
fn pick<'a>(
    bars: &'a [Bar],
    section: &str,
    unit: &str,
    colour: impl Fn(&Bar) -> RGBColor,
) -> Vec<(&'a Bar, RGBColor)> {
    bars.iter()
        .filter(|b| b.section == section && b.unit == unit)
        .map(|b| (b, colour(b)))
        .collect()
}

fn chart_height(n: usize) -> u32 {
    CHART_EXTRA + BAR_HEIGHT * n.max(1) as u32
}

/// Draws one horizontal bar chart, the first bar at the top.
fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    axis: &str,
    bars: &[(&Bar, RGBColor)],
    empty: &str,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing: {e:?}");
    let max = bars.iter().map(|(b, _)| b.value).fold(0.0, f64::max);
    let n = bars.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(LABEL_AREA)
        .build_cartesian_2d(0.0..(max * 1.25).max(1.0), 0.0..n)
        .map_err(err)?;
    if !bars.is_empty() {
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc(axis)
            .x_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
    } else {
        chart
            .draw_series(std::iter::once(Text::new(
                empty.to_string(),
                (0.0, n / 2.0),
                ("sans-serif", 14).into_font().color(&BLACK),
            )))
            .map_err(err)?;
        return Ok(());
    }
    let label = ("sans-serif", 13).into_font().color(&BLACK);
    for (i, (bar, colour)) in bars.iter().enumerate() {
        let top = n - i as f64;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, top - 0.15), (bar.value, top - 0.85)],
                colour.filled(),
            )))
            .map_err(err)?;
        let ratio = if bar.ratio.is_empty() {
            String::new()
        } else {
            format!(" ({})", bar.ratio)
        };
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((bar.value, top - 0.5))
                    + Text::new(
                        format!("{} {}{ratio}", bar.value, bar.unit),
                        (5, 0),
                        label.pos(Pos::new(HPos::Left, VPos::Center)),
                    ),
            ))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((0.0, top - 0.5))
                    + Text::new(
                        bar.case.clone(),
                        (-8, 0),
                        label.pos(Pos::new(HPos::Right, VPos::Center)),
                    ),
            ))
            .map_err(err)?;
    }
    Ok(())
}

/// The SVG document of `bars`: per-packet classes (grey: the baseline and
/// reference programs; blue: xdp_lb), then the HTTP rows (blue: xdp_lb;
/// orange: HAProxy).
///
/// # Errors
/// Drawing fails (plotters).
pub fn render(bars: &[Bar]) -> anyhow::Result<String> {
    let per_packet = pick(bars, "per-packet", "ns", |b| {
        if b.case.starts_with("xdp_lb") {
            OURS
        } else {
            REFERENCE
        }
    });
    let http = pick(bars, "HTTP", "req/s", |b| {
        if b.case.contains("HAProxy") {
            HAPROXY
        } else {
            OURS
        }
    });
    let (h1, h2) = (chart_height(per_packet.len()), chart_height(http.len()));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, h1 + h2)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("drawing: {e:?}"))?;
        let (top, bottom) = root.split_vertically(h1);
        draw_chart(
            &top,
            "Per-packet cost through BPF_PROG_TEST_RUN: xdp_lb (blue) beside the baseline and reference programs (grey)",
            "ns per packet (lower is better; ratio to the section's baseline of the same run)",
            &per_packet,
            "no per-packet rows in this report",
        )?;
        draw_chart(
            &bottom,
            "HTTP through the load balancer: xdp_lb (blue, DSR) beside HAProxy (orange, TCP mode)",
            "requests per second (higher is better; noisy: client, LB and backends share the cores)",
            &http,
            "no HTTP rows in this report (the lab did not run: --no-lab)",
        )?;
        root.present()
            .map_err(|e| anyhow::anyhow!("drawing: {e:?}"))?;
    }
    Ok(svg)
}

/// Writes [`render`] of `bars` to `path`, creating its directory.
///
/// # Errors
/// Drawing fails, or the file cannot be written.
pub fn write(bars: &[Bar], path: &Path) -> anyhow::Result<()> {
    let svg = render(bars)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "# lb benchmark\n\n- machine: 2 cores\n\n| section | case | result | ratio | notes |\n|---|---|---:|---:|---|\n| per-packet | baseline: bare XDP_DROP | 26.0 ns | 1.00x | bench_drop |\n| per-packet | reference: lookup + IPv4-in-IPv4 + XDP_TX | 80.0 ns | 1.00x | x |\n| per-packet | xdp_lb: established TCP flow (conntrack hit) | 177.0 ns | 2.21x | y |\n| control | Maglev build, M = 65537, 10 backends | 1.77 ms |  | z |\n| veth | XDP_DROP (bench_drop on the LB's veth) | 1.234 Mpps | 1.00x | n |\n| HTTP | keep-alive, through xdp_lb (DSR) | 25000 req/s |  | p50 1.00 ms, p99 2.00 ms |\n| HTTP | keep-alive, through HAProxy (TCP mode) | 12000 req/s | 0.48x | p50 2.00 ms |\n\n- a note | with a bar\n";

    #[test]
    fn markdown_rows_become_bars() {
        let bars = bars_from_markdown(REPORT);
        assert_eq!(bars.len(), 7, "{bars:?}");
        assert_eq!(
            bars[2],
            Bar {
                section: "per-packet".into(),
                case: "xdp_lb: established TCP flow (conntrack hit)".into(),
                value: 177.0,
                unit: "ns".into(),
                ratio: "2.21x".into(),
            }
        );
        assert_eq!((bars[6].value, bars[6].unit.as_str()), (12000.0, "req/s"));
    }

    #[test]
    fn the_svg_shows_every_per_packet_and_http_row_with_its_colour() {
        let svg = render(&bars_from_markdown(REPORT)).expect("render");
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for case in [
            "baseline: bare XDP_DROP",
            "xdp_lb: established TCP flow (conntrack hit)",
            "keep-alive, through HAProxy (TCP mode)",
            "177 ns (2.21x)",
            "12000 req/s (0.48x)",
        ] {
            assert!(svg.contains(case), "no {case:?}");
        }
        // Neither the control nor the veth rows are drawn.
        assert!(!svg.contains("Maglev build") && !svg.contains("Mpps"));
        // Bars: 3 per-packet and 2 HTTP, each in its colour.
        let fill = |c: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        let count = |c: RGBColor| svg.matches(&fill(c)).count();
        assert_eq!((count(REFERENCE), count(OURS), count(HAPROXY)), (2, 2, 1));
    }

    #[test]
    fn a_report_without_the_lab_says_so() {
        let svg =
            render(&bars_from_markdown(REPORT.split("| HTTP").next().unwrap())).expect("render");
        assert!(svg.contains("no HTTP rows in this report"));
    }
}
