//! Placeholder until its issue lands: refuses to run rather than pretend.

/// Arguments (none yet).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("this subcommand is not implemented yet")
}
