//! `reapply_module` (module-semantics §12). Placeholder: the lead replaces this file.

use trove_common::rpc::RpcContext;

use super::ReapplyArgs;

/// Handles `reapply_module`.
pub async fn handle_reapply_module(_ctx: &crate::Ctx, _rpc: &RpcContext, _args: ReapplyArgs) -> anyhow::Result<()> {
    anyhow::bail!("reapply is not wired yet")
}
