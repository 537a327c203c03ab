//! The reference study's table in its own terms (Tsai et al., JMIR Med Inform 2022): the
//! accuracy of an abnormality type is the fraction of its images called abnormal, the
//! accuracy of "normal" is the specificity, and the overall row is the binary accuracy and
//! AUC. Given at the model's screening threshold and at the Youden point of these images,
//! beside the figures the authors published on their own data.

use serde::Serialize;

/// The figures the study published, on its own 1,599 images (not comparable with figures
/// on other data, phantom or clinic): (row, accuracy %, AUC).
pub const PUBLISHED: [(&str, f64, Option<f64>); 7] = [
    ("stone", 93.2, Some(0.973)),
    ("cyst", 91.6, Some(0.940)),
    ("hyperechogenicity", 89.9, Some(0.940)),
    ("sol", 91.3, Some(0.934)),
    ("hydronephrosis", 94.1, Some(0.996)),
    ("normal", 90.1, None),
    ("overall", 92.9, Some(0.959)),
];

/// One operating point of the study's table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyPoint {
    /// How the threshold was chosen.
    pub name: String,
    /// On p(abnormal).
    pub threshold: f64,
    /// Each type: the fraction of its images called abnormal.
    pub per_type: Vec<(String, f64)>,
    /// Normal images called normal (specificity).
    pub normal: f64,
    /// Binary accuracy over every image.
    pub accuracy: f64,
}

/// The threshold that maximises sensitivity + specificity - 1 on these scores (the highest
/// such threshold on ties). Chosen on the data it is then measured on, so optimistic.
pub fn youden(pos: &[f64], neg: &[f64]) -> f64 {
    let mut cuts: Vec<f64> = pos.iter().chain(neg).copied().collect();
    cuts.sort_by(|a, b| b.total_cmp(a));
    cuts.dedup();
    let mut best = (f64::NEG_INFINITY, 0.5);
    for t in cuts {
        let sens = pos.iter().filter(|&&s| s >= t).count() as f64 / pos.len().max(1) as f64;
        let spec = neg.iter().filter(|&&s| s < t).count() as f64 / neg.len().max(1) as f64;
        let j = sens + spec - 1.0;
        if j > best.0 {
            best = (j, t);
        }
    }
    best.1
}

/// The table's column at `threshold`: `types` are (name, p(abnormal) of its images), `neg`
/// the normal images' p(abnormal).
pub fn point(name: &str, threshold: f64, types: &[(String, Vec<f64>)], neg: &[f64]) -> StudyPoint {
    let called = |v: &[f64]| v.iter().filter(|&&s| s >= threshold).count();
    let frac = |k: usize, n: usize| {
        if n == 0 {
            f64::NAN
        } else {
            k as f64 / n as f64
        }
    };
    let normal_ok = neg.len() - called(neg);
    let abnormal_ok: usize = types.iter().map(|(_, v)| called(v)).sum();
    let n: usize = neg.len() + types.iter().map(|(_, v)| v.len()).sum::<usize>();
    StudyPoint {
        name: name.into(),
        threshold,
        per_type: types
            .iter()
            .map(|(t, v)| (t.clone(), frac(called(v), v.len())))
            .collect(),
        normal: frac(normal_ok, neg.len()),
        accuracy: frac(normal_ok + abnormal_ok, n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn youden_picks_the_cut_with_the_best_sum() {
        // Cut at 0.6: sens 3/4, spec 4/4 (J 0.75); at 0.3: sens 1, spec 2/4 (J 0.5).
        let pos = [0.9, 0.8, 0.6, 0.3];
        let neg = [0.1, 0.2, 0.3, 0.5];
        assert_eq!(youden(&pos, &neg), 0.6);
    }

    #[test]
    fn point_counts_as_the_study_does() {
        let types = vec![
            ("stone".to_string(), vec![0.9, 0.2]),
            ("cyst".to_string(), vec![0.7, 0.8, 0.1, 0.95]),
        ];
        let p = point("t", 0.5, &types, &[0.1, 0.6, 0.2, 0.3]);
        assert_eq!(p.per_type[0], ("stone".to_string(), 0.5));
        assert_eq!(p.per_type[1], ("cyst".to_string(), 0.75));
        assert_eq!(p.normal, 0.75);
        // 3 normals right + 4 abnormals called, of 10.
        assert_eq!(p.accuracy, 0.7);
    }
}
