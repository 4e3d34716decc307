//! End-to-end tests against the real PostgreSQL and RabbitMQ (see `trove_tests` for the harness).

mod binaries;
mod counts;
mod databases;
mod guest_credentials;
mod instance_modules;
mod isolation;
mod keystone;
mod modules_api;
mod modules_at_rest;
mod queues;
mod quotas;
mod real_databases;
mod reapply;
mod reset_status;
mod resilience;
mod walkthrough;
