//! What a guest's own RabbitMQ user may do (`guest_broker_credentials = per_instance`).
//!
//! RabbitMQ authorises each operation against three regular expressions per user and vhost, matched
//! against resource names (configure: declare and delete; write: publish to an exchange, bind to a
//! queue; read: consume from a queue, bind from an exchange), and, for topic exchanges, against two
//! more per exchange matched against routing keys (write: publishing; read: binding). A user with no
//! topic permission on an exchange may use every routing key, so the control exchange always gets one.
//!
//! A guest does exactly this on the broker, and [`GuestPermissions`] grants exactly that:
//!
//! | what the guest does | needs |
//! |---|---|
//! | declares `guestagent.<id>` (again after a broker restart, when it is not durable) | configure on it; for a new queue, whose `x-dead-letter-exchange` names the dead-letter exchange, also read on it and write on that exchange |
//! | binds it to the control exchange with its own name as key | write on the queue, read on the exchange, topic read on the key |
//! | consumes it, and deletes it (`delete_queue`) | read, configure on it |
//! | casts to the conductor (heartbeats, module results, faults) | write on the exchange, topic write on the conductor's key |
//! | replies to calls (`module_list`, `cluster_complete`, ...) | write on the exchange, topic write on `reply_<32 hex digits>` |
//!
//! Nothing else: not the default exchange (`amq.default`), through which a publisher reaches any queue
//! by name (replies go through the control exchange for this reason, see [`super::Broker::reply`]); no
//! other queue, exchange or routing key. The one grant wider than its purpose is write on the
//! dead-letter exchange (a fanout): RabbitMQ demands it of whoever declares a queue that dead-letters
//! there, so a guest can also publish into the dead-letter queue, which nothing consumes on its own.
//! Replies are routed by name alone, so a guest could publish to any caller's reply queue; a caller
//! only takes a reply whose `_msg_id` it is waiting for, sealed with that instance's key.

use super::Names;

/// The permissions of one guest's broker user; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPermissions {
    /// The user's name, [`Names::guest_user`].
    pub user: String,
    /// The `configure` regex: its own queue.
    pub configure: String,
    /// The `write` regex: its own queue, the control exchange and the dead-letter exchange.
    pub write: String,
    /// The `read` regex: its own queue and the control exchange.
    pub read: String,
    /// The exchange the topic permission is on: the control exchange.
    pub topic_exchange: String,
    /// Routing keys it may publish with: the conductor's and callers' reply queues.
    pub topic_write: String,
    /// Routing keys it may bind with: its own queue's name.
    pub topic_read: String,
}

impl GuestPermissions {
    /// The permissions of `instance_id`'s guest under `names`.
    pub fn new(names: &Names, instance_id: &str) -> Self {
        let queue = escape(&names.guest(instance_id));
        let exchange = escape(&names.exchange());
        let dead_letter = escape(&names.dead_letter_exchange());
        let conductor = escape(&names.conductor());
        let reply = escape(&names.reply_queue_prefix());
        Self {
            user: names.guest_user(instance_id),
            configure: format!("^{queue}$"),
            write: format!("^({queue}|{exchange}|{dead_letter})$"),
            read: format!("^({queue}|{exchange})$"),
            topic_exchange: names.exchange(),
            topic_write: format!("^({conductor}|{reply}[0-9a-f]{{32}})$"),
            topic_read: format!("^{queue}$"),
        }
    }
}

