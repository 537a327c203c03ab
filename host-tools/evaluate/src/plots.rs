//! ROC and calibration pictures that read without their captions: axes with ticks and
//! titles, a legend giving each curve's AUC, the operating point marked. Text is drawn with
//! DejaVu Sans embedded in the binary (the `dejavu` crate), so a report drawn on a headless
//! build machine looks the same as on a workstation.

use std::io::Cursor;
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::metrics::Evaluation;
use crate::report::ReportError;

/// Picture size in pixels.
pub const SIZE: (u32, u32) = (720, 640);

/// The colour of a class's curve: by its screening class, so a type has one colour in every
/// report whatever the model's output order (overall is black).
pub fn colour(label: &str) -> (RGBColor, &'static str) {
    contract::Class::from_label(label)
        .and_then(|c| COLOURS.get(c.index()).copied())
        .unwrap_or(COLOURS[0])
}

const COLOURS: [(RGBColor, &str); 6] = [
    (RGBColor(0, 0, 0), "black"),
    (RGBColor(230, 97, 1), "orange"),
    (RGBColor(44, 123, 182), "blue"),
    (RGBColor(215, 25, 28), "red"),
    (RGBColor(77, 175, 74), "green"),
    (RGBColor(152, 78, 163), "purple"),
];

const FONT: &str = "sans-serif";

/// Registers the embedded font once; plotters looks fonts up by family name.
fn fonts() -> Result<(), ReportError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            plotters::style::register_font(FONT, style, bytes)
                .map_err(|_| "the embedded DejaVu Sans font does not parse".to_string())?;
        }
        Ok(())
    })
    .clone()
    .map_err(|msg| ReportError::Plot { what: "fonts", msg })
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A unit-square chart with a title, ticks every 0.1, axis titles and the grey diagonal
/// (labelled `diagonal`); `draw` adds the series, then the legend is placed at `legend`.
fn unit_plot(
    what: &'static str,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    diagonal: &str,
    legend: SeriesLabelPosition,
    draw: impl FnOnce(&mut Chart<'_, '_>) -> Result<(), String>,
) -> Result<Vec<u8>, ReportError> {
    fonts()?;
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let err = |msg: String| ReportError::Plot { what, msg };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22).into_font().style(FontStyle::Bold))
            .margin(18)
            .x_label_area_size(56)
            .y_label_area_size(66)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_labels(11)
            .y_labels(11)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .axis_desc_style((FONT, 17))
            .label_style((FONT, 14))
            .x_max_light_lines(1)
            .y_max_light_lines(1)
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(|e| err(e.to_string()))?;
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                8,
                6,
                grey.stroke_width(1),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(diagonal)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], grey));
        draw(&mut chart).map_err(err)?;
        chart
            .configure_series_labels()
            .position(legend)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(120, 120, 120))
            .margin(12)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    png(what, buf)
}

/// A labelled curve, its legend entry a short stroke of the same colour and width.
fn line(
    chart: &mut Chart<'_, '_>,
    points: impl IntoIterator<Item = (f64, f64)>,
    colour: RGBColor,
    width: u32,
    label: String,
) -> Result<(), String> {
    chart
        .draw_series(LineSeries::new(points, colour.stroke_width(width)))
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(width)));
    Ok(())
}

/// The operating point in use: a black ring, named in the legend.
fn mark(chart: &mut Chart<'_, '_>, point: (f64, f64), label: String) -> Result<(), String> {
    chart
        .draw_series(std::iter::once(Circle::new(
            point,
            7,
            BLACK.stroke_width(3),
        )))
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(|(x, y)| Circle::new((x + 12, y), 6, BLACK.stroke_width(3)));
    Ok(())
}

fn png(what: &'static str, buf: Vec<u8>) -> Result<Vec<u8>, ReportError> {
    let (w, h) = SIZE;
    let img = image::RgbImage::from_raw(w, h, buf).ok_or(ReportError::Plot {
        what,
        msg: "buffer size".into(),
    })?;
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ReportError::Plot {
            what,
            msg: e.to_string(),
        })?;
    Ok(out.into_inner())
}

/// ROC curves: overall (black, thick) and each type vs normal, the AUC of each in the
/// legend, and the screening threshold's point on the overall curve.
pub fn roc_png(e: &Evaluation) -> Result<Vec<u8>, ReportError> {
    let o = &e.overall;
    let title = format!(
        "ROC, abnormal vs normal ({} normal, {} abnormal images)",
        o.n_normal, o.n_abnormal
    );
    unit_plot(
        "ROC curves",
        &title,
        (
            "1 - specificity (false-positive rate)",
            "sensitivity (true-positive rate)",
        ),
        "chance (AUC 0.5)",
        SeriesLabelPosition::LowerRight,
        |chart| {
            for name in e.abnormal_classes() {
                let (Some(pts), Some(t)) = (e.roc.get(name), e.per_type.get(name)) else {
                    continue;
                };
                let label = format!("{name} (n={}): AUC {:.3}", t.n, t.auc);
                line(chart, pts.iter().copied(), colour(name).0, 2, label)?;
            }
            if let Some(pts) = e.roc.get("overall") {
                let label = format!(
                    "overall: AUC {:.3} ({:.3}-{:.3})",
                    o.auc, o.auc_ci[0], o.auc_ci[1]
                );
                line(chart, pts.iter().copied(), BLACK, 4, label)?;
            }
            let label = format!(
                "threshold {:.3}: sensitivity {:.1}%, specificity {:.1}%",
                o.threshold,
                100.0 * o.sensitivity,
                100.0 * o.specificity
            );
            mark(chart, (1.0 - o.specificity, o.sensitivity), label)
        },
    )
}

