//! From a delivery on the `taskmanager` queue to its handler, and from the handler's result to what
//! happens to the delivery.
//!
//! - A body that does not decode (not an oslo envelope, a tampered or foreign-key ciphertext, an unknown
//!   method, arguments of the wrong shape) can never succeed: dead-letter it.
//! - A handler error caused by the database, the broker or the shutdown is transient: requeue the
//!   message (after a pause), so no accepted work is lost.
//! - Any other handler error is a logic error that a retry would repeat: dead-letter it (it is logged
//!   with its cause chain and kept in the dead-letter queue for an operator).
//! - Success: ack.

use std::sync::Arc;

use tracing::field::Empty;
use tracing::{Instrument as _, Span};
use trove_common::amqp::Outcome;
use trove_common::crypto::Keyring;
use trove_common::rpc::taskmanager::{
    CreateCluster, DeleteCluster, DeleteInstance, Restart, TaskManagerMsg,
};
use trove_common::rpc::{self, take_message, RpcContext};

use crate::error::outcome;
use crate::handlers;
use crate::Ctx;

/// Handles one delivery body and says whether to ack, requeue or dead-letter it.
pub async fn handle_delivery(ctx: Arc<Ctx>, body: &[u8]) -> Outcome {
    let (context, msg) = match decode(body, ctx.taskmanager_keys.as_ref()) {
        Ok(decoded) => decoded,
        Err(why) => return Outcome::DeadLetter(why),
    };
    let span = tracing::info_span!(
        "rpc",
        rpc.method = msg.method(),
        rpc.request_id = %context.request_id,
        instance.id = Empty,
        cluster.id = Empty,
        module.id = Empty,
    );
    async move {
        let started = std::time::Instant::now();
        let result = dispatch(&ctx, &context, msg).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                tracing::debug!(duration_ms, "handled");
                Outcome::Ack
            }
            Err(e) => outcome(&e),
        }
    }
    .instrument(span)
    .await
}

/// Opens a taskmanager message: the envelope, the values sealed with the taskmanager key, then the typed
/// method. The error says why it can never be handled.
pub fn decode(body: &[u8], keys: Option<&Keyring>) -> Result<(RpcContext, TaskManagerMsg), String> {
    let mut req = rpc::decode_request(body, keys)
        .map_err(|e| format!("undecodable taskmanager message: {e}"))?;
    let msg = take_message::<TaskManagerMsg>(&mut req)
        .map_err(|e| format!("unusable taskmanager message: {e}"))?;
    Ok((req.context, msg))
}

/// Routes a message to its handler. One exhaustive match: a new method does not compile until it is
/// handled here.
pub async fn dispatch(ctx: &Arc<Ctx>, rpc: &RpcContext, msg: TaskManagerMsg) -> anyhow::Result<()> {
    let span = Span::current();
    match msg {
        TaskManagerMsg::CreateInstance(args) => {
            span.record("instance.id", args.instance_id.as_str());
            if let Some(c) = &args.cluster_config {
                span.record("cluster.id", c.id.as_str());
            }
            handlers::instance::handle_create_instance(ctx, rpc, *args).await
        }
        TaskManagerMsg::CreateCluster(CreateCluster { cluster_id }) => {
            span.record("cluster.id", cluster_id.as_str());
            handlers::cluster::handle_create_cluster(ctx, rpc, &cluster_id).await
        }
        TaskManagerMsg::DeleteInstance(DeleteInstance { instance_id }) => {
            span.record("instance.id", instance_id.as_str());
            handlers::instance::handle_delete_instance(ctx, rpc, &instance_id).await
        }
        TaskManagerMsg::DeleteCluster(DeleteCluster { cluster_id }) => {
            span.record("cluster.id", cluster_id.as_str());
            handlers::cluster::handle_delete_cluster(ctx, rpc, &cluster_id).await
        }
        TaskManagerMsg::Restart(Restart { instance_id }) => {
            span.record("instance.id", instance_id.as_str());
            handlers::restart::handle_restart(ctx, rpc, &instance_id).await
        }
        TaskManagerMsg::ReapplyModule(args) => {
            span.record("module.id", args.module_id.as_str());
            handlers::reapply::handle_reapply_module(ctx, rpc, args).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trove_common::config::Settings;
    use trove_common::rpc::keys::{taskmanager_keyring, taskmanager_security};
    use trove_common::rpc::{encode_request, to_method_args, Security};

    fn encoded(msg: &TaskManagerMsg, security: &Security) -> Vec<u8> {
        let (method, args) = to_method_args(msg);
        let ctx = RpcContext {
            request_id: "req-1".into(),
            ..RpcContext::default()
        };
        encode_request(&method, args, &ctx, "1.0", None, security)
    }

    #[test]
    fn sealed_messages_decode_with_the_taskmanager_key_only() {
        let settings = Settings::default();
        let keys = taskmanager_keyring(&settings);
        let msg = TaskManagerMsg::DeleteInstance(DeleteInstance {
            instance_id: "i1".into(),
        });
        let body = encoded(&msg, &taskmanager_security(&settings));
        let (ctx, decoded) = decode(&body, keys.as_ref()).unwrap();
        assert_eq!(decoded, msg);
        assert_eq!(ctx.request_id, "req-1");
        // Plain messages are still accepted, as Trove's serializer does.
        assert_eq!(
            decode(&encoded(&msg, &Security::Plain), keys.as_ref())
                .unwrap()
                .1,
            msg
        );
        // Another key, garbage or an unknown method can never succeed.
        let other = trove_common::rpc::rpc_keyring("not the taskmanager key");
        assert!(decode(&body, Some(&other)).is_err());
        assert!(decode(b"{nope", keys.as_ref()).is_err());
        let mut args = serde_json::Map::new();
        args.insert("x".into(), serde_json::json!(1));
        let unknown = encode_request(
            "resize_flavor",
            args,
            &RpcContext::default(),
            "1.0",
            None,
            &Security::Plain,
        );
        assert!(decode(&unknown, keys.as_ref())
            .unwrap_err()
            .contains("resize_flavor"));
    }
}
