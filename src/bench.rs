//! `brunnr bench`: the load scenario (filled in below).

/// Options of `brunnr bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