/// One labelled curve of (1 - specificity, sensitivity) points, for [`curves_png`].
#[derive(Debug, Clone)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// ROC-style curves that are not per class (exam level: one per aggregation window), with
/// one marked point (the setting in use), on the same axes and font as [`roc_png`].
pub fn curves_png(
    title: &str,
    curves: &[Curve],
    marked: Option<(&str, (f64, f64))>,
) -> Result<Vec<u8>, ReportError> {
    unit_plot(
        "operating curves",
        title,
        (
            "1 - specificity (false-positive rate)",
            "sensitivity (true-positive rate)",
        ),
        "chance",
        SeriesLabelPosition::LowerRight,
        |chart| {
            for (i, c) in curves.iter().enumerate() {
                let colour = COLOURS[(i + 1) % COLOURS.len()].0;
                line(chart, c.points.iter().copied(), colour, 2, c.label.clone())?;
            }
            match marked {
                Some((label, point)) => mark(chart, point, label.to_string()),
                None => Ok(()),
            }
        },
    )
}

/// Reliability diagram: per bin, accuracy (y) at mean confidence (x); dot area ~ count.
pub fn calibration_png(e: &Evaluation) -> Result<Vec<u8>, ReportError> {
    let total = e.reliability.iter().map(|b| b.count).sum::<usize>().max(1) as f64;
    let title = format!(
        "Calibration of the top class ({} images, ECE {:.3})",
        e.overall.n, e.overall.ece
    );
    unit_plot(
        "calibration plot",
        &title,
        (
            "confidence of the predicted class (10 bins)",
            "fraction of the bin predicted correctly",
        ),
        "perfect calibration",
        SeriesLabelPosition::UpperLeft,
        |chart| {
            let used: Vec<_> = e.reliability.iter().filter(|b| b.count > 0).collect();
            let blue = RGBColor(44, 123, 182);
            chart
                .draw_series(LineSeries::new(
                    used.iter().map(|b| (b.confidence, b.accuracy)),
                    blue.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label("this model, per bin")
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 24, y)], blue.stroke_width(2))
                });
            chart
                .draw_series(used.iter().map(|b| {
                    let r = (3.0 + 25.0 * (b.count as f64 / total).sqrt()) as i32;
                    Circle::new((b.confidence, b.accuracy), r, blue.mix(0.45).filled())
                }))
                .map_err(|e| e.to_string())?
                .label("dot area: images in the bin")
                .legend(move |(x, y)| Circle::new((x + 12, y), 6, blue.mix(0.45).filled()));
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dark pixels in a strip: text and tick marks are dark, the grid is light.
    fn dark(img: &image::RgbImage, x: std::ops::Range<u32>, y: std::ops::Range<u32>) -> usize {
        let mut n = 0;
        for yy in y {
            for xx in x.clone() {
                if img.get_pixel(xx, yy).0.iter().all(|&v| v < 110) {
                    n += 1;
                }
            }
        }
        n
    }

    #[test]
    fn both_pictures_have_titles_axis_text_and_a_legend() {
        let e = crate::metrics::sample_evaluation();
        let (w, h) = SIZE;
        for (name, bytes) in [
            ("roc", roc_png(&e).unwrap()),
            ("calibration", calibration_png(&e).unwrap()),
        ] {
            let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), SIZE);
            // Title band, y-axis labels and title, x-axis labels and title: all have text.
            assert!(dark(&img, 60..w - 60, 0..40) > 200, "{name}: no title");
            assert!(
                dark(&img, 0..60, 60..h - 80) > 300,
                "{name}: no y axis text"
            );
            assert!(
                dark(&img, 80..w - 20, h - 56..h) > 300,
                "{name}: no x axis text"
            );
        }
    }

    #[test]
    fn the_legend_sits_where_the_curves_are_not() {
        // The ROC legend is in the lower right, where a useful curve never goes.
        let e = crate::metrics::sample_evaluation();
        let img = image::load_from_memory(&roc_png(&e).unwrap())
            .unwrap()
            .to_rgb8();
        let (w, h) = SIZE;
        assert!(
            dark(&img, w / 2..w - 30, h / 2..h - 70) > 400,
            "no legend text"
        );
    }
}
