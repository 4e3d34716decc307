//! RabbitMQ: connecting, declaring the topology, publishing with confirms, one consume loop, and calls.
//!
//! Services write only handlers; everything about the broker lives here:
//! - [`Broker`] owns one connection and a confirm-mode publishing channel. When the broker goes away it
//!   reconnects on the next use (lapin does not do it by itself), and consumers re-declare their queues.
//! - Every exchange and queue name goes through [`Names`], which puts `[amqp] prefix` in front: tests
//!   get their own topology on a shared broker.
//! - [`Broker::cast`] publishes persistent and `mandatory`, then waits for the confirm. An unroutable
//!   message comes back as `Ack(Some(returned))` and is an error, never silently lost.
//! - [`consume`] runs a handler per delivery with a bounded number in flight and acks only after the
//!   handler returns (so after its database commit). A message that does not decode is rejected without
//!   requeue and lands in the dead-letter queue: it never crashes or hot-loops a consumer.
//! - [`RpcClient`] makes calls: one `reply_<uuid>` queue per process, bound to the control exchange
//!   under its own name, correlation by `_msg_id`, a timeout per call. Servers reply through the control
//!   exchange too ([`Broker::reply`]), never the default exchange: a guest with its own broker user
//!   ([`permissions`]) may then publish replies without being able to publish into any queue by name.
//!
//! One module per concern:
//!
//! | module | what |
//! |---|---|
//! | `connection` | [`Broker`]: the connection, its publishing channels, reconnects behind the shared backoff gate |
//! | `names` | [`Names`] (every exchange and queue name, prefixed), [`amqp_uri`] |
//! | `topology` | the control and dead-letter exchanges, the dead-letter queue, topic queues and their durability |
//! | `publish` | casts with confirms ([`Broker::cast`], [`Broker::cast_with`]) and replies ([`Broker::reply`]) |
//! | `consume` | [`consume`] and [`consume_batches`]: bounded in flight, ack after the handler |
//! | `settle` | [`Outcome`] (ack, requeue, dead-letter), [`settle`], [`AckLedger`] for batches |
//! | `calls` | [`RpcClient`]: request and reply |
//! | [`permissions`] | what a guest's own broker user may do |

use crate::rpc::{self, RemoteError};

mod calls;
mod connection;
mod consume;
mod names;
pub mod permissions;
mod publish;
mod settle;
mod topology;

pub use calls::RpcClient;
pub use connection::{Broker, SERVICE_PUBLISHER_CHANNELS};
pub use consume::{consume, consume_batches};
pub use names::{amqp_uri, Names};
pub use settle::{settle, AckLedger, Outcome};

/// Errors from the broker layer.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker error: {0}")]
    Lapin(#[from] lapin::Error),
    #[error("message to {0} was not routed to any queue")]
    Unroutable(String),
    #[error("broker refused message to {0}")]
    Nacked(String),
    #[error("timed out waiting for the broker to confirm a message to {0}")]
    ConfirmTimeout(String),
    #[error("timed out waiting for a reply to {method} on {topic}")]
    CallTimeout { topic: String, method: String },
    #[error("{}", .0.message)]
    Remote(RemoteError),
    #[error("undecodable reply: {0}")]
    Decode(#[from] rpc::DecodeError),
    #[error("shutting down")]
    Shutdown,
}
