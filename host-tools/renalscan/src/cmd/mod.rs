//! One module per subcommand family.

pub mod backbone;
pub mod bench_int8;
pub mod bundle;
pub mod calibrate;
pub mod cart_sim;
pub mod demo;
pub mod eval;
pub mod exam_setting;
pub mod exams;
pub mod fixtures;
mod frames_in_view;
pub mod preprocess;
pub mod quantize;
pub mod release;
pub mod synth;
pub mod train;
pub mod weights;

/// The cores this process may use (its CPU affinity and cgroup quota): the default of every
/// `--threads`, so a tool uses the cores it is given, no more.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