/// `name` as a regular expression matching itself only, in RabbitMQ's (PCRE) syntax and in the
/// `regex` crate's: each metacharacter behind a backslash.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const ID: &str = "0b3c1f4e-8a9d-4c3e-9f0a-1b2c3d4e5f60";
    const OTHER: &str = "9f0a1b2c-3d4e-5f60-0b3c-1f4e8a9d4c3e";

    fn names(prefix: &str) -> Names {
        let mut s = Settings::default();
        s.amqp.prefix = prefix.into();
        Names::new(&s)
    }

    fn matches(re: &str, name: &str) -> bool {
        regex::Regex::new(re).unwrap().is_match(name)
    }

    #[test]
    fn a_guest_may_use_its_own_queue_the_conductor_and_reply_queues_only() {
        for prefix in ["", "t0123abcd.", "a+b(c)[d]."] {
            let n = names(prefix);
            let p = GuestPermissions::new(&n, ID);
            assert_eq!(p.user, format!("{prefix}guest-{ID}"));
            assert_eq!(p.topic_exchange, n.exchange());
            let own = n.guest(ID);
            let reply = n.reply_queue(uuid::Uuid::new_v4());

            assert!(matches(&p.configure, &own));
            for other in [
                n.guest(OTHER),
                n.exchange(),
                n.dead_letter_exchange(),
                n.dead_letter_queue(),
                n.taskmanager(),
                n.conductor(),
                reply.clone(),
                format!("{own}x"),
                format!("x{own}"),
            ] {
                assert!(!matches(&p.configure, &other), "configure {other}");
            }

            for ok in [own.clone(), n.exchange(), n.dead_letter_exchange()] {
                assert!(matches(&p.write, &ok), "write {ok}");
            }
            for no in [
                "amq.default".to_owned(),
                "amq.topic".to_owned(),
                n.guest(OTHER),
                n.taskmanager(),
                n.conductor(),
                n.dead_letter_queue(),
                reply.clone(),
            ] {
                assert!(!matches(&p.write, &no), "write {no}");
            }

            for ok in [own.clone(), n.exchange()] {
                assert!(matches(&p.read, &ok), "read {ok}");
            }
            for no in [
                n.guest(OTHER),
                n.taskmanager(),
                n.conductor(),
                n.dead_letter_exchange(),
                n.dead_letter_queue(),
                reply.clone(),
            ] {
                assert!(!matches(&p.read, &no), "read {no}");
            }

            for ok in [n.conductor(), reply.clone()] {
                assert!(matches(&p.topic_write, &ok), "topic write {ok}");
            }
            for no in [
                n.taskmanager(),
                own.clone(),
                n.guest(OTHER),
                format!("{}reply_", prefix),
                format!("{reply}0"),
                format!("{}reply_{}", prefix, "G".repeat(32)),
                format!("{}x", n.conductor()),
                "#".to_owned(),
            ] {
                assert!(!matches(&p.topic_write, &no), "topic write {no}");
            }

            assert!(matches(&p.topic_read, &own));
            for no in [
                n.guest(OTHER),
                n.taskmanager(),
                n.conductor(),
                "#".into(),
                format!("{own}.#"),
            ] {
                assert!(!matches(&p.topic_read, &no), "topic read {no}");
            }
        }
    }

    #[test]
    fn the_default_names_give_these_regexes() {
        let p = GuestPermissions::new(&names(""), ID);
        assert_eq!(p.configure, format!("^guestagent\\.{ID}$"));
        assert_eq!(p.write, format!("^(guestagent\\.{ID}|trove|trove\\.dlx)$"));
        assert_eq!(p.read, format!("^(guestagent\\.{ID}|trove)$"));
        assert_eq!(p.topic_exchange, "trove");
        assert_eq!(p.topic_write, "^(trove-conductor|reply_[0-9a-f]{32})$");
        assert_eq!(p.topic_read, format!("^guestagent\\.{ID}$"));
    }

    #[test]
    fn escaped_names_match_only_themselves() {
        for name in [
            "a.b",
            "a+b",
            "x|y",
            "(p)",
            "[q]",
            "{3}",
            "^$",
            "back\\slash",
            "t-1/2#",
        ] {
            let re = format!("^{}$", escape(name));
            assert!(matches(&re, name), "{re}");
            assert!(!matches(&re, &format!("{name}z")), "{re}");
        }
        assert!(!matches(&format!("^{}$", escape("a.b")), "axb"));
    }
}
