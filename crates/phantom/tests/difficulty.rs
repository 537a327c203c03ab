//! "Not a toy": at default settings the global intensity histogram must not give the label
//! away; telling normal from abnormal has to need the pathology itself.
use phantom::stats::histogram_auc;
use phantom::{plan, Mix, PlanConfig, Profile, ProfileChoice};

#[test]
fn histogram_logistic_auc_is_at_most_0_80() {
    let specs = plan(&PlanConfig {
        n: 300,
        seed: 2024,
        mix: Mix::Paper,
        profile: ProfileChoice::One(Profile::default_profile()),
        other_views: 0,
        elevation_max: phantom::DEFAULT_ELEVATION_MAX,
    });
    let (auc, per) = histogram_auc(&specs, 32);
    eprintln!("histogram-logistic AUC {auc:.3}; per class {per:?}");
    assert!(
        auc <= 0.80,
        "global histograms separate the classes: AUC {auc:.3}"
    );
}
