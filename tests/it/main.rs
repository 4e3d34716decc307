//! End-to-end tests against the real PostgreSQL and RabbitMQ (see `trove_tests` for the harness).

mod walkthrough;
