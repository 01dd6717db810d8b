//! The SVG chart: one small panel per metric, one bar per proxy (the median) with a
//! min–max whisker, under a header with the date, the machine and the versions.

use std::path::Path;

use plotters::prelude::*;

use crate::proxy::Kind;
use crate::report::{number, Report};
use crate::scenario::{Group, Metric};
use crate::Result;

const WIDTH: u32 = 1600;
const HEADER: u32 = 110;
/// Height of one row of panels (three rows make the plain report's 1040 pixels).
const ROW: u32 = 310;
const COLUMNS: usize = 4;

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Sluice => RGBColor(0xd9, 0x5f, 0x02),
        Kind::Nginx => RGBColor(0x1b, 0x9e, 0x77),
        Kind::Haproxy => RGBColor(0x75, 0x70, 0xb3),
        Kind::Envoy => RGBColor(0xe7, 0x29, 0x8a),
    }
}

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    draw_inner(report, path).map_err(|e| format!("chart {}: {e}", path.display()))
}

fn draw_inner(report: &Report, path: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let metrics = report.metrics();
    // One panel per metric and one for the legend.
    let rows = (metrics.len() + 1).div_ceil(COLUMNS);
    let height = HEADER + ROW * rows as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER);
    header_text(report, &header)?;
    let panels = body.split_evenly((rows, COLUMNS));
    for (panel, &metric) in panels.iter().zip(&metrics) {
        draw_panel(report, panel, metric)?;
    }
    if let Some(panel) = panels.get(metrics.len()) {
        legend(report, panel)?;
    }
    root.present()?;
    Ok(())
}

fn header_text<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let title = ("sans-serif", 26).into_font().style(FontStyle::Bold);
    let small = ("sans-serif", 15).into_font();
    let layout = report.params.layout;
    let placement = if layout.workers == 1 {
        "one worker each on one core".to_owned()
    } else if layout.load_apart() {
        format!(
            "{} workers each on cores {}",
            layout.workers,
            layout.proxy_cpus()
        )
    } else {
        format!(
            "{} workers each on cores {}, shared with the load",
            layout.workers,
            layout.proxy_cpus()
        )
    };
    let what = match report.group {
        Group::Plain => "",
        Group::Tls => ", terminating TLS",
    };
    area.draw_text(
        &format!(
            "sluice, nginx, HAProxy and Envoy side by side{what}, {placement} ({})",
            report.machine.date
        ),
        &title.into_text_style(area),
        (20, 12),
    )?;
    area.draw_text(
        &format!("Machine: {}", report.machine.describe()),
        &small.clone().into_text_style(area),
        (20, 50),
    )?;
    area.draw_text(
        &format!("Versions: {}", report.versions_line()),
        &small.clone().into_text_style(area),
        (20, 70),
    )?;
    area.draw_text(
        &format!(
            "Bars: median over {} round(s); whiskers: min–max. CPU = proxy user+sys time per unit of work.",
            report.rounds
        ),
        &small.into_text_style(area),
        (20, 90),
    )?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
    metric: Metric,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let bars: Vec<(Kind, crate::report::Summary)> = report
        .kinds
        .iter()
        .filter_map(|&k| report.summary(k, metric).map(|s| (k, s)))
        .collect();
    let top = bars.iter().map(|(_, s)| s.max).fold(0.0, f64::max);
    let bottom = bars.iter().map(|(_, s)| s.min).fold(0.0, f64::min);
    let top = if top > 0.0 { top * 1.2 } else { 1.0 };
    let bottom = if bottom < 0.0 { bottom * 1.2 } else { 0.0 };
    let n = report.kinds.len().max(1) as f64;
    let direction = if metric.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} ({direction})", report.label(metric)),
            ("sans-serif", 13),
        )
        .margin(8)
        .x_label_area_size(8)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..n, bottom..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_labels(6)
        .light_line_style(WHITE)
        .y_label_formatter(&|v| number(*v))
        .label_style(("sans-serif", 11))
        .draw()?;
    for (k, s) in &bars {
        let i = report.kinds.iter().position(|x| x == k).unwrap_or(0) as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(i + 0.15, 0.0), (i + 0.85, s.median)],
            color(*k).filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(i + 0.5, s.min), (i + 0.5, s.max)],
            BLACK.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{} {}", k.name(), number(s.median)),
            (i + 0.12, s.max.max(s.median) + (top - bottom) * 0.06),
            ("sans-serif", 12).into_font(),
        )))?;
    }
    Ok(())
}

fn legend<DB: DrawingBackend>(
    report: &Report,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> std::result::Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    let style = ("sans-serif", 16).into_font();
    for (row, &k) in report.kinds.iter().enumerate() {
        let y = 40 + row as i32 * 34;
        area.draw(&Rectangle::new([(30, y), (60, y + 20)], color(k).filled()))?;
        area.draw_text(k.name(), &style.clone().into_text_style(area), (72, y + 2))?;
    }
    Ok(())
}
