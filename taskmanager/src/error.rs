//! What a handler's error means for its delivery: database, broker and shutdown errors are
//! transient (requeue the message after a pause, so no accepted work is lost); anything else is a
//! logic error that a retry would repeat (dead-letter it, with its cause chain).

use trove_common::amqp::{AmqpError, Outcome};
use trove_common::db::DbError;

use crate::Interrupted;

/// What a handler error means for its delivery (see the module docs).
pub fn outcome(err: &anyhow::Error) -> Outcome {
    if is_transient(err) {
        Outcome::Retry(format!("{err:#}"))
    } else {
        Outcome::DeadLetter(format!("{err:#}"))
    }
}

/// True when a cause of `err` is the database, the broker or the shutdown: worth another try.
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if cause.is::<DbError>() || cause.is::<diesel::result::Error>() || cause.is::<Interrupted>()
        {
            return true;
        }
        if let Some(e) = cause.downcast_ref::<crate::broker_users::BrokerUserError>() {
            return e.is_transient();
        }
        match cause.downcast_ref::<AmqpError>() {
            // A guest answered with an error, or with something we cannot read: retrying repeats it.
            Some(AmqpError::Remote(_) | AmqpError::Decode(_)) => false,
            Some(_) => true,
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;
    use trove_common::rpc::RemoteError;

    use super::*;

    #[test]
    fn database_broker_and_shutdown_errors_are_retried() {
        let db: anyhow::Error = DbError::Join.into();
        assert!(matches!(
            outcome(&db.context("loading instance i1")),
            Outcome::Retry(_)
        ));
        let q: anyhow::Error = diesel::result::Error::NotFound.into();
        assert!(matches!(outcome(&q), Outcome::Retry(_)));
        let amqp = Err::<(), _>(AmqpError::Unroutable("guestagent.x".into()))
            .context("casting prepare")
            .unwrap_err();
        assert!(matches!(outcome(&amqp), Outcome::Retry(_)));
        assert!(matches!(
            outcome(&anyhow::Error::new(Interrupted)),
            Outcome::Retry(_)
        ));
    }

    #[test]
    fn logic_errors_are_dead_lettered_with_their_cause() {
        let e = anyhow::anyhow!("reapply is not wired yet");
        assert!(matches!(outcome(&e), Outcome::DeadLetter(m) if m.contains("not wired")));
        let remote = anyhow::Error::new(AmqpError::Remote(RemoteError::new("NotFound", "gone")))
            .context("calling");
        assert!(matches!(outcome(&remote), Outcome::DeadLetter(m) if m.contains("gone")));
    }
}
