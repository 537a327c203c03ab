//! The one-page report a clinician files: context, date and time, model identity, the
//! session's decisions with the clinician's marks, key frames with their heatmaps, and the
//! banner. DejaVu Sans is embedded (subset), so the page looks the same on every reader;
//! nothing in it depends on when it was made, so an export made twice is byte-identical.

use contract::events::{MarkKind, SessionContext, Side};
use krilla::color::rgb;
use krilla::geom::{PathBuilder, Point, Rect, Size, Transform};
use krilla::image::Image;
use krilla::num::NormalizedF32;
use krilla::page::PageSettings;
use krilla::paint::{Fill, FillRule};
use krilla::surface::Surface;
use krilla::text::{Font, TextDirection};
use krilla::Document;

use crate::session::Session;
use crate::time::utc;

/// A4 in points.
const W: f32 = 595.28;
const H: f32 = 841.89;
const MARGIN: f32 = 40.0;
/// Decision rows on the page; the rest are in results.csv.
const MAX_ROWS: usize = 16;

/// The banner, on screen and on paper.
pub const BANNER: &str = "Screening aid — not a diagnosis";

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    #[error("the embedded font could not be read")]
    Font,
    #[error("key frame {0} is not a usable PNG: {1}")]
    Image(u64, String),
    #[error("PDF: {0:?}")]
    Krilla(krilla::error::KrillaError),
}

/// A key frame for the page: its decision's journal number, the PNG (model input beside the
/// same image with the heatmap), its caption.
pub struct KeyFrame {
    pub journal_seq: u64,
    pub png: Vec<u8>,
    pub caption: String,
}

/// What goes on the page.
pub struct Report<'a> {
    pub session: &'a Session,
    /// `None` when de-identified or when nothing was entered.
    pub context: Option<&'a SessionContext>,
    pub deidentified: bool,
    pub frames: &'a [KeyFrame],
    /// The runtime that made the export (`renalscan-edge 0.1.0`).
    pub runtime: &'a str,
}

struct Pen {
    regular: Font,
    bold: Font,
}

impl Pen {
    fn text(&self, s: &mut Surface, x: f32, y: f32, size: f32, bold: bool, t: &str) {
        let font = if bold { &self.bold } else { &self.regular };
        s.draw_text(
            Point::from_xy(x, y),
            font.clone(),
            size,
            t,
            false,
            TextDirection::Auto,
        );
    }
}

fn fill(s: &mut Surface, c: (u8, u8, u8)) {
    s.set_fill(Some(Fill {
        paint: rgb::Color::new(c.0, c.1, c.2).into(),
        opacity: NormalizedF32::ONE,
        rule: FillRule::default(),
    }));
}

fn rect(s: &mut Surface, x: f32, y: f32, w: f32, h: f32, c: (u8, u8, u8)) {
    let Some(r) = Rect::from_xywh(x, y, w, h) else {
        return;
    };
    let mut pb = PathBuilder::new();
    pb.push_rect(r);
    if let Some(p) = pb.finish() {
        fill(s, c);
        s.draw_path(&p);
    }
}

