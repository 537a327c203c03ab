//! `report.md`, `report.html` (pictures inline) and `metrics.json`, plus the ROC and
//! calibration pictures (`plots`).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::metrics::Evaluation;
use crate::plots::{calibration_png, colour, roc_png};
use crate::study::PUBLISHED;
use base64::Engine as _;

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

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// Markdown tables of `report.md` (and so of `report.html`, rendered from it).
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

/// `report.html` from `report.md`'s text: pictures named in `images` are inlined as data
/// URIs, so the page is one self-contained file. The report holds no HTML of its own, so any
/// raw HTML in the Markdown (a data set named `<x>`) is shown as text, never interpreted.
fn markdown_to_html(md: &str, images: &[(&str, &[u8])]) -> String {
    use pulldown_cmark::{html, CowStr, Event, Options, Parser, Tag};
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let events = Parser::new_ext(md, Options::ENABLE_TABLES).map(|ev| match ev {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => {
            let dest_url = match images.iter().find(|(name, _)| **name == *dest_url) {
                Some((_, bytes)) => CowStr::from(format!("data:image/png;base64,{}", b64(bytes))),
                None => dest_url,
            };
            Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            })
        }
        other => other,
    });
    let mut body = String::new();
    html::push_html(&mut body, events);
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>renalscan evaluation</title>\
         <style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px}}\
         img{{max-width:100%}}</style></head><body>\n{body}</body></html>\n"
    )
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    fs::write(path, bytes).map_err(|source| ReportError::Io {
        path: path.display().to_string(),
        source,
    })
}

const ROC_LEGEND: &str = "The circle is the screening threshold's operating point on the \
overall curve.";
const CAL_LEGEND: &str = "Top-label confidence against the fraction correct, in 10 equal bins; \
points under the diagonal are overconfident.";

const STUDY_NOTE: &str = "In the study's terms (Tsai et al., JMIR Med Inform 2022): a type's \
accuracy is the share of its images called abnormal, normal accuracy is the specificity, the \
overall row is the binary accuracy and AUC. The published column comes from the authors' own \
1,599 clinical images and is **not comparable** with figures on other data (phantom or another \
clinic's). The Youden point is chosen on the images it is measured on, so it is optimistic; \
the screening threshold is the one the device uses.";

/// The study's table: one row per type, then normal and overall; columns: the published
/// figure, then this model at each operating point, then AUCs.
fn study_table(e: &Evaluation) -> String {
    let mut t = String::from("| row | published accuracy (authors' data) |");
    for p in &e.study {
        let _ = write!(t, " {} ({:.3}) |", p.name, p.threshold);
    }
    t.push_str(" AUC here | published AUC (authors' data) |\n|---|---|");
    for _ in &e.study {
        t.push_str("---|");
    }
    t.push_str("---|---|\n");
    let published = |row: &str| PUBLISHED.iter().find(|p| p.0 == row);
    let cell = |x: f64| {
        if x.is_nan() {
            "-".to_string()
        } else {
            format!("{}%", pct(x))
        }
    };
    let auc = |x: Option<f64>| x.map_or("-".to_string(), |a| format!("{a:.3}"));
    for name in e.abnormal_classes() {
        let Some(tm) = e.per_type.get(name) else {
            continue;
        };
        let p = published(name);
        let _ = write!(
            t,
            "| {name} (n={}) | {} |",
            tm.n,
            p.map_or("-".into(), |p| format!("{:.1}%", p.1))
        );
        for sp in &e.study {
            let v = sp
                .per_type
                .iter()
                .find(|(n, _)| n == name)
                .map_or(f64::NAN, |x| x.1);
            let _ = write!(t, " {} |", cell(v));
        }
        let _ = writeln!(t, " {:.3} | {} |", tm.auc, auc(p.and_then(|p| p.2)));
    }
    let acc = |row: &str| published(row).map_or("-".into(), |p| format!("{:.1}%", p.1));
    let _ = write!(
        t,
        "| normal (n={}), specificity | {} |",
        e.overall.n_normal,
        acc("normal")
    );
    for sp in &e.study {
        let _ = write!(t, " {} |", cell(sp.normal));
    }
    t.push_str(" - | - |\n");
    let _ = write!(t, "| overall (n={}) | {} |", e.overall.n, acc("overall"));
    for sp in &e.study {
        let _ = write!(t, " {} |", cell(sp.accuracy));
    }
    let _ = writeln!(
        t,
        " {:.3} | {} |",
        e.overall.auc,
        auc(published("overall").and_then(|p| p.2))
    );
    t
}

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
    let study = study_table(e);
    let gate = gate_table(e);
    let md = format!(
        "# renalscan evaluation\n\n{context}\n\n## Normal vs abnormal\n\n{overall}\n\
         ## The study's table\n\n{study}\n{STUDY_NOTE}\n\n\
         ## Each abnormality type vs normal\n\n{per_type}\n## Confusion matrix (argmax)\n\n{conf}\n\
         ## View gate (is it a kidney?)\n\n{gate}\n\
         ## ROC curves\n\n![ROC](roc.png)\n\n{ROC_LEGEND}\n\n## Calibration\n\n\
         ![calibration](calibration.png)\n\n{CAL_LEGEND}\n\n\
         **Not for diagnosis**: a screening aid evaluated here on the data given.\n"
    );
    write(&dir.join("report.md"), md.as_bytes())?;
    let html = markdown_to_html(&md, &[("roc.png", &roc), ("calibration.png", &cal)]);
    write(&dir.join("report.html"), html.as_bytes())?;
    log::info!("report written to {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_all_files() {
        let e = crate::metrics::sample_evaluation();
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
        assert!(
            html.contains("test &lt;data&gt;"),
            "raw HTML in the context is text"
        );
        assert_eq!(html.matches("<img ").count(), 2);
        assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 2);
        assert!(html.contains("<table>") && html.contains("<th>AUC here</th>"));
        assert!(html.contains("<strong>not comparable</strong>"));
        assert!(html.contains("The study&#39;s table") || html.contains("The study's table"));
        let md = fs::read_to_string(dir.path().join("report.md")).unwrap();
        let row = md
            .lines()
            .find(|l| l.starts_with("| stone"))
            .expect("stone row");
        assert!(row.contains("93.2%") && row.contains("0.973"), "{row}");
        assert!(md.contains("Youden point of these images"));
        assert!(md.contains("not comparable"));
        assert_eq!(json["study"].as_array().map(Vec::len), Some(2));
    }
}
