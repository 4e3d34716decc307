//! Broker outages under a running stack, each against a RabbitMQ node of its own
//! ([`trove_tests::PrivateBroker`]), so the outage reaches nobody else's tests.

mod broker_down;
mod prepare;
mod private_broker;
mod reapply;
mod restart;
