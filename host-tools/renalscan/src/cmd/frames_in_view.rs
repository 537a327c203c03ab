//! Part of `renalscan eval --sweeps`: the frames that showed a finding, scored against the
//! normal sweeps' frames. An exam can be missed because its frames never showed the finding
//! to the model, or because the aggregation let frames that did go by; this table says which,
//! per finding and per severity band, from the frames the device's aggregator actually got.

use std::fmt::Write as _;

use serde::Serialize;

use super::exams::{median, SEVERITY_BANDS};

/// Draws of whole sweeps behind each interval: frames of one sweep are not independent.
const DRAWS: usize = 200;
/// Fixed, so the same sweeps give the same report.
const SEED: u64 = 0x6672_616d_6573;

/// One replayed sweep's frames, as its aggregator got them.
pub(crate) struct SweepFrames {
    pub(crate) label: String,
    pub(crate) severity: Option<f64>,
    /// p(abnormal) of each frame the aggregator got, and whether the sweep's finding was in
    /// view on it (always false for a normal sweep).
    pub(crate) frames: Vec<(f64, bool)>,
}

/// The frames of one finding or severity band with the finding in view.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Group {
    pub(crate) name: String,
    /// Sweeps with at least one such frame.
    pub(crate) sweeps: usize,
    pub(crate) frames: usize,
    /// Against every normal sweep's frame.
    pub(crate) auc: f64,
    /// 95%, whole sweeps resampled (normal and this group's, each with replacement).
    pub(crate) auc_ci: [f64; 2],
    pub(crate) median_p: f64,
}

/// The table: the normal sweeps' frames, and each group's frames in view against them.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct FramesInView {
    pub(crate) normal_sweeps: usize,
    pub(crate) normal_frames: usize,
    pub(crate) normal_median_p: f64,
    pub(crate) groups: Vec<Group>,
}

/// Scores of the frames in view of `sweeps` (a sweep's in-view frames are kept together).
fn in_view(sweeps: &[&SweepFrames]) -> Vec<Vec<f64>> {
    sweeps
        .iter()
        .map(|s| s.frames.iter().filter(|f| f.1).map(|f| f.0).collect())
        .filter(|v: &Vec<f64>| !v.is_empty())
        .collect()
}

/// The 95% interval of the AUC of `pos` against `neg` (scores grouped by sweep), whole
/// sweeps resampled.
fn auc_ci(pos: &[Vec<f64>], neg: &[Vec<f64>], rng: &mut seeded::Rng) -> [f64; 2] {
    let mut draw = |of: &[Vec<f64>]| -> Vec<f64> {
        (0..of.len())
            .flat_map(|_| of[(rng.u64() % of.len() as u64) as usize].iter().copied())
            .collect()
    };
    let mut aucs: Vec<f64> = (0..DRAWS)
        .map(|_| {
            let (p, n) = (draw(pos), draw(neg));
            evaluate::metrics::auc(&p, &n)
        })
        .collect();
    aucs.sort_by(f64::total_cmp);
    let at = |q: f64| aucs[((q * (DRAWS - 1) as f64).round() as usize).min(DRAWS - 1)];
    [at(0.025), at(0.975)]
}

