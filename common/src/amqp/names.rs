//! Every exchange and queue name, with `[amqp] prefix` in front ([`Names`]), and the broker URI.

use uuid::Uuid;

use crate::config::Settings;

/// Exchange and queue names, all built from the settings and the prefix.
#[derive(Clone, Debug)]
pub struct Names {
    prefix: String,
    pub(super) queue_expires_ms: u64,
    durable_guest_queues: bool,
    control_exchange: String,
    taskmanager: String,
    conductor: String,
}

impl Names {
    pub fn new(settings: &Settings) -> Self {
        Self {
            prefix: settings.amqp.prefix.clone(),
            queue_expires_ms: settings.amqp.queue_expires_ms,
            durable_guest_queues: settings.amqp.durable_guest_queues,
            control_exchange: settings.default.control_exchange.clone(),
            taskmanager: settings.default.taskmanager_queue.clone(),
            conductor: settings.default.conductor_queue.clone(),
        }
    }

    /// The topic exchange every server binds to.
    pub fn exchange(&self) -> String {
        format!("{}{}", self.prefix, self.control_exchange)
    }

    /// Where undecodable and rejected messages go.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}{}.dlx", self.prefix, self.control_exchange)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}{}.dead-letter", self.prefix, self.control_exchange)
    }

    /// The taskmanager's topic.
    pub fn taskmanager(&self) -> String {
        format!("{}{}", self.prefix, self.taskmanager)
    }

    /// The conductor's topic.
    pub fn conductor(&self) -> String {
        format!("{}{}", self.prefix, self.conductor)
    }

    /// A guest's topic, `guestagent.<instance_id>`.
    pub fn guest(&self, instance_id: &str) -> String {
        format!("{}guestagent.{instance_id}", self.prefix)
    }

    /// The RabbitMQ user of an instance's guest (`guest_broker_credentials = per_instance`),
    /// `guest-<instance_id>`.
    pub fn guest_user(&self, instance_id: &str) -> String {
        format!("{}guest-{instance_id}", self.prefix)
    }

    /// What every caller's reply queue name starts with; [`Names::reply_queue`] adds 32 hex digits.
    pub fn reply_queue_prefix(&self) -> String {
        format!("{}reply_", self.prefix)
    }

    /// A caller's reply queue, `reply_<uuid as 32 hex digits>`, which is also its routing key on the
    /// control exchange.
    pub fn reply_queue(&self, id: Uuid) -> String {
        format!("{}{}", self.reply_queue_prefix(), id.simple())
    }

    /// Whether `topic`'s queue survives a broker restart. The services' queues do: what waits there
    /// was accepted and has no other copy. A guest's does not unless `[amqp] durable_guest_queues`:
    /// its guest declares it again on reconnecting, and what is sent to it has its durable record in
    /// PostgreSQL (the outbox, the build the reconciler re-sends `prepare` for, a reapply job's
    /// items), so a broker restart only has to recover the few service queues, not thousands.
    pub fn durable(&self, topic: &str) -> bool {
        self.durable_guest_queues || !topic.starts_with(&format!("{}guestagent.", self.prefix))
    }

    /// The prefix itself (tests use it to clean up).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The AMQP URI lapin understands, from oslo's `transport_url`.
pub fn amqp_uri(transport_url: &str) -> String {
    let url = transport_url
        .strip_prefix("rabbit://")
        .map(|r| format!("amqp://{r}"))
        .unwrap_or_else(|| transport_url.to_owned());
    // oslo's trailing "/" means the default vhost; lapin would read it as the empty vhost.
    match url.strip_suffix('/') {
        Some(stripped) if !stripped.ends_with('/') && stripped.matches('/').count() == 2 => {
            stripped.to_owned()
        }
        _ => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_url_becomes_amqp_uri() {
        assert_eq!(
            amqp_uri("rabbit://guest:guest@127.0.0.1:5672/"),
            "amqp://guest:guest@127.0.0.1:5672"
        );
        assert_eq!(amqp_uri("amqp://u:p@h:5672/vh"), "amqp://u:p@h:5672/vh");
        assert_eq!(amqp_uri("rabbit://u:p@h:5672"), "amqp://u:p@h:5672");
    }

    #[test]
    fn names_carry_the_prefix() {
        let mut s = Settings::default();
        s.amqp.prefix = "t1.".into();
        let n = Names::new(&s);
        assert_eq!(n.exchange(), "t1.trove");
        assert_eq!(n.taskmanager(), "t1.taskmanager");
        assert_eq!(n.conductor(), "t1.trove-conductor");
        assert_eq!(n.guest("abc"), "t1.guestagent.abc");
        assert_eq!(n.guest_user("abc"), "t1.guest-abc");
        let id = Uuid::parse_str("0b3c1f4e-8a9d-4c3e-9f0a-1b2c3d4e5f60").unwrap();
        assert_eq!(
            n.reply_queue(id),
            "t1.reply_0b3c1f4e8a9d4c3e9f0a1b2c3d4e5f60"
        );
    }
}
