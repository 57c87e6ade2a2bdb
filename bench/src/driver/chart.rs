//! The PNG chart of latency distributions: one panel per load level, one
//! curve per target, percentile on a "nines" axis and latency on a log
//! axis. The font is compiled in, so no system fonts are needed.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::perf::Perf;

/// Draws the chart into `path`.
pub fn draw(perf: &Perf, path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!perf.latency.is_empty(), "no latency figures to draw");
    // Registering twice fails harmlessly; the first font stays.
    let _ = register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::HACK_REGULAR);

    let width = 520 * perf.latency.len() as u32;
    let root = BitMapBackend::new(path, (width, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((1, perf.latency.len()));
    for (panel, level) in panels.iter().zip(&perf.latency) {
        let top = level
            .targets
            .iter()
            .flat_map(|t| t.curve.iter().map(|(_, us)| *us))
            .fold(10.0f64, f64::max)
            * 1.5;
        let bottom = level
            .targets
            .iter()
            .flat_map(|t| t.curve.iter().map(|(_, us)| *us))
            .fold(f64::INFINITY, f64::min)
            .max(1.0)
            / 1.5;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{:.0}% load ({:.0} req/s)", level.load * 100.0, level.rate),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.3f64..4.0f64, (bottom..top).log_scale())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .x_labels(5)
            .x_label_formatter(&|nines| {
                let pct = 100.0 * (1.0 - 10f64.powf(-nines));
                format!("{pct:.2}%").replace(".00%", "%")
            })
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, target) in level.targets.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points = target.curve.iter().map(|(pct, us)| (-(1.0 - pct / 100.0).log10(), *us));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(target.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}
