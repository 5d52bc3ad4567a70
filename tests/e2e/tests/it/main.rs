//! End-to-end tests of the onboarding engine: the real `onboard` processes against the real
//! PostgreSQL, Kafka-protocol broker and SMTP server that `tests/run` starts.

mod addresses;
mod audit;
mod bad_input;
mod browser;
mod bulk;
mod codes;
mod console;
mod credentials;
mod delivery;
mod deploy;
mod erasure;
mod flow;
mod intake;
mod kafka_security;
mod links;
mod observability;
mod openapi;
mod outage;
mod provisioning;
mod rate_limits;
mod registry;
mod restart;
mod scim;
mod scim_idps;
mod slow_clients;
mod smtp_tls;
mod workers;
