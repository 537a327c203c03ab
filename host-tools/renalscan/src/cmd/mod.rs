//! One module per subcommand family.

pub mod backbone;
pub mod weights;
