//! The loss / evaluation curve as a PNG.

use crate::error::{Result, TrainError};
use crate::trainer::LogEntry;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans, bundled by the `dejavu` crate, so no system font is needed.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws training loss (and evaluation loss, when logged) against the optimizer step, written
/// atomically (a temporary sibling renamed into place).
///
/// # Errors
/// [`TrainError::Io`] when the image cannot be written.
pub fn loss_curve(path: &Path, log: &[LogEntry]) -> Result<()> {
    register_font();
    peft_core::durable::atomic_write_with(path, |tmp| {
        draw(tmp, log).map_err(|e| match e {
            TrainError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })
    })?;
    Ok(())
}

fn draw(path: &Path, log: &[LogEntry]) -> Result<()> {
    let train: Vec<(f64, f64)> = log.iter().filter_map(|e| e.loss.map(|l| (e.step as f64, l))).collect();
    let eval: Vec<(f64, f64)> = log.iter().filter_map(|e| e.eval_loss.map(|l| (e.step as f64, l))).collect();
    let err = |e: &dyn std::fmt::Display| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let all: Vec<&(f64, f64)> = train.iter().chain(&eval).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(|e| err(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    if !eval.is_empty() {
        chart
            .draw_series(LineSeries::new(eval.iter().copied(), &RED))
            .map_err(|e| err(&e))?
            .label("eval")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        chart.draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled()))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