/// Shortens text to `n` characters with an ellipsis.
fn clip(t: &str, n: usize) -> String {
    if t.chars().count() <= n {
        t.to_string()
    } else {
        let mut s: String = t.chars().take(n.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

fn side(s: Side) -> &'static str {
    match s {
        Side::Left => "left kidney",
        Side::Right => "right kidney",
    }
}

/// Renders the page.
pub fn render(r: &Report<'_>) -> Result<Vec<u8>, PdfError> {
    let pen = Pen {
        regular: Font::new(dejavu::sans::regular().to_vec().into(), 0).ok_or(PdfError::Font)?,
        bold: Font::new(dejavu::sans::bold().to_vec().into(), 0).ok_or(PdfError::Font)?,
    };
    let images: Vec<(Image, &KeyFrame)> = r
        .frames
        .iter()
        .take(4)
        .map(|k| {
            Image::from_png(k.png.clone().into(), true)
                .map(|i| (i, k))
                .map_err(|e| PdfError::Image(k.journal_seq, e))
        })
        .collect::<Result<_, _>>()?;
    let mut doc = Document::new();
    let settings = PageSettings::from_wh(W, H).ok_or(PdfError::Font)?;
    let mut page = doc.start_page_with(settings);
    let mut s = page.surface();
    let ink = (20, 20, 20);
    let grey = (95, 95, 95);

    // Banner.
    rect(&mut s, 0.0, 0.0, W, 34.0, (255, 211, 77));
    fill(&mut s, ink);
    pen.text(&mut s, MARGIN, 23.0, 15.0, true, BANNER);

    let mut y = 64.0;
    pen.text(
        &mut s,
        MARGIN,
        y,
        17.0,
        true,
        "Kidney ultrasound screening record",
    );
    y += 18.0;
    fill(&mut s, grey);
    pen.text(
        &mut s,
        MARGIN,
        y,
        9.0,
        false,
        "renalscan: an adjunct that flags kidneys for review. A clinician decides.",
    );

    // Context and identity, two columns.
    y += 26.0;
    let sess = r.session;
    let ended = sess.ended_ms.map_or_else(|| "not ended".to_string(), utc);
    let state = format!("{:?}", sess.state).to_lowercase();
    let mut left: Vec<(&str, String)> = Vec::new();
    if r.deidentified {
        left.push(("Patient", "de-identified export".into()));
    } else {
        let c = r.context.cloned().unwrap_or_default();
        let none = || "not entered".to_string();
        left.push(("Patient ID", c.patient_id.unwrap_or_else(none)));
        left.push(("Accession", c.accession.unwrap_or_else(none)));
        left.push(("Operator", c.operator.unwrap_or_else(none)));
        left.push(("Side", c.side.map_or_else(none, |x| side(x).to_string())));
    }
    if r.deidentified {
        let c = r.context.cloned().unwrap_or_default();
        left.push((
            "Side",
            c.side.map_or("not entered".into(), |x| side(x).to_string()),
        ));
    }
    left.push(("Session", sess.id.clone()));
    left.push(("Started", utc(sess.started_ms)));
    left.push(("Ended", format!("{ended} ({state})")));
    let model = sess.model.clone().unwrap_or_default();
    let right: Vec<(&str, String)> = vec![
        ("Model", format!("{} {}", model.name, model.version)),
        (
            "Bundle sha256",
            model.bundle_sha256.chars().take(32).collect(),
        ),
        ("", model.bundle_sha256.chars().skip(32).take(32).collect()),
        ("Signer", model.signer.clone()),
        (
            "Threshold",
            format!("{:.3} on p(abnormal)", model.threshold),
        ),
        ("Recorded by", r.runtime.to_string()),
    ];
    let top = y;
    for (k, v) in &left {
        fill(&mut s, grey);
        pen.text(&mut s, MARGIN, y, 8.5, false, k);
        fill(&mut s, ink);
        pen.text(&mut s, MARGIN + 70.0, y, 9.5, true, &clip(v, 34));
        y += 14.0;
    }
    let mut y2 = top;
    for (k, v) in &right {
        fill(&mut s, grey);
        pen.text(&mut s, 310.0, y2, 8.5, false, k);
        fill(&mut s, ink);
        pen.text(&mut s, 380.0, y2, 8.5, false, &clip(v, 36));
        y2 += 14.0;
    }
    y = y.max(y2) + 6.0;

    // What the session came to: the exam's call (latched on an abnormal decision, as the
    // device and `renalscan eval --sweeps` define it), the last call, and how many were abnormal.
    let abnormal = sess.decisions.iter().filter(|(_, d)| d.abnormal).count();
    let call = contract::events::exam_call(sess.decisions.iter().map(|(_, d)| d));
    let last = sess
        .decisions
        .iter()
        .rev()
        .find(|(_, d)| !d.kind.is_single_frame())
        .map(|(_, d)| d);
    let summary = match (call, last) {
        (Some(c), Some(l)) => format!(
            "Exam call: {} · p {:.3} / {:.3}{} · {abnormal} of {} decisions abnormal",
            if c.abnormal {
                format!("ABNORMAL, {}", c.class.replace('_', " "))
            } else {
                "normal".to_string()
            },
            c.p_abnormal,
            c.threshold,
            if c.abnormal && !l.abnormal {
                " (last call normal)"
            } else {
                ""
            },
            sess.decisions.len()
        ),
        _ => "No screening call in this session".to_string(),
    };
    fill(&mut s, ink);
    pen.text(&mut s, MARGIN, y + 6.0, 10.0, true, &clip(&summary, 95));
    y += 30.0;

    // Decisions.
    rect(
        &mut s,
        MARGIN,
        y - 11.0,
        W - 2.0 * MARGIN,
        15.0,
        (232, 236, 240),
    );
    fill(&mut s, ink);
    let cols = [MARGIN + 4.0, 100.0, 150.0, 318.0, 420.0, 462.0];
    for (x, h) in cols.iter().zip([
        "time (UTC)",
        "kind",
        "result",
        "p(abnormal) / thr.",
        "frames",
        "clinician",
    ]) {
        pen.text(&mut s, *x, y, 8.5, true, h);
    }
    y += 15.0;
    if sess.decisions.is_empty() {
        fill(&mut s, grey);
        pen.text(
            &mut s,
            cols[0],
            y,
            9.0,
            false,
            "No decision was made in this session.",
        );
        y += 14.0;
    }
    for (seq, d) in sess.decisions.iter().take(MAX_ROWS) {
        let result = if d.abnormal {
            format!("Abnormal — {}", d.class.replace('_', " "))
        } else {
            "Normal".to_string()
        };
        let kind = match d.kind {
            contract::events::DecisionKind::Freeze => "freeze".to_string(),
            k => format!("{k:?}").to_lowercase(),
        };
        let mark = match sess.mark_of(*seq).map(|m| m.kind) {
            Some(MarkKind::Agree) => "agreed",
            Some(MarkKind::Disagree) => "disagreed",
            None => "—",
        };
        let time = utc(d.unix_ms);
        fill(&mut s, if d.abnormal { (170, 80, 0) } else { ink });
        pen.text(
            &mut s,
            cols[0],
            y,
            8.5,
            false,
            time.get(11..19).unwrap_or(&time),
        );
        pen.text(&mut s, cols[1], y, 8.5, false, &kind);
        pen.text(&mut s, cols[2], y, 8.5, true, &clip(&result, 30));
        pen.text(
            &mut s,
            cols[3],
            y,
            8.5,
            false,
            &format!(
                "{:.3} / {:.3}{}",
                d.p_abnormal,
                d.threshold,
                if d.low_quality { " (poor view)" } else { "" }
            ),
        );
        pen.text(&mut s, cols[4], y, 8.5, false, &d.frames.to_string());
        pen.text(&mut s, cols[5], y, 8.5, false, &format!("{mark}  #{seq}"));
        y += 13.0;
    }
    if sess.decisions.len() > MAX_ROWS {
        fill(&mut s, grey);
        pen.text(
            &mut s,
            cols[0],
            y,
            8.5,
            false,
            &format!(
                "… {} more decisions in results.csv",
                sess.decisions.len() - MAX_ROWS
            ),
        );
        y += 13.0;
    }

    // Key frames: model input beside the same image with the heatmap.
    if !images.is_empty() {
        y += 12.0;
        fill(&mut s, ink);
        pen.text(&mut s, MARGIN, y, 10.0, true, "Key frames");
        fill(&mut s, grey);
        pen.text(
            &mut s,
            MARGIN + 70.0,
            y,
            8.0,
            false,
            "left: what the model saw; right: its attention (not a lesion outline)",
        );
        y += 8.0;
        let (iw, ih) = (250.0_f32, 125.0_f32);
        for (i, (img, k)) in images.into_iter().enumerate() {
            let (cx, cy) = (
                MARGIN + (i % 2) as f32 * (iw + 15.0),
                y + (i / 2) as f32 * (ih + 24.0),
            );
            if let Some(size) = Size::from_wh(iw, ih) {
                s.push_transform(&Transform::from_translate(cx, cy));
                s.draw_image(img, size);
                s.pop();
            }
            fill(&mut s, ink);
            pen.text(
                &mut s,
                cx,
                cy + ih + 11.0,
                8.0,
                false,
                &clip(&k.caption, 60),
            );
        }
    }

    // Footer.
    fill(&mut s, grey);
    pen.text(
        &mut s,
        MARGIN,
        H - 30.0,
        8.0,
        false,
        &format!(
            "{BANNER}. Session {} · {} decisions · {} marks · exported by {}",
            sess.id,
            sess.decisions.len(),
            sess.marks.len(),
            r.runtime
        ),
    );
    s.finish();
    page.finish();
    doc.finish().map_err(PdfError::Krilla)
}
