//! What the user sees of a training run, as strings: the progress bar's style and message, the
//! one-line epoch summary, the `--log` JSON line and the `--plot` SVG. Printing and file
//! writing happen in the CLI.
//!
//! Accuracies are fractions in [0, 1], as d2l prints them (`loss 0.469, train acc 0.823, test
//! acc 0.779`) and its plots draw them.

use indicatif::{ProgressBar, ProgressStyle};
use std::fmt::Write;

/// The outcome of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's samples.
    pub train_loss: f64,
    /// `None` for mean squared error (no classes).
    pub train_acc: Option<f64>,
    /// `None` without a test set or without classes.
    pub test_acc: Option<f64>,
    /// The learning rate of the epoch (from the schedule).
    pub lr: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// A progress bar for one epoch of `batches` batches, drawn on stderr (hidden when stderr is
/// not a terminal, so logs stay clean). Advance it with `inc(1)` and
/// `set_message(progress_message(..))`.
pub fn progress_bar(epoch: usize, epochs: usize, batches: u64) -> ProgressBar {
    let bar = ProgressBar::new(batches);
    let template =
        format!("epoch {epoch}/{epochs} {{bar:30}} {{pos}}/{{len}} {{msg}} [{{elapsed}}<{{eta}}]");
    // The template is built here from a fixed pattern; the fallback only guards its parse.
    let style =
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// The bar's message: running loss and throughput.
pub fn progress_message(running_loss: f64, images_per_second: f64) -> String {
    format!("loss {running_loss:.4}, {images_per_second:.0} img/s")
}

/// `epoch 3/10: loss 0.4690, train acc 0.823, test acc 0.779, lr 0.05000, 2.3 s, 26041 img/s`
/// (the rate to 4 significant digits).
pub fn epoch_line(record: &EpochRecord, epochs: usize) -> String {
    let mut line = format!(
        "epoch {}/{epochs}: loss {:.4}",
        record.epoch, record.train_loss
    );
    if let Some(acc) = record.train_acc {
        let _ = write!(line, ", train acc {acc:.3}");
    }
    if let Some(acc) = record.test_acc {
        let _ = write!(line, ", test acc {acc:.3}");
    }
    let _ = write!(
        line,
        ", lr {}, {:.1} s, {:.0} img/s",
        significant(record.lr, 4),
        record.seconds,
        record.images_per_second
    );
    line
}

/// `x` with `digits` significant digits in plain notation (`0.0500`, `0.000545`).
fn significant(x: f64, digits: i32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (digits - 1 - x.abs().log10().floor() as i32).max(0);
    format!("{x:.*}", decimals as usize)
}

/// One `--log` line (JSON, no trailing newline). Missing accuracies and a non-finite loss are
/// `null`.
pub fn log_line(record: &EpochRecord) -> String {
    serde_json::json!({
        "epoch": record.epoch,
        "train_loss": record.train_loss,
        "train_acc": record.train_acc,
        "test_acc": record.test_acc,
        "lr": record.lr,
        "seconds": record.seconds,
        "images_per_second": record.images_per_second,
    })
    .to_string()
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// One curve: d2l's `plot` formats `-`, `m--`, `g-.` in matplotlib's colours.
struct Series {
    label: &'static str,
    colour: &'static str,
    dash: &'static str,
    points: Vec<(f64, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The per-epoch curves of train loss, train accuracy and test accuracy, like d2l's training
/// plots: epochs on x from 1, values on y from 0, a legend, grid lines.
pub fn plot_svg(records: &[EpochRecord], title: &str) -> String {
    let finite = |v: f64| v.is_finite().then_some(v);
    let series = [
        Series {
            label: "train loss",
            colour: "#1f77b4",
            dash: "",
            points: records
                .iter()
                .filter_map(|r| Some((r.epoch as f64, finite(r.train_loss)?)))
                .collect(),
        },
        Series {
            label: "train acc",
            colour: "#bf00bf",
            dash: "8,4",
            points: records
                .iter()
                .filter_map(|r| Some((r.epoch as f64, finite(r.train_acc?)?)))
                .collect(),
        },
        Series {
            label: "test acc",
            colour: "#008000",
            dash: "8,3,2,3",
            points: records
                .iter()
                .filter_map(|r| Some((r.epoch as f64, finite(r.test_acc?)?)))
                .collect(),
        },
    ];
    let last_epoch = records.iter().map(|r| r.epoch).max().unwrap_or(1).max(2);
    let highest = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    // y from 0 to the highest value rounded up to a fifth, at least 1 (accuracies).
    let y_max = (highest * 5.0).ceil() / 5.0;
    let x_of =
        |epoch: f64| LEFT + (epoch - 1.0) / (last_epoch as f64 - 1.0) * (WIDTH - LEFT - RIGHT);
    let y_of = |value: f64| HEIGHT - BOTTOM - value.max(0.0) / y_max * (HEIGHT - TOP - BOTTOM);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and y ticks: five steps.
    for step in 0..=5 {
        let value = y_max * f64::from(step) / 5.0;
        let y = y_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##,
            WIDTH - RIGHT
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{value:.1}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
    // x ticks: every epoch, or about ten of them.
    let every = last_epoch.div_ceil(10);
    for epoch in (1..=last_epoch).filter(|e| (e - 1) % every == 0 || *e == last_epoch) {
        let x = x_of(epoch as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e0e0e0"/>"##,
            HEIGHT - BOTTOM
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{epoch}</text>"#,
            HEIGHT - BOTTOM + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        WIDTH - LEFT - RIGHT,
        HEIGHT - TOP - BOTTOM
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">epoch</text>"#,
        (WIDTH + LEFT - RIGHT) / 2.0,
        HEIGHT - 12.0
    );
    for (row, s) in series.iter().filter(|s| !s.points.is_empty()).enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(e, v)| format!("{:.1},{:.1}", x_of(e), y_of(v)))
            .collect();
        let dash = if s.dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{}""#, s.dash)
        };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            points.join(" "),
            s.colour
        );
        if let [(e, v)] = s.points[..] {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                x_of(e),
                y_of(v),
                s.colour
            );
        }
        // Legend, top right, one row per curve.
        let (lx, ly) = (WIDTH - RIGHT - 130.0, TOP + 16.0 + 18.0 * row as f64);
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
            lx + 30.0,
            s.colour
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 38.0,
            ly + 4.0,
            s.label
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, loss: f64, test_acc: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: loss,
            train_acc: Some(0.8),
            test_acc,
            lr: 0.05,
            seconds: 2.345,
            images_per_second: 25600.4,
        }
    }

    #[test]
    fn epoch_line_like_d2l() {
        assert_eq!(
            epoch_line(&record(3, 0.469, Some(0.779)), 10),
            "epoch 3/10: loss 0.4690, train acc 0.800, test acc 0.779, lr 0.05000, 2.3 s, 25600 img/s"
        );
        let mse = EpochRecord {
            train_acc: None,
            ..record(1, 0.25, None)
        };
        assert_eq!(
            epoch_line(&mse, 1),
            "epoch 1/1: loss 0.2500, lr 0.05000, 2.3 s, 25600 img/s"
        );
        assert_eq!(significant(0.000545369, 4), "0.0005454");
        assert_eq!(significant(0.1, 4), "0.1000");
        assert_eq!(significant(0.0, 4), "0");
    }

    #[test]
    fn log_line_has_the_seven_keys_and_nulls() {
        let value: serde_json::Value =
            serde_json::from_str(&log_line(&record(2, 0.5, None))).expect("json");
        assert_eq!(value["epoch"], 2);
        assert_eq!(value["train_loss"], 0.5);
        assert_eq!(value["train_acc"], 0.8);
        assert!(value["test_acc"].is_null());
        assert_eq!(value["seconds"], 2.345);
        assert_eq!(value["images_per_second"], 25600.4);
        assert_eq!(value["lr"], 0.05);
        assert_eq!(value.as_object().map(|o| o.len()), Some(7));
        let nan: serde_json::Value =
            serde_json::from_str(&log_line(&record(1, f64::NAN, None))).expect("json");
        assert!(nan["train_loss"].is_null());
    }

    #[test]
    fn plot_draws_one_polyline_per_curve_within_the_frame() {
        let records: Vec<_> = (1..=10)
            .map(|e| record(e, 2.3 / e as f64, Some(0.5 + 0.04 * e as f64)))
            .collect();
        let svg = plot_svg(&records, "lenet <fashion-mnist>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("lenet &lt;fashion-mnist&gt;"));
        assert!(svg.contains(">train loss<") && svg.contains(">test acc<"));
        // Every plotted point lies inside the axes' frame.
        for polyline in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let points = polyline.split('"').nth(1).unwrap_or("");
            for point in points.split(' ') {
                let (x, y) = point.split_once(',').expect("x,y");
                let (x, y): (f64, f64) = (x.parse().expect("x"), y.parse().expect("y"));
                assert!(
                    (LEFT..=WIDTH - RIGHT).contains(&x) && (TOP..=HEIGHT - BOTTOM).contains(&y),
                    "{point}"
                );
            }
        }
    }

    #[test]
    fn plot_of_one_epoch_without_test_set_marks_the_points() {
        let svg = plot_svg(&[record(1, 0.7, None)], "t");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
