//! One curve as an SVG: events/s above, ack latency (p50, p99) below,
//! against the same x axis (logarithmic when the curve spans decades).

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use super::Curve;

const SIZE: (u32, u32) = (800, 720);

/// Draws `curve` into `path`.
pub fn draw(curve: &Curve, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2);
    let speed: Vec<(f64, f64)> = curve
        .points
        .iter()
        .map(|p| (p.x, p.median.events_per_s / 1000.0))
        .collect();
    let p50: Vec<(f64, f64)> = curve
        .points
        .iter()
        .map(|p| (p.x, p.median.p50_ms))
        .collect();
    let p99: Vec<(f64, f64)> = curve
        .points
        .iter()
        .map(|p| (p.x, p.median.p99_ms))
        .collect();
    panel(
        &top,
        curve,
        &format!("tillstream: events/s against {}", curve.x_label),
        "thousand events/s",
        &[("events/s (median run)", &speed, BLUE)],
    )?;
    panel(
        &bottom,
        curve,
        "ack latency",
        "ms",
        &[("p50", &p50, GREEN), ("p99", &p99, RED)],
    )?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

type Series<'a> = (&'a str, &'a [(f64, f64)], RGBColor);

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    curve: &Curve,
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> anyhow::Result<()> {
    let xs = curve.points.iter().map(|p| p.x);
    let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo * 0.5, lo * 2.0 + 1.0)
    };
    let y_max = series
        .iter()
        .flat_map(|(_, pts, _)| pts.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        * 1.15
        + 1e-9;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    if curve.log_x {
        let chart = builder
            .build_cartesian_2d((lo * 0.8..hi * 1.25).log_scale(), 0.0..y_max)
            .map_err(plot_err)?;
        fill(chart, curve, y_label, series)
    } else {
        let pad = (hi - lo) * 0.05;
        let chart = builder
            .build_cartesian_2d(lo - pad..hi + pad, 0.0..y_max)
            .map_err(plot_err)?;
        fill(chart, curve, y_label, series)
    }
}

type Chart<'a, X> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>;

/// Mesh, series and legend of one panel, whichever the x axis.
fn fill<'a, X>(
    mut chart: Chart<'a, X>,
    curve: &Curve,
    y_label: &str,
    series: &[Series<'_>],
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(curve.x_label.as_str())
        .y_desc(y_label)
        .draw()
        .map_err(plot_err)?;
    for (name, pts, color) in series {
        draw_series(&mut chart, name, pts, *color)?;
    }
    legend(&mut chart)
}

fn draw_series<'a, X>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<X, plotters::coord::types::RangedCoordf64>,
    >,
    name: &str,
    pts: &[(f64, f64)],
    color: RGBColor,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
{
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
        .map_err(plot_err)?
        .label(name.to_string())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    chart
        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
        .map_err(plot_err)?;
    Ok(())
}

fn legend<'a, X>(
    chart: &mut ChartContext<
        'a,
        SVGBackend<'a>,
        Cartesian2d<X, plotters::coord::types::RangedCoordf64>,
    >,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}