/// The table, or `None` where the sweeps say nothing of which frames showed the finding
/// (no phantom `frames.csv`), or where there are no normal sweeps to score against.
pub(crate) fn frames_in_view(sweeps: &[SweepFrames]) -> Option<FramesInView> {
    let normal = contract::Class::Normal.label();
    let neg: Vec<Vec<f64>> = sweeps
        .iter()
        .filter(|s| s.label == normal)
        .map(|s| s.frames.iter().map(|f| f.0).collect::<Vec<f64>>())
        .filter(|v| !v.is_empty())
        .collect();
    let abnormal: Vec<&SweepFrames> = sweeps.iter().filter(|s| s.label != normal).collect();
    if neg.is_empty() || in_view(&abnormal).is_empty() {
        return None;
    }
    let mut labels: Vec<&str> = abnormal.iter().map(|s| s.label.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    let mut groups: Vec<(String, Vec<&SweepFrames>)> =
        vec![("every finding".into(), abnormal.clone())];
    for l in labels {
        groups.push((
            l.to_string(),
            abnormal.iter().copied().filter(|s| s.label == l).collect(),
        ));
    }
    for &(band, lo, hi) in &SEVERITY_BANDS {
        groups.push((
            format!("severity {band}"),
            abnormal
                .iter()
                .copied()
                .filter(|s| s.severity.is_some_and(|v| v >= lo && v < hi))
                .collect(),
        ));
    }
    // Flattened once: every group is scored against the same normal frames.
    let neg_all = neg.concat();
    let mut rng = seeded::Rng::new(SEED);
    let groups = groups
        .into_iter()
        .filter_map(|(name, of)| {
            let pos = in_view(&of);
            if pos.is_empty() {
                return None;
            }
            let all = pos.concat();
            Some(Group {
                name,
                sweeps: pos.len(),
                frames: all.len(),
                auc: evaluate::metrics::auc(&all, &neg_all),
                auc_ci: auc_ci(&pos, &neg, &mut rng),
                median_p: median(all).unwrap_or(f64::NAN),
            })
        })
        .collect();
    Some(FramesInView {
        normal_sweeps: neg.len(),
        normal_frames: neg_all.len(),
        normal_median_p: median(neg_all).unwrap_or(f64::NAN),
        groups,
    })
}

impl FramesInView {
    /// The report's section.
    pub(crate) fn report(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\n## Frames with the finding in view\n\n\
             Whether a missed exam is the frames' doing (they never showed the finding to the \
             model) or the aggregation's: every frame the aggregator got from an abnormal sweep \
             while its finding was in view (the phantom's `lesion_visible`), scored against \
             every frame it got from the normal sweeps ({} frames of {} sweeps, median \
             p(abnormal) {:.3}). The 95% intervals come from {DRAWS} draws of whole sweeps (the \
             frames of one sweep are not independent). A finding whose frames rank low here is \
             lost before aggregation; no exam setting recovers it.\n\n\
             | finding | sweeps | frames in view | frame AUC (95% CI) | median p(abnormal) |\n\
             |---|---|---|---|---|",
            self.normal_frames, self.normal_sweeps, self.normal_median_p
        );
        for g in &self.groups {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {:.3} ({:.3}-{:.3}) | {:.3} |",
                g.name, g.sweeps, g.frames, g.auc, g.auc_ci[0], g.auc_ci[1], g.median_p
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(label: &str, severity: f64, frames: &[(f64, bool)]) -> SweepFrames {
        SweepFrames {
            label: label.into(),
            severity: Some(severity),
            frames: frames.to_vec(),
        }
    }

    #[test]
    fn only_frames_that_show_the_finding_are_scored_against_normal_frames() {
        let normal = |p: f64| sweep("normal", 0.0, &[(p, false), (p + 0.1, false)]);
        let sweeps = vec![
            normal(0.1),
            normal(0.2),
            normal(0.3),
            // Its frames without the cyst score like normal ones and are left out: the
            // frames that show it all outrank every normal frame.
            sweep("cyst", 0.05, &[(0.15, false), (0.9, true), (0.8, true)]),
            sweep("cyst", 0.4, &[(0.95, true), (0.25, false)]),
            // A faint mass the frames do not see.
            sweep("sol", 0.07, &[(0.12, true), (0.22, true), (0.32, true)]),
            // A sweep whose finding never came into view counts in no group.
            sweep("stone", 0.5, &[(0.9, false)]),
        ];
        let t = frames_in_view(&sweeps).expect("a table");
        assert_eq!((t.normal_sweeps, t.normal_frames), (3, 6));
        assert!((t.normal_median_p - 0.25).abs() < 1e-12);
        let g = |name: &str| t.groups.iter().find(|g| g.name == name);
        let cyst = g("cyst").unwrap();
        assert_eq!((cyst.sweeps, cyst.frames, cyst.auc), (2, 3, 1.0));
        assert_eq!(cyst.auc_ci, [1.0, 1.0]);
        let sol = g("sol").unwrap();
        // 0.12 beats 1 of 6 normal frames, 0.22 beats 3, 0.32 beats 5: 9 of 18.
        assert!((sol.auc - 0.5).abs() < 1e-12, "{}", sol.auc);
        assert!(
            sol.auc_ci[0] <= 0.5 && sol.auc_ci[1] >= 0.5,
            "{:?}",
            sol.auc_ci
        );
        assert!(g("stone").is_none());
        let every = g("every finding").unwrap();
        assert_eq!((every.sweeps, every.frames), (3, 6));
        let minimal = g("severity minimal (below 0.10)").unwrap();
        assert_eq!((minimal.sweeps, minimal.frames), (2, 5));
        assert!(g("severity mild (0.10-0.25)").is_none());
        let report = t.report();
        assert!(
            report.contains("| cyst | 2 | 3 | 1.000 (1.000-1.000) | 0.900 |"),
            "{report}"
        );
        assert!(report.contains("6 frames of 3 sweeps"), "{report}");
        // The same sweeps give the same intervals.
        assert_eq!(frames_in_view(&sweeps), Some(t));
    }

    #[test]
    fn no_table_without_normal_frames_or_frames_in_view() {
        let abnormal = sweep("cyst", 0.3, &[(0.9, true)]);
        assert_eq!(frames_in_view(&[abnormal]), None);
        let unknown = sweep("cyst", 0.3, &[(0.9, false)]);
        let normal = sweep("normal", 0.0, &[(0.1, false)]);
        assert_eq!(frames_in_view(&[unknown, normal]), None);
    }
}
