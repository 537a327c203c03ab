//! Helpers shared by the end-to-end tests: where the workspace, fixtures and weights are.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `../shared/fixtures` beside the checkout.
pub fn fixtures() -> PathBuf {
    workspace_root().join("../shared/fixtures")
}

/// The weights cache the CLI uses: `$RENALSCAN_CACHE`, else `<root>/models/cache`.
pub fn weights_cache() -> PathBuf {
    npm_weights::cache_dir_under(&workspace_root())
}
