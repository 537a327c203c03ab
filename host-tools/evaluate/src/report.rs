//! `report.md`, `report.html` (pictures inline) and `metrics.json`, plus ROC and calibration
//! PNGs drawn with plotters. The plots carry no text (no font dependency): legends are in
//! the documents beside them.

use std::fmt::Write as _;
use std::fs;
use std::io::Cursor;
use std::path::Path;

use base64::Engine as _;
use plotters::prelude::*;

use crate::metrics::Evaluation;

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// File system.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Plot drawing or PNG encoding.
    #[error("cannot draw {what}: {msg}")]
    Plot {
        /// Which plot.
        what: &'static str,
        /// Why.
        msg: String,
    },
    /// JSON serialisation.
    #[error("cannot serialise metrics: {0}")]
    Json(#[from] serde_json::Error),
}

/// The colour of a class's curve: by its screening class, so a type has one colour in every
/// report whatever the model's output order (overall is black); named in the legends.
fn colour(label: &str) -> (RGBColor, &'static str) {
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

const SIDE: u32 = 480;

fn png(what: &'static str, buf: Vec<u8>) -> Result<Vec<u8>, ReportError> {
    let img = image::RgbImage::from_raw(SIDE, SIDE, buf).ok_or(ReportError::Plot {
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

/// Draws on a unit square with a light grid and the diagonal.
fn unit_plot(
    what: &'static str,
    draw: impl FnOnce(
        &mut ChartContext<
            '_,
            BitMapBackend<'_>,
            Cartesian2d<
                plotters::coord::types::RangedCoordf64,
                plotters::coord::types::RangedCoordf64,
            >,
        >,
    ) -> Result<(), String>,
) -> Result<Vec<u8>, ReportError> {
    let mut buf = vec![0u8; (SIDE * SIDE * 3) as usize];
    let err = |msg: String| ReportError::Plot { what, msg };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (SIDE, SIDE)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(16)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| err(e.to_string()))?;
        let grid = RGBColor(225, 225, 225);
        for i in 0..=10 {
            let v = f64::from(i) / 10.0;
            chart
                .draw_series(LineSeries::new([(v, 0.0), (v, 1.0)], grid))
                .map_err(|e| err(e.to_string()))?;
            chart
                .draw_series(LineSeries::new([(0.0, v), (1.0, v)], grid))
                .map_err(|e| err(e.to_string()))?;
        }
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                RGBColor(160, 160, 160),
            ))
            .map_err(|e| err(e.to_string()))?;
        draw(&mut chart).map_err(err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    png(what, buf)
}

/// ROC curves: overall (black, thick) and each type vs normal.
pub fn roc_png(e: &Evaluation) -> Result<Vec<u8>, ReportError> {
    unit_plot("ROC curves", |chart| {
        for name in e.abnormal_classes() {
            if let Some(pts) = e.roc.get(name) {
                chart
                    .draw_series(LineSeries::new(
                        pts.iter().copied(),
                        colour(name).0.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?;
            }
        }
        if let Some(pts) = e.roc.get("overall") {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), BLACK.stroke_width(4)))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Reliability diagram: per bin, accuracy (y) at mean confidence (x); dot area ~ count.
pub fn calibration_png(e: &Evaluation) -> Result<Vec<u8>, ReportError> {
    let total = e.reliability.iter().map(|b| b.count).sum::<usize>().max(1) as f64;
    unit_plot("calibration plot", |chart| {
        let pts: Vec<(f64, f64)> = e
            .reliability
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.confidence, b.accuracy))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(e.reliability.iter().filter(|b| b.count > 0).map(|b| {
                let r = (3.0 + 25.0 * (b.count as f64 / total).sqrt()) as i32;
                Circle::new((b.confidence, b.accuracy), r, BLUE.mix(0.5).filled())
            }))
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// Markdown body shared by `report.md` and (converted line by line) `report.html`.
fn tables(e: &Evaluation) -> (String, String, String) {
    let o = &e.overall;
    let mut overall = String::new();
    let _ = writeln!(overall, "| metric | value |\n|---|---|");
    let _ = writeln!(
        overall,
        "| images | {} ({} normal, {} abnormal) |",
        o.n, o.n_normal, o.n_abnormal
    );
    let _ = writeln!(
        overall,
        "| AUC (normal vs abnormal) | {:.3} (95% CI {:.3}-{:.3}, DeLong) |",
        o.auc, o.auc_ci[0], o.auc_ci[1]
    );
    let _ = writeln!(overall, "| accuracy | {}% |", pct(o.accuracy));
    let _ = writeln!(overall, "| sensitivity | {}% |", pct(o.sensitivity));
    let _ = writeln!(
        overall,
        "| specificity (normal correct) | {}% |",
        pct(o.specificity)
    );
    let _ = writeln!(overall, "| threshold on p(abnormal) | {:.4} |", o.threshold);
    let _ = writeln!(
        overall,
        "| 6-class accuracy | {}% |",
        pct(o.accuracy_6class)
    );
    let _ = writeln!(overall, "| ECE (10 bins, top label) | {:.4} |", o.ece);

    let mut per_type = String::new();
    let _ = writeln!(
        per_type,
        "| type (vs normal) | n | accuracy | AUC | 95% CI | sensitivity | ROC colour |\n|---|---|---|---|---|---|---|"
    );
    for name in e.abnormal_classes() {
        if let Some(t) = e.per_type.get(name) {
            let _ = writeln!(
                per_type,
                "| {name} | {} | {}% | {:.3} | {:.3}-{:.3} | {}% | {} |",
                t.n,
                pct(t.accuracy),
                t.auc,
                t.auc_ci[0],
                t.auc_ci[1],
                pct(t.sensitivity),
                colour(name).1
            );
        }
    }
    let mut conf = String::new();
    let _ = write!(conf, "| true \\ predicted |");
    for c in &e.classes {
        let _ = write!(conf, " {c} |");
    }
    let _ = write!(conf, "\n|---|");
    for _ in &e.classes {
        let _ = write!(conf, "---|");
    }
    let _ = writeln!(conf);
    for (row, name) in e.confusion.iter().zip(&e.classes) {
        let _ = write!(conf, "| {name} |");
        for v in row {
            let _ = write!(conf, " {v} |");
        }
        let _ = writeln!(conf);
    }
    (overall, per_type, conf)
}

/// The view gate's figures, or a sentence saying why there are none.
fn gate_table(e: &Evaluation) -> String {
    let Some(g) = &e.view_gate else {
        return "The model has no view gate, or the data no images for it.".into();
    };
    let mut t = String::from("| figure | value |\n|---|---|\n");
    let rate = |x: f64| {
        if x.is_nan() {
            "-".to_string()
        } else {
            format!("{}%", pct(x))
        }
    };
    let _ = writeln!(
        t,
        "| kidney views passed | {} of {} |",
        rate(g.kidney_pass),
        g.n_kidney
    );
    let _ = writeln!(
        t,
        "| non-kidney views gated | {} of {} |",
        rate(g.other_gated),
        g.n_other
    );
    let _ = writeln!(
        t,
        "| ... by the learned head | {} |",
        rate(g.other_gated_learned)
    );
    let _ = writeln!(t, "| ... by the OOD score | {} |", rate(g.other_gated_ood));
    t
}

fn md_table_to_html(md: &str) -> String {
    let mut h = String::from("<table>\n");
    for (i, line) in md.lines().enumerate() {
        if i == 1 {
            continue; // the |---| separator
        }
        let tag = if i == 0 { "th" } else { "td" };
        h.push_str("<tr>");
        for cell in line.trim().trim_matches('|').split('|') {
            let _ = write!(h, "<{tag}>{}</{tag}>", html_escape(cell.trim()));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    h
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    fs::write(path, bytes).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })
}

const ROC_LEGEND: &str = "ROC curves (x: false-positive rate, y: sensitivity; grid every 0.1): \
overall black (thick), stone orange, cyst blue, hyperechogenicity red, SOL green, \
hydronephrosis purple; grey diagonal = chance.";
const CAL_LEGEND: &str = "Calibration (x: top-label confidence, y: accuracy, 10 bins; dot area \
grows with the bin's image count); grey diagonal = perfect calibration.";

/// Writes `report.md`, `report.html`, `metrics.json`, `roc.png` and `calibration.png` into
/// `dir`. `context` is a short Markdown paragraph (model, data) placed under the title.
pub fn write_report(dir: &Path, e: &Evaluation, context: &str) -> Result<(), ReportError> {
    fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let roc = roc_png(e)?;
    let cal = calibration_png(e)?;
    write(&dir.join("roc.png"), &roc)?;
    write(&dir.join("calibration.png"), &cal)?;
    write(
        &dir.join("metrics.json"),
        serde_json::to_string_pretty(e)?.as_bytes(),
    )?;
    let (overall, per_type, conf) = tables(e);
    let gate = gate_table(e);
    let md = format!(
        "# renalscan evaluation\n\n{context}\n\n## Normal vs abnormal\n\n{overall}\n\
         ## Each abnormality type vs normal\n\n{per_type}\n## Confusion matrix (argmax)\n\n{conf}\n\
         ## View gate (is it a kidney?)\n\n{gate}\n\
         ## ROC curves\n\n![ROC](roc.png)\n\n{ROC_LEGEND}\n\n## Calibration\n\n\
         ![calibration](calibration.png)\n\n{CAL_LEGEND}\n\n\
         Not for diagnosis: a screening aid evaluated here on the data given.\n"
    );
    write(&dir.join("report.md"), md.as_bytes())?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>renalscan evaluation</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}</style>\
         </head><body>\n<h1>renalscan evaluation</h1>\n<p>{}</p>\n<h2>Normal vs abnormal</h2>\n{}\
         <h2>Each abnormality type vs normal</h2>\n{}<h2>Confusion matrix (argmax)</h2>\n{}\
         <h2>View gate (is it a kidney?)</h2>\n{}\
         <h2>ROC curves</h2>\n<img alt=\"ROC\" src=\"data:image/png;base64,{}\">\n<p>{}</p>\n\
         <h2>Calibration</h2>\n<img alt=\"calibration\" src=\"data:image/png;base64,{}\">\n<p>{}</p>\n\
         <p><b>Not for diagnosis</b>: a screening aid evaluated here on the data given.</p>\n\
         </body></html>\n",
        html_escape(context),
        md_table_to_html(&overall),
        md_table_to_html(&per_type),
        md_table_to_html(&conf),
        if gate.starts_with('|') {
            md_table_to_html(&gate)
        } else {
            format!("<p>{}</p>\n", html_escape(&gate))
        },
        b64(&roc),
        ROC_LEGEND,
        b64(&cal),
        CAL_LEGEND
    );
    write(&dir.join("report.html"), html.as_bytes())?;
    log::info!("report written to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{evaluate, Prediction};

    #[test]
    fn writes_all_files() {
        let mut preds = Vec::new();
        for i in 0..60 {
            let label = i % 6;
            let noise = (i as f32 * 0.37).fract() * 0.5;
            let mut probs = vec![0.02; 6];
            probs[label] = 0.5 + noise * 0.5;
            probs[0] += if label == 0 { 0.0 } else { noise * 0.3 };
            preds.push(Prediction { label, probs });
        }
        let e = evaluate(&contract::Taxonomy::standard(), &preds, 0.5).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_report(dir.path(), &e, "test <data>").unwrap();
        for f in [
            "report.md",
            "report.html",
            "metrics.json",
            "roc.png",
            "calibration.png",
        ] {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("metrics.json")).unwrap()).unwrap();
        assert!(json["overall"]["auc"].is_number());
        assert!(json["overall"]["auc_ci"][1].is_number());
        assert!(json["per_type"]["stone"]["accuracy"].is_number());
        let html = fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(html.contains("data:image/png;base64,iVBOR"));
        assert!(html.contains("test &lt;data&gt;"));
    }
}
