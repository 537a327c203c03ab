//! evaluate: the figures the reference study reports (overall AUC with a 95% CI, accuracy,
//! sensitivity, specificity at the operating point, and each abnormality type against
//! normal), plus confusion matrix and calibration, written as a report a user can put beside
//! the paper's table.

pub mod metrics;
pub mod plots;
pub mod report;
pub mod study;

pub use metrics::{
    argmax, auc, confidences, delong, ece, evaluate, rank_in_sample, rank_on_new, roc, sens_spec,
    threshold_for_sensitivity, threshold_for_sensitivity_on_new, AucCi, Evaluation, MetricsError,
    Overall, Prediction, TypeMetrics,
};
pub use report::{write_report, ReportError};
