//! The connect() cost plot: time per connect (socket + connect + close) and its ratio to
//! the no-filter baseline vs N, per contender, IPv4 and IPv6 (SVG via plotters).
use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::{Family, Results, report};

const CONTENDERS: [(&str, RGBColor); 7] = [
    ("none", RGBColor(120, 120, 120)),
    (super::noop::NAME, RGBColor(150, 60, 170)),
    (super::noop::OWNER_NAME, RGBColor(230, 120, 190)),
    ("egressd", RGBColor(200, 30, 30)),
    ("nftables", RGBColor(30, 90, 200)),
    ("ipset+iptables", RGBColor(20, 150, 60)),
    ("iptables", RGBColor(220, 140, 0)),
];

/// Writes the plot to `path`.
pub fn connect(r: &Results, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(
            "connect() cost vs number of prefixes (median of rounds; bars: min-max)",
            ("sans-serif", 20),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((2, 2));
    let labels: Vec<String> = r
        .plan
        .ns
        .iter()
        .map(|n| super::prefixes::label(*n))
        .collect();
    for (i, panel) in panels.iter().enumerate() {
        let family = if i % 2 == 0 { Family::V4 } else { Family::V6 };
        let ratio = i >= 2;
        let mut series = Vec::new();
        let mut ymax: f64 = 0.0;
        let mut ymin: f64 = f64::INFINITY;
        for (name, color) in CONTENDERS {
            let mut pts = Vec::new();
            for (x, n) in r.plan.ns.iter().enumerate() {
                let s = if ratio {
                    report::ratio_spread(r, *n, family, name)
                } else {
                    report::cost_spread(r, *n, family, name).map(|s| super::stats::Spread {
                        median: s.median / 1e3,
                        min: s.min / 1e3,
                        max: s.max / 1e3,
                        ..s
                    })
                };
                if let Some(s) = s {
                    ymax = ymax.max(s.max);
                    ymin = ymin.min(s.min);
                    pts.push((x, s));
                }
            }
            if !pts.is_empty() {
                series.push((name, color, pts));
            }
        }
        // Log scale: plain iptables grows by an order of magnitude and would flatten the rest.
        let (ylo, yhi) = if ratio {
            ((ymin * 0.95).min(0.9), (ymax * 1.1).max(1.2))
        } else {
            ((ymin * 0.9).max(0.1), (ymax * 1.1).max(1.0))
        };
        let caption = format!(
            "{}: {}",
            family.name(),
            if ratio {
                "ratio to no filter, log scale"
            } else {
                "µs per connect (socket+connect+close), log scale"
            }
        );
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.3f64..(labels.len() as f64 - 0.7), (ylo..yhi).log_scale())
            .map_err(|e| anyhow!("{e}"))?;
        let labels2 = labels.clone();
        chart
            .configure_mesh()
            .x_labels(labels.len())
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 0.01 && i >= 0.0 {
                    labels2.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("prefixes (N)")
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (k, (name, color, pts)) in series.into_iter().enumerate() {
            let dx = (k as f64 - 2.0) * 0.04;
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|(x, s)| (*x as f64 + dx, s.median)),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|(x, s)| {
                    PathElement::new(
                        vec![(*x as f64 + dx, s.min), (*x as f64 + dx, s.max)],
                        color.stroke_width(1),
                    )
                }))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(
                    pts.iter()
                        .map(|(x, s)| Circle::new((*x as f64 + dx, s.median), 3, color.filled())),
                )
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
