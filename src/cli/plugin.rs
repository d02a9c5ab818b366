//! `signet plugin`: run as an OpenBao or Vault secrets plugin (see
//! `docs/openbao.md`). OpenBao starts the binary with no arguments and the
//! plugin cookie in its environment, which enters this mode too.

use clap::Args;

/// Options of `signet plugin` (none: the host configures everything
/// through the environment).
#[derive(Debug, Args)]
pub struct PluginArgs {}

/// Serves the plugin protocol until the host stops it.
pub async fn run(_args: PluginArgs) -> anyhow::Result<()> {
    crate::plugin::run().await
}
