//! End-to-end tests of the onboarding engine: the real `onboard` processes against the real
//! PostgreSQL, Kafka-protocol broker and SMTP server that `tests/run` starts.

mod audit;
mod bad_input;
mod browser;
mod bulk;
mod codes;
mod flow;
mod harness;
mod intake;
mod links;
mod restart;
mod scim;
